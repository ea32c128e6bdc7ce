//! Bootstrap: a spoke that holds no certificate yet asks the hub for one.
//!
//! The client dials with ALPN [`BOOTSTRAP_ALPN`] and **no** client certificate (it verifies the hub as
//! usual), opens one bidirectional stream and sends one [`BootstrapRequest`]: its cluster, a bootstrap
//! token, and a PKCS#10 CSR for a key it generated itself. The hub answers on the same stream with
//! [`BootstrapResponse`]s: `Refused` at once, or `Pending` as soon as it has created the certificate
//! request (so the client can persist the name and resume after a disconnect without the token, which is
//! spent by then), followed later by `Issued` or `Refused`. Nothing else happens on such a connection.
//!
//! ```text
//! frame   = u32 len, u8 type, payload      len counts type + payload, 1..=MAX_BOOTSTRAP_FRAME
//! 0x10 Request  u16 version, str cluster, opt token, str csr_pem, opt resume     client to hub
//! 0x11 Pending  str csr_name                                                      hub to client
//! 0x12 Issued   str certificate_pem
//! 0x13 Refused  str reason
//! str     = u16 len, UTF-8 bytes            len <= the field's limit
//! opt     = u8 0 | u8 1, str                absent | present
//! ```
//!
//! Every length is checked against its limit before its bytes are read; a frame must be used up exactly
//! by its fields. Requests and responses have distinct types, so bytes sent the wrong way are an error.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};

use crate::wire::{put_string, Reader};
use crate::{Error, Result, MAX_STRING_LEN};

/// The ALPN protocol id of bootstrap connections.
pub const BOOTSTRAP_ALPN: &[u8] = b"tether-bootstrap/1";

/// The bootstrap protocol's major version, carried in every request and in [`BOOTSTRAP_ALPN`].
pub const BOOTSTRAP_VERSION: u16 = 1;

/// Largest bootstrap frame (type + payload) a decoder accepts.
pub const MAX_BOOTSTRAP_FRAME: usize = 64 * 1024;

/// Longest cluster name or certificate request name, in bytes (a DNS subdomain's limit).
pub const MAX_OBJECT_NAME_LEN: usize = 253;

/// Longest bootstrap token, in bytes (far above the real format's 23).
pub const MAX_TOKEN_LEN: usize = 256;

/// Longest CSR, PEM (an RSA 4096 request is about 1.7 KiB).
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// Longest issued certificate (chain), PEM.
pub const MAX_CERTIFICATE_LEN: usize = 48 * 1024;

const REQUEST: u8 = 0x10;
const PENDING: u8 = 0x11;
const ISSUED: u8 = 0x12;
const REFUSED: u8 = 0x13;

/// The one message a bootstrapping client sends.
///
/// `Debug` never prints the token.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapRequest {
    pub version: u16,
    /// The cluster the client registers as.
    pub cluster: String,
    /// `<id>.<secret>`; absent when resuming.
    pub token: Option<String>,
    /// PKCS#10 CSR, PEM, for a key that never leaves the spoke.
    pub csr_pem: String,
    /// The name of the certificate request an earlier attempt created (from its `Pending`).
    pub resume: Option<String>,
}

/// What the hub answers a [`BootstrapRequest`] with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapResponse {
    /// The signed client certificate, PEM. The last message.
    Issued { certificate_pem: String },
    /// The certificate request exists and waits for approval and signing; sent once, at once.
    Pending { csr_name: String },
    /// No certificate will come of this request. The last message.
    Refused { reason: String },
}

impl BootstrapRequest {
    /// Appends one frame holding this request to `out`. Never fails: an oversized field is written so
    /// that the peer rejects it rather than misreads it.
    pub fn encode(&self, out: &mut BytesMut) {
        let payload = 2
            + 2
            + self.cluster.len()
            + optional_len(self.token.as_deref())
            + 2
            + self.csr_pem.len()
            + optional_len(self.resume.as_deref());
        put_frame_header(out, REQUEST, payload);
        out.put_u16(self.version);
        put_string(out, &self.cluster);
        put_optional(out, self.token.as_deref());
        put_string(out, &self.csr_pem);
        put_optional(out, self.resume.as_deref());
    }

