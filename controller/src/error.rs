use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hub apiserver: {0}")]
    Kube(#[from] kube::Error),
    /// A flag's value that fails a check; `reason` is the check's own text.
    #[error("{flag}: {reason}")]
    Config { flag: &'static str, reason: String },
    #[error("{flag}: {source}")]
    Bind { flag: &'static str, source: std::io::Error },
    /// A file a flag names that cannot be read.
    #[error("{flag}: cannot read {}: {source}", path.display())]
    FlagFile { flag: &'static str, path: PathBuf, source: std::io::Error },
    /// A flag's PEM file that tether-certs refuses.
    #[error("{flag}: {}: {source}", path.display())]
    FlagPem { flag: &'static str, path: PathBuf, source: tether_certs::Error },
    /// `--ca-cert` and `--ca-key` that are not a usable CA.
    #[error("--ca-cert: {0}")]
    Ca(#[source] tether_certs::Error),
    #[error("--hub-kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// No `--hub-kubeconfig` and no in-cluster service account either.
    #[error("--hub-kubeconfig: in-cluster configuration: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error(transparent)]
    Runtime(#[from] tether_runtime::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Auto mode could not apply a cluster's manifest; `reason` is its `ManifestApplied` condition's.
    #[error("auto registration: {reason}: {message}")]
    Auto { reason: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
