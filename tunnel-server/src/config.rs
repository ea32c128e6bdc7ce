//! Command line and environment of `tunnel-server`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tunnel-server", version, about = "tether hub: spoke tunnels and the Kubernetes API proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub: QUIC endpoint for spokes, HTTPS proxy for API clients, ops endpoint.
    Serve(ServeConfig),
    /// Write a kubeconfig with one context per cluster, each pointing at the hub proxy.
    Kubeconfig(crate::kubeconfig::KubeconfigArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// UDP address of the QUIC endpoint spokes dial.
    #[arg(long, env = "TETHER_QUIC_ADDR", default_value = "0.0.0.0:8443")]
    pub quic_addr: SocketAddr,
    /// TCP address of the HTTPS proxy for API clients.
    #[arg(long, env = "TETHER_PROXY_ADDR", default_value = "0.0.0.0:8443")]
    pub proxy_addr: SocketAddr,
    /// TCP address of /metrics, /healthz and /readyz (HTTPS).
    #[arg(long, env = "TETHER_OPS_ADDR", default_value = "0.0.0.0:9443")]
    pub ops_addr: SocketAddr,
    /// Serving certificate (PEM chain) for the QUIC endpoint, the proxy and the ops endpoint.
    #[arg(long, env = "TETHER_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// Private key of --tls-cert.
    #[arg(long, env = "TETHER_TLS_KEY")]
    pub tls_key: PathBuf,
    /// The hub CA that signs spoke certificates; spokes are verified against it.
    #[arg(long, env = "TETHER_TUNNEL_CA")]
    pub tunnel_ca: PathBuf,
    /// The hub apiserver's client CA: API clients may authenticate with certificates it signed.
    #[arg(long, env = "TETHER_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// kubeconfig for the hub apiserver (TokenReview, SubjectAccessReview, ManagedCluster watch);
    /// in-cluster configuration when absent.
    #[arg(long, env = "TETHER_HUB_KUBECONFIG")]
    pub hub_kubeconfig: Option<PathBuf>,
    /// How long authentication and authorization answers are cached.
    #[arg(long, env = "TETHER_AUTH_CACHE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub auth_cache_ttl: Duration,
    /// Bytes (estimated) each of the token and the access-decision caches may hold; the least used go first.
    #[arg(long, env = "TETHER_AUTH_CACHE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub auth_cache_bytes: u64,
    /// Rejected bearer tokens per minute and client address (IPv6: per /64) that the hub apiserver is asked
    /// to review; past it the address gets 429 with Retry-After for tokens not cached; 0 for no limit.
    #[arg(long, env = "TETHER_AUTH_FAILURE_RATE", default_value_t = 30)]
    pub auth_failure_rate: u32,
    /// Hub users that are push controllers: on the proxy they may act only as push identities
    /// (`Impersonate-User: tether:push:<namespace>`, group `tether:pushers`), which needs no impersonation
    /// rights on the hub, and never as themselves or anyone else. Comma-separated; empty for none.
    #[arg(
        long,
        env = "TETHER_PUSH_CONTROLLERS",
        value_delimiter = ',',
        default_value = "system:serviceaccount:tether-system:controller"
    )]
    pub push_controllers: Vec<String>,
    /// Proxy: time from TCP accept to a finished TLS handshake.
    #[arg(long, env = "TETHER_PROXY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub proxy_handshake_timeout: Duration,
    /// Proxy: time from the handshake to the first complete request head; for HTTP/1.1 also the longest
    /// wait for the next request on a kept-alive connection.
    #[arg(long, env = "TETHER_PROXY_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub proxy_header_timeout: Duration,
    /// Proxy: a connection with no request in flight for this long is closed gracefully (HTTP/2: GOAWAY).
    /// A watch waiting for events is a request in flight.
    #[arg(long, env = "TETHER_PROXY_IDLE_TIMEOUT", default_value = "120s", value_parser = positive_duration)]
    pub proxy_idle_timeout: Duration,
    /// Proxy: connections at a time (upgraded ones, such as exec, included). Past it a few get a 503 Status
    /// with Retry-After and the rest are closed at once.
    #[arg(long, env = "TETHER_PROXY_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub proxy_max_connections: u32,
    /// Proxy: the largest request head (request line and headers, or an HTTP/2 header list) in bytes;
    /// larger ones get 431. At least 8192.
    #[arg(long, env = "TETHER_PROXY_MAX_HEADER_BYTES", default_value_t = 32 * 1024,
          value_parser = clap::value_parser!(u32).range(8192..))]
    pub proxy_max_header_bytes: u32,
    /// Proxy: HTTP/2 PING interval; 0s for none.
    #[arg(long, env = "TETHER_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// Proxy: how long an HTTP/2 PING may go unanswered before the connection is closed.
    #[arg(long, env = "TETHER_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = positive_duration)]
    pub http2_keepalive_timeout: Duration,
    /// Control-stream heartbeat interval; a tunnel silent for three intervals is dropped.
    #[arg(long, env = "TETHER_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Time to response headers from a spoke before answering 504.
    #[arg(long, env = "TETHER_RESPONSE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub response_timeout: Duration,
    /// On shutdown, how long open streams may finish after spokes were told to go away.
    #[arg(long, env = "TETHER_DRAIN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_grace: Duration,
    /// Per-stream receive window in bytes: bounds what one slow reader buffers.
    #[arg(long, env = "TETHER_STREAM_WINDOW", default_value_t = 16 * 1024 * 1024)]
    pub stream_window: u64,
    /// Runtime worker threads; 0 or 1 runs a single-threaded runtime.
    #[arg(long, env = "TETHER_WORKER_THREADS", default_value_t = 2)]
    pub worker_threads: usize,
    /// Write the bound addresses as JSON here once listening (for scripts and tests binding port 0).
    #[arg(long, env = "TETHER_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// This replica's name in the Leases it writes (holder identity, label, Lease name); the hostname when
    /// absent. Made a DNS label: lowercase, [a-z0-9-], at most 63 characters.
    #[arg(long, env = "TETHER_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Namespace on the hub of the per-cluster Leases this replica renews while it holds a tunnel, of the
    /// revocations and of the bootstrap token Secrets; it must exist.
    #[arg(long, env = "TETHER_LEASE_NAMESPACE", default_value = "tether-system")]
    pub lease_namespace: String,
    /// spec.leaseDurationSeconds of those Leases (whole seconds, rounded up).
    #[arg(long, env = "TETHER_LEASE_DURATION", default_value = "40s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How often each Lease is renewed while its cluster has a tunnel here.
    #[arg(long, env = "TETHER_LEASE_RENEW_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_renew_interval: Duration,
    /// How long one bootstrap connection waits for its certificate request to be approved and signed; the
    /// client then reconnects and resumes.
    #[arg(long, env = "TETHER_BOOTSTRAP_WAIT", default_value = "15m", value_parser = humantime::parse_duration)]
    pub bootstrap_wait: Duration,
    /// Bootstrap attempts allowed per client address (IPv6: per /64) and minute; 0 for no limit.
    #[arg(long, env = "TETHER_BOOTSTRAP_RATE", default_value_t = 10)]
    pub bootstrap_rate: u32,
    /// Bootstrap connections served at once (each may wait --bootstrap-wait for approval); past it a new one
    /// is closed as busy and its client backs off. Bounds what unauthenticated peers hold on the hub.
    #[arg(long, env = "TETHER_BOOTSTRAP_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub bootstrap_max_connections: u32,
    /// Certificate requests the tunnels of one cluster may file per hour for renewals, shared by all of its
    /// tunnels on this replica (a renewal that resumes its request files none); past it a renewal is refused
    /// as rate-limited and the client backs off. 0 for no limit.
    #[arg(long, env = "TETHER_RENEWAL_RATE", default_value_t = 10)]
    pub renewal_rate: u32,
}

/// A duration that must not be zero (a zero timeout would refuse everything).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("must be longer than 0s".into()),
        d => Ok(d),
    }
}
