//! The dial loop as a small state machine: dial (after the wait the last ending called for), serve the
//! tunnel, and on its end decide from how it ended, and the hub's close code, whether to dial again at once,
//! after a backoff, or to stop. A tunnel that renewed its identity serves on while its successor is dialled
//! with the new one.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::metrics::counter;
use tether_proto::Backoff;
use tether_runtime::ops::Readiness;
use tether_runtime::transport::TransportSettings;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::identity::{Identity, Store};
use crate::metrics as m;
use crate::reaction::{self, Closed, Reaction, Stop};
use crate::tunnel::{self, Ended, Report};
use crate::{dial, quic_client_config, renewal, request, Config, DialError, Error, Result};

/// Where the dial loop is. Each state carries the identity it dials or serves with, so that no state can be
/// reached without one (before, an `Option` and an `expect` stood for "loaded or bootstrapped").
enum State {
    /// Waiting as the last ending called for, then dialling.
    Dialing { identity: Identity, wait: Wait },
    /// A tunnel is up, or coming up.
    Serving { identity: Identity, tunnel: Serving },
    /// The serving tunnel committed a renewed identity. It serves on (retiring) until its successor is up.
    Renewed { old: Identity, retire: CancellationToken },
    /// Shut down (`Ok`), or the hub said that redialling cannot help.
    Stopped(Result<()>),
}

/// A running tunnel, as the dial loop sees it.
struct Serving {
    connection: quinn::Connection,
    task: JoinHandle<Ended>,
    reports: mpsc::UnboundedReceiver<Report>,
    /// Cancelled to retire the tunnel once a successor with a renewed identity is up.
    retire: CancellationToken,
    /// Its Welcome arrived: once it ends, the backoff starts over.
    established: bool,
}

/// How long to wait before the next dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    Now,
    /// The usual jittered exponential backoff.
    Backoff,
    /// The hub is at a limit: [`reaction::limited_delay`] of its hint.
    Limited(Option<Duration>),
}

/// What every state of the loop works with.
pub(crate) struct DialLoop<'a> {
    pub config: &'a Config,
    pub server_name: &'a str,
    pub transport: &'a TransportSettings,
    pub store: Arc<Store>,
    pub params: Arc<tunnel::Params>,
    pub readiness: Readiness,
    /// Written to the ready file.
    pub ops_addr: SocketAddr,
    pub shutdown: CancellationToken,
    /// The endpoint every dial goes out on; `None` makes the next dial bind a new one.
    pub endpoint: &'a mut Option<quinn::Endpoint>,
    pub backoff: Backoff,
    /// The tunnel that renewed its identity, still serving until its successor is up.
    pub retiring: Option<CancellationToken>,
}

