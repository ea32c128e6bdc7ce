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
use tether_stream::http::{read_head, send_with_body, Holding, RecvBody};
use tether_stream::io::{quic_io, Prefixed};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use super::identity::{set_impersonation, UserInfo};
use super::redirect;
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

/// The reset and stop code of a stream the hub gives up on.
pub const RESET_ABANDONED: tether_proto::codes::Code = tether_proto::codes::Code::StreamAbandoned;

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
    if upgrade.is_some() {
        upgrade_without_body(request.headers_mut()).map_err(ProxyError::BadRequest)?;
    }
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let (head, body) = outgoing_request(request, path_and_query, user, upgrade.as_ref())?;

    let (send, recv) = tokio::time::timeout(settings.open_timeout, tunnel.connection.open_bi())
        .await
        .map_err(|_| ProxyError::GatewayTimeout(cluster.clone()))?
        .map_err(|e| bad_gateway(format!("tunnel lost: {e}")))?;
    let guard = StreamGauge::open(&tunnel);
    let span = tracing::debug_span!("stream", %cluster, request_id);
    let mut opening = BytesMut::with_capacity(512);
    StreamHeader { target: Target::ApiServer, request_id }.encode(&mut opening);
    head.encode(&mut opening);
    let opening = opening.freeze();
    let send = match head.body {
        true => {
            // The request body flows on its own while the response comes back: a response may start before
            // the body ended.
            let abandoned = CancellationToken::new();
            let cancelled = abandoned.clone();
            let mut send = send;
            tokio::spawn(
                async move {
                    tokio::select! {
                        sent = send_with_body(&mut send, opening, body) => if let Err(e) = sent {
                            tracing::debug!(error = %e, "request body not forwarded whole");
                        },
                        () = cancelled.cancelled() => {
                            let _ = send.reset(tether_runtime::transport::code(RESET_ABANDONED));
                        }
                    }
                }
                .instrument(span.clone()),
            );
            SendSide::Streaming(abandoned.drop_guard())
        }
        false => {
            let mut send = send;
            send.write_chunk(opening).await.map_err(|e| bad_gateway(format!("stream refused: {e}")))?;
            // The FIN joins the head in its packet; an upgrade's bytes follow the switch.
            if upgrade.is_none() {
                let _ = send.finish();
            }
            SendSide::Held(send)
        }
    };
    let mut stream = Unanswered { send: Some(send), recv: Some(recv) };

    let (mut response, rest) =
        tokio::time::timeout(settings.response_timeout, read_head(stream.recv(), Bytes::new(), ResponseHead::decode))
            .await
            .map_err(|_| ProxyError::GatewayTimeout(cluster.clone()))?
            .map_err(|e| bad_gateway(e.to_string()))?
            .ok_or_else(|| bad_gateway("the spoke ended the stream without answering".into()))?;
    let request_path = path_and_query.split('?').next().unwrap_or("/");
    redirect::check_response(response.status, &mut response.headers, upgrade.is_some(), &cluster, request_path)
        .map_err(bad_gateway)?;

    if response.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(bad_gateway("switched protocols without being asked to".into()));
        };
        tokio::spawn(
            async move {
                let _guard = guard;
                let Ok(client) = client_upgrade.await else {
                    return tracing::debug!("upgrade abandoned by the client");
                };
                // An upgrade request has no body, so the hub holds its send side.
                let (SendSide::Held(send), recv) = stream.answered() else { return };
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
    let (send, recv) = stream.answered();
    // A request body still on its way when the response is dropped (read whole, or the caller gone) is
    // abandoned with it; a send side the hub holds has finished already.
    let streaming = match send {
        SendSide::Streaming(abandon) => Some(abandon),
        SendSide::Held(_) => None,
    };
    let body = Holding::new(RecvBody::new(rest, recv), (guard, streaming));
    let mut forwarded = Response::new(body.map_err(Into::into).boxed_unsync());
    *forwarded.status_mut() = status;
    *forwarded.headers_mut() = headers;
    Ok(forwarded)
}

/// An upgrade request's bytes after its head belong to the upgraded protocol, so a body it declares would
/// never be forwarded, and the spoke's apiserver would wait for it (Go's net/http reads a declared body
/// before it answers) until the hub gave up, with the stream, its task and an apiserver connection pinned
/// meanwhile. Such a request is refused; a declared empty body, and an `Expect` (nothing follows to
/// continue), are dropped.
fn upgrade_without_body(headers: &mut HeaderMap) -> Result<(), String> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Err("an upgrade request cannot carry a body, and this one has Transfer-Encoding".into());
    }
    for value in headers.get_all(header::CONTENT_LENGTH) {
        match value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(0) => {}
            Some(length) => {
                return Err(format!("an upgrade request cannot carry a body, and this one has {length} bytes"));
            }
            None => return Err("an upgrade request cannot carry a body, and this one has a Content-Length".into()),
        }
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    Ok(())
}

/// The hub's side of a stream until the spoke's answer is in. Dropped before [`Unanswered::answered`] — no
/// response head in time, a refused answer, the caller gone — it resets the send side and stops the receive
/// side, so the spoke drops its apiserver request at once. Dropping quinn's streams would not do: a dropped
/// `SendStream` finishes gracefully, and the spoke would go on waiting on its apiserver.
struct Unanswered {
    send: Option<SendSide>,
    recv: Option<quinn::RecvStream>,
}

/// Who holds the send side of a stream.
enum SendSide {
    /// The hub: a request without a body (finished already), or an upgrade's (whose bytes follow the switch).
    Held(quinn::SendStream),
    /// The task streaming the request body, which resets the stream when this guard drops first.
    Streaming(DropGuard),
}

impl Unanswered {
    fn recv(&mut self) -> &mut quinn::RecvStream {
        self.recv.as_mut().expect("taken only by answered, which consumes self")
    }

    /// The answer is in: the streams go on to carry the response (or the upgraded bytes).
    fn answered(mut self) -> (SendSide, quinn::RecvStream) {
        let taken = "taken only here, which consumes self";
        (self.send.take().expect(taken), self.recv.take().expect(taken))
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(recv) = &mut self.recv {
            let _ = recv.stop(tether_runtime::transport::code(RESET_ABANDONED));
        }
        // A `Streaming` guard cancels its task as it drops, and the task resets the stream.
        if let Some(SendSide::Held(send)) = &mut self.send {
            let _ = send.reset(tether_runtime::transport::code(RESET_ABANDONED));
        }
    }
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

#[cfg(test)]
mod tests;
