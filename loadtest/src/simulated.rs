//! A simulated spoke: one QUIC connection with its own certificate that speaks the tunnel protocol as
//! tunnel-client does (Hello, heartbeats, one stream per request) and answers every request itself with
//! [`BODY`](crate::roles::BODY), or from a [`FakeApi`] of its own. Thousands share a few UDP sockets in one
//! process, so that the hub (or the controller), not the spokes, is what a run loads.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use tether_proto::{Event, RequestHead, ResponseHead, Role, Session, SessionConfig, StreamHeader};
use tether_runtime::session::{Broken, Driver};
use tether_runtime::transport::TransportSettings;
use tether_stream::http::{read_head, send_with_body, RecvBody};
use tokio_util::sync::CancellationToken;

use crate::fake_api::{Answer, FakeApi};

/// How a simulated spoke answers the requests the hub forwards.
#[derive(Clone)]
pub enum Responder {
    /// [`BODY`](crate::roles::BODY) to everything.
    Fixed,
    /// As an apiserver holding ConfigMaps would.
    Api(Arc<FakeApi>),
}

/// The largest request body a simulated spoke reads (an applied object).
const MAX_BODY: usize = 1 << 20;

/// The QUIC client configuration of one simulated spoke: its own certificate, the hub CA, tether's ALPN and
/// the transport settings tunnel-client uses.
pub fn client_config(hub_ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<quinn::ClientConfig> {
    let roots = tether_runtime::tls::certs_from_pem(hub_ca_pem.as_bytes()).map_err(anyhow::Error::msg)?;
    let roots = tether_runtime::tls::root_store_from_certs(roots).map_err(anyhow::Error::msg)?;
    let chain = tether_runtime::tls::certs_from_pem(cert_pem.as_bytes()).map_err(anyhow::Error::msg)?;
    let key = tether_runtime::tls::key_from_pem(key_pem.as_bytes()).map_err(anyhow::Error::msg)?;
    let mut crypto = rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(chain, key)?;
    crypto.alpn_protocols = vec![tether_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(TransportSettings::default().to_quinn()));
    Ok(config)
}

/// Dials the hub and returns once its Welcome arrived; the tunnel is then served in the background until
/// `stop`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    hub: SocketAddr,
    instance: String,
    responder: Responder,
    stop: CancellationToken,
) -> Result<()> {
    let connection = endpoint.connect_with(config, hub, "localhost")?.await.context("QUIC handshake")?;
    let (send, recv) = connection.open_bi().await?;
    let role = Role::Client { client_version: "loadtest".into(), instance };
    let config = SessionConfig { heartbeat_interval: Duration::from_secs(10), dead_after: Duration::from_secs(30) };
    let mut driver = Driver::new(Session::new(role, config, Instant::now()), send, recv, 1024);
    // Until Welcome: the caller counts a spoke connected only once the hub has registered it.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            driver.flush().await?;
            match driver.poll_event() {
                Some(Event::Established { .. }) => return Ok(()),
                Some(Event::GoAway { reason }) => bail!("hub said go away: {reason}"),
                Some(Event::Dead) => bail!("heartbeat lost before Welcome"),
                _ => {}
            }
            match driver.next(None).await {
                Ok(_) => {}
                Err(Broken::Closed) => bail!("control stream closed before Welcome"),
                Err(Broken::Protocol(e)) => return Err(e.into()),
            }
        }
    })
    .await
    .context("waiting for Welcome")??;
    tokio::spawn(async move {
        serve(&connection, driver, responder, stop).await;
        connection.close(0u32.into(), b"bye");
    });
    Ok(())
}

async fn serve(connection: &quinn::Connection, mut driver: Driver, responder: Responder, stop: CancellationToken) {
    loop {
        if driver.flush().await.is_err() {
            return;
        }
        while let Some(event) = driver.poll_event() {
            if matches!(event, Event::GoAway { .. } | Event::Dead) {
                return;
            }
        }
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => { tokio::spawn(answer(send, recv, responder.clone())); }
                Err(_) => return,
            },
            input = driver.next(None) => if input.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// One stream from the hub: its header and request head, answered with the fixed body or by the fake API.
async fn answer(mut send: quinn::SendStream, mut recv: quinn::RecvStream, responder: Responder) {
    let Ok(Some((_, rest))) = read_head(&mut recv, Bytes::new(), StreamHeader::decode).await else { return };
    let Ok(Some((request, rest))) = read_head(&mut recv, rest, RequestHead::decode).await else { return };
    let api = match responder {
        Responder::Fixed => {
            let head = response_head(http::StatusCode::OK, crate::roles::BODY.len());
            let _ = send_with_body(&mut send, head, Full::new(Bytes::from_static(crate::roles::BODY))).await;
            return;
        }
        Responder::Api(api) => api,
    };
    let body = match request.body {
        true => match http_body_util::Limited::new(RecvBody::new(rest, recv), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return,
        },
        false => Bytes::new(),
    };
    match api.answer(&request.method, request.path_and_query.as_str(), &body) {
        Answer::Json(status, body) => {
            let head = response_head(status, body.len());
            let _ = send_with_body(&mut send, head, Full::new(Bytes::from(body))).await;
        }
        // The head alone, then nothing until the hub resets the stream (its caller went away).
        Answer::Watch => {
            let mut head = BytesMut::new();
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            ResponseHead { status: http::StatusCode::OK, headers }.encode(&mut head);
            if send.write_all(&head).await.is_ok() {
                let _ = send.stopped().await;
            }
        }
    }
}

fn response_head(status: http::StatusCode, length: usize) -> Bytes {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_LENGTH, length.into());
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let mut head = BytesMut::new();
    ResponseHead { status, headers }.encode(&mut head);
    head.freeze()
}
