//! The control-stream state machine, one per tunnel end.
//!
//! Sans-IO in the style of quinn-proto: the caller feeds received bytes and timeouts in with
//! `now`, and polls bytes to write, the next timeout and events out. The session never reads a
//! clock and never blocks.
//!
//! The client queues Hello at creation; the hub answers Welcome, naming the cluster it
//! verified from the client certificate (never anything the Hello says) and the heartbeat
//! interval. From then on both ends send Ping every interval and answer Ping with Pong. Any
//! received byte counts as a sign of life; a session that hears nothing for `dead_after`
//! (during the handshake too) reports [`Event::Dead`] once and stops.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::control::{ControlMessage, FrameDecoder, MAX_PEM_LEN, MAX_STRING_LEN};
use crate::{Error, Result, MAX_CONTROL_FRAME, PROTOCOL_VERSION};

/// Shortest heartbeat interval a session uses, whatever it is configured or told.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1);

/// Which end of the tunnel this session is.
#[derive(Debug, Clone)]
pub enum Role {
    /// The spoke's tunnel-client.
    Client { client_version: String, instance: String },
    /// The hub's tunnel-server, serving the cluster named by the peer's verified certificate.
    Server { cluster: String, heartbeat_interval: Duration },
}

/// Timing of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The client's interval when Welcome leaves it open (0 ms), the hub's when its
    /// [`Role::Server`] interval is zero.
    pub heartbeat_interval: Duration,
    /// Nothing received for this long means the peer is dead. Once established it is raised
    /// to at least twice the heartbeat interval, so a hub asking for slow heartbeats cannot
    /// make its clients flap.
    pub dead_after: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { heartbeat_interval: Duration::from_secs(10), dead_after: Duration::from_secs(30) }
    }
}

/// Something the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake finished. The client learns the cluster from Welcome; the hub reports the
    /// cluster of its role and the instance the client named.
    Established { cluster: String, peer_version: u16, peer_instance: Option<String> },
    /// The peer asked us to move (a client reconnects at once, to another replica).
    GoAway { reason: String },
    /// Nothing received within `dead_after`: close the tunnel.
    Dead,
    /// The client described its cluster (hub side only).
    SpokeInfo { apiserver_version: String, ca_bundle: String },
}

/// One end of a control stream.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: SessionConfig,
    established: bool,
    dead: bool,
    failed: Option<Error>,
    decoder: FrameDecoder,
    transmit: BytesMut,
    events: VecDeque<Event>,
    heartbeat_interval: Duration,
    last_received: Instant,
    next_ping: Option<Instant>,
    next_ping_seq: u64,
    /// A hub's GoAway requested before the handshake, sent right after Welcome.
    pending_go_away: Option<String>,
    peer_client_version: Option<String>,
}

