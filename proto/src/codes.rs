//! The QUIC application error codes of tether: one table for both ends, so that a code the hub closes
//! with is the code the client reads.
//!
//! QUIC carries an application error code in two places: a `CONNECTION_CLOSE` frame (the whole connection
//! ends) and `RESET_STREAM`/`STOP_SENDING` (one stream ends). The two spaces are separate on the wire, but
//! tether gives every code one meaning wherever it appears, and keeps stream-only codes at `0x10` and up.
//!
//! | code | name | sent by | on | meaning for the receiver |
//! |------|------|---------|----|--------------------------|
//! | 0x00 | [`Normal`](Code::Normal) | both | connection | nothing went wrong (shutdown, go-away done, bootstrap done) |
//! | 0x01 | [`NoIdentity`](Code::NoIdentity) | hub | connection | no client certificate, or one that names no cluster |
//! | 0x02 | [`NoControlStream`](Code::NoControlStream) | hub | connection | no control stream and Hello in time |
//! | 0x03 | [`ProtocolError`](Code::ProtocolError) | both | connection | bad bytes on the control stream |
//! | 0x04 | [`Revoked`](Code::Revoked) | hub | connection | the client certificate is revoked: redialling cannot help |
//! | 0x05 | [`Expired`](Code::Expired) | hub | connection | the client certificate expired (renewal did not happen) |
//! | 0x06 | [`Abandoned`](Code::Abandoned) | hub | connection, stream | no answer yet (hub error, wait over): try again |
//! | 0x07 | [`RateLimited`](Code::RateLimited) | hub | connection, stream | too many attempts: back off longer |
//! | 0x08 | [`Busy`](Code::Busy) | hub | connection, stream | the hub is at a limit: back off longer |
//! | 0x09 | [`VersionMismatch`](Code::VersionMismatch) | hub | connection | another protocol version; the reason names the hub's |
//! | 0x10 | [`BodyFailed`](Code::BodyFailed) | both | stream | a body was cut short: the message is incomplete |
//! | 0x11 | [`UnsupportedTarget`](Code::UnsupportedTarget) | client | stream | this spoke does not serve the stream's target |
//! | 0x12 | [`BadRequestHead`](Code::BadRequestHead) | client | stream | the request head is malformed |
//! | 0x13 | [`StreamAbandoned`](Code::StreamAbandoned) | hub | stream | the hub gave up on the request: drop it |
//!
//! A code a peer does not know (a newer peer's) is an [`Error::UnknownCode`]; receivers treat it as a lost
//! connection, never as a refusal.
//!
//! A [`VersionMismatch`](Code::VersionMismatch) close carries [`version_reason`] as its reason, so that the
//! receiver can name both versions ([`version_in_reason`]). A [`RateLimited`](Code::RateLimited) close may
//! end its reason with [`retry_reason`]'s hint of when an attempt will be allowed ([`retry_in_reason`]).
use std::fmt;
use std::time::Duration;

use crate::Error;

/// A QUIC application error code of tether. Codes are stable across versions: a code keeps its number and
/// its meaning, new ones take new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Code {
    /// Nothing went wrong: a client shutting down or retiring a tunnel, a finished bootstrap, a hub
    /// shutting down.
    Normal = 0x00,
    /// A `tether/2` connection without a verified client certificate, or with one that names no cluster.
    NoIdentity = 0x01,
    /// The client opened no control stream (or sent no Hello) within the hub's hello timeout.
    NoControlStream = 0x02,
    /// Bytes on the control stream that break the protocol.
    ProtocolError = 0x03,
    /// The client certificate is revoked (the cluster was unregistered). Redialling with the same
    /// certificate is refused the same way.
    Revoked = 0x04,
    /// The client certificate reached its not-after; a client renews well before that.
    Expired = 0x05,
    /// A bootstrap connection or renewal stream ended without an answer: a transient hub error, the wait
    /// for approval is over, or the hub is shutting down. The client tries again (resuming its request).
    Abandoned = 0x06,
    /// Refused by a rate limit (bootstrap attempts per address, renewals per cluster): wait longer than
    /// the usual backoff before trying again.
    RateLimited = 0x07,
    /// The hub is at a limit (concurrent bootstrap connections, one renewal at a time per tunnel): wait
    /// longer than the usual backoff before trying again.
    Busy = 0x08,
    /// The peer speaks another protocol version; the close reason is [`version_reason`] of the hub's.
    VersionMismatch = 0x09,
    /// A body failed part-way (stream reset): what arrived is incomplete.
    BodyFailed = 0x10,
    /// The spoke does not serve the target a stream header names (stream reset).
    UnsupportedTarget = 0x11,
    /// A request head that does not decode (stream reset).
    BadRequestHead = 0x12,
    /// The hub gave up on a request (no answer in time, its caller went away, the answer was refused):
    /// both directions are reset and stopped, and the spoke drops the apiserver request at once.
    StreamAbandoned = 0x13,
}

impl Code {
    /// Every code, in numeric order.
    pub const ALL: [Code; 14] = [
        Code::Normal,
        Code::NoIdentity,
        Code::NoControlStream,
        Code::ProtocolError,
        Code::Revoked,
        Code::Expired,
        Code::Abandoned,
        Code::RateLimited,
        Code::Busy,
        Code::VersionMismatch,
        Code::BodyFailed,
        Code::UnsupportedTarget,
        Code::BadRequestHead,
        Code::StreamAbandoned,
    ];

