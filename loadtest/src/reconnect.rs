//! `reconnect`: restart the client, or the hub, gracefully (SIGTERM) and by crash (SIGKILL), and time how
//! long until a request through the hub succeeds again. The baseline is a request on a fresh connection
//! straight to the backend: the least any first request costs.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use tokio::sync::Mutex;

use crate::client::{fresh_get, read, Target, H2};
use crate::pki::Pki;
use crate::report::{Progress, Report, Row};
use crate::setup::{PeerArgs, Rig, WorkDir};
use crate::stats::Latencies;
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[command(flatten)]
    pub common: Common,
    /// Restarts of each kind; the median and the worst are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Give up on one restart after this long.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

const PATH: &str = "/api/v1/namespaces/default/configmaps/x";

#[derive(Clone, Copy)]
enum Restart {
    Client { graceful: bool },
    Hub { graceful: bool },
}

impl Restart {
    fn name(self) -> &'static str {
        match self {
            Self::Client { graceful: true } => "client restart (SIGTERM)",
            Self::Client { graceful: false } => "client crash (SIGKILL)",
            Self::Hub { graceful: true } => "hub restart (SIGTERM)",
            Self::Hub { graceful: false } => "hub crash (SIGKILL)",
        }
    }
}

pub fn run(options: Options) -> Result<Report> {
    let workdir = WorkDir::new(&options.common)?;
    let dir = workdir.path();
    let pki = Pki::open_or_create(dir)?;
    let no_peers = PeerArgs { backend: None, peers: vec![], peer_pids: vec![] };
    let rig = Rig::start(dir, &pki, &options.common, &no_peers)?;
    let (direct, tether) = (rig.direct(&pki)?, rig.tether(&pki)?);
    let Rig { backend: _backend, mut hub, mut spoke } = rig;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let progress = Progress::new();
    let mut report = Report::new("reconnect");
    let mut baseline = Vec::new();
    for _ in 0..options.rounds.max(1) {
        baseline.push(runtime.block_on(fresh_get(&direct, PATH))?);
    }
    let baseline = Latencies::new(baseline);
    report.rows.push(row("direct: first request on a new connection", &baseline, &baseline));

    let kinds = [
        Restart::Client { graceful: true },
        Restart::Client { graceful: false },
        Restart::Hub { graceful: true },
        Restart::Hub { graceful: false },
    ];
    for kind in kinds {
        let mut times = Vec::new();
        for round in 0..options.rounds {
            progress.update(format!("{}: round {} of {}", kind.name(), round + 1, options.rounds));
            // Up and serving before each restart, so every round starts from the same state.
            runtime.block_on(until_success(&tether, Instant::now(), options.timeout))?;
            let started = match kind {
                Restart::Client { graceful } => {
                    spoke.restart(graceful)?;
                    Instant::now()
                }
                Restart::Hub { graceful } => {
                    match graceful {
                        true => hub.process.terminate(Duration::from_secs(15))?,
                        false => hub.process.kill()?,
                    }
                    let started = Instant::now();
                    hub.restart_stopped()?;
                    started
                }
            };
            times.push(runtime.block_on(until_success(&tether, started, options.timeout))?);
        }
        report.rows.push(row(kind.name(), &Latencies::new(times), &baseline));
    }
    progress.done();
    let median_of =
        |name: &str| report.rows.iter().find(|r| r.get_text("event") == Some(name)).and_then(|r| r.get("median ms"));
    let client = median_of(Restart::Client { graceful: true }.name());
    let hub_restart = median_of(Restart::Hub { graceful: true }.name());
    if let Some(ms) = client {
        report.goal("first success after a client restart (median)", ms, true, 50.0, " ms");
    }
    if let Some(ms) = hub_restart {
        report.goal("first success after a hub restart (median)", ms, true, 1000.0, " ms");
    }
    report.note(format!(
        "{} rounds each; time from starting the new process (client), or from the old one's exit (hub), to the \
         first 200 through the hub, probed with a request every millisecond",
        options.rounds
    ));
    drop(spoke);
    Ok(report)
}

fn row(event: &str, times: &Latencies, baseline: &Latencies) -> Row {
    Row::new()
        .text("event", event)
        .num("median ms", times.p50_us() / 1e3, 1)
        .num("worst ms", times.max_us() / 1e3, 1)
        .num("ratio to a direct first request", times.p50_us() / baseline.p50_us(), 1)
}

/// Time from `since` until a GET through `target` succeeds. A request starts every millisecond, each on its
/// own HTTP/2 stream with its own deadline, so one sent to a dead tunnel delays nothing.
async fn until_success(target: &Target, since: Instant, timeout: Duration) -> Result<Duration> {
    let deadline = since + timeout;
    let connection: Arc<Mutex<Option<H2>>> = Arc::default();
    let (won, mut first) = tokio::sync::mpsc::channel::<Instant>(1);
    let mut probes = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            Some(at) = first.recv() => {
                probes.abort_all();
                return Ok(at.saturating_duration_since(since));
            }
            _ = tick.tick() => {
                if Instant::now() > deadline {
                    bail!("no successful request through the hub within {timeout:?}");
                }
                let (target, connection, won) = (target.clone(), connection.clone(), won.clone());
                probes.spawn(async move {
                    let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), probe(&target, &connection)).await
                    else { return };
                    let _ = won.try_send(Instant::now());
                });
                // Finished probes are reaped so that the set stays small.
                while probes.try_join_next().is_some() {}
            }
        }
    }
}

async fn probe(target: &Target, connection: &Mutex<Option<H2>>) -> Result<()> {
    let mut sender = {
        let mut slot = connection.lock().await;
        match slot.as_ref().filter(|s| !s.is_closed()) {
            Some(s) => s.clone(),
            None => {
                // Only one probe at a time dials; a refused dial (hub down) fails this probe alone.
                let s = target.h2().await?;
                *slot = Some(s.clone());
                s
            }
        }
    };
    sender.ready().await?;
    read(sender.send_request(target.get(PATH)).await?).await.map(drop)
}
