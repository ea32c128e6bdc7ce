//! Big-endian primitives shared by the header and control codecs.
//!
//! [`Reader`] checks every length before it reads, so decoding code built on it cannot
//! index out of bounds; [`put_string`] is its encoding counterpart.

use bytes::{BufMut, BytesMut};

use crate::{Error, Result};

/// A cursor over one complete header body or control frame.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let (head, rest) = self.buf.split_first_chunk::<N>().ok_or(Error::Truncated { what })?;
        self.buf = rest;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8> {
        self.array::<1>(what).map(|[b]| b)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.array(what).map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64> {
        self.array(what).map(u64::from_be_bytes)
    }

    /// A `u16` length followed by that many bytes of UTF-8, at most `max` bytes long.
    ///
    /// `max` must stay below `u16::MAX`: [`put_string`] saturates the length of longer strings
    /// to `u16::MAX`, and this check is what turns such a string into an error instead of a
    /// misaligned parse.
    pub(crate) fn string(&mut self, what: &'static str, max: usize) -> Result<String> {
        let len = usize::from(self.u16(what)?);
        if len > max {
            return Err(Error::StringTooLong { what, len, max });
        }
        if self.buf.len() < len {
            return Err(Error::Truncated { what });
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        let s = std::str::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 { what })?;
        Ok(s.to_owned())
    }

    /// A `u16` length followed by that many bytes, at most `max`, borrowed: for fields that are parsed on
    /// (HTTP names and methods) rather than kept as text.
    pub(crate) fn short_bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8]> {
        let len = usize::from(self.u16(what)?);
        if len > max {
            return Err(Error::StringTooLong { what, len, max });
        }
        self.bytes(what, len)
    }

    /// `len` raw bytes.
    pub(crate) fn bytes(&mut self, what: &'static str, len: usize) -> Result<&'a [u8]> {
        if self.buf.len() < len {
            return Err(Error::Truncated { what });
        }
        let (bytes, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(bytes)
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Ends the parse: the fields must have used every byte.
    pub(crate) fn finish(self, what: &'static str) -> Result<()> {
        match self.buf.len() {
            0 => Ok(()),
            len => Err(Error::TrailingBytes { what, len }),
        }
    }
}

/// Writes `s` as a `u16` length and its bytes.
///
/// A string longer than `u16::MAX` gets the saturated length `u16::MAX`; every decoder limits
/// strings to far less, so the peer rejects it rather than misreading it.
pub(crate) fn put_string(out: &mut BytesMut, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.put_u16(len);
    out.put_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_fields_in_order() {
        let buf = [1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4];
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16("b"), Ok(2));
        assert_eq!(r.u32("c"), Ok(3));
        assert_eq!(r.u64("d"), Ok(4));
        assert_eq!(r.finish("buf"), Ok(()));
    }

    #[test]
    fn short_fields_are_truncated_errors() {
        assert_eq!(Reader::new(&[0; 7]).u64("seq"), Err(Error::Truncated { what: "seq" }));
        assert_eq!(Reader::new(&[0, 5, b'a']).string("name", 10), Err(Error::Truncated { what: "name" }));
    }

    #[test]
    fn string_limits_and_utf8_are_checked() {
        let mut out = BytesMut::new();
        put_string(&mut out, "héllo");
        assert_eq!(Reader::new(&out).string("s", 16), Ok("héllo".to_owned()));
        assert_eq!(Reader::new(&out).string("s", 3), Err(Error::StringTooLong { what: "s", len: 6, max: 3 }));
        assert_eq!(Reader::new(&[0, 1, 0xff]).string("s", 16), Err(Error::InvalidUtf8 { what: "s" }));
    }

    #[test]
    fn oversized_strings_saturate_and_are_rejected() {
        let long = "x".repeat(usize::from(u16::MAX) + 10);
        let mut out = BytesMut::new();
        put_string(&mut out, &long);
        assert_eq!(&out[..2], &[0xff, 0xff]);
        assert!(matches!(Reader::new(&out).string("s", 1024), Err(Error::StringTooLong { .. })));
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let mut r = Reader::new(&[0, 1, 2]);
        assert_eq!(r.u8("a"), Ok(0));
        assert_eq!(r.finish("frame"), Err(Error::TrailingBytes { what: "frame", len: 2 }));
    }
}
