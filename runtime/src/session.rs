//! The async driver of a [`tether_proto::Session`] over a QUIC control stream, shared by the hub, the client
//! and loadtest's simulated spoke. Every end drives the sans-IO session the same way: write what it polls
//! out, hand its events to the caller, sleep until its next timeout, feed what is read back in. Each caller
//! keeps only its own extra branches (accepting streams, renewal, retirement, shutdown, expiry) in a
//! `select!` next to [`Driver::next`].
use std::time::{Duration, Instant};

use tether_proto::{Event, Session};

/// How far ahead to sleep when the session wants no timeout (it is dead): a wake-up that only loops.
const FAR: Duration = Duration::from_secs(3600);

/// One session and the control stream it runs on.
pub struct Driver {
    session: Session,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: Box<[u8]>,
}

/// What [`Driver::next`] fed to the session: afterwards there may be bytes to [`Driver::flush`] and events to
/// [`Driver::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Bytes read from the control stream.
    Read,
    /// The session's timeout (or the caller's `wake_at`) passed and [`Session::handle_timeout`] ran.
    Timeout,
}

/// Why the control stream cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// The peer finished or reset the control stream, or the connection went.
    #[error("control stream closed")]
    Closed,
    /// The peer broke the protocol; the session returns the same error from now on.
    #[error("protocol error: {0}")]
    Protocol(tether_proto::Error),
}

impl Driver {
    /// Drives `session` on `send`/`recv`, reading up to `read_buffer` bytes at a time. The buffer lives as
    /// long as the tunnel, so an end holding thousands of idle tunnels wants it small: control frames are.
    pub fn new(session: Session, send: quinn::SendStream, recv: quinn::RecvStream, read_buffer: usize) -> Self {
        Self { session, send, recv, buf: vec![0u8; read_buffer.max(1)].into_boxed_slice() }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Writes everything the session has queued.
    pub async fn flush(&mut self) -> Result<(), quinn::WriteError> {
        while let Some(bytes) = self.session.poll_transmit() {
            self.send.write_all(&bytes).await?;
        }
        Ok(())
    }

    /// The session's next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.session.poll_event()
    }

    /// Waits for the next input, reads first, and feeds it to the session: bytes from the control stream, or
    /// the session's timeout (brought forward to `wake_at` when given, for a deadline of the caller's).
    ///
    /// Cancel-safe, so it can sit in a `select!`: nothing is lost when another branch wins, since a read is
    /// handed to the session in the same poll that completes it.
    pub async fn next(&mut self, wake_at: Option<Instant>) -> Result<Input, Broken> {
        let mut wake = self.session.poll_timeout().unwrap_or_else(|| Instant::now() + FAR);
        if let Some(at) = wake_at {
            wake = wake.min(at);
        }
        tokio::select! {
            biased;
            read = self.recv.read(&mut self.buf) => match read {
                Ok(Some(n)) => {
                    self.session.handle_input(Instant::now(), &self.buf[..n]).map_err(Broken::Protocol)?;
                    Ok(Input::Read)
                }
                Ok(None) | Err(_) => Err(Broken::Closed),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                self.session.handle_timeout(Instant::now());
                Ok(Input::Timeout)
            }
        }
    }

    /// Says GoAway, finishes the control stream and waits up to `wait` until the peer has received it:
    /// closing the connection before that would discard it. Errors are ignored, since the connection is going
    /// anyway.
    pub async fn say_go_away(&mut self, reason: &str, wait: Duration) {
        self.session.go_away(reason);
        let _ = self.flush().await;
        let _ = self.send.finish();
        let _ = tokio::time::timeout(wait, self.send.stopped()).await;
    }
}

#[cfg(test)]
mod tests {

    use tether_proto::{Role, SessionConfig};

    use super::*;

    /// A connection on loopback (both endpoints held by the pair) and its two ends.
    async fn pair() -> (crate::testing::LoopbackPair, quinn::Connection, quinn::Connection) {
        let pair = crate::testing::loopback_pair(b"test").await;
        let (dialed, accepted) = (pair.dialer.clone(), pair.acceptor.clone());
        (pair, dialed, accepted)
    }

    /// Long enough that a loaded machine does not stall past it, short enough for a test that outlives it.
    const DEAD_AFTER: Duration = Duration::from_millis(500);

    fn config() -> SessionConfig {
        SessionConfig { heartbeat_interval: Duration::from_millis(20), dead_after: DEAD_AFTER }
    }

