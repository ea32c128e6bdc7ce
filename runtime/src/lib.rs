//! Async plumbing shared by `tunnel-server` and `tunnel-client`: tracing and metrics set-up, the TLS-only ops
//! endpoint (`/metrics`, `/healthz`, `/readyz`), PEM loading, tuned QUIC transport settings, runtime sizing,
//! shutdown signals and small stream adapters. Nothing here knows about tunnels or Kubernetes.

mod error;
pub mod io;
pub mod listener;
pub mod ops;
pub mod session;
pub mod shutdown;
pub mod stream_http;
pub mod telemetry;
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

/// The end of every binary's `main`: an error is one line on stderr (causes joined with `: `), never a
/// backtrace, and the exit status says it failed.
pub fn report(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
