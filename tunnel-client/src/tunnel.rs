//! One tunnel: dial the hub, run the control stream, serve every stream the hub opens.
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use metrics::{counter, gauge, histogram};
use tether_proto::{Event, Role, Session, SessionConfig, StreamHeader};
use tether_runtime::io::{quic_io, Prefixed};
use tether_runtime::transport::ByteCounter;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics as m;
use crate::upstream::Upstream;

/// How a tunnel ended, which decides how soon to dial again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The hub asked us to move: dial again at once.
    GoAway,
    /// Lost (heartbeat, network, hub crash): dial again after a backoff.
    Lost(String),
    /// We are shutting down.
    Shutdown,
}

pub struct Established {
    pub cluster: String,
}

/// Serves the connection until it ends. `on_up` runs once the hub's Welcome arrived.
pub async fn serve(
    connection: quinn::Connection,
    instance: &str,
    heartbeat_interval: Duration,
    upstream: Upstream,
    shutdown: &CancellationToken,
    mut on_up: impl FnMut(Established),
) -> Ended {
    let (mut send, mut recv) = match connection.open_bi().await {
        Ok(s) => s,
        Err(e) => return Ended::Lost(format!("opening the control stream: {e}")),
    };
    let role = Role::Client { client_version: env!("CARGO_PKG_VERSION").into(), instance: instance.into() };
    let config = SessionConfig { heartbeat_interval, dead_after: heartbeat_interval * 3 };
    let mut session = Session::new(role, config, Instant::now());
    let streams = CancellationToken::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut stats = ByteCounter::new(m::TUNNEL_BYTES);

    let ended = loop {
        while let Some(bytes) = session.poll_transmit() {
            if let Err(e) = send.write_all(&bytes).await {
                return Ended::Lost(format!("control stream: {e}"));
            }
        }
        let mut ended = None;
        while let Some(event) = session.poll_event() {
            match event {
                Event::Established { cluster, .. } => {
                    gauge!(m::CONNECTED).set(1.0);
                    counter!(m::CONNECTS).increment(1);
                    tracing::info!(%cluster, "tunnel up");
                    on_up(Established { cluster });
                }
                Event::GoAway { reason } => {
                    tracing::info!(%reason, "hub asked us to go away");
                    ended = Some(Ended::GoAway);
                }
                Event::Dead => ended = Some(Ended::Lost("heartbeat lost".into())),
            }
        }
        if let Some(ended) = ended {
            break ended;
        }
        let wake = session.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let upstream = upstream.clone();
                    let streams = streams.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = serve_stream(send, recv, upstream) => {}
                            _ = streams.cancelled() => {}
                        }
                    });
                }
                Err(e) => break Ended::Lost(format!("connection: {e}")),
            },
            read = recv.read(&mut buf) => match read {
                Ok(Some(n)) => {
                    if let Err(e) = session.handle_input(Instant::now(), &buf[..n]) {
                        tracing::warn!(error = %e, "control stream protocol error");
                        connection.close(3u32.into(), b"protocol error");
                        break Ended::Lost(format!("protocol error: {e}"));
                    }
                }
                Ok(None) | Err(_) => break Ended::Lost("control stream closed".into()),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                session.handle_timeout(Instant::now());
                stats.sample(&connection);
            }
            _ = shutdown.cancelled() => {
                // Tell the hub first so it stops routing here before the connection goes.
                session.go_away("client shutting down");
                while let Some(bytes) = session.poll_transmit() {
                    let _ = send.write_all(&bytes).await;
                }
                // write_all only queued the GoAway: closing now would discard it. The hub closes the connection
                // once it has read it; wait for that, briefly.
                let _ = tokio::time::timeout(Duration::from_secs(1), connection.closed()).await;
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
        _ => {
            connection.close(0u32.into(), b"bye");
            streams.cancel();
        }
    }
    ended
}

async fn serve_stream(send: quinn::SendStream, mut recv: quinn::RecvStream, upstream: Upstream) {
    let _open = OpenStream::new();
    let mut buf = BytesMut::with_capacity(256);
    let header = loop {
        match StreamHeader::decode(&buf) {
            Ok(Some((header, used))) => {
                let _ = buf.split_to(used);
                break header;
            }
            Ok(None) => {}
            Err(e) => return tracing::warn!(error = %e, "bad stream header"),
        }
        let mut chunk = [0u8; 512];
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(None) | Err(_) => return,
        }
    };
    let span = tracing::debug_span!("stream", request_id = header.request_id);
    let io = TokioIo::new(Prefixed::new(Bytes::from(buf), quic_io(send, recv)));
    let service = hyper::service::service_fn(move |request| {
        let upstream = upstream.clone();
        async move {
            let started = Instant::now();
            let response = upstream.forward(request).await;
            histogram!(m::REQUEST_DURATION, "code" => response.status().as_u16().to_string())
                .record(started.elapsed().as_secs_f64());
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, service)
        .with_upgrades()
        .instrument(span)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "stream ended with an error");
    }
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
