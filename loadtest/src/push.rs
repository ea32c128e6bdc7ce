//! `push`: what placing manifests on spokes through the tunnels costs, against writing them straight to the
//! spoke apiserver. Three measures, each under every runtime asked for (the controller and the hub alike):
//!
//! - **converge**: a push of M ConfigMaps to the real spoke(s), from its creation on the hub to its status
//!   saying every cluster applied it, against the same M server-side applies sent directly, one after
//!   another as `kubectl apply` sends them, and as many at once as the controller writes to one cluster
//!   (its stages in order, a few writes of a stage at once), alternating round by round;
//! - **drift**: an object edited or deleted straight on the real spoke, until the controller has put it back;
//! - **scale**: one push to N simulated spokes (each keeps what is applied to it, and lists and watches it
//!   back as an apiserver does): the time until all are Applied, the controller's and the hub's memory per
//!   cluster, what each cluster was asked, and the size of the push's status.
//!
//! Everything is real but the simulated spokes: hub and spoke kube-apiservers (cluster.sh), the
//! tunnel-server against the hub apiserver (reviews, Leases, ManagedClusters), the controller, and a
//! tunnel-client per real spoke.
mod cluster;
mod rig;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::Api;
use serde_json::json;

use crate::apiserver::{Apiserver, ApiserverArgs};
use crate::pki::Pki;
use crate::report::{Progress, Report, Row};
use crate::setup::WorkDir;
use crate::stats::Latencies;
use crate::Common;
use cluster::NAMESPACE;
use controller::push::delivery::WRITES_AT_ONCE;
use rig::{Rig, CONTROLLER_TOKEN, CONTROLLER_USER};

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[command(flatten)]
    pub common: Common,
    /// Manifests of each push to the real spokes, and direct applies they are compared with.
    #[arg(long, default_value_t = 100)]
    pub manifests: usize,
    /// Pushes to the real spokes per runtime, each against a direct round.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Real spokes, each a kube-apiserver of its own.
    #[arg(long, default_value_t = 1)]
    pub real_spokes: usize,
    /// Drift corrections timed per runtime: edits and deletes on the real spoke, alternately.
    #[arg(long, default_value_t = 10)]
    pub drift: usize,
    /// Simulated spokes of the push at scale; 0 skips it.
    #[arg(long, default_value_t = 1000)]
    pub simulated: usize,
    /// Manifests of the push at scale.
    #[arg(long, default_value_t = 10)]
    pub simulated_manifests: usize,
    /// Worker threads of the controller and the hub, one run each; 1 is a current-thread runtime.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub worker_threads: Vec<usize>,
    /// Longest wait for any one step (a push applied, clusters available, pushes removed).
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Longest wait for the processes' memory to stop moving before it is read.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    #[command(flatten)]
    pub apiserver: ApiserverArgs,
}

/// How often a push's status is read while waiting for it to converge on the real spokes: the error this
/// adds to each measurement is at most this.
const POLL_REAL: Duration = Duration::from_millis(10);
/// The same at scale, where a read costs more and the wait is seconds.
const POLL_SCALE: Duration = Duration::from_millis(100);
/// How often a drifted object is read back from the spoke.
const POLL_DRIFT: Duration = Duration::from_millis(5);

/// What one runtime measured.
struct Measured {
    threads: usize,
    direct: Latencies,
    /// The same applies, as many at once as the controller writes to one cluster.
    direct_at_once: Latencies,
    tether: Latencies,
    edits: Latencies,
    deletes: Latencies,
    scale: Option<Scale>,
    removal: Duration,
}

struct Scale {
    clusters: usize,
    converge: Duration,
    controller_per_cluster: f64,
    hub_per_cluster: f64,
    controller_rss: u64,
    requests_per_cluster: f64,
    status_bytes: usize,
    delivery_bytes: usize,
}

