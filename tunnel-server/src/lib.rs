//! tether's hub. Spokes dial the QUIC endpoint with client certificates of the hub CA (or, holding only a
//! bootstrap token, without one to get a certificate); API clients call `https://HUB/clusters/<cluster>/...`;
//! each request becomes one stream on the cluster's tunnel.
pub mod bootstrap;
pub mod clusters;
pub mod config;
mod error;
pub mod kubeconfig;
pub mod leases;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod revocations;
pub mod tunnels;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::server::WebPkiClientVerifier;
use tether_runtime::listener::Limits;
use tether_runtime::ops::{self, Readiness};
use tether_runtime::tls;
use tether_runtime::transport::TransportSettings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Command, ServeConfig};
pub use error::{Error, Result};

use crate::bootstrap::{Bootstrap, BootstrapSettings};
use crate::clusters::KnownClusters;
use crate::leases::LeaseSettings;
use crate::proxy::{AuthSettings, ForwardSettings, HubAuth, KubeReviews, Proxy, Reviews};
use crate::registry::Registry;
use crate::revocations::Revocations;
use crate::tunnels::TunnelSettings;

/// Runs the hub until `shutdown` is cancelled, then drains: spokes are told to go away and open streams get
/// `drain_grace` to finish.
pub async fn run(config: ServeConfig, shutdown: CancellationToken) -> Result<()> {
    tls::install_crypto_provider();
    let client = hub_client(&config).await?;
    let clusters = KnownClusters::default();
    let watch = tokio::spawn(clusters.clone().watch(client.clone(), shutdown.clone()));
    let revocations = Revocations::default();
    let revocations_watch =
        tokio::spawn(revocations.clone().watch(client.clone(), config.lease_namespace.clone(), shutdown.clone()));
    let hub = Hub { reviews: Arc::new(KubeReviews(client.clone())), clusters, revocations, leases: Some(client) };
    let result = serve(config, hub, shutdown).await;
    watch.abort();
    revocations_watch.abort();
    result
}

/// What the hub apiserver provides to the data path: identity and access answers, the known clusters, the
/// revoked spoke certificates; and where this replica's Leases are written and bootstrap requests are
/// served (none in benchmarks: no liveness is published and bootstrap is refused then).
pub struct Hub {
    pub reviews: Arc<dyn Reviews>,
    pub clusters: KnownClusters,
    pub revocations: Revocations,
    pub leases: Option<kube::Client>,
}

