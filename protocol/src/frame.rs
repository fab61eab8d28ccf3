//! Client and server frames (contract §5).
//!
//! Client frames are parsed leniently enough to always recover the `ref` when
//! the JSON is an object, so even a refusal can be matched by the client. Topic
//! names stay plain strings here: checking them is the handler's job, because
//! an invalid topic is an `invalid_topic` error naming the topic, not a
//! `bad_request`.
//!
//! `data` is kept as raw JSON text from parse to delivery: the gateway never
//! re-serializes what a publisher sent.
//!
//! Every frame of the protocol is in this one file (about 650 lines, a third
//! of them tests pinning the wire shape), so the wire format reads in one
//! place.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::presence::PublicMember;
use crate::record::{MessageFrame, Payload};

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// A frame a client sends.
///
/// Parsed by the gateway with [`parse_client_frame`]; serialized by clients
/// written in Rust (the load generator, the tests), so both sides share one
/// definition.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame<'a> {
    /// Subscribe to topics, optionally recovering from `since` positions.
    Subscribe {
        /// Echoed in the reply.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// Topic names, unchecked.
        topics: Vec<String>,
        /// Topic name → last id the client saw.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        since: BTreeMap<String, String>,
    },
    /// Unsubscribe from topics.
    Unsubscribe {
        /// Echoed in the reply.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// Topic names, unchecked.
        topics: Vec<String>,
    },
    /// Publish one event.
    Publish {
        /// Echoed in the reply.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// Topic name, unchecked.
        topic: String,
        /// The payload: `data` (JSON) or `data_b64` (bytes).
        #[serde(flatten)]
        data: Payload<'a>,
        /// Optional event name.
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<String>,
    },
    /// Authenticates a connection that gave no token in its handshake:
    /// its first frame, and only then (contract §10.4).
    Connect {
        /// The JWT.
        token: String,
    },
    /// Application-level ping.
    Ping {
        /// Echoed in the reply.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Replace the connection's token.
    Auth {
        /// Echoed in the reply.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// The fresh JWT.
        token: String,
    },
    /// Ask who is present on a topic, a page at a time.
    Presence {
        /// Echoed in the reply.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// Topic name, unchecked.
        topic: String,
        /// Most members in the reply (1–1000, default 100), unchecked.
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        /// A previous reply's `next_cursor`.
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Ask how many are present on a topic.
    PresenceStats {
        /// Echoed in the reply.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// Topic name, unchecked.
        topic: String,
    },
}

impl ClientFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Strings, string maps and already-valid raw JSON: cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// The client's `ref`, if it sent one.
    pub fn reference(&self) -> Option<&str> {
        match self {
            ClientFrame::Subscribe { reference, .. }
            | ClientFrame::Unsubscribe { reference, .. }
            | ClientFrame::Publish { reference, .. }
            | ClientFrame::Ping { reference }
            | ClientFrame::Auth { reference, .. }
            | ClientFrame::Presence { reference, .. }
            | ClientFrame::PresenceStats { reference, .. } => reference.as_deref(),
            ClientFrame::Connect { .. } => None,
        }
    }
}

/// A client frame that could not be understood: always `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The `ref` if one could be read, so the client can match the error.
    pub reference: Option<String>,
    /// What was wrong, for the client's developer.
    pub message: String,
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(rename = "ref", default)]
    reference: Option<String>,
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    data_b64: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    since: Option<BTreeMap<String, String>>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    cursor: Option<String>,
}

/// Treats a present `null` as present: only a missing field is missing.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct RefOnly {
    #[serde(rename = "ref", default)]
    reference: Option<serde_json::Value>,
}

fn missing(reference: Option<String>, kind: &str, field: &str) -> FrameError {
    FrameError {
        reference,
        message: format!("{kind} needs a '{field}' field"),
    }
}

/// Standard base64, read leniently: padding optional, and unused bits of
/// the last symbol ignored (what an encoder elsewhere may leave there).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A publish's payload: exactly one of `data` and `data_b64` (contract
/// §10.2), the latter standard base64.
///
/// # Errors
/// What is wrong, for a `bad_request`.
pub fn payload<'a>(
    data: Option<&'a RawValue>,
    b64: Option<String>,
) -> Result<Payload<'a>, &'static str> {
    match (data, b64) {
        (Some(data), None) => Ok(Payload::Json(std::borrow::Cow::Borrowed(data))),
        (None, Some(b64)) => base64::Engine::decode(&BASE64, b64)
            .map(|b| Payload::Bytes(std::borrow::Cow::Owned(b)))
            .map_err(|_| "'data_b64' is not standard base64"),
        (Some(_), Some(_)) => Err("publish takes 'data' or 'data_b64', not both"),
        (None, None) => Err("publish needs a 'data' or 'data_b64' field"),
    }
}

