use std::path::PathBuf;

/// Errors that stop the server from starting or running. Per-request failures are `proxy::ProxyError`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] tether_runtime::Error),
    #[error("binding {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
    #[error("QUIC server configuration: {0}")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("hub apiserver client: {0}")]
    Kube(#[from] kube::Error),
    /// `--hub-kubeconfig` (of `serve` or `kubeconfig`) that kube cannot load.
    #[error("hub kubeconfig: --hub-kubeconfig {}: {source}", path.display())]
    HubKubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    /// No `--hub-kubeconfig` and no in-cluster service account either.
    #[error("hub kubeconfig: in-cluster configuration: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    /// A file the `kubeconfig` command reads: `flag` names where its path came from.
    #[error("hub kubeconfig: {flag}: {}: {source}", path.display())]
    KubeconfigFile { flag: &'static str, path: PathBuf, source: std::io::Error },
    #[error("hub kubeconfig: --ca-file: {0}")]
    KubeconfigCa(#[source] tether_runtime::tls::PemError),
    #[error("hub kubeconfig: --hub-kubeconfig: {0}")]
    KubeconfigYaml(#[source] serde_yaml::Error),
    #[error("hub kubeconfig: --hub-kubeconfig: no user for its current-context")]
    KubeconfigNoUser,
    #[error("hub kubeconfig: --cluster: {0}")]
    KubeconfigCluster(#[source] tether_certs::Error),
    #[error("hub kubeconfig: writing YAML: {0}")]
    KubeconfigRender(#[source] serde_yaml::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
