//! `bulk`: one large response (a big list, a log) through the tunnel against straight from the backend.
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use clap::Args;

use crate::client::{fetch, Target};
use crate::process::cpu_total;
use crate::report::{Progress, Report, Row};
use crate::roles::BULK_PATH;
use crate::setup::{Bench, PeerArgs};
use crate::stats::median;
use crate::Common;

#[derive(Debug, Clone, Args)]
pub struct Options {
    #[command(flatten)]
    pub common: Common,
    /// Size of the response, e.g. 256MiB.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub size: u64,
    /// Downloads per path; the median counts.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[command(flatten)]
    pub peers: PeerArgs,
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{s:?}: expected a number with KiB, MiB or GiB"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, KiB, MiB or GiB)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{s:?} is too large"))
}

pub fn run(options: Options) -> Result<Report> {
    ensure!(options.repeat > 0, "--repeat must be at least 1");
    let bench = Bench::start(&options.common, &options.peers)?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let progress = Progress::new();
    let path = format!("{BULK_PATH}?bytes={}", options.size);
    let mib = options.size as f64 / (1 << 20) as f64;
    let mut report = Report::new("bulk");
    let mut direct_rate = None;
    for (target, pids) in &bench.paths {
        let mut rates = Vec::new();
        let mut cpu_per_mib = Vec::new();
        for i in 0..options.repeat {
            progress.update(format!("{}: download {} of {}", target.name, i + 1, options.repeat));
            let cpu_before = cpu_total(pids)?;
            let took = runtime.block_on(download(target, &path, options.size))?;
            let cpu = cpu_total(pids)? - cpu_before;
            rates.push(mib / took.as_secs_f64());
            cpu_per_mib.push(cpu.as_secs_f64() * 1e3 / mib);
        }
        let rate = median(rates);
        let base = *direct_rate.get_or_insert(rate);
        report.rows.push(
            Row::new().text("path", &target.name).num("MiB/s", rate, 0).num("ratio to direct", rate / base, 2).num(
                "cpu ms/MiB",
                if pids.is_empty() { f64::NAN } else { median(cpu_per_mib) },
                2,
            ),
        );
    }
    progress.done();
    if let Some(ratio) =
        report.rows.iter().find(|r| r.get_text("path") == Some("tether")).and_then(|r| r.get("ratio to direct"))
    {
        report.goal("tether MiB/s as a ratio to direct", ratio, false, 0.4, "");
    }
    report.note(format!(
        "one {mib:.0} MiB response per download over HTTP/1.1 TLS, median of {}; cpu is hub+client (tether) or \
         the peer's processes",
        options.repeat
    ));
    Ok(report)
}

async fn download(target: &Target, path: &str, size: u64) -> Result<Duration> {
    let mut sender = target.h1().await?;
    let started = Instant::now();
    let got = fetch(&mut sender, target.get(path)).await?;
    let took = started.elapsed();
    ensure!(got == size, "{} delivered {got} of {size} bytes", target.name);
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert!(parse_size("1MB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB").is_err());
    }
}