pub fn run(options: Options) -> Result<Report> {
    ensure!(
        options.manifests >= 1 && options.rounds >= 1 && options.real_spokes >= 1,
        "--manifests, --rounds and --real-spokes must be at least 1"
    );
    ensure!(!options.worker_threads.is_empty(), "--worker-threads needs at least one count");
    ensure!(options.simulated == 0 || options.simulated_manifests >= 1, "--simulated-manifests must be at least 1");
    tether_runtime::tls::install_crypto_provider();
    let workdir = WorkDir::new(&options.common)?;
    let dir = workdir.path();
    let pki = Pki::open_or_create(dir)?;
    let progress = Progress::new();
    progress.update("starting the hub apiserver");
    let tokens = [(CONTROLLER_TOKEN, CONTROLLER_USER, "tether:controllers")];
    let hub_apiserver = Apiserver::start_with_tokens(&dir.join("hub-apiserver"), &options.apiserver, &tokens)?;
    let mut spokes = Vec::new();
    for i in 0..options.real_spokes {
        progress.update(format!("starting spoke apiserver {} of {}", i + 1, options.real_spokes));
        spokes.push(Apiserver::start(&dir.join(format!("spoke-{i}-apiserver")), &options.apiserver)?);
    }
    let real: Vec<String> = (0..options.real_spokes).map(|i| format!("real-{i}")).collect();
    let identities = crate::tunnels::identities(&pki, options.simulated, &progress)?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut report = Report::new("push");
    let measured = runtime.block_on(async {
        let hub = cluster::client(&hub_apiserver.kubeconfig).await?;
        cluster::prepare_hub(&hub, &real, options.simulated).await.context("preparing the hub")?;
        let mut spoke_clients = Vec::new();
        for spoke in &spokes {
            let client = cluster::client(&spoke.kubeconfig).await?;
            cluster::prepare_spoke(&client).await.context("preparing a spoke")?;
            spoke_clients.push(client);
        }
        let mut measured = Vec::new();
        for &threads in &options.worker_threads {
            let rig = Rig::start(dir, &pki, &hub_apiserver, &spokes, &real, &identities, threads, &progress).await?;
            let available = cluster::wait_available(&hub, real.len() + options.simulated, options.timeout).await?;
            tracing::debug!(?available, "clusters available");
            measured.push(measure(&options, threads, &rig, &hub, &spoke_clients, &progress, &mut report).await?);
        }
        Ok::<_, anyhow::Error>(measured)
    })?;
    progress.done();
    rows(&mut report, &options, &measured);
    Ok(report)
}

async fn measure(
    options: &Options,
    threads: usize,
    rig: &Rig,
    hub: &kube::Client,
    spokes: &[kube::Client],
    progress: &Progress,
    report: &mut Report,
) -> Result<Measured> {
    let mode = if threads <= 1 { "ct".to_string() } else { format!("mt{threads}") };
    let (mut direct, mut direct_at_once, mut tether) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..options.rounds {
        progress.update(format!("{mode}: converge round {} of {}", round + 1, options.rounds));
        let objects = cluster::config_maps(&format!("direct-{mode}-{round}"), options.manifests);
        direct.push(cluster::apply_directly(&spokes[0], &objects, 1).await?);
        let objects = cluster::config_maps(&format!("direct{WRITES_AT_ONCE}-{mode}-{round}"), options.manifests);
        direct_at_once.push(cluster::apply_directly(&spokes[0], &objects, WRITES_AT_ONCE).await?);
        let name = format!("real-{mode}-{round}");
        let objects = cluster::config_maps(&name, options.manifests);
        let started = Instant::now();
        cluster::create_push(hub, &name, "real", objects).await?;
        cluster::wait_applied(hub, &name, spokes.len() as u32, POLL_REAL, options.timeout).await?;
        tether.push(started.elapsed());
    }
    progress.update(format!("{mode}: drift"));
    let last = format!("real-{mode}-{}", options.rounds - 1);
    let (edits, deletes) = drift(&spokes[0], &last, options, progress).await?;
    let scale = match options.simulated {
        0 => None,
        n => Some(scale(options, &mode, n, rig, hub, progress, report).await?),
    };
    progress.update(format!("{mode}: removing every push"));
    let removal = cluster::delete_pushes(hub, options.timeout).await?;
    Ok(Measured {
        threads,
        direct: Latencies::new(direct),
        direct_at_once: Latencies::new(direct_at_once),
        tether: Latencies::new(tether),
        edits: Latencies::new(edits),
        deletes: Latencies::new(deletes),
        scale,
        removal,
    })
}

