/// Everything that can go wrong in this crate.
///
/// Messages are one line and name the offending value, so a CLI can print them as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is not well-formed PEM (bad base64, unterminated section, ...).
    #[error("malformed PEM: {0}")]
    Pem(#[source] std::io::Error),
    /// A CA certificate file that holds more than the certificate.
    #[error("malformed PEM: the CA certificate PEM must hold only the certificate")]
    CaPemNotAlone,
    /// The PEM input holds no section of the expected kind.
    #[error("no {0} found in PEM input")]
    MissingPem(&'static str),
    /// More sections of a kind than expected (e.g. two keys where one is needed).
    #[error("expected one {what} in PEM input, found {found}")]
    TooManyPem { what: &'static str, found: usize },
    /// A certificate that cannot be parsed.
    #[error("malformed certificate: {0}")]
    Certificate(#[source] x509_parser::error::X509Error),
    /// A certificate that parses but is not whole (trailing bytes, a window that ends before it starts).
    #[error("malformed certificate: {0}")]
    CertificateShape(&'static str),
    /// A private key that cannot be used.
    #[error("unusable private key: {0}")]
    PrivateKey(#[source] rcgen::Error),
    /// A private key in an encoding the ring backend cannot read.
    #[error("unusable private key: only PKCS#8 (\"PRIVATE KEY\") keys are supported; convert with `openssl pkcs8 -topk8 -nocrypt`")]
    PrivateKeyEncoding,
    /// A certificate signing request that cannot be parsed.
    #[error("malformed certificate request: {0}")]
    Csr(#[source] x509_parser::error::X509Error),
    /// A certificate signing request that parses but is not usable (trailing bytes, two common names).
    #[error("malformed certificate request: {0}")]
    CsrShape(&'static str),
    /// The CSR's self-signature does not verify with the key it carries.
    #[error("certificate request signature does not verify")]
    CsrSignature,
    /// The CSR is signed with an algorithm tether does not accept (e.g. SHA-1).
    #[error("certificate request signature algorithm {0} is not accepted")]
    CsrSignatureAlgorithm(String),
    /// A key that is too weak or of a kind tether does not accept.
    #[error("key not accepted: {0}; use ECDSA P-256/P-384, Ed25519 or RSA >= 2048 bits")]
    WeakKey(String),
    /// A key rcgen cannot put in a certificate.
    #[error("key not accepted: cannot certify this key: {0}; use ECDSA P-256/P-384, Ed25519 or RSA >= 2048 bits")]
    UncertifiableKey(#[source] rcgen::Error),
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
