//! The load generator's HTTP side: TLS connections to a target (the hub's proxy, a backend, a peer tunnel's
//! port, an apiserver), GETs over them, and the closed loop that measures latency at a fixed concurrency.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::report::Progress;
use crate::stats::Latencies;

/// Where requests go, and how they authenticate.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    /// Prepended to every path: `/clusters/<cluster>` through the hub, empty otherwise.
    pub prefix: String,
    pub token: String,
    /// Sent with every request of [`Target::get`] (impersonation, for the direct path asked as a spoke asks).
    pub headers: http::HeaderMap,
    roots: Arc<rustls::RootCertStore>,
}

pub type H1 = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
pub type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

impl Target {
    pub fn new(name: &str, addr: SocketAddr, ca_pem: &str, prefix: &str, token: &str) -> Result<Self> {
        let certs = tether_runtime::tls::parse_certs(ca_pem.as_bytes())?;
        let roots = tether_runtime::tls::root_store_from_certs(certs)?;
        let (name, prefix, token) = (name.into(), prefix.into(), token.into());
        Ok(Self { name, addr, prefix, token, headers: http::HeaderMap::new(), roots: Arc::new(roots) })
    }

    /// A TLS connection offering `alpn`, for callers that speak HTTP with other bodies (writes).
    pub async fn tls(&self, alpn: &[u8]) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut config =
            rustls::ClientConfig::builder().with_root_certificates(self.roots.clone()).with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp =
            tokio::net::TcpStream::connect(self.addr).await.with_context(|| format!("connecting to {}", self.name))?;
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost")?, tcp).await?;
        Ok(tls)
    }

    /// A new HTTP/1.1 connection (keep-alive).
    pub async fn h1(&self) -> Result<H1> {
        let io = TokioIo::new(self.tls(b"http/1.1").await?);
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// A new HTTP/2 connection: many requests (watches) multiplexed, as client-go does.
    pub async fn h2(&self) -> Result<H2> {
        let io = TokioIo::new(self.tls(b"h2").await?);
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .handshake(io)
            .await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// A GET of `path` (below the prefix), kubectl-style.
    pub fn get(&self, path: &str) -> Request<Empty<Bytes>> {
        let mut request = Request::get(format!("{}{path}", self.prefix))
            .header("host", "localhost")
            .header("authorization", format!("Bearer {}", self.token))
            .header("accept", "application/json")
            .header("user-agent", "loadtest (kubectl-style)")
            .body(Empty::new())
            .expect("a valid request");
        request.headers_mut().extend(self.headers.clone());
        request
    }
}

/// Sends the request and reads the whole body; a status other than 2xx is an error. Returns the body length.
pub async fn fetch(sender: &mut H1, request: Request<Empty<Bytes>>) -> Result<u64> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    read(response).await
}

pub async fn read(response: http::Response<Incoming>) -> Result<u64> {
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = 0u64;
    let mut first = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            bytes += data.len() as u64;
            if first.len() < 200 {
                first.extend_from_slice(&data[..data.len().min(200 - first.len())]);
            }
        }
    }
    ensure!(status.is_success(), "status {status}: {}", String::from_utf8_lossy(&first));
    Ok(bytes)
}

/// The path of each request of a closed loop.
pub type Paths = Arc<dyn Fn() -> String + Send + Sync>;

pub fn fixed(path: &str) -> Paths {
    let path = path.to_string();
    Arc::new(move || path.clone())
}

/// The outcome of a closed loop: the latency of every request after the warm-up, over `elapsed`.
pub struct LoopRun {
    pub latencies: Latencies,
    /// Requests completed, the warm-up's included (what CPU time is divided by).
    pub total: u64,
    pub elapsed: Duration,
}

impl LoopRun {
    pub fn rps(&self) -> f64 {
        self.latencies.count() as f64 / self.elapsed.as_secs_f64()
    }
}

/// `concurrency` workers, each on its own keep-alive connection, GET `path` back to back for `warmup` plus
/// `duration`; only requests sent after the warm-up count. Any failed request fails the run: a benchmark
/// that drops errors measures the wrong thing.
pub async fn closed_loop(
    target: &Target,
    path: Paths,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    progress: &Progress,
) -> Result<LoopRun> {
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let target = target.clone();
        let path = path.clone();
        let done = done.clone();
        workers.spawn(async move {
            let mut sender = target.h1().await?;
            tokio::time::sleep_until(start.into()).await;
            let mut latencies = Vec::new();
            let mut total = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                fetch(&mut sender, target.get(&path())).await.with_context(|| format!("GET via {}", target.name))?;
                total += 1;
                if sent >= measure_from {
                    latencies.push(sent.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>((latencies, total))
        });
    }
    let mut all = Vec::new();
    let mut total = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(result) => {
                    let (latencies, count) = result??;
                    all.extend(latencies);
                    total += count;
                }
                None => break,
            },
            _ = tick.tick() => progress.update(format!(
                "{} c={concurrency}: {} requests", target.name, done.load(Ordering::Relaxed)
            )),
        }
    }
    Ok(LoopRun { latencies: Latencies::new(all), total, elapsed: duration })
}

/// One GET on a fresh connection, as a new kubectl process makes it: TCP, TLS and the request.
pub async fn fresh_get(target: &Target, path: &str) -> Result<Duration> {
    let started = Instant::now();
    let mut sender = target.h1().await?;
    fetch(&mut sender, target.get(path)).await?;
    Ok(started.elapsed())
}
