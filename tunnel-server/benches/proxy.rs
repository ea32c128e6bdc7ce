//! Small GETs through hub → QUIC tunnel → spoke → backend, and straight to the same backend, in one run.
//! Prints req/s and p50/p99 for both paths at concurrency 1 and 64, and the ratios.
//!
//!   cargo bench -p tunnel-server --bench proxy [-- --seconds 3 --concurrency 1,64]
//!
//! Each component gets its own single-threaded runtime on its own thread, as each would be its own
//! process (on two cores, current-thread runtimes measured fastest). The load generator speaks HTTP/1.1
//! with keep-alive over TLS on both paths.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tunnel_server::clusters::KnownClusters;
use tunnel_server::proxy::auth::Attributes;
use tunnel_server::proxy::identity::UserInfo;
use tunnel_server::proxy::{ProxyError, Reviews};
use tunnel_server::revocations::Revocations;

const TOKEN: &str = "bench-token";
const BODY: &[u8] =
    br#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"x","namespace":"default"},"data":{"k":"v"}}"#;

// Per-request allocations dominated the hub's profile with glibc malloc (≈30% of its CPU).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    tether_runtime::tls::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let seconds: f64 = flag("--seconds").map(|s| s.parse()).transpose()?.unwrap_or(3.0);
    let levels: Vec<usize> = flag("--concurrency")
        .unwrap_or_else(|| "1,64".into())
        .split(',')
        .map(|c| c.parse())
        .collect::<Result<_, _>>()?;
    let paths = flag("--paths").unwrap_or_else(|| "direct,tunnel".into());
    let dir = tempfile::tempdir()?;
    let pki = Pki::write(dir.path())?;

    let backend = spawn_backend(&pki)?;
    let shutdown = CancellationToken::new();
    let hub = spawn_hub(dir.path(), shutdown.clone())?;
    spawn_spoke(dir.path(), &pki, backend, hub.quic, shutdown.clone())?;

    let load = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    println!("{:>11} {:>6} {:>10} {:>10} {:>10}", "path", "conc", "req/s", "p50 µs", "p99 µs");
    let mut rows = Vec::new();
    for &concurrency in &levels {
        // `--paths tunnel` profiles one path alone; ratios need both.
        let skip = Stats { rps: f64::NAN, p50_us: f64::NAN, p99_us: f64::NAN };
        let direct = match paths.contains("direct") {
            true => load.block_on(measure(
                backend,
                &pki.backend_ca,
                "/api/v1/namespaces/default/configmaps/x",
                concurrency,
                seconds,
            ))?,
            false => skip,
        };
        let skip = Stats { rps: f64::NAN, p50_us: f64::NAN, p99_us: f64::NAN };
        let tunnel = match paths.contains("tunnel") {
            true => load.block_on(measure(
                hub.proxy,
                &pki.hub_ca,
                "/clusters/bench/api/v1/namespaces/default/configmaps/x",
                concurrency,
                seconds,
            ))?,
            false => skip,
        };
        for (name, r) in [("direct", &direct), ("tunnel", &tunnel)] {
            println!("{name:>11} {concurrency:>6} {:>10.0} {:>10.0} {:>10.0}", r.rps, r.p50_us, r.p99_us);
        }
        rows.push((concurrency, direct, tunnel));
    }
    println!();
    for (concurrency, direct, tunnel) in rows {
        println!(
            "concurrency {concurrency:>3}: tunnel/direct req/s = {:.2}, added p50 = {:.0} µs, added p99 = {:.0} µs",
            tunnel.rps / direct.rps,
            tunnel.p50_us - direct.p50_us,
            tunnel.p99_us - direct.p99_us
        );
    }
    shutdown.cancel();
    Ok(())
}

struct Pki {
    hub_ca: String,
    backend_ca: String,
    backend: (Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>),
}

impl Pki {
    fn write(dir: &Path) -> Result<Self> {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let ca = tether_certs::CertificateAuthority::generate("bench-hub-ca", now, day)?;
        let serving = ca.issue_serving(&["localhost".into()], &["127.0.0.1".parse()?], now, day)?;
        let (key, csr) = tether_certs::spoke_key_and_csr("bench")?;
        let spoke = ca.sign_spoke_csr(&csr, "bench", now, day)?;
        for (name, text) in [
            ("ca.crt", ca.cert_pem()),
            ("tls.crt", &serving.cert_pem),
            ("tls.key", &serving.key_pem),
            ("spoke.crt", &spoke),
            ("spoke.key", &key),
        ] {
            std::fs::write(dir.join(name), text)?;
        }
        // The backend stands for a spoke apiserver: its own CA, its own serving certificate.
        let backend_ca = tether_certs::CertificateAuthority::generate("bench-backend-ca", now, day)?;
        let backend = backend_ca.issue_serving(&["localhost".into()], &["127.0.0.1".parse()?], now, day)?;
        let chain = tether_runtime::tls::certs_from_pem(backend.cert_pem.as_bytes()).map_err(anyhow::Error::msg)?;
        use rustls::pki_types::pem::PemObject;
        let key = PrivateKeyDer::from_pem_slice(backend.key_pem.as_bytes())?;
        Ok(Self {
            hub_ca: ca.cert_pem().to_string(),
            backend_ca: backend_ca.cert_pem().to_string(),
            backend: (chain, Arc::new(key)),
        })
    }
}

