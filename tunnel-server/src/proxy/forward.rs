//! One proxied request: a fresh QUIC stream to the spoke, the stream header, then HTTP/1.1 over the stream.
//! An upgraded request (exec, attach, port-forward) keeps that stream as its byte pipe.
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics::gauge;
use tether_proto::{StreamHeader, Target};
use tether_runtime::io::WriteHead;
use tracing::Instrument;

use super::identity::{set_impersonation, UserInfo};
use super::status::ProxyError;
use super::ProxyBody;
use crate::metrics as m;
use crate::registry::Tunnel;

#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Opening a stream waits for stream credit from the spoke; past this the spoke is stuck.
    pub open_timeout: Duration,
    /// Time to response headers. Watches answer headers at once, so this does not bound them.
    pub response_timeout: Duration,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never travel further than one leg.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub async fn forward(
    tunnel: Arc<Tunnel>,
    mut request: Request<Incoming>,
    path_and_query: &str,
    user: &UserInfo,
    request_id: u64,
    settings: &ForwardSettings,
) -> Result<Response<ProxyBody>, ProxyError> {
    let cluster = tunnel.cluster.clone();
    let bad_gateway = |reason: String| ProxyError::BadGateway { cluster: cluster.clone(), reason };
    let upgrade = request.headers().get(header::UPGRADE).cloned();
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));

    let (send, recv) = tokio::time::timeout(settings.open_timeout, tunnel.connection.open_bi())
        .await
        .map_err(|_| ProxyError::GatewayTimeout(cluster.clone()))?
        .map_err(|e| bad_gateway(format!("tunnel lost: {e}")))?;
    let guard = StreamGauge::open(&cluster);
    let mut header = BytesMut::with_capacity(32);
    StreamHeader { target: Target::ApiServer, request_id }.encode(&mut header);
    let io = TokioIo::new(tokio::io::join(recv, WriteHead::new(header.freeze(), send)));
    let (mut sender, connection) =
        hyper::client::conn::http1::Builder::new().handshake(io).await.map_err(|e| bad_gateway(e.to_string()))?;
    let span = tracing::debug_span!("stream", %cluster, request_id);
    tokio::spawn(
        async move {
            let _guard = guard;
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "stream ended with an error");
            }
        }
        .instrument(span),
    );

    let outgoing = outgoing_request(request, path_and_query, user, upgrade.as_ref())?;
    let mut response = tokio::time::timeout(settings.response_timeout, sender.send_request(outgoing))
        .await
        .map_err(|_| ProxyError::GatewayTimeout(cluster.clone()))?
        .map_err(|e| bad_gateway(e.to_string()))?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(bad_gateway("switched protocols without being asked to".into()));
        };
        let spoke_upgrade = hyper::upgrade::on(&mut response);
        let guard = StreamGauge::open(&cluster);
        tokio::spawn(async move {
            let _guard = guard;
            let (Ok(client), Ok(spoke)) = tokio::join!(client_upgrade, spoke_upgrade) else {
                return tracing::debug!("upgrade abandoned by one side");
            };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(spoke)).await;
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(
            parts,
            http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync(),
        ));
    }
    // A refused upgrade is an ordinary response: the client connection stays HTTP, and its next request is
    // authenticated and authorized on its own (the lesson of CVE-2018-1002105).
    strip_hop_by_hop(response.headers_mut());
    Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()))
}

fn outgoing_request(
    request: Request<Incoming>,
    path_and_query: &str,
    user: &UserInfo,
    upgrade: Option<&HeaderValue>,
) -> Result<Request<Incoming>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::UPGRADE);
    set_impersonation(&mut parts.headers, user).map_err(ProxyError::BadRequest)?;
    if let Some(upgrade) = upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.headers.insert(header::UPGRADE, upgrade.clone());
    }
    // HTTP/2 callers have no Host header; HTTP/1.1 requires one. The spoke sets its own anyway.
    if !parts.headers.contains_key(header::HOST) {
        parts.headers.insert(header::HOST, HeaderValue::from_static("tether-hub"));
    }
    parts.uri = path_and_query.parse().map_err(|_| ProxyError::BadRequest("invalid request path".into()))?;
    parts.version = http::Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.into_iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// Counts a stream as open for as long as the guard lives.
struct StreamGauge(String);

impl StreamGauge {
    fn open(cluster: &str) -> Self {
        gauge!(m::STREAMS_OPEN, "cluster" => cluster.to_string()).increment(1.0);
        Self(cluster.to_string())
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        gauge!(m::STREAMS_OPEN, "cluster" => self.0.clone()).decrement(1.0);
    }
}
