//! Serving streams between a real QUIC connection, whose far end the test plays as the hub, and a real hyper
//! server on loopback as the apiserver, which records when a request it is still answering is dropped.
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, Method, StatusCode};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

/// What the apiserver saw: a request arriving, or one it had not finished answering being dropped.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Arrived(String),
    Dropped(String),
}

/// Tells the test when it is dropped.
struct Dropped(String, mpsc::UnboundedSender<Seen>);

/// A body that never yields a frame while it holds a guard (a watch without events), and is empty without.
struct Reply(Option<Dropped>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.1.send(Seen::Dropped(std::mem::take(&mut self.0)));
    }
}

impl hyper::body::Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0 {
            Some(_) => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

/// An apiserver that never answers `/hang` (once it has its body) and answers `/watch` with a head and a body
/// that never ends.
async fn apiserver() -> (Upstream, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let path = request.uri().path().to_string();
                    let _ = seen.send(Seen::Arrived(path.clone()));
                    let guard = Dropped(path.clone(), seen);
                    // As a Go apiserver does, a request with a body is answered after the body: one broken off
                    // ends the handler.
                    if http_body_util::BodyExt::collect(request.into_body()).await.is_err() {
                        drop(guard);
                        return Ok::<_, Infallible>(http::Response::new(Reply(None)));
                    }
                    if path == "/hang" {
                        std::future::pending::<()>().await;
                    }
                    Ok(http::Response::new(Reply(Some(guard))))
                }
            });
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .into_owned(),
            );
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let policy = crate::policy::watch::PolicyHandle::fixed(crate::policy::Policy::default());
    (Upstream::from_config(config, 10, policy).unwrap(), events)
}

/// The hub's and the spoke's ends of one QUIC connection; the spoke serves every stream the hub opens.
async fn tunnel(upstream: Upstream) -> (quinn::Connection, tether_runtime::testing::LoopbackPair) {
    let pair = tether_runtime::testing::loopback_pair(b"").await;
    let (spoke, hub) = (pair.dialer.clone(), pair.acceptor.clone());
    tokio::spawn(async move {
        let (tracker, streams) = (TaskTracker::new(), CancellationToken::new());
        while let Ok((send, recv)) = spoke.accept_bi().await {
            spawn_stream(&tracker, &streams, send, recv, &upstream);
        }
    });
    (hub, pair)
}

/// Opens a stream with a request head for `path`; the FIN follows at once unless the request has a body.
async fn request(
    hub: &quinn::Connection,
    method: Method,
    path: &str,
    body: bool,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = hub.open_bi().await.unwrap();
    let mut out = BytesMut::new();
    StreamHeader { target: Target::ApiServer, request_id: 1 }.encode(&mut out);
    // As the hub sends it: the caller's identity, which the spoke's policy maps.
    let mut headers = HeaderMap::new();
    headers.insert("impersonate-user", http::HeaderValue::from_static("alice"));
    let head = RequestHead { method, path_and_query: path.parse().unwrap(), headers, body };
    head.encode(&mut out);
    send.write_all(&out).await.unwrap();
    if !body {
        send.finish().unwrap();
    }
    (send, recv)
}

async fn next(events: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("within 10 s").unwrap()
}

#[tokio::test]
async fn a_request_the_hub_stops_is_dropped_before_the_apiserver_answers() {
    let (upstream, mut events) = apiserver().await;
    let (hub, _pair) = tunnel(upstream).await;
    let (_send, mut recv) = request(&hub, Method::GET, "/hang", false).await;
    assert_eq!(next(&mut events).await, Seen::Arrived("/hang".into()));
    recv.stop(tether_runtime::transport::code(tether_proto::codes::Code::StreamAbandoned)).unwrap();
    assert_eq!(next(&mut events).await, Seen::Dropped("/hang".into()));
}

#[tokio::test]
async fn a_request_whose_body_the_hub_abandons_is_dropped() {
    let (upstream, mut events) = apiserver().await;
    let (hub, _pair) = tunnel(upstream).await;
    // Stopped only, as a hub does whose caller's body is still to come: the apiserver would wait for it.
    // Reset as well, as this hub does: the broken body alone ends the apiserver request.
    for reset in [false, true] {
        let (mut send, mut recv) = request(&hub, Method::POST, "/hang", true).await;
        send.write_all(b"part of a body").await.unwrap();
        assert_eq!(next(&mut events).await, Seen::Arrived("/hang".into()));
        if reset {
            send.reset(tether_runtime::transport::code(tether_proto::codes::Code::StreamAbandoned)).unwrap();
        }
        recv.stop(tether_runtime::transport::code(tether_proto::codes::Code::StreamAbandoned)).unwrap();
        assert_eq!(next(&mut events).await, Seen::Dropped("/hang".into()), "reset: {reset}");
    }
}

#[tokio::test]
async fn a_quiet_watch_the_hub_stops_is_dropped_before_its_next_event() {
    let (upstream, mut events) = apiserver().await;
    let (hub, _pair) = tunnel(upstream).await;
    let (_send, mut recv) = request(&hub, Method::GET, "/watch", false).await;
    assert_eq!(next(&mut events).await, Seen::Arrived("/watch".into()));
    let (response, _) =
        tokio::time::timeout(Duration::from_secs(10), read_head(&mut recv, Bytes::new(), ResponseHead::decode))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    // The caller closed its watch: the hub stops reading it.
    drop(recv);
    assert_eq!(next(&mut events).await, Seen::Dropped("/watch".into()));
}
