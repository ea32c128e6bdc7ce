//! `watches`: W idle watches against a real apiserver, first straight to it (the baseline), then through hub
//! and tunnel; the memory an idle watch costs each process, per phase, and how much later a ConfigMap event
//! arrives through the hub than directly while the W watches through the hub are open. Controllers hold
//! thousands of watches on every spoke and almost all of them are idle, so their cost is memory, not CPU.
mod events;

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use hyper::body::Incoming;

use crate::apiserver::{Apiserver, ApiserverArgs};
use crate::client::{read, Target, H2};
use crate::memory::Meter;
use crate::pki::Pki;
use crate::report::{Progress, Report, Row};
use crate::roles::TOKEN;
use crate::setup::{Hub, HubOptions, Spoke, WorkDir};
use crate::stats::Latencies;
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[command(flatten)]
    pub common: Common,
    /// Idle watches per phase.
    #[arg(long, default_value_t = 10_000)]
    pub watches: usize,
    /// Watches per HTTP/2 connection (client-go multiplexes its watches the same way).
    #[arg(long, default_value_t = 100)]
    pub per_connection: usize,
    /// ConfigMap writes whose events are timed, one at a time.
    #[arg(long, default_value_t = 50)]
    pub events: usize,
    /// Give up opening half of a phase's watches, or waiting for one event, after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Longest wait for the processes' memory to stop moving before it is read.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    #[command(flatten)]
    pub apiserver: ApiserverArgs,
}

const NAMESPACE: &str = "default";
/// Watch requests sent but not yet answered: enough to open 10,000 in seconds, few enough not to be a burst
/// no real client makes.
const IN_FLIGHT: usize = 256;

/// Memory is read as hub, client, apiserver, in this order.
const MEASURED: [&str; 3] = ["hub", "client", "apiserver"];

pub fn run(options: Options) -> Result<Report> {
    ensure!(
        options.watches >= 2 && options.per_connection > 0 && options.events > 0,
        "--watches must be at least 2 (two halves are measured), --per-connection and --events at least 1"
    );
    // The hub inherits the limit and holds as many connections as this process.
    raise_open_files(options.watches.div_ceil(options.per_connection) as u64 + 1024)?;
    let workdir = WorkDir::new(&options.common)?;
    let dir = workdir.path();
    let pki = Pki::open_or_create(dir)?;
    let apiserver = Apiserver::start(&dir.join("apiserver"), &options.apiserver)?;
    let hub = Hub::start(dir, &pki, HubOptions { clusters: vec!["bench".into()], simulated: 0, extra: vec![] })?;
    let spoke = Spoke::start(dir, &pki, "bench", hub.quic, &apiserver.kubeconfig)?;
    let tether = Target::new("tether", hub.proxy, pki.hub_ca_pem(), "/clusters/bench", TOKEN)?;
    let direct = apiserver.target("direct")?;
    let pids = [hub.process.pid(), spoke.process.pid(), apiserver.pid];

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let progress = Progress::new();
    let mut report = Report::new("watches");
    runtime.block_on(async {
        // A burst through each path first: what the processes allocated starting up, some of which they give
        // back only in the next burst, and one-time costs, such as the client's first connection to the
        // apiserver, are not an idle watch's.
        for target in [&direct, &tether] {
            drop(open(target, 0..options.per_connection.min(options.watches / 2), &options, &progress).await?);
        }
        let mut meter = Meter::new(pids, MEASURED, &tether, options.settle).await?;
        // Direct first: a Go heap keeps what it grew to, so the apiserver's own cost is clean only in the first
        // phase, and it is the baseline.
        let (baseline, watches) = phase(&direct, &options, &mut meter, &progress, &mut report).await?;
        drop(watches);
        let (through, watches) = phase(&tether, &options, &mut meter, &progress, &mut report).await?;
        let events = events::latency(&apiserver, &tether, &direct, options.events, options.timeout, &progress).await;
        let events = match events {
            Ok(events) => events,
            // A probe through the hub may wait behind the watches that did not open: the same finding.
            Err(e) if through.opened() < options.watches => {
                report.note(format!("events: not measured: {e:#}"));
                Default::default()
            }
            Err(e) => return Err(e),
        };
        drop(watches);
        progress.done();
        rows(&mut report, &baseline, &through, &events);
        Ok::<_, anyhow::Error>(())
    })?;
    goals(&mut report, options.watches);
    report.note(format!(
        "idle watches: ConfigMaps by a name no object has, {} per HTTP/2 connection, direct first, then through \
         the hub, each phase closed before the next",
        options.per_connection
    ));
    report.note(
        "B/watch: growth of settled RSS from half the watches open to all, per watch. The first half takes what is \
         paid once, and as both halves open in the same burst, memory an allocator holds back after a burst is in \
         both readings; (from 0) counts from none open",
    );
    if options.watches < 1000 {
        report.note("B/watch is mostly noise below about 1,000 watches: RSS moves in steps of allocator segments");
    }
    report.note("the apiserver's B/watch through tether may undercount: a Go heap keeps what the direct phase freed");
    report.note(format!(
        "events: {} merge-patches of one ConfigMap, one at a time, from just before the write to the event's line \
         on a watch through the hub and one direct, while the idle watches through the hub were open",
        options.events
    ));
    Ok(report)
}

