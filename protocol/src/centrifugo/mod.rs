//! Centrifugo's client protocol, version 2 (contract §10.7): the wire side
//! of the compatible endpoint, `/connection/websocket`.
//!
//! Two encodings, as Centrifugo's SDKs negotiate them: JSON (the default;
//! text frames holding one or more JSON objects separated by newlines) and
//! Protobuf (`Sec-WebSocket-Protocol: centrifuge-protobuf`; binary frames
//! holding one or more messages, each prefixed with its length as a
//! varint). The messages are in [`schema`].
//!
//! How Herald's notions map (one-to-one, so a recovery means the same on
//! either endpoint, contract §10.3):
//! - a Herald id `<epoch>-<seq>` is the publication's `offset` (`seq`) in
//!   the stream `epoch` (the 8 hex digits); a position `<epoch>-0` is
//!   offset 0; an `offset`/`epoch` pair is the `since` `<epoch>-<offset>`;
//! - an event's payload is `data`: a JSON payload as JSON (both encodings:
//!   Protobuf carries its text as bytes), a byte payload as the bytes
//!   (Protobuf) or, since JSON cannot carry bytes, as a base64 string with
//!   the tag `data_encoding: base64` (JSON); the event name, if any, is the
//!   tag `event`;
//! - a presence member is a `ClientInfo`: `user` the token's `sub`,
//!   `client` the session id, `conn_info` the connect hook's `info`.
//!
//! Events and presence changes are turned into pushes here once per event,
//! node and encoding ([`push`]), from the record every node already holds.

pub mod schema;

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use prost::Message;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::record::{BinaryHeader, Record};
use crate::{CloseCode, ErrorCode};
use schema::{ClientInfo, Command, Presence, Publication, Push, Reply};

/// The WebSocket subprotocol naming the Protobuf encoding.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The tag naming how a byte payload is written in the JSON encoding.
pub const DATA_ENCODING_TAG: &str = "data_encoding";

/// How a connection's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Newline-separated JSON objects in text frames.
    Json,
    /// Varint-length-prefixed Protobuf messages in binary frames.
    Protobuf,
}

/// A frame that is not a sequence of commands in the connection's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Reads every command of one WebSocket message.
///
/// # Errors
/// [`Malformed`] when any part of it is not a command: the protocol then
/// closes the connection (bad request).
pub fn decode_commands(wire: Wire, message: &[u8]) -> Result<Vec<Command>, Malformed> {
    decode_all(wire, message)
}

/// Reads every server message of one WebSocket message (the client side:
/// tests and the load generator).
///
/// # Errors
/// [`Malformed`] when any part of it is not a server message.
pub fn decode_replies(wire: Wire, message: &[u8]) -> Result<Vec<Reply>, Malformed> {
    decode_all(wire, message)
}

fn decode_all<M>(wire: Wire, message: &[u8]) -> Result<Vec<M>, Malformed>
where
    M: Message + Default + serde::de::DeserializeOwned,
{
    match wire {
        Wire::Json => {
            let text = std::str::from_utf8(message).map_err(|_| Malformed)?;
            text.split('\n')
                .filter(|line| !line.trim().is_empty())
                // An object each (serde would also read a struct from an array).
                .map(|line| match line.trim_start().starts_with('{') {
                    true => serde_json::from_str(line).map_err(|_| Malformed),
                    false => Err(Malformed),
                })
                .collect()
        }
        Wire::Protobuf => {
            let mut rest = message;
            let mut all = Vec::new();
            while !rest.is_empty() {
                let len = prost::encoding::decode_varint(&mut rest).map_err(|_| Malformed)?;
                let len = usize::try_from(len).map_err(|_| Malformed)?;
                if len > rest.len() {
                    return Err(Malformed);
                }
                let (one, after) = rest.split_at(len);
                all.push(M::decode(one).map_err(|_| Malformed)?);
                rest = after;
            }
            Ok(all)
        }
    }
}

/// One message (a server's reply or push, or a client's command), encoded
/// (a Protobuf one with its length prefix).
pub fn encode<M: Message + serde::Serialize>(wire: Wire, message: &M) -> Vec<u8> {
    match wire {
        // Strings, numbers, maps and valid raw JSON: cannot fail.
        Wire::Json => serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()),
        Wire::Protobuf => message.encode_length_delimited_to_vec(),
    }
}

/// The server's ping: an empty message (the client answers with an empty
/// command when `pong` was set in its connect result).
pub fn ping(wire: Wire) -> Vec<u8> {
    encode(wire, &Reply::default())
}

/// A Herald id or position as a stream position: `(epoch, offset)`.
pub fn position(id: &str) -> Option<(&str, u64)> {
    let (epoch, seq) = id.split_once('-')?;
    Some((epoch, seq.parse().ok()?))
}

/// A stream position as the Herald `since` it means.
pub fn since(epoch: &str, offset: u64) -> String {
    format!("{epoch}-{offset}")
}

