//! RFC 6455 framing, server side.
//!
//! Our own codec rather than tungstenite's, for two reasons that decide memory
//! and fan-out: the decoder works on borrowed input (the connection reads into a
//! per-thread buffer and only keeps bytes of an unfinished frame), so an idle
//! connection holds no read buffer at all; and server frames are unmasked, so an
//! event's complete frame is encoded once per node and the same bytes are
//! written to every subscriber.
//!
//! The decoder enforces everything the contract maps to a close code: RFC
//! violations (1002), invalid UTF-8 in text (1007, checked fragment by fragment
//! so a bad message fails fast), binary data when not allowed (1008) and
//! messages over the size limit (1009, refused from the frame header, before
//! the payload is buffered).
//!
//! One file (about 650 lines, a third of them tests) on purpose: decoding and
//! encoding share the frame layout, and the tests that cut input at every
//! byte and pin every length encoding read best beside the code they check.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use herald_protocol::CloseCode;

use super::deflate::{self, Deflate};
pub use herald_protocol::centrifugo::Wire;

const OP_CONTINUATION: u8 = 0x0;
/// Text opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary opcode.
pub const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the bytes are valid UTF-8.
    Text(Bytes),
    /// A binary message (only when the decoder allows them).
    Binary(Bytes),
    /// A ping with its payload, to be answered with a pong.
    Ping(Bytes),
    /// The client's close, with its code if it sent one.
    Close(Option<u16>),
}

struct Fragmented {
    text: bool,
    /// permessage-deflate: the payload is compressed (RSV1 on the first frame).
    compressed: bool,
    buf: Vec<u8>,
    /// Prefix of `buf` known to be valid UTF-8.
    checked: usize,
}

/// Incremental frame decoder for one connection.
pub struct Decoder {
    max_message: usize,
    allow_binary: bool,
    deflate: bool,
    /// A pong arrived since [`Decoder::take_pong`] last asked. Pongs are
    /// noted here rather than queued: they are an idle connection's only
    /// frames, and an inbox allocated and freed for each one showed in an
    /// idle node's profile (docs/benchmarks.md, issue 27).
    pong: bool,
    fragments: Option<Fragmented>,
}

