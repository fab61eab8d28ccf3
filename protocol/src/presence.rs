//! Presence members (contract §5 presence frames, §8 presence route).
//!
//! One type for a member wherever it travels: stored in Redis as JSON,
//! carried between nodes on a topic's channel, answered by the admin API
//! (with `node`) and to clients (without it, see [`Member::public`]).

use serde::{Deserialize, Serialize};

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
}

impl Member {
    /// The member without its node, for a client's `presence` reply.
    pub fn public(&self) -> PublicMember<'_> {
        PublicMember {
            sub: &self.sub,
            session: &self.session,
            since: self.since,
        }
    }
}