/// The protocol's error for a Herald error code: code, message, and
/// whether the client should retry (`temporary`).
pub fn error(code: ErrorCode) -> (u32, &'static str, bool) {
    match code {
        ErrorCode::Unauthorized => (101, "unauthorized", false),
        ErrorCode::Forbidden | ErrorCode::ForbiddenOrigin => (103, "permission denied", false),
        ErrorCode::TooManySubscriptions | ErrorCode::TooManyConnections => {
            (106, "limit exceeded", false)
        }
        ErrorCode::BadRequest | ErrorCode::InvalidTopic | ErrorCode::TooLarge => {
            (107, "bad request", false)
        }
        ErrorCode::NotFound | ErrorCode::MethodNotAllowed => (104, "method not found", false),
        ErrorCode::TokenExpired => (109, "token expired", false),
        ErrorCode::RateLimited => (111, "too many requests", true),
        ErrorCode::Unavailable | ErrorCode::Internal => (100, "internal server error", true),
    }
}

/// Error 104: a method Herald does not offer (RPC, send, sub_refresh).
pub const METHOD_NOT_FOUND: u32 = 104;
/// Error 105: a second subscribe to a channel the client holds.
pub const ALREADY_SUBSCRIBED: u32 = 105;
/// Error 112: history `since` a position that is no longer kept.
pub const UNRECOVERABLE_POSITION: u32 = 112;

/// The disconnect code (and reason) a Herald close code becomes, with the
/// same advice: codes 3000–3499 tell the SDKs to reconnect, 3500–3999 not
/// to.
pub fn disconnect(code: CloseCode) -> (u16, &'static str) {
    match code {
        CloseCode::Normal => (3000, "connection closed"),
        CloseCode::Restart => (3001, "shutdown"),
        CloseCode::InternalError => (3004, "internal server error"),
        CloseCode::TokenExpired => (3005, "connection expired"),
        CloseCode::SlowConsumer => (3008, "slow"),
        CloseCode::HeartbeatTimeout => (3012, "no pong"),
        CloseCode::PolicyViolation => (3013, "too many requests"),
        CloseCode::Disconnected => (3503, "force disconnect"),
        CloseCode::ConnectRefused => (3500, "invalid token"),
        // The SDKs read 1009 as "message size limit" and do not reconnect.
        CloseCode::TooBig => (1009, "message size limit exceeded"),
        CloseCode::ProtocolError | CloseCode::UnsupportedData | CloseCode::InvalidPayload => {
            (3501, "bad request")
        }
    }
}

/// The fields of a record's JSON `message` frame, or of a presence frame.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    sub: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    session: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
}

fn tags(event: Option<&str>, base64: bool) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    if let Some(e) = event {
        tags.insert("event".to_owned(), e.to_owned());
    }
    if base64 {
        tags.insert(DATA_ENCODING_TAG.to_owned(), "base64".to_owned());
    }
    tags
}

fn offset_of(id: Option<&str>) -> u64 {
    id.and_then(position).map_or(0, |(_, o)| o)
}

/// A record's JSON `message` frame, read, as a `Publication`.
fn from_frame(f: &Frame<'_>) -> Option<Publication> {
    if f.kind != "message" {
        return None;
    }
    Some(Publication {
        data: f.data?.get().as_bytes().to_vec(),
        offset: offset_of(f.id.as_deref()),
        tags: tags(f.event.as_deref(), false),
    })
}

/// A byte payload's record, read, as a `Publication` for `wire`.
fn from_binary(h: &BinaryHeader<'_>, bytes: &[u8], wire: Wire) -> Option<Publication> {
    let (data, base64) = match wire {
        Wire::Protobuf => (bytes.to_vec(), false),
        Wire::Json => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            (serde_json::to_vec(&b64).ok()?, true)
        }
    };
    Some(Publication {
        data,
        offset: offset_of(Some(&h.id)),
        tags: tags(h.event.as_deref(), base64),
    })
}

/// An event's record (see [`crate::record`]) as a `Publication`, for
/// `wire`; `None` for a record that is not an event.
pub fn publication(record: &[u8], wire: Wire) -> Option<Publication> {
    match Record::parse(record)? {
        Record::Json(frame) => from_frame(&serde_json::from_slice(frame).ok()?),
        Record::Binary { header, bytes } => {
            from_binary(&serde_json::from_slice(header).ok()?, bytes, wire)
        }
    }
}

/// The push a connection with `wire` receives for an event's record or a
/// presence frame (`join`/`leave`, contract §8), encoded; `None` for
/// anything else.
pub fn push(frame: &[u8], wire: Wire) -> Option<Vec<u8>> {
    let push = match Record::parse(frame)? {
        Record::Binary { header, bytes } => {
            let h: BinaryHeader<'_> = serde_json::from_slice(header).ok()?;
            Push {
                publication: Some(from_binary(&h, bytes, wire)?),
                channel: h.topic.into_owned(),
                ..Push::default()
            }
        }
        Record::Json(json) => {
            let f: Frame<'_> = serde_json::from_slice(json).ok()?;
            let member = || {
                Some(Presence {
                    info: Some(ClientInfo {
                        user: f.sub.as_deref()?.to_owned(),
                        client: f.session.as_deref()?.to_owned(),
                        conn_info: f
                            .info
                            .map(|i| i.get().as_bytes().to_vec())
                            .unwrap_or_default(),
                    }),
                })
            };
            let mut push = Push {
                channel: f.topic.clone().into_owned(),
                ..Push::default()
            };
            match &*f.kind {
                "message" => push.publication = Some(from_frame(&f)?),
                "join" => push.join = Some(member()?),
                "leave" => push.leave = Some(member()?),
                _ => return None,
            }
            push
        }
    };
    Some(encode(
        wire,
        &Reply {
            push: Some(push),
            ..Reply::default()
        },
    ))
}

#[cfg(test)]
mod tests;
