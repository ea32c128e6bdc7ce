//! How a tunnel's serve loop ended, and what the hub does about it: whether the cluster's Lease says
//! going-away, whether the connection stays for the requests in flight, and which close code the spoke reads
//! (its dial loop decides from that code whether to redial, back off or stop). A pure decision, so that every
//! ending is tested here rather than in the loop.
use tether_proto::Code;

/// Why [`super::serve_tunnel`] stopped serving a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The spoke said GoAway (it shuts down, or moves to a renewed identity).
    SpokeWentAway,
    /// Nothing heard on the control stream within `dead_after`.
    HeartbeatLost,
    /// The control stream broke the protocol.
    ProtocolError,
    /// The spoke's Hello named another protocol version; `ours` is the hub's, for the close reason.
    VersionMismatch { ours: u16 },
    /// The spoke finished or reset its control stream.
    ControlStreamClosed,
    /// The connection went (closed by the spoke, or lost).
    ConnectionClosed,
    /// The client certificate's not-after passed.
    CertificateExpired,
    /// No control stream within the hello timeout.
    NoControlStream,
    /// A control stream but no Hello within the hello timeout.
    NoHello,
}

impl Outcome {
    /// The outcome of a control stream that broke the protocol.
    pub(crate) fn of_protocol_error(error: &tether_proto::Error) -> Self {
        match error {
            tether_proto::Error::VersionMismatch { ours, .. } => Outcome::VersionMismatch { ours: *ours },
            _ => Outcome::ProtocolError,
        }
    }

    /// For logs, and the reason of a [`Code::Normal`] close.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Outcome::SpokeWentAway => "spoke went away",
            Outcome::HeartbeatLost => "heartbeat lost",
            Outcome::ProtocolError => "protocol error",
            Outcome::VersionMismatch { .. } => "version mismatch",
            Outcome::ControlStreamClosed => "control stream closed",
            Outcome::ConnectionClosed => "connection closed",
            Outcome::CertificateExpired => "certificate expired",
            Outcome::NoControlStream => "no control stream",
            Outcome::NoHello => "no hello",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the hub does once a tunnel's loop ended with an [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct After {
    /// The registry removal marks the cluster going-away (its Lease says so at once) rather than leaving it
    /// to go stale: only when the spoke said it is leaving.
    pub went_away: bool,
    /// Keep the connection until the client closes it (or its certificate expires, or the hub shuts down), so
    /// that what is in flight on it finishes: out of the registry, nothing new comes.
    pub await_client_close: bool,
    /// Close the connection with this code and reason.
    pub close: Option<(Code, String)>,
    /// The `reason` label of a handshake failure to count.
    pub handshake_failure: Option<&'static str>,
}

