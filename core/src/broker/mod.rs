//! The broker seam: how a node publishes events and hears about them.
//!
//! A broker is per node, not per client. The gateway's hub counts local
//! subscribers and calls [`Broker::subscribe`] once, when a topic gets its first
//! local session, and [`Broker::unsubscribe`] when the last one leaves; the
//! broker never sees individual sessions. Events come back through the
//! [`EventSink`] handed to the broker when it is built.
//!
//! # Guarantees every implementation gives
//! - **Ids.** Every accepted event gets a [`Position`]: the epoch of its topic's
//!   history and a sequence number that increases by one per event of that
//!   topic within the epoch.
//! - **Order.** The sink sees the events of one topic in id order, each once.
//! - **Acknowledgement.** [`Broker::publish`] returns only after every event of
//!   the batch is stored in history (when history is on) and handed to
//!   delivery; storing and delivering are one atomic step, so an event is never
//!   delivered without history or stored without being delivered. (With
//!   `publish.durability = replicated`, the Redis broker stores, waits for its
//!   replicas, and only then delivers; an event is never delivered before it
//!   is acknowledged.)
//! - **Ids are never reused.** Not even across a Redis failover that lost
//!   acknowledged writes: such a history starts a new epoch, and the sink
//!   hears [`EventSink::history_replaced`] before its first event.
//! - **Idempotency.** A publication whose `idempotency_key` was seen for the
//!   same topic within `publish.idempotency_window` is not published again;
//!   its position is the first one's. The check is atomic with the publish.
//! - **Subscription.** The [`Ready`] returned by [`Broker::subscribe`]
//!   resolves once events published afterwards are certain to reach the sink.
//! - **Positions.** [`Broker::position`] gives every topic a position, also
//!   one with no event yet (`<epoch>-0`, of an epoch the call starts if the
//!   topic has none), and a position stays valid as `since` while any node
//!   subscribes the topic: its epoch is kept (its events still expire
//!   `history.ttl` after their publish), so a quiet topic recovers.
//! - **Lifecycle webhooks.** With `webhooks.events` set, every
//!   `session.connected` recorded is followed by exactly one
//!   `session.disconnected` (`node_lost` when its node died), and every
//!   `presence.join` by at most one `presence.leave`; a session's events
//!   and a topic's are queued in the order they happened, and stay queued
//!   (in Redis: durably, shared by the cluster) until
//!   [`Broker::webhooks_done`].
//! - **Calls in order.** `subscribe` and `unsubscribe` take effect in the order
//!   they are called; they do not block, so the hub can call them while holding
//!   its own lock and thereby keep its view and the broker's in step.
//!
//! The shared conformance suite in `conformance` (compiled for tests and
//! with the `conformance` feature) checks these for every
//! implementation.

mod any;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod memory;
pub mod presence;
pub mod redis;
pub mod webhook_queue;

pub use any::{AnyBroker, Backend};
pub use herald_protocol::Member;
pub use presence::{Change, LeaveCause};

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::{ErrorCode, Payload, Topic};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::webhooks::{Queued, SessionOpen};

/// One event to publish.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Where it goes.
    pub topic: Topic,
    /// Optional event name.
    pub event: Option<String>,
    /// The payload: JSON (already valid) or bytes.
    pub data: Payload<'static>,
    /// When set, a publication to the same topic with the same key within
    /// `publish.idempotency_window` is not published again: the broker
    /// answers the first one's position (contract §8).
    pub idempotency_key: Option<String>,
}

impl Publication {
    /// A publication of JSON `data` to `topic`, without event name or key.
    pub fn new(topic: Topic, data: Box<RawValue>) -> Publication {
        Publication::of(topic, Payload::Json(std::borrow::Cow::Owned(data)))
    }

    /// A publication of `data` (JSON or bytes) to `topic`, without event
    /// name or key.
    pub fn of(topic: Topic, data: Payload<'static>) -> Publication {
        Publication {
            topic,
            event: None,
            data,
            idempotency_key: None,
        }
    }
}

