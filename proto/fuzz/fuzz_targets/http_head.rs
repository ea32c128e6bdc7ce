//! `RequestHead::decode` and `ResponseHead::decode` on arbitrary bytes: never panic, and a decoded head
//! decodes again from its own encoding.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_proto::{RequestHead, ResponseHead};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, used))) = RequestHead::decode(data) {
        assert!(used <= data.len());
        let mut again = BytesMut::new();
        head.encode(&mut again);
        assert_eq!(RequestHead::decode(&again), Ok(Some((head, again.len()))));
    }
    if let Ok(Some((head, used))) = ResponseHead::decode(data) {
        assert!(used <= data.len());
        let mut again = BytesMut::new();
        head.encode(&mut again);
        assert_eq!(ResponseHead::decode(&again), Ok(Some((head, again.len()))));
    }
});
