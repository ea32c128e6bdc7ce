//! The certificates this crate issues, checked by the verifier that will check them in
//! production: real rustls handshakes between in-memory client and server connections, with the
//! hub CA as the only trust anchor on both sides.
//!
//! rustls checks validity against the system clock, so these certificates are issued with the
//! real current time as `now`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use tether_certs::{cluster_of, pem_to_der_certs, spoke_key_and_csr, CertificateAuthority, CertifiedKey};

const DAY: Duration = Duration::from_secs(86_400);
const HUB: &str = "hub.tether.example";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn new_ca(name: &str) -> CertificateAuthority {
    CertificateAuthority::generate(name, SystemTime::now(), 365 * DAY).unwrap()
}

fn serving(ca: &CertificateAuthority) -> CertifiedKey {
    ca.issue_serving(&[HUB.to_owned()], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], SystemTime::now(), 90 * DAY).unwrap()
}

/// A spoke identity as a spoke gets it: key and CSR made locally, the CSR signed by `ca`.
fn spoke(ca: &CertificateAuthority, cluster: &str) -> CertifiedKey {
    let (key_pem, csr_pem) = spoke_key_and_csr(cluster).unwrap();
    let cert_pem = ca.sign_spoke_csr(&csr_pem, cluster, SystemTime::now(), 90 * DAY).unwrap();
    CertifiedKey { cert_pem, key_pem }
}

fn chain(identity: &CertifiedKey) -> Vec<CertificateDer<'static>> {
    pem_to_der_certs(&identity.cert_pem).unwrap().into_iter().map(CertificateDer::from).collect()
}

fn key(identity: &CertifiedKey) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut identity.key_pem.as_bytes()).unwrap().unwrap()
}

fn roots(ca: &CertificateAuthority) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.cert_der().to_vec())).unwrap();
    Arc::new(roots)
}

/// The hub's side: serves `identity`, requires client certificates chaining to `trusted`.
fn hub(trusted: &CertificateAuthority, identity: &CertifiedKey) -> ServerConnection {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(trusted), provider()).build().unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(identity), key(identity))
        .unwrap();
    ServerConnection::new(Arc::new(config)).unwrap()
}

/// A spoke's side: presents `identity`, trusts `trusted`, dials `server_name`.
fn dialer(
    trusted: &CertificateAuthority,
    identity: &CertifiedKey,
    server_name: ServerName<'static>,
) -> ClientConnection {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(trusted))
        .with_client_auth_cert(chain(identity), key(identity))
        .unwrap();
    ClientConnection::new(Arc::new(config), server_name).unwrap()
}

/// Which side refused the handshake, and why.
#[derive(Debug)]
enum Refused {
    ByHub(rustls::Error),
    BySpoke(rustls::Error),
}

/// Move records between the two ends until both finish the handshake or one refuses.
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), Refused> {
    for _ in 0..16 {
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).unwrap();
        }
        let mut rd = &records[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets().map_err(Refused::ByHub)?;
        }

        let mut records = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut records).unwrap();
        }
        let mut rd = &records[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().map_err(Refused::BySpoke)?;
        }

        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

/// The certificate error with which the hub refused the handshake.
fn refused_by_hub(outcome: Result<(), Refused>) -> CertificateError {
    match outcome {
        Err(Refused::ByHub(rustls::Error::InvalidCertificate(e))) => e,
        other => panic!("expected the hub to refuse the client's certificate: {other:?}"),
    }
}

/// The certificate error with which the spoke refused the handshake.
fn refused_by_spoke(outcome: Result<(), Refused>) -> CertificateError {
    match outcome {
        Err(Refused::BySpoke(rustls::Error::InvalidCertificate(e))) => e,
        other => panic!("expected the spoke to refuse the hub's certificate: {other:?}"),
    }
}

fn name(dns: &str) -> ServerName<'static> {
    ServerName::try_from(dns.to_owned()).unwrap()
}

