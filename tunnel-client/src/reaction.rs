//! What the client does when the hub ends a connection or a stream. The hub says why with a
//! [`tether_proto::Code`] (or, during the handshake, a TLS alert); [`reaction`] turns that into the next
//! step of the dial loop, the bootstrap loop or a renewal, as a pure function:
//!
//! | the hub said | the client |
//! |---|---|
//! | [`Code::Revoked`] | stops: exits with an error saying the hub revoked this spoke's certificate |
//! | [`Code::Expired`], TLS alert `certificate_expired` | reloads its identity (another client sharing it may have renewed it); stops if that one is no newer |
//! | [`Code::VersionMismatch`] (the reason names the hub's version), TLS alert `no_application_protocol` | stops, naming both versions |
//! | [`Code::RateLimited`], [`Code::Busy`] | waits as long as the hub's hint says (up to half again, at random), or without one [`LIMITED_DELAY`] to twice that |
//! | anything else (a go-away is seen on the control stream, not here) | dials again with the usual backoff |
//!
//! Why stop rather than stay up unready: in a DaemonSet an exit shows as `CrashLoopBackOff` with the reason
//! in the Pod's last log lines, and the kubelet's restart backoff (up to 5 minutes) bounds what the hub
//! sees to one handshake per Pod and 5 minutes. A restarted Pod picks up whatever changed meanwhile (the
//! revocation lifted, the hub upgraded, a renewed identity in the shared Secret). A Pod that stayed up
//! would need a redial schedule of its own to notice any of that, and would look Running to everyone.
use std::time::Duration;

use tether_proto::Code;

/// The shortest wait after the hub said it is at a limit ([`Code::RateLimited`], [`Code::Busy`]) without
/// saying for how long: far above the usual first backoff, so that clients turned away do not come back at
/// once, all together.
pub const LIMITED_DELAY: Duration = Duration::from_secs(30);
/// The longest wait a hint of the hub is followed for.
pub const MAX_HINT: Duration = Duration::from_secs(600);

/// TLS alerts (RFC 8446) the hub's handshake may end with, carried as QUIC crypto errors `0x100 + alert`.
const ALERT_CERTIFICATE_REVOKED: u8 = 44;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

/// Why the hub ended a connection or stream, as far as the client can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A code of tether's table; the hub's protocol version and when to try again, where the reason says.
    Code { code: Code, hub_version: Option<u16>, retry_in: Option<Duration> },
    /// The hub ended the TLS handshake with this alert.
    TlsAlert(u8),
    /// Nothing the hub said: a timeout, a network error, a local error, a code this build does not know.
    Lost,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaction {
    /// Try again after the usual backoff.
    Retry,
    /// Try again after [`limited_delay`] of the hub's hint.
    BackOff(Option<Duration>),
    /// Trying again cannot help.
    Stop(Stop),
}

/// Why a client stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The hub revoked this spoke's certificate (its cluster was unregistered).
    Revoked,
    /// The certificate expired (or is not valid yet, by the hub's clock).
    Expired,
    /// The hub speaks another protocol version; `None` when it did not say which (ALPN refused).
    VersionMismatch { hub: Option<u16> },
}

/// What the hub said by closing a connection.
pub fn closed(error: &quinn::ConnectionError) -> Closed {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => match Code::try_from(close.error_code.into_inner()) {
            Ok(code) => Closed::Code {
                code,
                hub_version: tether_proto::codes::version_in_reason(&close.reason),
                retry_in: tether_proto::codes::retry_in_reason(&close.reason),
            },
            Err(_) => Closed::Lost,
        },
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            // TLS alerts are the crypto error range 0x100..=0x1ff.
            match code.checked_sub(0x100).and_then(|alert| u8::try_from(alert).ok()) {
                Some(alert) => Closed::TlsAlert(alert),
                None => Closed::Lost,
            }
        }
        _ => Closed::Lost,
    }
}

/// What the hub said by resetting a stream (or closing the connection under it).
pub fn reset(error: &quinn::ReadError) -> Closed {
    match error {
        quinn::ReadError::Reset(code) => match Code::try_from(code.into_inner()) {
            Ok(code) => Closed::Code { code, hub_version: None, retry_in: None },
            Err(_) => Closed::Lost,
        },
        quinn::ReadError::ConnectionLost(error) => closed(error),
        _ => Closed::Lost,
    }
}

/// The next step after the hub said `closed`.
pub fn reaction(closed: &Closed) -> Reaction {
    match closed {
        Closed::Code { code: Code::Revoked, .. } | Closed::TlsAlert(ALERT_CERTIFICATE_REVOKED) => {
            Reaction::Stop(Stop::Revoked)
        }
        Closed::Code { code: Code::Expired, .. } | Closed::TlsAlert(ALERT_CERTIFICATE_EXPIRED) => {
            Reaction::Stop(Stop::Expired)
        }
        Closed::Code { code: Code::VersionMismatch, hub_version, .. } => {
            Reaction::Stop(Stop::VersionMismatch { hub: *hub_version })
        }
        Closed::TlsAlert(ALERT_NO_APPLICATION_PROTOCOL) => Reaction::Stop(Stop::VersionMismatch { hub: None }),
        Closed::Code { code: Code::RateLimited | Code::Busy, retry_in, .. } => Reaction::BackOff(*retry_in),
        Closed::Code { .. } | Closed::TlsAlert(_) | Closed::Lost => Reaction::Retry,
    }
}

