//! Protocol 2's MessagePack encoding (contract §10.1): every frame, both
//! ways, is one MessagePack map in a binary WebSocket frame, with the same
//! field names, types and meaning as the JSON frames.
//!
//! One parser and one set of frames serve every encoding: a client's
//! MessagePack frame is turned into the JSON text of the same frame
//! ([`client_frame_to_json`], a byte payload becoming `data_b64`) and then
//! read by [`crate::parse_client_frame`], so no rule is written twice; a
//! server frame is rendered as JSON and turned into MessagePack
//! ([`from_json`]). Events, the one hot path, are turned into MessagePack
//! once per event and node, from their record ([`message`]), a byte payload
//! becoming a `bin`. Client frames are rate-limited and replies rare, so
//! the detour through JSON text costs nothing that matters.
//!
//! Conversions are exact: integers stay integers (unsigned when they are
//! not negative), other numbers are 64-bit floats, strings are UTF-8, maps
//! have string keys. What JSON cannot carry (a map with another key type,
//! a float that is not finite, an extension type, a `bin` anywhere but as
//! the whole `data`) is refused.

use base64::Engine;
use rmpv::Value;
use serde_json::Value as Json;

use crate::record::{BinaryHeader, Record};

/// Deepest nesting read from a client frame; deeper is invalid (the
/// payload's own limit, `limits.max_json_depth`, is checked afterwards).
const MAX_DEPTH: usize = 128;

/// Why a client's MessagePack frame cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsgpackError {
    /// Not one valid MessagePack map: the connection closes with 1007.
    Invalid,
    /// A map that JSON cannot carry: a `bad_request` error with the
    /// frame's `ref`, if it could be read.
    Refused {
        /// The frame's `ref`.
        reference: Option<String>,
        /// What was wrong.
        message: String,
    },
}

/// The JSON text of a client's MessagePack frame, for
/// [`crate::parse_client_frame`]; a `bin` as the whole `data` becomes
/// `data_b64`.
///
/// # Errors
/// [`MsgpackError::Invalid`] when `bytes` is not exactly one MessagePack
/// map; [`MsgpackError::Refused`] when the map holds what JSON cannot.
pub fn client_frame_to_json(bytes: &[u8]) -> Result<String, MsgpackError> {
    let mut rest = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut rest, MAX_DEPTH)
        .map_err(|_| MsgpackError::Invalid)?;
    if !rest.is_empty() {
        return Err(MsgpackError::Invalid);
    }
    let Value::Map(entries) = value else {
        return Err(MsgpackError::Invalid);
    };
    let reference = entries.iter().find_map(|(k, v)| match (k, v) {
        (Value::String(k), Value::String(v)) if k.as_str() == Some("ref") => {
            v.as_str().map(str::to_owned)
        }
        _ => None,
    });
    let refused = |message: String| MsgpackError::Refused {
        reference: reference.clone(),
        message,
    };
    let mut object = serde_json::Map::with_capacity(entries.len());
    for (k, v) in entries {
        let Value::String(key) = k else {
            return Err(refused("frame keys must be strings".to_owned()));
        };
        let Some(key) = key.into_str() else {
            return Err(refused("frame keys must be UTF-8".to_owned()));
        };
        match (key.as_str(), v) {
            ("data", Value::Binary(b)) => {
                object.insert(
                    "data_b64".to_owned(),
                    Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
                );
            }
            (_, v) => {
                let json = to_json(v).map_err(|why| refused(format!("'{key}': {why}")))?;
                object.insert(key, json);
            }
        }
    }
    Ok(Json::Object(object).to_string())
}

/// A MessagePack value as JSON.
fn to_json(v: Value) -> Result<Json, &'static str> {
    Ok(match v {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Json::from(u),
            (None, Some(s)) => Json::from(s),
            (None, None) => return Err("an integer out of range"),
        },
        Value::F32(f) => float(f64::from(f))?,
        Value::F64(f) => float(f)?,
        Value::String(s) => Json::String(s.into_str().ok_or("a string that is not UTF-8")?),
        Value::Binary(_) => return Err("bytes are a payload only as the whole 'data'"),
        Value::Array(items) => {
            Json::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Value::Map(entries) => {
            let mut object = serde_json::Map::with_capacity(entries.len());
            for (k, v) in entries {
                let Value::String(k) = k else {
                    return Err("a map key that is not a string");
                };
                object.insert(k.into_str().ok_or("a key that is not UTF-8")?, to_json(v)?);
            }
            Json::Object(object)
        }
        Value::Ext(..) => return Err("an extension type"),
    })
}

fn float(f: f64) -> Result<Json, &'static str> {
    serde_json::Number::from_f64(f)
        .map(Json::Number)
        .ok_or("a float that is not finite")
}

/// JSON text as MessagePack: a server frame for a MessagePack connection.
/// Streamed (no tree is built), keys in their JSON order. `None` when
/// `json` is not JSON (never, for frames Herald renders).
pub fn from_json(json: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(json.len());
    let mut from = serde_json::Deserializer::from_slice(json);
    let mut to = rmp_serde::Serializer::new(&mut out).with_struct_map();
    serde_transcode::transcode(&mut from, &mut to).ok()?;
    from.end().ok()?;
    Some(out)
}

