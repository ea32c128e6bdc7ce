//! The HTTP heads of an apiserver stream. After the [`StreamHeader`](crate::StreamHeader) the hub writes one
//! [`RequestHead`] and then the request body, if any, as raw bytes up to its FIN; the spoke answers with one
//! [`ResponseHead`] and the response body up to its FIN. A body cut short ends in a stream reset, never in a
//! FIN, so a truncated body cannot pass for a whole one. After a `101 Switching Protocols` both directions
//! carry the upgraded protocol's bytes.
//!
//! ```text
//! request:  u32 len | u8 flags | str method | str path_and_query | u16 count | count × header
//! response: u32 len | u16 status | u16 count | count × header
//! header:   str name | u32 len, value bytes
//! ```
//!
//! `len` counts what follows it and is at most [`MAX_HEAD_LEN`]. Flag bit 0 says a request body follows;
//! without it the hub has finished its side with the head, and the spoke forwards a request without a body.
//! Other flag bits are reserved and must be zero.
//!
//! Why not HTTP/1.1 over the stream: it needs an HTTP/1 connection (8 KiB buffers, a task) on both ends of
//! every stream and a chunked encoding the QUIC stream already provides; a head of tether's own costs a few
//! hundred bytes and one allocation each way.

use bytes::{BufMut, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, StatusCode};

use crate::wire::{put_string, Reader};
use crate::{Error, Result};

/// Longest head a decoder accepts (what follows the length), as Go's `http.DefaultMaxHeaderBytes`.
pub const MAX_HEAD_LEN: usize = 1 << 20;

const FLAG_BODY: u8 = 1;

/// A request as the hub forwards it to a spoke's apiserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    /// A body follows the head; otherwise the request has none.
    pub body: bool,
}

/// The apiserver's answer, as the spoke returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

impl RequestHead {
    /// Appends the encoded head to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out);
        out.put_u8(if self.body { FLAG_BODY } else { 0 });
        put_string(out, self.method.as_str());
        put_string(out, self.path_and_query.as_str());
        put_headers(out, &self.headers);
        end(out, start);
    }

    /// Decodes a head from the start of `buf`: `Ok(None)` while `buf` holds only part of it, otherwise the head
    /// and the bytes it took (the body starts after them).
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>> {
        let Some((mut r, used)) = framed(buf, "request head")? else { return Ok(None) };
        let flags = r.u8("request flags")?;
        if flags & !FLAG_BODY != 0 {
            return Err(Error::InvalidField { what: "request flags", reason: "reserved bits are set" });
        }
        let method = Method::from_bytes(r.short_bytes("method", 64)?)
            .map_err(|_| Error::InvalidField { what: "method", reason: "not an HTTP method token" })?;
        let path = r.short_bytes("path", usize::from(u16::MAX) - 1)?;
        let path_and_query = PathAndQuery::try_from(path)
            .map_err(|_| Error::InvalidField { what: "path", reason: "not a valid path and query" })?;
        if !path_and_query.as_str().starts_with('/') {
            return Err(Error::InvalidField { what: "path", reason: "must start with /" });
        }
        // `http` drops a fragment and normalises some spellings: what the spoke forwards must be exactly what
        // the hub checked, so only a path that is already in its parsed form is accepted.
        if path_and_query.as_str().as_bytes() != path {
            return Err(Error::InvalidField { what: "path", reason: "not in canonical form (a fragment?)" });
        }
        let headers = read_headers(&mut r)?;
        r.finish("request head")?;
        Ok(Some((Self { method, path_and_query, headers, body: flags & FLAG_BODY != 0 }, used)))
    }
}

impl ResponseHead {
    /// Appends the encoded head to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out);
        out.put_u16(self.status.as_u16());
        put_headers(out, &self.headers);
        end(out, start);
    }

    /// As [`RequestHead::decode`].
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>> {
        let Some((mut r, used)) = framed(buf, "response head")? else { return Ok(None) };
        let status = StatusCode::from_u16(r.u16("status")?)
            .map_err(|_| Error::InvalidField { what: "status", reason: "not in 100..=999" })?;
        let headers = read_headers(&mut r)?;
        r.finish("response head")?;
        Ok(Some((Self { status, headers }, used)))
    }
}

/// Reserves the length field; [`end`] fills it in.
fn begin(out: &mut BytesMut) -> usize {
    let start = out.len();
    out.put_u32(0);
    start
}