    /// Decodes a request from the start of `buf`: `Ok(None)` until a whole frame is there, then the
    /// request and the bytes it used. An oversized length is refused before its body arrives.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>> {
        let Some((body, used)) = frame(buf)? else {
            return Ok(None);
        };
        let mut r = Reader::new(body);
        match r.u8("bootstrap message type")? {
            REQUEST => {}
            other => return Err(Error::UnknownMessage(other)),
        }
        let version = r.u16("BootstrapRequest version")?;
        match Self::decode_rest(version, r) {
            Ok(request) => Ok(Some((request, used))),
            // Another major version may lay its fields out differently: that is the error worth naming.
            Err(_) if version != BOOTSTRAP_VERSION => {
                Err(Error::VersionMismatch { ours: BOOTSTRAP_VERSION, theirs: version })
            }
            Err(e) => Err(e),
        }
    }

    fn decode_rest(version: u16, mut r: Reader<'_>) -> Result<Self> {
        let cluster = r.string("BootstrapRequest cluster", MAX_OBJECT_NAME_LEN)?;
        let token = optional(&mut r, "BootstrapRequest token", MAX_TOKEN_LEN)?;
        let csr_pem = r.string("BootstrapRequest csr_pem", MAX_CSR_LEN)?;
        let resume = optional(&mut r, "BootstrapRequest resume", MAX_OBJECT_NAME_LEN)?;
        r.finish("BootstrapRequest")?;
        Ok(Self { version, cluster, token, csr_pem, resume })
    }
}

impl fmt::Debug for BootstrapRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapRequest")
            .field("version", &self.version)
            .field("cluster", &self.cluster)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("csr_pem", &self.csr_pem)
            .field("resume", &self.resume)
            .finish()
    }
}

impl BootstrapResponse {
    /// Appends one frame holding this response to `out`. Never fails (see [`BootstrapRequest::encode`]).
    pub fn encode(&self, out: &mut BytesMut) {
        let (kind, text) = match self {
            Self::Issued { certificate_pem } => (ISSUED, certificate_pem),
            Self::Pending { csr_name } => (PENDING, csr_name),
            Self::Refused { reason } => (REFUSED, reason),
        };
        put_frame_header(out, kind, 2 + text.len());
        put_string(out, text);
    }

    /// Decodes a response from the start of `buf`, as [`BootstrapRequest::decode`] does.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>> {
        let Some((body, used)) = frame(buf)? else {
            return Ok(None);
        };
        let mut r = Reader::new(body);
        let response = match r.u8("bootstrap message type")? {
            ISSUED => Self::Issued { certificate_pem: r.string("Issued certificate_pem", MAX_CERTIFICATE_LEN)? },
            PENDING => Self::Pending { csr_name: r.string("Pending csr_name", MAX_OBJECT_NAME_LEN)? },
            REFUSED => Self::Refused { reason: r.string("Refused reason", MAX_STRING_LEN)? },
            other => return Err(Error::UnknownMessage(other)),
        };
        r.finish(response.name())?;
        Ok(Some((response, used)))
    }

    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Issued { .. } => "Issued",
            Self::Pending { .. } => "Pending",
            Self::Refused { .. } => "Refused",
        }
    }

    /// Whether nothing follows this response on the stream.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Pending { .. })
    }
}

/// Splits responses off a byte stream. After an error the stream is unusable: the error is returned
/// again on every later call.
#[derive(Debug, Default)]
pub struct ResponseDecoder {
    buf: BytesMut,
    error: Option<Error>,
}

