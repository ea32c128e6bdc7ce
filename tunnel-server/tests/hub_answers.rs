//! What an unauthenticated peer can cost the hub, and how the hub's answers (bootstrap answers, close and
//! reset codes) read to a client: the real hub (`tunnel_server::serve`) on loopback, real quinn clients. The hub's apiserver is a TCP listener that
//! never answers (a request waits as long as the test wants) or a closed port (every call fails at once).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::FutureExt;
use tether_proto::{
    BootstrapRequest, BootstrapResponse, Code, ControlMessage, Event, ResponseDecoder, Role, Session, SessionConfig,
    BOOTSTRAP_ALPN, BOOTSTRAP_VERSION, PROTOCOL_VERSION,
};
use tether_runtime::transport::TransportSettings;
use tokio_util::sync::CancellationToken;
use tunnel_client::reaction::{self, Closed, Reaction, Stop};
use tunnel_client::request::Answer;
use tunnel_server::bootstrap::UNAUTHENTICATED_WINDOW;
use tunnel_server::clusters::KnownClusters;
use tunnel_server::proxy::auth::Attributes;
use tunnel_server::proxy::identity::UserInfo;
use tunnel_server::proxy::{ProxyError, Reviews};
use tunnel_server::revocations::Revocations;

const DEADLINE: Duration = Duration::from_secs(15);
const TOKEN: &str = "abc123.0123456789abcdef";

/// Nobody is authenticated: the proxy plays no part here.
struct Nobody;

impl Reviews for Nobody {
    fn token<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<UserInfo>, ProxyError>> {
        Box::pin(async { Ok(None) })
    }
    fn access<'a>(&'a self, _: &'a UserInfo, _: &'a Attributes) -> BoxFuture<'a, Result<bool, ProxyError>> {
        Box::pin(async { Ok(false) })
    }
}

