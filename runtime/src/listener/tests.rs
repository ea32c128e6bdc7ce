//! The listener on loopback with real TLS and hyper on both ends; the proxy's own tests
//! (tunnel-server/tests/edge.rs) cover the rest through `Proxy::serve`.
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

/// A response body fed by the test, one chunk at a time.
struct Chunks(mpsc::Receiver<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

type TestBody = UnsyncBoxBody<Bytes, Infallible>;

struct Server {
    addr: std::net::SocketAddr,
    connector: TlsConnector,
    h2: TlsConnector,
    _shutdown: tokio_util::sync::DropGuard,
}

/// `/stream` answers with a body the test feeds through the returned sender, `/upgrade` switches to an echo,
/// anything else answers "ok".
async fn start(limits: Limits) -> (Server, mpsc::Sender<Bytes>) {
    crate::tls::install_crypto_provider();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = |alpn: &[u8]| {
        let mut config = rustls::ClientConfig::builder().with_root_certificates(roots.clone()).with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    };

    let (feed, chunks) = mpsc::channel(4);
    let chunks = Arc::new(Mutex::new(Some(chunks)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let https = Https { name: "test", limits, metrics: None, refusal: busy };
    tokio::spawn(serve_https(https, listener, Arc::new(tls), shutdown.clone(), move |_, _| {
        let chunks = chunks.clone();
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let response = match request.uri().path() {
                "/stream" => match chunks.lock().unwrap().take() {
                    Some(chunks) => Response::new(Chunks(chunks).boxed_unsync()),
                    None => Response::new(Full::new(Bytes::from_static(b"taken")).boxed_unsync()),
                },
                "/upgrade" => {
                    let upgrade = hyper::upgrade::on(&mut request);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(upgrade.await.unwrap());
                        let mut buf = [0u8; 64];
                        while let Ok(n @ 1..) = io.read(&mut buf).await {
                            io.write_all(&buf[..n]).await.unwrap();
                        }
                    });
                    let mut response = Response::new(Empty::new().boxed_unsync());
                    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                    response.headers_mut().insert("connection", "upgrade".parse().unwrap());
                    response.headers_mut().insert("upgrade", "echo".parse().unwrap());
                    response
                }
                _ => Response::new(Full::new(Bytes::from_static(b"ok")).boxed_unsync()),
            };
            let response: Response<TestBody> = response;
            std::future::ready(Ok::<_, Infallible>(response))
        })
    }));
    let server = Server { addr, connector: client(b"http/1.1"), h2: client(b"h2"), _shutdown: shutdown.drop_guard() };
    (server, feed)
}

impl Server {
    async fn connect(&self, connector: &TlsConnector) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
    }
}

fn busy() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"busy")));
    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    response
}

fn limits(idle: Duration) -> Limits {
    Limits { idle_timeout: idle, header_timeout: Duration::from_secs(30), ..Limits::ops() }
}

#[tokio::test]
async fn a_quiet_streaming_response_is_no_idle_connection() {
    let idle = Duration::from_millis(200);
    let header_timeout = Duration::from_millis(300);
    let (server, feed) = start(Limits { header_timeout, ..limits(idle) }).await;
    let h2 = |tls| hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls));
    let get = |path: &str| Request::get(format!("https://localhost{path}")).body(Empty::<Bytes>::new()).unwrap();

    // A watch-like response on HTTP/2: its head, then nothing for longer than the idle timeout.
    let (mut watching, connection) = h2(server.connect(&server.h2).await).await.unwrap();
    tokio::spawn(connection);
    let mut stream = watching.send_request(get("/stream")).await.unwrap().into_body();
    let streaming_since = Instant::now();

    // An HTTP/2 connection after its one request: idle, so it gets GOAWAY and ends.
    let (mut sender, connection) = h2(server.connect(&server.h2).await).await.unwrap();
    let connection = tokio::spawn(connection);
    let body = sender.send_request(get("/")).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");
    let answered = Instant::now();
    tokio::time::timeout(DEADLINE, connection).await.expect("an idle HTTP/2 connection is closed").unwrap().unwrap();
    assert!(answered.elapsed() >= idle.mul_f32(0.8), "closed after {:?}", answered.elapsed());

    // A clock: a connection that never sends a request is closed after the header timeout. Then the
    // watching connection has been quiet for longer than the idle timeout and a graceful close would have
    // had time to finish.
    let mut silent = server.connect(&server.connector).await;
    let mut buf = [0u8; 16];
    let _ = tokio::time::timeout(DEADLINE, silent.read(&mut buf)).await.expect("a silent connection is closed");
    assert!(streaming_since.elapsed() > idle + header_timeout);

    // Not idle, so no GOAWAY: the connection takes new requests, and the stream goes on.
    let body = watching.send_request(get("/")).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");
    feed.send(Bytes::from_static(b"event")).await.unwrap();
    let frame = tokio::time::timeout(DEADLINE, stream.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "event");
}

#[tokio::test]
async fn an_upgraded_connection_keeps_its_place_under_the_limit() {
    let (server, _feed) = start(Limits { max_connections: 1, ..limits(Duration::from_secs(30)) }).await;
    let mut upgraded = server.connect(&server.connector).await;
    upgraded
        .write_all(b"GET /upgrade HTTP/1.1\r\nhost: localhost\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut upgraded).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    upgraded.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    upgraded.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");

    // hyper is done with that connection, but its socket lives on: no place for another.
    let get = b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n";
    let mut refused = server.connect(&server.connector).await;
    refused.write_all(get).await.unwrap();
    let head = read_head(&mut refused).await;
    assert!(head.starts_with("http/1.1 503") && head.contains("retry-after: 1"), "{head}");

    drop(upgraded);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut next = server.connect(&server.connector).await;
        next.write_all(get).await.unwrap();
        let head = read_head(&mut next).await;
        if head.starts_with("http/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the upgraded connection's place was never freed: {head}");
        tokio::task::yield_now().await;
    }
}

async fn read_head<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(DEADLINE, io.read(&mut byte)).await.expect("a response head in time");
        if read.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

#[test]
fn accept_errors_of_one_connection_do_not_pause_the_rest_do() {
    use std::io::{Error, ErrorKind};
    let mut backoff = AcceptBackoff::default();
    assert_eq!(backoff.after(&Error::from(ErrorKind::ConnectionAborted)), None);
    let emfile = Error::from_raw_os_error(24);
    let pauses: Vec<_> = (0..10).map(|_| backoff.after(&emfile).unwrap()).collect();
    assert_eq!(pauses[0], Duration::from_millis(5));
    assert_eq!(pauses[1], Duration::from_millis(10));
    assert_eq!(*pauses.last().unwrap(), Duration::from_secs(1));
    backoff.reset();
    assert_eq!(backoff.after(&emfile), Some(Duration::from_millis(5)));
}
