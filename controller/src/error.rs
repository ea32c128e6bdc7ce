#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hub apiserver: {0}")]
    Kube(#[from] kube::Error),
    #[error("{flag}: {reason}")]
    Config { flag: &'static str, reason: String },
    #[error(transparent)]
    Runtime(#[from] tether_runtime::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Auto mode could not apply a cluster's manifest; `reason` is its `ManifestApplied` condition's.
    #[error("auto registration: {reason}: {message}")]
    Auto { reason: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