/// A hub on loopback and what a client needs to dial it. Dropping it stops the hub.
struct Hub {
    quic: SocketAddr,
    ca: PathBuf,
    /// Signs spoke certificates for tunnels.
    authority: tether_certs::CertificateAuthority,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<tunnel_server::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Hub {
    /// Starts a hub whose apiserver is at `apiserver`, with `extra` flags.
    async fn start(apiserver: SocketAddr, extra: &[&str]) -> Result<Self> {
        tether_runtime::tls::install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let ca = tether_certs::CertificateAuthority::generate("bootstrap-limits-ca", now, day)?;
        let serving = ca.issue_serving(&["localhost".to_string()], &["127.0.0.1".parse()?], now, day)?;
        std::fs::write(path("ca.crt"), ca.cert_pem())?;
        std::fs::write(path("tls.crt"), &serving.cert_pem)?;
        std::fs::write(path("tls.key"), &serving.key_pem)?;
        let ready = path("ready.json");
        let mut args: Vec<String> = ["tunnel-server", "serve"].map(String::from).to_vec();
        for (flag, value) in [
            ("--quic-addr", "127.0.0.1:0".to_string()),
            ("--proxy-addr", "127.0.0.1:0".to_string()),
            ("--ops-addr", "127.0.0.1:0".to_string()),
            ("--tls-cert", path("tls.crt").display().to_string()),
            ("--tls-key", path("tls.key").display().to_string()),
            ("--tunnel-ca", path("ca.crt").display().to_string()),
            ("--ready-file", ready.display().to_string()),
        ] {
            args.extend([flag.to_string(), value]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        use clap::Parser;
        let tunnel_server::Command::Serve(config) = tunnel_server::Cli::try_parse_from(args)?.command else {
            bail!("serve was parsed");
        };
        let client = kube::Client::try_from(kube::Config::new(format!("http://{apiserver}").parse()?))?;
        let hub = tunnel_server::Hub {
            reviews: Arc::new(Nobody),
            clusters: KnownClusters::fixed(Vec::new()),
            revocations: Revocations::fixed(Default::default()),
            leases: Some(client),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tunnel_server::serve(config, hub, shutdown.clone()));
        let json = wait_for("the hub's ready file", || async {
            Ok(std::fs::read_to_string(&ready).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()))
        })
        .await?;
        let quic = json["quic"].as_str().context("quic address")?.parse()?;
        Ok(Self { quic, ca: path("ca.crt"), authority: ca, shutdown, task: Some(task), _dir: dir })
    }

    /// A bootstrap connection (no client certificate), with the client's own transport settings.
    async fn dial(&self, alpn: &[u8]) -> Result<quinn::Connection, quinn::ConnectionError> {
        self.connecting(alpn).await
    }

    fn connecting(&self, alpn: &[u8]) -> quinn::Connecting {
        let roots = tether_runtime::tls::root_store(&self.ca).expect("CA");
        let crypto = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        self.connect_with(crypto, alpn)
    }

    fn connect_with(&self, mut crypto: rustls::ClientConfig, alpn: &[u8]) -> quinn::Connecting {
        crypto.alpn_protocols = vec![alpn.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("QUIC crypto");
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(TransportSettings::default().to_quinn()));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("client endpoint");
        endpoint.connect_with(config, self.quic, "localhost").expect("connect")
    }

    /// A tunnel of `cluster` (a certificate of the hub CA), up to the hub's Welcome. The control stream is
    /// returned so that it stays open.
    async fn tunnel(&self, cluster: &str) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
        let connection = self.mtls(cluster).await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        let role = Role::Client { client_version: "test".into(), instance: cluster.into() };
        let config = SessionConfig { heartbeat_interval: Duration::from_secs(10), dead_after: Duration::from_secs(30) };
        let mut session = Session::new(role, config, Instant::now());
        let mut buf = vec![0u8; 4096];
        loop {
            while let Some(bytes) = session.poll_transmit() {
                send.write_all(&bytes).await?;
            }
            while let Some(event) = session.poll_event() {
                if let Event::Established { .. } = event {
                    return Ok((connection, send, recv));
                }
            }
            let n = tokio::time::timeout(DEADLINE, recv.read(&mut buf)).await?.context("control stream")?;
            session.handle_input(Instant::now(), &buf[..n.context("control stream ended")?])?;
        }
    }

    /// A `tether/2` connection with a certificate of the hub CA for `cluster`, before any stream.
    async fn mtls(&self, cluster: &str) -> Result<quinn::Connection> {
        let (key_pem, csr) = tether_certs::spoke_key_and_csr(cluster)?;
        let cert_pem = self.authority.sign_spoke_csr(&csr, cluster, SystemTime::now(), Duration::from_secs(3600))?;
        let roots = tether_runtime::tls::root_store(&self.ca)?;
        let chain = tether_runtime::tls::parse_certs(cert_pem.as_bytes())?;
        let key = tether_runtime::tls::parse_key(key_pem.as_bytes())?;
        let crypto = rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(chain, key)?;
        Ok(self.connect_with(crypto, tether_proto::ALPN).await?)
    }

    async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(DEADLINE, task).await.context("the hub did not stop")???;
        Ok(())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An apiserver that accepts connections and never answers; they are held until it is dropped.
struct Silent {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port nothing listens on.
async fn closed_port() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?)
}

async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn token_request() -> Result<BootstrapRequest> {
    let (_key, csr_pem) = tether_certs::spoke_key_and_csr("spoke-a")?;
    Ok(BootstrapRequest {
        version: BOOTSTRAP_VERSION,
        cluster: "spoke-a".into(),
        token: Some(TOKEN.into()),
        csr_pem,
        resume: None,
    })
}

/// The hub's first answer to `request` on a new stream of `connection`; `None` if it closed the connection
/// (or the stream) instead.
async fn answer_to(connection: &quinn::Connection, request: &BootstrapRequest) -> Result<Option<BootstrapResponse>> {
    let Ok((mut send, mut recv)) = connection.open_bi().await else { return Ok(None) };
    let mut out = BytesMut::new();
    request.encode(&mut out);
    if send.write_all(&out).await.is_err() {
        return Ok(None);
    }
    let _ = send.finish();
    let mut decoder = ResponseDecoder::new();
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(answer) = decoder.next_response()? {
            return Ok(Some(answer));
        }
        match tokio::time::timeout(DEADLINE, recv.read(&mut buf)).await.context("no answer")? {
            Ok(Some(n)) => decoder.push(&buf[..n]),
            Ok(None) | Err(_) => return Ok(None),
        }
    }
}

