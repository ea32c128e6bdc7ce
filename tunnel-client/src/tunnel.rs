//! One tunnel: run the control stream, serve every stream the hub opens, renew the identity alongside, and
//! drain when retired.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use metrics::{counter, gauge, histogram};
use tether_proto::{Event, RequestHead, ResponseHead, Role, Session, SessionConfig, StreamHeader, Target};
use tether_runtime::session::{Broken, Driver, Input};
use tether_runtime::transport::ByteCounter;
use tether_stream::http::{read_head, send_with_body, RecvBody};
use tether_stream::io::{quic_io, Prefixed};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::metrics as m;
use crate::upstream::{self, Upstream};

/// How a tunnel ended, which decides how soon to dial again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The hub asked us to move: dial again at once.
    GoAway,
    /// Lost (heartbeat, network, hub crash): dial again after a backoff.
    Lost(String),
    /// We are shutting down.
    Shutdown,
    /// A tunnel with a renewed identity took over; this one drained.
    Retired,
}

/// What a running tunnel tells the dial loop.
#[derive(Debug)]
pub enum Report {
    /// The hub's Welcome arrived.
    Up { cluster: String },
    /// A renewed identity is committed: dial with it, then retire this tunnel.
    Renewed,
}

/// What every tunnel of this process is served with.
pub struct Params {
    pub instance: String,
    pub heartbeat_interval: Duration,
    pub upstream: Upstream,
    /// The spoke apiserver's version and CA bundle, sent to the hub after Hello.
    pub spoke_info: Option<(String, String)>,
}

/// Serves the connection until it ends. Reports go to `reports`; `renewal`, when given, runs alongside and
/// its completion is reported as [`Report::Renewed`]. Cancelling `retire` says GoAway to the hub and drains:
/// the streams in flight finish (until `drain_until` at the latest) before the connection is closed.
pub async fn serve(
    connection: quinn::Connection,
    params: Arc<Params>,
    renewal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    retire: CancellationToken,
    drain_until: Instant,
    shutdown: CancellationToken,
    reports: mpsc::UnboundedSender<Report>,
) -> Ended {
    let (send, recv) = match connection.open_bi().await {
        Ok(s) => s,
        Err(e) => return Ended::Lost(format!("opening the control stream: {e}")),
    };
    let role = Role::Client { client_version: env!("CARGO_PKG_VERSION").into(), instance: params.instance.clone() };
    let config =
        SessionConfig { heartbeat_interval: params.heartbeat_interval, dead_after: params.heartbeat_interval * 3 };
    let mut session = Session::new(role, config, Instant::now());
    if let Some((version, ca_bundle)) = &params.spoke_info {
        session.send_spoke_info(version, ca_bundle);
    }
    let mut driver = Driver::new(session, send, recv, 16 * 1024);
    let streams = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut stats = ByteCounter::new(m::TUNNEL_BYTES);
    let mut renewal = renewal;

    let ended = loop {
        if let Err(e) = driver.flush().await {
            return Ended::Lost(format!("control stream: {e}"));
        }
        if let Some(ended) = on_events(&mut driver, &reports) {
            break ended;
        }
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => spawn_stream(&tracker, &streams, send, recv, &params.upstream),
                Err(e) => break Ended::Lost(format!("connection: {e}")),
            },
            input = driver.next(None) => match input {
                Ok(Input::Read) => {}
                Ok(Input::Timeout) => stats.sample(&connection),
                Err(Broken::Protocol(e)) => {
                    tracing::warn!(error = %e, "control stream protocol error");
                    connection.close(tether_runtime::transport::code(tether_proto::Code::ProtocolError), b"protocol error");
                    break Ended::Lost(format!("protocol error: {e}"));
                }
                Err(Broken::Closed) => break Ended::Lost("control stream closed".into()),
            },
            () = async {
                match renewal.as_mut() {
                    Some(renewal) => renewal.await,
                    None => std::future::pending().await,
                }
            }, if renewal.is_some() => {
                renewal = None;
                let _ = reports.send(Report::Renewed);
            }
            _ = retire.cancelled() => {
                driver.say_go_away("moving to a renewed certificate", GO_AWAY_WAIT).await;
                break Ended::Retired;
            }
            _ = shutdown.cancelled() => {
                // Tell the hub first so it stops routing here before the connection goes.
                driver.say_go_away("client shutting down", GO_AWAY_WAIT).await;
                break Ended::Shutdown;
            }
        }
    };
    stats.sample(&connection);
    gauge!(m::CONNECTED).set(0.0);
    match &ended {
        // In-flight streams of a go-away finish on the old connection while the new one comes up.
        Ended::GoAway => {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), connection.closed()).await;
                streams.cancel();
            });
        }
        Ended::Retired => {
            drain(&connection, &tracker, &streams, &params.upstream, drain_until, &shutdown).await;
            connection.close(tether_runtime::transport::code(tether_proto::Code::Normal), b"retired");
            streams.cancel();
        }
        _ => {
            // A connection the hub closed keeps the hub's close code (a local close would replace it with
            // LocallyClosed): the dial loop reads it to decide whether to redial.
            if connection.close_reason().is_none() {
                connection.close(tether_runtime::transport::code(tether_proto::Code::Normal), b"bye");
            }
            streams.cancel();
        }
    }
    ended
}

