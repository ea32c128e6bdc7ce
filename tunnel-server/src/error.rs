use std::path::PathBuf;

/// Errors that stop the server from starting or running. Per-request failures are `proxy::ProxyError`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] tether_runtime::Error),
    #[error("binding {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
    #[error("QUIC server configuration: {0}")]
    Quic(String),
    #[error("hub apiserver client: {0}")]
    Kube(#[from] kube::Error),
    #[error("hub kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
