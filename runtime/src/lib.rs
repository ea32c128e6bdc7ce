//! Service plumbing: what every tether process (tunnel-server, tunnel-client, controller, loadtest) runs on
//! besides its own logic, none of which knows about tunnels or Kubernetes:
//! - the process: tokio runtime sizing ([`build_runtime`]), [`shutdown`] on signals, the one-line exit
//!   [`report`];
//! - observing it: [`telemetry`] (tracing, the Prometheus recorder), the TLS-only [`ops`] endpoint
//!   (`/metrics`, `/healthz`, `/readyz`), log lines a flood cannot multiply ([`throttle`]);
//! - its sockets: the HTTPS [`listener`] with its handshake, header and idle timeouts and connection limit,
//!   the QUIC [`transport`] settings and UDP sockets both ends share, and the PEM files and rustls configs
//!   those listeners and dials are built from ([`tls`]).
//!
//! What a single QUIC stream carries (HTTP heads and bodies, the stream as hyper's I/O) is the request data
//! path, not plumbing: it is the `tether-stream` crate. The name stays `runtime`, as in "what a process runs
//! on": `service` already means three things in tether (a Kubernetes Service, a hyper/tower `Service`, the
//! data plane's `service` target). TLS loading stays a module here rather than a crate: it is how the
//! listeners and dials above get their configs, and every user of it also uses them.

mod error;
pub mod listener;
pub mod ops;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod testing;
pub mod throttle;
pub mod tls;
pub mod transport;

pub use error::{Error, Result};

/// A tokio runtime of the requested size. On two cores, two processes with multi-threaded runtimes each
/// oversubscribe the CPU, so `0` or `1` selects a current-thread runtime (measured 3x faster on loopback).
pub fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(worker_threads).enable_all().build()
    }
}

/// A wall-clock time (a certificate's not-after) on the monotonic clock that timers use: now if it has
/// passed, a year ahead if it is out of range.
pub fn instant_of(time: std::time::SystemTime) -> std::time::Instant {
    let now = std::time::Instant::now();
    match time.duration_since(std::time::SystemTime::now()) {
        Ok(ahead) => now.checked_add(ahead).unwrap_or(now + std::time::Duration::from_secs(365 * 86_400)),
        Err(_) => now,
    }
}

/// The end of every binary's `main`: an error is one line on stderr ([`one_line`]), never a backtrace, and
/// the exit status says it failed.
pub fn report(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes joined with `: `, each cause once. tether's errors end their message with their
/// source's text (so a log line of the error alone says it all) and also return it as `source()`; anyhow's
/// `{:#}` would print that text twice.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut chain = error.chain();
    let mut line = chain.next().map(|e| e.to_string()).unwrap_or_default();
    for cause in chain {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = Error::Read { path: "/etc/tether/ca.pem".into(), source: missing };
        let error = anyhow::Error::new(error).context("--hub-ca");
        assert_eq!(one_line(&error), "--hub-ca: reading /etc/tether/ca.pem: no such file");
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        let error =
            anyhow::Error::new(Error::Metrics(metrics_exporter_prometheus::BuildError::EmptyBucketsOrQuantiles));
        let error = error.context("starting");
        assert_eq!(
            one_line(&error),
            "starting: installing the metrics recorder: bucket bounds/quantiles cannot be empty"
        );
    }
}
