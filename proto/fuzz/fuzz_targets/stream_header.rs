//! `StreamHeader::decode` on arbitrary bytes: never panics, and a decoded header re-encodes
//! to exactly the bytes it was read from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_proto::StreamHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, consumed))) = StreamHeader::decode(data) {
        assert!(consumed <= data.len());
        let mut again = BytesMut::new();
        header.encode(&mut again);
        assert_eq!(&again[..], &data[..consumed]);
        assert_eq!(header.validate(), Ok(()));
    }
});
