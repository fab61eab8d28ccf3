//! An event as the cluster stores and carries it: a *record*, rendered once
//! by whoever accepted the event and passed on as bytes (Redis streams and
//! pub/sub, the memory broker, every node's fan-out), never re-encoded on
//! the way.
//!
//! A record is one of two shapes (contract §10.2):
//! - an event with a JSON payload: its complete protocol-1 `message` frame,
//!   `{"type":"message",…,"data":…,"ts":…}`, which JSON connections receive
//!   byte for byte;
//! - an event with a byte payload: [`BINARY_MARK`], the frame without its
//!   payload (`{"type":"message","topic":…,"id":…,"event":…,"ts":…}`),
//!   [`BINARY_MARK`] again, then the bytes as they were published: stored
//!   as bytes, not as base64 inflated by a third. JSON connections receive
//!   it as `data_b64` ([`json_frame`]).
//!
//! A JSON frame starts with `{`, a byte record with `0x00`, so the two are
//! told apart by their first byte. Both are rendered around their id
//! ([`around_id`]) for publishers whose ids are assigned inside Redis.

use std::borrow::Cow;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The first byte of a byte payload's record, and the separator between
/// its header and its bytes.
pub const BINARY_MARK: u8 = 0;

/// An event's payload.
#[derive(Debug, Clone)]
pub enum Payload<'a> {
    /// JSON text, valid.
    Json(Cow<'a, RawValue>),
    /// Bytes, never inspected.
    Bytes(Cow<'a, [u8]>),
}

impl Payload<'_> {
    /// The payload, owning its data.
    pub fn into_owned(self) -> Payload<'static> {
        match self {
            Payload::Json(j) => Payload::Json(Cow::Owned(j.into_owned())),
            Payload::Bytes(b) => Payload::Bytes(Cow::Owned(b.into_owned())),
        }
    }

    /// The JSON text, for a JSON payload.
    pub fn json(&self) -> Option<&RawValue> {
        match self {
            Payload::Json(j) => Some(j),
            Payload::Bytes(_) => None,
        }
    }

    /// Its size as `limits.max_message_size` counts it: the JSON text, or
    /// the decoded bytes.
    pub fn size(&self) -> usize {
        match self {
            Payload::Json(j) => j.get().len(),
            Payload::Bytes(b) => b.len(),
        }
    }
}

/// As a client frame's field (flattened into `publish`): `"data": <JSON>`
/// or `"data_b64": "<base64>"`.
impl Serialize for Payload<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            Payload::Json(j) => map.serialize_entry("data", j)?,
            Payload::Bytes(b) => map.serialize_entry(
                "data_b64",
                &base64::engine::general_purpose::STANDARD.encode(b),
            )?,
        }
        map.end()
    }
}

/// The body of a `message` frame with a JSON payload, also the element of
/// the admin history API.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MessageFrame<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The opaque, per-topic increasing id.
    pub id: &'a str,
    /// The publisher's event name, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    /// The payload, as the publisher sent it.
    pub data: &'a RawValue,
    /// Publish time in milliseconds since the Unix epoch.
    pub ts: u64,
}

/// A byte payload's frame without its bytes: the header of its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BinaryHeader<'a> {
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: Cow<'a, str>,
    /// The topic.
    #[serde(borrow)]
    pub topic: Cow<'a, str>,
    /// The id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The publisher's event name, if any.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Cow<'a, str>>,
    /// Publish time in milliseconds since the Unix epoch.
    pub ts: u64,
}

/// A `message` frame for JSON connections with a byte payload.
#[derive(Serialize)]
struct Base64Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    topic: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    data_b64: &'a str,
    ts: u64,
}

/// A record, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// A JSON payload's complete frame.
    Json(&'a [u8]),
    /// A byte payload: its header (JSON) and its bytes.
    Binary {
        /// [`BinaryHeader`] as JSON.
        header: &'a [u8],
        /// The payload.
        bytes: &'a [u8],
    },
}

