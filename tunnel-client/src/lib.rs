//! tether's spoke agent. Dials the hub over QUIC with its client certificate, keeps one tunnel per process,
//! and serves the streams the hub opens by forwarding them to the local apiserver. Without a certificate but
//! with a bootstrap token it first obtains one from the hub ([`bootstrap`]); at 80 % of the certificate's life
//! it renews it over the tunnel ([`renewal`]) and moves to a tunnel with the new identity. When the hub ends a
//! connection it says why with a close code, and [`reaction`] decides what comes next: dial again, back off
//! longer, or stop with an error that says why (a revoked certificate, a protocol version mismatch).
pub mod bootstrap;
pub mod config;
mod dial_loop;
mod error;
mod h2_pool;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod reaction;
pub mod renewal;
pub mod request;
pub mod tunnel;
pub mod upstream;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tether_proto::Backoff;
use tether_runtime::ops::{self, Readiness};
use tether_runtime::tls;
use tether_runtime::transport::TransportSettings;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, Result};

use crate::dial_loop::DialLoop;
use crate::identity::{FileStore, Identity, SecretStore, Store};
use crate::policy::watch::{ConfigMapPolicy, PolicyHandle};
use crate::reaction::Closed;
use crate::upstream::Upstream;

/// How long the first dial waits for the identity policy's ConfigMap to be read.
const POLICY_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs until `shutdown`: dial, serve, and on loss dial again with jittered exponential backoff (at once
/// after a go-away, longer when the hub is at a limit). A tunnel whose identity was renewed keeps serving
/// until the tunnel with the new identity is up, then drains. Returns an error when the hub said that
/// redialling cannot help ([`reaction::Stop`]).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    tls::install_crypto_provider();
    metrics::describe();
    let prometheus = tether_runtime::telemetry::install_metrics()?;
    // Checked first, so that a bad policy flag fails at start with the flag's name.
    let flags_policy = config.identity_policy()?;
    let (policy_watch, policy) = match &config.identity_policy_configmap {
        Some(reference) => {
            let (watch, handle) = ConfigMapPolicy::new(reference, flags_policy)?;
            (Some(watch), handle)
        }
        None => {
            tracing::info!(policy = %flags_policy, impersonation_rbac = %flags_policy.impersonation_rules(), "identity policy from the flags");
            (None, PolicyHandle::fixed(flags_policy))
        }
    };
    let upstream =
        Upstream::from_kubeconfig(config.kubeconfig.as_ref(), config.apiserver_streams_per_connection, policy.clone())
            .await?;
    if let Some(watch) = policy_watch {
        tokio::spawn(watch.run(upstream.kube_client(), shutdown.clone()));
    }
    let server_name = server_name(&config)?;
    let instance = config.instance.clone().unwrap_or_else(default_instance);
    let transport = TransportSettings { stream_window: config.stream_window, ..Default::default() };
    let store = Arc::new(match (&config.identity_secret, &config.cert, &config.key) {
        (Some(reference), _, _) => Store::Secret(SecretStore::new(upstream.kube_client(), reference)?),
        (None, Some(cert), Some(key)) => Store::Files(FileStore::new(key, cert)),
        _ => return Err(Error::Config { flag: "--cert", reason: "--cert and --key, or --identity-secret".into() }),
    });
    let start = match (store.load().await?, config.bootstrap_token_file.clone()) {
        (Some(identity), _) => {
            // Checked once up front so a typo fails at start with the flag's name.
            drop(quic_client_config(&config, &identity, &transport)?);
            Start::Loaded(identity)
        }
        (None, Some(token_file)) => Start::Bootstrap(token_file),
        (None, None) => {
            return Err(Error::Config {
                flag: "--cert",
                reason: format!("no identity in {} and no --bootstrap-token-file to get one", store.describe()),
            })
        }
    };

    let ops_listener = tokio::net::TcpListener::bind(config.ops_addr).await.map_err(|source| Error::Bind {
        flag: "--ops-addr",
        addr: config.ops_addr,
        source,
    })?;
    let ops_addr = ops_listener.local_addr()?;
    let readiness = Readiness::default();
    let ops_tls = tls::self_signed_server_config(&["localhost"])?;
    let ops_task = tokio::spawn(ops::serve(ops_listener, ops_tls, prometheus, readiness.clone(), shutdown.clone()));

    let mut endpoint: Option<quinn::Endpoint> = None;
    let identity = match start {
        Start::Loaded(identity) => identity,
        Start::Bootstrap(token_file) => {
            tracing::info!(
                store = %store.describe(),
                cluster = config.cluster.as_deref().unwrap_or_default(),
                "no certificate yet: bootstrapping with the token"
            );
            let obtained = bootstrap::obtain_certificate(
                &config,
                &store,
                &token_file,
                &transport,
                &server_name,
                &mut endpoint,
                &shutdown,
            )
            .await;
            match obtained {
                Ok(Some(obtained)) => obtained,
                // Refused, failed, or shut down while waiting.
                other => {
                    close(endpoint).await;
                    ops_task.abort();
                    return other.map(drop);
                }
            }
        }
    };

    let params = Arc::new(tunnel::Params {
        instance,
        heartbeat_interval: config.heartbeat_interval,
        upstream: upstream.clone(),
        spoke_info: Some(upstream.describe().await),
    });
    if config.identity_policy_configmap.is_some() && !policy.clone().wait_read(POLICY_READ_WAIT).await {
        // Dial anyway: the hub sees the cluster, and its callers get a 503 naming the cause until it is read.
        tracing::warn!("the identity policy ConfigMap is not read yet; requests are refused until it is");
    }
    let stopped = DialLoop {
        config: &config,
        server_name: &server_name,
        transport: &transport,
        store,
        params,
        readiness,
        ops_addr,
        shutdown: shutdown.clone(),
        endpoint: &mut endpoint,
        backoff: Backoff::new(config.backoff_base, config.backoff_cap),
        retiring: None,
    }
    .run(identity)
    .await;
    close(endpoint).await;
    ops_task.abort();
    stopped
}