/// The `message` frame a MessagePack connection receives for `record`
/// (see [`crate::record`]): the JSON frame's equivalent, or, for a byte
/// payload, the header's fields with `data` a `bin`. `None` for a record
/// that is neither shape.
pub fn message(record: &[u8]) -> Option<Vec<u8>> {
    match Record::parse(record)? {
        Record::Json(frame) => from_json(frame),
        Record::Binary { header, bytes } => {
            let h: BinaryHeader<'_> = serde_json::from_slice(header).ok()?;
            let mut out = Vec::with_capacity(header.len() + bytes.len() + 16);
            let fields = 5 + u32::from(h.event.is_some());
            let _ = rmp::encode::write_map_len(&mut out, fields);
            for (k, v) in [("type", "message"), ("topic", &*h.topic), ("id", &*h.id)] {
                let _ = rmp::encode::write_str(&mut out, k);
                let _ = rmp::encode::write_str(&mut out, v);
            }
            if let Some(event) = &h.event {
                let _ = rmp::encode::write_str(&mut out, "event");
                let _ = rmp::encode::write_str(&mut out, event);
            }
            let _ = rmp::encode::write_str(&mut out, "data");
            let _ = rmp::encode::write_bin(&mut out, bytes);
            let _ = rmp::encode::write_str(&mut out, "ts");
            let _ = rmp::encode::write_uint(&mut out, h.ts);
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Payload, render};
    use std::borrow::Cow;

    fn encode(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::from(k), v))
                .collect(),
        )
    }

    #[test]
    fn client_frames_become_the_same_json() {
        let frame = map(vec![
            ("type", Value::from("publish")),
            ("ref", Value::from("4")),
            ("topic", Value::from("chat.a")),
            (
                "data",
                map(vec![
                    ("n", Value::from(u64::MAX)),
                    ("s", Value::from(-3)),
                    ("f", Value::F64(1.5)),
                    ("l", Value::Array(vec![Value::Nil, Value::Boolean(true)])),
                ]),
            ),
        ]);
        let json: Json =
            serde_json::from_str(&client_frame_to_json(&encode(&frame)).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"publish","ref":"4","topic":"chat.a",
                "data":{"n":u64::MAX,"s":-3,"f":1.5,"l":[null,true]}})
        );
    }

    #[test]
    fn a_bin_as_the_whole_data_is_a_byte_payload() {
        let frame = map(vec![
            ("type", Value::from("publish")),
            ("topic", Value::from("t")),
            ("data", Value::Binary(vec![0, 1, 2])),
        ]);
        let text = client_frame_to_json(&encode(&frame)).unwrap();
        assert!(text.contains(r#""data_b64":"AAEC""#), "{text}");
    }

    #[test]
    fn what_json_cannot_carry_is_refused_with_the_ref() {
        let cases = [
            map(vec![
                ("ref", Value::from("9")),
                ("data", Value::Array(vec![Value::Binary(vec![1])])),
            ]),
            map(vec![
                ("ref", Value::from("9")),
                ("data", Value::F64(f64::NAN)),
            ]),
            map(vec![
                ("ref", Value::from("9")),
                ("data", Value::Map(vec![(Value::from(1), Value::Nil)])),
            ]),
            map(vec![
                ("ref", Value::from("9")),
                ("data", Value::Ext(1, vec![0])),
            ]),
            Value::Map(vec![
                (Value::from(5), Value::Nil),
                (Value::from("ref"), Value::from("9")),
            ]),
        ];
        for frame in cases {
            match client_frame_to_json(&encode(&frame)) {
                Err(MsgpackError::Refused { reference, .. }) => {
                    assert_eq!(reference.as_deref(), Some("9"), "{frame:?}");
                }
                other => panic!("{frame:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn anything_but_one_map_is_invalid() {
        let mut two = encode(&map(vec![("type", Value::from("ping"))]));
        two.extend(encode(&Value::Nil));
        for bad in [
            vec![],
            vec![0xc1],
            encode(&Value::from("ping")),
            encode(&Value::Array(vec![])),
            two,
            vec![0x81, 0xa4],
        ] {
            assert_eq!(
                client_frame_to_json(&bad),
                Err(MsgpackError::Invalid),
                "{bad:?}"
            );
        }
        let mut deep = vec![0x91; 200];
        deep.push(0xc0);
        let mut frame = vec![0x81, 0xa4, b'd', b'a', b't', b'a'];
        frame.extend(deep);
        assert_eq!(
            client_frame_to_json(&frame),
            Err(MsgpackError::Invalid),
            "too deep"
        );
    }

    #[test]
    fn events_become_maps_once_and_bytes_stay_bytes() {
        let json = Payload::Json(Cow::Owned(
            serde_json::value::RawValue::from_string(r#"{"price":189.21,"n":-1}"#.to_owned())
                .unwrap(),
        ));
        let record = render("stocks.AAPL", "0000000a-1", Some("tick"), &json, 7);
        let decoded = rmpv::decode::read_value(&mut &message(&record).unwrap()[..]).unwrap();
        assert_eq!(
            decoded,
            map(vec![
                ("type", Value::from("message")),
                ("topic", Value::from("stocks.AAPL")),
                ("id", Value::from("0000000a-1")),
                ("event", Value::from("tick")),
                (
                    "data",
                    map(vec![("price", Value::F64(189.21)), ("n", Value::from(-1))])
                ),
                ("ts", Value::from(7)),
            ])
        );
        let bytes = Payload::Bytes(Cow::Borrowed(&[0u8, 255][..]));
        let record = render("ticks.bin", "0000000a-2", None, &bytes, 8);
        let decoded = rmpv::decode::read_value(&mut &message(&record).unwrap()[..]).unwrap();
        assert_eq!(
            decoded,
            map(vec![
                ("type", Value::from("message")),
                ("topic", Value::from("ticks.bin")),
                ("id", Value::from("0000000a-2")),
                ("data", Value::Binary(vec![0, 255])),
                ("ts", Value::from(8)),
            ])
        );
        assert!(message(b"nonsense").is_none());
    }
}