impl<'a> Record<'a> {
    /// Reads a record; `None` when it is neither shape.
    pub fn parse(record: &'a [u8]) -> Option<Record<'a>> {
        match record.split_first()? {
            (&BINARY_MARK, rest) => {
                let end = rest.iter().position(|&b| b == BINARY_MARK)?;
                Some(Record::Binary {
                    header: &rest[..end],
                    bytes: &rest[end + 1..],
                })
            }
            (b'{', _) => Some(Record::Json(record)),
            _ => None,
        }
    }
}

/// The record of an event with `id`.
pub fn render(
    topic: &str,
    id: &str,
    event: Option<&str>,
    payload: &Payload<'_>,
    ts: u64,
) -> Vec<u8> {
    let (mut before, after) = around_id(topic, event, payload, ts);
    before.extend_from_slice(id.as_bytes());
    before.extend_from_slice(&after);
    before
}

/// The record as the bytes before and after its id, for a publisher whose
/// ids are assigned elsewhere (inside Redis): `before + id + after` is
/// exactly [`render`]'s record.
pub fn around_id(
    topic: &str,
    event: Option<&str>,
    payload: &Payload<'_>,
    ts: u64,
) -> (Vec<u8>, Vec<u8>) {
    // '#' is in no topic and in neither fixed field before the id, so its
    // first occurrence is the id's place.
    let (json, prefix, suffix): (String, &[u8], &[u8]) = match payload {
        Payload::Json(data) => (
            MessageFrame {
                topic,
                id: "#",
                event,
                data,
                ts,
            }
            .to_json(),
            b"",
            b"",
        ),
        Payload::Bytes(bytes) => {
            let header = BinaryHeader {
                kind: Cow::Borrowed("message"),
                topic: Cow::Borrowed(topic),
                id: Cow::Borrowed("#"),
                event: event.map(Cow::Borrowed),
                ts,
            };
            // Strings and a number: serializing cannot fail.
            let json = serde_json::to_string(&header).unwrap_or_default();
            (json, &[BINARY_MARK], bytes)
        }
    };
    let (before, after) = json.split_once('#').unwrap_or((&json, ""));
    let mut b = Vec::with_capacity(prefix.len() + before.len() + 16);
    b.extend_from_slice(prefix);
    b.extend_from_slice(before.as_bytes());
    let mut a = Vec::with_capacity(after.len() + 1 + suffix.len());
    a.extend_from_slice(after.as_bytes());
    if !prefix.is_empty() {
        a.push(BINARY_MARK);
    }
    a.extend_from_slice(suffix);
    (b, a)
}

/// The `message` frame JSON connections receive for `record`: the record
/// itself for a JSON payload, `data_b64` in place of `data` for bytes.
/// `None` for a record that is neither shape (never written by Herald).
pub fn json_frame(record: &[u8]) -> Option<Cow<'_, [u8]>> {
    match Record::parse(record)? {
        Record::Json(frame) => Some(Cow::Borrowed(frame)),
        Record::Binary { header, bytes } => {
            let h: BinaryHeader<'_> = serde_json::from_slice(header).ok()?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            let frame = Base64Frame {
                kind: "message",
                topic: &h.topic,
                id: &h.id,
                event: h.event.as_deref(),
                data_b64: &b64,
                ts: h.ts,
            };
            serde_json::to_vec(&frame).ok().map(Cow::Owned)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Payload<'static> {
        Payload::Json(Cow::Owned(RawValue::from_string(s.to_owned()).unwrap()))
    }

    #[test]
    fn a_json_record_is_its_frame() {
        let r = render(
            "news",
            "0000000a-7",
            Some("headline"),
            &json(r##"{"t":"#1"}"##),
            9,
        );
        assert_eq!(
            std::str::from_utf8(&r).unwrap(),
            r##"{"type":"message","topic":"news","id":"0000000a-7","event":"headline","data":{"t":"#1"},"ts":9}"##
        );
        assert_eq!(json_frame(&r).unwrap(), Cow::Borrowed(&r[..]));
    }

    #[test]
    fn a_byte_record_keeps_its_bytes_and_reaches_json_as_base64() {
        let bytes = Payload::Bytes(Cow::Borrowed(&[0u8, 1, 2, 0, 255][..]));
        let (before, after) = around_id("ticks.bin", None, &bytes, 5);
        let mut r = before.clone();
        r.extend_from_slice(b"0000000a-1");
        r.extend_from_slice(&after);
        assert_eq!(r, render("ticks.bin", "0000000a-1", None, &bytes, 5));
        assert_eq!(r[0], BINARY_MARK);
        let Some(Record::Binary { header, bytes: b }) = Record::parse(&r) else {
            panic!("a byte record");
        };
        assert_eq!(b, &[0, 1, 2, 0, 255], "stored as sent, zeros included");
        assert_eq!(
            std::str::from_utf8(header).unwrap(),
            r#"{"type":"message","topic":"ticks.bin","id":"0000000a-1","ts":5}"#
        );
        assert_eq!(
            std::str::from_utf8(&json_frame(&r).unwrap()).unwrap(),
            r#"{"type":"message","topic":"ticks.bin","id":"0000000a-1","data_b64":"AAECAP8=","ts":5}"#
        );
        assert!(Record::parse(b"x").is_none());
        assert!(Record::parse(b"").is_none());
        assert!(json_frame(&[BINARY_MARK, b'{']).is_none(), "no separator");
    }
}
