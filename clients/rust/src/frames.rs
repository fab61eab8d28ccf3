//! Protocol 2 frames both ways, in JSON text or MessagePack (contract
//! §10.1): client frames are built as JSON values and packed as they are;
//! server frames are read into their fields, with `data` kept apart so a
//! byte payload stays bytes.

use base64::Engine;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::client::Protocol;
use crate::publisher::Data;

pub(crate) fn encode(protocol: Protocol, frame: &Value) -> Frame {
    match protocol {
        Protocol::Json => Frame::text(frame.to_string()),
        Protocol::Msgpack => Frame::binary(rmp_serde::to_vec_named(frame).unwrap_or_default()),
    }
}

/// A frame's fields as JSON, with `data` apart (bytes stay bytes).
pub(crate) fn decode(protocol: Protocol, frame: &Frame) -> Option<(Value, Option<Data>)> {
    match (protocol, frame) {
        (Protocol::Json, Frame::Text(t)) => {
            let mut v: Value = serde_json::from_str(t.as_str()).ok()?;
            let data = match v.get("data_b64").and_then(Value::as_str) {
                Some(b64) => Some(Data::Bytes(
                    base64::engine::general_purpose::STANDARD.decode(b64).ok()?,
                )),
                None => v.get_mut("data").map(|d| Data::Json(d.take())),
            };
            Some((v, data))
        }
        (Protocol::Msgpack, Frame::Binary(b)) => {
            let value = rmpv::decode::read_value(&mut &b[..]).ok()?;
            let rmpv::Value::Map(entries) = value else {
                return None;
            };
            let mut fields = serde_json::Map::new();
            let mut data = None;
            for (k, v) in entries {
                let key = k.as_str()?.to_owned();
                if key == "data" {
                    data = Some(match v {
                        rmpv::Value::Binary(bytes) => Data::Bytes(bytes),
                        other => Data::Json(to_json(other)),
                    });
                } else {
                    fields.insert(key, to_json(v));
                }
            }
            Some((Value::Object(fields), data))
        }
        _ => None,
    }
}

fn to_json(v: rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => json!(b),
        M::Integer(i) => i.as_u64().map_or_else(|| json!(i.as_i64()), |u| json!(u)),
        M::F32(f) => json!(f),
        M::F64(f) => json!(f),
        M::String(s) => json!(s.into_str()),
        M::Binary(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        M::Array(a) => Value::Array(a.into_iter().map(to_json).collect()),
        M::Map(m) => Value::Object(
            m.into_iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), to_json(v))))
                .collect(),
        ),
        M::Ext(..) => Value::Null,
    }
}
