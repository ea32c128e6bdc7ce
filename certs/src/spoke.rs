//! Spoke identities: the spoke makes its key and CSR; the hub CA signs the CSR into a client
//! certificate whose subject it sets itself from the cluster name.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA1WITHRSA,
    OID_SHA1_WITH_RSA, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::{parse, pem, CertificateAuthority, Error, Result, SPOKE_ORGANIZATION};

/// The smallest RSA modulus accepted in a spoke CSR.
const MIN_RSA_BITS: usize = 2048;

/// Check that `name` can name a cluster: a DNS-1123 label (1 to 63 characters, lowercase
/// letters, digits and `-`, starting and ending with a letter or digit), as Kubernetes object
/// names used in URLs, Secrets and Leases must be.
pub fn validate_cluster_name(name: &str) -> Result<()> {
    let invalid = |reason| Err(Error::InvalidClusterName { name: name.to_owned(), reason });
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > 63 {
        return invalid("must be at most 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return invalid("must consist of lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("must start and end with a letter or digit");
    }
    Ok(())
}

/// Run on the spoke: a new ECDSA P-256 private key (PKCS#8 PEM) and a CSR (PEM) for it with
/// subject `CN=<cluster>, O=tether:spokes`. Only the CSR is sent to the hub.
pub fn spoke_key_and_csr(cluster: &str) -> Result<(String, String)> {
    validate_cluster_name(cluster)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = spoke_subject(cluster);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Check a spoke's CSR (PEM) as [`CertificateAuthority::sign_spoke_csr`] would for `cluster`,
/// without signing it: the cluster name, the self-signature, the key, and a common name, if the
/// CSR names one, that must be `cluster`. Returns that common name: `Some(cluster)`, or `None`
/// when the CSR names none (signable, but it does not say which cluster it was made for).
pub fn check_spoke_csr(csr_pem: &str, cluster: &str) -> Result<Option<String>> {
    checked_csr(csr_pem, cluster).map(|(_, common_name)| common_name)
}

impl CertificateAuthority {
    /// Sign a spoke's PKCS#10 CSR (PEM) into a client certificate for `cluster`.
    ///
    /// The certificate's subject is `CN=<cluster>, O=tether:spokes` whatever the CSR asked for,
    /// with the clientAuth extended key usage only; extensions the CSR requests are ignored.
    /// But a CSR that names a common name must name `cluster`, so a CSR made for one cluster
    /// cannot be signed for another. The CSR's self-signature must verify (proof that the
    /// requester holds the key), and its key must be ECDSA P-256/P-384, Ed25519, or RSA of at
    /// least 2048 bits. Returns the certificate, PEM.
    pub fn sign_spoke_csr(&self, csr_pem: &str, cluster: &str, now: SystemTime, validity: Duration) -> Result<String> {
        let (public_key, _) = checked_csr(csr_pem, cluster)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = spoke_subject(cluster);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        Ok(self.issue(params, &public_key, now, validity)?.pem())
    }
}

/// Every check of a spoke CSR (PEM) for `cluster`, shared by checking and signing: the public key
/// to certify and the CSR's common name, if it has one.
fn checked_csr(csr_pem: &str, cluster: &str) -> Result<(rcgen::SubjectPublicKeyInfo, Option<String>)> {
    validate_cluster_name(cluster)?;
    let csr_der = pem::single_csr_der(csr_pem)?;
    verified_csr_key(&csr_der, cluster)
}

fn spoke_subject(cluster: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cluster);
    name.push(DnType::OrganizationName, SPOKE_ORGANIZATION);
    name
}

/// Parse and check a CSR for `cluster`; its public key, ready to be certified, and its common name.
fn verified_csr_key(csr_der: &[u8], cluster: &str) -> Result<(rcgen::SubjectPublicKeyInfo, Option<String>)> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der).map_err(|e| Error::Csr(e.into()))?;
    if !rest.is_empty() {
        return Err(Error::CsrShape("trailing bytes after the request"));
    }
    let info = &csr.certification_request_info;
    // The key first: ring cannot verify signatures of keys that are too small, and the
    // caller should learn that the key is the problem, not the signature.
    check_public_key(&info.subject_pki)?;

    let alg = &csr.signature_algorithm.algorithm;
    if *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA {
        return Err(Error::CsrSignatureAlgorithm(alg.to_id_string()));
    }
    csr.verify_signature().map_err(|e| match e {
        X509Error::SignatureUnsupportedAlgorithm => Error::CsrSignatureAlgorithm(alg.to_id_string()),
        _ => Error::CsrSignature,
    })?;

    let common_name = parse::common_name(&info.subject).map_err(Error::CsrShape)?;
    if let Some(requested) = &common_name {
        if requested != cluster {
            return Err(Error::ClusterMismatch { requested: requested.clone(), cluster: cluster.to_owned() });
        }
    }
    let key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw).map_err(Error::UncertifiableKey)?;
    Ok((key, common_name))
}

