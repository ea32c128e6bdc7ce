//! HTTP over one QUIC stream, as both ends speak it ([`tether_proto::http_head`]): heads are read with
//! [`read_head`], bodies leave through [`send_with_body`] and arrive as a [`RecvBody`]. Chunks pass between
//! quinn and hyper as `Bytes`, uncopied.
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use crate::{BoxError, Error, Result};

/// The reset code of a stream whose body failed half-way: the peer must not take what it got for the
/// whole body.
pub const RESET_BODY_FAILED: u32 = tether_proto::Code::BodyFailed.value();

/// Reads one head (a stream header, a request or a response head) that starts with `pending` and goes on in
/// `recv`. Returns it with the bytes read past it, or `None` if the stream ended before a whole head.
pub async fn read_head<H>(
    recv: &mut quinn::RecvStream,
    mut pending: Bytes,
    decode: impl Fn(&[u8]) -> tether_proto::Result<Option<(H, usize)>>,
) -> Result<Option<(H, Bytes)>> {
    // Most heads arrive whole in one chunk and are decoded in place; only a head split across chunks is copied.
    let mut joined: Option<BytesMut> = None;
    loop {
        let view = joined.as_deref().unwrap_or(&pending);
        if let Some((head, used)) = decode(view)? {
            let rest = match joined {
                Some(joined) => joined.freeze().slice(used..),
                None => pending.slice(used..),
            };
            return Ok(Some((head, rest)));
        }
        let Some(chunk) = recv.read_chunk(usize::MAX, true).await.map_err(Error::Read)? else {
            return Ok(None);
        };
        match &mut joined {
            None if pending.is_empty() => pending = chunk.bytes,
            None => {
                let mut buf = BytesMut::from(&pending[..]);
                buf.extend_from_slice(&chunk.bytes);
                joined = Some(buf);
            }
            Some(buf) => buf.extend_from_slice(&chunk.bytes),
        }
    }
}

/// Writes `head`, then every data frame of `body`, then the FIN. The head shares its write with the body's
/// first frame when that is ready at once (a small response usually is), so both leave in one packet; a
/// watch's head leaves at once. A body that fails resets the stream with [`RESET_BODY_FAILED`]. Trailers are
/// dropped: the Kubernetes API has none.
pub async fn send_with_body<B>(send: &mut quinn::SendStream, head: Bytes, body: B) -> Result<()>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut head = Some(head);
    loop {
        let frame = match head.is_some() && !body.is_end_stream() {
            true => match poll_now(body.as_mut()) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    write(send, &mut [head.take().unwrap_or_default()]).await?;
                    continue;
                }
            },
            false if body.is_end_stream() => None,
            false => body.frame().await,
        };
        match frame {
            None => {
                if let Some(head) = head.take() {
                    write(send, &mut [head]).await?;
                }
                // Finishing fails only on a stream already reset or stopped, which the peer knows about.
                let _ = send.finish();
                return Ok(());
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                match head.take() {
                    Some(head) => write(send, &mut [head, data]).await?,
                    None => write(send, &mut [data]).await?,
                }
            }
            Some(Err(e)) => {
                let _ = send.reset(RESET_BODY_FAILED.into());
                return Err(Error::Body(e.into()));
            }
        }
    }
}

type PolledFrame<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// The body's next frame if it is ready now. The no-op waker it leaves behind is replaced by the next real poll.
fn poll_now<B: Body>(body: Pin<&mut B>) -> PolledFrame<B> {
    body.poll_frame(&mut Context::from_waker(Waker::noop()))
}

async fn write(send: &mut quinn::SendStream, chunks: &mut [Bytes]) -> Result<()> {
    send.write_all_chunks(chunks).await.map_err(Error::Write)
}

/// A body read from a QUIC stream up to its FIN, after the bytes already read with its head. Dropped early,
/// it stops the stream, and the peer stops sending.
#[derive(Debug)]
pub struct RecvBody {
    pending: Bytes,
    recv: Option<quinn::RecvStream>,
    /// An error met while looking ahead, returned after the data before it.
    failed: Option<quinn::ReadError>,
}

impl RecvBody {
    pub fn new(pending: Bytes, recv: quinn::RecvStream) -> Self {
        Self { pending, recv: Some(recv), failed: None }
    }

    /// No body at all: a request without one is forwarded as such.
    pub fn empty() -> Self {
        Self { pending: Bytes::new(), recv: None, failed: None }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = quinn::ReadError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if !self.pending.is_empty() {
            let data = std::mem::take(&mut self.pending);
            self.look_for_fin(cx);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match self.poll_chunk(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(data))) => {
                self.look_for_fin(cx);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.recv.is_none() && self.failed.is_none()
    }
}

impl RecvBody {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, quinn::ReadError>> {
        let Some(recv) = self.recv.as_mut() else { return Poll::Ready(Ok(None)) };
        // `read_chunk` is cancel-safe: a future made for each poll loses nothing.
        let read = std::pin::pin!(recv.read_chunk(usize::MAX, true)).poll(cx);
        if let Poll::Ready(Ok(None) | Err(_)) = read {
            self.recv = None;
        }
        read.map(|r| r.map(|chunk| chunk.map(|c| c.bytes)))
    }

    /// After a chunk, reads on if more is there already, so that a FIN that came with the last bytes is seen
    /// and `is_end_stream` tells the truth. Readers such as hyper stop polling once a Content-Length is
    /// reached, and a stream dropped before its FIN was read sends STOP_SENDING: one more packet each way
    /// for every request.
    fn look_for_fin(&mut self, cx: &mut Context<'_>) {
        if !self.pending.is_empty() {
            return;
        }
        match self.poll_chunk(cx) {
            Poll::Ready(Ok(Some(data))) => self.pending = data,
            Poll::Ready(Err(e)) => self.failed = Some(e),
            Poll::Ready(Ok(None)) | Poll::Pending => {}
        }
    }
}

/// A body that keeps `T` (a gauge, a pool slot) until the body is dropped.
pub struct Holding<B, T> {
    body: B,
    _held: T,
}

impl<B, T> Holding<B, T> {
    pub fn new(body: B, held: T) -> Self {
        Self { body, _held: held }
    }
}

impl<B: Body + Unpin, T: Unpin> Body for Holding<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
