//! Who a verified client certificate belongs to. These functions read the subject only: the
//! caller has already verified the chain (e.g. with rustls' `WebPkiClientVerifier`).

use crate::{parse, validate_cluster_name, Error, Result, SPOKE_ORGANIZATION};

/// The cluster a spoke client certificate (DER) belongs to: its subject must be exactly
/// `O=tether:spokes` with one common name that is a valid cluster name, and it must not be a CA.
pub fn cluster_of(cert_der: &[u8]) -> Result<String> {
    let cert = parse::certificate(cert_der)?;
    let subject = cert.subject();
    let organizations = parse::organizations(subject).map_err(Error::NotSpoke)?;
    if organizations != [SPOKE_ORGANIZATION] {
        return Err(Error::NotSpoke("organization is not exactly tether:spokes"));
    }
    if cert.is_ca() {
        return Err(Error::NotSpoke("it is a CA certificate"));
    }
    let cluster = parse::common_name(subject).map_err(Error::NotSpoke)?.ok_or(Error::NotSpoke("no common name"))?;
    validate_cluster_name(&cluster)?;
    Ok(cluster)
}

/// The Kubernetes identity of an x509 *user* client certificate (DER): the user is the
/// common name, the groups are the organizations, in order (the apiserver's convention).
///
/// Spoke certificates (`O=tether:spokes`) are refused: a spoke's identity must never act as a
/// user on the proxy path.
pub fn kube_user_of(cert_der: &[u8]) -> Result<(String, Vec<String>)> {
    let cert = parse::certificate(cert_der)?;
    let subject = cert.subject();
    let user = parse::common_name(subject)
        .map_err(Error::NotUser)?
        .filter(|user| !user.is_empty())
        .ok_or(Error::NotUser("no common name"))?;
    let groups = parse::organizations(subject).map_err(Error::NotUser)?;
    if groups.iter().any(|group| group == SPOKE_ORGANIZATION) {
        return Err(Error::NotUser("tether spoke certificates are not users"));
    }
    Ok((user, groups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pem, spoke_key_and_csr, CertificateAuthority};
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const DAY: Duration = Duration::from_secs(86_400);

    // Self-signed, made with `openssl req -x509 -newkey ec -subj ...` when these tests were
    // written: rcgen keeps one value per attribute type, so it cannot make these subjects.
    /// `CN=alice, O=dev, O=ops`
    const USER_TWO_GROUPS: &str = include_str!("testdata/user-two-groups.crt");
    /// `CN=a, CN=b`
    const TWO_COMMON_NAMES: &str = include_str!("testdata/two-common-names.crt");
    /// `CN=cluster-a, O=tether:spokes, O=system:masters`
    const SPOKE_AND_MASTERS: &str = include_str!("testdata/spoke-and-masters.crt");

    fn der_of(pem: &str) -> Vec<u8> {
        pem::single_cert_der(pem).unwrap()
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    /// A self-signed certificate with the given subject attributes.
    fn cert_with(attrs: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        for (ty, value) in attrs {
            name.push(ty.clone(), *value);
        }
        params.distinguished_name = name;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn cluster_of_a_signed_spoke_certificate() {
        let ca = CertificateAuthority::generate("ca", t0(), DAY).unwrap();
        let (_key, csr) = spoke_key_and_csr("cluster-a").unwrap();
        let cert = ca.sign_spoke_csr(&csr, "cluster-a", t0(), DAY).unwrap();
        let der = pem::single_cert_der(&cert).unwrap();
        assert_eq!(cluster_of(&der).unwrap(), "cluster-a");
    }

    #[test]
    fn cluster_of_requires_the_spoke_organization() {
        for attrs in [
            &[(DnType::CommonName, "cluster-a")][..],
            &[(DnType::CommonName, "cluster-a"), (DnType::OrganizationName, "system:masters")],
            &[(DnType::OrganizationName, SPOKE_ORGANIZATION)],
        ] {
            assert!(matches!(cluster_of(&cert_with(attrs)), Err(Error::NotSpoke(_))), "{attrs:?} accepted");
        }
        assert!(matches!(cluster_of(&der_of(SPOKE_AND_MASTERS)), Err(Error::NotSpoke(_))));
    }

    #[test]
    fn cluster_of_requires_a_valid_cluster_name() {
        let der = cert_with(&[(DnType::CommonName, "Not_A_Cluster"), (DnType::OrganizationName, SPOKE_ORGANIZATION)]);
        assert!(matches!(cluster_of(&der), Err(Error::InvalidClusterName { .. })));
    }

    #[test]
    fn cluster_of_rejects_the_ca_and_garbage() {
        let ca = CertificateAuthority::generate("ca", t0(), DAY).unwrap();
        assert!(matches!(cluster_of(ca.cert_der()), Err(Error::NotSpoke(_))));
        assert!(matches!(cluster_of(b"garbage"), Err(Error::Certificate(_))));
    }

    #[test]
    fn kube_user_in_kubernetes_convention() {
        assert_eq!(
            kube_user_of(&der_of(USER_TWO_GROUPS)).unwrap(),
            ("alice".to_owned(), vec!["dev".to_owned(), "ops".to_owned()])
        );
        let bob = cert_with(&[(DnType::CommonName, "bob")]);
        assert_eq!(kube_user_of(&bob).unwrap(), ("bob".to_owned(), vec![]));
    }

    #[test]
    fn kube_user_requires_one_common_name() {
        let none = cert_with(&[(DnType::OrganizationName, "dev")]);
        assert!(matches!(kube_user_of(&none), Err(Error::NotUser(_))));
        assert!(matches!(kube_user_of(&der_of(TWO_COMMON_NAMES)), Err(Error::NotUser(_))));
        assert!(matches!(cluster_of(&der_of(TWO_COMMON_NAMES)), Err(Error::NotSpoke(_))));
        assert!(matches!(kube_user_of(b""), Err(Error::Certificate(_))));
    }

    #[test]
    fn spoke_certificates_are_not_users() {
        let ca = CertificateAuthority::generate("ca", t0(), DAY).unwrap();
        let (_key, csr) = spoke_key_and_csr("cluster-a").unwrap();
        let cert = ca.sign_spoke_csr(&csr, "cluster-a", t0(), DAY).unwrap();
        let der = pem::single_cert_der(&cert).unwrap();
        assert!(matches!(kube_user_of(&der), Err(Error::NotUser(_))));
        assert!(matches!(kube_user_of(&der_of(SPOKE_AND_MASTERS)), Err(Error::NotUser(_))));
    }
}
