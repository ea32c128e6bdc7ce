//! The proxy's edge against hostile or careless peers, in-process: the real `Proxy::serve` on 127.0.0.1:0
//! with real TLS, a scripted hub (`Reviews`) that counts what it is asked, and short timeouts. Every wait
//! is on a condition with a deadline.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use tether_runtime::listener::Limits;
use tunnel_server::clusters::KnownClusters;
use tunnel_server::proxy::identity::UserInfo;
use tunnel_server::proxy::{
    Attributes, AuthSettings, ForwardSettings, HubAuth, KubeReviews, Proxy, ProxyError, Reviews,
};
use tunnel_server::registry::Registry;

const DEADLINE: Duration = Duration::from_secs(10);

/// The process's metrics (one recorder for all tests of this binary; counters only grow, so tests check
/// that a series appears, never its value).
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| tether_runtime::telemetry::install_metrics().expect("a recorder"))
}

/// Waits for a series (name and labels as rendered) to be counted; the server counts a close just after it.
async fn counted(series: &str) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !metrics().render().lines().any(|line| line.starts_with(series)) {
        if Instant::now() > deadline {
            bail!("{series} not counted:\n{}", metrics().render());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Accepts `good` and `slow` (the latter answered once `release` is set) as alice; allows everything.
struct Scripted {
    token_calls: AtomicUsize,
    release: watch::Sender<bool>,
}

impl Scripted {
    fn new() -> Arc<Self> {
        Arc::new(Self { token_calls: AtomicUsize::new(0), release: watch::Sender::new(false) })
    }
    fn calls(&self) -> usize {
        self.token_calls.load(Ordering::SeqCst)
    }
}

impl Reviews for Scripted {
    fn token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<UserInfo>, ProxyError>> {
        self.token_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if token == "slow" {
                let _ = self.release.subscribe().wait_for(|released| *released).await;
            }
            Ok(matches!(token, "good" | "slow").then(|| UserInfo {
                username: "alice".into(),
                uid: String::new(),
                groups: vec!["system:authenticated".into()],
                extra: Default::default(),
            }))
        })
    }
    fn access<'a>(&'a self, _: &'a UserInfo, _: &'a Attributes) -> BoxFuture<'a, Result<bool, ProxyError>> {
        Box::pin(async { Ok(true) })
    }
}

fn limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_millis(300),
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(30),
        max_connections: 64,
        max_refusing: 4,
        max_header_bytes: 8 * 1024,
        http2_keepalive_interval: Some(Duration::from_secs(30)),
        http2_keepalive_timeout: Duration::from_secs(20),
    }
}

/// A proxy serving until dropped, and a client of it.
struct Edge {
    addr: SocketAddr,
    tls: TlsConnector,
    h2: TlsConnector,
    shutdown: CancellationToken,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Edge {
    async fn start(reviews: Arc<dyn Reviews>, auth: AuthSettings, limits: Limits) -> Result<Self> {
        tether_runtime::tls::install_crypto_provider();
        metrics();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).map_err(anyhow::Error::msg)?;
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone())?;
        let client = |alpn: &[u8]| {
            let mut config =
                rustls::ClientConfig::builder().with_root_certificates(roots.clone()).with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            TlsConnector::from(Arc::new(config))
        };

        let proxy = Arc::new(Proxy::new(
            Arc::new(Registry::default()),
            HubAuth::new(reviews, auth),
            KnownClusters::fixed(["a".to_string()]),
            ForwardSettings { open_timeout: Duration::from_secs(1), response_timeout: Duration::from_secs(5) },
            limits,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        tokio::spawn(proxy.serve(listener, Arc::new(server), shutdown.clone()));
        Ok(Self { addr, tls: client(b"http/1.1"), h2: client(b"h2"), shutdown })
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        Ok(self.tls.connect(ServerName::try_from("localhost")?, tcp).await?)
    }
}

/// A GET of `path` with `token`, on a kept-alive HTTP/1.1 connection.
fn get(path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n")
}

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `request` and reads one response (its body by Content-Length).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, request: &str) -> Result<Answer> {
    io.write_all(request.as_bytes()).await?;
    tokio::time::timeout(DEADLINE, read_response(io)).await.context("no response in time")?
}