/// Why decoding stopped: the close code to send.
pub type DecodeError = CloseCode;

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes; binary messages
    /// are refused with 1008 unless `allow_binary`.
    pub fn new(max_message: usize, allow_binary: bool) -> Decoder {
        Decoder {
            max_message,
            allow_binary,
            deflate: false,
            pong: false,
            fragments: None,
        }
    }

    /// Accepts messages compressed with permessage-deflate (RSV1).
    pub fn with_deflate(mut self, on: bool) -> Decoder {
        self.deflate = on;
        self
    }

    /// A complete message's payload: decompressed if it was compressed, then
    /// checked as UTF-8 if it is text.
    fn finish(&self, text: bool, compressed: bool, data: Vec<u8>) -> Result<Message, DecodeError> {
        let data = if compressed {
            deflate::decompress(&data, self.max_message)?
        } else {
            data
        };
        if text {
            if std::str::from_utf8(&data).is_err() {
                return Err(CloseCode::InvalidPayload);
            }
            Ok(Message::Text(Bytes::from(data)))
        } else {
            Ok(Message::Binary(Bytes::from(data)))
        }
    }

    /// Whether a pong arrived since the last call: the client is alive,
    /// and there is nothing to answer.
    pub fn take_pong(&mut self) -> bool {
        std::mem::take(&mut self.pong)
    }

    /// Bytes held for an unfinished fragmented message.
    pub fn buffered(&self) -> usize {
        self.fragments.as_ref().map_or(0, |f| f.buf.capacity())
    }

    /// Decodes every complete frame at the front of `input` into `out` and
    /// returns how many bytes were consumed; the rest is an unfinished frame
    /// the caller keeps and presents again with more bytes.
    ///
    /// # Errors
    /// The close code to send; the connection must then be closed.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut VecDeque<Message>,
    ) -> Result<usize, DecodeError> {
        let mut pos = 0;
        while let Some(consumed) = self.decode_frame(&input[pos..], out)? {
            pos += consumed;
            if matches!(out.back(), Some(Message::Close(_))) {
                break;
            }
        }
        Ok(pos)
    }

    /// Decodes the frame at the front of `input` (pushing its message to
    /// `out` if it completes one) and returns the bytes it took; `None`
    /// when `input` holds no complete frame. For a reader that must stop
    /// after one message (a connection's `connect` frame).
    ///
    /// # Errors
    /// The close code to send.
    pub fn decode_next(
        &mut self,
        input: &[u8],
        out: &mut VecDeque<Message>,
    ) -> Result<Option<usize>, DecodeError> {
        self.decode_frame(input, out)
    }

    /// Decodes one frame; `None` when `input` holds no complete frame.
    fn decode_frame(
        &mut self,
        input: &[u8],
        out: &mut VecDeque<Message>,
    ) -> Result<Option<usize>, DecodeError> {
        let [b0, b1, ..] = *input else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let rsv1 = b0 & 0x40 != 0;
        // RSV2/3 are never negotiated; RSV1 only by permessage-deflate, and
        // only on the first frame of a data message.
        if b0 & 0x30 != 0
            || (rsv1 && (!self.deflate || opcode == OP_CONTINUATION || opcode & 0x8 != 0))
        {
            return Err(CloseCode::ProtocolError);
        }
        if b1 & 0x80 == 0 {
            return Err(CloseCode::ProtocolError); // client frames must be masked
        }
        let (len, mut at) = match b1 & 0x7F {
            126 => match input.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match input.get(2..10) {
                Some(b) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    let len = u64::from_be_bytes(a);
                    if len >> 63 != 0 {
                        return Err(CloseCode::ProtocolError);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let control = opcode & 0x8 != 0;
        if control {
            if !fin || len > 125 {
                return Err(CloseCode::ProtocolError);
            }
            if !matches!(opcode, OP_CLOSE | OP_PING | OP_PONG) {
                return Err(CloseCode::ProtocolError);
            }
        } else {
            match (opcode, &self.fragments) {
                (OP_CONTINUATION, None) => return Err(CloseCode::ProtocolError),
                (OP_TEXT | OP_BINARY, Some(_)) => return Err(CloseCode::ProtocolError),
                (OP_CONTINUATION | OP_TEXT | OP_BINARY, _) => {}
                _ => return Err(CloseCode::ProtocolError),
            }
            if opcode == OP_BINARY && !self.allow_binary {
                return Err(CloseCode::PolicyViolation);
            }
            let held = self.fragments.as_ref().map_or(0, |f| f.buf.len()) as u64;
            if held + len > self.max_message as u64 {
                return Err(CloseCode::TooBig);
            }
        }
        let Some(mask) = input.get(at..at + 4) else {
            return Ok(None);
        };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        at += 4;
        // `len` fits in usize: it is at most max_message or 125 here.
        let len = len as usize;
        let Some(payload) = input.get(at..at + len) else {
            return Ok(None);
        };
        let consumed = at + len;

        match opcode {
            OP_PING => out.push_back(Message::Ping(unmask_to_bytes(payload, mask))),
            OP_PONG => self.pong = true,
            OP_CLOSE => out.push_back(Message::Close(close_code(&unmask_to_vec(payload, mask))?)),
            OP_TEXT | OP_BINARY if fin => {
                out.push_back(self.finish(
                    opcode == OP_TEXT,
                    rsv1,
                    unmask_to_vec(payload, mask),
                )?);
            }
            OP_TEXT | OP_BINARY => {
                let mut f = Fragmented {
                    text: opcode == OP_TEXT,
                    compressed: rsv1,
                    buf: Vec::new(),
                    checked: 0,
                };
                unmask_into(payload, mask, &mut f.buf);
                f.check_utf8(false)?;
                self.fragments = Some(f);
            }
            _ => {
                // Continuation: checked above that a message is open.
                let Some(mut f) = self.fragments.take() else {
                    return Err(CloseCode::ProtocolError);
                };
                unmask_into(payload, mask, &mut f.buf);
                f.check_utf8(fin)?;
                if fin {
                    out.push_back(self.finish(f.text, f.compressed, f.buf)?);
                } else {
                    self.fragments = Some(f);
                }
            }
        }
        Ok(Some(consumed))
    }
}

impl Fragmented {
    /// Validates the bytes added since the last check; an incomplete sequence
    /// at the end is allowed until the final fragment.
    fn check_utf8(&mut self, last: bool) -> Result<(), DecodeError> {
        // Compressed text can only be checked once inflated, at the end.
        if !self.text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.buf[self.checked..]) {
            Ok(_) => {
                self.checked = self.buf.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !last => {
                self.checked += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(CloseCode::InvalidPayload),
        }
    }
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, DecodeError> {
    match payload {
        [] => Ok(None),
        [_] => Err(CloseCode::ProtocolError),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(CloseCode::ProtocolError);
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(CloseCode::InvalidPayload);
            }
            Ok(Some(code))
        }
    }
}

fn unmask_into(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(payload);
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    // The mask is applied from the start of this frame's payload.
    let data = &mut out[start..];
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(a) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

fn unmask_to_vec(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len());
    unmask_into(payload, mask, &mut v);
    v
}

fn unmask_to_bytes(payload: &[u8], mask: [u8; 4]) -> Bytes {
    Bytes::from(unmask_to_vec(payload, mask))
}

fn header(opcode: u8, len: usize, out: &mut BytesMut) {
    out.put_u8(0x80 | opcode);
    put_len(len, out);
}

/// The payload-length field of an unmasked frame.
fn put_len(len: usize, out: &mut BytesMut) {
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    header(opcode, payload.len(), &mut out);
    out.extend_from_slice(payload);
    out.freeze()
}

/// A complete, unfragmented server text frame.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame(OP_TEXT, payload)
}

/// A complete compressed server frame (RSV1 set) of `payload` with `opcode`.
pub fn compressed_frame(opcode: u8, payload: &[u8], window_bits: u8) -> Bytes {
    let data = deflate::compress(payload, window_bits);
    let mut out = BytesMut::with_capacity(data.len() + 10);
    out.put_u8(0xC0 | opcode);
    put_len(data.len(), &mut out);
    out.extend_from_slice(&data);
    out.freeze()
}

/// A frame for a connection: compressed when the connection negotiated
/// permessage-deflate and the payload is worth it, plain otherwise.
pub fn frame_for(opcode: u8, payload: &[u8], deflate: Option<Deflate>) -> Bytes {
    match deflate {
        Some(d) if payload.len() >= deflate::COMPRESS_MIN => {
            compressed_frame(opcode, payload, d.window_bits)
        }
        _ => frame(opcode, payload),
    }
}

/// How a connection's frames are encoded: JSON text (protocol 1 and
/// `herald.v2.json`), MessagePack in binary frames (`herald.v2.msgpack`),
/// or Centrifugo's client protocol in one of its encodings (contract
/// §10.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// JSON text frames.
    #[default]
    Json,
    /// MessagePack binary frames.
    Msgpack,
    /// Centrifugo protocol 2: JSON in text frames, Protobuf in binary ones.
    Centrifugo(Wire),
}

