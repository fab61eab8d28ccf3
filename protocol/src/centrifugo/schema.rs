//! The messages of Centrifugo's client protocol (version 2) that Herald's
//! compatible endpoint reads and writes, written from the protocol's public
//! definition (`client.proto` of `centrifugal/protocol`): message and field
//! numbers are facts of the wire format and must not change.
//!
//! One struct per message serves both encodings: `prost` reads and writes
//! the Protobuf one, `serde` the JSON one. Only the fields Herald uses are
//! declared; Protobuf skips the others when decoding, and JSON ignores
//! unknown keys. Every field is omitted when it holds its default, as
//! Centrifugo's own JSON encoder does, except the results, which are
//! `Option`s so that an empty result still appears (`"subscribe":{}`).
//!
//! `bytes` fields (`data`, `conn_info`) are raw JSON in the JSON encoding
//! (the protocol's rule): [`raw`] writes them as the JSON they hold and
//! reads any JSON value as its text.

#![allow(
    missing_docs,
    reason = "the fields are the protocol's, documented upstream"
)]

use std::collections::BTreeMap;

use prost::Message;
use serde::{Deserialize, Serialize};

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A client command: `id` (0 for commands that get no reply) and one request.
#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct Command {
    #[prost(uint32, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub id: u32,
    #[prost(message, optional, tag = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectRequest>,
    #[prost(message, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeRequest>,
    #[prost(message, optional, tag = "6")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<ChannelRequest>,
    #[prost(message, optional, tag = "7")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishRequest>,
    #[prost(message, optional, tag = "8")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<ChannelRequest>,
    #[prost(message, optional, tag = "9")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<ChannelRequest>,
    #[prost(message, optional, tag = "10")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryRequest>,
    #[prost(message, optional, tag = "11")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<Empty>,
    #[prost(message, optional, tag = "12")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Empty>,
    #[prost(message, optional, tag = "13")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<Empty>,
    #[prost(message, optional, tag = "14")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshRequest>,
    #[prost(message, optional, tag = "15")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_refresh: Option<Empty>,
}

/// A message whose fields Herald does not read (or that has none).
#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct ConnectRequest {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub token: String,
    #[prost(string, tag = "4")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub name: String,
    #[prost(string, tag = "5")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct SubscribeRequest {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub channel: String,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub token: String,
    #[prost(bool, tag = "3")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub recover: bool,
    #[prost(string, tag = "6")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: String,
    #[prost(uint64, tag = "7")]
    #[serde(default, skip_serializing_if = "is_default", with = "lenient_u64")]
    pub offset: u64,
}

/// Unsubscribe, presence and presence_stats: a channel and nothing else.
#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct ChannelRequest {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub channel: String,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct PublishRequest {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub channel: String,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "raw")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct StreamPosition {
    #[prost(uint64, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default", with = "lenient_u64")]
    pub offset: u64,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: String,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct HistoryRequest {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub channel: String,
    #[prost(int32, tag = "7")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub limit: i32,
    #[prost(message, optional, tag = "8")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<StreamPosition>,
    #[prost(bool, tag = "9")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub reverse: bool,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct RefreshRequest {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub token: String,
}

/// A server message: a reply (`id` set, one result or `error`), a push
/// (`id` 0, `push` set), or a ping (empty).
#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct Reply {
    #[prost(uint32, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub id: u32,
    #[prost(message, optional, tag = "2")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<Push>,
    #[prost(message, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectResult>,
    #[prost(message, optional, tag = "6")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<SubscribeResult>,
    #[prost(message, optional, tag = "7")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Empty>,
    #[prost(message, optional, tag = "8")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Empty>,
    #[prost(message, optional, tag = "9")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<PresenceResult>,
    #[prost(message, optional, tag = "10")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_stats: Option<PresenceStatsResult>,
    #[prost(message, optional, tag = "11")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryResult>,
    #[prost(message, optional, tag = "12")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<Empty>,
    #[prost(message, optional, tag = "14")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshResult>,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct Error {
    #[prost(uint32, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub code: u32,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub message: String,
    #[prost(bool, tag = "3")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub temporary: bool,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct Push {
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub channel: String,
    #[prost(message, optional, tag = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "pub")]
    pub publication: Option<Publication>,
    #[prost(message, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Presence>,
    #[prost(message, optional, tag = "6")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave: Option<Presence>,
    #[prost(message, optional, tag = "7")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<Unsubscribe>,
    #[prost(message, optional, tag = "11")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect: Option<Disconnect>,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct ClientInfo {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub user: String,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub client: String,
    #[prost(bytes = "vec", tag = "3")]
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "raw")]
    pub conn_info: Vec<u8>,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct Publication {
    #[prost(bytes = "vec", tag = "4")]
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "raw")]
    pub data: Vec<u8>,
    #[prost(uint64, tag = "6")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub offset: u64,
    #[prost(btree_map = "string, string", tag = "7")]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// `Join` and `Leave`: the same one field.
#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct Presence {
    #[prost(message, optional, tag = "1")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct Unsubscribe {
    #[prost(uint32, tag = "2")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub code: u32,
    #[prost(string, tag = "3")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub reason: String,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct Disconnect {
    #[prost(uint32, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub code: u32,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub reason: String,
    #[prost(bool, tag = "3")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub reconnect: bool,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct ConnectResult {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub client: String,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub version: String,
    #[prost(bool, tag = "3")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub expires: bool,
    #[prost(uint32, tag = "4")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub ttl: u32,
    #[prost(uint32, tag = "7")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub ping: u32,
    #[prost(bool, tag = "8")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub pong: bool,
    #[prost(string, tag = "9")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub session: String,
    #[prost(string, tag = "10")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub node: String,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct RefreshResult {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub client: String,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub version: String,
    #[prost(bool, tag = "3")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub expires: bool,
    #[prost(uint32, tag = "4")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub ttl: u32,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct SubscribeResult {
    #[prost(bool, tag = "3")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub recoverable: bool,
    #[prost(string, tag = "6")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: String,
    #[prost(message, repeated, tag = "7")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    #[prost(bool, tag = "8")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub recovered: bool,
    #[prost(uint64, tag = "9")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub offset: u64,
    #[prost(bool, tag = "10")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub positioned: bool,
    #[prost(bool, tag = "12")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub was_recovering: bool,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct PresenceResult {
    #[prost(btree_map = "string, message", tag = "1")]
    #[serde(default)]
    pub presence: BTreeMap<String, ClientInfo>,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct PresenceStatsResult {
    #[prost(uint32, tag = "1")]
    #[serde(default)]
    pub num_clients: u32,
    #[prost(uint32, tag = "2")]
    #[serde(default)]
    pub num_users: u32,
}

#[derive(Clone, PartialEq, Message, Serialize, Deserialize)]
pub struct HistoryResult {
    #[prost(message, repeated, tag = "1")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<Publication>,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: String,
    #[prost(uint64, tag = "3")]
    #[serde(default, skip_serializing_if = "is_default")]
    pub offset: u64,
}

/// `bytes` fields in the JSON encoding: the JSON value they hold, written
/// as is; read back as the text of whatever JSON value is there.
mod raw {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        // Herald only puts valid JSON here; anything else is written as null
        // rather than as a broken document.
        match serde_json::from_slice::<&RawValue>(bytes) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_unit(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Ok(raw.get().as_bytes().to_vec())
    }
}

/// A `uint64` in the JSON encoding: a number, or (as Protobuf's JSON
/// mapping writes 64-bit integers, and some SDKs send it) a string.
mod lenient_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::trivially_copy_pass_by_ref, reason = "serde's signature")]
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(n),
            Either::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}
