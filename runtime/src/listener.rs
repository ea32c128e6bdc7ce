//! The HTTPS listeners (the hub's proxy, every ops endpoint) and what keeps one peer from exhausting them:
//! a connection limit with a clear refusal, a TLS handshake timeout, hyper with a header timeout, an idle
//! timeout, HTTP/2 keep-alive pings and bounded request heads, and backoff when accept itself fails (out of
//! file descriptors). What a request gets is the caller's service.
mod connection;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use metrics::counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use connection::Slot;

use crate::throttle::Throttle;

/// What one listener allows each peer.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From TCP accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// From the handshake to the first complete request head. hyper's HTTP/1 timer also runs while a
    /// kept-alive connection waits for its next request (hyper 1.12, `Conn::poll_read_head` starts it on
    /// every head it waits for), so an idle HTTP/1.1 connection lasts at most this long too.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long (after its first) is closed gracefully: HTTP/2
    /// gets a GOAWAY. A watch that streams nothing for an hour has a request in flight: it is not idle.
    pub idle_timeout: Duration,
    /// Connections at a time, handshakes included; an upgraded connection (exec) holds its place until it
    /// ends.
    pub max_connections: usize,
    /// Beyond `max_connections`, this many connections at a time are answered with the refusal (503 and
    /// Retry-After, within `handshake_timeout` + `header_timeout`); the rest are closed at once.
    pub max_refusing: usize,
    /// The largest request head (request line and headers); larger ones get 431. For HTTP/1.1 this is
    /// hyper's read buffer (at least 8 KiB), which also bounds what a half-sent head holds.
    pub max_header_bytes: usize,
    /// HTTP/2 PING interval (none: no pings); a peer that does not answer within `http2_keepalive_timeout`
    /// is closed, so dead peers do not hold connections until TCP gives up.
    pub http2_keepalive_interval: Option<Duration>,
    pub http2_keepalive_timeout: Duration,
}

impl Limits {
    /// An ops endpoint: a scraper and a few probes.
    pub fn ops() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
            max_refusing: 4,
            max_header_bytes: 16 * 1024,
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// The metrics a listener emits, named by the crate that owns it.
#[derive(Debug, Clone, Copy)]
pub struct MetricNames {
    /// Gauge: connections admitted and open (handshaking, serving or upgraded).
    pub connections: &'static str,
    /// Counter by `answer` (`status`: the refusal was sent; `close`: closed at once).
    pub refused: &'static str,
    /// Counter by `reason` (`timeout`, `tls`).
    pub handshake_failures: &'static str,
    /// Counter by `reason` (`idle`, `header_timeout`, `keepalive_timeout`, `headers_too_large`,
    /// `shutdown`): connections the listener closed.
    pub closed: &'static str,
    /// Counter: failed accepts (EMFILE and the like).
    pub accept_errors: &'static str,
}

/// One HTTPS listener: its name in logs, its limits, its metrics, and its answer to a peer over the limit.
pub struct Https {
    pub name: &'static str,
    pub limits: Limits,
    pub metrics: Option<MetricNames>,
    /// The answer to a connection over `max_connections` (its first request); `Retry-After: 1` is added
    /// unless present, and the connection is closed after it.
    pub refusal: fn() -> Response<Full<Bytes>>,
}

impl Https {
    fn count(&self, name: impl Fn(&MetricNames) -> &'static str, label: (&'static str, &'static str)) {
        if let Some(names) = &self.metrics {
            counter!(name(names), label.0 => label.1).increment(1);
        }
    }

    fn refusal(&self) -> Response<Full<Bytes>> {
        let mut response = (self.refusal)();
        response.headers_mut().entry(header::RETRY_AFTER).or_insert(HeaderValue::from_static("1"));
        response
    }
}

/// Accepts until `shutdown`; each connection runs in its own task and is closed gracefully at `shutdown`
/// (requests in flight finish). `service` makes the service of one connection from its TLS session (client
/// certificate) and peer address.
pub async fn serve_https<M, S, B>(
    https: Https,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
    service: M,
) where
    M: Fn(&TlsStream<TcpStream>, SocketAddr) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let edge = Arc::new(connection::Edge::new(https, TlsAcceptor::from(tls), service));
    let admitted = Arc::new(Semaphore::new(edge.https.limits.max_connections));
    let refusing = Arc::new(Semaphore::new(edge.https.limits.max_refusing));
    let accept_log = Throttle::new(Duration::from_secs(10));
    let refusal_log = Throttle::new(Duration::from_secs(10));
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            Err(error) => {
                if let Some(names) = &edge.https.metrics {
                    counter!(names.accept_errors).increment(1);
                }
                if let Some(suppressed) = accept_log.admit(Instant::now()) {
                    tracing::warn!(listener = edge.https.name, %error, suppressed, "accept failed");
                }
                // Out of descriptors the listener stays readable: retrying at once would spin and flood the
                // log until one frees.
                if let Some(pause) = backoff.after(&error) {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match admitted.clone().try_acquire_owned() {
            Ok(permit) => {
                let slot = Slot::new(permit, edge.https.metrics.map(|m| m.connections));
                tokio::spawn(edge.clone().serve(tcp, peer, slot, shutdown.clone()));
            }
            Err(_) => {
                let answer = match refusing.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(edge.clone().refuse(tcp, peer, permit));
                        "status"
                    }
                    // Past the refusal budget an answer would cost a handshake per connection: close at once.
                    Err(_) => "close",
                };
                edge.https.count(|m| m.refused, ("answer", answer));
                if let Some(suppressed) = refusal_log.admit(Instant::now()) {
                    tracing::warn!(
                        listener = edge.https.name,
                        %peer,
                        answer,
                        suppressed,
                        max_connections = edge.https.limits.max_connections,
                        "connection refused: at the connection limit"
                    );
                }
            }
        }
    }
}

/// The pause after a failed accept: none for errors of one connection (the peer reset it before accept),
/// doubling from 5 ms to 1 s for the rest (out of descriptors or memory), reset by the next success.
#[derive(Debug)]
struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const CAP: Duration = Duration::from_secs(1);

    fn after(&mut self, error: &std::io::Error) -> Option<Duration> {
        use std::io::ErrorKind::*;
        if matches!(error.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock) {
            return None;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        Some(pause)
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}
