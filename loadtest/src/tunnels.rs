//! `tunnels`: how many spokes one hub holds. N simulated spokes, each its own QUIC connection and
//! certificate, connect to one hub; measured are the connect rate, the hub's memory per tunnel (RSS delta)
//! and idle CPU, and requests to random clusters while all are connected against requests to the only
//! cluster while one is.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use futures::StreamExt;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::client::{closed_loop, Paths, Target};
use crate::pki::Pki;
use crate::process::Process;
use crate::report::{Progress, Report, Row};
use crate::roles::TOKEN;
use crate::setup::{Hub, HubOptions, WorkDir};
use crate::simulated::{self, Responder};
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[command(flatten)]
    pub common: Common,
    /// Simulated spokes.
    #[arg(long, default_value_t = 10_000)]
    pub tunnels: usize,
    /// Handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Simulated spokes per UDP socket on the spokes' side.
    #[arg(long, default_value_t = 1000)]
    pub per_socket: usize,
    /// Measured time of each request phase.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent API clients in the request phases.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

const PATH: &str = "/api/v1/namespaces/default/configmaps/x";

pub fn run(options: Options) -> Result<Report> {
    ensure!(options.tunnels >= 2, "--tunnels must be at least 2");
    ensure!(
        options.per_socket >= 1 && options.connect_concurrency >= 1,
        "--per-socket and --connect-concurrency must be at least 1"
    );
    let workdir = WorkDir::new(&options.common)?;
    let dir = workdir.path();
    let pki = Pki::open_or_create(dir)?;
    let progress = Progress::new();
    let configs = identities(&pki, options.tunnels, &progress)?;
    let hub = Hub::start(
        dir,
        &pki,
        HubOptions {
            clusters: vec!["bench".into()],
            simulated: options.tunnels,
            extra: options.common.hub_args.clone(),
        },
    )?;
    let target = Target::new("tether", hub.proxy, pki.hub_ca_pem(), "/clusters", TOKEN)?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let stop = CancellationToken::new();
    let result = runtime.block_on(measure(&options, &hub, &target, configs, &stop, &progress));
    stop.cancel();
    progress.done();
    result
}

