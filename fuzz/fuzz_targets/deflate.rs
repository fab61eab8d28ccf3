//! Inflating arbitrary permessage-deflate payloads: never panics, never
//! returns more than the limit.
#![no_main]

use herald_gateway::wire::deflate::{compress, decompress};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = decompress(data, 8192) {
        assert!(out.len() <= 8192);
    }
    // Round trip.
    let packed = compress(data, 15);
    assert_eq!(decompress(&packed, data.len().max(1)).expect("own output inflates"), data);
});