fn spawn_backend(pki: &Pki) -> Result<SocketAddr> {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(pki.backend.0.clone(), pki.backend.1.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new().name("backend".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
    })?;
    Ok(addr)
}

struct HubAddrs {
    proxy: SocketAddr,
    quic: SocketAddr,
}

/// Accepts the bench token as user `bench` and allows everything: no hub apiserver in the measured path,
/// as in steady state where every answer comes from the cache.
struct Allow;

impl Reviews for Allow {
    fn token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<UserInfo>, ProxyError>> {
        let user = (token == TOKEN).then(|| UserInfo {
            username: "bench".into(),
            uid: String::new(),
            groups: vec!["system:authenticated".into()],
            extra: Default::default(),
        });
        Box::pin(async move { Ok(user) })
    }
    fn access<'a>(&'a self, _: &'a UserInfo, _: &'a Attributes) -> BoxFuture<'a, Result<bool, ProxyError>> {
        Box::pin(async { Ok(true) })
    }
}

fn spawn_hub(dir: &Path, shutdown: CancellationToken) -> Result<HubAddrs> {
    use clap::Parser;
    let ready = dir.join("hub.ready");
    let config = tunnel_server::Cli::try_parse_from([
        "tunnel-server",
        "serve",
        "--quic-addr",
        "127.0.0.1:0",
        "--proxy-addr",
        "127.0.0.1:0",
        "--ops-addr",
        "127.0.0.1:0",
        "--tls-cert",
        &dir.join("tls.crt").display().to_string(),
        "--tls-key",
        &dir.join("tls.key").display().to_string(),
        "--tunnel-ca",
        &dir.join("ca.crt").display().to_string(),
        "--ready-file",
        &ready.display().to_string(),
    ])?;
    let tunnel_server::Command::Serve(config) = config.command else { unreachable!("serve was parsed") };
    std::thread::Builder::new().name("hub".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let hub = tunnel_server::Hub {
            reviews: Arc::new(Allow),
            clusters: KnownClusters::fixed(["bench".to_string()]),
            revocations: Revocations::fixed(Default::default()),
            leases: None,
        };
        if let Err(e) = rt.block_on(tunnel_server::serve(config, hub, shutdown)) {
            eprintln!("hub: {e}");
        }
    })?;
    let json: serde_json::Value =
        wait(|| std::fs::read_to_string(&ready).ok().and_then(|t| serde_json::from_str(&t).ok()))?;
    Ok(HubAddrs {
        proxy: json["proxy"].as_str().context("proxy")?.parse()?,
        quic: json["quic"].as_str().context("quic")?.parse()?,
    })
}

fn spawn_spoke(dir: &Path, pki: &Pki, backend: SocketAddr, hub: SocketAddr, shutdown: CancellationToken) -> Result<()> {
    use base64::Engine;
    use clap::Parser;
    let kubeconfig = dir.join("backend.kubeconfig");
    let ca = base64::engine::general_purpose::STANDARD.encode(&pki.backend_ca);
    std::fs::write(&kubeconfig, format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {ca}\ncontexts:\n- name: b\n  context: {{cluster: b, user: b}}\ncurrent-context: b\nusers:\n- name: b\n  user:\n    token: spoke-token\n",
        backend.port()
    ))?;
    let ready = dir.join("spoke.ready");
    let config = tunnel_client::Config::try_parse_from([
        "tunnel-client",
        "--hub",
        &hub.to_string(),
        "--hub-server-name",
        "localhost",
        "--hub-ca",
        &dir.join("ca.crt").display().to_string(),
        "--cert",
        &dir.join("spoke.crt").display().to_string(),
        "--key",
        &dir.join("spoke.key").display().to_string(),
        "--kubeconfig",
        &kubeconfig.display().to_string(),
        "--ops-addr",
        "127.0.0.1:0",
        "--ready-file",
        &ready.display().to_string(),
    ])?;
    std::thread::Builder::new().name("spoke".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        if let Err(e) = rt.block_on(tunnel_client::run(config, shutdown)) {
            eprintln!("spoke: {e}");
        }
    })?;
    wait(|| ready.exists().then_some(()))
}

fn wait<T>(mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "component did not become ready");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Stats {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn measure(addr: SocketAddr, ca_pem: &str, path: &str, concurrency: usize, seconds: f64) -> Result<Stats> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in tether_runtime::tls::certs_from_pem(ca_pem.as_bytes()).map_err(anyhow::Error::msg)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let warmup = Duration::from_millis(500);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs_f64(seconds);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let connector = connector.clone();
        let path = path.to_string();
        workers.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let request = Request::get(path.as_str())
                    .header("host", "localhost")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(Empty::<Bytes>::new())?;
                let response = sender.send_request(request).await?;
                anyhow::ensure!(response.status().is_success(), "status {}", response.status());
                response.into_body().collect().await?;
                if sent >= measure_from {
                    latencies.push(sent.elapsed());
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await??);
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Ok(Stats { rps: all.len() as f64 / seconds, p50_us: pct(0.50), p99_us: pct(0.99) })
}
