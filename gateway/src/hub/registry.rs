//! The registry: topic → local subscribers, and the guarantee that each
//! gets every event of each topic once, in order (see the hub's module
//! documentation for the rules). It is the broker's [`EventSink`].

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use herald_core::metrics::DropReason;
use herald_core::{
    BrokerError, Change, Event, EventSink, HistoryPage, Member, Metrics, Position, Ready,
};
use herald_protocol::{CloseCode, Topic};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::inline::InlineWrites;
use super::pace::Pace;
use super::subscribers::Subscribers;
use super::{MAX_HELD, TOPIC_SHARDS, lock};
use crate::outbox::{Outbox, Pushed};
use crate::wire::codec::FrameCache;

/// What the next event means for a topic that last delivered `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// The next one (or the first seen): deliver it.
    Next,
    /// Already delivered: drop it.
    Duplicate,
    /// Events are missing: catch up from this position (`None`: from the
    /// start of history).
    Gap(Option<Position>),
}

pub(super) fn order(last: Option<Position>, p: Position) -> Order {
    match last {
        None => Order::Next,
        Some(l) if l.epoch == p.epoch => {
            if p.seq <= l.seq {
                Order::Duplicate
            } else if p.seq == l.seq + 1 {
                Order::Next
            } else {
                Order::Gap(Some(l))
            }
        }
        // A new epoch: its history started over.
        Some(_) if p.seq == 1 => Order::Next,
        // Past a new epoch's start: catch up from the last event of the old
        // one, so that the catch-up sees the epoch change and learns whether
        // the new epoch replaced the old one after a failover (then the old
        // epoch's tail may be lost, and the sessions are closed), which its
        // first event would have said had this node heard it.
        Some(l) => Order::Gap(Some(l)),
    }
}

/// Where a subscriber stands relative to its topic's live stream.
pub(super) enum Feed {
    /// It gets every live event.
    Live,
    /// It recovers from `since`: its live events are held back until the
    /// replay is merged.
    Holding(Vec<Event>),
    /// Its replay came from history up to this position, which the live
    /// stream may not have reached yet (history is written before the event
    /// reaches this node): live events up to it are already delivered and
    /// are skipped; the first one past it makes the subscriber live.
    Ahead(Position),
}

pub(super) struct Subscriber {
    pub(super) outbox: Arc<Outbox>,
    pub(super) feed: Feed,
    /// Whether it gets the topic's `join` and `leave` frames (the topic is
    /// tracked and its token's `presence` claim allows it).
    pub(super) presence: bool,
}

pub(super) struct TopicEntry {
    pub(super) subscribers: Subscribers<Subscriber>,
    /// Resolves once the topic is live on the broker and positioned;
    /// [`Ready::now`] from then on (its channel freed: see `positioned`).
    pub(super) ready: Ready,
    pub(super) generation: u64,
    /// The last event delivered; before any, the topic's position read
    /// once its subscription was live. `None` only until then.
    pub(super) last: Option<Position>,
    /// The broker asked for a resync before the position was known: catch
    /// up from the position as soon as it is.
    pub(super) resync_pending: bool,
    /// While catching up from history: live events held back, in order.
    pub(super) catching_up: Option<Vec<Event>>,
    /// When the topic's previous event was fanned out (see `pace`).
    pub(super) last_fan_out: Option<Instant>,
}

pub(super) type TopicShard = Mutex<HashMap<Topic, TopicEntry>>;

/// A catch-up the registry asks the hub's worker to run.
pub(super) struct CatchUp {
    pub(super) topic: Topic,
    pub(super) generation: u64,
    pub(super) since: Option<Position>,
}

/// Topic → local sessions. This is the broker's [`EventSink`].
pub struct Registry {
    shards: Box<[TopicShard]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    pub(super) generation: AtomicU64,
    pub(super) catch_up: OnceLock<mpsc::UnboundedSender<CatchUp>>,
    /// When events are written inline.
    pace: Pace,
}

impl Registry {
    /// An empty registry reporting into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Registry {
        Registry {
            shards: (0..TOPIC_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
            metrics,
            generation: AtomicU64::new(1),
            catch_up: OnceLock::new(),
            pace: Pace::new(),
        }
    }

    pub(super) fn shard(&self, topic: &Topic) -> &TopicShard {
        &self.shards[self.hasher.hash_one(topic.as_str()) as usize % TOPIC_SHARDS]
    }

