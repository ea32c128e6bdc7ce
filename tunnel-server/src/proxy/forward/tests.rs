//! `forward` between a real hyper server on loopback (the caller's side) and a real QUIC connection, whose far
//! end the test plays as the spoke.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tether_proto::{RequestHead, StreamHeader};
use tether_stream::http::read_head;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A hub proxy for cluster `a` whose tunnel's far end is `spoke`.
struct Hub {
    addr: SocketAddr,
    spoke: quinn::Connection,
    _pair: tether_runtime::testing::LoopbackPair,
}

async fn hub(response_timeout: Duration) -> Hub {
    let pair = tether_runtime::testing::loopback_pair(b"").await;
    let (spoke, hub) = (pair.dialer.clone(), pair.acceptor.clone());

    let tunnel = Arc::new(Tunnel {
        id: 1,
        cluster: "a".into(),
        instance: String::new(),
        connection: hub,
        issued: SystemTime::now(),
        client_version: String::new(),
        described: Mutex::new(None),
        streams_open: metrics::Gauge::noop(),
    });
    let settings = ForwardSettings { open_timeout: Duration::from_secs(5), response_timeout };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tunnel, settings) = (tunnel.clone(), settings.clone());
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (tunnel, settings) = (tunnel.clone(), settings.clone());
                async move {
                    let user = UserInfo { username: "u".into(), uid: String::new(), groups: vec![], extra: [].into() };
                    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
                    let response = match forward(tunnel, request, &path, &user, 7, &settings).await {
                        Ok(response) => response,
                        Err(e) => e.into_response(),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .into_owned(),
            );
        }
    });
    Hub { addr, spoke, _pair: pair }
}

impl Hub {
    /// A caller's connection with `request` written on it.
    async fn send(&self, request: &str) -> TcpStream {
        let mut tcp = TcpStream::connect(self.addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        tcp
    }

    /// The next stream the hub opened, with the request head it carries.
    async fn accept(&self) -> (quinn::SendStream, quinn::RecvStream, RequestHead) {
        let (send, mut recv) = within(self.spoke.accept_bi()).await.unwrap();
        let (_, rest) = within(read_head(&mut recv, Bytes::new(), StreamHeader::decode)).await.unwrap().unwrap();
        let (head, _) = within(read_head(&mut recv, rest, RequestHead::decode)).await.unwrap().unwrap();
        (send, recv, head)
    }
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future).await.expect("within 10 s")
}

/// The status and head of the response on `tcp`, read byte by byte so that nothing after it is taken.
async fn response_head(tcp: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(within(tcp.read(&mut byte)).await.unwrap(), 1, "closed after {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), head)
}

async fn status(tcp: &mut TcpStream) -> u16 {
    response_head(tcp).await.0
}

/// What the spoke sees of a stream the hub gave up on: its send side stopped, and its receive side reset or,
/// for a request without a body, finished with the head.
async fn assert_abandoned(send: quinn::SendStream, mut recv: quinn::RecvStream) {
    assert_eq!(within(send.stopped()).await, Ok(Some(tether_runtime::transport::code(RESET_ABANDONED))));
    let mut buf = [0u8; 1024];
    loop {
        match within(recv.read(&mut buf)).await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => return assert_eq!(e, quinn::ReadError::Reset(tether_runtime::transport::code(RESET_ABANDONED))),
        }
    }
}

/// The stream is reset (whatever the code) before it ends.
async fn assert_reset(recv: &mut quinn::RecvStream) {
    let mut buf = [0u8; 1024];
    loop {
        match within(recv.read(&mut buf)).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("finished, not reset"),
            Err(e) => return assert!(matches!(e, quinn::ReadError::Reset(_)), "{e}"),
        }
    }
}

