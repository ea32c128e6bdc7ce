//! The bootstrap decoders on arbitrary bytes: never panic, a decoded request re-encodes to exactly the
//! bytes it was read from, the response decoder's errors are sticky and its responses round-trip.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_proto::{BootstrapRequest, BootstrapResponse, ResponseDecoder};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((request, consumed))) = BootstrapRequest::decode(data) {
        let mut again = BytesMut::new();
        request.encode(&mut again);
        assert_eq!(&again[..], &data[..consumed]);
    }
    // The first byte picks the piece size (1..=256), the rest is the response stream.
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = ResponseDecoder::new();
    for chunk in stream.chunks(usize::from(piece) + 1) {
        decoder.push(chunk);
        loop {
            match decoder.next_response() {
                Ok(Some(response)) => {
                    let mut again = BytesMut::new();
                    response.encode(&mut again);
                    assert_eq!(BootstrapResponse::decode(&again), Ok(Some((response, again.len()))));
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(decoder.next_response().is_err());
                    return;
                }
            }
        }
    }
});