impl DialLoop<'_> {
    /// Runs until `shutdown`, or until the hub says that redialling cannot help.
    pub async fn run(mut self, identity: Identity) -> Result<()> {
        let mut state = State::Dialing { identity, wait: Wait::Now };
        loop {
            state = match state {
                State::Dialing { identity, wait } => self.dial(identity, wait).await,
                State::Serving { identity, tunnel } => self.serve(identity, tunnel).await,
                State::Renewed { old, retire } => self.renewed(old, retire).await,
                State::Stopped(result) => return result,
            };
        }
    }

    async fn dial(&mut self, identity: Identity, wait: Wait) -> State {
        if self.shutdown.is_cancelled() {
            return State::Stopped(Ok(()));
        }
        let delay = match wait {
            Wait::Now => None,
            Wait::Backoff => Some(self.backoff.next_delay(rand::random::<f64>())),
            Wait::Limited(hint) => Some(reaction::limited_delay(hint, rand::random::<f64>())),
        };
        if let Some(delay) = delay {
            tracing::info!(delay_ms = delay.as_millis() as u64, attempt = self.backoff.attempt(), "reconnecting");
            tokio::select! {
                _ = self.shutdown.cancelled() => return State::Stopped(Ok(())),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let dialed = match quic_client_config(self.config, &identity, self.transport) {
            Ok(client_config) => dial(self.config, self.server_name, self.endpoint, client_config).await,
            Err(e) => Err(DialError::Config(Box::new(e))),
        };
        let connection = match dialed {
            Ok(c) => c,
            Err(e) => {
                counter!(m::HANDSHAKE_FAILURES).increment(1);
                counter!(m::RECONNECTS, "cause" => "failed").increment(1);
                tracing::warn!(hub = %self.config.hub, reason = %e, "dial failed");
                return self.after_hub_closed(e.closed(), identity).await;
            }
        };
        match self.start(&connection, &identity) {
            Ok(tunnel) => State::Serving { identity, tunnel },
            Err(e) => State::Stopped(Err(e)),
        }
    }

    /// Spawns the tunnel of a new connection, with the renewal of `identity` alongside.
    fn start(&self, connection: &quinn::Connection, identity: &Identity) -> Result<Serving> {
        let cluster = request::cluster_of(identity)?;
        let expires = renewal::expiry(identity)?;
        let renewal = {
            let (connection, store, current) = (connection.clone(), self.store.clone(), identity.clone());
            let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_cap);
            let shutdown = self.shutdown.clone();
            Box::pin(async move {
                renewal::renew(connection, &store, &current, &cluster, backoff, &shutdown).await;
            })
        };
        let retire = CancellationToken::new();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let span = tracing::info_span!("tunnel", hub = %self.config.hub);
        let task = tokio::spawn(
            tunnel::serve(
                connection.clone(),
                self.params.clone(),
                Some(renewal),
                retire.clone(),
                tether_runtime::instant_of(expires),
                self.shutdown.clone(),
                reports_tx,
            )
            .instrument(span),
        );
        Ok(Serving { connection: connection.clone(), task, reports, retire, established: false })
    }

    async fn serve(&mut self, identity: Identity, mut tunnel: Serving) -> State {
        let ended = loop {
            tokio::select! {
                report = tunnel.reports.recv() => match report {
                    Some(Report::Up { cluster }) => {
                        tunnel.established = true;
                        self.up(&cluster);
                    }
                    // The tunnel task goes on (detached) until its successor is up and retires it.
                    Some(Report::Renewed) => return State::Renewed { old: identity, retire: tunnel.retire },
                    None => {}
                },
                ended = &mut tunnel.task => {
                    break ended.unwrap_or_else(|e| Ended::Lost(format!("tunnel task: {e}")));
                }
            }
        };
        self.readiness.set(false);
        if tunnel.established {
            self.backoff.reset();
        }
        match after_tunnel(ended) {
            AfterTunnel::Stop => State::Stopped(Ok(())),
            AfterTunnel::MoveNow => {
                counter!(m::RECONNECTS, "cause" => "go_away").increment(1);
                // A new endpoint gets a new UDP port: the hub (or its load balancer) sees a new flow.
                *self.endpoint = None;
                State::Dialing { identity, wait: Wait::Now }
            }
            AfterTunnel::AskTheHub { reason } => {
                counter!(m::RECONNECTS, "cause" => "lost").increment(1);
                tracing::warn!(%reason, "tunnel lost");
                let closed = tunnel.connection.close_reason().map_or(Closed::Lost, |e| reaction::closed(&e));
                self.after_hub_closed(closed, identity).await
            }
        }
    }

    /// A tunnel's Welcome arrived: ready, the renewed-away tunnel (if any) retires, the ready file is written.
    fn up(&mut self, cluster: &str) {
        self.readiness.set(true);
        if let Some(old) = self.retiring.take() {
            // The successor is up: the renewed-away tunnel says GoAway and drains.
            old.cancel();
        }
        if let Some(path) = &self.config.ready_file {
            let json = serde_json::json!({ "cluster": cluster, "ops": self.ops_addr.to_string() });
            if let Err(e) = std::fs::write(path, json.to_string()) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the ready file");
            }
        }
    }

    /// Dials at once with the renewed identity, while the old tunnel serves on until the new one is up.
    async fn renewed(&mut self, old: Identity, retire: CancellationToken) -> State {
        let identity = match self.store.load().await {
            Ok(Some(new)) => new,
            Ok(None) => {
                tracing::warn!("the renewed identity vanished from the store; keeping the old one");
                old
            }
            Err(e) => return State::Stopped(Err(e)),
        };
        self.retiring = Some(retire);
        State::Dialing { identity, wait: Wait::Now }
    }

    async fn after_hub_closed(&self, closed: Closed, mut identity: Identity) -> State {
        match after_hub_closed(closed, &self.store, &mut identity).await {
            Ok(wait) => State::Dialing { identity, wait },
            Err(stop) => State::Stopped(Err(stop)),
        }
    }
}

/// What the end of a tunnel calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AfterTunnel {
    /// Shut down, or retired by its successor: nothing to dial.
    Stop,
    /// The hub asked us to move: dial again at once, from a new UDP port.
    MoveNow,
    /// Lost, for `reason`: the hub's close code, if it gave one, decides ([`after_hub_closed`]).
    AskTheHub { reason: String },
}

fn after_tunnel(ended: Ended) -> AfterTunnel {
    match ended {
        Ended::Shutdown | Ended::Retired => AfterTunnel::Stop,
        Ended::GoAway => AfterTunnel::MoveNow,
        Ended::Lost(reason) => AfterTunnel::AskTheHub { reason },
    }
}

