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
    /// The hub closed the tunnel (or refused the handshake) because this spoke's certificate is revoked.
    #[error(
        "the hub revoked this spoke's certificate (cluster {cluster}), as it does when the cluster is unregistered: \
         not redialling; register the cluster again (remove the identity and give a new bootstrap token) to reconnect"
    )]
    Revoked { cluster: String },
    /// The client certificate expired before it was renewed.
    #[error(
        "the hub refused the client certificate as expired (not-after {not_after}; or not valid yet: check the \
         clocks): it should have been renewed at 80 % of its life (see tether_client_renewals_total and the \
         cluster's CertificateSigningRequests on the hub); a new identity is needed"
    )]
    Expired { not_after: String },
    /// The hub speaks another protocol version.
    #[error("protocol version mismatch: the hub speaks {hub}, this client speaks {ours}; run matching versions")]
    VersionMismatch { hub: String, ours: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
