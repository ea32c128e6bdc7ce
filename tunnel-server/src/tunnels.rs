//! The QUIC side of the hub: accept spoke connections, learn the cluster from the verified client
//! certificate (never from anything the client says), run the control stream, keep the registry current.
//! Connections that negotiated `tether-bootstrap/1` go to [`crate::bootstrap`] and do nothing else; a
//! `tether/2` connection without a verified client certificate is closed at once. The endpoint accepts
//! every connection with tight transport settings (one stream, a small connection window), so an
//! unauthenticated peer makes the hub buffer little; a verified tunnel is lifted to the full settings.
//!
//! On a tunnel, every stream the client opens after its control stream is a certificate renewal
//! ([`Bootstrap::renew`], one at a time). A tunnel ends when its client certificate expires: a client that
//! renewed has moved to a new connection by then. When a client says GoAway (it shuts down, or it moves to
//! a renewed identity) its tunnel leaves the registry at once, so no new request is routed to it, but the
//! connection stays until the client closes it, so that requests in flight on it (a watch) finish.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use metrics::{counter, gauge};
use rustls::pki_types::CertificateDer;
use tether_proto::{Code, Event, Role, Session, SessionConfig};
use tether_runtime::transport::{code, ByteCounter, TransportSettings};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::bootstrap::Bootstrap;
use crate::metrics as m;
use crate::registry::{Described, Registry, Tunnel};
use crate::revocations::{self, Revocations};

#[derive(Debug, Clone)]
pub struct TunnelSettings {
    pub heartbeat_interval: Duration,
    /// No control-stream bytes for this long and the tunnel is declared dead.
    pub dead_after: Duration,
    /// How long a new connection may take to open its control stream and say hello.
    pub hello_timeout: Duration,
    /// What a verified spoke's connection is lifted to (the endpoint accepts every connection with
    /// [`TransportSettings::unauthenticated`] settings).
    pub transport: TransportSettings,
}

/// Who a spoke is, from its verified client certificate.
#[derive(Debug, Clone)]
struct Identity {
    cluster: String,
    /// When the certificate was issued, for revocation checks.
    issued: SystemTime,
    /// Its not-after: the tunnel is closed then.
    expires: SystemTime,
}

/// Accepts spoke connections until `shutdown`, then tells every spoke to go away. Revoked certificates are
/// refused; bootstrap connections are served by `bootstrap`.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    registry: Arc<Registry>,
    revocations: Revocations,
    bootstrap: Arc<Bootstrap>,
    settings: TunnelSettings,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
        };
        let registry = registry.clone();
        let revocations = revocations.clone();
        let bootstrap = bootstrap.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        let remote = incoming.remote_address();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    counter!(m::HANDSHAKE_FAILURES, "reason" => "tls").increment(1);
                    return tracing::debug!(%remote, error = %e, "spoke handshake failed");
                }
            };
            if alpn_of(&connection).as_deref() == Some(tether_proto::BOOTSTRAP_ALPN) {
                let span = tracing::info_span!("bootstrap", %remote);
                return bootstrap.serve(connection, shutdown).instrument(span).await;
            }
            if connection.peer_identity().is_none() {
                counter!(m::HANDSHAKE_FAILURES, "reason" => "no_certificate").increment(1);
                warn!(%remote, "refusing spoke connection: no client certificate");
                connection.close(code(Code::NoIdentity), b"no client certificate");
                return;
            }
            let identity = match identity_of(&connection) {
                Ok(i) => i,
                Err(reason) => {
                    counter!(m::HANDSHAKE_FAILURES, "reason" => "identity").increment(1);
                    warn!(%remote, %reason, "refusing spoke connection");
                    connection.close(code(Code::NoIdentity), b"bad identity");
                    return;
                }
            };
            if revocations.revokes(&identity.cluster, identity.issued) {
                counter!(m::HANDSHAKE_FAILURES, "reason" => "revoked").increment(1);
                warn!(%remote, cluster = %identity.cluster, "refusing spoke connection: certificate revoked");
                connection.close(code(Code::Revoked), revocations::CLOSE_REASON.as_bytes());
                return;
            }
            // Verified: the tunnel gets its full stream credit and connection window.
            settings.transport.lift(&connection);
            let span = tracing::info_span!("tunnel", cluster = %identity.cluster, %remote);
            serve_tunnel(connection, identity, registry, revocations, bootstrap, settings, shutdown)
                .instrument(span)
                .await;
        });
    }
}