/// The wait after the hub said it is at a limit, by `unit` in [0, 1): its `hint` (at most [`MAX_HINT`]) to
/// half again as long, so that clients told the same do not come back together; without a hint
/// [`LIMITED_DELAY`] to twice that.
pub fn limited_delay(hint: Option<Duration>, unit: f64) -> Duration {
    let unit = if unit.is_nan() { 0.0 } else { unit.clamp(0.0, 1.0) };
    match hint {
        Some(hint) => hint.min(MAX_HINT).mul_f64(1.0 + unit / 2.0),
        None => LIMITED_DELAY.mul_f64(1.0 + unit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(code: Code) -> Closed {
        Closed::Code { code, hub_version: None, retry_in: None }
    }

    #[test]
    fn a_revoked_spoke_stops() {
        assert_eq!(reaction(&code(Code::Revoked)), Reaction::Stop(Stop::Revoked));
        assert_eq!(reaction(&Closed::TlsAlert(44)), Reaction::Stop(Stop::Revoked));
    }

    #[test]
    fn an_expired_certificate_stops() {
        assert_eq!(reaction(&code(Code::Expired)), Reaction::Stop(Stop::Expired));
        assert_eq!(reaction(&Closed::TlsAlert(45)), Reaction::Stop(Stop::Expired));
    }

    #[test]
    fn a_version_mismatch_stops_naming_the_hubs_version() {
        let said = Closed::Code { code: Code::VersionMismatch, hub_version: Some(3), retry_in: None };
        assert_eq!(reaction(&said), Reaction::Stop(Stop::VersionMismatch { hub: Some(3) }));
        assert_eq!(reaction(&Closed::TlsAlert(120)), Reaction::Stop(Stop::VersionMismatch { hub: None }));
    }

    #[test]
    fn limits_back_off_longer() {
        assert_eq!(reaction(&code(Code::RateLimited)), Reaction::BackOff(None));
        assert_eq!(reaction(&code(Code::Busy)), Reaction::BackOff(None));
        let hinted =
            Closed::Code { code: Code::RateLimited, hub_version: None, retry_in: Some(Duration::from_secs(6)) };
        assert_eq!(reaction(&hinted), Reaction::BackOff(Some(Duration::from_secs(6))));
        assert_eq!(limited_delay(None, 0.0), LIMITED_DELAY);
        assert_eq!(limited_delay(None, 1.0), LIMITED_DELAY * 2);
        assert_eq!(limited_delay(None, f64::NAN), LIMITED_DELAY);
        assert!(limited_delay(None, 0.5) > LIMITED_DELAY && limited_delay(None, 0.5) < LIMITED_DELAY * 2);
        let six = Some(Duration::from_secs(6));
        assert_eq!(limited_delay(six, 0.0), Duration::from_secs(6));
        assert_eq!(limited_delay(six, 1.0), Duration::from_secs(9));
        assert_eq!(limited_delay(Some(Duration::from_secs(86_400)), 0.0), MAX_HINT, "a hint is followed so far");
    }

    #[test]
    fn everything_else_is_retried() {
        for c in [
            Code::Normal,
            Code::NoIdentity,
            Code::NoControlStream,
            Code::ProtocolError,
            Code::Abandoned,
            Code::BodyFailed,
        ] {
            assert_eq!(reaction(&code(c)), Reaction::Retry, "{c:?}");
        }
        // A bad certificate (42) or an unknown CA (48) may be a hub mid-rotation: keep trying.
        assert_eq!(reaction(&Closed::TlsAlert(42)), Reaction::Retry);
        assert_eq!(reaction(&Closed::TlsAlert(48)), Reaction::Retry);
        assert_eq!(reaction(&Closed::Lost), Reaction::Retry);
    }

    #[test]
    fn connection_errors_are_read_as_the_hub_sent_them() {
        let app = |value: u32, reason: &[u8]| {
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(value),
                reason: bytes::Bytes::copy_from_slice(reason),
            })
        };
        assert_eq!(closed(&app(4, b"certificate revoked")), code(Code::Revoked));
        let mismatch = tether_proto::codes::version_reason(2);
        assert_eq!(
            closed(&app(9, mismatch.as_bytes())),
            Closed::Code { code: Code::VersionMismatch, hub_version: Some(2), retry_in: None }
        );
        let limited = tether_proto::codes::retry_reason("too many bootstrap attempts", Duration::from_secs(6));
        assert_eq!(
            closed(&app(7, limited.as_bytes())),
            Closed::Code { code: Code::RateLimited, hub_version: None, retry_in: Some(Duration::from_secs(6)) }
        );
        assert_eq!(closed(&app(0xbeef, b"")), Closed::Lost, "an unknown code is no refusal");
        assert_eq!(closed(&quinn::ConnectionError::TimedOut), Closed::Lost);
        assert_eq!(closed(&quinn::ConnectionError::LocallyClosed), Closed::Lost);
        let alert = |alert: u8| {
            quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::crypto(alert),
                frame_type: None,
                reason: bytes::Bytes::new(),
            })
        };
        assert_eq!(closed(&alert(45)), Closed::TlsAlert(45));
        let protocol_violation = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::PROTOCOL_VIOLATION,
            frame_type: None,
            reason: bytes::Bytes::new(),
        });
        assert_eq!(closed(&protocol_violation), Closed::Lost);
        assert_eq!(reset(&quinn::ReadError::Reset(quinn::VarInt::from_u32(7))), code(Code::RateLimited));
        assert_eq!(reset(&quinn::ReadError::ConnectionLost(app(8, b""))), code(Code::Busy));
    }
}
