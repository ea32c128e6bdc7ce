//! One proxied request: a fresh QUIC stream to the spoke with the stream header and the request head in its
//! first packet, the body up to the FIN, and the response head and body back ([`tether_proto::http_head`]).
//! An upgraded request (exec, attach, port-forward) keeps that stream as its byte pipe.
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tether_proto::{RequestHead, ResponseHead, StreamHeader, Target};
use tether_runtime::io::{quic_io, Prefixed};
use tether_runtime::stream_http::{read_head, send_with_body, Holding, RecvBody};
use tracing::Instrument;

use super::identity::{set_impersonation, UserInfo};
use super::status::ProxyError;
use super::ProxyBody;
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
    let (head, body) = outgoing_request(request, path_and_query, user, upgrade.as_ref())?;

    let (send, mut recv) = tokio::time::timeout(settings.open_timeout, tunnel.connection.open_bi())
        .await
        .map_err(|_| ProxyError::GatewayTimeout(cluster.clone()))?
        .map_err(|e| bad_gateway(format!("tunnel lost: {e}")))?;
    let guard = StreamGauge::open(&tunnel);
    let span = tracing::debug_span!("stream", %cluster, request_id);
    let mut opening = BytesMut::with_capacity(512);
    StreamHeader { target: Target::ApiServer, request_id }.encode(&mut opening);
    head.encode(&mut opening);
    let opening = opening.freeze();
    // The send side stays here only for an upgrade, whose bytes follow the switch.
    let send = match (head.body, upgrade.is_some()) {
        (true, _) => {
            // The request body flows on its own while the response comes back: a response may start before
            // the body ended.
            let mut send = send;
            tokio::spawn(
                async move {
                    if let Err(e) = send_with_body(&mut send, opening, body).await {
                        tracing::debug!(error = %e, "request body not forwarded whole");
                    }
                }
                .instrument(span.clone()),
            );
            None
        }
        (false, upgrading) => {
            let mut send = send;
            send.write_chunk(opening).await.map_err(|e| bad_gateway(format!("stream refused: {e}")))?;
            if !upgrading {
                // The FIN joins the head in its packet.
                let _ = send.finish();
            }
            upgrading.then_some(send)
        }
    };

    let (response, rest) =
        tokio::time::timeout(settings.response_timeout, read_head(&mut recv, Bytes::new(), ResponseHead::decode))
            .await
            .map_err(|_| ProxyError::GatewayTimeout(cluster.clone()))?
            .map_err(|e| bad_gateway(e.to_string()))?
            .ok_or_else(|| bad_gateway("the spoke ended the stream without answering".into()))?;

    if response.status == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_upgrade), Some(send)) = (client_upgrade, send) else {
            return Err(bad_gateway("switched protocols without being asked to".into()));
        };
        tokio::spawn(
            async move {
                let _guard = guard;
                let Ok(client) = client_upgrade.await else {
                    return tracing::debug!("upgrade abandoned by the client");
                };
                let mut spoke = Prefixed::new(rest, quic_io(send, recv));
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut spoke).await;
            }
            .instrument(span),
        );
        let mut switched = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync());
        *switched.status_mut() = response.status;
        *switched.headers_mut() = response.headers;
        return Ok(switched);
    }
    // A refused upgrade is an ordinary response: the client connection stays HTTP, and its next request is
    // authenticated and authorized on its own (the lesson of CVE-2018-1002105).
    let ResponseHead { status, mut headers } = response;
    strip_hop_by_hop(&mut headers);
    let body = Holding::new(RecvBody::new(rest, recv), guard);
    let mut forwarded = Response::new(body.map_err(Into::into).boxed_unsync());
    *forwarded.status_mut() = status;
    *forwarded.headers_mut() = headers;
    Ok(forwarded)
}

fn outgoing_request(
    request: Request<Incoming>,
    path_and_query: &str,
    user: &UserInfo,
    upgrade: Option<&HeaderValue>,
) -> Result<(RequestHead, Incoming), ProxyError> {
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::UPGRADE);
    parts.headers.remove(header::HOST);
    set_impersonation(&mut parts.headers, user).map_err(ProxyError::BadRequest)?;
    if let Some(upgrade) = upgrade {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.headers.insert(header::UPGRADE, upgrade.clone());
    }
    let path_and_query =
        PathAndQuery::try_from(path_and_query).map_err(|_| ProxyError::BadRequest("invalid request path".into()))?;
    // An upgrade's bytes follow the switch, not the head: its request has no body.
    let has_body = upgrade.is_none() && !body.is_end_stream();
    let head = RequestHead { method: parts.method, path_and_query, headers: parts.headers, body: has_body };
    Ok((head, body))
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
struct StreamGauge(metrics::Gauge);

impl StreamGauge {
    fn open(tunnel: &Tunnel) -> Self {
        tunnel.streams_open.increment(1.0);
        Self(tunnel.streams_open.clone())
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
