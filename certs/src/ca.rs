//! The hub CA: creation, loading, and the issuing step shared by serving and spoke certificates.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SerialNumber,
};

use crate::{parse, pem, Error, Result};

/// How far before `now` issued certificates start to be valid, so that a peer whose clock is a
/// little behind the hub's still accepts them (Kubernetes' CSR signer uses the same 5 minutes).
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The hub CA: its certificate and key, able to issue serving and spoke certificates.
///
/// `Debug` never prints the key.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    common_name: Option<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// A new self-signed CA with an ECDSA P-256 key: `CA:true` with path length 0 (it signs
    /// only end-entity certificates), key usages keyCertSign, cRLSign and digitalSignature,
    /// valid from `now - BACKDATE` until `now + validity`.
    pub fn generate(common_name: &str, now: SystemTime, validity: Duration) -> Result<Self> {
        if common_name.is_empty() || common_name.len() > 64 {
            return Err(Error::InvalidCommonName(common_name.to_owned()));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = window(now, validity)?;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        // One construction path: what `generate` returns is exactly what `from_pem` would load.
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Load a CA from its PEM certificate and PEM (PKCS#8) private key.
    ///
    /// The certificate PEM must hold exactly the one certificate (so that [`Self::cert_pem`]
    /// can be handed out as the trust anchor without carrying anything else), the certificate
    /// must be a CA (`basicConstraints CA:true`, and keyCertSign if it has key usages), and the
    /// key must be the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert_der = pem::single_cert_der(cert_pem)?;
        if pem::section_count(cert_pem)? != 1 {
            return Err(Error::CaPemNotAlone);
        }
        let cert = parse::certificate(&cert_der)?;
        match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            Ok(_) => return Err(Error::NotCa("basicConstraints CA is not set")),
            Err(e) => return Err(Error::Certificate(e)),
        }
        match cert.key_usage() {
            Ok(Some(ku)) if !ku.value.key_cert_sign() => {
                return Err(Error::NotCa("key usage does not allow keyCertSign"))
            }
            Ok(_) => {}
            Err(e) => return Err(Error::Certificate(e)),
        }

        let key_der = pem::single_pkcs8_key_der(key_pem)?;
        let key = KeyPair::try_from(key_der.as_slice()).map_err(Error::PrivateKey)?;
        if key.der_bytes() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(Error::KeyMismatch);
        }

        let common_name = parse::common_name(cert.subject()).ok().flatten();
        let not_before = parse::system_time(cert.validity().not_before);
        let not_after = parse::system_time(cert.validity().not_after);
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            common_name,
            not_before,
            not_after,
            issuer,
        })
    }

    /// The CA certificate, PEM: the trust anchor spokes and clients are given.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8). Keep it secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate, DER (for root stores).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// When the CA certificate expires; issued certificates never outlive it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Sign `params` for `public_key`: validity from `now - BACKDATE` to `now + validity`,
    /// cut at the CA's own expiry; a random serial; the authority key identifier of this CA.
    pub(crate) fn issue(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        now: SystemTime,
        validity: Duration,
    ) -> Result<rcgen::Certificate> {
        if now < self.not_before {
            return Err(Error::CaNotValid("before its not-before"));
        }
        if now >= self.not_after {
            return Err(Error::CaNotValid("expired"));
        }
        let (not_before, not_after) = window(now, validity)?;
        params.not_before = not_before;
        params.not_after = not_after.min(parse::offset_date_time(self.not_after)?);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params.signed_by(public_key, &self.issuer)?)
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("common_name", &self.common_name)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// `(now - BACKDATE, now + validity)` in whole seconds.
fn window(now: SystemTime, validity: Duration) -> Result<(time::OffsetDateTime, time::OffsetDateTime)> {
    if validity < Duration::from_secs(1) {
        return Err(Error::Validity("shorter than one second"));
    }
    let start = now.checked_sub(BACKDATE).ok_or(Error::Validity("time before 1970"))?;
    let end = now.checked_add(validity).ok_or(Error::Validity("time after year 9999"))?;
    Ok((parse::offset_date_time(start)?, parse::offset_date_time(end)?))
}