/// What one phase measured.
struct Phase {
    name: String,
    /// Watches opened in each half.
    opened: [usize; 2],
    open_time: Duration,
    /// Settled RSS in [`MEASURED`] order: before, with the first half open, with both open.
    rss: [[u64; 3]; 3],
}

impl Phase {
    fn opened(&self) -> usize {
        self.opened[0] + self.opened[1]
    }

    /// Growth of process `i` per watch of the second half.
    fn per_watch(&self, i: usize) -> f64 {
        match self.opened[1] {
            0 => f64::NAN,
            n => (self.rss[2][i] as f64 - self.rss[1][i] as f64) / n as f64,
        }
    }

    /// Growth of process `i` per watch, from none open.
    fn per_watch_from_none(&self, i: usize) -> f64 {
        (self.rss[2][i] as f64 - self.rss[0][i] as f64) / self.opened() as f64
    }
}

/// Opens the watches of a phase in two halves, reading memory before and after each; returns them still open.
async fn phase(
    target: &Target,
    options: &Options,
    meter: &mut Meter<3>,
    progress: &Progress,
    report: &mut Report,
) -> Result<(Phase, Vec<Watches>)> {
    let name = &target.name;
    let half = options.watches / 2;
    let mut rss = [meter.settle(&format!("{name}: memory before"), progress, report).await?; 3];
    let started = Instant::now();
    let mut watches = vec![open(target, 0..half, options, progress).await?];
    let mut open_time = started.elapsed();
    rss[1] = meter.settle(&format!("{name}: memory with half open"), progress, report).await?;
    let mut opened = [watches[0].responses.len(), 0];
    // Past a stuck first half, the second would only wait out its own timeout.
    if opened[0] == half {
        let started = Instant::now();
        watches.push(open(target, half..options.watches, options, progress).await?);
        open_time += started.elapsed();
        opened[1] = watches[1].responses.len();
        rss[2] = meter.settle(&format!("{name}: memory with all open"), progress, report).await?;
    } else {
        rss[2] = rss[1];
    }
    let phase = Phase { name: name.clone(), opened, open_time, rss };
    if phase.opened() < options.watches {
        let why = match watches.iter().find_map(|w| w.refused.as_ref()) {
            Some(e) => format!("then one was refused ({e:#})"),
            None => format!("the rest had no answer after {:?}", options.timeout),
        };
        report.note(format!(
            "{name}: only {} of {} watches opened, {why}; the apiserver allows {} streams per HTTP/2 connection \
             (--apiserver-http2-streams)",
            phase.opened(),
            options.watches,
            options.apiserver.apiserver_http2_streams.unwrap_or(250),
        ));
    }
    Ok((phase, watches))
}

/// Open watches: dropping them resets their streams and closes the connections.
struct Watches {
    _connections: Vec<H2>,
    responses: Vec<http::Response<Incoming>>,
    /// Why opening stopped early, if a watch was refused.
    refused: Option<anyhow::Error>,
}