/// The hub's listeners and tunnels, given the hub's answers (from the apiserver in `run`, scripted in
/// benchmarks).
pub async fn serve(config: ServeConfig, hub: Hub, shutdown: CancellationToken) -> Result<()> {
    tls::install_crypto_provider();
    metrics::describe();
    let prometheus = tether_runtime::telemetry::install_metrics()?;

    let transport = TransportSettings {
        stream_window: config.stream_window,
        max_concurrent_streams: tether_runtime::transport::SPOKE_OPENED_STREAMS,
        ..Default::default()
    };
    let bind_error = |source| Error::Bind { what: "QUIC endpoint", addr: config.quic_addr, source };
    let socket = tether_runtime::transport::udp_socket(config.quic_addr).map_err(bind_error)?;
    let endpoint = quinn::Endpoint::new(
        endpoint_config(&config)?,
        // Every connection starts tight (one stream, a window the size of a bootstrap request): the TLS
        // handshake has not shown yet who the peer is. Tunnels are lifted to `transport` once verified.
        Some(quic_server_config(&config, &transport.unauthenticated(bootstrap::UNAUTHENTICATED_WINDOW))?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_error)?;
    let proxy_listener = bind(config.proxy_addr, "proxy").await?;
    let ops_listener = bind(config.ops_addr, "ops endpoint").await?;
    let bound =
        Bound { quic: endpoint.local_addr()?, proxy: proxy_listener.local_addr()?, ops: ops_listener.local_addr()? };

    let registry = Arc::new(Registry::default());
    let clusters = hub.clusters;
    let revocations = hub.revocations;
    let readiness = Readiness::default();
    let auth_settings = AuthSettings {
        ttl: config.auth_cache_ttl,
        cache_bytes: config.auth_cache_bytes,
        failures_per_minute: config.auth_failure_rate,
        push_controllers: config.push_controllers.iter().filter(|u| !u.is_empty()).cloned().collect(),
    };
    let auth = HubAuth::new(hub.reviews, auth_settings);
    let forward = ForwardSettings { open_timeout: Duration::from_secs(10), response_timeout: config.response_timeout };
    let proxy = Arc::new(Proxy::new(registry.clone(), auth, clusters.clone(), forward, proxy_limits(&config)));
    let tunnel_settings = TunnelSettings {
        heartbeat_interval: config.heartbeat_interval,
        dead_after: config.heartbeat_interval * 3,
        hello_timeout: Duration::from_secs(10),
        transport,
    };

    // Listeners stop on `stop_accepting`; tunnels get go-away on it too, and are cut at `hard_stop`.
    let stop_accepting = shutdown.child_token();
    let hard_stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(revocations.clone().enforce(registry.clone(), hard_stop.clone()));
    let proxy_tls = proxy_tls_config(&config)?;
    tasks.spawn(proxy.serve(proxy_listener, proxy_tls, stop_accepting.clone()));
    let ops_tls = tls::server_config_from_files(&config.tls_cert, &config.tls_key)?;
    tasks.spawn(ops::serve(ops_listener, ops_tls, prometheus, readiness.clone(), hard_stop.clone()));
    let bootstrap_settings = BootstrapSettings {
        namespace: config.lease_namespace.clone(),
        wait: config.bootstrap_wait,
        rate: config.bootstrap_rate,
        max_connections: config.bootstrap_max_connections,
        renewal_rate: config.renewal_rate,
    };
    let bootstrap = Arc::new(Bootstrap::new(hub.leases.clone(), bootstrap_settings));
    if let Some(client) = hub.leases {
        let settings = lease_settings(&config);
        tracing::info!(namespace = %settings.namespace, replica = %settings.replica, "renewing Leases");
        // Stops at `shutdown` without marking anything going-away: spokes move to another replica.
        tasks.spawn(leases::run(client, registry.clone(), settings, shutdown.clone()));
    }

    wait_for_sync(&clusters, &revocations, &shutdown).await;
    // Spokes only once the revocations are known (a connection that came meanwhile waits in the endpoint).
    tasks.spawn(tunnels::accept_loop(
        endpoint.clone(),
        registry.clone(),
        revocations.clone(),
        bootstrap,
        tunnel_settings,
        stop_accepting.clone(),
    ));
    readiness.set(true);
    if let Some(path) = &config.ready_file {
        bound.write(path)?;
    }
    tracing::info!(quic = %bound.quic, proxy = %bound.proxy, ops = %bound.ops, "hub ready");

    shutdown.cancelled().await;
    readiness.set(false);
    let deadline = Instant::now() + config.drain_grace;
    while !registry.all().is_empty() && Instant::now() < deadline {
        // Spokes close their connections once told to go away; wait for that, bounded by the grace period.
        if let Some(tunnel) = registry.all().first() {
            let _ = tokio::time::timeout_at(deadline.into(), tunnel.connection.closed()).await;
        }
    }
    endpoint.close(tether_runtime::transport::code(tether_proto::Code::Normal), b"hub shutting down");
    hard_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    tasks.abort_all();
    Ok(())
}

/// The proxy listener's limits from its flags.
fn proxy_limits(config: &ServeConfig) -> Limits {
    let max_connections = config.proxy_max_connections as usize;
    Limits {
        handshake_timeout: config.proxy_handshake_timeout,
        header_timeout: config.proxy_header_timeout,
        idle_timeout: config.proxy_idle_timeout,
        max_connections,
        // Enough for clients to be told why, few enough that refusing is cheap (a handshake each).
        max_refusing: (max_connections / 16).clamp(4, 256),
        max_header_bytes: config.proxy_max_header_bytes as usize,
        http2_keepalive_interval: Some(config.http2_keepalive_interval).filter(|d| !d.is_zero()),
        http2_keepalive_timeout: config.http2_keepalive_timeout,
    }
}

fn lease_settings(config: &ServeConfig) -> LeaseSettings {
    if config.lease_renew_interval >= config.lease_duration {
        tracing::warn!(
            renew_interval = ?config.lease_renew_interval,
            duration = ?config.lease_duration,
            "--lease-renew-interval is not shorter than --lease-duration: Leases will look expired between renewals"
        );
    }
    LeaseSettings {
        namespace: config.lease_namespace.clone(),
        replica: leases::replica_id(config.replica_id.as_deref()),
        duration: config.lease_duration,
        renew_interval: config.lease_renew_interval,
    }
}

async fn wait_for_sync(clusters: &KnownClusters, revocations: &Revocations, shutdown: &CancellationToken) {
    // Until the first lists have arrived every cluster would look unknown and no certificate revoked; hold
    // readiness (and spokes) back instead.
    let deadline = Instant::now() + Duration::from_secs(30);
    let synced = || clusters.is_synced() && revocations.is_synced();
    while !synced() && !shutdown.is_cancelled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !revocations.is_synced() {
        tracing::warn!("revocations not read from the hub yet: accepting spokes; revoked ones are closed once read");
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind { what, addr, source })
}

/// The QUIC endpoint's stateless-reset key and connection-ID key, derived from the serving key rather than
/// random: a hub that crashed and came back (or another replica behind the same address with the same
/// certificate) then recognises its predecessor's connection IDs and resets those connections, and spokes
/// reconnect on their next packet instead of waiting out the idle timeout.
fn endpoint_config(config: &ServeConfig) -> Result<quinn::EndpointConfig> {
    let key = tls::load_key(&config.tls_key)?;
    // Domain separation: each digest can be nothing but its own key.
    let derive = |label: &[u8]| {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(label);
        context.update(key.secret_der());
        context.finish()
    };
    let reset = derive(b"tether stateless reset key v1\0");
    let cid = derive(b"tether connection id key v1\0");
    let cid_key = u64::from_be_bytes(cid.as_ref()[..8].try_into().expect("a SHA-256 digest has 8 bytes"));
    let mut endpoint =
        quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref())));
    endpoint.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    Ok(endpoint)
}