/// How long a GoAway waits to be received before the connection is closed.
const GO_AWAY_WAIT: Duration = Duration::from_secs(1);

/// Acts on the session's events; `Some` when one ends the tunnel.
fn on_events(driver: &mut Driver, reports: &mpsc::UnboundedSender<Report>) -> Option<Ended> {
    let mut ended = None;
    while let Some(event) = driver.poll_event() {
        match event {
            Event::Established { cluster, .. } => {
                gauge!(m::CONNECTED).set(1.0);
                counter!(m::CONNECTS).increment(1);
                tracing::info!(%cluster, "tunnel up");
                let _ = reports.send(Report::Up { cluster });
            }
            Event::GoAway { reason } => {
                tracing::info!(%reason, "hub asked us to go away");
                ended = Some(Ended::GoAway);
            }
            Event::Dead => ended = Some(Ended::Lost("heartbeat lost".into())),
            // Sent by clients only; a hub's is refused by the session.
            Event::SpokeInfo { .. } => {}
        }
    }
    ended
}

/// After GoAway: serves what is in flight, and any stream the hub opened before it read the GoAway, until
/// all are done, `until`, or shutdown.
async fn drain(
    connection: &quinn::Connection,
    tracker: &TaskTracker,
    streams: &CancellationToken,
    upstream: &Upstream,
    until: Instant,
    shutdown: &CancellationToken,
) {
    tracker.close();
    tracing::info!(in_flight = tracker.len(), "draining the retired tunnel");
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => spawn_stream(tracker, streams, send, recv, upstream),
                Err(_) => return,
            },
            _ = tracker.wait() => return,
            _ = tokio::time::sleep_until(until.into()) => return,
            _ = shutdown.cancelled() => return,
        }
    }
}

fn spawn_stream(
    tracker: &TaskTracker,
    streams: &CancellationToken,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    upstream: &Upstream,
) {
    let upstream = upstream.clone();
    let streams = streams.clone();
    tracker.spawn(async move {
        tokio::select! {
            _ = serve_stream(send, recv, upstream) => {}
            _ = streams.cancelled() => {}
        }
    });
}

async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, upstream: Upstream) {
    let _open = OpenStream::new();
    let (header, rest) = match read_head(&mut recv, Bytes::new(), StreamHeader::decode).await {
        Ok(Some(read)) => read,
        Ok(None) => return,
        Err(e) => return tracing::warn!(error = %e, "bad stream header"),
    };
    let span = tracing::debug_span!("stream", request_id = header.request_id);
    if header.target != Target::ApiServer {
        let _ = send.reset(RESET_UNSUPPORTED.into());
        return tracing::warn!(parent: &span, target = ?header.target, "stream for a target this client does not serve");
    }
    serve_request(send, recv, rest, upstream).instrument(span).await
}

/// Reset code of a stream whose target this client does not serve.
const RESET_UNSUPPORTED: u32 = tether_proto::Code::UnsupportedTarget.value();
/// Reset code of a stream whose request head is malformed.
const RESET_BAD_REQUEST: u32 = tether_proto::Code::BadRequestHead.value();

/// One request on an apiserver stream: its head, the body if any, and the apiserver's answer back; an
/// upgrade (exec, attach, port-forward) then pipes the stream to the apiserver's upgraded connection.
async fn serve_request(mut send: quinn::SendStream, recv: quinn::RecvStream, rest: Bytes, upstream: Upstream) {
    // Boxed: reading the head and asking the apiserver take far more state than streaming the answer back,
    // which a watch does for hours. Inline, every idle watch would keep that state.
    let Some(answer) = Box::pin(answer(&mut send, recv, rest, upstream)).await else { return };
    // A watch may not send a byte for many minutes: without watching for the hub's STOP_SENDING, a watch its
    // caller closed would hold the stream and the apiserver's watch until its next event.
    let stopped = hub_gave_up(send.stopped());
    tokio::select! {
        () = return_answer(send, answer) => {}
        reason = stopped => {
            counter!(m::STREAMS_ABANDONED, "stage" => "answering").increment(1);
            tracing::debug!(%reason, "the hub gave up on the stream");
        }
    }
}