/// Parses one client frame from the text of a WebSocket message.
///
/// # Errors
/// A [`FrameError`] when the text is not a JSON object, has no or an unknown
/// `type`, or lacks a field its type needs.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame<'_>, FrameError> {
    let raw: RawFrame<'_> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            // Keep the ref of a well-formed object whose other fields are mistyped.
            let reference = serde_json::from_str::<RefOnly>(text)
                .ok()
                .and_then(|r| r.reference)
                .and_then(|v| v.as_str().map(str::to_owned));
            let message = if e.is_data() {
                format!("invalid frame: {e}")
            } else {
                "frame is not a JSON object".to_owned()
            };
            return Err(FrameError { reference, message });
        }
    };
    let reference = raw.reference;
    let Some(kind) = raw.kind else {
        return Err(FrameError {
            reference,
            message: "frame has no 'type'".to_owned(),
        });
    };
    match kind.as_str() {
        "subscribe" => Ok(ClientFrame::Subscribe {
            topics: raw
                .topics
                .ok_or_else(|| missing(reference.clone(), "subscribe", "topics"))?,
            since: raw.since.unwrap_or_default(),
            reference,
        }),
        "unsubscribe" => Ok(ClientFrame::Unsubscribe {
            topics: raw
                .topics
                .ok_or_else(|| missing(reference.clone(), "unsubscribe", "topics"))?,
            reference,
        }),
        "publish" => Ok(ClientFrame::Publish {
            topic: raw
                .topic
                .ok_or_else(|| missing(reference.clone(), "publish", "topic"))?,
            data: payload(raw.data, raw.data_b64).map_err(|message| FrameError {
                reference: reference.clone(),
                message: message.to_owned(),
            })?,
            event: raw.event,
            reference,
        }),
        "connect" => Ok(ClientFrame::Connect {
            token: raw
                .token
                .ok_or_else(|| missing(reference.clone(), "connect", "token"))?,
        }),
        "ping" => Ok(ClientFrame::Ping { reference }),
        "auth" => Ok(ClientFrame::Auth {
            token: raw
                .token
                .ok_or_else(|| missing(reference.clone(), "auth", "token"))?,
            reference,
        }),
        "presence" => Ok(ClientFrame::Presence {
            topic: raw
                .topic
                .ok_or_else(|| missing(reference.clone(), "presence", "topic"))?,
            limit: raw.limit,
            cursor: raw.cursor,
            reference,
        }),
        "presence_stats" => Ok(ClientFrame::PresenceStats {
            topic: raw
                .topic
                .ok_or_else(|| missing(reference.clone(), "presence_stats", "topic"))?,
            reference,
        }),
        other => Err(FrameError {
            reference,
            message: format!("unknown frame type '{}'", other.escape_debug()),
        }),
    }
}