/// Edits and deletes objects of push `push` straight on `spoke`, one at a time, alternately, each timed
/// from the write's answer until the object reads back as pushed.
async fn drift(
    spoke: &kube::Client,
    push: &str,
    options: &Options,
    progress: &Progress,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let api: Api<ConfigMap> = Api::namespaced(spoke.clone(), NAMESPACE);
    let (mut edits, mut deletes) = (Vec::new(), Vec::new());
    for i in 0..options.drift {
        let name = format!("{push}-{}", i % options.manifests);
        let edit = i % 2 == 0;
        match edit {
            true => {
                let patch = json!({"data": {"k": format!("drifted-{i}")}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
            false => drop(api.delete(&name, &DeleteParams::default()).await?),
        }
        let changed = Instant::now();
        let deadline = changed + options.timeout;
        loop {
            let restored =
                api.get_opt(&name).await?.and_then(|c| c.data).is_some_and(|d| d.get("k").is_some_and(|v| v == "v"));
            if restored {
                break;
            }
            ensure!(Instant::now() < deadline, "{name} was not restored within {:?}", options.timeout);
            tokio::time::sleep(POLL_DRIFT).await;
        }
        let took = changed.elapsed();
        if edit {
            edits.push(took)
        } else {
            deletes.push(took)
        };
        progress.update(format!("drift: {} of {}", i + 1, options.drift));
    }
    Ok((edits, deletes))
}

/// One push to every simulated spoke.
async fn scale(
    options: &Options,
    mode: &str,
    n: usize,
    rig: &Rig,
    hub: &kube::Client,
    progress: &Progress,
    report: &mut Report,
) -> Result<Scale> {
    let mut meter = rig.meter(options.settle).await?;
    let before = meter.settle(&format!("{mode}: memory before the push at scale"), progress, report).await?;
    let requests_before = rig.simulated_requests();
    let name = format!("sim-{mode}");
    let started = Instant::now();
    cluster::create_push(hub, &name, "sim", cluster::config_maps(&name, options.simulated_manifests)).await?;
    progress.update(format!("{mode}: push to {n} simulated spokes"));
    let push = cluster::wait_applied(hub, &name, n as u32, POLL_SCALE, options.timeout).await?;
    let converge = started.elapsed();
    let after = meter.settle(&format!("{mode}: memory after the push at scale"), progress, report).await?;
    let held = rig.simulated_objects();
    ensure!(
        held == n * options.simulated_manifests,
        "the simulated spokes hold {held} objects, not {} ({n} × {})",
        n * options.simulated_manifests,
        options.simulated_manifests
    );
    let deliveries: Api<tether_api::push::ManifestDelivery> = Api::namespaced(hub.clone(), NAMESPACE);
    // One of this push's (the real spokes' pushes, of other sizes, are listed too otherwise).
    let this_push = format!("{}={name}", tether_api::push::PUSH_LABEL);
    let one = deliveries.list(&kube::api::ListParams::default().labels(&this_push).limit(1)).await?;
    let delivery_bytes = one.items.first().map(|d| serde_json::to_vec(d).map_or(0, |v| v.len())).unwrap_or(0);
    let per = |i: usize| (after[i] as f64 - before[i] as f64) / n as f64;
    Ok(Scale {
        clusters: n,
        converge,
        hub_per_cluster: per(0),
        controller_per_cluster: per(1),
        controller_rss: after[1],
        requests_per_cluster: (rig.simulated_requests() - requests_before) as f64 / n as f64,
        status_bytes: serde_json::to_vec(&push.status).context("the push's status")?.len(),
        delivery_bytes,
    })
}

fn runtime_name(threads: usize) -> String {
    match threads {
        0 | 1 => "current-thread".into(),
        n => format!("multi-thread ({n})"),
    }
}

fn rows(report: &mut Report, options: &Options, measured: &[Measured]) {
    for m in measured {
        let direct = m.direct.p50_us();
        let at_once = format!("direct, {WRITES_AT_ONCE} at once");
        for (path, latencies) in [("direct", &m.direct), (at_once.as_str(), &m.direct_at_once), ("tether", &m.tether)] {
            report.rows.push(
                Row::new()
                    .text("runtime", runtime_name(m.threads))
                    .text("converge", path)
                    .num("rounds", latencies.count() as f64, 0)
                    .num("p50 ms", latencies.p50_us() / 1e3, 1)
                    .num("max ms", latencies.max_us() / 1e3, 1)
                    .num("p50 / direct", latencies.p50_us() / direct, 2),
            );
        }
        let ratio = m.tether.p50_us() / direct;
        report.goal(
            format!(
                "{}: {} manifests converged through tether / direct (p50)",
                runtime_name(m.threads),
                options.manifests
            ),
            ratio,
            true,
            1.5,
            "",
        );
    }
    report.new_table();
    for m in measured {
        for (what, latencies) in [("edit", &m.edits), ("delete", &m.deletes)] {
            if latencies.count() == 0 {
                continue;
            }
            report.rows.push(
                Row::new()
                    .text("runtime", runtime_name(m.threads))
                    .text("drift", what)
                    .num("count", latencies.count() as f64, 0)
                    .num("p50 ms", latencies.p50_us() / 1e3, 0)
                    .num("max ms", latencies.max_us() / 1e3, 0),
            );
            report.goal(
                format!("{}: drift ({what}) corrected, slowest", runtime_name(m.threads)),
                latencies.max_us() / 1e3,
                true,
                2000.0,
                " ms",
            );
        }
    }
    report.new_table();
    for m in measured {
        let Some(s) = &m.scale else { continue };
        let row = |measure: &str, value: f64, unit: &str, decimals: usize| {
            Row::new()
                .text("runtime", runtime_name(m.threads))
                .text("at scale", measure)
                .num("value", value, decimals)
                .text("unit", unit)
        };
        report.rows.push(row("clusters applied", s.clusters as f64, "", 0));
        report.rows.push(row("time until all applied", s.converge.as_secs_f64(), "s", 1));
        report.rows.push(row("clusters applied per second", s.clusters as f64 / s.converge.as_secs_f64(), "/s", 0));
        report.rows.push(row("controller RSS after", s.controller_rss as f64 / (1 << 20) as f64, "MiB", 1));
        report.rows.push(row("controller RSS per cluster", s.controller_per_cluster / 1024.0, "KiB", 1));
        report.rows.push(row("hub RSS per cluster", s.hub_per_cluster / 1024.0, "KiB", 1));
        report.rows.push(row("requests per cluster", s.requests_per_cluster, "", 1));
        report.rows.push(row("push status", s.status_bytes as f64 / 1024.0, "KiB", 1));
        report.rows.push(row("one delivery", s.delivery_bytes as f64 / 1024.0, "KiB", 1));
        report.rows.push(row("removing every push", m.removal.as_secs_f64(), "s", 1));
        report.goal(
            format!("{}: clusters applied", runtime_name(m.threads)),
            s.clusters as f64,
            false,
            options.simulated as f64,
            "",
        );
        report.goal(
            format!("{}: controller memory per cluster", runtime_name(m.threads)),
            s.controller_per_cluster / 1024.0,
            true,
            64.0,
            " KiB",
        );
    }
    report.note(format!(
        "converge: a ManifestPush of {} ConfigMaps to {} real spoke(s), from its creation on the hub until its status \
         (read every {POLL_REAL:?}) says all applied, against {} server-side applies in a row straight to the spoke \
         apiserver; rounds alternate",
        options.manifests, options.real_spokes, options.manifests
    ));
    report.note(format!(
        "drift: a merge-patch or a delete straight on the spoke, until the object reads back as pushed (read every \
         {POLL_DRIFT:?})"
    ));
    if options.simulated > 0 {
        report.note(format!(
            "at scale: one push of {} ConfigMaps to {} simulated spokes (in-memory apiservers, each keeping what was \
             applied); memory is the settled RSS growth from before the push to after it, per cluster, and includes \
             the clusters' deliveries, drift watches and clients; removing: every push deleted until its deliveries \
             (and the objects they placed) are gone",
            options.simulated_manifests, options.simulated
        ));
    }
    report.note(
        "the hub's Leases are renewed every 30 s (10 s by default) so that their writes do not load the hub apiserver \
         the pushes are measured on",
    );
}
