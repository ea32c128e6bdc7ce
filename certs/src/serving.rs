//! The hub's serving certificate for its QUIC (spokes) and HTTPS (kubectl) listeners.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::{CertificateAuthority, CertifiedKey, Error, Result};

/// Check that `name` can go in a DNS subject alternative name: at most 253 characters of dot-
/// separated labels (1 to 63 letters, digits or `-`, not starting or ending with `-`),
/// optionally behind a leading `*.` wildcard. IP addresses are refused: they belong in IP SANs.
pub fn validate_dns_name(name: &str) -> Result<()> {
    let invalid = |reason| Err(Error::InvalidDnsName { name: name.to_owned(), reason });
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > 253 {
        return invalid("must be at most 253 characters");
    }
    if name.parse::<IpAddr>().is_ok() {
        return invalid("is an IP address; give it as an IP instead");
    }
    let labels = name.strip_prefix("*.").unwrap_or(name);
    for label in labels.split('.') {
        if label.is_empty() {
            return invalid("has an empty label");
        }
        if label.len() > 63 {
            return invalid("has a label longer than 63 characters");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return invalid("may contain only letters, digits, '-', '.' and a leading '*.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return invalid("has a label starting or ending with '-'");
        }
    }
    Ok(())
}

impl CertificateAuthority {
    /// A serving certificate for the hub's QUIC and HTTPS listeners: a new ECDSA P-256 key,
    /// the serverAuth extended key usage, and subject alternative names for `dns_names` and
    /// `ips` (at least one of them; duplicates dropped). The common name is the first DNS name
    /// (or IP), for humans only: clients check the SANs.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        now: SystemTime,
        validity: Duration,
    ) -> Result<CertifiedKey> {
        let mut sans = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            validate_dns_name(name)?;
            let san = SanType::DnsName(Ia5String::try_from(name.as_str())?);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        for ip in ips {
            let san = SanType::IpAddress(*ip);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let common_name = match (dns_names.first(), ips.first()) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => return Err(Error::NoSubjectAltNames),
        };

        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        // X.520 caps common names at 64 characters; longer DNS names live only in the SANs.
        if common_name.len() <= 64 {
            subject.push(DnType::CommonName, common_name);
        }
        params.distinguished_name = subject;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

        let key = KeyPair::generate()?;
        let cert = self.issue(params, &key, now, validity)?;
        Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, pem};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::UNIX_EPOCH;
    use x509_parser::extensions::GeneralName;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("serving-test-ca", t0(), 365 * DAY).unwrap()
    }

    #[test]
    fn sans_eku_and_key() {
        let ca = ca();
        let dns = vec!["hub.example.com".to_owned(), "*.hub.example.com".to_owned(), "hub.example.com".to_owned()];
        let ips = [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), IpAddr::V6(Ipv6Addr::LOCALHOST)];
        let served = ca.issue_serving(&dns, &ips, t0(), 30 * DAY).unwrap();
        assert!(served.key_pem.contains("BEGIN PRIVATE KEY"));
        let der = pem::single_cert_der(&served.cert_pem).unwrap();
        let cert = parse::certificate(&der).unwrap();

        let sans = cert.subject_alternative_name().unwrap().unwrap().value;
        let mut dns_sans = Vec::new();
        let mut ip_sans = Vec::new();
        for name in &sans.general_names {
            match name {
                GeneralName::DNSName(n) => dns_sans.push(n.to_string()),
                GeneralName::IPAddress(bytes) => ip_sans.push(bytes.to_vec()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(dns_sans, ["hub.example.com", "*.hub.example.com"]);
        assert_eq!(ip_sans, [vec![10, 0, 0, 1], Ipv6Addr::LOCALHOST.octets().to_vec()]);

        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth && !eku.any);
        assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
        assert!(!cert.is_ca());
        assert_eq!(parse::common_name(cert.subject()).unwrap().as_deref(), Some("hub.example.com"));
        let ca_cert = parse::certificate(ca.cert_der()).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();

        // The key is the certificate's.
        let key = KeyPair::from_pem(&served.key_pem).unwrap();
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), rcgen::PublicKeyData::der_bytes(&key));
    }

    #[test]
    fn ip_only_certificate_is_named_after_the_ip() {
        let served = ca().issue_serving(&[], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], t0(), DAY).unwrap();
        let der = pem::single_cert_der(&served.cert_pem).unwrap();
        let cert = parse::certificate(&der).unwrap();
        assert_eq!(parse::common_name(cert.subject()).unwrap().as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn needs_a_name() {
        assert!(matches!(ca().issue_serving(&[], &[], t0(), DAY), Err(Error::NoSubjectAltNames)));
    }

    #[test]
    fn rejects_invalid_dns_names() {
        let ca = ca();
        for bad in ["", "a..b", "-a.example", "a_b.example", "10.0.0.1", "*", "a.*.b"] {
            assert!(
                matches!(ca.issue_serving(&[bad.to_owned()], &[], t0(), DAY), Err(Error::InvalidDnsName { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn dns_names() {
        for ok in [
            "hub",
            "hub.example.com",
            "*.example.com",
            "Hub-1.Example.com",
            "tether-server.tether-system.svc.cluster.local",
        ] {
            validate_dns_name(ok).unwrap();
        }
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = vec!["a".repeat(50); 6].join(".");
        for bad in [long_label.as_str(), long_name.as_str(), "example.com.", "é.example"] {
            assert!(validate_dns_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn long_dns_names_stay_out_of_the_common_name() {
        let long = format!("{}.example.com", "a".repeat(60));
        let served = ca().issue_serving(&[long], &[], t0(), DAY).unwrap();
        let der = pem::single_cert_der(&served.cert_pem).unwrap();
        let cert = parse::certificate(&der).unwrap();
        assert_eq!(parse::common_name(cert.subject()).unwrap(), None);
    }
}
