//! Stream adapters.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A bidirectional QUIC stream as one `AsyncRead + AsyncWrite`, as hyper wants it.
pub type QuicIo = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

pub fn quic_io(send: quinn::SendStream, recv: quinn::RecvStream) -> QuicIo {
    tokio::io::join(recv, send)
}

/// Replays bytes already read past a header before reading on from the inner stream.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Writes `head` (a stream header) in the same write as the first bytes written through it. Written on its
/// own, the header would leave in a QUIC packet of its own, before the request it belongs to.
#[derive(Debug)]
pub struct WriteHead<S> {
    /// The head joined with the first write, and how much of it the inner stream has taken.
    pending: Option<(Bytes, usize)>,
    head: Option<Bytes>,
    inner: S,
}

impl<S> WriteHead<S> {
    pub fn new(head: Bytes, inner: S) -> Self {
        Self { pending: None, head: Some(head), inner }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteHead<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(head) = this.head.take() {
            let mut joined = bytes::BytesMut::with_capacity(head.len() + buf.len());
            joined.extend_from_slice(&head);
            joined.extend_from_slice(buf);
            // `buf` is copied: it counts as written once all of `joined` is, whatever the caller passes then.
            this.pending = Some((joined.freeze(), buf.len()));
        }
        let Some((joined, claimed)) = this.pending.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        while joined.has_remaining() {
            match Pin::new(&mut this.inner).poll_write(cx, joined) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => joined.advance(n),
                other => return other,
            }
        }
        let claimed = *claimed;
        this.pending = None;
        Poll::Ready(Ok(claimed))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.head.is_some() || self.pending.is_some() {
            // Nothing was written yet (or not all): the head still goes first.
            std::task::ready!(self.as_mut().poll_write(cx, &[]))?;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn head_goes_out_with_the_first_write() {
        // A duplex of 3 bytes takes every write in pieces, so the join is written across many polls.
        let (a, mut b) = tokio::io::duplex(3);
        let mut w = WriteHead::new(Bytes::from_static(b"HDR"), a);
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.unwrap();
            out
        });
        w.write_all(b"GET / HTTP/1.1").await.unwrap();
        w.write_all(b"!").await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), b"HDRGET / HTTP/1.1!");
    }

    #[tokio::test]
    async fn head_is_written_even_if_nothing_else_is() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = WriteHead::new(Bytes::from_static(b"HDR"), a);
        w.shutdown().await.unwrap();
        drop(w);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"HDR");
    }

    #[tokio::test]
    async fn prefix_is_read_before_the_inner_stream() {
        let inner: &[u8] = b" world";
        let mut s = Prefixed::new(Bytes::from_static(b"hello"), inner);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
