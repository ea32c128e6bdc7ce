//! tether's spoke agent. Dials the hub over QUIC with its client certificate, keeps one tunnel per process,
//! and serves the streams the hub opens by forwarding them to the local apiserver. Without a certificate but
//! with a bootstrap token it first obtains one from the hub ([`bootstrap`]); at 80 % of the certificate's life
//! it renews it over the tunnel ([`renewal`]) and moves to a tunnel with the new identity. When the hub ends a
//! connection it says why with a close code, and [`reaction`] decides what comes next: dial again, back off
//! longer, or stop with an error that says why (a revoked certificate, a protocol version mismatch).
pub mod bootstrap;
pub mod config;
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::metrics::counter;
use tether_proto::Backoff;
use tether_runtime::ops::{self, Readiness};
use tether_runtime::tls;
use tether_runtime::transport::TransportSettings;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::Config;
pub use error::{Error, Result};

use crate::identity::{FileStore, Identity, SecretStore, Store};
use crate::metrics as m;
use crate::policy::watch::{ConfigMapPolicy, PolicyHandle};
use crate::reaction::{Closed, Reaction, Stop};
use crate::tunnel::{Ended, Report};
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
    let mut identity = store.load().await?;
    let bootstrap_token = config.bootstrap_token_file.clone().filter(|_| identity.is_none());
    match &identity {
        // Checked once up front so a typo fails at start with the flag's name.
        Some(identity) => drop(quic_client_config(&config, identity, &transport)?),
        None if bootstrap_token.is_none() => {
            return Err(Error::Config {
                flag: "--cert",
                reason: format!("no identity in {} and no --bootstrap-token-file to get one", store.describe()),
            })
        }
        None => {}
    }

    let ops_listener = tokio::net::TcpListener::bind(config.ops_addr)
        .await
        .map_err(|e| Error::Config { flag: "--ops-addr", reason: e.to_string() })?;
    let ops_addr = ops_listener.local_addr()?;
    let readiness = Readiness::default();
    let ops_tls = tls::self_signed_server_config(&["localhost"])?;
    let ops_task = tokio::spawn(ops::serve(ops_listener, ops_tls, prometheus, readiness.clone(), shutdown.clone()));

    let mut endpoint: Option<quinn::Endpoint> = None;
    if let Some(token_file) = &bootstrap_token {
        tracing::info!(
            store = %store.describe(),
            cluster = config.cluster.as_deref().unwrap_or_default(),
            "no certificate yet: bootstrapping with the token"
        );
        let obtained = bootstrap::obtain_certificate(
            &config,
            &store,
            token_file,
            &transport,
            &server_name,
            &mut endpoint,
            &shutdown,
        )
        .await;
        match obtained {
            Ok(Some(obtained)) => identity = Some(obtained),
            // Refused, failed, or shut down while waiting.
            other => {
                close(endpoint).await;
                ops_task.abort();
                return other.map(drop);
            }
        }
    }
    let mut identity = identity.expect("loaded or bootstrapped");

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
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let mut wait = Wait::Now;
    // The tunnel that renewed its identity, still serving until its successor is up.
    let mut retiring: Option<CancellationToken> = None;
    let stopped = loop {
        if shutdown.is_cancelled() {
            break None;
        }
        let delay = match wait {
            Wait::Now => None,
            Wait::Backoff => Some(backoff.next_delay(rand::random::<f64>())),
            Wait::Limited(hint) => Some(reaction::limited_delay(hint, rand::random::<f64>())),
        };
        if let Some(delay) = delay {
            tracing::info!(delay_ms = delay.as_millis() as u64, attempt = backoff.attempt(), "reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let dialed = match quic_client_config(&config, &identity, &transport) {
            Ok(client_config) => dial(&config, &server_name, &mut endpoint, client_config).await,
            Err(e) => Err(DialError::Setup(e.to_string())),
        };
        let connection = match dialed {
            Ok(c) => c,
            Err(e) => {
                counter!(m::HANDSHAKE_FAILURES).increment(1);
                counter!(m::RECONNECTS, "cause" => "failed").increment(1);
                tracing::warn!(hub = %config.hub, reason = %e, "dial failed");
                match after_hub_closed(e.closed(), &store, &mut identity).await {
                    Ok(next) => wait = next,
                    Err(stop) => break Some(stop),
                }
                continue;
            }
        };
        let cluster = request::cluster_of(&identity)?;
        let expires = renewal::expiry(&identity)?;
        let renewal = {
            let (connection, store, current) = (connection.clone(), store.clone(), identity.clone());
            let backoff = Backoff::new(config.backoff_base, config.backoff_cap);
            let shutdown = shutdown.clone();
            Box::pin(async move {
                renewal::renew(connection, &store, &current, &cluster, backoff, &shutdown).await;
            })
        };
        let retire = CancellationToken::new();
        let (reports_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let span = tracing::info_span!("tunnel", hub = %config.hub);
        let mut task = tokio::spawn(
            tunnel::serve(
                connection.clone(),
                params.clone(),
                Some(renewal),
                retire.clone(),
                tether_runtime::instant_of(expires),
                shutdown.clone(),
                reports_tx,
            )
            .instrument(span),
        );
        let mut established = false;
        let mut renewed = false;
        let ended = loop {
            tokio::select! {
                report = reports.recv() => match report {
                    Some(Report::Up { cluster }) => {
                        established = true;
                        readiness.set(true);
                        if let Some(old) = retiring.take() {
                            // The successor is up: the renewed-away tunnel says GoAway and drains.
                            old.cancel();
                        }
                        if let Some(path) = &config.ready_file {
                            let json = serde_json::json!({ "cluster": cluster, "ops": ops_addr.to_string() });
                            if let Err(e) = std::fs::write(path, json.to_string()) {
                                tracing::warn!(path = %path.display(), error = %e, "cannot write the ready file");
                            }
                        }
                    }
                    Some(Report::Renewed) => {
                        renewed = true;
                        break None;
                    }
                    None => {}
                },
                ended = &mut task => break Some(ended.unwrap_or_else(|e| Ended::Lost(format!("tunnel task: {e}")))),
            }
        };
        if renewed {
            // Serve on with the old identity until the new tunnel is up; dial at once.
            match store.load().await? {
                Some(new) => identity = new,
                None => tracing::warn!("the renewed identity vanished from the store; keeping the old one"),
            }
            retiring = Some(retire);
            wait = Wait::Now;
            continue;
        }
        readiness.set(false);
        if established {
            backoff.reset();
        }
        match ended.expect("not renewed") {
            Ended::Shutdown | Ended::Retired => break None,
            Ended::GoAway => {
                counter!(m::RECONNECTS, "cause" => "go_away").increment(1);
                // A new endpoint gets a new UDP port: the hub (or its load balancer) sees a new flow.
                endpoint = None;
                wait = Wait::Now;
            }
            Ended::Lost(reason) => {
                counter!(m::RECONNECTS, "cause" => "lost").increment(1);
                tracing::warn!(%reason, "tunnel lost");
                let closed = connection.close_reason().map_or(Closed::Lost, |e| reaction::closed(&e));
                match after_hub_closed(closed, &store, &mut identity).await {
                    Ok(next) => wait = next,
                    Err(stop) => break Some(stop),
                }
            }
        }
    };
    close(endpoint).await;
    ops_task.abort();
    match stopped {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// How long to wait before the next dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Now,
    /// The usual jittered exponential backoff.
    Backoff,
    /// The hub is at a limit: [`reaction::limited_delay`] of its hint.
    Limited(Option<Duration>),
}

/// What the dial loop does after the hub said `closed`: the wait before the next dial, or the error to stop
/// with. An expired certificate is first looked for anew in the store, where another client sharing the
/// identity may have put a renewed one.
async fn after_hub_closed(closed: Closed, store: &Store, identity: &mut Identity) -> Result<Wait> {
    match reaction::reaction(&closed) {
        Reaction::Retry => Ok(Wait::Backoff),
        Reaction::BackOff(hint) => {
            tracing::warn!(?closed, "the hub is at a limit: backing off longer");
            Ok(Wait::Limited(hint))
        }
        Reaction::Stop(Stop::Revoked) => Err(Error::Revoked { cluster: request::cluster_of(identity)? }),
        Reaction::Stop(Stop::VersionMismatch { hub }) => Err(Error::VersionMismatch {
            hub: hub.map_or_else(
                || format!("another protocol (it refused ALPN {})", String::from_utf8_lossy(tether_proto::ALPN)),
                |v| format!("tether/{v}"),
            ),
            ours: format!("tether/{}", tether_proto::PROTOCOL_VERSION),
        }),
        Reaction::Stop(Stop::Expired) => {
            if let Some(stored) = store.load().await? {
                let newer = renewal::not_after(&stored)? > renewal::not_after(identity)?;
                if newer {
                    tracing::info!("the certificate expired, but the store holds a newer one: dialling with it");
                    *identity = stored;
                    return Ok(Wait::Now);
                }
            }
            let not_after = renewal::not_after(identity)?;
            let not_after =
                k8s_openapi::jiff::Timestamp::try_from(not_after).map_or_else(|_| "?".into(), |t| t.to_string());
            Err(Error::Expired { not_after })
        }
    }
}

async fn close(endpoint: Option<quinn::Endpoint>) {
    if let Some(endpoint) = endpoint {
        endpoint.close(tether_runtime::transport::code(tether_proto::Code::Normal), b"bye");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
    }
}

/// Why a dial failed.
#[derive(Debug)]
enum DialError {
    /// Before anything was sent: the address, the socket, the configuration.
    Setup(String),
    TimedOut,
    /// The handshake failed, or the hub closed the connection during it.
    Connection(quinn::ConnectionError),
}

impl DialError {
    /// What the hub said, if it said anything.
    fn closed(&self) -> Closed {
        match self {
            DialError::Connection(e) => reaction::closed(e),
            DialError::Setup(_) | DialError::TimedOut => Closed::Lost,
        }
    }
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Setup(reason) => f.write_str(reason),
            DialError::TimedOut => f.write_str("handshake timed out"),
            DialError::Connection(e) => write!(f, "{e}"),
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
    let setup = DialError::Setup;
    let addr: SocketAddr = tokio::net::lookup_host(&config.hub)
        .await
        .map_err(|e| setup(format!("resolving {}: {e}", config.hub)))?
        .next()
        .ok_or_else(|| setup(format!("{} resolves to no address", config.hub)))?;
    if endpoint.as_ref().and_then(|e| e.local_addr().ok()).is_none_or(|l| l.is_ipv4() != addr.is_ipv4()) {
        let bind: SocketAddr =
            if addr.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("literal address");
        let socket = tether_runtime::transport::udp_socket(bind).map_err(|e| setup(format!("UDP socket: {e}")))?;
        let client = quinn::Endpoint::new(Default::default(), None, socket, Arc::new(quinn::TokioRuntime));
        *endpoint = Some(client.map_err(|e| setup(format!("UDP socket: {e}")))?);
    }
    let endpoint = endpoint.as_ref().expect("set above");
    let connecting = endpoint.connect_with(client_config, addr, server_name).map_err(|e| setup(e.to_string()))?;
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
    let roots =
        tls::root_store(&config.hub_ca).map_err(|e| Error::Config { flag: "--hub-ca", reason: e.to_string() })?;
    let chain =
        tls::certs_from_pem(identity.cert_pem.as_bytes()).map_err(|reason| Error::Config { flag: "--cert", reason })?;
    let key =
        tls::key_from_pem(identity.key_pem.as_bytes()).map_err(|reason| Error::Config { flag: "--key", reason })?;
    let mut crypto = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::Config { flag: "--key", reason: e.to_string() })?;
    crypto.alpn_protocols = vec![tether_proto::ALPN.to_vec()];
    quinn_client_config(crypto, transport)
}

fn quinn_client_config(crypto: rustls::ClientConfig, transport: &TransportSettings) -> Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| Error::Quic(e.to_string()))?;
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
    use std::time::{Duration, SystemTime};

    use super::*;
    use tether_proto::Code;

    fn identity(ca: &tether_certs::CertificateAuthority, life: Duration) -> Identity {
        let (key_pem, csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
        let cert_pem = ca.sign_spoke_csr(&csr, "spoke-a", SystemTime::now(), life).unwrap();
        Identity { cert_pem, key_pem }
    }

    fn said(code: Code) -> Closed {
        Closed::Code { code, hub_version: None, retry_in: None }
    }

    #[tokio::test]
    async fn what_the_dial_loop_does_after_each_close() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileStore::new(&dir.path().join("tls.key"), &dir.path().join("tls.crt"));
        let store = Store::Files(files.clone());
        let day = Duration::from_secs(86_400);
        let ca = tether_certs::CertificateAuthority::generate("ca", SystemTime::now(), day).unwrap();
        let mut current = identity(&ca, Duration::from_secs(60));
        let save = |identity: &Identity| {
            std::fs::write(&files.cert, &identity.cert_pem).unwrap();
            std::fs::write(&files.key, &identity.key_pem).unwrap();
        };
        save(&current);

        assert_eq!(after_hub_closed(Closed::Lost, &store, &mut current).await.unwrap(), Wait::Backoff);
        assert_eq!(after_hub_closed(said(Code::Abandoned), &store, &mut current).await.unwrap(), Wait::Backoff);
        let hint = Closed::Code { code: Code::RateLimited, hub_version: None, retry_in: Some(Duration::from_secs(6)) };
        let waited = after_hub_closed(hint, &store, &mut current).await.unwrap();
        assert_eq!(waited, Wait::Limited(Some(Duration::from_secs(6))));

        let revoked = after_hub_closed(said(Code::Revoked), &store, &mut current).await.unwrap_err().to_string();
        assert!(revoked.contains("revoked this spoke's certificate (cluster spoke-a)"), "{revoked}");
        let mismatch = Closed::Code { code: Code::VersionMismatch, hub_version: Some(3), retry_in: None };
        let mismatch = after_hub_closed(mismatch, &store, &mut current).await.unwrap_err().to_string();
        assert!(mismatch.contains("the hub speaks tether/3, this client speaks tether/2"), "{mismatch}");

        // Expired, and the store holds nothing newer: stop, saying so.
        let expired = after_hub_closed(said(Code::Expired), &store, &mut current).await.unwrap_err().to_string();
        assert!(expired.contains("expired"), "{expired}");
        // Expired, but another client sharing the store renewed it: dial at once with that one.
        let renewed = identity(&ca, day);
        save(&renewed);
        assert_eq!(after_hub_closed(said(Code::Expired), &store, &mut current).await.unwrap(), Wait::Now);
        assert_eq!(current, renewed);
    }
}
