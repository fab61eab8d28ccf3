//! permessage-deflate (RFC 7692), always without context takeover.
//!
//! Herald accepts a client's offer only as `server_no_context_takeover;
//! client_no_context_takeover` (both may be imposed by the server, §7.1.1):
//! every message is compressed on its own. That decides the cost:
//!
//! - **Memory.** No connection keeps a compression window. The deflate and
//!   inflate states (about 260 KiB and 40 KiB with zlib's defaults) exist once
//!   per worker thread and are reset for each message; an idle compressed
//!   connection costs exactly what an uncompressed one does.
//! - **CPU.** An event's compressed frame is the same bytes for every
//!   subscriber with the same window size, so the hub compresses it once per
//!   node, not once per connection.
//! - **Bound.** Decompression stops at `limits.max_message_size` of output
//!   (1009), so a small compressed frame cannot inflate into a large one.
//!
//! Messages under [`COMPRESS_MIN`] bytes are sent uncompressed (allowed by
//! §6.1): compressing them costs more than it saves.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use herald_protocol::CloseCode;
use http::HeaderMap;

/// Smallest payload worth compressing.
pub const COMPRESS_MIN: usize = 256;

/// The negotiated parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// LZ77 window Herald compresses with (9–15).
    pub window_bits: u8,
}

fn parse_offer(offer: &str) -> Option<Option<u8>> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_bits = None;
    for param in parts.filter(|p| !p.is_empty()) {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (
                n.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"')),
            ),
            None => (param.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return None; // duplicate parameter: invalid offer
        }
        let bits = |v: Option<&str>| {
            v.and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
        };
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) => {
                // zlib cannot compress with a 256-byte window: decline 8.
                server_bits = Some(bits(Some(v)).filter(|b| *b >= 9)?);
            }
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", v) => {
                bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(server_bits)
}

/// Picks the first acceptable offer of `Sec-WebSocket-Extensions` and returns
/// the parameters and the response header value.
pub fn negotiate(headers: &HeaderMap) -> Option<(Deflate, String)> {
    let offers = headers
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for offer in offers {
        if let Some(server_bits) = parse_offer(offer) {
            let mut response = String::from(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            );
            if let Some(bits) = server_bits {
                response.push_str(&format!("; server_max_window_bits={bits}"));
            }
            return Some((
                Deflate {
                    window_bits: server_bits.unwrap_or(15),
                },
                response,
            ));
        }
    }
    None
}

thread_local! {
    static COMPRESSORS: RefCell<[Option<Compress>; 16]> = const { RefCell::new([const { None }; 16]) };
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Compresses one message: raw DEFLATE, sync-flushed, without the final
/// `00 00 ff ff` (§7.2.1).
pub fn compress(payload: &[u8], window_bits: u8) -> Vec<u8> {
    let bits = window_bits.clamp(9, 15);
    COMPRESSORS.with_borrow_mut(|all| {
        let c = all[usize::from(bits)].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::default(), false, bits)
        });
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let consumed = usize::try_from(c.total_in()).unwrap_or(usize::MAX);
            let input = payload.get(consumed..).unwrap_or(&[]);
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            if c.compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            let done = usize::try_from(c.total_in()).unwrap_or(0) >= payload.len();
            if done && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&[0, 0, 0xff, 0xff]) {
            out.truncate(out.len() - 4);
        }
        out
    })
}

/// Decompresses one message, refusing more than `max` bytes of output.
///
/// # Errors
/// 1009 when the output would exceed `max`; 1007 when the data is not valid
/// DEFLATE.
pub fn decompress(payload: &[u8], max: usize) -> Result<Vec<u8>, CloseCode> {
    INFLATER.with_borrow_mut(|slot| {
        let d = slot.get_or_insert_with(|| Decompress::new_with_window_bits(false, 15));
        d.reset(false);
        let mut out: Vec<u8> =
            Vec::with_capacity((payload.len() * 4).max(64).min(max.saturating_add(1)));
        for input in [payload, &[0, 0, 0xff, 0xff][..]] {
            let start = d.total_in();
            loop {
                let used = usize::try_from(d.total_in() - start).unwrap_or(usize::MAX);
                let rest = input.get(used..).unwrap_or(&[]);
                if out.len() > max {
                    return Err(CloseCode::TooBig);
                }
                if out.capacity() == out.len() {
                    let room =
                        (out.capacity().max(4096)).min(max.saturating_add(1) - out.len().min(max));
                    out.reserve(room.max(1));
                }
                let before = (d.total_in(), d.total_out());
                let status = d
                    .decompress_vec(rest, &mut out, FlushDecompress::Sync)
                    .map_err(|_| CloseCode::InvalidPayload)?;
                let progressed = (d.total_in(), d.total_out()) != before;
                let finished = usize::try_from(d.total_in() - start).unwrap_or(0) >= input.len();
                if status == Status::StreamEnd
                    || (finished && out.len() < out.capacity())
                    || !progressed
                {
                    break;
                }
            }
        }
        if out.len() > max {
            return Err(CloseCode::TooBig);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn offer(v: &'static str) -> Option<(Deflate, String)> {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(v),
        );
        negotiate(&h)
    }

    #[test]
    fn negotiation() {
        let (d, r) = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(d.window_bits, 15);
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let (d, r) = offer("permessage-deflate; server_max_window_bits=10").unwrap();
        assert_eq!(d.window_bits, 10);
        assert!(r.ends_with("server_max_window_bits=10"));
        // An unacceptable first offer falls back to the next.
        let (d, _) =
            offer("permessage-deflate; server_max_window_bits=8, permessage-deflate").unwrap();
        assert_eq!(d.window_bits, 15);
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; unknown=1",
        ] {
            assert!(offer(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn round_trip_and_rfc_example() {
        // RFC 7692 §7.2.3.1: "Hello" compressed without context takeover.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(decompress(&hello, 100).unwrap(), b"Hello");
        for bits in [9, 12, 15] {
            let text = "herald ".repeat(5000);
            let packed = compress(text.as_bytes(), bits);
            assert!(packed.len() < text.len() / 10);
            assert_eq!(decompress(&packed, 1 << 20).unwrap(), text.as_bytes());
        }
        assert_eq!(decompress(&compress(b"", 15), 10).unwrap(), b"");
    }

    #[test]
    fn output_is_bounded_and_garbage_refused() {
        let bomb = compress(&vec![b'a'; 1 << 20], 15);
        assert!(bomb.len() < 2048);
        assert_eq!(decompress(&bomb, 1000), Err(CloseCode::TooBig));
        assert_eq!(
            decompress(&[0xff, 0xff, 0xff, 0xff, 0x00], 1000),
            Err(CloseCode::InvalidPayload)
        );
    }
}
