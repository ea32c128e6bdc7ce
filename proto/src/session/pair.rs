//! An in-memory client/hub pair on a simulated clock, after quinn-proto's test `Pair`.
//!
//! Each direction is a [`Link`] with a latency, a delivery chunk size and a switch that drops
//! everything (a peer that stopped answering). [`Pair::advance`] jumps the clock from one
//! wake-up (a session timeout or an arrival) to the next, so hours pass in milliseconds.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Event, Role, Session, SessionConfig};
use crate::{ControlMessage, Error, FrameDecoder, MAX_CONTROL_FRAME};

pub(super) const CLUSTER: &str = "prod-eu-1";
pub(super) const INSTANCE: &str = "tether-client-x7k2p";
pub(super) const CLIENT_VERSION: &str = "0.1.0";

/// One direction of the control stream.
pub(super) struct Link {
    pub latency: Duration,
    /// Largest piece handed to `handle_input` at once (1 = byte by byte).
    pub chunk: usize,
    /// While set, everything sent is lost.
    pub blocked: bool,
    in_flight: VecDeque<(Instant, Bytes)>,
    /// Every message delivered over the link, with its arrival time.
    pub log: Vec<(Instant, ControlMessage)>,
    decoder: FrameDecoder,
}

impl Link {
    fn new(latency: Duration) -> Self {
        Self {
            latency,
            chunk: usize::MAX,
            blocked: false,
            in_flight: VecDeque::new(),
            log: Vec::new(),
            decoder: FrameDecoder::new(MAX_CONTROL_FRAME),
        }
    }

    /// Messages delivered so far that match `pred`.
    pub fn count(&self, pred: impl Fn(&ControlMessage) -> bool) -> usize {
        self.log.iter().filter(|(_, m)| pred(m)).count()
    }
}

/// One tunnel end: its session, the events it reported and the error that closed it.
pub(super) struct End {
    pub session: Session,
    pub events: Vec<(Instant, Event)>,
    pub error: Option<Error>,
}

impl End {
    fn new(session: Session) -> Self {
        Self { session, events: Vec::new(), error: None }
    }

    /// The events without their times.
    pub fn event_kinds(&self) -> Vec<Event> {
        self.events.iter().map(|(_, e)| e.clone()).collect()
    }
}

pub(super) struct Pair {
    pub start: Instant,
    pub now: Instant,
    pub client: End,
    pub server: End,
    pub to_server: Link,
    pub to_client: Link,
}

impl Pair {
    /// Default configs, a hub heartbeat of 10 s and `latency` each way.
    pub fn new(latency: Duration) -> Self {
        let config = SessionConfig::default();
        Self::with(config.clone(), config, Duration::from_secs(10), latency)
    }

    pub fn with(
        client_config: SessionConfig,
        server_config: SessionConfig,
        hub_heartbeat: Duration,
        latency: Duration,
    ) -> Self {
        let start = Instant::now();
        let client = Role::Client { client_version: CLIENT_VERSION.into(), instance: INSTANCE.into() };
        let server = Role::Server { cluster: CLUSTER.into(), heartbeat_interval: hub_heartbeat };
        Self {
            start,
            now: start,
            client: End::new(Session::new(client, client_config, start)),
            server: End::new(Session::new(server, server_config, start)),
            to_server: Link::new(latency),
            to_client: Link::new(latency),
        }
    }

    /// Time since the pair was created.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Runs both ends at the current time until neither has anything left to do.
    pub fn drive(&mut self) {
        for _ in 0..10_000 {
            let now = self.now;
            let mut busy = step(now, &mut self.client, &mut self.to_server);
            busy |= step(now, &mut self.server, &mut self.to_client);
            busy |= deliver(now, &mut self.to_server, &mut self.server);
            busy |= deliver(now, &mut self.to_client, &mut self.client);
            if !busy {
                return;
            }
        }
        panic!("pair is still busy after 10000 rounds at {:?}", self.elapsed());
    }

    /// Moves the clock forward by `by`, waking each end whenever it asked to be woken.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            self.drive();
            match self.next_wakeup() {
                Some(at) if at <= end => self.now = self.now.max(at),
                _ => break,
            }
        }
        self.now = end;
        self.drive();
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let timeout = |end: &End| {
            if end.error.is_some() {
                None
            } else {
                end.session.poll_timeout()
            }
        };
        let arrival = |link: &Link| link.in_flight.front().map(|(at, _)| *at);
        [timeout(&self.client), timeout(&self.server), arrival(&self.to_server), arrival(&self.to_client)]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Fires a due timeout, collects transmits and events; true if anything happened.
fn step(now: Instant, end: &mut End, out: &mut Link) -> bool {
    if end.error.is_some() {
        return false;
    }
    let mut busy = false;
    if end.session.poll_timeout().is_some_and(|at| at <= now) {
        end.session.handle_timeout(now);
        busy = true;
    }
    while let Some(bytes) = end.session.poll_transmit() {
        if !out.blocked {
            out.in_flight.push_back((now + out.latency, bytes));
        }
        busy = true;
    }
    while let Some(event) = end.session.poll_event() {
        end.events.push((now, event));
        busy = true;
    }
    busy
}

/// Hands everything that has arrived by `now` to `end`; true if anything arrived.
fn deliver(now: Instant, link: &mut Link, end: &mut End) -> bool {
    let mut busy = false;
    while link.in_flight.front().is_some_and(|(at, _)| *at <= now) {
        let Some((_, bytes)) = link.in_flight.pop_front() else {
            break;
        };
        busy = true;
        link.decoder.push(&bytes);
        while let Ok(Some(message)) = link.decoder.next_message() {
            link.log.push((now, message));
        }
        for piece in bytes.chunks(link.chunk) {
            if end.error.is_none() {
                end.error = end.session.handle_input(now, piece).err();
            }
        }
    }
    busy
}