/// A frame the server sends, borrowed from whatever produced it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First frame on every connection.
    Welcome {
        /// Opaque session id.
        session: &'a str,
        /// The node's `node_id`.
        node: &'a str,
        /// `heartbeat.interval` in milliseconds.
        heartbeat_ms: u64,
        /// [`PROTOCOL_VERSION`].
        protocol: u32,
    },
    /// Reply to `subscribe`, sent once the subscription is live end to end.
    Subscribed {
        /// The client's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The topics now subscribed.
        topics: &'a [&'a str],
        /// Per topic of `since`: whether the missed messages were replayed.
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<&'a BTreeMap<&'a str, bool>>,
        /// Per topic: where the client stands, a valid `since` (the last
        /// event it was given, or the topic's position before any).
        positions: &'a BTreeMap<&'a str, String>,
    },
    /// Reply to `unsubscribe`, or notice that a refreshed token lost topics.
    Unsubscribed {
        /// The client's ref; absent on a notice.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The topics no longer subscribed.
        topics: &'a [&'a str],
    },
    /// Reply to `publish`.
    Published {
        /// The client's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The topic published to.
        topic: &'a str,
        /// The id the event got.
        id: &'a str,
    },
    /// Reply to `ping`.
    Pong {
        /// The client's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// Reply to `auth`.
    Authed {
        /// The client's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The new token's `exp`.
        exp: u64,
    },
    /// Less than a minute of token lifetime is left.
    TokenExpiring {
        /// The current token's `exp`.
        exp: u64,
    },
    /// A refusal; the connection stays open.
    Error {
        /// The ref of the refused frame.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The contract code.
        code: ErrorCode,
        /// Human-readable detail.
        message: &'a str,
        /// The topic at fault, when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
    },
    /// Reply to `presence`: a page of the topic's members.
    Presence {
        /// The client's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The topic asked about.
        topic: &'a str,
        /// At most the asked `limit` of its members.
        members: &'a [PublicMember<'a>],
        /// Every member, across all pages.
        count: u64,
        /// Present when more members remain: the next request's `cursor`.
        #[serde(skip_serializing_if = "Option::is_none")]
        next_cursor: Option<&'a str>,
    },
    /// Reply to `presence_stats`.
    PresenceStats {
        /// The client's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        /// The topic asked about.
        topic: &'a str,
        /// Sessions present.
        count: u64,
        /// Distinct `sub`s among them.
        users: u64,
    },
    /// A session joined a presence topic the client is subscribed to.
    Join {
        /// The topic.
        topic: &'a str,
        /// The member's `sub`.
        sub: &'a str,
        /// The member's session.
        session: &'a str,
        /// The member's `info` (connect hook), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a crate::Info>,
    },
    /// A member left (unsubscribed, disconnected, or its node died).
    Leave {
        /// The topic.
        topic: &'a str,
        /// The member's `sub`.
        sub: &'a str,
        /// The member's session.
        session: &'a str,
        /// The member's `info` (connect hook), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a crate::Info>,
    },
    /// An event.
    Message(MessageFrame<'a>),
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every field is a string, a number,
        // a map with string keys or already-valid raw JSON.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// What a client matches a server frame by: its type, `ref`, topic, id and
/// error code, borrowed from the text where possible. Every other field
/// (`data`, `topics`, …) is skipped, not parsed.
#[derive(Debug, Deserialize)]
pub struct ServerFrameHead<'a> {
    /// `type`: `welcome`, `subscribed`, `message`, `error`, …
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// The `ref` of the request this answers.
    #[serde(rename = "ref", borrow, default)]
    pub reference: Option<Cow<'a, str>>,
    /// `topic`, on frames that name one.
    #[serde(borrow, default)]
    pub topic: Option<Cow<'a, str>>,
    /// `id`, on `message` and `published`.
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    /// `code`, on `error`.
    #[serde(default)]
    pub code: Option<ErrorCode>,
}