/// Accept ECDSA P-256/P-384, Ed25519 and RSA (rsaEncryption) of at least 2048 bits.
fn check_public_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<()> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| Error::WeakKey("EC key without a named curve".into()))?;
        if curve == OID_EC_P256 || curve == OID_NIST_EC_P384 {
            Ok(())
        } else {
            Err(Error::WeakKey(format!("EC curve {}", curve.to_id_string())))
        }
    } else if *alg == OID_SIG_ED25519 {
        Ok(())
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(Error::WeakKey("malformed RSA key".into()));
        };
        let bits = significant_bits(rsa.modulus);
        if bits < MIN_RSA_BITS {
            return Err(Error::WeakKey(format!("RSA key of {bits} bits")));
        }
        Ok(())
    } else {
        Err(Error::WeakKey(format!("key algorithm {}", alg.to_id_string())))
    }
}

/// The bit length of a big-endian unsigned integer (leading zero bytes allowed).
fn significant_bits(be: &[u8]) -> usize {
    let be = match be.iter().position(|&b| b != 0) {
        Some(first) => &be[first..],
        None => return 0,
    };
    be.len() * 8 - be[0].leading_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cluster_of, rotation, BACKDATE};
    use std::time::UNIX_EPOCH;
    use x509_parser::certification_request::X509CertificationRequest;

    /// Made with `openssl req -new -newkey rsa:1024 -nodes -subj
    /// "/CN=weak-cluster/O=tether:spokes"` when these tests were written.
    const RSA_1024_CSR: &str = include_str!("testdata/rsa1024.csr");
    /// As above with `rsa:2048` and `CN=rsa-cluster`.
    const RSA_2048_CSR: &str = include_str!("testdata/rsa2048.csr");
    /// As above with `-newkey ec -pkeyopt ec_paramgen_curve:P-521` and `CN=p521-cluster`.
    const P521_CSR: &str = include_str!("testdata/p521.csr");

    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("spoke-test-ca", t0(), 365 * DAY).unwrap()
    }

    fn csr_with(params: CertificateParams, key: &KeyPair) -> String {
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn cluster_names() {
        for ok in ["a", "cluster-a", "0", "a1-b2", &"x".repeat(63)] {
            validate_cluster_name(ok).unwrap();
        }
        for bad in ["", "Cluster", "a_b", "a.b", "-a", "a-", "a b", "é", &"x".repeat(64)] {
            assert!(matches!(validate_cluster_name(bad), Err(Error::InvalidClusterName { .. })), "{bad:?} accepted");
        }
    }

    #[test]
    fn spoke_csr_names_the_cluster_and_verifies() {
        let (key_pem, csr_pem) = spoke_key_and_csr("cluster-a").unwrap();
        assert!(key_pem.contains("BEGIN PRIVATE KEY"));
        let der = pem::single_csr_der(&csr_pem).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        let subject = &csr.certification_request_info.subject;
        assert_eq!(parse::common_name(subject).unwrap().as_deref(), Some("cluster-a"));
        assert_eq!(parse::organizations(subject).unwrap(), [SPOKE_ORGANIZATION]);
        // The CSR carries the key's public half.
        let key = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(
            csr.certification_request_info.subject_pki.subject_public_key.data.as_ref(),
            rcgen::PublicKeyData::der_bytes(&key)
        );
    }

    #[test]
    fn spoke_csr_rejects_invalid_cluster_names() {
        assert!(matches!(spoke_key_and_csr("Not_A_Label"), Err(Error::InvalidClusterName { .. })));
    }

    #[test]
    fn signing_sets_the_subject_from_the_cluster() {
        let ca = ca();
        let (key_pem, csr_pem) = spoke_key_and_csr("cluster-a").unwrap();
        let cert_pem = ca.sign_spoke_csr(&csr_pem, "cluster-a", t0(), 90 * DAY).unwrap();
        let der = pem::single_cert_der(&cert_pem).unwrap();
        assert_eq!(cluster_of(&der).unwrap(), "cluster-a");

        let cert = parse::certificate(&der).unwrap();
        let ca_cert = parse::certificate(ca.cert_der()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
        assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
        let key = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), rcgen::PublicKeyData::der_bytes(&key));
        assert_eq!(rotation::validity(&der).unwrap(), (t0() - BACKDATE, t0() + 90 * DAY));
    }

    #[test]
    fn signing_ignores_what_else_the_csr_asks_for() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "cluster-a");
        name.push(DnType::OrganizationName, "system:masters");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr = csr_with(params, &key);

        let cert_pem = ca().sign_spoke_csr(&csr, "cluster-a", t0(), DAY).unwrap();
        let der = pem::single_cert_der(&cert_pem).unwrap();
        let cert = parse::certificate(&der).unwrap();
        assert_eq!(parse::organizations(cert.subject()).unwrap(), [SPOKE_ORGANIZATION]);
        assert!(!cert.is_ca());
        assert!(cert.subject_alternative_name().unwrap().is_none());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn a_csr_without_a_common_name_is_signed_for_the_cluster() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = csr_with(params, &key);
        let cert_pem = ca().sign_spoke_csr(&csr, "cluster-b", t0(), DAY).unwrap();
        let der = pem::single_cert_der(&cert_pem).unwrap();
        assert_eq!(cluster_of(&der).unwrap(), "cluster-b");
    }

    #[test]
    fn checking_a_csr_agrees_with_signing_it() {
        let (_key, csr) = spoke_key_and_csr("cluster-a").unwrap();
        assert_eq!(check_spoke_csr(&csr, "cluster-a").unwrap().as_deref(), Some("cluster-a"));
        assert!(matches!(check_spoke_csr(&csr, "cluster-b"), Err(Error::ClusterMismatch { .. })));
        assert!(matches!(check_spoke_csr(RSA_1024_CSR, "weak-cluster"), Err(Error::WeakKey(_))));
        assert!(matches!(check_spoke_csr(&csr, "Cluster-A"), Err(Error::InvalidClusterName { .. })));

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let anonymous = csr_with(params, &KeyPair::generate().unwrap());
        assert_eq!(check_spoke_csr(&anonymous, "cluster-b").unwrap(), None);
    }

    #[test]
    fn a_csr_naming_another_cluster_is_rejected() {
        let (_key, csr) = spoke_key_and_csr("cluster-a").unwrap();
        let err = ca().sign_spoke_csr(&csr, "cluster-b", t0(), DAY).unwrap_err();
        assert!(
            matches!(&err, Error::ClusterMismatch { requested, cluster }
                if requested == "cluster-a" && cluster == "cluster-b"),
            "{err}"
        );
    }

    #[test]
    fn an_invalid_cluster_name_is_rejected_when_signing() {
        let (_key, csr) = spoke_key_and_csr("cluster-a").unwrap();
        assert!(matches!(ca().sign_spoke_csr(&csr, "Cluster-A", t0(), DAY), Err(Error::InvalidClusterName { .. })));
    }

    #[test]
    fn a_bad_csr_signature_is_rejected() {
        let (_key, csr_pem) = spoke_key_and_csr("cluster-a").unwrap();
        let mut der = pem::single_csr_der(&csr_pem).unwrap();
        // Flip a bit in the last byte: the signature's, so the request still parses.
        *der.last_mut().unwrap() ^= 0x01;
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(ca().sign_spoke_csr(&tampered, "cluster-a", t0(), DAY), Err(Error::CsrSignature)));
    }

    #[test]
    fn a_csr_with_a_swapped_subject_does_not_verify() {
        // Someone edits the subject of cluster-a's CSR to claim cluster-b.
        let (_key, csr_pem) = spoke_key_and_csr("cluster-a").unwrap();
        let der = pem::single_csr_der(&csr_pem).unwrap();
        let mut edited = der.clone();
        let at = edited.windows(b"cluster-a".len()).position(|w| w == b"cluster-a").unwrap();
        edited[at + b"cluster-".len()] = b'b';
        let tampered = pem_encode("CERTIFICATE REQUEST", &edited);
        assert!(matches!(ca().sign_spoke_csr(&tampered, "cluster-b", t0(), DAY), Err(Error::CsrSignature)));
    }

    #[test]
    fn weak_and_unsupported_keys_are_rejected() {
        let ca = ca();
        let err = ca.sign_spoke_csr(RSA_1024_CSR, "weak-cluster", t0(), DAY).unwrap_err();
        assert!(matches!(&err, Error::WeakKey(why) if why.contains("1024")), "{err}");
        assert!(matches!(ca.sign_spoke_csr(P521_CSR, "p521-cluster", t0(), DAY), Err(Error::WeakKey(_))));
    }

    #[test]
    fn strong_keys_of_every_accepted_kind_are_signed() {
        let ca = ca();
        let cert = ca.sign_spoke_csr(RSA_2048_CSR, "rsa-cluster", t0(), DAY).unwrap();
        let der = pem::single_cert_der(&cert).unwrap();
        assert_eq!(cluster_of(&der).unwrap(), "rsa-cluster");
        let csr_der = pem::single_csr_der(RSA_2048_CSR).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&csr_der).unwrap();
        let cert = parse::certificate(&der).unwrap();
        assert_eq!(cert.public_key().raw, csr.certification_request_info.subject_pki.raw);

        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name = spoke_subject("cluster-c");
            let csr = csr_with(params, &key);
            let cert = ca.sign_spoke_csr(&csr, "cluster-c", t0(), DAY).unwrap();
            let der = pem::single_cert_der(&cert).unwrap();
            let cert = parse::certificate(&der).unwrap();
            assert_eq!(cert.public_key().subject_public_key.data.as_ref(), rcgen::PublicKeyData::der_bytes(&key));
        }
    }

    #[test]
    fn malformed_csrs_are_rejected() {
        let ca = ca();
        assert!(matches!(
            ca.sign_spoke_csr("no pem here", "a", t0(), DAY),
            Err(Error::MissingPem("certificate request"))
        ));
        let garbage = pem_encode("CERTIFICATE REQUEST", b"not a request");
        assert!(matches!(ca.sign_spoke_csr(&garbage, "a", t0(), DAY), Err(Error::Csr(_))));
        let bad_base64 = "-----BEGIN CERTIFICATE REQUEST-----\n%%%\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(ca.sign_spoke_csr(bad_base64, "a", t0(), DAY), Err(Error::Pem(_))));
    }

    #[test]
    fn checking_refuses_bad_signatures_unsupported_keys_and_non_csrs() {
        let (_key, csr) = spoke_key_and_csr("cluster-a").unwrap();
        assert_eq!(check_spoke_csr(RSA_2048_CSR, "rsa-cluster").unwrap().as_deref(), Some("rsa-cluster"));
        assert!(matches!(check_spoke_csr(P521_CSR, "p521-cluster"), Err(Error::WeakKey(_))));
        assert!(matches!(check_spoke_csr("no pem here", "a"), Err(Error::MissingPem(_))));
        let mut der = pem::single_csr_der(&csr).unwrap();
        *der.last_mut().unwrap() ^= 0x01;
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(check_spoke_csr(&tampered, "cluster-a"), Err(Error::CsrSignature)));
        // Whatever passes the check is signed.
        ca().sign_spoke_csr(&csr, "cluster-a", t0(), DAY).unwrap();
    }

    #[test]
    fn rsa_bit_lengths() {
        assert_eq!(significant_bits(&[]), 0);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(significant_bits(&[0x01, 0xff]), 9);
        assert_eq!(significant_bits(&[0x7f; 256]), 2047);
    }

    /// PEM-encode `der` under `label` (tests only; base64 by hand to avoid a dependency).
    fn pem_encode(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }
}
