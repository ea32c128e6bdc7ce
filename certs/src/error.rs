/// Everything that can go wrong in this crate.
///
/// Messages are one line and name the offending value, so a CLI can print them as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is not well-formed PEM (bad base64, unterminated section, ...).
    #[error("malformed PEM: {0}")]
    Pem(String),
    /// The PEM input holds no section of the expected kind.
    #[error("no {0} found in PEM input")]
    MissingPem(&'static str),
    /// More sections of a kind than expected (e.g. two keys where one is needed).
    #[error("expected one {what} in PEM input, found {found}")]
    TooManyPem { what: &'static str, found: usize },
    /// A certificate that cannot be parsed.
    #[error("malformed certificate: {0}")]
    Certificate(String),
    /// A private key that cannot be used.
    #[error("unusable private key: {0}")]
    PrivateKey(String),
    /// A certificate signing request that cannot be parsed.
    #[error("malformed certificate request: {0}")]
    Csr(String),
    /// The CSR's self-signature does not verify with the key it carries.
    #[error("certificate request signature does not verify")]
    CsrSignature,
    /// The CSR is signed with an algorithm tether does not accept (e.g. SHA-1).
    #[error("certificate request signature algorithm {0} is not accepted")]
    CsrSignatureAlgorithm(String),
    /// A key that is too weak or of a kind tether does not accept.
    #[error("key not accepted: {0}; use ECDSA P-256/P-384, Ed25519 or RSA >= 2048 bits")]
    WeakKey(String),
    /// A CSR whose common name names a cluster other than the one being signed for.
    #[error("certificate request is for cluster {requested:?}, not {cluster:?}")]
    ClusterMismatch { requested: String, cluster: String },
    #[error("invalid cluster name {name:?}: {reason}")]
    InvalidClusterName { name: String, reason: &'static str },
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidDnsName { name: String, reason: &'static str },
    #[error("invalid common name {0:?}: must be 1 to 64 characters")]
    InvalidCommonName(String),
    #[error("a serving certificate needs at least one DNS name or IP address")]
    NoSubjectAltNames,
    /// The private key does not belong to the certificate.
    #[error("private key does not match the certificate")]
    KeyMismatch,
    #[error("certificate is not a CA: {0}")]
    NotCa(&'static str),
    /// The CA cannot sign at `now` (expired or not yet valid).
    #[error("CA certificate is not valid at the requested time ({0})")]
    CaNotValid(&'static str),
    /// A validity window that cannot be encoded (zero length, before 1970, after 9999).
    #[error("invalid validity period: {0}")]
    Validity(&'static str),
    /// A certificate that is not a tether spoke client certificate.
    #[error("not a tether spoke certificate: {0}")]
    NotSpoke(&'static str),
    /// A certificate without a usable Kubernetes user identity.
    #[error("not a user certificate: {0}")]
    NotUser(&'static str),
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