#[test]
fn spoke_and_hub_authenticate_each_other() {
    let ca = new_ca("tether-hub-ca");
    let mut hub = hub(&ca, &serving(&ca));
    let mut spoke = dialer(&ca, &spoke(&ca, "cluster-a"), name(HUB));
    handshake(&mut spoke, &mut hub).unwrap();

    // The hub learns the cluster from the verified client certificate.
    let presented = hub.peer_certificates().unwrap();
    assert_eq!(cluster_of(&presented[0]).unwrap(), "cluster-a");

    // And the connection carries data.
    spoke.writer().write_all(b"hello hub").unwrap();
    let mut records = Vec::new();
    spoke.write_tls(&mut records).unwrap();
    hub.read_tls(&mut &records[..]).unwrap();
    hub.process_new_packets().unwrap();
    let mut got = [0u8; 9];
    hub.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello hub");
}

#[test]
fn serving_certificate_is_valid_for_its_ip() {
    let ca = new_ca("tether-hub-ca");
    let mut hub = hub(&ca, &serving(&ca));
    let ip = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let mut spoke = dialer(&ca, &spoke(&ca, "cluster-a"), ip);
    handshake(&mut spoke, &mut hub).unwrap();
}

#[test]
fn serving_certificate_is_not_valid_for_other_names() {
    let ca = new_ca("tether-hub-ca");
    let mut hub = hub(&ca, &serving(&ca));
    let mut spoke = dialer(&ca, &spoke(&ca, "cluster-a"), name("evil.example"));
    let e = refused_by_spoke(handshake(&mut spoke, &mut hub));
    assert!(matches!(e, CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }), "{e:?}");
}

#[test]
fn hub_refuses_spokes_of_another_ca() {
    let ca = new_ca("tether-hub-ca");
    // Even under the same name: trust rests on the key, not the name.
    let rogue = new_ca("tether-hub-ca");
    let mut hub = hub(&ca, &serving(&ca));
    let mut spoke = dialer(&ca, &spoke(&rogue, "cluster-a"), name(HUB));
    let e = refused_by_hub(handshake(&mut spoke, &mut hub));
    assert!(matches!(e, CertificateError::BadSignature | CertificateError::UnknownIssuer), "{e:?}");
}

#[test]
fn hub_refuses_a_serving_certificate_as_a_client_certificate() {
    let ca = new_ca("tether-hub-ca");
    let mut hub = hub(&ca, &serving(&ca));
    // Signed by the right CA, but for serverAuth only.
    let mut spoke = dialer(&ca, &serving(&ca), name(HUB));
    let e = refused_by_hub(handshake(&mut spoke, &mut hub));
    assert!(matches!(e, CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }), "{e:?}");
}

#[test]
fn spokes_refuse_a_hub_of_another_ca() {
    let ca = new_ca("tether-hub-ca");
    // Even under the same name: trust rests on the key, not the name.
    let rogue = new_ca("tether-hub-ca");
    let mut hub = hub(&ca, &serving(&rogue));
    let mut spoke = dialer(&ca, &spoke(&ca, "cluster-a"), name(HUB));
    let e = refused_by_spoke(handshake(&mut spoke, &mut hub));
    assert!(matches!(e, CertificateError::BadSignature | CertificateError::UnknownIssuer), "{e:?}");
}

#[test]
fn a_reloaded_ca_keeps_signing_for_the_same_trust_anchor() {
    let ca = new_ca("tether-hub-ca");
    let reloaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    let mut hub = hub(&ca, &serving(&reloaded));
    let mut spoke = dialer(&ca, &spoke(&reloaded, "cluster-b"), name(HUB));
    handshake(&mut spoke, &mut hub).unwrap();
    let presented = hub.peer_certificates().unwrap();
    assert_eq!(cluster_of(&presented[0]).unwrap(), "cluster-b");
}
