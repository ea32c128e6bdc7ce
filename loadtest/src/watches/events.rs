//! The event half of `watches`: how long after a write its event arrives on a watch through the hub and on one
//! straight to the apiserver, one write at a time.
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::{watch, NAMESPACE};
use crate::apiserver::Apiserver;
use crate::client::{Target, H2};
use crate::report::Progress;
use crate::stats::Latencies;

/// Latency of `events` writes to their events, through `tether` and `direct`, in that order.
pub(super) async fn latency(
    apiserver: &Apiserver,
    tether: &Target,
    direct: &Target,
    events: usize,
    timeout: Duration,
    progress: &Progress,
) -> Result<[Latencies; 2]> {
    let mut writer = apiserver.writer().await?;
    // Unique per run: a kept --workdir keeps etcd, and a write that changes nothing makes no event.
    let run = format!("{:016x}", rand::random::<u64>());
    let value = |i: usize| format!("{run}-{i}");
    writer.apply_configmap(NAMESPACE, "probe", &serde_json::json!({ "n": value(0) })).await?;
    let mut probes = [Probe::open(tether).await?, Probe::open(direct).await?];
    // A new watch starts with the object as it is: once that arrived, the watch is live.
    for probe in &mut probes {
        probe.until(&value(0), timeout).await?;
    }
    let mut times = [Vec::new(), Vec::new()];
    for i in 1..=events {
        progress.update(format!("events: {i} of {events}"));
        let written = Instant::now();
        writer.patch_configmap(NAMESPACE, "probe", &serde_json::json!({ "n": value(i) })).await?;
        for (probe, times) in probes.iter_mut().zip(&mut times) {
            times.push(probe.until(&value(i), timeout).await?.saturating_duration_since(written));
        }
    }
    Ok(times.map(Latencies::new))
}

/// A watch on the probe ConfigMap whose lines are timed as they arrive, by a task of its own so that the
/// time is not when the measuring loop got to them.
struct Probe {
    lines: mpsc::UnboundedReceiver<Result<(String, Instant)>>,
    reader: tokio::task::JoinHandle<()>,
    _connection: H2,
}

impl Probe {
    async fn open(target: &Target) -> Result<Self> {
        let connection = target.h2().await?;
        let path = format!("/api/v1/namespaces/{NAMESPACE}/configmaps?watch=1&fieldSelector=metadata.name%3Dprobe");
        let response =
            watch(connection.clone(), target.get(&path)).await.with_context(|| format!("probe via {}", target.name))?;
        let (send, lines) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            if let Err(e) = read_events(response.into_body(), &send).await {
                let _ = send.send(Err(e));
            }
        });
        Ok(Self { lines, reader, _connection: connection })
    }

    /// When the event setting `n` to `value` arrived; events for other values are skipped.
    async fn until(&mut self, value: &str, timeout: Duration) -> Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(Ok((n, at)))) if n == value => return Ok(at),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => bail!("the probe watch ended"),
                Err(_) => bail!("no event for {value} within {timeout:?}"),
            }
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Sends `data.n` of every event with its arrival time. Events are lines of JSON, which frames may split.
async fn read_events(mut body: Incoming, send: &mpsc::UnboundedSender<Result<(String, Instant)>>) -> Result<()> {
    let mut buffer = Vec::new();
    while let Some(frame) = body.frame().await {
        let at = Instant::now();
        let Ok(data) = frame?.into_data() else { continue };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let event: serde_json::Value = serde_json::from_slice(&line).context("a watch event")?;
            if event["type"] == "ERROR" {
                bail!("the watch failed: {}", event["object"]["message"]);
            }
            let n = event["object"]["data"]["n"].as_str().unwrap_or_default().to_string();
            if send.send(Ok((n, at))).is_err() {
                return Ok(());
            }
        }
    }
    bail!("the apiserver ended the watch")
}