    /// Every local subscription to a topic `tracked` for presence, as
    /// (topic, the session's outbox: its number, `sub` and `info`).
    pub fn memberships(&self, tracked: impl Fn(&Topic) -> bool) -> Vec<(Topic, Arc<Outbox>)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (topic, entry) in lock(shard).iter().filter(|(t, _)| tracked(t)) {
                out.extend(
                    entry
                        .subscribers
                        .values()
                        .map(|s| (topic.clone(), s.outbox.clone())),
                );
            }
        }
        out
    }

    /// Sets whether session `id` gets `topic`'s presence frames (after a
    /// token refresh changed its `presence` claim).
    pub fn set_presence(&self, topic: &Topic, id: u64, sees: bool) {
        if let Some(sub) = lock(self.shard(topic))
            .get_mut(topic)
            .and_then(|e| e.subscribers.get_mut(id))
        {
            sub.presence = sees;
        }
    }

    /// Local subscribers of `topic`.
    pub fn subscriber_count(&self, topic: &Topic) -> usize {
        lock(self.shard(topic))
            .get(topic)
            .map_or(0, |e| e.subscribers.len())
    }

    /// Delivers `events` (in order, each the next of its topic) to every
    /// subscriber of `entry`.
    fn fan_out(&self, entry: &mut TopicEntry, events: &[Event], received: Instant) {
        let mut overflowed = 0;
        let inline = self.pace.inline(
            received,
            &mut entry.last_fan_out,
            entry.subscribers.len() * events.len(),
        );
        for event in events {
            // Encoded once per node (and per compression window in use).
            let mut frames = FrameCache::new(&event.record);
            let mut writes = InlineWrites::new(received, &self.metrics);
            for sub in entry.subscribers.values_mut() {
                match &mut sub.feed {
                    Feed::Live => {}
                    Feed::Holding(held) => {
                        held.push(event.clone());
                        continue;
                    }
                    Feed::Ahead(p) if p.epoch == event.position.epoch => {
                        if event.position.seq <= p.seq {
                            continue;
                        }
                        sub.feed = Feed::Live;
                    }
                    Feed::Ahead(_) => sub.feed = Feed::Live,
                }
                let sub = &*sub;
                let frame = frames.for_connection(sub.outbox.encoding, sub.outbox.deflate);
                if inline {
                    writes.push(&sub.outbox, frame);
                } else if let Pushed::Overflow(n) =
                    sub.outbox.push_event(frame, received, &self.metrics, false)
                {
                    overflowed += n as u64;
                }
            }
            overflowed += writes.finish();
            entry.last = Some(event.position);
        }
        if overflowed > 0 {
            self.metrics.dropped(DropReason::SlowConsumer, overflowed);
        }
    }

    fn start_catch_up(
        &self,
        topic: &Topic,
        entry: &mut TopicEntry,
        since: Option<Position>,
        held: Vec<Event>,
    ) {
        entry.catching_up = Some(held);
        let request = CatchUp {
            topic: topic.clone(),
            generation: entry.generation,
            since,
        };
        let sent = self
            .catch_up
            .get()
            .is_some_and(|tx| tx.send(request).is_ok());
        if !sent {
            // No worker (a hub is not running): nothing can fill the gap.
            self.unrecoverable(topic, entry);
        }
    }

    /// A gap history cannot fill: close the topic's sessions so their clients
    /// recover with `since`, and carry on from the latest event held.
    fn unrecoverable(&self, topic: &Topic, entry: &mut TopicEntry) {
        let held = entry.catching_up.take().unwrap_or_default();
        let mut closed = 0;
        for sub in entry.subscribers.values() {
            if sub.outbox.close(CloseCode::Restart) {
                closed += 1;
            }
        }
        warn!(topic = %topic, sessions = closed, "events missed and gone from history: closing sessions with 1012 so they recover");
        if let Some(e) = held.last() {
            entry.last = Some(e.position);
        }
    }

    /// The topic's position is known (it was read once the subscription
    /// was live): events up to it are not this node's to deliver, and every
    /// later one is. Catches up at once if a resync came first.
    pub(super) fn positioned(&self, topic: &Topic, generation: u64, position: Position) {
        let mut shard = lock(self.shard(topic));
        let Some(entry) = shard.get_mut(topic).filter(|e| e.generation == generation) else {
            return;
        };
        if entry.last.is_none() {
            entry.last = Some(position);
        }
        // Positioned for good (`last` is never unset): a later subscriber
        // has nothing to wait for, and the confirmation's channel (a Tokio
        // `watch`: about 400 bytes a topic, kept for the topic's whole life
        // until now) is freed once the sessions already waiting on it have
        // woken.
        entry.ready = Ready::now();
        if std::mem::take(&mut entry.resync_pending) && entry.catching_up.is_none() {
            let since = entry.last;
            self.start_catch_up(topic, entry, since, Vec::new());
        }
    }

    /// Where a session subscribed to `topic` now stands: the last event
    /// the topic delivered, or its position before any (contract §10.3).
    pub(super) fn position_of(&self, topic: &Topic) -> Option<Position> {
        lock(self.shard(topic)).get(topic).and_then(|e| e.last)
    }

    /// Completes a catch-up with what history returned.
    pub(super) fn finish_catch_up(
        &self,
        request: &CatchUp,
        result: Result<HistoryPage, BrokerError>,
    ) {
        let received = Instant::now();
        let mut shard = lock(self.shard(&request.topic));
        let Some(entry) = shard
            .get_mut(&request.topic)
            .filter(|e| e.generation == request.generation)
        else {
            return;
        };
        if entry.catching_up.is_none() {
            return;
        }
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                warn!(topic = %request.topic, error = %e, "cannot read history to fill a gap");
                self.unrecoverable(&request.topic, entry);
                return;
            }
        };
        // Continuity must be proven, never assumed (contract §10.8): the
        // node missed a stretch of the stream, so a history that is gone
        // (Redis lost its data) or started a new epoch (lost data, or a
        // failover fence) may have lost events of the old epoch published
        // during that stretch, and only the same epoch, kept from `since`
        // on, proves nothing is missing. (Subscribed topics keep their
        // epoch while quiet: nodes keep it alive.)
        let complete = match (request.since, page.head) {
            (_, None) => false,
            (Some(since), Some(head)) if head.epoch != since.epoch => false,
            (Some(_), Some(_)) => page.recovered,
            (None, Some(_)) => page.events.first().is_none_or(|e| e.position.seq == 1),
        };
        if !complete {
            self.unrecoverable(&request.topic, entry);
            return;
        }
        let held = entry.catching_up.take().unwrap_or_default();
        for event in page.events.iter().chain(held.iter()) {
            match order(entry.last, event.position) {
                Order::Next => self.fan_out(entry, std::slice::from_ref(event), received),
                Order::Duplicate => {}
                Order::Gap(_) => {
                    entry.catching_up = Some(
                        held.iter()
                            .filter(|e| e.position >= event.position)
                            .cloned()
                            .collect(),
                    );
                    self.unrecoverable(&request.topic, entry);
                    return;
                }
            }
        }
        debug!(topic = %request.topic, replayed = page.events.len(), "caught up from history");
    }
}

