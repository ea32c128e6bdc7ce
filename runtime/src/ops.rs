//! The ops endpoint: `/metrics`, `/healthz`, `/readyz`, over TLS like every other listener.
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::{self, Https, Limits};

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

/// Serves until `shutdown` on a listener the caller bound (port 0 is fine), with [`Limits::ops`].
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    metrics: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let https = Https { name: "ops", limits: Limits::ops(), metrics: None, refusal: too_many_connections };
    listener::serve_https(https, listener, tls, shutdown, move |_tls, _peer| {
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        hyper::service::service_fn(move |req| {
            let response = answer(&req, &metrics, &readiness);
            async move { Ok::<_, Infallible>(response) }
        })
    })
    .await
}

fn too_many_connections() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"too many connections")));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
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
