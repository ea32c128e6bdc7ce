//! The ops endpoint: `/metrics`, `/healthz`, `/readyz`, over TLS like every other listener.
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the component can do its job (the client: tunnel up; the server: listeners bound).
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves until `shutdown` on a listener the caller bound (port 0 is fine).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    metrics: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    crate::listener::serve_tls("ops", listener, tls, shutdown, move |tls, _peer| {
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let response = answer(&req, &metrics, &readiness);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        }
    })
    .await
}

fn answer(req: &Request<Incoming>, metrics: &PrometheusHandle, readiness: &Readiness) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, metrics.render()),
        "/healthz" | "/livez" => (StatusCode::OK, "ok".to_string()),
        "/readyz" if readiness.is_ready() => (StatusCode::OK, "ok".to_string()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready".to_string()),
        _ => (StatusCode::NOT_FOUND, "not found".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