/// Opens the idle watches `names` (`idle-<i>`) over connections of `--per-connection` streams; a watch is open
/// once its 200 arrived. Stops at the first refused watch or at `--timeout`, keeping those open by then: how
/// many open is what is measured.
async fn open(target: &Target, names: Range<usize>, options: &Options, progress: &Progress) -> Result<Watches> {
    let deadline = tokio::time::Instant::now() + options.timeout;
    let mut connections = Vec::new();
    for _ in 0..names.len().div_ceil(options.per_connection) {
        connections.push(target.h2().await.with_context(|| format!("connecting to {}", target.name))?);
    }
    let mut responses = Vec::with_capacity(names.len());
    let mut pending = tokio::task::JoinSet::new();
    let mut next = names.start;
    let mut refused = None;
    loop {
        while next < names.end && pending.len() < IN_FLIGHT {
            let sender = connections[(next - names.start) / options.per_connection].clone();
            let request = target.get(&format!(
                "/api/v1/namespaces/{NAMESPACE}/configmaps?watch=1&fieldSelector=metadata.name%3Didle-{next}\
                 &timeoutSeconds=3600&allowWatchBookmarks=false"
            ));
            pending.spawn(watch(sender, request));
            next += 1;
        }
        match tokio::time::timeout_at(deadline, pending.join_next()).await {
            Ok(Some(opened)) => match opened? {
                Ok(response) => responses.push(response),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            },
            Ok(None) | Err(_) => break,
        }
        let open = names.start + responses.len();
        progress.update(format!("{}: {open} of {} watches open", target.name, options.watches));
    }
    pending.abort_all();
    Ok(Watches { _connections: connections, responses, refused })
}

/// Sends a watch and returns once its headers say 200, the body unread.
async fn watch(
    mut sender: H2,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<http::Response<Incoming>> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    if status != http::StatusCode::OK {
        read(response).await?;
        bail!("status {status}");
    }
    Ok(response)
}

fn rows(report: &mut Report, direct: &Phase, tether: &Phase, events: &[Latencies; 2]) {
    let direct_apiserver = direct.per_watch(2);
    for phase in [direct, tether] {
        let only = |v: f64| if phase.name == "tether" { v } else { f64::NAN };
        let end_to_end = phase.per_watch(0) + phase.per_watch(1);
        report.rows.push(
            Row::new()
                .text("path", &phase.name)
                .num("watches open", phase.opened() as f64, 0)
                .num("open s", phase.open_time.as_secs_f64(), 1)
                .num("hub B/watch", only(phase.per_watch(0)), 0)
                .num("client B/watch", only(phase.per_watch(1)), 0)
                .num("tether B/watch", only(end_to_end), 0)
                .num("tether B/watch (from 0)", only(phase.per_watch_from_none(0) + phase.per_watch_from_none(1)), 0)
                .num("apiserver B/watch", phase.per_watch(2), 0)
                .num("tether / direct apiserver", only(end_to_end / direct_apiserver), 2),
        );
    }
    let direct_p50 = events[1].p50_us();
    for (name, latencies) in [("event via tether", &events[0]), ("event direct", &events[1])] {
        report.rows.push(
            Row::new()
                .text("path", name)
                .num("event p50 ms", latencies.p50_us() / 1e3, 2)
                .num("event p99 ms", latencies.p99_us() / 1e3, 2)
                .num("added p50 ms", (latencies.p50_us() - direct_p50) / 1e3, 2),
        );
    }
}

fn goals(report: &mut Report, watches: usize) {
    let tether = report.rows.iter().find(|r| r.get_text("path") == Some("tether"));
    let (open, bytes) = (tether.and_then(|r| r.get("watches open")), tether.and_then(|r| r.get("tether B/watch")));
    report.goal("idle watches open through one tunnel", open.unwrap_or(f64::NAN), false, watches as f64, "");
    report.goal("hub + client memory per idle watch", bytes.unwrap_or(f64::NAN), true, 8192.0, " B");
}

/// Raises this process's soft limit on open files to `needed` (children inherit it) when it is lower.
fn raise_open_files(needed: u64) -> Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    ensure!(limit.rlim_max >= needed, "{needed} open files are needed; the hard limit is {}", limit.rlim_max);
    limit.rlim_cur = needed;
    // SAFETY: setrlimit reads only the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit");
    }
    Ok(())
}
