//! For tests of the crates above this one (the `testing` feature, enabled from their dev-dependencies):
//! both ends of a real QUIC connection on loopback, with a throwaway self-signed certificate.
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// The dialing and the accepting end of one connection. The endpoints live as long as the pair: a dropped
/// endpoint would close its connection.
pub struct LoopbackPair {
    pub dialer: quinn::Connection,
    pub acceptor: quinn::Connection,
    pub endpoints: (quinn::Endpoint, quinn::Endpoint),
}

/// A connection on 127.0.0.1 with ALPN `alpn` (none when empty) and quinn's default transport, dialed to
/// `localhost`. Panics on failure: it is for tests.
pub async fn loopback_pair(alpn: &[u8]) -> LoopbackPair {
    crate::tls::install_crypto_provider();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("self-signed certificate");
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("its key");
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server TLS");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let mut client_tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    if !alpn.is_empty() {
        tls.alpn_protocols = vec![alpn.to_vec()];
        client_tls.alpn_protocols = vec![alpn.to_vec()];
    }
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC server TLS");
    let server = quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(server_crypto)), loopback)
        .expect("server endpoint");
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).expect("QUIC client TLS");
    let mut client = quinn::Endpoint::client(loopback).expect("client endpoint");
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
    let connecting = client.connect(server.local_addr().expect("bound"), "localhost").expect("connect");
    let accepting = async { server.accept().await.expect("incoming").await.expect("accepted") };
    let (dialer, acceptor) = tokio::join!(connecting, accepting);
    LoopbackPair { dialer: dialer.expect("dialed"), acceptor, endpoints: (client, server) }
}
