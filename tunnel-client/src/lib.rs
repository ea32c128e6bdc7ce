//! tether's spoke agent. Dials the hub over QUIC with its client certificate, keeps one tunnel per process,
//! and serves the streams the hub opens by forwarding them to the local apiserver. Without a certificate but
//! with a bootstrap token it first obtains one from the hub ([`bootstrap`]); at 80 % of the certificate's life
//! it renews it over the tunnel ([`renewal`]) and moves to a tunnel with the new identity.
pub mod bootstrap;
pub mod config;
mod error;
mod h2_pool;
pub mod identity;
pub mod metrics;
pub mod renewal;
pub mod request;
pub mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

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
use crate::tunnel::{Ended, Report};
use crate::upstream::Upstream;

/// Runs until `shutdown`: dial, serve, and on loss dial again with jittered exponential backoff (at once
/// after a go-away). A tunnel whose identity was renewed keeps serving until the tunnel with the new
/// identity is up, then drains.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    tls::install_crypto_provider();
    metrics::describe();
    let prometheus = tether_runtime::telemetry::install_metrics()?;
    let upstream =
        Upstream::from_kubeconfig(config.kubeconfig.as_ref(), config.apiserver_streams_per_connection).await?;
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
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let mut first = true;
    // The tunnel that renewed its identity, still serving until its successor is up.
    let mut retiring: Option<CancellationToken> = None;
    while !shutdown.is_cancelled() {
        if !first {
            let delay = backoff.next_delay(rand::random::<f64>());
            tracing::info!(delay_ms = delay.as_millis() as u64, attempt = backoff.attempt(), "reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        first = false;
        let dialed = match quic_client_config(&config, &identity, &transport) {
            Ok(client_config) => dial(&config, &server_name, &mut endpoint, client_config).await,
            Err(e) => Err(e.to_string()),
        };
        let connection = match dialed {
            Ok(c) => c,
            Err(reason) => {
                counter!(m::HANDSHAKE_FAILURES).increment(1);
                counter!(m::RECONNECTS, "cause" => "failed").increment(1);
                tracing::warn!(hub = %config.hub, %reason, "dial failed");
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
                connection,
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
            first = true;
            continue;
        }
        readiness.set(false);
        if established {
            backoff.reset();
        }
        match ended.expect("not renewed") {
            Ended::Shutdown | Ended::Retired => break,
            Ended::GoAway => {
                counter!(m::RECONNECTS, "cause" => "go_away").increment(1);
                // A new endpoint gets a new UDP port: the hub (or its load balancer) sees a new flow.
                endpoint = None;
                first = true;
            }
            Ended::Lost(reason) => {
                counter!(m::RECONNECTS, "cause" => "lost").increment(1);
                tracing::warn!(%reason, "tunnel lost");
            }
        }
    }
    close(endpoint).await;
    ops_task.abort();
    Ok(())
}

async fn close(endpoint: Option<quinn::Endpoint>) {
    if let Some(endpoint) = endpoint {
        endpoint.close(tether_runtime::transport::code(tether_proto::Code::Normal), b"bye");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
    }
}

/// Dials the hub with `client_config`, on `endpoint` (made, or remade for another address family, here).
async fn dial(
    config: &Config,
    server_name: &str,
    endpoint: &mut Option<quinn::Endpoint>,
    client_config: quinn::ClientConfig,
) -> std::result::Result<quinn::Connection, String> {
    let addr: SocketAddr = tokio::net::lookup_host(&config.hub)
        .await
        .map_err(|e| format!("resolving {}: {e}", config.hub))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", config.hub))?;
    if endpoint.as_ref().and_then(|e| e.local_addr().ok()).is_none_or(|l| l.is_ipv4() != addr.is_ipv4()) {
        let bind: SocketAddr =
            if addr.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("literal address");
        let socket = tether_runtime::transport::udp_socket(bind).map_err(|e| format!("UDP socket: {e}"))?;
        let client = quinn::Endpoint::new(Default::default(), None, socket, Arc::new(quinn::TokioRuntime));
        *endpoint = Some(client.map_err(|e| format!("UDP socket: {e}"))?);
    }
    let endpoint = endpoint.as_ref().expect("set above");
    let connecting = endpoint.connect_with(client_config, addr, server_name).map_err(|e| e.to_string())?;
    tokio::time::timeout(std::time::Duration::from_secs(10), connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())
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
