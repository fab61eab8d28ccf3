//! Presence members (contract §5 presence frames, §8 presence route).
//!
//! One type for a member wherever it travels: stored in Redis as JSON,
//! carried between nodes on a topic's channel, answered by the admin API
//! (with `node`) and to clients (without it, see [`Member::public`]).
//! A member admitted by the connect hook carries the backend's `info`
//! (contract §10.6) everywhere it goes; others carry none.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// What the app's backend attached to a session (the connect hook's
/// `info`): any JSON, kept as the text the backend sent and shared, never
/// re-encoded.
#[derive(Debug, Clone)]
pub struct Info(pub Arc<RawValue>);

impl PartialEq for Info {
    fn eq(&self, other: &Info) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Info {}

impl Serialize for Info {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (*self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Info {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Info, D::Error> {
        Box::<RawValue>::deserialize(d).map(|b| Info(Arc::from(b)))
    }
}

/// A session subscribed to a topic tracked for presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    /// The token's `sub`.
    pub sub: String,
    /// The session's opaque id, as in its `welcome`.
    pub session: String,
    /// The `node_id` of the node holding the session.
    pub node: String,
    /// When the session joined, in milliseconds since the Unix epoch.
    pub since: u64,
    /// The connect hook's `info`, when the backend admitted the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<serde_json::Value>))]
    pub info: Option<Info>,
}

/// A member as clients see it: the node holding a session is the
/// operator's business, not the other clients'.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PublicMember<'a> {
    /// The token's `sub`.
    pub sub: &'a str,
    /// The session's opaque id.
    pub session: &'a str,
    /// Join time, ms since the Unix epoch.
    pub since: u64,
    /// The connect hook's `info`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a Info>,
}

impl Member {
    /// The member without its node, for a client's `presence` reply.
    pub fn public(&self) -> PublicMember<'_> {
        PublicMember {
            sub: &self.sub,
            session: &self.session,
            since: self.since,
            info: self.info.as_ref(),
        }
    }
}