/// The protocol negotiated by ALPN.
fn alpn_of(connection: &quinn::Connection) -> Option<Vec<u8>> {
    let data = connection.handshake_data()?;
    data.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?.protocol
}

fn identity_of(connection: &quinn::Connection) -> Result<Identity, String> {
    let identity = connection.peer_identity().ok_or("no client certificate")?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| "unexpected peer identity type")?;
    let leaf = certs.first().ok_or("empty client certificate chain")?;
    let cluster = tether_certs::cluster_of(leaf.as_ref()).map_err(|e| e.to_string())?;
    let issued = revocations::issued_at(leaf.as_ref()).map_err(|e| e.to_string())?;
    let (_, expires) = tether_certs::validity(leaf.as_ref()).map_err(|e| e.to_string())?;
    Ok(Identity { cluster, issued, expires })
}

async fn serve_tunnel(
    connection: quinn::Connection,
    identity: Identity,
    registry: Arc<Registry>,
    revocations: Revocations,
    bootstrap: Arc<Bootstrap>,
    settings: TunnelSettings,
    shutdown: CancellationToken,
) {
    let Identity { cluster, issued, expires } = identity;
    let expiry = tether_runtime::instant_of(expires);
    let renewing = Arc::new(tokio::sync::Semaphore::new(1));
    let (mut send, mut recv) = match tokio::time::timeout(settings.hello_timeout, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => return tracing::debug!(error = %e, "connection closed before its control stream"),
        Err(_) => {
            counter!(m::HANDSHAKE_FAILURES, "reason" => "hello_timeout").increment(1);
            connection.close(code(Code::NoControlStream), b"no control stream");
            return;
        }
    };
    let role = Role::Server { cluster: cluster.clone(), heartbeat_interval: settings.heartbeat_interval };
    let config = SessionConfig { heartbeat_interval: settings.heartbeat_interval, dead_after: settings.dead_after };
    let mut session = Session::new(role, config, Instant::now());
    let hello_deadline = Instant::now() + settings.hello_timeout;
    let mut registered: Option<Arc<Tunnel>> = None;
    let mut stats = ByteCounter::new(m::TUNNEL_BYTES);
    // Control frames are small and rare: a big buffer would be held by every idle tunnel.
    let mut buf = vec![0u8; 2 * 1024];
    let mut going_away = false;
    let mut spoke_went_away = false;

    let outcome: &str = loop {
        while let Some(bytes) = session.poll_transmit() {
            if send.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let mut stop = None;
        while let Some(event) = session.poll_event() {
            match event {
                Event::Established { peer_instance, .. } => {
                    let tunnel = Arc::new(Tunnel {
                        id: registry.next_id(),
                        cluster: cluster.clone(),
                        instance: peer_instance.unwrap_or_default(),
                        connection: connection.clone(),
                        issued,
                        client_version: session.peer_client_version().unwrap_or_default().to_string(),
                        described: Mutex::new(None),
                        streams_open: gauge!(m::STREAMS_OPEN, "cluster" => cluster.clone()),
                    });
                    let count = registry.insert(tunnel.clone());
                    gauge!(m::TUNNELS, "cluster" => cluster.clone()).set(count as f64);
                    counter!(m::TUNNEL_CONNECTS, "cluster" => cluster.clone()).increment(1);
                    info!(instance = %tunnel.instance, replicas = count, "tunnel up");
                    // A revocation that came after the handshake check is seen here if it came before this
                    // insert; otherwise `Revocations::enforce` sweeps the registry after it and finds this tunnel.
                    revocations.close_if_revoked(&tunnel);
                    registered = Some(tunnel);
                }
                Event::GoAway { reason } => {
                    info!(%reason, "spoke is going away");
                    spoke_went_away = true;
                    stop = Some("spoke went away");
                }
                Event::Dead => stop = Some("heartbeat lost"),
                Event::SpokeInfo { apiserver_version, ca_bundle } => {
                    if let Some(tunnel) = &registered {
                        debug!(%apiserver_version, "spoke described its cluster");
                        registry.describe(tunnel, Described { apiserver_version, ca_bundle });
                    }
                }
            }
        }
        if let Some(outcome) = stop {
            break outcome;
        }
        if registered.is_none() && Instant::now() >= hello_deadline {
            counter!(m::HANDSHAKE_FAILURES, "reason" => "hello_timeout").increment(1);
            break "no hello";
        }
        let far = Instant::now() + Duration::from_secs(3600);
        let mut wake = session.poll_timeout().unwrap_or(far);
        if registered.is_none() {
            wake = wake.min(hello_deadline);
        }
        tokio::select! {
            // Reads first: a spoke that says GoAway and closes at once has its GoAway read (it stays readable
            // after the close) before the close is seen, so its Lease says going-away rather than going stale.
            biased;
            read = recv.read(&mut buf) => match read {
                Ok(Some(n)) => {
                    if let Err(e) = session.handle_input(Instant::now(), &buf[..n]) {
                        warn!(error = %e, "control stream protocol error");
                        break close_for_protocol_error(&connection, &e);
                    }
                }
                Ok(None) | Err(_) => break "control stream closed",
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                session.handle_timeout(Instant::now());
                stats.sample(&connection);
            }
            _ = shutdown.cancelled(), if !going_away => {
                // Drain, don't drop: the spoke reconnects at once (to another replica behind the same address);
                // streams already open finish on this connection until the grace period ends.
                session.go_away("hub shutting down");
                going_away = true;
            }
            accepted = connection.accept_bi(), if registered.is_some() => match accepted {
                Ok((mut send, recv)) => match renewing.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let task = bootstrap.clone().renew(cluster.clone(), connection.clone(), send, recv, shutdown.clone());
                        tokio::spawn(async move {
                            task.await;
                            drop(permit);
                        }.in_current_span());
                    }
                    Err(_) => {
                        let _ = send.reset(code(Code::Busy));
                    }
                },
                Err(_) => break "connection closed",
            },
            _ = tokio::time::sleep_until(expiry.into()) => {
                counter!(m::TUNNELS_EXPIRED, "cluster" => cluster.clone()).increment(1);
                info!("client certificate expired: closing the tunnel");
                connection.close(code(Code::Expired), b"certificate expired");
                break "certificate expired";
            }
            reason = connection.closed() => {
                debug!(%reason, "connection closed");
                break "connection closed";
            }
        }
    };

    stats.sample(&connection);
    if let Some(tunnel) = registered {
        let left = registry.remove(&cluster, tunnel.id, spoke_went_away);
        gauge!(m::TUNNELS, "cluster" => cluster.clone()).set(left as f64);
        info!(%outcome, replicas_left = left, "tunnel down");
    }
    if spoke_went_away {
        // Out of the registry, so nothing new comes here; what is in flight finishes before the client closes.
        tokio::select! {
            _ = connection.closed() => {}
            _ = tokio::time::sleep_until(expiry.into()) => {
                connection.close(code(Code::Expired), b"certificate expired");
            }
            _ = shutdown.cancelled() => {}
        }
    } else if !matches!(outcome, "connection closed" | "certificate expired" | "protocol error" | "version mismatch")
        && !going_away
    {
        connection.close(code(Code::Normal), outcome.as_bytes());
    }
}

/// Closes a tunnel whose control stream broke the protocol: a Hello of another version with
/// [`Code::VersionMismatch`] and the hub's version (so the client can name both), anything else with
/// [`Code::ProtocolError`]. Returns the outcome to log.
fn close_for_protocol_error(connection: &quinn::Connection, error: &tether_proto::Error) -> &'static str {
    if let tether_proto::Error::VersionMismatch { ours, .. } = error {
        counter!(m::HANDSHAKE_FAILURES, "reason" => "version").increment(1);
        connection.close(code(Code::VersionMismatch), tether_proto::codes::version_reason(*ours).as_bytes());
        return "version mismatch";
    }
    counter!(m::HANDSHAKE_FAILURES, "reason" => "protocol").increment(1);
    connection.close(code(Code::ProtocolError), b"protocol error");
    "protocol error"
}
