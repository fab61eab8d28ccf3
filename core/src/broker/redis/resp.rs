//! Just enough RESP2 for pub/sub connections.
//!
//! The pub/sub side speaks RESP itself rather than through a client library:
//! it must batch SUBSCRIBE commands, match each confirmation to the
//! subscription waiting for it, see server-initiated SUNSUBSCRIBEs (slot
//! migrations) and MOVED replies, and hand message payloads on as `Bytes`
//! slices of the read buffer, without a copy.

use bytes::{BufMut, Bytes, BytesMut};

/// A RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`.
    Simple(Bytes),
    /// `-ERR …`.
    Error(Bytes),
    /// `:42`.
    Int(i64),
    /// `$3\r\nabc`.
    Bulk(Bytes),
    /// `$-1` or `*-1`.
    Nil,
    /// `*2\r\n…`.
    Array(Vec<Resp>),
}

impl Resp {
    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Resp::Simple(b) | Resp::Bulk(b) => Some(b),
            _ => None,
        }
    }
}

/// The stream is not RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error from redis: {0}")]
pub struct RespError(&'static str);

/// Longest bulk string accepted (Redis' own default limit).
const MAX_BULK: usize = 512 << 20;
/// Deepest nesting accepted.
const MAX_DEPTH: usize = 8;

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

fn int(buf: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(buf)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError("bad integer"))
}

/// Length of the complete value at `buf[from..]`, or `None` if incomplete.
fn scan(buf: &[u8], from: usize, depth: usize) -> Result<Option<usize>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError("nesting too deep"));
    }
    let Some(&kind) = buf.get(from) else {
        return Ok(None);
    };
    let Some(end) = line_end(buf, from + 1) else {
        return Ok(None);
    };
    let after = end + 2;
    match kind {
        b'+' | b'-' | b':' => Ok(Some(after - from)),
        b'$' => {
            let n = int(&buf[from + 1..end])?;
            if n < 0 {
                return Ok(Some(after - from));
            }
            let n = usize::try_from(n).map_err(|_| RespError("bad length"))?;
            if n > MAX_BULK {
                return Err(RespError("bulk string too long"));
            }
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            Ok(Some(after + n + 2 - from))
        }
        b'*' => {
            let n = int(&buf[from + 1..end])?;
            let mut at = after;
            for _ in 0..n.max(0) {
                match scan(buf, at, depth + 1)? {
                    Some(len) => at += len,
                    None => return Ok(None),
                }
            }
            Ok(Some(at - from))
        }
        _ => Err(RespError("unknown type byte")),
    }
}

/// Builds the value of a complete frame; `frame` holds exactly one value.
fn build(frame: &Bytes, from: usize) -> (Resp, usize) {
    let end = line_end(frame, from + 1).unwrap_or(frame.len());
    let after = end + 2;
    let line = frame.slice(from + 1..end);
    match frame[from] {
        b'+' => (Resp::Simple(line), after),
        b'-' => (Resp::Error(line), after),
        b':' => (Resp::Int(int(&line).unwrap_or(0)), after),
        b'$' => {
            let n = int(&line).unwrap_or(-1);
            match usize::try_from(n) {
                Ok(n) => (Resp::Bulk(frame.slice(after..after + n)), after + n + 2),
                Err(_) => (Resp::Nil, after),
            }
        }
        _ => {
            let n = int(&line).unwrap_or(-1);
            if n < 0 {
                return (Resp::Nil, after);
            }
            let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(64));
            let mut at = after;
            for _ in 0..n {
                let (item, next) = build(frame, at);
                items.push(item);
                at = next;
            }
            (Resp::Array(items), at)
        }
    }
}

/// Takes one complete value off the front of `buf`, if there is one.
///
/// # Errors
/// When the bytes are not RESP; the connection must then be dropped.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Resp>, RespError> {
    match scan(buf, 0, 0)? {
        None => Ok(None),
        Some(len) => {
            let frame = buf.split_to(len).freeze();
            Ok(Some(build(&frame, 0).0))
        }
    }
}

/// Appends a command (an array of bulk strings) to `out`.
pub fn encode<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    out.put_u8(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.put_u8(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bulk(s: &str) -> Resp {
        Resp::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn parses_pubsub_frames() {
        let mut buf = BytesMut::from(
            &b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n+PONG\r\n-MOVED 12 127.0.0.1:7001\r\n$-1\r\n"[..],
        );
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(Resp::Array(vec![
                bulk("subscribe"),
                bulk("ch"),
                Resp::Int(1)
            ]))
        );
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(Resp::Array(vec![
                bulk("message"),
                bulk("ch"),
                bulk("hello")
            ]))
        );
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(Resp::Simple(Bytes::from_static(b"PONG")))
        );
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(Resp::Error(Bytes::from_static(b"MOVED 12 127.0.0.1:7001")))
        );
        assert_eq!(parse(&mut buf).unwrap(), Some(Resp::Nil));
        assert_eq!(parse(&mut buf).unwrap(), None);
    }

    #[test]
    fn binary_payloads_survive() {
        let mut out = BytesMut::new();
        encode(&[&b"PUBLISH"[..], b"c", b"a\r\nb\x00"], &mut out);
        assert_eq!(
            &out[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$5\r\na\r\nb\x00\r\n"
        );
        let mut buf = BytesMut::from(&b"$5\r\na\r\nb\x00\r\n"[..]);
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(Resp::Bulk(Bytes::from_static(b"a\r\nb\x00")))
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse(&mut BytesMut::from(&b"?x\r\n"[..])).is_err());
        assert!(parse(&mut BytesMut::from(&b"$abc\r\n"[..])).is_err());
    }

    proptest! {
        #[test]
        fn every_prefix_is_incomplete_and_the_whole_parses(payload in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut whole = BytesMut::new();
            encode(&[&b"message"[..], b"chan", &payload], &mut whole);
            for cut in 0..whole.len() {
                let mut part = BytesMut::from(&whole[..cut]);
                prop_assert_eq!(parse(&mut part).unwrap(), None);
            }
            let mut all = whole.clone();
            let v = parse(&mut all).unwrap().unwrap();
            prop_assert_eq!(v, Resp::Array(vec![bulk("message"), bulk("chan"), Resp::Bulk(Bytes::from(payload))]));
            prop_assert!(all.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse(&mut buf);
        }
    }
}
