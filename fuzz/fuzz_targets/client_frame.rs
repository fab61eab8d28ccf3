//! Bytes from the network → the WebSocket decoder (with and without
//! permessage-deflate) → the client frame parser. Nothing may panic, and
//! every decoded message must respect the size limit.
#![no_main]

use std::collections::VecDeque;

use herald_gateway::wire::codec::{Decoder, Message};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let (deflate, bytes) = match data.split_first() {
        Some((flag, rest)) => (flag & 1 == 1, rest),
        None => return,
    };
    let mut decoder = Decoder::new(MAX, true).with_deflate(deflate);
    let mut out = VecDeque::new();
    // Feed in two chops, as the network would.
    let cut = bytes.len() / 2;
    let Ok(used) = decoder.decode(&bytes[..cut], &mut out) else { return };
    let mut rest = bytes[used..cut].to_vec();
    rest.extend_from_slice(&bytes[cut..]);
    let _ = decoder.decode(&rest, &mut out);
    for message in out {
        match message {
            Message::Text(t) => {
                assert!(t.len() <= MAX);
                let text = std::str::from_utf8(&t).expect("text messages are valid UTF-8");
                let _ = herald_protocol::parse_client_frame(text);
            }
            Message::Binary(b) => assert!(b.len() <= MAX),
            Message::Ping(p) => assert!(p.len() <= 125),
            Message::Pong | Message::Close(_) => {}
        }
    }
});