impl Session {
    /// A new session; a client queues its Hello immediately.
    pub fn new(role: Role, config: SessionConfig, now: Instant) -> Self {
        let heartbeat_interval = match &role {
            Role::Server { heartbeat_interval, .. } if !heartbeat_interval.is_zero() => *heartbeat_interval,
            _ => config.heartbeat_interval,
        };
        let mut session = Self {
            heartbeat_interval: heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL),
            role,
            config,
            established: false,
            dead: false,
            failed: None,
            decoder: FrameDecoder::new(MAX_CONTROL_FRAME),
            transmit: BytesMut::new(),
            events: VecDeque::new(),
            last_received: now,
            next_ping: None,
            next_ping_seq: 0,
            pending_go_away: None,
            peer_client_version: None,
        };
        if let Role::Client { client_version, instance } = &session.role {
            let hello = ControlMessage::Hello {
                version: PROTOCOL_VERSION,
                client_version: client_version.clone(),
                instance: instance.clone(),
            };
            hello.encode(&mut session.transmit);
        }
        session
    }

    /// Feeds bytes read from the control stream.
    ///
    /// `Err` is a protocol violation (version mismatch, unexpected message, bad frame): close
    /// the tunnel with the error's text. Every later call returns the same error.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<()> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.last_received = self.last_received.max(now);
        self.decoder.push(bytes);
        loop {
            let step = self.decoder.next_message().and_then(|message| match message {
                Some(message) => self.on_message(now, message).map(|()| true),
                None => Ok(false),
            });
            match step {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(error) => {
                    self.failed = Some(error.clone());
                    return Err(error);
                }
            }
        }
    }

    /// Sends a Ping when one is due and reports [`Event::Dead`] when the peer is overdue.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        if self.dead_at().is_some_and(|at| now >= at) {
            self.dead = true;
            self.next_ping = None;
            self.events.push_back(Event::Dead);
            return;
        }
        if self.next_ping.is_some_and(|at| now >= at) {
            self.queue(&ControlMessage::Ping { seq: self.next_ping_seq });
            self.next_ping_seq = self.next_ping_seq.wrapping_add(1);
            self.next_ping = now.checked_add(self.heartbeat_interval);
        }
    }

    /// When to call [`Session::handle_timeout`] next; `None` once dead.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.dead {
            return None;
        }
        match (self.next_ping, self.dead_at()) {
            (Some(ping), Some(dead)) => Some(ping.min(dead)),
            (ping, dead) => ping.or(dead),
        }
    }

    /// Bytes to write on the control stream.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.transmit.is_empty() {
            None
        } else {
            Some(self.transmit.split().freeze())
        }
    }

    /// Next event for the caller.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues a GoAway to the peer. The reason is cut to [`MAX_STRING_LEN`] bytes. A hub that
    /// has not welcomed its client yet sends it right after Welcome, since a client rejects
    /// anything before Welcome.
    pub fn go_away(&mut self, reason: &str) {
        let reason = truncate(reason, MAX_STRING_LEN).to_owned();
        if !self.established && matches!(self.role, Role::Server { .. }) {
            self.pending_go_away = Some(reason);
        } else {
            self.queue(&ControlMessage::GoAway { reason });
        }
    }

    /// Queues the spoke's description for the hub (client side; ignored on the hub). It may be sent at any
    /// time, also before Welcome: the hub reads it after Hello. A version over [`MAX_STRING_LEN`] is cut; a
    /// CA bundle over [`MAX_PEM_LEN`] is sent empty (unknown), since a cut PEM would be wrong.
    pub fn send_spoke_info(&mut self, apiserver_version: &str, ca_bundle: &str) {
        if matches!(self.role, Role::Server { .. }) {
            return;
        }
        let ca_bundle = if ca_bundle.len() > MAX_PEM_LEN { "" } else { ca_bundle };
        self.queue(&ControlMessage::SpokeInfo {
            apiserver_version: truncate(apiserver_version, MAX_STRING_LEN).to_owned(),
            ca_bundle: ca_bundle.to_owned(),
        });
    }

    /// Whether the handshake has finished.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Whether [`Event::Dead`] has been reported.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The heartbeat interval in use (for a client, the configured one until Welcome).
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// The software version a client named in its Hello (hub side only).
    pub fn peer_client_version(&self) -> Option<&str> {
        self.peer_client_version.as_deref()
    }

    fn on_message(&mut self, now: Instant, message: ControlMessage) -> Result<()> {
        match (&self.role, message) {
            (Role::Server { cluster, .. }, ControlMessage::Hello { version, client_version, instance })
                if !self.established =>
            {
                let cluster = cluster.clone();
                check_version(version)?;
                self.peer_client_version = Some(client_version);
                let heartbeat_interval_ms = u32::try_from(self.heartbeat_interval.as_millis()).unwrap_or(u32::MAX);
                self.queue(&ControlMessage::Welcome {
                    version: PROTOCOL_VERSION,
                    cluster: cluster.clone(),
                    heartbeat_interval_ms,
                });
                self.establish(now, cluster, version, Some(instance));
                if let Some(reason) = self.pending_go_away.take() {
                    self.queue(&ControlMessage::GoAway { reason });
                }
            }
            (Role::Client { .. }, ControlMessage::Welcome { version, cluster, heartbeat_interval_ms })
                if !self.established =>
            {
                check_version(version)?;
                if heartbeat_interval_ms != 0 {
                    let interval = Duration::from_millis(u64::from(heartbeat_interval_ms));
                    self.heartbeat_interval = interval.max(MIN_HEARTBEAT_INTERVAL);
                }
                self.establish(now, cluster, version, None);
            }
            (_, ControlMessage::Ping { seq }) if self.established => {
                self.queue(&ControlMessage::Pong { seq });
            }
            (_, ControlMessage::Pong { .. }) if self.established => {}
            (_, ControlMessage::GoAway { reason }) if self.established => {
                self.events.push_back(Event::GoAway { reason });
            }
            (Role::Server { .. }, ControlMessage::SpokeInfo { apiserver_version, ca_bundle }) if self.established => {
                self.events.push_back(Event::SpokeInfo { apiserver_version, ca_bundle });
            }
            (role, other) => {
                let state = match (role, &other) {
                    (Role::Server { .. }, ControlMessage::Welcome { .. }) => "sent to the hub",
                    (Role::Client { .. }, ControlMessage::Hello { .. }) => "sent to the client",
                    _ if self.established => "after the handshake",
                    (Role::Server { .. }, _) => "before Hello",
                    (Role::Client { .. }, _) => "before Welcome",
                };
                return Err(Error::UnexpectedMessage { message: other.name(), state });
            }
        }
        Ok(())
    }

    fn establish(&mut self, now: Instant, cluster: String, peer_version: u16, peer: Option<String>) {
        self.established = true;
        self.next_ping = now.checked_add(self.heartbeat_interval);
        self.events.push_back(Event::Established { cluster, peer_version, peer_instance: peer });
    }

    fn queue(&mut self, message: &ControlMessage) {
        message.encode(&mut self.transmit);
    }

    /// `None` when the deadline is beyond what `Instant` can represent.
    fn dead_at(&self) -> Option<Instant> {
        let mut dead_after = self.config.dead_after;
        if self.established {
            dead_after = dead_after.max(self.heartbeat_interval.saturating_mul(2));
        }
        self.last_received.checked_add(dead_after)
    }
}

fn check_version(theirs: u16) -> Result<()> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs })
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod pair;
#[cfg(test)]
mod tests;
