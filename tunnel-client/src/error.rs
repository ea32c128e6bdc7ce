use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] tether_runtime::Error),
    #[error("{flag}: {reason}")]
    Config { flag: &'static str, reason: String },
    /// An identity policy that cannot be used; `field` is the flag or ConfigMap key at fault.
    #[error("identity policy: {field}: {reason}")]
    Policy { field: String, reason: String },
    #[error("spoke apiserver credentials: {0}")]
    Upstream(String),
    #[error("QUIC client configuration: {0}")]
    Quic(String),
    /// The hub refused to issue a certificate; retrying with the same token or request will not help.
    #[error("bootstrap refused by the hub: {0}")]
    Refused(String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
