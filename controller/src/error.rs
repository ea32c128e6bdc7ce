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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
