//! Tracing to stderr and the Prometheus recorder.
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{Error, Result};

/// Filter from `TETHER_LOG` (RUST_LOG syntax), `info` otherwise.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TETHER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Latency buckets from 100 µs (a local stream) to 60 s (a long list through a slow link).
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the global recorder; a second call (tests running two components in one process) reuses nothing
/// and returns a handle that renders an empty page rather than failing.
pub fn install_metrics() -> Result<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .map_err(Error::Metrics)?;
    match builder.install_recorder() {
        Ok(handle) => Ok(handle),
        Err(_) => Ok(PrometheusBuilder::new().build_recorder().handle()),
    }
}
