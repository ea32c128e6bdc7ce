//! The stream header: the first bytes the hub writes on every stream it opens.
//!
//! ```text
//! u16 body_len                      bytes that follow, at most MAX_HEADER_LEN
//! u8  kind                          0 = apiserver, 1 = service
//! u64 request_id
//! kind 1 only:
//!   u16 len, namespace              UTF-8, 1..=MAX_NAME_LEN bytes
//!   u16 len, name                   UTF-8, 1..=MAX_NAME_LEN bytes
//!   u16 port                        non-zero
//! ```
//!
//! An apiserver header is 11 bytes. Whatever follows the header on the stream is the
//! proxied byte stream (an HTTP/1.1 request for the apiserver, raw TCP for a service).

use bytes::{BufMut, BytesMut};

use crate::wire::{put_string, Reader};
use crate::{Error, Result};

/// Longest header body a decoder accepts; a longer declared length is an error.
pub const MAX_HEADER_LEN: usize = 1024;

/// Longest namespace or service name, in bytes (a DNS subdomain's limit).
pub const MAX_NAME_LEN: usize = 253;

const KIND_API_SERVER: u8 = 0;
const KIND_SERVICE: u8 = 1;

/// Where the spoke sends the stream's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The spoke's own Kubernetes apiserver.
    ApiServer,
    /// A TCP port of an (allow-listed) Service in the spoke cluster.
    Service { namespace: String, name: String, port: u16 },
}

/// The header that opens every hub-initiated stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub target: Target,
    /// Chosen by the hub, echoed in both ends' logs to join them up.
    pub request_id: u64,
}

impl StreamHeader {
    /// Appends the encoded header to `out`.
    ///
    /// Encoding never fails. A header that [`StreamHeader::validate`] rejects is still written
    /// with honest lengths, so the spoke's decoder rejects it with the matching error rather
    /// than misreading it; callers that build targets from user input validate first.
    pub fn encode(&self, out: &mut BytesMut) {
        let body_len = match &self.target {
            Target::ApiServer => 9,
            Target::Service { namespace, name, .. } => 9 + 2 + namespace.len() + 2 + name.len() + 2,
        };
        out.reserve(2 + body_len);
        // A body too long for u16 saturates: the decoder rejects anything above
        // MAX_HEADER_LEN before reading the body.
        out.put_u16(u16::try_from(body_len).unwrap_or(u16::MAX));
        match &self.target {
            Target::ApiServer => {
                out.put_u8(KIND_API_SERVER);
                out.put_u64(self.request_id);
            }
            Target::Service { namespace, name, port } => {
                out.put_u8(KIND_SERVICE);
                out.put_u64(self.request_id);
                put_string(out, namespace);
                put_string(out, name);
                out.put_u16(*port);
            }
        }
    }

    /// Decodes a header from the start of `buf`.
    ///
    /// `Ok(None)` when `buf` does not yet hold a whole header; `Ok(Some((header, consumed)))`
    /// otherwise, where `buf[consumed..]` is the start of the proxied bytes.
    pub fn decode(buf: &[u8]) -> Result<Option<(StreamHeader, usize)>> {
        let Some((len, rest)) = buf.split_first_chunk::<2>() else {
            return Ok(None);
        };
        let declared = usize::from(u16::from_be_bytes(*len));
        if declared > MAX_HEADER_LEN {
            return Err(Error::HeaderTooLong { declared, max: MAX_HEADER_LEN });
        }
        let Some(body) = rest.get(..declared) else {
            return Ok(None);
        };
        let mut r = Reader::new(body);
        let kind = r.u8("stream target kind")?;
        let request_id = r.u64("request id")?;
        let target = match kind {
            KIND_API_SERVER => Target::ApiServer,
            KIND_SERVICE => {
                let namespace = r.string("namespace", MAX_NAME_LEN)?;
                let name = r.string("service name", MAX_NAME_LEN)?;
                let port = r.u16("service port")?;
                let target = Target::Service { namespace, name, port };
                target.validate()?;
                target
            }
            other => return Err(Error::UnknownTarget(other)),
        };
        r.finish("stream header")?;
        Ok(Some((StreamHeader { target, request_id }, 2 + declared)))
    }

    /// Checks what the decoder checks, so the hub can refuse a bad target before opening a stream.
    pub fn validate(&self) -> Result<()> {
        self.target.validate()
    }
}