/// Every spoke's certificate, signed up front so that signing does not count against the connect rate.
pub(crate) fn identities(pki: &Pki, count: usize, progress: &Progress) -> Result<Vec<quinn::ClientConfig>> {
    let hub_ca = pki.hub_ca_pem().to_string();
    let made = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks: Vec<Vec<usize>> = (0..threads).map(|t| (t..count).step_by(threads).collect()).collect();
    let mut configs: Vec<Option<quinn::ClientConfig>> = vec![None; count];
    std::thread::scope(|scope| {
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|indices| {
                let (hub_ca, made) = (&hub_ca, &made);
                scope.spawn(move || {
                    indices
                        .into_iter()
                        .map(|i| {
                            let (cert, key) = pki.spoke_identity(&format!("sim-{i}"))?;
                            let done = made.fetch_add(1, Ordering::Relaxed) + 1;
                            progress.update(format!("certificates: {done} of {count}"));
                            Ok((i, simulated::client_config(hub_ca, &cert, &key)?))
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        for worker in workers {
            for (i, config) in worker.join().expect("certificate thread")? {
                configs[i] = Some(config);
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(configs.into_iter().map(|c| c.expect("every index was made")).collect())
}

async fn measure(
    options: &Options,
    hub: &Hub,
    target: &Target,
    configs: Vec<quinn::ClientConfig>,
    stop: &CancellationToken,
    progress: &Progress,
) -> Result<Report> {
    let n = configs.len();
    let endpoints = (0..n.div_ceil(options.per_socket))
        .map(|_| quinn::Endpoint::client("127.0.0.1:0".parse().expect("an address")))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut configs = configs.into_iter().enumerate();

    // One spoke first: the baseline requests, and the hub's memory with its proxy connections open.
    let (_, first) = configs.next().expect("at least two");
    simulated::connect(&endpoints[0], first, hub.quic, "sim-0".into(), Responder::Fixed, stop.clone()).await?;
    let one =
        closed_loop(target, random_of(1), options.concurrency, Duration::from_millis(300), options.duration, progress)
            .await?;
    let rss_one = settled_rss(&hub.process).await?;

    let connected = AtomicUsize::new(1);
    let started = Instant::now();
    let failures: Vec<String> = futures::stream::iter(configs)
        .map(|(i, config)| {
            let endpoint = &endpoints[i / options.per_socket];
            let connected = &connected;
            async move {
                let instance = format!("sim-{i}");
                let result =
                    simulated::connect(endpoint, config, hub.quic, instance, Responder::Fixed, stop.clone()).await;
                let done = connected.fetch_add(result.is_ok() as usize, Ordering::Relaxed) + 1;
                progress.update(format!("tunnels: {done} of {n} connected"));
                result.err().map(|e| format!("sim-{i}: {e:#}"))
            }
        })
        .buffer_unordered(options.connect_concurrency)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    let connect_time = started.elapsed();
    let connected = connected.load(Ordering::Relaxed);

    let rss_all = settled_rss(&hub.process).await?;
    let cpu_before = hub.process.cpu()?;
    let idle = Duration::from_secs(3);
    tokio::time::sleep(idle).await;
    let idle_cpu = (hub.process.cpu()? - cpu_before).as_secs_f64() / idle.as_secs_f64();
    let all =
        closed_loop(target, random_of(n), options.concurrency, Duration::from_millis(300), options.duration, progress)
            .await?;

    let mut report = Report::new("tunnels");
    let per_tunnel_kib = (rss_all as f64 - rss_one as f64) / (connected.max(2) - 1) as f64 / 1024.0;
    let row = |measure: &str, value: f64, unit: &str, decimals: usize| {
        Row::new().text("measure", measure).num("value", value, decimals).text("unit", unit)
    };
    report.rows.push(row("tunnels connected", connected as f64, "", 0));
    report.rows.push(row("connect rate", (connected - 1) as f64 / connect_time.as_secs_f64(), "tunnels/s", 0));
    report.rows.push(row("hub RSS with one tunnel", rss_one as f64 / (1 << 20) as f64, "MiB", 1));
    report.rows.push(row("hub RSS with all", rss_all as f64 / (1 << 20) as f64, "MiB", 1));
    report.rows.push(row("hub RSS per tunnel", per_tunnel_kib, "KiB", 1));
    report.rows.push(row("hub CPU while idle", idle_cpu * 100.0, "% of a core", 1));
    for (name, value, base, unit) in [
        ("requests: req/s", all.rps(), one.rps(), "req/s"),
        ("requests: p50", all.latencies.p50_us(), one.latencies.p50_us(), "µs"),
        ("requests: p99", all.latencies.p99_us(), one.latencies.p99_us(), "µs"),
    ] {
        report.rows.push(row(name, value, unit, 0).num("with one tunnel", base, 0).num("ratio", value / base, 2));
    }
    report.goal("tunnels connected", connected as f64, false, n as f64, "");
    report.goal("hub RSS per tunnel", per_tunnel_kib, true, 50.0, " KiB");
    report.note(format!(
        "{n} simulated spokes, {} per UDP socket, {} handshakes at a time; requests go to a random cluster at \
         concurrency {} over HTTP/1.1 keep-alive, against requests to the only cluster with one connected",
        options.per_socket, options.connect_concurrency, options.concurrency
    ));
    if let Some(first) = failures.first() {
        report.note(format!("{} spokes failed to connect; the first: {first}", failures.len()));
    }
    drop(endpoints);
    Ok(report)
}

/// A random one of `sim-0` .. `sim-<n-1>` per request.
fn random_of(n: usize) -> Paths {
    Arc::new(move || format!("/sim-{}{PATH}", rand::rng().random_range(0..n)))
}

/// The hub's RSS once it stops moving (two reads 500 ms apart within 1%), read for at most 10 s: memory
/// freed by finished handshakes and growing buffers settles after the last connection.
async fn settled_rss(process: &Process) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = process.rss()?;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = process.rss().context("reading the hub's RSS")?;
        if now.abs_diff(last) * 100 <= last || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}