impl Encoding {
    /// The frame of a server message for a connection with this encoding
    /// and `deflate`, from its JSON text (a reply, never an event: events
    /// go through [`FrameCache`]). Centrifugo connections get their
    /// replies already encoded ([`Encoding::frame`]); this is never called
    /// for them and would send the text as is.
    pub fn reply_frame(self, json: &[u8], deflate: Option<Deflate>) -> Bytes {
        match self {
            Encoding::Msgpack => {
                let packed = herald_protocol::msgpack::from_json(json).unwrap_or_default();
                frame_for(OP_BINARY, &packed, deflate)
            }
            _ => frame_for(OP_TEXT, json, deflate),
        }
    }

    /// The WebSocket frame kind of this encoding.
    pub fn opcode(self) -> u8 {
        match self {
            Encoding::Json | Encoding::Centrifugo(Wire::Json) => OP_TEXT,
            Encoding::Msgpack | Encoding::Centrifugo(Wire::Protobuf) => OP_BINARY,
        }
    }

    /// Its index in `herald_core::metrics::PROTOCOLS`, the `protocol`
    /// label of `herald_protocol_connections`.
    pub fn protocol_label(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::Msgpack => 1,
            Encoding::Centrifugo(Wire::Json) => 2,
            Encoding::Centrifugo(Wire::Protobuf) => 3,
        }
    }

    /// The frame of an already encoded message.
    pub fn frame(self, payload: &[u8], deflate: Option<Deflate>) -> Bytes {
        frame_for(self.opcode(), payload, deflate)
    }
}