/// The decision. `hub_going_away`: the hub already said GoAway (it is shutting down), and leaves closing to
/// the spoke, which reconnects elsewhere while the streams open here finish.
pub(crate) fn after(outcome: &Outcome, hub_going_away: bool) -> After {
    let mut after = After { went_away: false, await_client_close: false, close: None, handshake_failure: None };
    match outcome {
        Outcome::SpokeWentAway => {
            after.went_away = true;
            after.await_client_close = true;
        }
        // Gone already: there is nothing to close, and a local close would hide the spoke's own code.
        Outcome::ConnectionClosed => {}
        // Closed with its code whether or not the hub is going away: the spoke reads the code to decide
        // whether to redial (an expired certificate, or a protocol it cannot speak, will not get better).
        Outcome::CertificateExpired => after.close = Some((Code::Expired, outcome.as_str().into())),
        Outcome::ProtocolError => {
            after.close = Some((Code::ProtocolError, outcome.as_str().into()));
            after.handshake_failure = Some("protocol");
        }
        Outcome::VersionMismatch { ours } => {
            after.close = Some((Code::VersionMismatch, tether_proto::codes::version_reason(*ours)));
            after.handshake_failure = Some("version");
        }
        Outcome::NoControlStream => {
            after.close = Some((Code::NoControlStream, outcome.as_str().into()));
            after.handshake_failure = Some("hello_timeout");
        }
        Outcome::NoHello | Outcome::HeartbeatLost | Outcome::ControlStreamClosed => {
            if *outcome == Outcome::NoHello {
                after.handshake_failure = Some("hello_timeout");
            }
            if !hub_going_away {
                after.close = Some((Code::Normal, outcome.as_str().into()));
            }
        }
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(outcome: Outcome, hub_going_away: bool) -> Option<(Code, String)> {
        after(&outcome, hub_going_away).close
    }

    #[test]
    fn only_a_spoke_that_said_go_away_marks_its_lease_and_keeps_its_connection() {
        let went_away = after(&Outcome::SpokeWentAway, false);
        assert_eq!(
            went_away,
            After { went_away: true, await_client_close: true, close: None, handshake_failure: None }
        );
        assert_eq!(after(&Outcome::SpokeWentAway, true), went_away);
        for outcome in [
            Outcome::HeartbeatLost,
            Outcome::ProtocolError,
            Outcome::VersionMismatch { ours: 2 },
            Outcome::ControlStreamClosed,
            Outcome::ConnectionClosed,
            Outcome::CertificateExpired,
            Outcome::NoControlStream,
            Outcome::NoHello,
        ] {
            for going_away in [false, true] {
                let decided = after(&outcome, going_away);
                assert!(!decided.went_away && !decided.await_client_close, "{outcome}: {decided:?}");
            }
        }
    }

    #[test]
    fn close_codes_the_spoke_reads() {
        let code = |outcome| close(outcome, false).map(|(code, _)| code);
        assert_eq!(code(Outcome::CertificateExpired), Some(Code::Expired));
        assert_eq!(code(Outcome::ProtocolError), Some(Code::ProtocolError));
        assert_eq!(code(Outcome::NoControlStream), Some(Code::NoControlStream));
        assert_eq!(code(Outcome::ConnectionClosed), None);
        // The version mismatch names the hub's version, so that the client can name both.
        let (code, reason) = close(Outcome::VersionMismatch { ours: 2 }, false).unwrap();
        assert_eq!(code, Code::VersionMismatch);
        assert_eq!(tether_proto::codes::version_in_reason(reason.as_bytes()), Some(2));
        // The rest close normally, saying why.
        for outcome in [Outcome::HeartbeatLost, Outcome::ControlStreamClosed, Outcome::NoHello] {
            assert_eq!(close(outcome.clone(), false), Some((Code::Normal, outcome.as_str().into())));
        }
    }

    #[test]
    fn a_hub_going_away_leaves_normal_closes_to_the_spoke_but_not_refusals() {
        for outcome in [Outcome::HeartbeatLost, Outcome::ControlStreamClosed, Outcome::NoHello] {
            assert_eq!(close(outcome, true), None);
        }
        assert_eq!(close(Outcome::CertificateExpired, true).map(|(c, _)| c), Some(Code::Expired));
        assert_eq!(close(Outcome::ProtocolError, true).map(|(c, _)| c), Some(Code::ProtocolError));
        let mismatch = close(Outcome::VersionMismatch { ours: 2 }, true).map(|(c, _)| c);
        assert_eq!(mismatch, Some(Code::VersionMismatch));
    }

    #[test]
    fn handshake_failures_are_counted_by_reason() {
        let counted = |outcome| after(&outcome, false).handshake_failure;
        assert_eq!(counted(Outcome::NoHello), Some("hello_timeout"));
        assert_eq!(counted(Outcome::NoControlStream), Some("hello_timeout"));
        assert_eq!(counted(Outcome::ProtocolError), Some("protocol"));
        assert_eq!(counted(Outcome::VersionMismatch { ours: 2 }), Some("version"));
        for outcome in [Outcome::HeartbeatLost, Outcome::CertificateExpired, Outcome::SpokeWentAway] {
            assert_eq!(counted(outcome), None);
        }
    }

    #[test]
    fn a_hello_of_another_version_is_a_version_mismatch() {
        let mismatch = tether_proto::Error::VersionMismatch { ours: 2, theirs: 3 };
        assert_eq!(Outcome::of_protocol_error(&mismatch), Outcome::VersionMismatch { ours: 2 });
        assert_eq!(Outcome::of_protocol_error(&tether_proto::Error::EmptyFrame), Outcome::ProtocolError);
    }
}