impl<'a> ServerFrameHead<'a> {
    /// Reads the head of a server frame; `None` when the text is not a JSON
    /// object with a `type`.
    pub fn parse(text: &'a [u8]) -> Option<ServerFrameHead<'a>> {
        serde_json::from_slice(text).ok()
    }
}

impl MessageFrame<'_> {
    /// The complete `{"type":"message",…}` frame as JSON text.
    pub fn to_json(&self) -> String {
        ServerFrame::Message(*self).to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn client_frames_round_trip() {
        let data = RawValue::from_string(r#"{"t":1}"#.to_owned()).unwrap();
        let frames = [
            ClientFrame::Subscribe {
                reference: Some("1".into()),
                topics: vec!["news".into()],
                since: BTreeMap::from([("news".to_owned(), "0000000a-3".to_owned())]),
            },
            ClientFrame::Publish {
                reference: None,
                topic: "chat.a".into(),
                data: Payload::Json(std::borrow::Cow::Borrowed(&data)),
                event: Some("line".into()),
            },
            ClientFrame::Publish {
                reference: Some("b".into()),
                topic: "ticks.bin".into(),
                data: Payload::Bytes(std::borrow::Cow::Borrowed(&[0, 1, 2][..])),
                event: None,
            },
            ClientFrame::Connect { token: "t".into() },
            ClientFrame::Ping { reference: None },
            ClientFrame::Presence {
                reference: Some("7".into()),
                topic: "chat.room-1".into(),
                limit: Some(10),
                cursor: Some("3:s1".into()),
            },
            ClientFrame::PresenceStats {
                reference: Some("8".into()),
                topic: "chat.room-1".into(),
            },
        ];
        for frame in &frames {
            let json = frame.to_json();
            let back = parse_client_frame(&json).unwrap();
            assert_eq!(back.to_json(), json);
        }
        assert_eq!(
            frames[4].to_json(),
            r#"{"type":"ping"}"#,
            "absent fields are left out"
        );
    }

    #[test]
    fn presence_frames_match_the_contract() {
        let member = crate::Member {
            sub: "alice".into(),
            session: "s1".into(),
            node: "n1".into(),
            since: 1_767_222_000_123,
            info: None,
        };
        let reply = ServerFrame::Presence {
            reference: Some("7"),
            topic: "chat.room-1",
            members: &[member.public()],
            count: 1,
            next_cursor: None,
        };
        assert_eq!(
            reply.to_json(),
            r#"{"type":"presence","ref":"7","topic":"chat.room-1","members":[{"sub":"alice","session":"s1","since":1767222000123}],"count":1}"#
        );
        let stats = ServerFrame::PresenceStats {
            reference: Some("8"),
            topic: "t",
            count: 3,
            users: 2,
        };
        assert_eq!(
            stats.to_json(),
            r#"{"type":"presence_stats","ref":"8","topic":"t","count":3,"users":2}"#
        );
        let join = ServerFrame::Join {
            topic: "chat.room-1",
            sub: "alice",
            session: "s1",
            info: None,
        };
        assert_eq!(
            join.to_json(),
            r#"{"type":"join","topic":"chat.room-1","sub":"alice","session":"s1"}"#
        );
        let info = crate::Info(std::sync::Arc::from(
            serde_json::value::RawValue::from_string(r#"{"name":"A"}"#.to_owned()).unwrap(),
        ));
        let leave = ServerFrame::Leave {
            topic: "t",
            sub: "a",
            session: "s",
            info: Some(&info),
        };
        assert_eq!(
            leave.to_json(),
            r#"{"type":"leave","topic":"t","sub":"a","session":"s","info":{"name":"A"}}"#
        );
        let with_info = crate::Member {
            info: Some(info.clone()),
            ..member
        };
        let json = serde_json::to_string(&with_info).unwrap();
        assert_eq!(
            json,
            r#"{"sub":"alice","session":"s1","node":"n1","since":1767222000123,"info":{"name":"A"}}"#
        );
        let back: crate::Member = serde_json::from_str(&json).unwrap();
        assert_eq!(back, with_info, "info survives storage");
        let missing = parse_client_frame(r#"{"type":"presence","ref":"9"}"#).unwrap_err();
        assert_eq!(missing.reference.as_deref(), Some("9"));
        assert!(missing.message.contains("'topic'"), "{}", missing.message);
    }

    #[test]
    fn server_frame_heads() {
        let h = ServerFrameHead::parse(
            br#"{"type":"error","ref":"1","code":"forbidden","message":"m","topic":"a.b"}"#,
        )
        .unwrap();
        assert_eq!(h.kind, "error");
        assert_eq!(h.reference.as_deref(), Some("1"));
        assert_eq!(h.code, Some(ErrorCode::Forbidden));
        assert_eq!(h.topic.as_deref(), Some("a.b"));
        let h = ServerFrameHead::parse(
            br#"{"type":"message","topic":"n","id":"0000000a-1","data":{"x":[1,2]},"ts":1}"#,
        )
        .unwrap();
        assert_eq!(h.id.as_deref(), Some("0000000a-1"));
        assert!(ServerFrameHead::parse(b"[1]").is_none());
    }

    #[test]
    fn parses_every_client_frame() {
        let f =
            parse_client_frame(r#"{"type":"subscribe","ref":"1","topics":["news","stocks.AAPL"]}"#)
                .unwrap();
        assert!(matches!(f, ClientFrame::Subscribe { ref topics, .. } if topics.len() == 2));
        assert_eq!(f.reference(), Some("1"));

        let f =
            parse_client_frame(r#"{"type":"subscribe","topics":["news"],"since":{"news":"x-1"}}"#)
                .unwrap();
        assert!(matches!(f, ClientFrame::Subscribe { ref since, .. } if since["news"] == "x-1"));

        let f =
            parse_client_frame(r#"{"type":"unsubscribe","ref":"3","topics":["news"]}"#).unwrap();
        assert!(matches!(f, ClientFrame::Unsubscribe { .. }));

        let f = parse_client_frame(
            r#"{"type":"publish","ref":"4","topic":"chat.room-1","data":{"text":"hi"}}"#,
        )
        .unwrap();
        match f {
            ClientFrame::Publish {
                topic, data, event, ..
            } => {
                assert_eq!(topic, "chat.room-1");
                assert_eq!(data.json().unwrap().get(), r#"{"text":"hi"}"#);
                assert_eq!(event, None);
            }
            other => panic!("{other:?}"),
        }

        assert!(matches!(
            parse_client_frame(r#"{"type":"ping","ref":"5"}"#).unwrap(),
            ClientFrame::Ping { .. }
        ));
        assert!(matches!(
            parse_client_frame(r#"{"type":"auth","ref":"6","token":"t"}"#).unwrap(),
            ClientFrame::Auth { .. }
        ));
    }

    #[test]
    fn a_publish_carries_exactly_one_payload() {
        let f = parse_client_frame(r#"{"type":"publish","topic":"a","data_b64":"AAEC"}"#).unwrap();
        assert!(
            matches!(f, ClientFrame::Publish { data: Payload::Bytes(ref b), .. } if b[..] == [0, 1, 2])
        );
        for bad in [
            r#"{"type":"publish","ref":"1","topic":"a","data":1,"data_b64":"AAEC"}"#,
            r#"{"type":"publish","ref":"1","topic":"a"}"#,
            r#"{"type":"publish","ref":"1","topic":"a","data_b64":"not base64!"}"#,
        ] {
            let e = parse_client_frame(bad).unwrap_err();
            assert_eq!(e.reference.as_deref(), Some("1"), "{bad}");
            assert!(e.message.contains("data"), "{bad}: {}", e.message);
        }
        let c = parse_client_frame(r#"{"type":"connect","token":"t"}"#).unwrap();
        assert!(matches!(c, ClientFrame::Connect { ref token } if token == "t"));
        assert!(parse_client_frame(r#"{"type":"connect"}"#).is_err());
    }

    #[test]
    fn null_data_is_present() {
        let f = parse_client_frame(r#"{"type":"publish","topic":"a","data":null}"#).unwrap();
        assert!(
            matches!(f, ClientFrame::Publish { data, .. } if data.json().unwrap().get() == "null")
        );
    }

    #[test]
    fn refusals_keep_the_ref() {
        let e = parse_client_frame(r#"{"type":"nope","ref":"9"}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("9"));
        assert!(e.message.contains("unknown frame type"));

        let e = parse_client_frame(r#"{"ref":"8"}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("8"));

        let e =
            parse_client_frame(r#"{"type":"subscribe","ref":"7","topics":"news"}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("7"));

        let e = parse_client_frame(r#"{"type":"publish","ref":"6","topic":"a"}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("6"));
        assert!(e.message.contains("data"));

        let e = parse_client_frame("not json").unwrap_err();
        assert_eq!(e.reference, None);
        let e = parse_client_frame("[1,2]").unwrap_err();
        assert_eq!(e.reference, None);
    }

    #[test]
    fn server_frames_match_the_contract() {
        let json = ServerFrame::Welcome {
            session: "s",
            node: "n",
            heartbeat_ms: 25000,
            protocol: 1,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"welcome","session":"s","node":"n","heartbeat_ms":25000,"protocol":1}"#
        );
        let data = RawValue::from_string(r#"{"price":189.21}"#.to_owned()).unwrap();
        let json = MessageFrame {
            topic: "stocks.AAPL",
            id: "e-1",
            event: Some("tick"),
            data: &data,
            ts: 7,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"message","topic":"stocks.AAPL","id":"e-1","event":"tick","data":{"price":189.21},"ts":7}"#
        );
        let json = ServerFrame::Error {
            reference: None,
            code: ErrorCode::Forbidden,
            message: "m",
            topic: Some("admin.x"),
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"error","code":"forbidden","message":"m","topic":"admin.x"}"#
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = parse_client_frame(&s);
        }

        #[test]
        fn parser_never_panics_on_json_like_input(
            kind in prop_oneof![Just("subscribe"), Just("publish"), Just("auth"), Just("x")],
            field in prop_oneof![Just("topics"), Just("topic"), Just("data"), Just("since"), Just("ref")],
            value in prop_oneof![Just("1"), Just("null"), Just("[]"), Just("{}"), Just("\"s\""), Just("[\"a\"]")],
        ) {
            let text = format!(r#"{{"type":"{kind}","{field}":{value}}}"#);
            let _ = parse_client_frame(&text);
        }
    }
}