impl Target {
    /// Checks the limits the decoder enforces: names of 1..=[`MAX_NAME_LEN`] bytes, port non-zero.
    pub fn validate(&self) -> Result<()> {
        match self {
            Target::ApiServer => Ok(()),
            Target::Service { namespace, name, port } => {
                check_name("namespace", namespace)?;
                check_name("service name", name)?;
                if *port == 0 {
                    return Err(Error::InvalidField { what: "service port", reason: "port 0" });
                }
                Ok(())
            }
        }
    }
}

fn check_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidField { what, reason: "empty" });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::StringTooLong { what, len: name.len(), max: MAX_NAME_LEN });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(request_id: u64) -> StreamHeader {
        StreamHeader { target: Target::ApiServer, request_id }
    }

    fn service(namespace: &str, name: &str, port: u16) -> StreamHeader {
        StreamHeader {
            target: Target::Service { namespace: namespace.into(), name: name.into(), port },
            request_id: 0x0102_0304_0506_0708,
        }
    }

    fn encode(header: &StreamHeader) -> BytesMut {
        let mut out = BytesMut::new();
        header.encode(&mut out);
        out
    }

    /// A valid header followed by `tail`, decoded from every prefix: `None` until complete.
    fn check_round_trip(header: &StreamHeader) {
        let mut buf = encode(header);
        let len = buf.len();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for split in 0..len {
            assert_eq!(StreamHeader::decode(&buf[..split]), Ok(None), "split {split}");
        }
        for end in len..=buf.len() {
            assert_eq!(StreamHeader::decode(&buf[..end]), Ok(Some((header.clone(), len))));
        }
    }

    #[test]
    fn api_server_header_is_eleven_bytes() {
        let buf = encode(&api(7));
        assert_eq!(&buf[..], &[0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn round_trips() {
        check_round_trip(&api(0));
        check_round_trip(&api(u64::MAX));
        check_round_trip(&service("default", "web", 8080));
        check_round_trip(&service("ns-ü", "x", 1));
        let long = "a".repeat(MAX_NAME_LEN);
        check_round_trip(&service(&long, &long, u16::MAX));
    }

    #[test]
    fn declared_length_above_limit_is_an_error() {
        let declared = MAX_HEADER_LEN + 1;
        let buf = u16::try_from(declared).expect("fits").to_be_bytes();
        assert_eq!(StreamHeader::decode(&buf), Err(Error::HeaderTooLong { declared, max: MAX_HEADER_LEN }));
        // At the limit the length is fine, the zero body is not.
        let mut buf = vec![0; 2 + MAX_HEADER_LEN];
        buf[..2].copy_from_slice(&u16::try_from(MAX_HEADER_LEN).expect("fits").to_be_bytes());
        assert_eq!(
            StreamHeader::decode(&buf),
            Err(Error::TrailingBytes { what: "stream header", len: MAX_HEADER_LEN - 9 })
        );
    }

    #[test]
    fn oversized_names_are_rejected_by_the_peer() {
        let name = "n".repeat(MAX_NAME_LEN + 1);
        let header = service("default", &name, 80);
        assert!(header.validate().is_err());
        assert_eq!(
            StreamHeader::decode(&encode(&header)),
            Err(Error::StringTooLong { what: "service name", len: MAX_NAME_LEN + 1, max: MAX_NAME_LEN })
        );
        let huge = "n".repeat(70_000);
        assert!(matches!(StreamHeader::decode(&encode(&service(&huge, "web", 80))), Err(Error::HeaderTooLong { .. })));
    }

    #[test]
    fn invalid_fields_are_errors() {
        for header in [service("", "web", 80), service("ns", "", 80), service("ns", "web", 0)] {
            assert!(header.validate().is_err());
            assert!(matches!(StreamHeader::decode(&encode(&header)), Err(Error::InvalidField { .. })));
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(StreamHeader::decode(&[0, 9, 7, 0, 0, 0, 0, 0, 0, 0, 0]), Err(Error::UnknownTarget(7)));
        assert_eq!(StreamHeader::decode(&[0, 3, 0, 0, 0]), Err(Error::Truncated { what: "request id" }));
        assert_eq!(StreamHeader::decode(&[0, 0]), Err(Error::Truncated { what: "stream target kind" }));
        let mut buf = encode(&api(1));
        buf[1] += 1;
        buf.extend_from_slice(&[0]);
        assert_eq!(StreamHeader::decode(&buf), Err(Error::TrailingBytes { what: "stream header", len: 1 }));
        let mut buf = encode(&service("ab", "web", 80));
        // Namespace bytes start after len(2) + kind(1) + id(8) + str len(2).
        buf[13] = 0xff;
        assert_eq!(StreamHeader::decode(&buf), Err(Error::InvalidUtf8 { what: "namespace" }));
    }
}
