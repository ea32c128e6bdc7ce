//! The hub CA and everything x509 that tether needs.
//!
//! - [`CertificateAuthority`]: create or load the hub CA, issue the hub's serving certificate
//!   ([`CertificateAuthority::issue_serving`]) and sign spokes' CSRs into client certificates
//!   ([`CertificateAuthority::sign_spoke_csr`]) whose subject is `CN=<cluster>, O=tether:spokes`.
//! - [`spoke_key_and_csr`]: run on the spoke; its private key never leaves it. [`check_spoke_csr`]
//!   checks a CSR as signing would, without signing (for approval decisions).
//! - [`cluster_of`] and [`kube_user_of`]: identities of verified client certificates.
//! - [`issued_at`], [`renewal_due`], [`renewal_time`], [`validity`], [`serial_hex`]: rotation decisions as pure
//!   functions of (certificate, `now`).
//!
//! Nothing here reads a clock: every time-dependent function takes `now`.

mod ca;
mod error;
mod identity;
mod parse;
mod pem;
mod rotation;
mod serving;
mod spoke;

use std::fmt;

pub use ca::{CertificateAuthority, BACKDATE};
pub use error::{Error, Result};
pub use identity::{cluster_of, kube_user_of};
pub use pem::pem_to_der_certs;
pub use rotation::{issued_at, renewal_due, renewal_time, serial_hex, validity, RENEW_AT_PERCENT};
pub use serving::validate_dns_name;
pub use spoke::{check_spoke_csr, spoke_key_and_csr, validate_cluster_name};

/// The organization (`O`) of every spoke client certificate; [`cluster_of`] requires it.
pub const SPOKE_ORGANIZATION: &str = "tether:spokes";

/// A PEM certificate and its PEM (PKCS#8) private key.
///
/// `Debug` never prints the key.
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certified_key_debug_redacts_the_key() {
        let key = CertifiedKey { cert_pem: "CERT".into(), key_pem: "-----BEGIN PRIVATE KEY-----SECRET".into() };
        let shown = format!("{key:?}");
        assert!(shown.contains("CERT"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