impl EventSink for Registry {
    fn presence(&self, topic: &Topic, change: Change, member: &Member) {
        let received = Instant::now();
        let mut shard = lock(self.shard(topic));
        let Some(entry) = shard.get_mut(topic) else {
            return;
        };
        // Rendered once for the node; presence frames do not take part in
        // the topic's event order (they have no id), so a recovering
        // session gets them at once.
        let json = herald_core::broker::presence::frame(topic, change, member);
        let mut frames = FrameCache::new(&json);
        let mut overflowed = 0;
        // Presence frames come in bursts (a node's members at once): queued.
        let inline = false;
        for sub in entry.subscribers.values().filter(|s| s.presence) {
            let frame = frames.for_connection(sub.outbox.encoding, sub.outbox.deflate);
            if let Pushed::Overflow(n) =
                sub.outbox
                    .push_event(frame, received, &self.metrics, inline)
            {
                overflowed += n as u64;
            }
        }
        if overflowed > 0 {
            self.metrics.dropped(DropReason::SlowConsumer, overflowed);
        }
    }

    fn deliver(&self, event: &Event) {
        let received = Instant::now();
        let mut shard = lock(self.shard(&event.topic));
        let Some(entry) = shard.get_mut(&event.topic) else {
            return;
        };
        if let Some(held) = &mut entry.catching_up {
            if held.len() < MAX_HELD {
                held.push(event.clone());
            } else {
                self.unrecoverable(&event.topic, entry);
            }
            return;
        }
        match order(entry.last, event.position) {
            Order::Next => self.fan_out(entry, std::slice::from_ref(event), received),
            Order::Duplicate => {}
            Order::Gap(since) => {
                debug!(topic = %event.topic, ?since, at = ?event.position, "id jump: catching up");
                self.start_catch_up(&event.topic, entry, since, vec![event.clone()]);
            }
        }
    }

    fn history_replaced(&self, topic: &Topic, old: u32) {
        let mut shard = lock(self.shard(topic));
        let Some(entry) = shard.get_mut(topic) else {
            return;
        };
        // Sessions that followed the replaced epoch (or any: which one it
        // was cannot be told) may have missed acknowledged events. That
        // includes sessions positioned only by their own `since` (recovered
        // on a node that has had no live event of the topic yet): the fenced
        // epoch's first event must not reach them, or their next `since`
        // would be in the new epoch and the loss would go untold.
        if !entry.subscribers.is_empty() || entry.last.is_some() || entry.catching_up.is_some() {
            debug!(topic = %topic, replaced = old, "history replaced after a redis failover");
            self.unrecoverable(topic, entry);
        }
    }

    fn resync(&self, topic: &Topic) {
        let mut shard = lock(self.shard(topic));
        let Some(entry) = shard.get_mut(topic) else {
            return;
        };
        if entry.catching_up.is_some() {
            return;
        }
        if entry.last.is_none() {
            // Not positioned yet: catch up from the position once it is read.
            debug!(topic = %topic, "resync before the position is known: catching up once it is");
            entry.resync_pending = true;
            return;
        }
        let since = entry.last;
        self.start_catch_up(topic, entry, since, Vec::new());
    }
}