fn end(out: &mut BytesMut, start: usize) {
    // An oversized head keeps its honest length, which the decoder refuses before reading it.
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn framed<'a>(buf: &'a [u8], what: &'static str) -> Result<Option<(Reader<'a>, usize)>> {
    let Some((len, rest)) = buf.split_first_chunk::<4>() else { return Ok(None) };
    let declared = u32::from_be_bytes(*len) as usize;
    if declared > MAX_HEAD_LEN {
        return Err(Error::HeadTooLong { what, declared, max: MAX_HEAD_LEN });
    }
    Ok(rest.get(..declared).map(|body| (Reader::new(body), 4 + declared)))
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    out.put_u16(u16::try_from(headers.len()).unwrap_or(u16::MAX));
    for (name, value) in headers.iter().take(usize::from(u16::MAX)) {
        put_string(out, name.as_str());
        out.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
        out.put_slice(value.as_bytes());
    }
}

fn read_headers(r: &mut Reader<'_>) -> Result<HeaderMap> {
    let count = usize::from(r.u16("header count")?);
    // Each header takes at least 6 bytes: a hostile count cannot make us reserve much.
    let mut headers = HeaderMap::with_capacity(count.min(r.remaining() / 6));
    for _ in 0..count {
        let name = HeaderName::from_bytes(r.short_bytes("header name", 1024)?)
            .map_err(|_| Error::InvalidField { what: "header name", reason: "not an HTTP header name" })?;
        let len = r.u32("header value")? as usize;
        let value = HeaderValue::from_bytes(r.bytes("header value", len)?)
            .map_err(|_| Error::InvalidField { what: "header value", reason: "holds a control character" })?;
        headers.append(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: bool) -> RequestHead {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("application/json"));
        headers.append("impersonate-group", HeaderValue::from_static("system:authenticated"));
        headers.append("impersonate-group", HeaderValue::from_static("dev"));
        RequestHead {
            method: Method::GET,
            path_and_query: PathAndQuery::from_static("/api/v1/pods?watch=1&labelSelector=a%3Db"),
            headers,
            body,
        }
    }

    #[test]
    fn a_path_the_decoder_would_rewrite_is_refused() {
        // Found by the fuzz smoke: `http` parsed this path to "/" (the fragment dropped), so the head decoded
        // to something other than what was sent.
        let input = b"\x00\x00\x00\x1a\x01\x00\x01I\x00\x12#d//////////?/////\x00\x00\xff\x10";
        assert!(matches!(RequestHead::decode(input), Err(Error::InvalidField { what: "path", .. })));
        let mut canonical = request(false);
        canonical.path_and_query = PathAndQuery::from_static("/api");
        let mut encoded = BytesMut::new();
        canonical.encode(&mut encoded);
        assert!(RequestHead::decode(&encoded).unwrap().is_some(), "a canonical path still decodes");
    }

    #[test]
    fn heads_round_trip_with_repeated_headers() {
        for body in [false, true] {
            let mut out = BytesMut::new();
            request(body).encode(&mut out);
            out.extend_from_slice(b"body");
            let (decoded, used) = RequestHead::decode(&out).unwrap().unwrap();
            assert_eq!((decoded, &out[used..]), (request(body), &b"body"[..]));
        }
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("2"));
        let response = ResponseHead { status: StatusCode::CREATED, headers };
        let mut out = BytesMut::new();
        response.encode(&mut out);
        assert_eq!(ResponseHead::decode(&out).unwrap(), Some((response, out.len())));
    }

    #[test]
    fn a_partial_head_asks_for_more() {
        let mut out = BytesMut::new();
        request(false).encode(&mut out);
        for cut in 0..out.len() {
            assert_eq!(RequestHead::decode(&out[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_and_malformed_heads_are_errors() {
        let declared = (MAX_HEAD_LEN + 1) as u32;
        assert_eq!(
            ResponseHead::decode(&declared.to_be_bytes()),
            Err(Error::HeadTooLong { what: "response head", declared: MAX_HEAD_LEN + 1, max: MAX_HEAD_LEN })
        );
        let mut bad_path = request(false);
        bad_path.path_and_query = PathAndQuery::from_static("*");
        let mut out = BytesMut::new();
        bad_path.encode(&mut out);
        assert!(matches!(RequestHead::decode(&out), Err(Error::InvalidField { what: "path", .. })));

        let mut out = BytesMut::new();
        request(false).encode(&mut out);
        out[4] = 0x80;
        assert!(matches!(RequestHead::decode(&out), Err(Error::InvalidField { what: "request flags", .. })));

        // A header count larger than the headers that follow.
        let mut out = BytesMut::new();
        ResponseHead { status: StatusCode::OK, headers: HeaderMap::new() }.encode(&mut out);
        out[7] = 5;
        assert_eq!(ResponseHead::decode(&out), Err(Error::Truncated { what: "header name" }));
    }
}
