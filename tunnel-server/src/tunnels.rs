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
mod outcome;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use metrics::{counter, gauge};
use rustls::pki_types::CertificateDer;
use tether_proto::{Code, Event, Role, Session, SessionConfig};
use tether_runtime::session::{Broken, Driver, Input};
use tether_runtime::transport::{code, ByteCounter, TransportSettings};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::bootstrap::Bootstrap;
use crate::metrics as m;
use crate::registry::{Described, Registry, Tunnel};
use crate::revocations::{self, Revocations};
use outcome::Outcome;

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
    let (send, recv) = match tokio::time::timeout(settings.hello_timeout, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => return tracing::debug!(error = %e, "connection closed before its control stream"),
        Err(_) => return end(&connection, &outcome::after(&Outcome::NoControlStream, false)),
    };
    let role = Role::Server { cluster: cluster.clone(), heartbeat_interval: settings.heartbeat_interval };
    let config = SessionConfig { heartbeat_interval: settings.heartbeat_interval, dead_after: settings.dead_after };
    // Control frames are small and rare: a big buffer would be held by every idle tunnel.
    let mut driver = Driver::new(Session::new(role, config, Instant::now()), send, recv, 2 * 1024);
    let mut tunnel = Serving {
        connection: &connection,
        cluster: &cluster,
        issued,
        expiry,
        registry: &registry,
        revocations: &revocations,
        bootstrap: &bootstrap,
        shutdown: &shutdown,
        hello_deadline: Instant::now() + settings.hello_timeout,
        registered: None,
        going_away: false,
        renewing: Arc::new(tokio::sync::Semaphore::new(1)),
    };
    let mut stats = ByteCounter::new(m::TUNNEL_BYTES);
    let outcome = tunnel.run(&mut driver, &mut stats).await;
    stats.sample(&connection);
    let after = outcome::after(&outcome, tunnel.going_away);
    if let Some(registered) = tunnel.registered {
        let left = registry.remove(&cluster, registered.id, after.went_away);
        gauge!(m::TUNNELS, "cluster" => cluster.clone()).set(left as f64);
        info!(%outcome, replicas_left = left, "tunnel down");
    }
    end(&connection, &after);
    if after.await_client_close {
        // Out of the registry, so nothing new comes here; what is in flight finishes before the client closes.
        tokio::select! {
            _ = connection.closed() => {}
            _ = tokio::time::sleep_until(expiry.into()) => {
                connection.close(code(Code::Expired), b"certificate expired");
            }
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Counts and closes as [`outcome::after`] decided.
fn end(connection: &quinn::Connection, after: &outcome::After) {
    if let Some(reason) = after.handshake_failure {
        counter!(m::HANDSHAKE_FAILURES, "reason" => reason).increment(1);
    }
    if let Some((close, reason)) = &after.close {
        connection.close(code(*close), reason.as_bytes());
    }
}

/// A tunnel being served: what its loop reads and changes besides the control stream.
struct Serving<'a> {
    connection: &'a quinn::Connection,
    cluster: &'a String,
    issued: SystemTime,
    expiry: Instant,
    registry: &'a Arc<Registry>,
    revocations: &'a Revocations,
    bootstrap: &'a Arc<Bootstrap>,
    shutdown: &'a CancellationToken,
    /// Until Hello: a tunnel must say it by then.
    hello_deadline: Instant,
    /// In the registry since its Hello.
    registered: Option<Arc<Tunnel>>,
    /// The hub said GoAway (it is shutting down) and waits for the spoke to leave.
    going_away: bool,
    /// One renewal at a time per tunnel.
    renewing: Arc<tokio::sync::Semaphore>,
}

impl Serving<'_> {
    /// Serves the control stream and the tunnel's renewal streams until the tunnel ends, and says why.
    async fn run(&mut self, driver: &mut Driver, stats: &mut ByteCounter) -> Outcome {
        loop {
            // A failed write shows as a closed control stream on the next read.
            let _ = driver.flush().await;
            while let Some(event) = driver.poll_event() {
                if let Some(outcome) = self.on_event(event, driver.session()) {
                    return outcome;
                }
            }
            let hello_deadline = self.registered.is_none().then_some(self.hello_deadline);
            if hello_deadline.is_some_and(|at| Instant::now() >= at) {
                return Outcome::NoHello;
            }
            tokio::select! {
                // Reads first: a spoke that says GoAway and closes at once has its GoAway read (it stays readable
                // after the close) before the close is seen, so its Lease says going-away rather than going stale.
                biased;
                input = driver.next(hello_deadline) => match input {
                    Ok(Input::Read) => {}
                    Ok(Input::Timeout) => stats.sample(self.connection),
                    Err(Broken::Protocol(e)) => {
                        warn!(error = %e, "control stream protocol error");
                        return Outcome::of_protocol_error(&e);
                    }
                    Err(Broken::Closed) => return Outcome::ControlStreamClosed,
                },
                _ = self.shutdown.cancelled(), if !self.going_away => {
                    // Drain, don't drop: the spoke reconnects at once (to another replica behind the same
                    // address); streams already open finish on this connection until the grace period ends.
                    driver.session_mut().go_away("hub shutting down");
                    self.going_away = true;
                }
                accepted = self.connection.accept_bi(), if self.registered.is_some() => match accepted {
                    Ok((send, recv)) => self.renew(send, recv),
                    Err(_) => return Outcome::ConnectionClosed,
                },
                _ = tokio::time::sleep_until(self.expiry.into()) => {
                    counter!(m::TUNNELS_EXPIRED, "cluster" => self.cluster.clone()).increment(1);
                    info!("client certificate expired: closing the tunnel");
                    return Outcome::CertificateExpired;
                }
                reason = self.connection.closed() => {
                    debug!(%reason, "connection closed");
                    return Outcome::ConnectionClosed;
                }
            }
        }
    }

    /// Acts on one event of the session; `Some` when it ends the tunnel.
    fn on_event(&mut self, event: Event, session: &Session) -> Option<Outcome> {
        match event {
            Event::Established { peer_instance, .. } => {
                let cluster = self.cluster;
                let tunnel = Arc::new(Tunnel {
                    id: self.registry.next_id(),
                    cluster: cluster.clone(),
                    instance: peer_instance.unwrap_or_default(),
                    connection: self.connection.clone(),
                    issued: self.issued,
                    client_version: session.peer_client_version().unwrap_or_default().to_string(),
                    described: Mutex::new(None),
                    streams_open: gauge!(m::STREAMS_OPEN, "cluster" => cluster.clone()),
                });
                let count = self.registry.insert(tunnel.clone());
                gauge!(m::TUNNELS, "cluster" => cluster.clone()).set(count as f64);
                counter!(m::TUNNEL_CONNECTS, "cluster" => cluster.clone()).increment(1);
                info!(instance = %tunnel.instance, replicas = count, "tunnel up");
                // A revocation that came after the handshake check is seen here if it came before this
                // insert; otherwise `Revocations::enforce` sweeps the registry after it and finds this tunnel.
                self.revocations.close_if_revoked(&tunnel);
                self.registered = Some(tunnel);
                None
            }
            Event::GoAway { reason } => {
                info!(%reason, "spoke is going away");
                Some(Outcome::SpokeWentAway)
            }
            Event::Dead => Some(Outcome::HeartbeatLost),
            Event::SpokeInfo { apiserver_version, ca_bundle } => {
                if let Some(tunnel) = &self.registered {
                    debug!(%apiserver_version, "spoke described its cluster");
                    self.registry.describe(tunnel, Described { apiserver_version, ca_bundle });
                }
                None
            }
        }
    }

    /// A stream the spoke opened after its control stream: a certificate renewal, one at a time.
    fn renew(&self, mut send: quinn::SendStream, recv: quinn::RecvStream) {
        match self.renewing.clone().try_acquire_owned() {
            Ok(permit) => {
                let task = self.bootstrap.clone().renew(
                    self.cluster.clone(),
                    self.connection.clone(),
                    send,
                    recv,
                    self.shutdown.clone(),
                );
                tokio::spawn(
                    async move {
                        task.await;
                        drop(permit);
                    }
                    .in_current_span(),
                );
            }
            Err(_) => {
                let _ = send.reset(code(Code::Busy));
            }
        }
    }
}