async fn return_answer(mut send: quinn::SendStream, answer: Answer) {
    match answer {
        Answer::Body { head, body } => {
            if let Err(e) = send_with_body(&mut send, head, body).await {
                tracing::debug!(error = %e, "response not returned whole");
            }
        }
        Answer::Upgraded { head, upgraded, recv, rest } => {
            if send.write_chunk(head).await.is_err() {
                return;
            }
            let Ok(apiserver) = upgraded.await else { return tracing::debug!("upgrade abandoned by the apiserver") };
            // An upgrade request has no body: what the hub sent after the head belongs to the upgraded protocol.
            let mut hub = Prefixed::new(rest, quic_io(send, recv));
            let _ = tokio::io::copy_bidirectional(&mut hub, &mut TokioIo::new(apiserver)).await;
        }
    }
}

/// Resolves when the hub stops the stream (it gave up: no answer in time, its caller gone) or the connection
/// is lost, with the reason; never for a stream that ended normally. Dropping what the request waits on then
/// drops the apiserver's HTTP/2 stream (or HTTP/1.1 connection) with it.
///
/// quinn keeps the waker of a watched stream until the stream is stopped or finished, not when it is reset
/// here (a body that failed half-way): about 100 bytes per such stream for the life of the connection.
/// Watching starts after a good request head, so a hub's malformed streams cost nothing.
async fn hub_gave_up(stopped: impl Future<Output = Result<Option<quinn::VarInt>, quinn::StoppedError>>) -> String {
    match stopped.await {
        Ok(Some(code)) => format!("stopped with code {code}"),
        Ok(None) => std::future::pending().await,
        Err(e) => e.to_string(),
    }
}

/// The apiserver's answer to a request, with its head encoded for the hub.
enum Answer {
    Body { head: Bytes, body: upstream::Body },
    Upgraded { head: Bytes, upgraded: OnUpgrade, recv: quinn::RecvStream, rest: Bytes },
}

async fn answer(
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
    rest: Bytes,
    upstream: Upstream,
) -> Option<Answer> {
    let (head, rest) = match read_head(&mut recv, rest, RequestHead::decode).await {
        Ok(Some(read)) => read,
        Ok(None) => return None,
        Err(e) => {
            let _ = send.reset(RESET_BAD_REQUEST.into());
            tracing::warn!(error = %e, "bad request head");
            return None;
        }
    };
    let stopped = hub_gave_up(send.stopped());
    let started = Instant::now();
    let upgrade = head.headers.contains_key(http::header::UPGRADE);
    // Without a body the hub finished its side with the head, and `recv` is kept only for an upgrade.
    let (body, recv) = match head.body {
        true => (RecvBody::new(rest.clone(), recv), None),
        false => (RecvBody::empty(), Some(recv)),
    };
    let mut request = http::Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = head.path_and_query.into();
    *request.headers_mut() = head.headers;

    let asked = async {
        if upgrade {
            upstream.upgrade(request).await
        } else {
            (upstream.forward(request).await, None)
        }
    };
    // The apiserver may take its time (a Go server waits for a declared body before it answers): if the hub
    // gives up meanwhile, the request goes at once rather than when the apiserver answers.
    let (response, upgraded) = tokio::select! {
        answered = asked => answered,
        reason = stopped => {
            counter!(m::STREAMS_ABANDONED, "stage" => "waiting").increment(1);
            tracing::debug!(%reason, "the hub gave up before the apiserver answered");
            return None;
        }
    };
    histogram!(m::REQUEST_DURATION, "code" => response.status().as_u16().to_string())
        .record(started.elapsed().as_secs_f64());
    let (parts, body) = response.into_parts();
    let mut encoded = BytesMut::with_capacity(256);
    ResponseHead { status: parts.status, headers: parts.headers }.encode(&mut encoded);
    let head = encoded.freeze();
    Some(match (upgraded, recv) {
        (Some(upgraded), Some(recv)) => Answer::Upgraded { head, upgraded, recv, rest },
        _ => Answer::Body { head, body },
    })
}

struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        gauge!(m::STREAMS_OPEN).increment(1.0);
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        gauge!(m::STREAMS_OPEN).decrement(1.0);
    }
}

#[cfg(test)]
mod tests;
