//! One accepted connection: its TLS handshake under a deadline, then hyper, closed gracefully once no
//! request has been in flight for the idle timeout (the header timeout before the first request).
use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::gauge;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Https, Limits};

/// What the accept loop shares with every connection task.
pub(super) struct Edge<M> {
    pub https: Https,
    acceptor: TlsAcceptor,
    service: M,
    builder: auto::Builder<TokioExecutor>,
}

impl<M> Edge<M> {
    pub fn new(https: Https, acceptor: TlsAcceptor, service: M) -> Self {
        let builder = builder(&https.limits);
        Self { https, acceptor, service, builder }
    }

    /// Serves one admitted connection to its end; `slot` is its place under the connection limit, held by
    /// the socket (and so by an upgraded connection too).
    pub async fn serve<S, B>(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, slot: Slot, shutdown: CancellationToken)
    where
        M: Fn(&TlsStream<TcpStream>, SocketAddr) -> S,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let Some(tls) = self.handshake(tcp, peer).await else { return };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let service = (self.service)(&tls, peer);
        let close = self.drive(Held { io: tls, _slot: slot }, service, self.https.limits.idle_timeout, &shutdown).await;
        let close = match close {
            // hyper's only timers: the HTTP/1 header timeout and the HTTP/2 keep-alive.
            Close::Timeout if h2 => Close::KeepaliveTimeout,
            Close::Timeout => Close::HeaderTimeout,
            close => close,
        };
        if let Some(reason) = close.label() {
            tracing::debug!(listener = self.https.name, %peer, reason, "connection closed");
            self.https.count(|m| m.closed, ("reason", reason));
        }
    }

    /// Answers the first request of a connection over the limit with the refusal, then closes it.
    pub async fn refuse(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit)
    where
        M: Send + Sync + 'static,
    {
        let Some(tls) = self.handshake(tcp, peer).await else { return };
        let edge = self.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut response = edge.https.refusal();
            if request.version() < Version::HTTP_2 {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let held = Held { io: tls, _slot: Slot::new(permit, None) };
        // Idle at once after its answer; never waits for the listener's shutdown.
        self.drive(held, service, Duration::ZERO, &CancellationToken::new()).await;
    }

    async fn handshake(&self, tcp: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
        let reason = match tokio::time::timeout(self.https.limits.handshake_timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(error)) => {
                tracing::debug!(listener = self.https.name, %peer, %error, "TLS handshake failed");
                "tls"
            }
            Err(_) => {
                tracing::debug!(listener = self.https.name, %peer, "TLS handshake timed out");
                "timeout"
            }
        };
        self.https.count(|m| m.handshake_failures, ("reason", reason));
        None
    }

    /// Runs hyper on `io` until the connection ends, or until it was idle (`idle` after a request, the
    /// header timeout before the first) or `shutdown`; then shuts it down gracefully: HTTP/1.1 closes after
    /// the response in flight, HTTP/2 sends GOAWAY. Requests in flight finish; once none has been for the
    /// header timeout, the connection is dropped.
    async fn drive<S, B>(&self, io: Held, service: S, idle: Duration, shutdown: &CancellationToken) -> Close
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let activity = Activity::default();
        let service = Tracked { inner: service, activity: activity.clone() };
        let header_timeout = self.https.limits.header_timeout;
        let connection = self.builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        let close = tokio::select! {
            result = connection.as_mut() => return Close::of(result),
            close = activity.until_idle(header_timeout, idle) => close,
            _ = shutdown.cancelled() => Close::Shutdown,
        };
        connection.as_mut().graceful_shutdown();
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = activity.until_idle(header_timeout, header_timeout) => {}
        }
        close
    }
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper silently drops its header timeout (hyper 1.12: `Time::check` ignores a default
    // duration when no timer is set).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper answers 431 itself when a head outgrows the read buffer; 8 KiB is its minimum.
        .max_buf_size(limits.max_header_bytes.max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        // The h2 crate answers 431 on the stream (the connection goes on).
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    builder
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// The peer closed it, or it was upgraded (its socket lives on elsewhere).
    Done,
    /// An I/O or protocol error of the peer's.
    Error,
    /// A timer of hyper's fired (told apart by protocol by the caller).
    Timeout,
    HeaderTimeout,
    KeepaliveTimeout,
    HeadersTooLarge,
    Idle,
    Shutdown,
}

impl Close {
    fn of(result: Result<(), Box<dyn StdError + Send + Sync>>) -> Self {
        let Err(error) = result else { return Self::Done };
        match error.downcast_ref::<hyper::Error>() {
            Some(e) if e.is_timeout() => Self::Timeout,
            Some(e) if e.is_parse_too_large() => Self::HeadersTooLarge,
            _ => Self::Error,
        }
    }

    /// The `reason` label of a close the listener caused; none for the peer's own.
    fn label(self) -> Option<&'static str> {
        match self {
            Self::Done | Self::Error => None,
            Self::Timeout | Self::HeaderTimeout => Some("header_timeout"),
            Self::KeepaliveTimeout => Some("keepalive_timeout"),
            Self::HeadersTooLarge => Some("headers_too_large"),
            Self::Idle => Some("idle"),
            Self::Shutdown => Some("shutdown"),
        }
    }
}

/// A place under the connection limit, counted in the connections gauge while held.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: Option<&'static str>,
}

impl Slot {
    pub fn new(permit: OwnedSemaphorePermit, gauge: Option<&'static str>) -> Self {
        if let Some(name) = gauge {
            gauge!(name).increment(1.0);
        }
        Self { _permit: permit, gauge }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(name) = self.gauge {
            gauge!(name).decrement(1.0);
        }
    }
}

/// The TLS stream with its [`Slot`]: the place is freed when the socket is, wherever hyper moved it.
struct Held {
    io: TlsStream<TcpStream>,
    _slot: Slot,
}

impl AsyncRead for Held {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    in_flight: usize,
    started: u64,
}

/// The requests of one connection: in flight from the service call until its response body ends (or is
/// dropped), so a long watch keeps its connection busy however quiet it is.
#[derive(Clone)]
struct Activity(Arc<watch::Sender<Counts>>);

impl Default for Activity {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(Counts::default())))
    }
}

impl Activity {
    fn begin(&self) -> InFlight {
        self.0.send_modify(|c| {
            c.in_flight += 1;
            c.started += 1;
        });
        InFlight(self.0.clone())
    }

    /// Resolves once nothing has been in flight for `first` (no request yet: [`Close::HeaderTimeout`]) or
    /// `then` (after one: [`Close::Idle`]); any request restarts the wait.
    async fn until_idle(&self, first: Duration, then: Duration) -> Close {
        let mut counts = self.0.subscribe();
        loop {
            let now = *counts.borrow_and_update();
            if now.in_flight == 0 {
                let (wait, close) = if now.started == 0 { (first, Close::HeaderTimeout) } else { (then, Close::Idle) };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => return close,
                    _ = counts.changed() => {}
                }
            } else if counts.changed().await.is_err() {
                // Unreachable while `self` holds the sender; never spin if it were.
                std::future::pending::<()>().await;
            }
        }
    }
}

struct InFlight(Arc<watch::Sender<Counts>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|c| c.in_flight -= 1);
    }
}

/// The caller's service, its requests counted in [`Activity`].
struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.begin();
        TrackedFuture { inner: self.inner.call(request), in_flight: Some(in_flight) }
    }
}

pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        // Taken once: a future is not polled again after it returned Ready.
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, _in_flight: in_flight })))
    }
}

pin_project! {
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
