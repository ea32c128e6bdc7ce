//! Control-stream messages and their framing.
//!
//! ```text
//! frame   = u32 len, u8 type, payload      len counts type + payload, 1..=max_frame
//! 0x01 Hello    u16 version, str client_version, str instance
//! 0x02 Welcome  u16 version, str cluster, u32 heartbeat_interval_ms
//! 0x03 Ping     u64 seq
//! 0x04 Pong     u64 seq
//! 0x05 GoAway   str reason
//! 0x80 SpokeInfo  str apiserver_version, pem ca_bundle        client to hub, optional
//! 0x81..=0xff   extensions: skipped whole by a decoder that does not know them
//! str     = u16 len, UTF-8 bytes           len <= MAX_STRING_LEN
//! pem     = u16 len, UTF-8 bytes           len <= MAX_PEM_LEN
//! ```
//!
//! Optional messages live in the extension range, so a hub older than the message skips it instead of
//! closing the tunnel.
//!
//! Any other type, a field running past its frame, or bytes left over after the fields is an
//! error. Hello and Welcome start with the version in every major version, so a peer whose
//! later fields do not parse is reported as a version mismatch when its version differs.

use bytes::{Buf, BufMut, BytesMut};

use crate::wire::{put_string, Reader};
use crate::{Error, Result, PROTOCOL_VERSION};

/// Longest string field in a control message, in bytes.
pub const MAX_STRING_LEN: usize = 1024;
/// Longest PEM field (a CA bundle) in a control message, in bytes.
pub const MAX_PEM_LEN: usize = 32 * 1024;

const HELLO: u8 = 0x01;
const WELCOME: u8 = 0x02;
const PING: u8 = 0x03;
const PONG: u8 = 0x04;
const GO_AWAY: u8 = 0x05;
const SPOKE_INFO: u8 = 0x80;

/// A message on the control stream (the first bidirectional stream, opened by the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Client to hub, first message of the session.
    Hello {
        version: u16,
        client_version: String,
        instance: String,
    },
    /// Hub to client, the answer to Hello. `heartbeat_interval_ms == 0` leaves the interval to
    /// the client's own configuration.
    Welcome {
        version: u16,
        cluster: String,
        heartbeat_interval_ms: u32,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// The sender asks the receiver to move to another connection.
    GoAway {
        reason: String,
    },
    /// Client to hub, after Hello: what the hub reports in the ManagedCluster's status. Empty fields are
    /// unknown.
    SpokeInfo {
        apiserver_version: String,
        ca_bundle: String,
    },
}

impl ControlMessage {
    /// Appends one frame holding this message to `out`.
    ///
    /// Never fails: a string longer than [`MAX_STRING_LEN`] is written with its real (or a
    /// saturated) length, so the peer's decoder rejects it instead of misreading it.
    pub fn encode(&self, out: &mut BytesMut) {
        let payload = match self {
            Self::Hello { client_version, instance, .. } => 2 + 2 + client_version.len() + 2 + instance.len(),
            Self::Welcome { cluster, .. } => 2 + 2 + cluster.len() + 4,
            Self::Ping { .. } | Self::Pong { .. } => 8,
            Self::GoAway { reason } => 2 + reason.len(),
            Self::SpokeInfo { apiserver_version, ca_bundle } => 2 + apiserver_version.len() + 2 + ca_bundle.len(),
        };
        out.reserve(4 + 1 + payload);
        out.put_u32(u32::try_from(1 + payload).unwrap_or(u32::MAX));
        match self {
            Self::Hello { version, client_version, instance } => {
                out.put_u8(HELLO);
                out.put_u16(*version);
                put_string(out, client_version);
                put_string(out, instance);
            }
            Self::Welcome { version, cluster, heartbeat_interval_ms } => {
                out.put_u8(WELCOME);
                out.put_u16(*version);
                put_string(out, cluster);
                out.put_u32(*heartbeat_interval_ms);
            }
            Self::Ping { seq } => {
                out.put_u8(PING);
                out.put_u64(*seq);
            }
            Self::Pong { seq } => {
                out.put_u8(PONG);
                out.put_u64(*seq);
            }
            Self::GoAway { reason } => {
                out.put_u8(GO_AWAY);
                put_string(out, reason);
            }
            Self::SpokeInfo { apiserver_version, ca_bundle } => {
                out.put_u8(SPOKE_INFO);
                put_string(out, apiserver_version);
                put_string(out, ca_bundle);
            }
        }
    }

    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Welcome { .. } => "Welcome",
            Self::Ping { .. } => "Ping",
            Self::Pong { .. } => "Pong",
            Self::GoAway { .. } => "GoAway",
            Self::SpokeInfo { .. } => "SpokeInfo",
        }
    }

    /// Decodes the body of one whole frame (type and payload); `None` for a skipped extension.
    fn decode_body(body: &[u8]) -> Result<Option<Self>> {
        let mut r = Reader::new(body);
        let kind = r.u8("control message type")?;
        let message = match kind {
            HELLO => {
                let version = r.u16("Hello version")?;
                return foreign_version_or(version, Self::hello_rest(version, r)).map(Some);
            }
            WELCOME => {
                let version = r.u16("Welcome version")?;
                return foreign_version_or(version, Self::welcome_rest(version, r)).map(Some);
            }
            PING => Self::Ping { seq: r.u64("Ping seq")? },
            PONG => Self::Pong { seq: r.u64("Pong seq")? },
            GO_AWAY => Self::GoAway { reason: r.string("GoAway reason", MAX_STRING_LEN)? },
            SPOKE_INFO => Self::SpokeInfo {
                apiserver_version: r.string("SpokeInfo apiserver_version", MAX_STRING_LEN)?,
                ca_bundle: r.string("SpokeInfo ca_bundle", MAX_PEM_LEN)?,
            },
            0x81..=u8::MAX => return Ok(None),
            other => return Err(Error::UnknownMessage(other)),
        };
        r.finish(message.name())?;
        Ok(Some(message))
    }

    fn hello_rest(version: u16, mut r: Reader<'_>) -> Result<Self> {
        let client_version = r.string("Hello client_version", MAX_STRING_LEN)?;
        let instance = r.string("Hello instance", MAX_STRING_LEN)?;
        r.finish("Hello")?;
        Ok(Self::Hello { version, client_version, instance })
    }

    fn welcome_rest(version: u16, mut r: Reader<'_>) -> Result<Self> {
        let cluster = r.string("Welcome cluster", MAX_STRING_LEN)?;
        let heartbeat_interval_ms = r.u32("Welcome heartbeat_interval_ms")?;
        r.finish("Welcome")?;
        Ok(Self::Welcome { version, cluster, heartbeat_interval_ms })
    }
}