    /// The code's number on the wire.
    pub const fn value(self) -> u32 {
        self as u32
    }

    /// A short description, the default close reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::Normal => "normal close",
            Code::NoIdentity => "no client identity",
            Code::NoControlStream => "no control stream",
            Code::ProtocolError => "protocol error",
            Code::Revoked => "certificate revoked",
            Code::Expired => "certificate expired",
            Code::Abandoned => "no answer yet, try again",
            Code::RateLimited => "rate limited",
            Code::Busy => "hub busy",
            Code::VersionMismatch => "protocol version mismatch",
            Code::BodyFailed => "body failed",
            Code::UnsupportedTarget => "unsupported stream target",
            Code::BadRequestHead => "malformed request head",
            Code::StreamAbandoned => "request abandoned by the hub",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.as_str(), self.value())
    }
}

impl From<Code> for u32 {
    fn from(code: Code) -> u32 {
        code.value()
    }
}

impl From<Code> for u64 {
    fn from(code: Code) -> u64 {
        code.value().into()
    }
}

/// QUIC error codes are variable-length integers up to 2^62; receivers hand them over as `u64`.
impl TryFrom<u64> for Code {
    type Error = Error;

    fn try_from(value: u64) -> Result<Self, Error> {
        Code::ALL.into_iter().find(|c| u64::from(*c) == value).ok_or(Error::UnknownCode(value))
    }
}

/// The close reason of a [`Code::VersionMismatch`] sent by an end speaking `version`.
pub fn version_reason(version: u16) -> String {
    format!("{VERSION_PREFIX}{version}")
}

/// The version a [`version_reason`] names, if `reason` is one.
pub fn version_in_reason(reason: &[u8]) -> Option<u16> {
    std::str::from_utf8(reason).ok()?.strip_prefix(VERSION_PREFIX)?.parse().ok()
}

const VERSION_PREFIX: &str = "protocol version mismatch: this end speaks tether/";

/// A close reason saying `what` happened and that an attempt after `after` (whole seconds, rounded up) will
/// be allowed.
pub fn retry_reason(what: &str, after: Duration) -> String {
    let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    format!("{what}{RETRY_PREFIX}{seconds}s")
}

/// The wait a [`retry_reason`] names, if `reason` ends with one.
pub fn retry_in_reason(reason: &[u8]) -> Option<Duration> {
    let reason = std::str::from_utf8(reason).ok()?;
    let (_, hint) = reason.rsplit_once(RETRY_PREFIX)?;
    hint.strip_suffix('s')?.parse().ok().map(Duration::from_secs)
}

const RETRY_PREFIX: &str = "; retry in ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_numbers_are_unique() {
        for code in Code::ALL {
            assert_eq!(Code::try_from(u64::from(code)), Ok(code));
        }
        let mut values: Vec<u32> = Code::ALL.iter().map(|c| c.value()).collect();
        values.dedup();
        assert_eq!(values.len(), Code::ALL.len(), "ALL is sorted and without repeats");
        assert!(values.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn numbers_are_the_deployed_ones() {
        // Peers of earlier builds send these numbers: they must never move.
        let deployed = [
            (Code::Normal, 0),
            (Code::NoIdentity, 1),
            (Code::NoControlStream, 2),
            (Code::ProtocolError, 3),
            (Code::Revoked, 4),
            (Code::Expired, 5),
            (Code::Abandoned, 6),
            (Code::RateLimited, 7),
            (Code::Busy, 8),
            (Code::BodyFailed, 0x10),
            (Code::UnsupportedTarget, 0x11),
            (Code::BadRequestHead, 0x12),
        ];
        for (code, value) in deployed {
            assert_eq!(code.value(), value, "{code:?}");
        }
    }

    #[test]
    fn unknown_codes_are_errors() {
        for value in [0x0a, 0xff, 1 << 40, u64::MAX] {
            assert_eq!(Code::try_from(value), Err(Error::UnknownCode(value)));
        }
    }

    #[test]
    fn version_reasons_name_the_version() {
        let reason = version_reason(7);
        assert_eq!(version_in_reason(reason.as_bytes()), Some(7));
        assert_eq!(version_in_reason(b"protocol error"), None);
        assert_eq!(version_in_reason(b"protocol version mismatch: this end speaks tether/x"), None);
        assert_eq!(version_in_reason(&[0xff, 0xfe]), None);
    }

    #[test]
    fn retry_hints_round_up_to_seconds() {
        let reason = retry_reason("too many bootstrap attempts", Duration::from_millis(5_200));
        assert_eq!(reason, "too many bootstrap attempts; retry in 6s");
        assert_eq!(retry_in_reason(reason.as_bytes()), Some(Duration::from_secs(6)));
        assert_eq!(retry_in_reason(retry_reason("x", Duration::ZERO).as_bytes()), Some(Duration::ZERO));
        assert_eq!(retry_in_reason(b"too many bootstrap attempts"), None);
        assert_eq!(retry_in_reason(b"x; retry in soon"), None);
        assert_eq!(retry_in_reason(b"x; retry in 5"), None);
        assert_eq!(retry_in_reason(&[0xff]), None);
    }

    #[test]
    fn display_names_the_number() {
        assert_eq!(Code::Revoked.to_string(), "certificate revoked (0x04)");
        assert_eq!(Code::BadRequestHead.to_string(), "malformed request head (0x12)");
    }
}
