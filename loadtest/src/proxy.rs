//! `proxy`: small GETs through hub → tunnel → spoke → backend, against the same GETs straight to the backend
//! (and through peer tunnels, when the peer script gives them), at each concurrency in turn.
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::client::{closed_loop, fixed};
use crate::process::cpu_total;
use crate::report::{Progress, Report, Row};
use crate::setup::{Bench, PeerArgs};
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[command(flatten)]
    pub common: Common,
    /// Measured time per path and concurrency.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before it: connections, caches and windows settle.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Concurrent clients, each on its own keep-alive connection, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    #[command(flatten)]
    pub peers: PeerArgs,
}

const PATH: &str = "/api/v1/namespaces/default/configmaps/x";

pub fn run(options: Options) -> Result<Report> {
    let bench = Bench::start(&options.common, &options.peers)?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let progress = Progress::new();
    let mut report = Report::new("proxy");
    for &concurrency in &options.concurrency {
        let mut direct: Option<(f64, f64)> = None;
        for (target, pids) in &bench.paths {
            let cpu_before = cpu_total(pids)?;
            let run = runtime.block_on(closed_loop(
                target,
                fixed(PATH),
                concurrency,
                options.warmup,
                options.duration,
                &progress,
            ))?;
            let cpu = (cpu_total(pids)? - cpu_before).as_secs_f64() * 1e6;
            let requests = run.total as f64;
            let (rps, p50) = (run.rps(), run.latencies.p50_us());
            let (base_rps, base_p50) = *direct.get_or_insert((rps, p50));
            report.rows.push(
                Row::new()
                    .text("path", &target.name)
                    .num("concurrency", concurrency as f64, 0)
                    .num("req/s", rps, 0)
                    .num("ratio to direct", rps / base_rps, 2)
                    .num("p50 µs", p50, 0)
                    .num("added p50 µs", p50 - base_p50, 0)
                    .num("p99 µs", run.latencies.p99_us(), 0)
                    .num("p999 µs", run.latencies.p999_us(), 0)
                    .num("cpu µs/req", if pids.is_empty() { f64::NAN } else { cpu / requests }, 1),
            );
        }
    }
    progress.done();
    goals(&mut report, &options.concurrency);
    report.note(format!(
        "{} B GETs over HTTP/1.1 keep-alive TLS; {:?} measured after {:?} warm-up per row; cpu is hub+client \
         (tether) or the peer's processes, per request",
        crate::roles::BODY.len(),
        options.duration,
        options.warmup
    ));
    Ok(report)
}

fn goals(report: &mut Report, levels: &[usize]) {
    let tether = |c: usize| {
        report.rows.iter().find(|r| r.get_text("path") == Some("tether") && r.get("concurrency") == Some(c as f64))
    };
    let at_64 = tether(64).and_then(|r| r.get("ratio to direct"));
    let at_1 = tether(1).and_then(|r| r.get("added p50 µs"));
    let worst_p99 = levels.iter().filter_map(|&c| tether(c)?.get("p99 µs")).fold(f64::NAN, f64::max);
    if let Some(ratio) = at_64 {
        report.goal("tether req/s at concurrency 64, as a ratio to direct", ratio, false, 0.6, "");
    }
    if let Some(added) = at_1 {
        report.goal("tether's added p50 at concurrency 1", added, true, 50.0, " µs");
    }
    report.goal("tether's worst p99", worst_p99, true, 5000.0, " µs");
}