/// A handshake message of another major version may use another layout: when its fields do
/// not parse, the version is the error worth reporting.
fn foreign_version_or(version: u16, parsed: Result<ControlMessage>) -> Result<ControlMessage> {
    match parsed {
        Err(_) if version != PROTOCOL_VERSION => {
            Err(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: version })
        }
        other => other,
    }
}

/// Splits a byte stream into control messages.
///
/// After an error the stream is unusable: the error is returned again on every later call.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
    error: Option<Error>,
}

impl FrameDecoder {
    /// A decoder that rejects frames longer than `max_frame` bytes (type + payload).
    pub fn new(max_frame: usize) -> Self {
        Self { buf: BytesMut::new(), max_frame, error: None }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.error.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Next whole message, `Ok(None)` if more bytes are needed, `Err` on malformed or
    /// oversized input (an oversized length is refused before its body arrives).
    pub fn next_message(&mut self) -> Result<Option<ControlMessage>> {
        loop {
            if let Some(error) = &self.error {
                return Err(error.clone());
            }
            match self.next_frame() {
                Ok(None) => return Ok(None),
                Ok(Some((consumed, message))) => {
                    self.buf.advance(consumed);
                    if message.is_some() {
                        return Ok(message);
                    }
                }
                Err(error) => {
                    self.buf = BytesMut::new();
                    self.error = Some(error.clone());
                    return Err(error);
                }
            }
        }
    }

    /// Bytes pushed but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn next_frame(&self) -> Result<Option<(usize, Option<ControlMessage>)>> {
        let Some((len, rest)) = self.buf.split_first_chunk::<4>() else {
            return Ok(None);
        };
        let declared = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
        if declared == 0 {
            return Err(Error::EmptyFrame);
        }
        if declared > self.max_frame {
            return Err(Error::FrameTooLarge { declared, max: self.max_frame });
        }
        let Some(body) = rest.get(..declared) else {
            return Ok(None);
        };
        let message = ControlMessage::decode_body(body)?;
        Ok(Some((4 + declared, message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_CONTROL_FRAME;

    fn samples() -> Vec<ControlMessage> {
        vec![
            ControlMessage::Hello {
                version: PROTOCOL_VERSION,
                client_version: "0.1.0".into(),
                instance: "tether-client-x7k2p".into(),
            },
            ControlMessage::Hello {
                version: 9,
                client_version: String::new(),
                instance: "ü".repeat(MAX_STRING_LEN / 2),
            },
            ControlMessage::Welcome {
                version: PROTOCOL_VERSION,
                cluster: "prod-eu-1".into(),
                heartbeat_interval_ms: 15_000,
            },
            ControlMessage::Ping { seq: 0 },
            ControlMessage::Pong { seq: u64::MAX },
            ControlMessage::GoAway { reason: "draining".into() },
            ControlMessage::SpokeInfo {
                apiserver_version: "v1.20.2".into(),
                ca_bundle: "-----BEGIN CERTIFICATE-----\n".repeat(MAX_PEM_LEN / 28),
            },
            ControlMessage::SpokeInfo { apiserver_version: String::new(), ca_bundle: String::new() },
        ]
    }

    fn encode_all(messages: &[ControlMessage]) -> BytesMut {
        let mut out = BytesMut::new();
        for m in messages {
            m.encode(&mut out);
        }
        out
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<ControlMessage>> {
        let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
        d.push(bytes);
        d.next_message()
    }

    #[test]
    fn every_message_round_trips_at_every_split() {
        for message in samples() {
            let bytes = encode_all(std::slice::from_ref(&message));
            for split in 0..bytes.len() {
                let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
                d.push(&bytes[..split]);
                assert_eq!(d.next_message(), Ok(None), "{message:?} split {split}");
                d.push(&bytes[split..]);
                assert_eq!(d.next_message(), Ok(Some(message.clone())));
                assert_eq!(d.next_message(), Ok(None));
                assert_eq!(d.buffered(), 0);
            }
        }
    }

    #[test]
    fn a_stream_of_messages_decodes_byte_by_byte() {
        let messages = samples();
        let bytes = encode_all(&messages);
        let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
        let mut got = Vec::new();
        for b in bytes.iter() {
            d.push(&[*b]);
            while let Some(m) = d.next_message().expect("valid stream") {
                got.push(m);
            }
        }
        assert_eq!(got, messages);
    }

    #[test]
    fn oversized_frames_are_refused_before_the_body_arrives() {
        let mut d = FrameDecoder::new(16);
        d.push(&17u32.to_be_bytes());
        assert_eq!(d.next_message(), Err(Error::FrameTooLarge { declared: 17, max: 16 }));
        assert_eq!(
            decode_one(&u32::MAX.to_be_bytes()),
            Err(Error::FrameTooLarge {
                declared: usize::try_from(u32::MAX).unwrap_or(usize::MAX),
                max: MAX_CONTROL_FRAME
            })
        );
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = FrameDecoder::new(MAX_CONTROL_FRAME);
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_message(), Err(Error::EmptyFrame));
        d.push(&encode_all(&samples()));
        assert_eq!(d.next_message(), Err(Error::EmptyFrame));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(decode_one(&[0, 0, 0, 1, 0x06]), Err(Error::UnknownMessage(6)));
        assert_eq!(decode_one(&[0, 0, 0, 5, PING, 0, 0, 0, 1]), Err(Error::Truncated { what: "Ping seq" }));
        assert_eq!(
            decode_one(&[0, 0, 0, 4, GO_AWAY, 0, 0, 0xff]),
            Err(Error::TrailingBytes { what: "GoAway", len: 1 })
        );
        assert_eq!(decode_one(&[0, 0, 0, 4, GO_AWAY, 0, 1, 0xc3]), Err(Error::InvalidUtf8 { what: "GoAway reason" }));
        let long = ControlMessage::GoAway { reason: "r".repeat(MAX_STRING_LEN + 1) };
        assert_eq!(
            decode_one(&encode_all(&[long])),
            Err(Error::StringTooLong { what: "GoAway reason", len: MAX_STRING_LEN + 1, max: MAX_STRING_LEN })
        );
    }

    #[test]
    fn extension_frames_are_skipped() {
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&[0, 0, 0, 3, 0x81, 1, 2]);
        bytes.extend_from_slice(&[0, 0, 0, 1, 0xff]);
        ControlMessage::Ping { seq: 3 }.encode(&mut bytes);
        assert_eq!(decode_one(&bytes), Ok(Some(ControlMessage::Ping { seq: 3 })));
    }

    #[test]
    fn unparsable_handshake_of_another_version_is_a_version_mismatch() {
        // A "version 3" Hello whose layout this version cannot read.
        let frame = [0, 0, 0, 4, HELLO, 0, 3, 0xee];
        assert_eq!(decode_one(&frame), Err(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: 3 }));
        // The same damage at our own version is reported as what it is.
        let [high, low] = PROTOCOL_VERSION.to_be_bytes();
        let frame = [0, 0, 0, 4, WELCOME, high, low, 0xee];
        assert_eq!(decode_one(&frame), Err(Error::Truncated { what: "Welcome cluster" }));
    }
}