/// What a broker is built with, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSettings {
    /// `[history]`.
    pub history: crate::config::HistoryConfig,
    /// `[publish]`: durability and idempotency.
    pub publish: crate::config::PublishConfig,
    /// `presence.timeout`: members of a node that stopped reporting leave
    /// within this long.
    pub presence_timeout: std::time::Duration,
    /// `[webhooks]`: which lifecycle events to record, and the queue's cap.
    pub webhooks: crate::webhooks::WebhookSettings,
}

/// Where an event sits in its topic's history; shown to clients as an opaque id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The history epoch: changes whenever the topic's history is created anew.
    pub epoch: u32,
    /// Sequence within the epoch, from 1.
    pub seq: u64,
}

impl Position {
    /// Parses an id produced by [`Position`]'s `Display`.
    pub fn parse(id: &str) -> Option<Position> {
        let (epoch, seq) = id.split_once('-')?;
        if epoch.len() != 8 || seq.is_empty() || seq.starts_with('+') {
            return None;
        }
        Some(Position {
            epoch: u32::from_str_radix(epoch, 16).ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{}", self.epoch, self.seq)
    }
}

/// An event as the broker hands it to nodes: its position and its record
/// (its complete `message` frame, or a byte payload's envelope; see
/// [`herald_protocol::record`]), rendered once by whoever accepted it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The topic.
    pub topic: Topic,
    /// Its id.
    pub position: Position,
    /// Its record.
    pub record: Bytes,
}

impl Event {
    /// Renders the record of an accepted publication.
    pub fn render(publication: &Publication, position: Position, ts_ms: u64) -> Event {
        let id = position.to_string();
        let record = herald_protocol::record::render(
            publication.topic.as_str(),
            &id,
            publication.event.as_deref(),
            &publication.data,
            ts_ms,
        );
        Event {
            topic: publication.topic.clone(),
            position,
            record: Bytes::from(record),
        }
    }

    /// The `message` frame JSON connections receive (see
    /// [`herald_protocol::record::json_frame`]); `None` for a record Herald
    /// did not write.
    pub fn json_frame(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        herald_protocol::record::json_frame(&self.record)
    }
}

/// A page of history.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// Events in id order.
    pub events: Vec<Event>,
    /// `false` when the requested `since` could not be matched: unknown,
    /// malformed, too old or from another epoch. The events then start at the
    /// oldest kept.
    pub recovered: bool,
    /// The topic's latest position when the page was read (whatever `limit`
    /// was), or `None` when the topic has no history at all.
    pub head: Option<Position>,
    /// The epoch this history's epoch replaced because the earlier one may
    /// have lost acknowledged events (a Redis failover): nothing of that
    /// epoch after what a reader has is recoverable.
    pub replaced: Option<u32>,
}

/// A page of a topic's presence (see [`Broker::members`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberPage {
    /// At most the page's limit.
    pub members: Vec<Member>,
    /// Sessions present on the topic.
    pub count: u64,
    /// Distinct `sub`s among them.
    pub users: u64,
    /// Where the next page starts, when members remain.
    pub next_cursor: Option<String>,
}

/// Receives every event of the topics the node subscribed.
pub trait EventSink: Send + Sync + 'static {
    /// Called once per event, in id order per topic. Must not block.
    fn deliver(&self, event: &Event);

    /// Called when the broker may have missed events of `topic` (its
    /// connection was lost and the topic is subscribed again): the sink should
    /// catch up from history. Must not block.
    fn resync(&self, _topic: &Topic) {}

    /// Called, before the first event of the new epoch, when `topic`'s
    /// history was replaced by a new epoch because epoch `old` may have lost
    /// acknowledged events (a Redis failover). Sessions that were following
    /// `old` may have missed events nobody can give them back. Must not
    /// block.
    fn history_replaced(&self, _topic: &Topic, _old: u32) {}

    /// Called when `member` joined or left `topic` (a topic the node
    /// subscribed). Must not block.
    fn presence(&self, _topic: &Topic, _change: Change, _member: &Member) {}
}

