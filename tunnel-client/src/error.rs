use std::path::PathBuf;

use tether_runtime::tls::PemError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] tether_runtime::Error),
    /// A flag's value that fails a check; `reason` is the check's own text.
    #[error("{flag}: {reason}")]
    Config { flag: &'static str, reason: String },
    /// A file a flag names that cannot be read.
    #[error("{flag}: {}: {source}", path.display())]
    FlagFile { flag: &'static str, path: PathBuf, source: std::io::Error },
    /// A flag's file (or the identity standing in for it) that tether-runtime cannot load.
    #[error("{flag}: {source}")]
    FlagTls { flag: &'static str, source: tether_runtime::Error },
    /// A flag's certificate that holds no usable PEM certificate.
    #[error("{flag}: {source}")]
    FlagPem { flag: &'static str, source: PemError },
    /// A flag's certificate or cluster name that tether-certs refuses.
    #[error("{flag}: {source}")]
    FlagCerts { flag: &'static str, source: tether_certs::Error },
    #[error("--kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// An identity policy that cannot be used; `field` is the flag or ConfigMap key at fault.
    #[error("identity policy: {field}: {reason}")]
    Policy { field: String, reason: String },
    /// No `--kubeconfig` and no in-cluster service account either.
    #[error("spoke apiserver credentials: in-cluster configuration: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("spoke apiserver credentials: {0}")]
    UpstreamClient(#[source] kube::Error),
    /// `what`: the apiserver CA or the client certificate.
    #[error("spoke apiserver credentials: {what}: {source}")]
    UpstreamTls { what: &'static str, source: rustls::Error },
    /// `what`: the kubeconfig field that named the file.
    #[error("spoke apiserver credentials: {what} {}: {source}", path.display())]
    UpstreamFile { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("spoke apiserver credentials: {what}: {source}")]
    UpstreamBase64 { what: &'static str, source: base64::DecodeError },
    #[error("spoke apiserver credentials: {0}")]
    UpstreamPem(#[source] PemError),
    /// Credentials of the wrong shape; the message never quotes them.
    #[error("spoke apiserver credentials: {0}")]
    Upstream(&'static str),
    /// The Secret that holds the identity (`--identity-secret`, `NAMESPACE/NAME`) cannot be read or written;
    /// `what` says which.
    #[error("spoke apiserver credentials: {what} Secret {secret}: {source}")]
    IdentitySecret { what: &'static str, secret: String, source: kube::Error },
    #[error("QUIC client configuration: {0}")]
    Quic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The address a flag names cannot be bound.
    #[error("{flag} {addr}: {source}")]
    Bind { flag: &'static str, addr: std::net::SocketAddr, source: std::io::Error },
    /// A flag's key that does not go with its certificate (rustls' check).
    #[error("{flag}: {source}")]
    FlagKey { flag: &'static str, source: rustls::Error },
    /// The hub refused to issue a certificate; retrying with the same token or request will not help.
    #[error("bootstrap refused by the hub: {0}")]
    Refused(String),
    #[error("bootstrap: {0}")]
    Bootstrap(String),
    #[error("bootstrap: the hub issued an unusable certificate: {0}")]
    IssuedPem(#[source] PemError),
    #[error("bootstrap: the hub issued an unusable certificate: {0}")]
    IssuedCerts(#[source] tether_certs::Error),
    /// The issued certificate does not go with the pending key (rustls' check).
    #[error("bootstrap: the hub issued an unusable certificate: {0}")]
    IssuedKey(#[source] rustls::Error),
    #[error("bootstrap: the hub issued an unusable certificate: it is for cluster {0}")]
    IssuedForCluster(String),
    #[error("bootstrap: pending key: {0}")]
    PendingKey(#[source] PemError),
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