/// The frames of one event (or presence change) for every kind of
/// connection, each encoded on first need and then shared: per encoding
/// (JSON text, MessagePack), plain and compressed per window size (in
/// practice one). This is how an event is encoded once per node and
/// encoding. The common case, a JSON record to plain JSON connections,
/// allocates one frame and nothing else.
pub struct FrameCache<'a> {
    record: &'a [u8],
    plain_json: Option<Bytes>,
    /// Every other (encoding, window bits or 0 for plain) frame.
    others: Vec<(Encoding, u8, Bytes)>,
    /// The payloads rendered from the record, for other encodings or a
    /// byte payload.
    json: Option<std::borrow::Cow<'a, [u8]>>,
    msgpack: Option<Vec<u8>>,
    /// Centrifugo pushes, JSON and Protobuf.
    centrifugo: [Option<Vec<u8>>; 2],
}

impl<'a> FrameCache<'a> {
    /// Nothing encoded yet; `record` as [`herald_protocol::record`] says.
    pub fn new(record: &'a [u8]) -> FrameCache<'a> {
        FrameCache {
            record,
            plain_json: None,
            others: Vec::new(),
            json: None,
            msgpack: None,
            centrifugo: [None, None],
        }
    }

    fn payload(&mut self, encoding: Encoding) -> &[u8] {
        match encoding {
            Encoding::Json => self.json.get_or_insert_with(|| {
                herald_protocol::record::json_frame(self.record)
                    .unwrap_or(std::borrow::Cow::Borrowed(self.record))
            }),
            Encoding::Msgpack => self.msgpack.get_or_insert_with(|| {
                herald_protocol::msgpack::message(self.record).unwrap_or_default()
            }),
            Encoding::Centrifugo(wire) => self.centrifugo[wire as usize].get_or_insert_with(|| {
                herald_protocol::centrifugo::push(self.record, wire).unwrap_or_default()
            }),
        }
    }

    /// The frame for a connection with `encoding` and `deflate`.
    pub fn for_connection(&mut self, encoding: Encoding, deflate: Option<Deflate>) -> &Bytes {
        let opcode = encoding.opcode();
        let bits = match deflate {
            Some(d) if self.payload(encoding).len() >= deflate::COMPRESS_MIN => d.window_bits,
            _ => 0,
        };
        if encoding == Encoding::Json && bits == 0 {
            if self.plain_json.is_none() {
                let frame = frame(opcode, self.payload(encoding));
                self.plain_json = Some(frame);
            }
            return self.plain_json.get_or_insert_with(Bytes::new);
        }
        let i = match self
            .others
            .iter()
            .position(|(e, b, _)| *e == encoding && *b == bits)
        {
            Some(i) => i,
            None => {
                let payload = self.payload(encoding);
                let frame = if bits == 0 {
                    frame(opcode, payload)
                } else {
                    compressed_frame(opcode, payload, bits)
                };
                self.others.push((encoding, bits, frame));
                self.others.len() - 1
            }
        };
        &self.others[i].2
    }
}

/// [`frame_for`] a text message.
pub fn text_frame_for(payload: &[u8], deflate: Option<Deflate>) -> Bytes {
    frame_for(OP_TEXT, payload, deflate)
}

/// A complete server binary frame (only the test echo endpoint sends these).
pub fn binary_frame(payload: &[u8]) -> Bytes {
    frame(OP_BINARY, payload)
}

/// A ping frame.
pub fn ping_frame(payload: &[u8]) -> Bytes {
    frame(OP_PING, payload)
}

/// A pong frame answering a ping with `payload`.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    frame(OP_PONG, payload)
}

