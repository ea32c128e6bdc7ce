//! HTTP/2 connections to the apiserver, opened as the requests in flight need them.
//!
//! hyper's pool keeps one HTTP/2 connection per host and queues every request beyond the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS until a stream ends. A Go apiserver allows 250, and watches never end, so
//! the 251st watch through a tunnel would stall, and every request after it, list or exec alike. Here each
//! [`Client`] has a pool of its own and so a connection of its own; requests in flight are counted per client,
//! and when every client is at the limit another one is started. hyper does not expose the peer's limit,
//! so the limit is configured, below that of any apiserver.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::{Client, Error};
use tether_stream::http::Holding;

pub struct Pool<C, B> {
    per_connection: usize,
    make: Box<dyn Fn() -> Client<C, B> + Send + Sync>,
    connections: Mutex<Vec<Connection<C, B>>>,
}

struct Connection<C, B> {
    client: Client<C, B>,
    in_flight: Arc<AtomicUsize>,
}

impl<C, B> Pool<C, B>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// `make` builds a client with an empty pool of its own; each carries up to `per_connection` requests.
    pub fn new(per_connection: usize, make: impl Fn() -> Client<C, B> + Send + Sync + 'static) -> Self {
        Self { per_connection: per_connection.max(1), make: Box::new(make), connections: Mutex::new(Vec::new()) }
    }

    /// Sends `request` on the first connection with room, so that traffic gathers on few connections and the
    /// rest idle out. The response body holds the stream's place until it is dropped.
    pub async fn request(&self, request: Request<B>) -> Result<Response<Holding<Incoming, Lease>>, Error> {
        let (client, lease) = self.checkout();
        let response = client.request(request).await?;
        Ok(response.map(|body| Holding::new(body, lease)))
    }

    /// Connections started so far (each closes on its own when idle, and is reopened on demand).
    #[cfg(test)]
    fn connections(&self) -> usize {
        self.connections.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn checkout(&self) -> (Client<C, B>, Lease) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let index = match connections.iter().position(|c| c.in_flight.load(Ordering::Acquire) < self.per_connection) {
            Some(index) => index,
            None => {
                connections.push(Connection { client: (self.make)(), in_flight: Arc::default() });
                tracing::debug!(connections = connections.len(), "another connection to the apiserver");
                metrics::gauge!(crate::metrics::APISERVER_CONNECTIONS).set(connections.len() as f64);
                connections.len() - 1
            }
        };
        let connection = &connections[index];
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        (connection.client.clone(), Lease(connection.in_flight.clone()))
    }
}

/// One request's place on a connection.
pub struct Lease(Arc<AtomicUsize>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::body::Frame;

    use super::*;

    /// An h2c server allowing `streams` per connection whose responses never end, like watches. Returns its
    /// address and a counter of accepted connections.
    async fn endless_server(streams: u32) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_| async { Ok::<_, Infallible>(Response::new(Endless)) });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(streams)
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        (address, accepted)
    }

    /// A response body that never ends and never sends.
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    fn pool(per_connection: usize) -> Pool<HttpConnector, Empty<Bytes>> {
        Pool::new(per_connection, || Client::builder(TokioExecutor::new()).http2_only(true).build_http())
    }

    async fn open(
        pool: &Pool<HttpConnector, Empty<Bytes>>,
        address: std::net::SocketAddr,
    ) -> Response<Holding<Incoming, Lease>> {
        let request = Request::get(format!("http://{address}/watch")).body(Empty::new()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), pool.request(request))
            .await
            .expect("response headers within 10 s: the request was queued behind the stream limit")
            .unwrap()
    }

    #[tokio::test]
    async fn endless_responses_beyond_one_connections_limit_open_another_connection() {
        let (address, accepted) = endless_server(2).await;
        let pool = pool(2);
        let mut watches = Vec::new();
        for _ in 0..5 {
            watches.push(open(&pool, address).await);
        }
        assert_eq!((pool.connections(), accepted.load(Ordering::SeqCst)), (3, 3));

        // Ending two watches on the first connection makes room there again: no fourth connection.
        watches.drain(..2);
        for _ in 0..2 {
            watches.push(open(&pool, address).await);
        }
        assert_eq!((pool.connections(), accepted.load(Ordering::SeqCst)), (3, 3));
    }
}