impl ResponseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.error.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next whole response, `Ok(None)` if more bytes are needed.
    pub fn next_response(&mut self) -> Result<Option<BootstrapResponse>> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        match BootstrapResponse::decode(&self.buf) {
            Ok(Some((response, used))) => {
                self.buf.advance(used);
                Ok(Some(response))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.buf = BytesMut::new();
                self.error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Bytes pushed but not yet returned as responses.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// The body (type + payload) of the frame at the start of `buf` and the bytes the frame takes.
fn frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>> {
    let Some((len, rest)) = buf.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let declared = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
    if declared == 0 {
        return Err(Error::EmptyFrame);
    }
    if declared > MAX_BOOTSTRAP_FRAME {
        return Err(Error::FrameTooLarge { declared, max: MAX_BOOTSTRAP_FRAME });
    }
    Ok(rest.get(..declared).map(|body| (body, 4 + declared)))
}

fn put_frame_header(out: &mut BytesMut, kind: u8, payload: usize) {
    out.reserve(4 + 1 + payload);
    out.put_u32(u32::try_from(1 + payload).unwrap_or(u32::MAX));
    out.put_u8(kind);
}

fn optional_len(value: Option<&str>) -> usize {
    1 + value.map_or(0, |s| 2 + s.len())
}

fn put_optional(out: &mut BytesMut, value: Option<&str>) {
    match value {
        None => out.put_u8(0),
        Some(s) => {
            out.put_u8(1);
            put_string(out, s);
        }
    }
}

fn optional(r: &mut Reader<'_>, what: &'static str, max: usize) -> Result<Option<String>> {
    match r.u8(what)? {
        0 => Ok(None),
        1 => r.string(what, max).map(Some),
        _ => Err(Error::InvalidField { what, reason: "presence flag other than 0 or 1" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> BootstrapRequest {
        BootstrapRequest {
            version: BOOTSTRAP_VERSION,
            cluster: "spoke-a".into(),
            token: Some("abcdef.0123456789abcdef".into()),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n".into(),
            resume: None,
        }
    }

    fn requests() -> Vec<BootstrapRequest> {
        let resumed = BootstrapRequest { token: None, resume: Some("tether-spoke-a-0a1b2c3d".into()), ..request() };
        let empty = BootstrapRequest {
            version: 0,
            cluster: String::new(),
            token: Some(String::new()),
            csr_pem: String::new(),
            resume: Some(String::new()),
        };
        let longest = BootstrapRequest {
            version: u16::MAX,
            cluster: "c".repeat(MAX_OBJECT_NAME_LEN),
            token: Some("t".repeat(MAX_TOKEN_LEN)),
            csr_pem: "r".repeat(MAX_CSR_LEN),
            resume: Some("n".repeat(MAX_OBJECT_NAME_LEN)),
        };
        vec![request(), resumed, empty, longest]
    }

    fn responses() -> Vec<BootstrapResponse> {
        vec![
            BootstrapResponse::Pending { csr_name: "tether-spoke-a-0a1b2c3d".into() },
            BootstrapResponse::Issued { certificate_pem: "-----BEGIN CERTIFICATE-----\n".repeat(3) },
            BootstrapResponse::Refused { reason: "unknown or spent bootstrap token".into() },
            BootstrapResponse::Issued { certificate_pem: "ü".repeat(MAX_CERTIFICATE_LEN / 2) },
            BootstrapResponse::Refused { reason: String::new() },
        ]
    }

    fn encode_request(request: &BootstrapRequest) -> BytesMut {
        let mut out = BytesMut::new();
        request.encode(&mut out);
        out
    }

    fn encode_response(response: &BootstrapResponse) -> BytesMut {
        let mut out = BytesMut::new();
        response.encode(&mut out);
        out
    }

    #[test]
    fn requests_round_trip_at_every_split() {
        for request in requests() {
            let mut bytes = encode_request(&request);
            let len = bytes.len();
            bytes.extend_from_slice(b"tail");
            // Every prefix short of the whole frame is "need more"; a frame is checked only when whole.
            for split in (0..len).step_by(97).chain([len - 1]) {
                assert_eq!(BootstrapRequest::decode(&bytes[..split]), Ok(None), "split {split}");
            }
            assert_eq!(BootstrapRequest::decode(&bytes), Ok(Some((request, len))));
        }
    }

    #[test]
    fn responses_round_trip_through_the_decoder_byte_by_byte() {
        let responses = responses();
        let mut bytes = BytesMut::new();
        for r in &responses {
            r.encode(&mut bytes);
        }
        let mut decoder = ResponseDecoder::new();
        let mut got = Vec::new();
        for b in bytes.iter() {
            decoder.push(&[*b]);
            while let Some(r) = decoder.next_response().expect("valid stream") {
                got.push(r);
            }
        }
        assert_eq!(got, responses);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn pending_is_the_only_response_that_is_not_final() {
        for r in responses() {
            assert_eq!(r.is_final(), !matches!(r, BootstrapResponse::Pending { .. }), "{r:?}");
        }
    }

    #[test]
    fn debug_never_prints_the_token() {
        let shown = format!("{:?}", request());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(!shown.contains("abcdef."), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("spoke-a"), "{shown}");
        let resumed = BootstrapRequest { token: None, ..request() };
        assert!(format!("{resumed:?}").contains("token: None"));
    }

    #[test]
    fn oversized_frames_are_refused_before_the_body_arrives() {
        let declared = MAX_BOOTSTRAP_FRAME + 1;
        let len = u32::try_from(declared).expect("fits").to_be_bytes();
        assert_eq!(BootstrapRequest::decode(&len), Err(Error::FrameTooLarge { declared, max: MAX_BOOTSTRAP_FRAME }));
        assert_eq!(BootstrapResponse::decode(&len), Err(Error::FrameTooLarge { declared, max: MAX_BOOTSTRAP_FRAME }));
        assert_eq!(BootstrapRequest::decode(&[0, 0, 0, 0]), Err(Error::EmptyFrame));
    }

    #[test]
    fn fields_over_their_limits_are_rejected() {
        let cases = [
            (
                BootstrapRequest { cluster: "c".repeat(MAX_OBJECT_NAME_LEN + 1), ..request() },
                "BootstrapRequest cluster",
            ),
            (BootstrapRequest { token: Some("t".repeat(MAX_TOKEN_LEN + 1)), ..request() }, "BootstrapRequest token"),
            (BootstrapRequest { csr_pem: "r".repeat(MAX_CSR_LEN + 1), ..request() }, "BootstrapRequest csr_pem"),
            (
                BootstrapRequest { resume: Some("n".repeat(MAX_OBJECT_NAME_LEN + 1)), ..request() },
                "BootstrapRequest resume",
            ),
        ];
        for (request, field) in cases {
            let err = BootstrapRequest::decode(&encode_request(&request)).unwrap_err();
            assert!(matches!(err, Error::StringTooLong { what, .. } if what == field), "{field}: {err}");
        }
        let long = BootstrapResponse::Pending { csr_name: "n".repeat(MAX_OBJECT_NAME_LEN + 1) };
        assert!(matches!(BootstrapResponse::decode(&encode_response(&long)), Err(Error::StringTooLong { .. })));
        // A frame too large for the decoder at all is refused by its length alone.
        let huge = BootstrapResponse::Issued { certificate_pem: "x".repeat(MAX_BOOTSTRAP_FRAME) };
        assert!(matches!(BootstrapResponse::decode(&encode_response(&huge)), Err(Error::FrameTooLarge { .. })));
    }

    #[test]
    fn truncated_and_padded_frames_are_errors() {
        let bytes = encode_request(&request());
        // Shorten the declared length by one: the last field runs past the frame.
        let mut short = bytes[..bytes.len() - 1].to_vec();
        short[..4].copy_from_slice(&u32::try_from(bytes.len() - 5).expect("fits").to_be_bytes());
        assert_eq!(BootstrapRequest::decode(&short), Err(Error::Truncated { what: "BootstrapRequest resume" }));
        // One byte more than the fields hold.
        let mut long = bytes.to_vec();
        long[..4].copy_from_slice(&u32::try_from(bytes.len() - 3).expect("fits").to_be_bytes());
        long.push(0);
        assert_eq!(BootstrapRequest::decode(&long), Err(Error::TrailingBytes { what: "BootstrapRequest", len: 1 }));
        assert_eq!(
            BootstrapResponse::decode(&[0, 0, 0, 2, REFUSED, 0]),
            Err(Error::Truncated { what: "Refused reason" })
        );
    }

    #[test]
    fn bad_presence_flags_and_types_are_errors() {
        let mut bytes = encode_request(&BootstrapRequest { token: None, ..request() }).to_vec();
        // len(4) type(1) version(2) cluster(2 + 7), then the token's presence flag.
        assert_eq!(bytes[16], 0);
        bytes[16] = 2;
        assert!(matches!(
            BootstrapRequest::decode(&bytes),
            Err(Error::InvalidField { what: "BootstrapRequest token", .. })
        ));
        // A response sent the wrong way, and a request read as a response.
        let pending = encode_response(&responses()[0]);
        assert_eq!(BootstrapRequest::decode(&pending), Err(Error::UnknownMessage(PENDING)));
        assert_eq!(BootstrapResponse::decode(&encode_request(&request())), Err(Error::UnknownMessage(REQUEST)));
        assert_eq!(
            BootstrapResponse::decode(&[0, 0, 0, 3, REFUSED, 0, 1]),
            Err(Error::Truncated { what: "Refused reason" })
        );
        assert_eq!(
            BootstrapResponse::decode(&[0, 0, 0, 4, REFUSED, 0, 1, 0xff]),
            Err(Error::InvalidUtf8 { what: "Refused reason" })
        );
    }

    #[test]
    fn an_unparsable_request_of_another_version_is_a_version_mismatch() {
        let frame = [0, 0, 0, 4, REQUEST, 0, 2, 0xee];
        assert_eq!(
            BootstrapRequest::decode(&frame),
            Err(Error::VersionMismatch { ours: BOOTSTRAP_VERSION, theirs: 2 })
        );
        let frame = [0, 0, 0, 4, REQUEST, 0, 1, 0xee];
        assert_eq!(BootstrapRequest::decode(&frame), Err(Error::Truncated { what: "BootstrapRequest cluster" }));
    }

    #[test]
    fn response_decoder_errors_are_sticky() {
        let mut decoder = ResponseDecoder::new();
        decoder.push(&[0, 0, 0, 1, 0x01]);
        assert_eq!(decoder.next_response(), Err(Error::UnknownMessage(1)));
        decoder.push(&encode_response(&responses()[0]));
        assert_eq!(decoder.next_response(), Err(Error::UnknownMessage(1)));
        assert_eq!(decoder.buffered(), 0);
    }
}