/// A close frame with `code` and its reason; `None` sends an empty close.
pub fn close_frame(code: Option<u16>, reason: &str) -> Bytes {
    match code {
        None => frame(OP_CLOSE, &[]),
        Some(code) => {
            let mut payload = Vec::with_capacity(2 + reason.len());
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
            frame(OP_CLOSE, &payload)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(d: &mut Decoder, input: &[u8]) -> Result<(usize, Vec<Message>), DecodeError> {
        let mut out = VecDeque::new();
        let n = d.decode(input, &mut out)?;
        Ok((n, out.into_iter().collect()))
    }

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn decodes_text_of_every_length_encoding() {
        for len in [0, 5, 125, 126, 127, 65535, 65536, 70000] {
            let payload = "x".repeat(len);
            let mut d = Decoder::new(1 << 20, false);
            let input = client_frame(true, OP_TEXT, payload.as_bytes(), MASK);
            let (n, msgs) = decode_all(&mut d, &input).unwrap();
            assert_eq!(n, input.len());
            assert_eq!(msgs, vec![Message::Text(Bytes::from(payload))], "len {len}");
        }
    }

    #[test]
    fn waits_for_more_bytes_at_every_cut() {
        let input = client_frame(true, OP_TEXT, b"hello world, a longer payload", MASK);
        for cut in 0..input.len() {
            let mut d = Decoder::new(1024, false);
            let (n, msgs) = decode_all(&mut d, &input[..cut]).unwrap();
            assert_eq!((n, msgs.len()), (0, 0), "cut at {cut}");
        }
    }

    #[test]
    fn reassembles_fragments_with_interleaved_control_frames() {
        let mut input = client_frame(false, OP_TEXT, b"hel", MASK);
        input.extend(client_frame(true, OP_PING, b"p", MASK));
        input.extend(client_frame(false, OP_CONTINUATION, b"lo ", MASK));
        input.extend(client_frame(true, OP_CONTINUATION, b"you", MASK));
        let mut d = Decoder::new(1024, false);
        let (n, msgs) = decode_all(&mut d, &input).unwrap();
        assert_eq!(n, input.len());
        assert_eq!(
            msgs,
            vec![
                Message::Ping(Bytes::from_static(b"p")),
                Message::Text(Bytes::from_static(b"hello you"))
            ]
        );
    }

    /// A pong is noted, not queued (an idle connection's pong allocates
    /// nothing), and it may come between a message's fragments.
    #[test]
    fn pongs_are_noted_not_queued() {
        let mut d = Decoder::new(1024, false);
        let pong = client_frame(true, OP_PONG, b"", MASK);
        let (n, msgs) = decode_all(&mut d, &pong).unwrap();
        assert_eq!((n, msgs.len()), (pong.len(), 0));
        assert!(d.take_pong());
        assert!(!d.take_pong(), "taken once");

        let mut input = client_frame(false, OP_TEXT, b"hel", MASK);
        input.extend(client_frame(true, OP_PONG, b"any payload", MASK));
        input.extend(client_frame(true, OP_CONTINUATION, b"lo", MASK));
        let (n, msgs) = decode_all(&mut d, &input).unwrap();
        assert_eq!(n, input.len());
        assert_eq!(msgs, vec![Message::Text(Bytes::from_static(b"hello"))]);
        assert!(d.take_pong());
    }

    #[test]
    fn utf8_split_across_fragments_is_fine_but_invalid_fails_fast() {
        let euro = "€".as_bytes(); // three bytes
        let mut input = client_frame(false, OP_TEXT, &euro[..1], MASK);
        input.extend(client_frame(true, OP_CONTINUATION, &euro[1..], MASK));
        let mut d = Decoder::new(1024, false);
        assert_eq!(
            decode_all(&mut d, &input).unwrap().1,
            vec![Message::Text(Bytes::from("€"))]
        );

        let input = client_frame(false, OP_TEXT, &[0xff, b'a'], MASK);
        let mut d = Decoder::new(1024, false);
        assert_eq!(decode_all(&mut d, &input), Err(CloseCode::InvalidPayload));

        let input = client_frame(true, OP_TEXT, &euro[..2], MASK);
        let mut d = Decoder::new(1024, false);
        assert_eq!(decode_all(&mut d, &input), Err(CloseCode::InvalidPayload));
    }

    #[test]
    fn refuses_what_the_contract_names() {
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (
                client_frame(true, OP_BINARY, b"b", MASK),
                CloseCode::PolicyViolation,
            ),
            (
                client_frame(true, OP_TEXT, &[b'a'; 101], MASK),
                CloseCode::TooBig,
            ),
            (client_frame(true, 0x3, b"", MASK), CloseCode::ProtocolError),
            (
                client_frame(true, OP_CONTINUATION, b"x", MASK),
                CloseCode::ProtocolError,
            ),
            (
                client_frame(false, OP_PING, b"", MASK),
                CloseCode::ProtocolError,
            ),
            (
                client_frame(true, OP_PING, &[0; 126], MASK),
                CloseCode::ProtocolError,
            ),
            (
                client_frame(true, OP_CLOSE, &[3], MASK),
                CloseCode::ProtocolError,
            ),
            (
                client_frame(true, OP_CLOSE, &1005u16.to_be_bytes(), MASK),
                CloseCode::ProtocolError,
            ),
            (
                client_frame(true, OP_CLOSE, &[0x03, 0xe8, 0xff], MASK),
                CloseCode::InvalidPayload,
            ),
            (vec![0x81, 0x01, b'a'], CloseCode::ProtocolError), // unmasked
            (vec![0xC1, 0x80, 0, 0, 0, 0], CloseCode::ProtocolError), // RSV1
        ];
        for (input, code) in cases {
            let mut d = Decoder::new(100, false);
            assert_eq!(decode_all(&mut d, &input), Err(code), "{input:?}");
        }
    }

    #[test]
    fn too_big_is_refused_from_the_header_alone() {
        let mut d = Decoder::new(100, false);
        let header = [0x81, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(decode_all(&mut d, &header), Err(CloseCode::TooBig));
        let mut d = Decoder::new(100, false);
        let mut input = client_frame(false, OP_TEXT, &[b'a'; 60], MASK);
        input.extend(client_frame(true, OP_CONTINUATION, &[b'a'; 60], MASK));
        assert_eq!(decode_all(&mut d, &input), Err(CloseCode::TooBig));
    }

    #[test]
    fn close_codes_are_read() {
        let mut d = Decoder::new(100, false);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let input = client_frame(true, OP_CLOSE, &payload, MASK);
        assert_eq!(
            decode_all(&mut d, &input).unwrap().1,
            vec![Message::Close(Some(1000))]
        );
        let input = client_frame(true, OP_CLOSE, &[], MASK);
        assert_eq!(
            decode_all(&mut d, &input).unwrap().1,
            vec![Message::Close(None)]
        );
    }

    #[test]
    fn server_frames_have_the_right_headers() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(&text_frame(&[b'a'; 200])[..4], &[0x81, 126, 0, 200]);
        assert_eq!(&text_frame(&[b'a'; 70000])[..2], &[0x81, 127]);
        assert_eq!(
            &close_frame(Some(4004), "slow")[..4],
            &[0x88, 6, 0x0f, 0xa4]
        );
        assert_eq!(&close_frame(None, "")[..], &[0x88, 0]);
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same(
            payloads in prop::collection::vec("[a-z€]{0,300}", 1..6),
            split in 0usize..2000,
            mask in any::<[u8; 4]>(),
        ) {
            let mut input = Vec::new();
            for p in &payloads {
                input.extend(client_frame(true, OP_TEXT, p.as_bytes(), mask));
            }
            let split = split % (input.len() + 1);
            let mut d = Decoder::new(1 << 16, false);
            let mut out = VecDeque::new();
            let first = d.decode(&input[..split], &mut out).unwrap();
            let mut rest = input[first..].to_vec();
            let second = d.decode(&rest, &mut out).unwrap();
            rest.drain(..second);
            prop_assert!(rest.is_empty());
            let texts: Vec<Message> = payloads.iter().map(|p| Message::Text(Bytes::from(p.clone()))).collect();
            prop_assert_eq!(out.into_iter().collect::<Vec<_>>(), texts);
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut d = Decoder::new(128, true);
            let mut out = VecDeque::new();
            let _ = d.decode(&input, &mut out);
        }
    }
}