/// A sink that drops everything, for processes with no sessions.
#[derive(Debug, Default)]
pub struct NoSink;

impl EventSink for NoSink {
    fn deliver(&self, _event: &Event) {}
}

/// What a node reports about itself in `/v1/stats`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NodeStats {
    /// `node_id`.
    pub node: String,
    /// Open sessions.
    pub connections: u64,
    /// Session–topic pairs.
    pub subscriptions: u64,
    /// Distinct topics with a local session.
    pub topics: u64,
}

/// A revocation (contract §8 `POST /v1/revoke`): every token with this
/// `jti`, or every token of `sub` issued before `issued_before`, is refused
/// until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Revocation {
    /// The token id revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The user whose older tokens are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Tokens of `sub` whose `iat` is earlier (Unix seconds) are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<u64>,
    /// Unix seconds when the record may be forgotten (the covered tokens
    /// have expired by then).
    pub until: u64,
}

impl Revocation {
    /// Whether a token of `sub` with `jti` and `iat` is revoked. A token
    /// without `iat` counts as issued before any cutoff: it cannot show
    /// otherwise.
    pub fn covers(&self, sub: &str, jti: Option<&str>, iat: Option<u64>) -> bool {
        match (&self.jti, &self.sub, self.issued_before) {
            (Some(j), _, _) => jti == Some(j.as_str()),
            (None, Some(s), Some(before)) => s == sub && iat.is_none_or(|i| i < before),
            _ => false,
        }
    }
}

/// The node-side operations the admin API reaches through the broker.
pub trait NodeControl: Send + Sync + 'static {
    /// Current counts.
    fn stats(&self) -> NodeStats;
    /// Closes every session of `sub` with 4003; returns how many.
    fn disconnect(&self, sub: &str) -> usize;
    /// Every presence membership of this node's sessions, for a broker
    /// that must register them again (its node was presumed dead while
    /// they stayed open).
    fn members(&self) -> Vec<(Topic, Member)> {
        Vec::new()
    }
    /// The revocations stored for the cluster have all been applied with
    /// [`NodeControl::revoke`] (on start-up, before any token may be
    /// admitted; contract §10.8). Called again after later syncs.
    fn revocations_loaded(&self) {}

    /// Records `revocation` (handshakes and refreshes with a covered token
    /// are refused from now on) and closes the covered sessions with 4003;
    /// returns how many. Applying one twice changes nothing.
    fn revoke(&self, _revocation: &Revocation) -> usize {
        0
    }
}

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backing store is unreachable; retrying later may work.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request carried something the broker cannot use (a presence
    /// cursor it never gave).
    #[error("{0}")]
    Invalid(String),
    /// Anything else; a bug or corrupt data.
    #[error("broker error: {0}")]
    Internal(String),
}

impl BrokerError {
    /// The contract code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::Unavailable(_) => ErrorCode::Unavailable,
            BrokerError::Invalid(_) => ErrorCode::BadRequest,
            BrokerError::Internal(_) => ErrorCode::Internal,
        }
    }
}

type ReadyState = Option<Result<(), BrokerError>>;

/// Resolves when a topic subscription is live on the broker.
///
/// Cloneable, so every session that joins a topic while its first
/// subscription is still in flight waits on the same confirmation.
#[derive(Debug, Clone)]
pub struct Ready(Option<watch::Receiver<ReadyState>>);

/// The broker's half of a pending [`Ready`].
#[derive(Debug)]
pub struct ReadySender(watch::Sender<ReadyState>);

impl Ready {
    /// Already live.
    pub fn now() -> Ready {
        Ready(None)
    }

    /// A confirmation to be sent later.
    pub fn pending() -> (ReadySender, Ready) {
        let (tx, rx) = watch::channel(None);
        (ReadySender(tx), Ready(Some(rx)))
    }

