//! Presence (contract §5): which sessions are subscribed to a topic tracked
//! for presence, and the `join` / `leave` frames their peers receive.
//!
//! A node tells its broker when one of its sessions joins or leaves a
//! tracked topic; the broker stores the member and announces the change to
//! every node holding the topic, whose sinks hand the frame to their
//! sessions allowed to see presence. Joins and leaves of one session take
//! effect in the order they were asked for, and each join is followed by at
//! most one leave: a repeated join of a present member announces nothing,
//! and a leave of an absent one announces nothing. See the Redis broker's
//! `presence` module for how members of a dead node leave.

use bytes::Bytes;
use herald_protocol::{Member, ServerFrame, Topic};

use super::{Broker, BrokerError, MemberPage};

/// Most members one presence page holds (contract §10.5).
pub const MAX_PAGE: usize = 1000;
/// Members per page when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 100;

/// A page of `topic`'s members (see [`Broker::members`]) whose rendering
/// fits in `max` bytes (contract §10.5: no reply is larger than
/// `limits.max_message_size`): while it does not, the page is read again
/// with half the limit, so its `next_cursor` still follows the last member
/// sent. A single member larger than `max` is sent alone.
///
/// # Errors
/// The broker's.
pub async fn page_within<B: Broker, R: AsRef<[u8]>>(
    broker: &B,
    topic: &Topic,
    cursor: Option<&str>,
    limit: usize,
    max: usize,
    render: impl Fn(&MemberPage) -> R,
) -> Result<R, BrokerError> {
    let mut limit = limit;
    loop {
        let page = broker.members(topic, cursor, limit).await?;
        let rendered = render(&page);
        if rendered.as_ref().len() <= max || page.members.len() <= 1 {
            return Ok(rendered);
        }
        limit = page.members.len() / 2;
    }
}

/// Why a member left, the `cause` label of `herald_presence_leaves_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveCause {
    /// The session unsubscribed (or a refreshed token lost the topic).
    Unsubscribe,
    /// The session ended.
    Disconnect,
    /// Its node stopped reporting (crashed, paused, cut off from Redis).
    Timeout,
}

impl LeaveCause {
    /// Every cause, in label order.
    pub const ALL: [LeaveCause; 3] = [
        LeaveCause::Unsubscribe,
        LeaveCause::Disconnect,
        LeaveCause::Timeout,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            LeaveCause::Unsubscribe => "unsubscribe",
            LeaveCause::Disconnect => "disconnect",
            LeaveCause::Timeout => "timeout",
        }
    }

    /// Position in [`LeaveCause::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A member came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `join`.
    Join,
    /// `leave`.
    Leave,
}

/// The frame sessions receive for `change` of `member` on `topic`; rendered
/// once per node and shared by every session that gets it.
pub fn frame(topic: &Topic, change: Change, member: &Member) -> Bytes {
    let (topic, sub, session) = (topic.as_str(), &*member.sub, &*member.session);
    let info = member.info.as_ref();
    let frame = match change {
        Change::Join => ServerFrame::Join {
            topic,
            sub,
            session,
            info,
        },
        Change::Leave => ServerFrame::Leave {
            topic,
            sub,
            session,
            info,
        },
    };
    Bytes::from(frame.to_json())
}

/// Members in a stable order: oldest first, then by session.
pub fn sort(members: &mut [Member]) {
    members.sort_unstable_by(|a, b| (a.since, &a.session).cmp(&(b.since, &b.session)));
}
