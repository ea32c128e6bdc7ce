//! The crate's one error. Each message ends with its cause's text, so that a log line (`%e`) says it all;
//! [`report`](crate::report) prints a chain once.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Pem { path: PathBuf, source: crate::tls::PemError },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("generating a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// rustls cannot tell which kind of key rcgen generated (a static message from rustls).
    #[error("generating a self-signed certificate: {0}")]
    GeneratedKey(&'static str),
    #[error("installing the metrics recorder: {0}")]
    Metrics(#[source] metrics_exporter_prometheus::BuildError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
