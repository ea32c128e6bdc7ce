use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Body, Frame};
use tether_proto::ResponseHead;

use super::*;

use tether_runtime::testing::LoopbackPair as Pair;

async fn pair() -> Pair {
    tether_runtime::testing::loopback_pair(b"").await
}

fn head(status: u16) -> Bytes {
    let mut out = BytesMut::new();
    ResponseHead { status: ::http::StatusCode::from_u16(status).unwrap(), headers: Default::default() }
        .encode(&mut out);
    out.freeze()
}

/// Opens a stream and accepts it on the far side (a stream is announced only once something is written).
async fn stream(pair: &Pair) -> (quinn::SendStream, quinn::RecvStream, quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = pair.dialer.open_bi().await.unwrap();
    send.write_all(b"x").await.unwrap();
    let (far_send, mut far_recv) = pair.acceptor.accept_bi().await.unwrap();
    let mut x = [0u8; 1];
    far_recv.read_exact(&mut x).await.unwrap();
    (send, recv, far_send, far_recv)
}

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future).await.expect("within 10 s")
}

#[tokio::test]
async fn a_head_and_body_arrive_whole_and_end_in_a_fin() {
    let pair = pair().await;
    let (_, mut recv, mut far_send, _) = stream(&pair).await;
    let body = Full::new(Bytes::from_static(b"hello, world"));
    within(send_with_body(&mut far_send, head(200), body)).await.unwrap();

    let (response, rest) = within(read_head(&mut recv, Bytes::new(), ResponseHead::decode)).await.unwrap().unwrap();
    assert_eq!(response.status, 200);
    let body = within(RecvBody::new(rest, recv).collect()).await.unwrap().to_bytes();
    assert_eq!(body, "hello, world");
}

#[tokio::test]
async fn a_head_split_across_writes_is_joined() {
    let pair = pair().await;
    let (_, mut recv, mut far_send, _) = stream(&pair).await;
    let head = head(404);
    for byte in head.iter().chain(b"tail") {
        far_send.write_all(&[*byte]).await.unwrap();
    }
    far_send.finish().unwrap();
    let (response, rest) = within(read_head(&mut recv, Bytes::new(), ResponseHead::decode)).await.unwrap().unwrap();
    let body = within(RecvBody::new(rest, recv).collect()).await.unwrap().to_bytes();
    assert_eq!((response.status.as_u16(), &body[..]), (404, &b"tail"[..]));
}

#[tokio::test]
async fn a_body_that_fails_half_way_arrives_as_an_error_not_an_end() {
    let pair = pair().await;
    let (_, mut recv, mut far_send, _) = stream(&pair).await;
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
        vec![Ok(Frame::data(Bytes::from_static(b"part"))), Err(std::io::Error::other("upstream reset"))];
    let body = StreamBody::new(futures::stream::iter(frames));
    let sent = within(send_with_body(&mut far_send, head(200), body)).await;
    // The body's own error is the source, not its text: callers can tell an upstream reset from a timeout.
    let source = match &sent {
        Err(e @ Error::Body(_)) => std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>()),
        other => panic!("{other:?}"),
    };
    assert_eq!(source.map(|e| e.to_string()), Some("upstream reset".to_string()));

    // A reset lets quinn drop what was not read yet: the error may come before the head, or after some body.
    let reset = quinn::ReadError::Reset(RESET_BODY_FAILED.into());
    let rest = match within(read_head(&mut recv, Bytes::new(), ResponseHead::decode)).await {
        Ok(Some((_, rest))) => rest,
        Err(Error::Read(e)) => return assert_eq!(e, reset),
        other => panic!("{other:?}"),
    };
    let mut body = RecvBody::new(rest, recv);
    let mut got = Vec::new();
    let error = loop {
        match within(body.frame()).await {
            Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(e)) => break e,
            None => panic!("a clean end after {got:?}"),
        }
    };
    assert_eq!(error, reset);
}

#[tokio::test]
async fn dropping_the_reader_stops_an_endless_body() {
    let pair = pair().await;
    let (_, recv, mut far_send, _) = stream(&pair).await;
    let reader = RecvBody::new(Bytes::new(), recv);
    assert!(!reader.is_end_stream());
    drop(reader);
    // A watch: its head goes out at once, and then its body waits forever, until the stream is stopped.
    let endless = StreamBody::new(futures::stream::iter(std::iter::repeat_with(|| {
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(&[0; 1024])))
    })));
    let sent = within(send_with_body(&mut far_send, head(200), endless)).await;
    assert!(matches!(sent, Err(Error::Write(quinn::WriteError::Stopped(_)))), "{sent:?}");
}

#[test]
fn empty_bodies_end_at_once_and_holding_keeps_its_value() {
    assert!(RecvBody::empty().is_end_stream());
    let held = Arc::new(());
    let body = Holding::new(Full::new(Bytes::from_static(b"x")), held.clone());
    assert_eq!((Arc::strong_count(&held), body.size_hint().exact()), (2, Some(1)));
    drop(body);
    assert_eq!(Arc::strong_count(&held), 1);
}

#[tokio::test]
async fn a_body_read_to_its_length_ends_without_stopping_the_sender() {
    let pair = pair().await;
    let (_, mut recv, mut far_send, _) = stream(&pair).await;
    within(send_with_body(&mut far_send, head(200), Full::new(Bytes::from_static(b"12345")))).await.unwrap();

    let (_, rest) = within(read_head(&mut recv, Bytes::new(), ResponseHead::decode)).await.unwrap().unwrap();
    let mut body = RecvBody::new(rest, recv);
    let data = within(body.frame()).await.unwrap().unwrap().into_data().unwrap();
    // As hyper does with a Content-Length: the last byte is in, so the body is dropped unpolled. The FIN came
    // with it, and was seen.
    assert_eq!((&data[..], body.is_end_stream()), (&b"12345"[..], true));
    drop(body);
    // A stream dropped before its FIN was read would have been stopped: one more packet each way.
    assert_eq!(within(far_send.stopped()).await.unwrap(), None);
}
