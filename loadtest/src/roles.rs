//! The components a run starts as child processes (`loadtest role ...`): the hub, the spoke's client and a
//! backend standing in for a spoke apiserver.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::TlsAcceptor;
use tunnel_server::clusters::KnownClusters;
use tunnel_server::proxy::auth::Attributes;
use tunnel_server::proxy::identity::UserInfo;
use tunnel_server::proxy::{ProxyError, Reviews};
use tunnel_server::revocations::Revocations;

/// The bearer token API clients of a run present to the hub.
pub const TOKEN: &str = "loadtest-token";
/// The small object every GET of the backend answers with: the size of a typical ConfigMap.
pub const BODY: &[u8] =
    br#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"x","namespace":"default"},"data":{"k":"v"}}"#;
/// The backend streams `bytes=N` bytes for a path ending in this.
pub const BULK_PATH: &str = "/api/v1/namespaces/default/configmaps/bulk";

#[derive(Debug, Args)]
pub struct Role {
    #[command(subcommand)]
    pub role: RoleKind,
}

#[derive(Debug, Subcommand)]
pub enum RoleKind {
    Hub(HubArgs),
    /// tunnel-client, with the arguments after `--`.
    Spoke {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    Backend(BackendArgs),
    /// The hub controller (`controller run`), with its arguments after `--`.
    Controller {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write a run's certificates to DIR (the peer script starts the backend before the measurement).
    Pki {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Once stdin closes, undo what `loadtest node` changed: its cluster, network namespace, inotify limit.
    Teardown(crate::node::TeardownArgs),
}

#[derive(Debug, Args)]
pub struct HubArgs {
    /// Clusters the hub knows, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "bench")]
    pub clusters: Vec<String>,
    /// Also know `sim-0` .. `sim-<N-1>`, the simulated spokes of `tunnels`.
    #[arg(long, default_value_t = 0)]
    pub simulated: usize,
    /// Run as tunnel-server does against the hub apiserver of `--hub-kubeconfig` (token and access reviews,
    /// ManagedClusters, revocations, Leases) instead of the fixed allow-all answers; `--clusters` and
    /// `--simulated` are then unused.
    #[arg(long)]
    pub apiserver: bool,
    /// tunnel-server serve arguments, after `--`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub serve: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BackendArgs {
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    #[arg(long)]
    pub ready_file: PathBuf,
}

pub fn run(role: Role) -> Result<()> {
    tether_runtime::telemetry::init_tracing();
    tether_runtime::tls::install_crypto_provider();
    match role.role {
        RoleKind::Hub(args) => hub(args),
        RoleKind::Spoke { args } => spoke(args),
        RoleKind::Backend(args) => backend(args),
        RoleKind::Controller { args } => controller(args),
        RoleKind::Pki { dir } => crate::pki::Pki::open_or_create(&dir).map(drop),
        RoleKind::Teardown(args) => crate::node::teardown(args),
    }
}

/// Accepts [`TOKEN`] as user `loadtest` in `system:masters` and allows everything: the hub's steady state,
/// where every answer comes from its cache. The group lets a real spoke apiserver serve the impersonated
/// requests without RBAC set-up, as it serves the direct path's admin.
struct Allow;

impl Reviews for Allow {
    fn token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<UserInfo>, ProxyError>> {
        let user = (token == TOKEN).then(|| UserInfo {
            username: "loadtest".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            extra: Default::default(),
        });
        Box::pin(async move { Ok(user) })
    }
    fn access<'a>(&'a self, _: &'a UserInfo, _: &'a Attributes) -> BoxFuture<'a, Result<bool, ProxyError>> {
        Box::pin(async { Ok(true) })
    }
}

fn hub(args: HubArgs) -> Result<()> {
    use clap::Parser;
    let cli = tunnel_server::Cli::try_parse_from(
        ["tunnel-server".to_string(), "serve".to_string()].into_iter().chain(args.serve),
    )?;
    let tunnel_server::Command::Serve(config) = cli.command else { unreachable!("serve was parsed") };
    let mut clusters = args.clusters;
    clusters.extend((0..args.simulated).map(|i| format!("sim-{i}")));
    let runtime = tether_runtime::build_runtime(config.worker_threads)?;
    if args.apiserver {
        runtime.block_on(async { tunnel_server::run(config, tether_runtime::shutdown::on_signals()).await })?;
        return Ok(());
    }
    runtime.block_on(async {
        let hub = tunnel_server::Hub {
            reviews: Arc::new(Allow),
            clusters: KnownClusters::fixed(clusters),
            revocations: Revocations::fixed(Default::default()),
            leases: None,
        };
        tunnel_server::serve(config, hub, tether_runtime::shutdown::on_signals()).await
    })?;
    Ok(())
}

/// What tunnel-client's `main` does, with its arguments.
fn spoke(args: Vec<String>) -> Result<()> {
    use clap::Parser;
    let config = tunnel_client::Config::try_parse_from(std::iter::once("tunnel-client".to_string()).chain(args))?;
    let runtime = tether_runtime::build_runtime(config.worker_threads)?;
    runtime.block_on(async { tunnel_client::run(config, tether_runtime::shutdown::on_signals()).await })?;
    Ok(())
}

/// What the controller's `main` does for `controller run`, with its arguments.
fn controller(args: Vec<String>) -> Result<()> {
    use clap::Parser;
    let cli = controller::Cli::try_parse_from(["controller".to_string(), "run".to_string()].into_iter().chain(args))?;
    let controller::Command::Run(config) = cli.command() else { unreachable!("run was parsed") };
    let runtime = tether_runtime::build_runtime(config.worker_threads)?;
    runtime.block_on(async { controller::run(config, tether_runtime::shutdown::on_signals()).await })?;
    Ok(())
}

/// An HTTPS server (HTTP/1.1 and HTTP/2) on one thread: [`BODY`] for every GET, `bytes=N` bytes of zeros
/// for [`BULK_PATH`], and a version document for `/version` (the client asks it once).
fn backend(args: BackendArgs) -> Result<()> {
    let config = tether_runtime::tls::server_config_from_files(&args.cert, &args.key)?;
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr).await.context("binding --addr")?;
        let addr = listener.local_addr()?;
        std::fs::write(&args.ready_file, serde_json::json!({ "addr": addr }).to_string())?;
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), hyper::service::service_fn(answer))
                    .await;
            });
        }
    })
}

type BackendBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(request: Request<Incoming>) -> Result<Response<BackendBody>, std::convert::Infallible> {
    let path = request.uri().path();
    if path == "/version" {
        let version = br#"{"major":"1","minor":"20","gitVersion":"v1.20.2-loadtest"}"#;
        return Ok(Response::new(Full::new(Bytes::from_static(version)).boxed()));
    }
    if path.ends_with("/bulk") {
        let total = request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("bytes=")))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        return Ok(Response::builder()
            .header("content-length", total)
            .body(BodyExt::boxed(StreamBody::new(zeros(total))))
            .expect("static response"));
    }
    Ok(Response::new(Full::new(Bytes::from_static(BODY)).boxed()))
}

/// `total` bytes of zeros in 256 KiB frames, all sharing one allocation.
fn zeros(total: u64) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> {
    const CHUNK: usize = 256 * 1024;
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let mut left = total;
    futures::stream::iter(std::iter::from_fn(move || {
        let n = left.min(CHUNK as u64) as usize;
        left -= n as u64;
        (n > 0).then(|| Ok(Frame::data(Bytes::from_static(&ZEROS[..n]))))
    }))
}