/// Where the identity comes from.
enum Start {
    /// The store holds one.
    Loaded(Identity),
    /// None yet: obtain one with the bootstrap token in this file.
    Bootstrap(std::path::PathBuf),
}

async fn close(endpoint: Option<quinn::Endpoint>) {
    if let Some(endpoint) = endpoint {
        endpoint.close(tether_runtime::transport::code(tether_proto::Code::Normal), b"bye");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("resolving {hub}: {source}")]
    Resolve { hub: String, source: std::io::Error },
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("UDP socket: {0}")]
    Socket(#[source] std::io::Error),
    /// quinn refused to start the handshake (the configuration, the server name).
    #[error("{0}")]
    Connect(#[source] quinn::ConnectError),
    /// The client configuration for this identity could not be made.
    #[error("{0}")]
    Config(#[source] Box<Error>),
    #[error("handshake timed out")]
    TimedOut,
    /// The handshake failed, or the hub closed the connection during it.
    #[error("{0}")]
    Connection(#[source] quinn::ConnectionError),
}

impl DialError {
    /// What the hub said, if it said anything.
    fn closed(&self) -> Closed {
        match self {
            DialError::Connection(e) => reaction::closed(e),
            // Nothing reached the hub, or nothing came back.
            _ => Closed::Lost,
        }
    }
}

/// Dials the hub with `client_config`, on `endpoint` (made, or remade for another address family, here).
async fn dial(
    config: &Config,
    server_name: &str,
    endpoint: &mut Option<quinn::Endpoint>,
    client_config: quinn::ClientConfig,
) -> std::result::Result<quinn::Connection, DialError> {
    let addr: SocketAddr = tokio::net::lookup_host(&config.hub)
        .await
        .map_err(|source| DialError::Resolve { hub: config.hub.clone(), source })?
        .next()
        .ok_or_else(|| DialError::NoAddress(config.hub.clone()))?;
    let reusable = endpoint.as_ref().and_then(|e| e.local_addr().ok()).is_some_and(|l| l.is_ipv4() == addr.is_ipv4());
    let endpoint = match endpoint.take() {
        Some(current) if reusable => endpoint.insert(current),
        _ => {
            let any: IpAddr = if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
            let socket = tether_runtime::transport::udp_socket(SocketAddr::new(any, 0)).map_err(DialError::Socket)?;
            let client = quinn::Endpoint::new(Default::default(), None, socket, Arc::new(quinn::TokioRuntime));
            endpoint.insert(client.map_err(DialError::Socket)?)
        }
    };
    let connecting = endpoint.connect_with(client_config, addr, server_name).map_err(DialError::Connect)?;
    tokio::time::timeout(std::time::Duration::from_secs(10), connecting)
        .await
        .map_err(|_| DialError::TimedOut)?
        .map_err(DialError::Connection)
}

fn quic_client_config(
    config: &Config,
    identity: &Identity,
    transport: &TransportSettings,
) -> Result<quinn::ClientConfig> {
    let roots = tls::root_store(&config.hub_ca).map_err(|source| Error::FlagTls { flag: "--hub-ca", source })?;
    let chain =
        tls::parse_certs(identity.cert_pem.as_bytes()).map_err(|source| Error::FlagPem { flag: "--cert", source })?;
    let key = tls::parse_key(identity.key_pem.as_bytes()).map_err(|source| Error::FlagPem { flag: "--key", source })?;
    let mut crypto = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|source| Error::FlagKey { flag: "--key", source })?;
    crypto.alpn_protocols = vec![tether_proto::ALPN.to_vec()];
    quinn_client_config(crypto, transport)
}

fn quinn_client_config(crypto: rustls::ClientConfig, transport: &TransportSettings) -> Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(Error::Quic)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport.to_quinn()));
    Ok(client)
}

fn server_name(config: &Config) -> Result<String> {
    if let Some(name) = &config.hub_server_name {
        return Ok(name.clone());
    }
    let host = config.hub.rsplit_once(':').map(|(h, _)| h).unwrap_or(&config.hub);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Error::Config { flag: "--hub", reason: "expected host:port".into() });
    }
    Ok(host.to_string())
}

fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use clap::Parser;

    use super::*;

    #[test]
    fn identity_errors_name_the_flag_and_keep_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-ca.crt");
        let config = Config::try_parse_from(
            ["tunnel-client", "--hub", "hub:1", "--cert", "c", "--key", "k"]
                .iter()
                .chain(&["--hub-ca", missing.to_str().unwrap()]),
        )
        .unwrap();
        let identity = Identity { cert_pem: "not pem".into(), key_pem: "not pem".into() };
        let error = quic_client_config(&config, &identity, &TransportSettings::default()).unwrap_err();
        assert!(matches!(error, Error::FlagTls { flag: "--hub-ca", .. }), "{error}");
        assert!(error.to_string().starts_with("--hub-ca: "), "{error}");
        let io = error.source().and_then(|e| e.source()).and_then(|e| e.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(std::io::Error::kind), Some(std::io::ErrorKind::NotFound), "{error:?}");

        let ca = tether_certs::CertificateAuthority::generate(
            "ca",
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let config = Config { hub_ca: ca_file, ..config };
        let error = quic_client_config(&config, &identity, &TransportSettings::default()).unwrap_err();
        assert!(matches!(error, Error::FlagPem { flag: "--cert", .. }), "{error}");
    }
}