/// What the dial loop does after the hub said `closed`: the wait before the next dial, or the error to stop
/// with. An expired certificate is first looked for anew in the store, where another client sharing the
/// identity may have put a renewed one.
pub(crate) async fn after_hub_closed(closed: Closed, store: &Store, identity: &mut Identity) -> Result<Wait> {
    match reaction::reaction(&closed) {
        Reaction::Retry => Ok(Wait::Backoff),
        Reaction::BackOff(hint) => {
            tracing::warn!(?closed, "the hub is at a limit: backing off longer");
            Ok(Wait::Limited(hint))
        }
        Reaction::Stop(Stop::Revoked) => Err(Error::Revoked { cluster: request::cluster_of(identity)? }),
        Reaction::Stop(Stop::VersionMismatch { hub }) => Err(Error::VersionMismatch {
            hub: hub.map_or_else(
                || format!("another protocol (it refused ALPN {})", String::from_utf8_lossy(tether_proto::ALPN)),
                |v| format!("tether/{v}"),
            ),
            ours: format!("tether/{}", tether_proto::PROTOCOL_VERSION),
        }),
        Reaction::Stop(Stop::Expired) => {
            if let Some(stored) = store.load().await? {
                let newer = renewal::not_after(&stored)? > renewal::not_after(identity)?;
                if newer {
                    tracing::info!("the certificate expired, but the store holds a newer one: dialling with it");
                    *identity = stored;
                    return Ok(Wait::Now);
                }
            }
            let not_after = renewal::not_after(identity)?;
            let not_after =
                k8s_openapi::jiff::Timestamp::try_from(not_after).map_or_else(|_| "?".into(), |t| t.to_string());
            Err(Error::Expired { not_after })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::identity::FileStore;
    use tether_proto::Code;

    fn identity(ca: &tether_certs::CertificateAuthority, life: Duration) -> Identity {
        let (key_pem, csr) = tether_certs::spoke_key_and_csr("spoke-a").unwrap();
        let cert_pem = ca.sign_spoke_csr(&csr, "spoke-a", SystemTime::now(), life).unwrap();
        Identity { cert_pem, key_pem }
    }

    fn said(code: Code) -> Closed {
        Closed::Code { code, hub_version: None, retry_in: None }
    }

    #[test]
    fn what_the_dial_loop_does_after_each_tunnel_end() {
        assert_eq!(after_tunnel(Ended::Shutdown), AfterTunnel::Stop);
        assert_eq!(after_tunnel(Ended::Retired), AfterTunnel::Stop);
        assert_eq!(after_tunnel(Ended::GoAway), AfterTunnel::MoveNow);
        let lost = after_tunnel(Ended::Lost("heartbeat lost".into()));
        assert_eq!(lost, AfterTunnel::AskTheHub { reason: "heartbeat lost".into() });
    }

    #[tokio::test]
    async fn what_the_dial_loop_does_after_each_close() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileStore::new(&dir.path().join("tls.key"), &dir.path().join("tls.crt"));
        let store = Store::Files(files.clone());
        let day = Duration::from_secs(86_400);
        let ca = tether_certs::CertificateAuthority::generate("ca", SystemTime::now(), day).unwrap();
        let mut current = identity(&ca, Duration::from_secs(60));
        let save = |identity: &Identity| {
            std::fs::write(&files.cert, &identity.cert_pem).unwrap();
            std::fs::write(&files.key, &identity.key_pem).unwrap();
        };
        save(&current);

        assert_eq!(after_hub_closed(Closed::Lost, &store, &mut current).await.unwrap(), Wait::Backoff);
        assert_eq!(after_hub_closed(said(Code::Abandoned), &store, &mut current).await.unwrap(), Wait::Backoff);
        let hint = Closed::Code { code: Code::RateLimited, hub_version: None, retry_in: Some(Duration::from_secs(6)) };
        let waited = after_hub_closed(hint, &store, &mut current).await.unwrap();
        assert_eq!(waited, Wait::Limited(Some(Duration::from_secs(6))));

        let revoked = after_hub_closed(said(Code::Revoked), &store, &mut current).await.unwrap_err().to_string();
        assert!(revoked.contains("revoked this spoke's certificate (cluster spoke-a)"), "{revoked}");
        let mismatch = Closed::Code { code: Code::VersionMismatch, hub_version: Some(3), retry_in: None };
        let mismatch = after_hub_closed(mismatch, &store, &mut current).await.unwrap_err().to_string();
        assert!(mismatch.contains("the hub speaks tether/3, this client speaks tether/2"), "{mismatch}");

        // Expired, and the store holds nothing newer: stop, saying so.
        let expired = after_hub_closed(said(Code::Expired), &store, &mut current).await.unwrap_err().to_string();
        assert!(expired.contains("expired"), "{expired}");
        // Expired, but another client sharing the store renewed it: dial at once with that one.
        let renewed = identity(&ca, day);
        save(&renewed);
        assert_eq!(after_hub_closed(said(Code::Expired), &store, &mut current).await.unwrap(), Wait::Now);
        assert_eq!(current, renewed);
    }
}