/// 126 random bits, positive and always 16 bytes long (RFC 5280 allows up to 20).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{rotation, CertifiedKey};
    use std::time::UNIX_EPOCH;

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn generate_makes_a_p256_ca() {
        let ca = CertificateAuthority::generate("tether-hub-ca", t0(), 10 * DAY).unwrap();
        let cert = parse::certificate(ca.cert_der()).unwrap();
        assert!(cert.is_ca());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert_eq!(parse::common_name(cert.subject()).unwrap().as_deref(), Some("tether-hub-ca"));
        assert_eq!(cert.subject(), cert.issuer());
        let alg = &cert.public_key().algorithm;
        assert_eq!(alg.parameters.as_ref().unwrap().as_oid().unwrap(), x509_parser::oid_registry::OID_EC_P256);
        let (nb, na) = rotation::validity(ca.cert_der()).unwrap();
        assert_eq!(nb, t0() - BACKDATE);
        assert_eq!(na, t0() + 10 * DAY);
        assert!(ca.key_pem().contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn generate_rejects_empty_or_long_common_names() {
        for cn in ["", &"x".repeat(65)] {
            assert!(matches!(CertificateAuthority::generate(cn, t0(), DAY), Err(Error::InvalidCommonName(_))));
        }
    }

    #[test]
    fn generate_rejects_zero_and_unencodable_validity() {
        assert!(matches!(CertificateAuthority::generate("ca", t0(), Duration::ZERO), Err(Error::Validity(_))));
        assert!(matches!(CertificateAuthority::generate("ca", t0(), DAY * 365 * 10_000), Err(Error::Validity(_))));
        assert!(matches!(CertificateAuthority::generate("ca", UNIX_EPOCH, DAY), Err(Error::Validity(_))));
    }

    #[test]
    fn serials_are_random() {
        let a = CertificateAuthority::generate("ca", t0(), DAY).unwrap();
        let b = CertificateAuthority::generate("ca", t0(), DAY).unwrap();
        let (sa, sb) = (rotation::serial_hex(a.cert_der()).unwrap(), rotation::serial_hex(b.cert_der()).unwrap());
        assert_ne!(sa, sb);
        assert_eq!(sa.len(), 32);
    }

    #[test]
    fn from_pem_round_trip() {
        let ca = CertificateAuthority::generate("round-trip", t0(), DAY).unwrap();
        let loaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_pem(), ca.key_pem());
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.not_after(), ca.not_after());
        // The loaded CA issues certificates that chain to the original.
        let serving = loaded.issue_serving(&["hub.example".into()], &[], t0(), DAY).unwrap();
        let leaf = pem::single_cert_der(&serving.cert_pem).unwrap();
        let leaf = parse::certificate(&leaf).unwrap();
        let ca_cert = parse::certificate(ca.cert_der()).unwrap();
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(leaf.issuer(), ca_cert.subject());
    }

    #[test]
    fn from_pem_rejects_a_key_of_another_ca() {
        let a = CertificateAuthority::generate("a", t0(), DAY).unwrap();
        let b = CertificateAuthority::generate("b", t0(), DAY).unwrap();
        assert!(matches!(CertificateAuthority::from_pem(a.cert_pem(), b.key_pem()), Err(Error::KeyMismatch)));
    }

    #[test]
    fn from_pem_rejects_a_leaf_certificate() {
        let ca = CertificateAuthority::generate("ca", t0(), DAY).unwrap();
        let CertifiedKey { cert_pem, key_pem } = ca.issue_serving(&["hub.example".into()], &[], t0(), DAY).unwrap();
        assert!(matches!(CertificateAuthority::from_pem(&cert_pem, &key_pem), Err(Error::NotCa(_))));
    }

    #[test]
    fn from_pem_rejects_malformed_input() {
        let ca = CertificateAuthority::generate("ca", t0(), DAY).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem("garbage", ca.key_pem()),
            Err(Error::MissingPem("certificate"))
        ));
        assert!(matches!(
            CertificateAuthority::from_pem(ca.cert_pem(), "garbage"),
            Err(Error::MissingPem("private key"))
        ));
        // A certificate file that also carries the key is refused: cert_pem is handed out.
        let combined = format!("{}{}", ca.cert_pem(), ca.key_pem());
        assert!(matches!(CertificateAuthority::from_pem(&combined, ca.key_pem()), Err(Error::CaPemNotAlone)));
        let two = format!("{}{}", ca.cert_pem(), ca.cert_pem());
        assert!(matches!(CertificateAuthority::from_pem(&two, ca.key_pem()), Err(Error::TooManyPem { found: 2, .. })));
    }

    #[test]
    fn issued_certificates_never_outlive_the_ca() {
        let ca = CertificateAuthority::generate("ca", t0(), 10 * DAY).unwrap();
        let serving = ca.issue_serving(&["hub.example".into()], &[], t0() + DAY, 365 * DAY).unwrap();
        let der = pem::single_cert_der(&serving.cert_pem).unwrap();
        let (nb, na) = rotation::validity(&der).unwrap();
        assert_eq!(nb, t0() + DAY - BACKDATE);
        assert_eq!(na, ca.not_after());
    }

    #[test]
    fn an_expired_or_future_ca_does_not_sign() {
        let ca = CertificateAuthority::generate("ca", t0(), DAY).unwrap();
        let names = ["hub.example".to_owned()];
        assert!(matches!(ca.issue_serving(&names, &[], t0() + DAY, DAY), Err(Error::CaNotValid("expired"))));
        assert!(matches!(ca.issue_serving(&names, &[], t0() - DAY, DAY), Err(Error::CaNotValid(_))));
    }

    #[test]
    fn can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<CertificateAuthority>();
    }

    #[test]
    fn debug_redacts_the_key() {
        let ca = CertificateAuthority::generate("debug-ca", t0(), DAY).unwrap();
        let shown = format!("{ca:?}");
        assert!(shown.contains("debug-ca") && shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
}