#[tokio::test]
async fn a_body_the_spoke_waits_for_is_reset_when_the_hub_gives_up() {
    let hub = hub(Duration::from_millis(200)).await;
    // The caller declares 100 bytes and sends 10: the spoke's apiserver would wait for the rest.
    let mut caller = hub.send("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let (send, recv, head) = hub.accept().await;
    assert!(head.body);
    assert_eq!(status(&mut caller).await, 504);
    // The caller still holds its connection, with its body unfinished: the hub must end the stream itself.
    assert_abandoned(send, recv).await;
}

#[tokio::test]
async fn a_request_without_a_body_is_stopped_when_the_hub_gives_up() {
    let hub = hub(Duration::from_millis(200)).await;
    let mut caller = hub.send("GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let (send, recv, _) = hub.accept().await;
    assert_eq!(status(&mut caller).await, 504);
    assert_abandoned(send, recv).await;
}

#[tokio::test]
async fn a_caller_that_goes_away_abandons_its_stream() {
    let hub = hub(Duration::from_secs(60)).await;
    for request in [
        "GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n",
    ] {
        let caller = hub.send(request).await;
        let (send, recv, _) = hub.accept().await;
        drop(caller);
        assert_abandoned(send, recv).await;
    }
    // Gone half-way through its body: the body breaks off, which resets the stream at once (hyper keeps the
    // request itself until an answer, which the spoke gives when its apiserver request fails on the body).
    let caller = hub.send("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let (_send, mut recv, _) = hub.accept().await;
    drop(caller);
    assert_reset(&mut recv).await;
}

#[tokio::test]
async fn an_upgrade_with_a_body_is_refused_before_a_stream_opens() {
    let hub = hub(Duration::from_secs(60)).await;
    for declared in ["Content-Length: 100", "Transfer-Encoding: chunked", "Content-Length: 1\r\nExpect: 100-continue"] {
        let request = format!("GET /x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: x\r\n{declared}\r\n\r\n");
        let mut caller = hub.send(&request).await;
        assert_eq!(status(&mut caller).await, 400, "{declared}");
    }
    // An empty body is no body: the upgrade goes on, without the header or an Expect for it.
    let _caller = hub
        .send("GET /ok HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: x\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n")
        .await;
    // The first stream the spoke sees is this one: none of the refused requests reached it.
    let (_, _, head) = hub.accept().await;
    assert_eq!(head.path_and_query, "/ok");
    assert!(!head.body);
    assert_eq!(head.headers.get(header::UPGRADE).map(|v| v.as_bytes()), Some(&b"x"[..]));
    assert!(!head.headers.contains_key(header::CONTENT_LENGTH) && !head.headers.contains_key(header::EXPECT));
}

#[tokio::test]
async fn a_redirect_is_rewritten_into_the_cluster_or_refused() {
    let hub = hub(Duration::from_secs(60)).await;
    let answer = |location: &str| {
        let mut out = bytes::BytesMut::new();
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, HeaderValue::from_str(location).unwrap());
        ResponseHead { status: StatusCode::TEMPORARY_REDIRECT, headers }.encode(&mut out);
        out.freeze()
    };
    let upgrade = "GET /exec HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n";
    for (request, location, want) in [
        ("GET /api/v1/x HTTP/1.1\r\nHost: h\r\n\r\n", "../../clusters/b/api", "307 /clusters/a/clusters/b/api"),
        ("GET /api/v1/x HTTP/1.1\r\nHost: h\r\n\r\n", "https://evil.example/api", "502 -"),
        (upgrade, "/exec", "502 -"),
    ] {
        let mut caller = hub.send(request).await;
        let (mut send, recv, _) = hub.accept().await;
        // The head only: the spoke is still sending its body when the hub decides.
        send.write_all(&answer(location)).await.unwrap();
        let (code, head) = response_head(&mut caller).await;
        let location = head.lines().find_map(|l| l.strip_prefix("location: ")).unwrap_or("-");
        assert_eq!(format!("{code} {location}"), want, "{location}");
        if code == 502 {
            // The spoke's answer was refused: the stream is abandoned, not read on.
            assert_abandoned(send, recv).await;
        }
    }
}