    /// Drives `driver` until an event comes, or the control stream breaks.
    async fn event(driver: &mut Driver) -> Result<Event, Broken> {
        loop {
            driver.flush().await.map_err(|_| Broken::Closed)?;
            if let Some(event) = driver.poll_event() {
                return Ok(event);
            }
            driver.next(None).await?;
        }
    }

    /// A client driver that has written its Hello, and the hub driver of the control stream it opened.
    async fn drivers() -> (crate::testing::LoopbackPair, Driver, Driver) {
        let (pair, dialed, accepted) = pair().await;
        let role = Role::Client { client_version: "test".into(), instance: "a".into() };
        let (send, recv) = dialed.open_bi().await.unwrap();
        let mut client = Driver::new(Session::new(role, config(), Instant::now()), send, recv, 64);
        // The hub sees the stream once the client's Hello is written on it.
        client.flush().await.unwrap();
        let (send, recv) = accepted.accept_bi().await.unwrap();
        let role = Role::Server { cluster: "spoke-a".into(), heartbeat_interval: Duration::from_millis(20) };
        let hub = Driver::new(Session::new(role, config(), Instant::now()), send, recv, 64);
        (pair, client, hub)
    }

    #[tokio::test]
    async fn both_ends_handshake_heartbeat_and_see_go_away_and_close() {
        let (_pair, mut client, mut hub) = drivers().await;

        let deadline = Duration::from_secs(10);
        let (at_client, at_hub) =
            tokio::time::timeout(deadline, async { tokio::join!(event(&mut client), event(&mut hub)) }).await.unwrap();
        assert!(
            matches!(at_client, Ok(Event::Established { ref cluster, .. }) if cluster == "spoke-a"),
            "{at_client:?}"
        );
        assert!(matches!(at_hub, Ok(Event::Established { peer_instance: Some(ref i), .. }) if i == "a"), "{at_hub:?}");

        // Heartbeats flow both ways (timeouts send Pings, what is read is fed in): for several times
        // `dead_after`, neither end declares the other dead. Then a GoAway reaches the hub.
        let heartbeats = async {
            let until = Instant::now() + DEAD_AFTER * 4;
            while Instant::now() < until {
                client.flush().await.unwrap();
                assert_eq!(client.poll_event(), None);
                client.next(Some(until)).await.unwrap();
            }
            client.say_go_away("moving", Duration::from_secs(1)).await;
        };
        let (_, at_hub) =
            tokio::time::timeout(deadline, async { tokio::join!(heartbeats, event(&mut hub)) }).await.unwrap();
        assert_eq!(at_hub, Ok(Event::GoAway { reason: "moving".into() }));
        // The client finished its side: the hub reads the end of the stream.
        let closed = tokio::time::timeout(deadline, event(&mut hub)).await.unwrap();
        assert_eq!(closed, Err(Broken::Closed));
    }

    #[tokio::test]
    async fn a_peer_that_falls_silent_is_declared_dead() {
        // The client says Hello, then is never driven again: no Pings, no Pongs.
        let (_pair, _client, mut hub) = drivers().await;
        let deadline = Duration::from_secs(10);
        let established = tokio::time::timeout(deadline, event(&mut hub)).await.unwrap();
        assert!(matches!(established, Ok(Event::Established { .. })), "{established:?}");
        let started = Instant::now();
        assert_eq!(tokio::time::timeout(deadline, event(&mut hub)).await.unwrap(), Ok(Event::Dead));
        assert!(started.elapsed() >= DEAD_AFTER / 2, "dead after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn bytes_that_break_the_protocol_are_a_protocol_error() {
        let (_hub, dialed, accepted) = pair().await;
        let (mut send, _recv) = dialed.open_bi().await.unwrap();
        // A frame header declaring far more than a control frame may hold.
        send.write_all(&[0xff; 16]).await.unwrap();
        let (send, recv) = accepted.accept_bi().await.unwrap();
        let role = Role::Server { cluster: "spoke-a".into(), heartbeat_interval: Duration::from_secs(10) };
        let mut hub = Driver::new(Session::new(role, config(), Instant::now()), send, recv, 64);
        let broken = tokio::time::timeout(Duration::from_secs(10), event(&mut hub)).await.unwrap();
        assert!(matches!(broken, Err(Broken::Protocol(_))), "{broken:?}");
    }
}