async fn read_response<S: AsyncRead + Unpin>(io: &mut S) -> Result<Answer> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if io.read(&mut byte).await? == 0 {
            bail!("closed before a response head: {:?}", String::from_utf8_lossy(&head));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head)?;
    let status = head.get(9..12).context("status line")?.parse()?;
    let mut answer = Answer { status, head, body: Vec::new() };
    let length: usize = answer.header("content-length").unwrap_or("0").parse()?;
    answer.body = vec![0; length];
    io.read_exact(&mut answer.body).await?;
    Ok(answer)
}

/// Waits until the server closes `io` (EOF or reset); fails if it stays open past `within`.
async fn closed_within<S: AsyncRead + Unpin>(io: &mut S, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + within).into(), io.read(&mut buf)).await {
            Err(_) => bail!("still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_peer_that_never_handshakes_is_closed_after_the_handshake_timeout() -> Result<()> {
    let edge = Edge::start(Scripted::new(), AuthSettings::new(Duration::from_secs(60)), limits()).await?;
    let mut tcp = TcpStream::connect(edge.addr).await?;
    let after = closed_within(&mut tcp, DEADLINE).await?;
    assert!(after >= Duration::from_millis(250), "closed after {after:?}, before the timeout");
    counted(r#"tether_server_proxy_handshake_failures_total{reason="timeout"}"#).await
}

#[tokio::test]
async fn a_half_sent_head_is_closed_after_the_header_timeout() -> Result<()> {
    let edge = Edge::start(Scripted::new(), AuthSettings::new(Duration::from_secs(60)), limits()).await?;
    let mut tls = edge.connect().await?;
    tls.write_all(b"GET /clusters/a/api HTTP/1.1\r\nhost: localhost\r\nx-slow").await?;
    let after = closed_within(&mut tls, DEADLINE).await?;
    assert!(after >= Duration::from_millis(250), "closed after {after:?}, before the timeout");

    // The same holds for a peer that never sends a byte of HTTP after its handshake (HTTP/2 included).
    let tcp = TcpStream::connect(edge.addr).await?;
    let mut h2 = edge.h2.connect(ServerName::try_from("localhost")?, tcp).await?;
    closed_within(&mut h2, DEADLINE).await?;
    counted(r#"tether_server_proxy_connections_closed_total{reason="header_timeout"}"#).await
}

#[tokio::test]
async fn a_connection_over_the_limit_gets_a_503_status_and_is_closed() -> Result<()> {
    let edge = Edge::start(
        Scripted::new(),
        AuthSettings::new(Duration::from_secs(60)),
        Limits { max_connections: 2, header_timeout: Duration::from_secs(30), ..limits() },
    )
    .await?;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = edge.connect().await?;
        assert_eq!(exchange(&mut tls, &get("/clusters/x/api", "good")).await?.status, 404);
        held.push(tls);
    }
    let mut third = edge.connect().await?;
    let answer = exchange(&mut third, &get("/clusters/x/api", "good")).await?;
    assert_eq!(answer.status, 503, "{}", answer.head);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.header("connection"), Some("close"));
    let status = answer.json()?;
    assert_eq!((status["kind"].as_str(), status["code"].as_u64()), (Some("Status"), Some(503)));
    assert!(status["message"].as_str().unwrap_or_default().contains("connection limit"), "{status}");
    closed_within(&mut third, DEADLINE).await?;
    counted(r#"tether_server_proxy_connections_refused_total{answer="status"}"#).await?;
    counted("tether_server_proxy_connections ").await?;

    // A place freed is a place for the next connection.
    drop(held.pop());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut tls = edge.connect().await?;
        match exchange(&mut tls, &get("/clusters/x/api", "good")).await?.status {
            404 => break,
            503 if Instant::now() < deadline => tokio::task::yield_now().await,
            other => bail!("got {other} once a connection closed"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_oversized_head_gets_431() -> Result<()> {
    let edge = Edge::start(Scripted::new(), AuthSettings::new(Duration::from_secs(60)), limits()).await?;
    // Over the 8 KiB limit, under hyper's own HTTP/2 default (16 KiB) and HTTP/1 buffer (400 KiB).
    let big = "x".repeat(12 * 1024);

    let mut tls = edge.connect().await?;
    let request = format!("GET /clusters/a/api HTTP/1.1\r\nhost: localhost\r\nx-big: {big}\r\n\r\n");
    assert_eq!(exchange(&mut tls, &request).await?.status, 431);
    counted(r#"tether_server_proxy_connections_closed_total{reason="headers_too_large"}"#).await?;

    // HTTP/2: the stream gets 431 and the connection goes on.
    let tcp = TcpStream::connect(edge.addr).await?;
    let h2 = edge.h2.connect(ServerName::try_from("localhost")?, tcp).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2)).await?;
    tokio::spawn(connection);
    let request = |big: Option<&str>| {
        let mut request = http::Request::get("https://localhost/clusters/x/api").header("authorization", "Bearer good");
        if let Some(big) = big {
            request = request.header("x-big", big);
        }
        request.body(Empty::<Bytes>::new())
    };
    let response = sender.send_request(request(Some(&big))?).await?;
    assert_eq!(response.status(), 431);
    let response = sender.send_request(request(None)?).await?;
    assert_eq!(response.status(), 404);
    Ok(())
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_one_with_a_request_in_flight_is_not() -> Result<()> {
    let scripted = Scripted::new();
    let idle = Duration::from_millis(300);
    let limits = Limits { idle_timeout: idle, header_timeout: Duration::from_secs(30), ..limits() };
    let edge = Edge::start(scripted.clone(), AuthSettings::new(Duration::from_secs(60)), limits).await?;

    // A request that takes long: its TokenReview answers only once released.
    let mut busy = edge.connect().await?;
    busy.write_all(get("/clusters/x/api", "slow").as_bytes()).await?;
    let deadline = Instant::now() + DEADLINE;
    while scripted.calls() == 0 {
        assert!(Instant::now() < deadline, "the slow request never reached the hub");
        tokio::task::yield_now().await;
    }
    let busy_since = Instant::now();

    // A kept-alive connection after its answer: closed once idle, long before the header timeout.
    let mut idle_one = edge.connect().await?;
    assert_eq!(exchange(&mut idle_one, &get("/clusters/x/api", "good")).await?.status, 404);
    let after = closed_within(&mut idle_one, DEADLINE).await?;
    assert!(after >= idle.mul_f32(0.8), "closed after {after:?}");
    counted(r#"tether_server_proxy_connections_closed_total{reason="idle"}"#).await?;

    // By now the busy connection has had no response for longer than the idle timeout; it still gets one.
    assert!(busy_since.elapsed() > idle);
    scripted.release.send_replace(true);
    let answer = tokio::time::timeout(DEADLINE, read_response(&mut busy)).await??;
    assert_eq!(answer.status, 404);
    Ok(())
}

#[tokio::test]
async fn concurrent_requests_with_one_token_make_one_token_review() -> Result<()> {
    let scripted = Scripted::new();
    let edge = Edge::start(scripted.clone(), AuthSettings::new(Duration::from_secs(60)), limits()).await?;
    let mut connections = Vec::new();
    for _ in 0..20 {
        let mut tls = edge.connect().await?;
        tls.write_all(get("/clusters/x/api", "slow").as_bytes()).await?;
        connections.push(tls);
    }
    // The hub holds the first review; without coalescing each request would ask it too. Give them the
    // time to (the premise: they would have within this bound), then release.
    let deadline = Instant::now() + Duration::from_millis(500);
    while scripted.calls() < 20 && Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    scripted.release.send_replace(true);
    for tls in &mut connections {
        assert_eq!(tokio::time::timeout(DEADLINE, read_response(tls)).await??.status, 404);
    }
    assert_eq!(scripted.calls(), 1, "one TokenReview for 20 concurrent requests with one token");
    Ok(())
}

#[tokio::test]
async fn repeated_bad_tokens_from_one_source_get_429_and_a_bounded_number_of_reviews() -> Result<()> {
    let scripted = Scripted::new();
    let auth = AuthSettings { failures_per_minute: 5, ..AuthSettings::new(Duration::from_secs(60)) };
    let edge = Edge::start(scripted.clone(), auth, limits()).await?;
    let mut tls = edge.connect().await?;
    let mut codes = Vec::new();
    for i in 0..30 {
        let answer = exchange(&mut tls, &get("/clusters/a/api", &format!("bad-{i}"))).await?;
        if answer.status == 429 {
            let wait: u64 = answer.header("retry-after").context("429 without Retry-After")?.parse()?;
            assert!((1..=12).contains(&wait), "Retry-After: {wait}");
            assert_eq!(answer.json()?["reason"], "TooManyRequests");
        }
        codes.push(answer.status);
    }
    assert_eq!(codes.iter().filter(|c| **c == 401).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 25, "{codes:?}");
    assert_eq!(scripted.calls(), 5, "the hub reviewed only as many bad tokens as the limit");

    // More connections from the same address change nothing.
    let mut other = edge.connect().await?;
    assert_eq!(exchange(&mut other, &get("/clusters/a/api", "bad-new")).await?.status, 429);
    assert_eq!(scripted.calls(), 5);
    Ok(())
}

#[tokio::test]
async fn a_failing_hub_is_a_503_with_a_generic_message() -> Result<()> {
    // A hub apiserver that is not there: the kube client's error names its address.
    let gone = TcpListener::bind("127.0.0.1:0").await?;
    let hub_addr = gone.local_addr()?;
    drop(gone);
    let config = kube::Config::new(format!("https://{hub_addr}").parse()?);
    let reviews = Arc::new(KubeReviews(kube::Client::try_from(config)?));
    let edge = Edge::start(reviews, AuthSettings::new(Duration::from_secs(60)), limits()).await?;
    let mut tls = edge.connect().await?;
    let answer = exchange(&mut tls, &get("/clusters/a/api", "some-token")).await?;
    assert_eq!(answer.status, 503);
    let status = answer.json()?;
    assert_eq!(status["message"], "hub authentication is unavailable, try again later");
    let body = String::from_utf8_lossy(&answer.body);
    for detail in [hub_addr.port().to_string(), "127.0.0.1".into(), "connect".into(), "error".into()] {
        assert!(!body.contains(&detail), "{detail:?} in {body}");
    }
    Ok(())
}

/// Accepts `good` as the push controller `controller`; allows everything, recording who asked for what.
#[derive(Default)]
struct Recording {
    access: std::sync::Mutex<Vec<(UserInfo, Attributes)>>,
}

impl Reviews for Recording {
    fn token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<UserInfo>, ProxyError>> {
        Box::pin(async move {
            Ok((token == "good").then(|| UserInfo {
                username: "controller".into(),
                uid: String::new(),
                groups: vec!["system:authenticated".into()],
                extra: Default::default(),
            }))
        })
    }
    fn access<'a>(&'a self, user: &'a UserInfo, attributes: &'a Attributes) -> BoxFuture<'a, Result<bool, ProxyError>> {
        self.access.lock().unwrap().push((user.clone(), attributes.clone()));
        Box::pin(async { Ok(true) })
    }
}

#[tokio::test]
async fn the_push_controller_acts_only_as_push_identities() -> Result<()> {
    let reviews = Arc::new(Recording::default());
    let auth =
        AuthSettings { push_controllers: vec!["controller".into()], ..AuthSettings::new(Duration::from_secs(60)) };
    let edge = Edge::start(reviews.clone(), auth, limits()).await?;
    let mut io = edge.connect().await?;
    let as_user = |extra: &str| {
        format!("GET /clusters/a/api HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer good\r\n{extra}\r\n")
    };
    // As itself, or as anyone but a push identity, it is refused before the hub is asked anything, although
    // the hub would allow everything.
    for extra in [
        "",
        "impersonate-user: admin\r\n",
        "impersonate-user: tether:push:team-a\r\nimpersonate-group: system:masters\r\n",
        "impersonate-user: tether:push:Team-A\r\n",
    ] {
        let answer = exchange(&mut io, &as_user(extra)).await?;
        let message = answer.json()?["message"].as_str().unwrap_or_default().to_string();
        if answer.status != 403 || !message.contains("only as a push identity") {
            bail!("{extra:?}: {} {message}", answer.status);
        }
    }
    assert!(reviews.access.lock().unwrap().is_empty(), "the hub was asked: {:?}", reviews.access.lock().unwrap());
    // As a push identity, the hub authorizes that identity's use of the cluster, like any user's.
    let answer = exchange(&mut io, &as_user("impersonate-user: tether:push:team-a\r\n")).await?;
    assert_ne!(answer.status, 403, "{}", String::from_utf8_lossy(&answer.body));
    let asked = reviews.access.lock().unwrap().clone();
    let [(user, attributes)] = &asked[..] else { bail!("expected one access review, got {asked:?}") };
    assert_eq!(user.username, "tether:push:team-a");
    assert_eq!(user.groups, ["tether:pushers", "system:authenticated"]);
    assert_eq!((attributes.resource.as_str(), attributes.subresource.as_str()), ("managedclusters", "proxy"));
    Ok(())
}
