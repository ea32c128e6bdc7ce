//! `FrameDecoder` fed arbitrary bytes in pieces: never panics, errors are sticky, and every
//! decoded message survives an encode/decode round trip.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_proto::{FrameDecoder, MAX_CONTROL_FRAME};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size (1..=256), the rest is the stream.
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = FrameDecoder::new(MAX_CONTROL_FRAME);
    for chunk in stream.chunks(usize::from(piece) + 1) {
        decoder.push(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let mut again = BytesMut::new();
                    message.encode(&mut again);
                    let mut check = FrameDecoder::new(MAX_CONTROL_FRAME);
                    check.push(&again);
                    assert_eq!(check.next_message(), Ok(Some(message)));
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(decoder.next_message().is_err());
                    return;
                }
            }
        }
    }
});