    /// Waits for the confirmation.
    ///
    /// # Errors
    /// The broker's error, or `Unavailable` if it gave up without answering.
    pub async fn wait(self) -> Result<(), BrokerError> {
        let Some(mut rx) = self.0 else { return Ok(()) };
        match rx.wait_for(Option::is_some).await {
            Ok(state) => state.clone().unwrap_or(Ok(())),
            Err(_) => Err(BrokerError::Unavailable(
                "subscription abandoned".to_owned(),
            )),
        }
    }

    /// Whether the confirmation has arrived (successfully).
    pub fn is_live(&self) -> bool {
        match &self.0 {
            None => true,
            Some(rx) => matches!(*rx.borrow(), Some(Ok(()))),
        }
    }
}

impl ReadySender {
    /// Resolves every waiter.
    pub fn send(self, result: Result<(), BrokerError>) {
        // No receiver left means nobody waits any more: nothing to do.
        let _ = self.0.send(Some(result));
    }
}

/// The per-node broker. See the module documentation for the guarantees.
pub trait Broker: Send + Sync + 'static {
    /// Publishes a batch in order and returns each event's position.
    ///
    /// # Errors
    /// `Unavailable` when the backing store cannot accept events; then none of
    /// the batch was published, unless the error says otherwise.
    fn publish(
        &self,
        batch: Vec<Publication>,
    ) -> impl Future<Output = Result<Vec<Position>, BrokerError>> + Send;

    /// Starts delivering `topic` to the sink. Does not block.
    fn subscribe(&self, topic: &Topic) -> Ready;

    /// Stops delivering `topic`. Does not block.
    fn unsubscribe(&self, topic: &Topic);

    /// The topic's current position: its newest event's, or `<epoch>-0`
    /// when it has none, starting an epoch if it has none (contract
    /// §10.3). A position read after [`Broker::subscribe`]'s [`Ready`]
    /// resolved is one every later event follows.
    ///
    /// # Errors
    /// `Unavailable` when the backing store cannot be reached.
    fn position(&self, topic: &Topic)
    -> impl Future<Output = Result<Position, BrokerError>> + Send;

    /// Reads up to `limit` events after `since` (from the oldest kept without it).
    ///
    /// # Errors
    /// `Unavailable` when the backing store cannot be read.
    fn history(
        &self,
        topic: &Topic,
        since: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<HistoryPage, BrokerError>> + Send;

    /// Whether the broker can accept publishes right now.
    fn is_up(&self) -> bool;

    /// Registers the local node, so that stats and disconnects reach it.
    fn register_node(&self, node: Arc<dyn NodeControl>);

    /// Counts of every live node.
    ///
    /// # Errors
    /// `Unavailable` when the cluster cannot be asked.
    fn stats(&self) -> impl Future<Output = Result<Vec<NodeStats>, BrokerError>> + Send;

    /// Closes every session of `sub` on every node; returns how many closed.
    ///
    /// # Errors
    /// `Unavailable` when the request could not be sent.
    fn disconnect(&self, sub: &str) -> impl Future<Output = Result<usize, BrokerError>> + Send;

    /// Revokes tokens on every node (see [`Revocation`]) and keeps the
    /// record until it expires, so nodes started later refuse them too;
    /// returns how many sessions closed on the nodes that answered in time.
    ///
    /// # Errors
    /// `Unavailable` when the record could not be stored.
    fn revoke(
        &self,
        revocation: &Revocation,
    ) -> impl Future<Output = Result<usize, BrokerError>> + Send;

    /// Counts one more session of `sub` if the whole cluster holds fewer
    /// than `limit` (`limits.max_connections_per_user`); resolves to whether
    /// it did. Sessions of a node that died stop counting within
    /// `presence.timeout`.
    ///
    /// # Errors
    /// `Unavailable` when the count cannot be read or written.
    fn admit(
        &self,
        sub: &str,
        limit: u32,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send + 'static;

    /// Counts one session of `sub` fewer (one [`Broker::admit`] admitted).
    /// Does not block.
    fn release(&self, sub: &str);

    /// Makes `member` present on `topic`, announcing a `join` unless it
    /// already was. Takes its place in order with this node's other joins
    /// and leaves when called, not when awaited; the future resolves once
    /// the member is stored.
    ///
    /// # Errors
    /// `Unavailable` when the store cannot be reached. The join stays
    /// queued and is applied once it can be (a later leave still follows
    /// it), so a caller may go on as if it joined.
    fn join(
        &self,
        topic: &Topic,
        member: Member,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static;

    /// Removes `session` from `topic`'s presence, announcing a `leave` if it
    /// was present. Does not block; applied after every join asked before
    /// it, retried until the store takes it.
    fn leave(&self, topic: &Topic, session: &str);

    /// A page of at most `limit` members of `topic` after `cursor` (a
    /// previous page's `next_cursor`; `None` from the start), with the
    /// topic's counts. The cost is O(limit), whatever the topic's size
    /// (contract §10.5); `limit` 0 reads the counts only. Pages cover every
    /// member present throughout the walk; one that joined or left during
    /// it may be listed or not.
    ///
    /// # Errors
    /// `Unavailable` when the store cannot be read.
    fn members(
        &self,
        topic: &Topic,
        cursor: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<MemberPage, BrokerError>> + Send;

    /// Records that a session opened on this node: its `session.connected`
    /// when that type is selected, and what to send as its
    /// `session.disconnected` (`node_lost`) should the node die with it
    /// open. Takes its place in order with this node's joins and leaves;
    /// does not block. Only called when `webhooks.events` selects a
    /// session type.
    fn session_opened(&self, open: SessionOpen);

    /// Records that `session` closed: its `session.disconnected` with
    /// `data` (`None` when that type is not selected), exactly once per
    /// [`Broker::session_opened`], and never after its node's death was
    /// already reported for it. Ordered after every leave asked before it;
    /// does not block.
    fn session_closed(&self, session: &str, data: Option<String>);

    /// Takes or renews the right to send webhooks for `ttl` under the name
    /// `holder`; resolves to whether `holder` has it. At most one holder
    /// at a time: the queue is sent by one node, in order.
    ///
    /// # Errors
    /// `Unavailable` when the store cannot be reached.
    fn webhooks_lease(
        &self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send;

    /// The oldest `max` queued webhook events, in the order they were
    /// recorded, and the queue's length.
    ///
    /// # Errors
    /// `Unavailable` when the store cannot be read.
    fn webhooks_read(
        &self,
        max: usize,
    ) -> impl Future<Output = Result<(Vec<Queued>, u64), BrokerError>> + Send;

    /// Removes sent (or abandoned) events from the queue.
    ///
    /// # Errors
    /// `Unavailable` when the store cannot be written; the events are then
    /// sent again later (at least once).
    fn webhooks_done(&self, ids: &[String])
    -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// How many events of each type ([`crate::webhooks::Kind::index`]) this
    /// node dropped from the queue for its `webhooks.max_queue` cap since
    /// the last call.
    fn webhooks_dropped(&self) -> [u64; crate::webhooks::Kind::ALL.len()];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let p = Position {
            epoch: 0xdead_beef,
            seq: 42,
        };
        assert_eq!(p.to_string(), "deadbeef-42");
        assert_eq!(Position::parse("deadbeef-42"), Some(p));
        for bad in [
            "",
            "x",
            "deadbeef",
            "deadbeef-",
            "dead-1",
            "deadbeefx-1",
            "deadbeef-+1",
            "deadbeef-1-2",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn ready_resolves_every_waiter() {
        let (tx, ready) = Ready::pending();
        let other = ready.clone();
        assert!(!ready.is_live());
        tx.send(Ok(()));
        assert!(ready.is_live());
        ready.wait().await.unwrap();
        other.wait().await.unwrap();

        let (tx, ready) = Ready::pending();
        drop(tx);
        assert!(ready.wait().await.is_err());
    }
}