/// The code a connection was closed with by the hub, waiting for the close.
async fn close_code(connection: &quinn::Connection) -> Result<Closed> {
    let error = tokio::time::timeout(DEADLINE, connection.closed()).await.context("the hub did not close")?;
    Ok(reaction::closed(&error))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_peer_gets_one_stream_and_a_small_window_and_the_cap_turns_the_next_away() -> Result<()> {
    // The hub's token look-up hangs: the bootstrap connection stays, its stream unread after the request.
    let apiserver = Silent::start().await?;
    let hub = Hub::start(apiserver.addr, &["--bootstrap-max-connections", "1"]).await?;
    let connection = hub.dial(BOOTSTRAP_ALPN).await?;
    let (mut send, _recv) = connection.open_bi().await?;
    let mut request = BytesMut::new();
    token_request()?.encode(&mut request);
    send.write_all(&request).await?;

    // Then as much as the hub lets us send; it reads nothing more.
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let written = written.clone();
        async move {
            let chunk = vec![0u8; 16 * 1024];
            // Far more than any window the hub should grant; a hub that took it all fails the test below.
            while written.load(Ordering::Relaxed) < 64 * 1024 * 1024 {
                match send.write(&chunk).await {
                    Ok(n) => written.fetch_add(n as u64, Ordering::Relaxed),
                    Err(_) => return,
                };
            }
        }
    });
    let blocked = wait_for("the client to be flow-control blocked", || async {
        let frames = connection.stats().frame_tx;
        let done = writer.is_finished();
        Ok((frames.data_blocked > 0 || frames.stream_data_blocked > 0 || done).then_some(frames))
    })
    .await?;
    let sent = written.load(Ordering::Relaxed);
    // What the hub read (the request, and at most one 16 KiB read past it) plus its window.
    let bound = request.len() as u64 + 16 * 1024 + UNAUTHENTICATED_WINDOW;
    eprintln!(
        "blocked after {sent} bytes past the request (bound {bound}): DATA_BLOCKED {}, STREAM_DATA_BLOCKED {}",
        blocked.data_blocked, blocked.stream_data_blocked
    );
    if sent > bound {
        bail!("an unauthenticated peer got {sent} bytes buffered on the hub, more than {bound}");
    }
    if blocked.data_blocked == 0 {
        bail!("blocked by the stream's window, not the connection's: {blocked:?}");
    }
    // The credit for streams is known from the handshake: a second stream cannot be opened at all.
    if connection.open_bi().now_or_never().is_some() {
        bail!("an unauthenticated peer could open a second stream");
    }

    // The cap of one bootstrap connection is taken: the next one is closed as busy, and its client backs off.
    let second = hub.dial(BOOTSTRAP_ALPN).await?;
    let closed = close_code(&second).await?;
    assert_eq!(closed, Closed::Code { code: Code::Busy, hub_version: None, retry_in: None });
    assert_eq!(reaction::reaction(&closed), Reaction::BackOff(None));

    // Once the first goes, its slot is free again (the hub gives up its look-up when the client goes): a
    // request is answered, here refused for its version, instead of the connection being closed as busy.
    connection.close(0u32.into(), b"done");
    let bad_version = BootstrapRequest { version: BOOTSTRAP_VERSION + 1, ..token_request()? };
    let (third, answer) = wait_for("a bootstrap connection admitted again", || async {
        let third = hub.dial(BOOTSTRAP_ALPN).await?;
        Ok(answer_to(&third, &bad_version).await?.map(|answer| (third, answer)))
    })
    .await?;
    let BootstrapResponse::Refused { reason } = answer else { bail!("a bad version was answered {answer:?}") };
    assert!(reason.contains("version"), "{reason}");
    third.close(0u32.into(), b"done");
    writer.abort();
    hub.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_apiserver_error_is_no_refusal_the_client_tries_again() -> Result<()> {
    let hub = Hub::start(closed_port().await?, &[]).await?;
    let connection = hub.dial(BOOTSTRAP_ALPN).await?;
    let dir = tempfile::tempdir()?;
    let store = tunnel_client::identity::Store::Files(tunnel_client::identity::FileStore::new(
        &dir.path().join("tls.key"),
        &dir.path().join("tls.crt"),
    ));
    let request = token_request()?;
    let mut pending =
        tunnel_client::identity::Pending { key_pem: String::new(), csr_pem: request.csr_pem.clone(), csr_name: None };
    let shutdown = CancellationToken::new();
    let answer = tokio::time::timeout(
        DEADLINE,
        tunnel_client::request::exchange(&connection, &request, &store, &mut pending, &shutdown),
    )
    .await
    .context("no answer from the hub")?;
    let Answer::Lost { closed, reason } = answer else {
        bail!("a hub that cannot reach its apiserver answered {answer:?}: it must close without an answer");
    };
    assert_eq!(closed, Closed::Code { code: Code::Abandoned, hub_version: None, retry_in: None }, "{reason}");
    assert_eq!(reaction::reaction(&closed), Reaction::Retry);
    hub.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_protocol_version_stops() -> Result<()> {
    let hub = Hub::start(closed_port().await?, &[]).await?;
    let error = hub.dial(b"tether/1").await.err().context("the hub accepted ALPN tether/1")?;
    let closed = reaction::closed(&error);
    assert_eq!(closed, Closed::TlsAlert(120), "{error}");
    assert_eq!(reaction::reaction(&closed), Reaction::Stop(Stop::VersionMismatch { hub: None }));
    hub.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_are_budgeted_per_cluster_not_per_tunnel() -> Result<()> {
    // The first renewal's certificate request hangs on the silent apiserver, after it was counted.
    let apiserver = Silent::start().await?;
    let hub = Hub::start(apiserver.addr, &["--renewal-rate", "1"]).await?;
    let (first, _control1, _) = hub.tunnel("spoke-a").await?;
    let (second, _control2, _) = hub.tunnel("spoke-a").await?;
    let (_key, csr_pem) = tether_certs::spoke_key_and_csr("spoke-a")?;
    let renewal =
        BootstrapRequest { version: BOOTSTRAP_VERSION, cluster: "spoke-a".into(), token: None, csr_pem, resume: None };
    let mut out = BytesMut::new();
    renewal.encode(&mut out);

    // A verified tunnel was lifted out of the unauthenticated settings: a second stream opens at once.
    let (mut send1, mut recv1) =
        first.open_bi().now_or_never().context("a tunnel cannot open its renewal stream")??;
    send1.write_all(&out).await?;
    // The same cluster's other tunnel buys no more requests: of the two renewals (in whichever order the hub
    // takes them) one files its request, the other is reset as rate-limited.
    let (mut send2, mut recv2) = second.open_bi().await?;
    send2.write_all(&out).await?;
    let (mut buf1, mut buf2) = ([0u8; 64], [0u8; 64]);
    let error = tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            read = recv1.read(&mut buf1) => read,
            read = recv2.read(&mut buf2) => read,
        }
    })
    .await?
    .err()
    .context("a renewal answered")?;
    let closed = reaction::reset(&error);
    assert_eq!(closed, Closed::Code { code: Code::RateLimited, hub_version: None, retry_in: None }, "{error}");
    assert_eq!(reaction::reaction(&closed), Reaction::BackOff(None));
    first.close(0u32.into(), b"done");
    second.close(0u32.into(), b"done");
    hub.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_of_another_version_is_closed_naming_the_hubs_version() -> Result<()> {
    let hub = Hub::start(closed_port().await?, &[]).await?;
    let connection = hub.mtls("spoke-a").await?;
    let (mut send, _recv) = connection.open_bi().await?;
    let mut hello = BytesMut::new();
    let version = PROTOCOL_VERSION + 1;
    ControlMessage::Hello { version, client_version: "future".into(), instance: "spoke-a".into() }.encode(&mut hello);
    send.write_all(&hello).await?;
    let closed = close_code(&connection).await?;
    let hub_version = Some(PROTOCOL_VERSION);
    assert_eq!(closed, Closed::Code { code: Code::VersionMismatch, hub_version, retry_in: None });
    assert_eq!(reaction::reaction(&closed), Reaction::Stop(Stop::VersionMismatch { hub: hub_version }));
    hub.stop().await
}