fn quic_server_config(config: &ServeConfig, transport: &TransportSettings) -> Result<quinn::ServerConfig> {
    let roots = Arc::new(tls::root_store(&config.tunnel_ca)?);
    // Optional at the TLS layer so that bootstrap connections can come without one; tunnels::accept_loop
    // closes a tether/2 connection without a verified certificate at once.
    let verifier =
        WebPkiClientVerifier::builder(roots).allow_unauthenticated().build().map_err(tether_runtime::Error::from)?;
    let mut crypto = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls::load_certs(&config.tls_cert)?, tls::load_key(&config.tls_key)?)
        .map_err(tether_runtime::Error::from)?;
    crypto.alpn_protocols = vec![tether_proto::ALPN.to_vec(), tether_proto::BOOTSTRAP_ALPN.to_vec()];
    crypto.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(Error::Quic)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport.to_quinn()));
    Ok(server)
}

fn proxy_tls_config(config: &ServeConfig) -> Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder();
    let builder = match &config.client_ca {
        Some(ca) => {
            let roots = Arc::new(tls::root_store(ca)?);
            let verifier = WebPkiClientVerifier::builder(roots)
                .allow_unauthenticated()
                .build()
                .map_err(tether_runtime::Error::from)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls_config = builder
        .with_single_cert(tls::load_certs(&config.tls_cert)?, tls::load_key(&config.tls_key)?)
        .map_err(tether_runtime::Error::from)?;
    tls_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls_config))
}

async fn hub_client(config: &ServeConfig) -> Result<kube::Client> {
    let kube_config = match &config.hub_kubeconfig {
        Some(path) => {
            let invalid = |source| Error::HubKubeconfig { path: path.clone(), source };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(invalid)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.map_err(invalid)?
        }
        None => kube::Config::incluster().map_err(Error::InCluster)?,
    };
    Ok(kube::Client::try_from(kube_config)?)
}

/// The addresses actually bound, for callers that asked for port 0.
#[derive(Debug, Clone, Copy)]
struct Bound {
    quic: SocketAddr,
    proxy: SocketAddr,
    ops: SocketAddr,
}

impl Bound {
    fn write(&self, path: &std::path::Path) -> Result<()> {
        let json = serde_json::json!({
            "quic": self.quic.to_string(),
            "proxy": self.proxy.to_string(),
            "ops": self.ops.to_string(),
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json.to_string()).map_err(|source| Error::Write { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, path).map_err(|source| Error::Write { path: path.into(), source })
    }
}
