//! One QUIC stream, as the hub and the spoke both use it for a proxied request: [`io`] turns a stream into the
//! `AsyncRead + AsyncWrite` hyper and upgraded connections want, and [`http`] reads HTTP heads
//! ([`tether_proto::http_head`]) and moves bodies on it without copying.
//!
//! This is the data path of every request, so it is its own crate: it knows nothing of processes (telemetry,
//! listeners, signals: `tether-runtime`) nor of tunnels and Kubernetes (the binaries).

mod error;
pub mod http;
pub mod io;

pub use error::{BoxError, Error, Result};
