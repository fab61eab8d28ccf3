//! The local registry: which sessions of this node want which topics, and
//! the guarantee that each gets every event of each topic once, in order.
//!
//! Topics are spread over sharded mutexes, so subscribes and deliveries on
//! different topics do not contend. Each topic entry counts its local
//! sessions; the broker is asked to subscribe when the first one arrives and to
//! unsubscribe when the last one leaves, and both calls are made while the
//! shard lock is held, so the broker sees them in the same order as the hub
//! changes its own state (they do not block; see the broker's contract).
//!
//! **Delivery.** An event's WebSocket frame is encoded once, then the same
//! bytes are pushed to the outbox of every local subscriber, under the shard
//! lock and without awaiting anything.
//!
//! **Order and gaps.** Each topic entry remembers the position of the last
//! event it delivered. The next event must be the next id (or the first of a
//! new epoch); an older one is a duplicate and dropped; a jump means events
//! were missed (the broker lost its connection, say). Then the entry holds
//! live events back, reads what it missed from history, and delivers both in
//! order. When history no longer has them, the entry's sessions are closed
//! with 1012, so clients reconnect with `since` and learn `recovered:false`: a
//! gap is never silent. The broker also asks for such a catch-up whenever it
//! had to subscribe a topic again ([`EventSink::resync`]).
//!
//! **Recovery.** A session subscribing with `since` is registered first, with
//! its live events held back; then history after `since` is read, and the
//! replay and the held events are merged without gap or duplicate. Sessions
//! that recover the same topic from the same `since` at about the same time
//! (a reconnect storm after a node died) share one history read.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use herald_core::metrics::DropReason;
use herald_core::{Broker, BrokerError, Event, EventSink, HistoryPage, Metrics, Position, Ready};
use herald_protocol::{CloseCode, Topic};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::outbox::{Outbox, Pushed};
use crate::ws::{codec, deflate};
use bytes::Bytes;

const TOPIC_SHARDS: usize = 64;
const SESSION_SHARDS: usize = 16;
/// Longest wait for the broker to confirm a new topic subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a history read.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a history read waits for others who want the same page.
const COALESCE_WINDOW: Duration = Duration::from_millis(5);
/// Live events an entry holds back while catching up before it gives up.
const MAX_HELD: usize = 100_000;

/// What the next event means for a topic that last delivered `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The next one (or the first seen): deliver it.
    Next,
    /// Already delivered: drop it.
    Duplicate,
    /// Events are missing: catch up from this position (`None`: from the
    /// start of history).
    Gap(Option<Position>),
}

fn order(last: Option<Position>, p: Position) -> Order {
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
        Some(_) => Order::Gap(Some(Position {
            epoch: p.epoch,
            seq: 0,
        })),
    }
}

/// Where a resync starts when no event arrived since the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Baseline {
    /// Not read yet (or the read failed).
    Unknown,
    /// The topic had no history when the subscription went live.
    Empty,
    /// The topic's head when the subscription went live.
    At(Position),
}

struct Subscriber {
    outbox: Arc<Outbox>,
    /// While the session recovers from `since`: its live events, held back.
    held: Option<Vec<Event>>,
}

struct TopicEntry {
    subscribers: HashMap<u64, Subscriber>,
    ready: Ready,
    generation: u64,
    last: Option<Position>,
    baseline: Baseline,
    /// While catching up from history: live events held back, in order.
    catching_up: Option<Vec<Event>>,
}

type TopicShard = Mutex<HashMap<Topic, TopicEntry>>;
type SessionShard = Mutex<HashMap<u64, Arc<Outbox>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here leave entries consistent at every step, so a
    // poisoned lock still guards usable data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A catch-up the registry asks the hub's worker to run.
struct CatchUp {
    topic: Topic,
    generation: u64,
    since: Option<Position>,
}

/// Topic → local sessions. This is the broker's [`EventSink`].
pub struct Registry {
    shards: Box<[TopicShard]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    generation: AtomicU64,
    catch_up: OnceLock<mpsc::UnboundedSender<CatchUp>>,
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
        }
    }

    fn shard(&self, topic: &Topic) -> &TopicShard {
        &self.shards[self.hasher.hash_one(topic.as_str()) as usize % TOPIC_SHARDS]
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
        for event in events {
            // Encoded once per node: plain, and compressed per window size
            // in use (almost always just one).
            let mut plain: Option<Bytes> = None;
            let mut packed: Vec<(u8, Bytes)> = Vec::new();
            for sub in entry.subscribers.values_mut() {
                if let Some(held) = &mut sub.held {
                    held.push(event.clone());
                    continue;
                }
                let frame = match sub.outbox.deflate {
                    Some(d) if event.json.len() >= deflate::COMPRESS_MIN => {
                        match packed.iter().find(|(bits, _)| *bits == d.window_bits) {
                            Some((_, f)) => f,
                            None => {
                                let f = deflate::frame(codec::OP_TEXT, &event.json, d.window_bits);
                                packed.push((d.window_bits, f));
                                &packed[packed.len() - 1].1
                            }
                        }
                    }
                    _ => plain.get_or_insert_with(|| codec::text_frame(&event.json)),
                };
                if let Pushed::Overflow(n) = sub.outbox.push_event(frame, received) {
                    overflowed += n as u64;
                }
            }
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

    /// Completes a catch-up with what history returned.
    fn finish_catch_up(&self, request: &CatchUp, result: Result<HistoryPage, BrokerError>) {
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
        let from_start =
            |page: &HistoryPage| page.events.first().is_none_or(|e| e.position.seq == 1);
        let complete = match (request.since, page.head) {
            // No history at all: it was lost (Redis restarted empty) and
            // nothing was published since, so nothing is missing from it.
            (_, None) => true,
            // A new epoch: complete if it is still kept from its first event.
            (Some(since), Some(head)) if head.epoch != since.epoch => from_start(&page),
            (Some(_), Some(_)) => page.recovered,
            (None, Some(_)) => from_start(&page),
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

    fn resync(&self, topic: &Topic) {
        let mut shard = lock(self.shard(topic));
        let Some(entry) = shard.get_mut(topic) else {
            return;
        };
        if entry.catching_up.is_some() {
            return;
        }
        let since = match (entry.last, entry.baseline) {
            (Some(last), _) => Some(last),
            (None, Baseline::At(p)) => Some(p),
            (None, Baseline::Empty) => None,
            (None, Baseline::Unknown) => {
                debug!(topic = %topic, "resync before the baseline is known: nothing to catch up from");
                return;
            }
        };
        self.start_catch_up(topic, entry, since, Vec::new());
    }
}

type SharedRead = watch::Receiver<Option<Result<HistoryPage, BrokerError>>>;

/// The registry plus the broker it keeps in step, plus the session index.
pub struct Hub<B> {
    registry: Arc<Registry>,
    broker: Arc<B>,
    sessions: Box<[SessionShard]>,
    metrics: Arc<Metrics>,
    /// History reads still open for others to join, by (topic, since).
    reads: Arc<Mutex<HashMap<(Topic, String), SharedRead>>>,
    history_limit: usize,
}

impl<B: Broker> Hub<B> {
    /// A hub over `registry` (which must be the sink `broker` delivers to).
    /// Recovery reads at most `history_limit` events (`history.size`).
    ///
    /// Must be called inside a Tokio runtime: it starts the catch-up worker.
    pub fn new(
        registry: Arc<Registry>,
        broker: Arc<B>,
        metrics: Arc<Metrics>,
        history_limit: usize,
    ) -> Hub<B> {
        let reads = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        if registry.catch_up.set(tx).is_ok() {
            tokio::spawn(catch_up_worker(
                rx,
                Arc::downgrade(&registry),
                broker.clone(),
                reads.clone(),
                metrics.clone(),
                history_limit,
            ));
        }
        Hub {
            registry,
            broker,
            sessions: (0..SESSION_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            metrics,
            reads,
            history_limit: history_limit.max(1),
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn session_shard(&self, id: u64) -> &SessionShard {
        &self.sessions[id as usize % SESSION_SHARDS]
    }

    /// Records a new session, so disconnects and drains can reach it.
    pub fn add_session(&self, outbox: &Arc<Outbox>) {
        lock(self.session_shard(outbox.id)).insert(outbox.id, outbox.clone());
        self.metrics.connections.add(1);
    }

    /// Forgets a session and all its subscriptions.
    pub fn remove_session<'a>(
        &self,
        outbox: &Arc<Outbox>,
        topics: impl IntoIterator<Item = &'a Topic>,
    ) {
        self.unsubscribe(outbox, topics);
        if lock(self.session_shard(outbox.id))
            .remove(&outbox.id)
            .is_some()
        {
            self.metrics.connections.add(-1);
        }
    }

    /// Registers the session on `topic` (holding its live events back when
    /// `hold`) and returns what to wait for before the subscription is live.
    fn register(&self, outbox: &Arc<Outbox>, topic: &Topic, hold: bool) -> (Ready, bool) {
        let mut shard = lock(self.registry.shard(topic));
        let mut created = false;
        let entry = shard.entry(topic.clone()).or_insert_with(|| {
            created = true;
            self.metrics.topics.add(1);
            TopicEntry {
                subscribers: HashMap::new(),
                ready: self.broker.subscribe(topic),
                generation: self.registry.generation.fetch_add(1, Relaxed),
                last: None,
                baseline: Baseline::Unknown,
                catching_up: None,
            }
        });
        let held = hold.then(Vec::new);
        match entry.subscribers.get_mut(&outbox.id) {
            Some(sub) => sub.held = held,
            None => {
                entry.subscribers.insert(
                    outbox.id,
                    Subscriber {
                        outbox: outbox.clone(),
                        held,
                    },
                );
                self.metrics.subscriptions.add(1);
            }
        }
        (entry.ready.clone(), created)
    }

    /// Waits for a subscription to go live; a topic just created also gets its
    /// baseline read, in the background.
    async fn confirm(&self, topic: &Topic, ready: Ready, created: bool) -> Result<(), BrokerError> {
        if !ready.is_live() {
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ready.wait()).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(BrokerError::Unavailable(
                        "the broker did not confirm the subscription in time".to_owned(),
                    ));
                }
            }
        }
        if created {
            self.read_baseline(topic);
        }
        Ok(())
    }

    fn read_baseline(&self, topic: &Topic) {
        let registry = Arc::downgrade(&self.registry);
        let broker = self.broker.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let page = tokio::time::timeout(HISTORY_TIMEOUT, broker.history(&topic, None, 0)).await;
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let Ok(Ok(page)) = page else { return };
            let mut shard = lock(registry.shard(&topic));
            if let Some(entry) = shard.get_mut(&topic) {
                if entry.baseline == Baseline::Unknown {
                    entry.baseline = page.head.map_or(Baseline::Empty, Baseline::At);
                }
            }
        });
    }

    /// Adds the session to every topic in `topics` (none of which it already
    /// has) and waits until each is live on the broker.
    ///
    /// # Errors
    /// The broker's error; the session is then subscribed to none of them.
    pub async fn subscribe(
        &self,
        outbox: &Arc<Outbox>,
        topics: &[Topic],
    ) -> Result<(), BrokerError> {
        let waits: Vec<(Ready, bool)> = topics
            .iter()
            .map(|t| self.register(outbox, t, false))
            .collect();
        for (topic, (ready, created)) in topics.iter().zip(waits) {
            if let Err(e) = self.confirm(topic, ready, created).await {
                self.unsubscribe(outbox, topics);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Subscribes the session to `topic` (or keeps it subscribed) and replays
    /// the events after `since` before any live one; returns whether `since`
    /// could be recovered. When it could not, nothing is replayed and live
    /// delivery starts.
    ///
    /// # Errors
    /// The broker's error when the subscription cannot go live; a session that
    /// was not subscribed before is then not subscribed.
    pub async fn subscribe_from(
        &self,
        outbox: &Arc<Outbox>,
        topic: &Topic,
        since: &str,
        already: bool,
    ) -> Result<bool, BrokerError> {
        let (ready, created) = self.register(outbox, topic, true);
        if let Err(e) = self.confirm(topic, ready, created).await {
            if already {
                self.release(outbox, topic);
            } else {
                self.unsubscribe(outbox, std::slice::from_ref(topic));
            }
            return Err(e);
        }
        let page = self.history(topic, since).await;
        let recovered = self.merge(outbox, topic, since, page);
        Ok(recovered)
    }

    /// Stops holding the session's live events of `topic`, delivering what
    /// was held.
    fn release(&self, outbox: &Arc<Outbox>, topic: &Topic) {
        self.merge(
            outbox,
            topic,
            "",
            Err(BrokerError::Unavailable(String::new())),
        );
    }

    /// Replays `page` to the session, then its held live events past the
    /// replay, then lets live events through; all under the topic's lock.
    fn merge(
        &self,
        outbox: &Arc<Outbox>,
        topic: &Topic,
        since: &str,
        page: Result<HistoryPage, BrokerError>,
    ) -> bool {
        let mut shard = lock(self.registry.shard(topic));
        let Some(sub) = shard
            .get_mut(topic)
            .and_then(|e| e.subscribers.get_mut(&outbox.id))
        else {
            return false;
        };
        let held = sub.held.take().unwrap_or_default();
        let room = outbox.room();
        let (recovered, replay) = match page {
            // A replay larger than the client can be sent at once is refused
            // rather than queued without bound: the client reloads instead.
            Ok(page) if page.recovered && page.events.len() > room / 2 => {
                debug!(topic = %topic, events = page.events.len(), "replay too large to queue: not recovered");
                (false, Vec::new())
            }
            Ok(page) if page.recovered => (true, page.events),
            Ok(_) => (false, Vec::new()),
            Err(e) => {
                if !since.is_empty() {
                    debug!(topic = %topic, error = %e, "history unavailable: not recovered");
                }
                (false, Vec::new())
            }
        };
        let mut last = if recovered {
            Position::parse(since)
        } else {
            None
        };
        let now = Instant::now();
        for event in &replay {
            let _ = outbox.push_replay(outbox.text_frame(&event.json), now);
            last = Some(event.position);
        }
        for event in &held {
            let seen = last
                .is_some_and(|l| l.epoch == event.position.epoch && event.position.seq <= l.seq);
            if !seen {
                if let Pushed::Overflow(n) = outbox.push_event(&outbox.text_frame(&event.json), now)
                {
                    self.metrics.dropped(DropReason::SlowConsumer, n as u64);
                }
            }
        }
        recovered
    }

    /// Reads history after `since`, sharing the read with every session
    /// that asks for the same page within a few milliseconds. A session only
    /// joins a read that has not started, so the page always covers what
    /// happened before the session's subscription went live.
    async fn history(&self, topic: &Topic, since: &str) -> Result<HistoryPage, BrokerError> {
        shared_history(
            &self.reads,
            &*self.broker,
            &self.metrics,
            topic,
            Some(since),
            self.history_limit,
        )
        .await
    }

    /// Removes the session from `topics`; topics it did not have are ignored.
    pub fn unsubscribe<'a>(
        &self,
        outbox: &Arc<Outbox>,
        topics: impl IntoIterator<Item = &'a Topic>,
    ) {
        for topic in topics {
            let mut shard = lock(self.registry.shard(topic));
            let Some(entry) = shard.get_mut(topic) else {
                continue;
            };
            if entry.subscribers.remove(&outbox.id).is_some() {
                self.metrics.subscriptions.add(-1);
            }
            if entry.subscribers.is_empty() {
                shard.remove(topic);
                self.broker.unsubscribe(topic);
                self.metrics.topics.add(-1);
            }
        }
    }

    /// Asks every session of `sub` to close with 4003; returns how many.
    pub fn disconnect(&self, sub: &str) -> usize {
        let mut closed = 0;
        for shard in self.sessions.iter() {
            for outbox in lock(shard).values() {
                if &*outbox.sub == sub && outbox.close(CloseCode::Disconnected) {
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Every open session, for draining.
    pub fn all_sessions(&self) -> Vec<Arc<Outbox>> {
        self.sessions
            .iter()
            .flat_map(|shard| lock(shard).values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

async fn shared_history<B: Broker>(
    reads: &Mutex<HashMap<(Topic, String), SharedRead>>,
    broker: &B,
    metrics: &Metrics,
    topic: &Topic,
    since: Option<&str>,
    limit: usize,
) -> Result<HistoryPage, BrokerError> {
    let key = (topic.clone(), since.unwrap_or("").to_owned());
    let joined = lock(reads).get(&key).cloned();
    if let Some(mut rx) = joined {
        if let Ok(result) = rx.wait_for(Option::is_some).await {
            if let Some(result) = result.clone() {
                return result;
            }
        }
        // The reader went away: read alone.
    }
    let (tx, rx) = watch::channel(None);
    lock(reads).insert(key.clone(), rx);
    tokio::time::sleep(COALESCE_WINDOW).await;
    // Closed to newcomers from here on: the read starts now.
    lock(reads).remove(&key);
    metrics.history_reads.increment(1);
    let result =
        match tokio::time::timeout(HISTORY_TIMEOUT, broker.history(topic, since, limit)).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable(
                "history read timed out".to_owned(),
            )),
        };
    let _ = tx.send(Some(result.clone()));
    result
}

async fn catch_up_worker<B: Broker>(
    mut rx: mpsc::UnboundedReceiver<CatchUp>,
    registry: std::sync::Weak<Registry>,
    broker: Arc<B>,
    reads: Arc<Mutex<HashMap<(Topic, String), SharedRead>>>,
    metrics: Arc<Metrics>,
    limit: usize,
) {
    while let Some(request) = rx.recv().await {
        let registry = registry.clone();
        let broker = broker.clone();
        let reads = reads.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let since = request.since.map(|p| p.to_string());
            let result = shared_history(
                &reads,
                &*broker,
                &metrics,
                &request.topic,
                since.as_deref(),
                limit.max(1),
            )
            .await;
            if let Some(registry) = registry.upgrade() {
                registry.finish_catch_up(&request, result);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::config::HistoryConfig;
    use herald_core::{MemoryBroker, Publication};
    use serde_json::value::RawValue;
    use std::collections::VecDeque;

    fn setup() -> (Hub<MemoryBroker>, Arc<MemoryBroker>, Arc<Metrics>) {
        let metrics = Metrics::new("n1");
        let registry = Arc::new(Registry::new(metrics.clone()));
        let broker = MemoryBroker::new(
            HistoryConfig {
                size: 10,
                ttl: Duration::from_secs(60),
            },
            registry.clone(),
        );
        (
            Hub::new(registry, broker.clone(), metrics.clone(), 10),
            broker,
            metrics,
        )
    }

    fn publication(topic: &Topic, n: u64) -> Publication {
        Publication {
            topic: topic.clone(),
            event: None,
            data: RawValue::from_string(n.to_string()).unwrap(),
        }
    }

    fn drain(outbox: &Outbox) -> Vec<serde_json::Value> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut items = VecDeque::new();
        outbox.take(&mut items, &mut cx);
        items
            .iter()
            .map(|i| {
                let header = if i.frame[1] & 0x7f == 126 { 4 } else { 2 };
                serde_json::from_slice(&i.frame[header..]).unwrap()
            })
            .collect()
    }

    fn data(frames: &[serde_json::Value]) -> Vec<u64> {
        frames.iter().map(|f| f["data"].as_u64().unwrap()).collect()
    }

    fn event(topic: &Topic, epoch: u32, seq: u64) -> Event {
        let p = publication(topic, seq);
        Event::render(&p, Position { epoch, seq }, 0)
    }

    #[test]
    fn order_rules() {
        let l = Some(Position { epoch: 7, seq: 5 });
        assert_eq!(order(None, Position { epoch: 7, seq: 9 }), Order::Next);
        assert_eq!(order(l, Position { epoch: 7, seq: 6 }), Order::Next);
        assert_eq!(order(l, Position { epoch: 7, seq: 5 }), Order::Duplicate);
        assert_eq!(order(l, Position { epoch: 7, seq: 2 }), Order::Duplicate);
        assert_eq!(order(l, Position { epoch: 7, seq: 8 }), Order::Gap(l));
        assert_eq!(order(l, Position { epoch: 8, seq: 1 }), Order::Next);
        assert_eq!(
            order(l, Position { epoch: 8, seq: 3 }),
            Order::Gap(Some(Position { epoch: 8, seq: 0 }))
        );
    }

    #[tokio::test]
    async fn counts_follow_subscriptions() {
        let (hub, broker, metrics) = setup();
        let a = Arc::new(Outbox::new(1, Arc::from("alice"), 100));
        let b = Arc::new(Outbox::new(2, Arc::from("bob"), 100));
        hub.add_session(&a);
        hub.add_session(&b);
        let news = Topic::new("news").unwrap();
        let x = Topic::new("x").unwrap();
        hub.subscribe(&a, &[news.clone(), x.clone()]).await.unwrap();
        hub.subscribe(&b, std::slice::from_ref(&news))
            .await
            .unwrap();
        assert_eq!(metrics.topics.get(), 2);
        assert_eq!(metrics.subscriptions.get(), 3);

        broker
            .publish(vec![publication(&news, 1), publication(&x, 2)])
            .await
            .unwrap();
        assert_eq!(drain(&a).len(), 2);
        assert_eq!(drain(&b).len(), 1);

        hub.unsubscribe(&a, [&news]);
        broker.publish(vec![publication(&news, 3)]).await.unwrap();
        assert!(drain(&a).is_empty());
        assert_eq!(drain(&b).len(), 1);

        hub.remove_session(&b, [&news]);
        assert_eq!(hub.registry().subscriber_count(&news), 0);
        assert_eq!(metrics.topics.get(), 1);
        assert_eq!(metrics.connections.get(), 1);
        assert_eq!(hub.disconnect("alice"), 1);
        assert_eq!(hub.disconnect("alice"), 0, "already closing");
    }

    #[tokio::test]
    async fn recovery_replays_then_goes_live_without_gap_or_duplicate() {
        let (hub, broker, _) = setup();
        let t = Topic::new("t").unwrap();
        let ids = broker
            .publish((1..=5).map(|n| publication(&t, n)).collect())
            .await
            .unwrap();
        let a = Arc::new(Outbox::new(1, Arc::from("a"), 100));
        let recovered = hub
            .subscribe_from(&a, &t, &ids[1].to_string(), false)
            .await
            .unwrap();
        assert!(recovered);
        broker.publish(vec![publication(&t, 6)]).await.unwrap();
        assert_eq!(data(&drain(&a)), vec![3, 4, 5, 6]);

        // Too old for a 10-event window: not recovered, nothing replayed.
        broker
            .publish((7..=20).map(|n| publication(&t, n)).collect())
            .await
            .unwrap();
        let b = Arc::new(Outbox::new(2, Arc::from("b"), 100));
        assert!(
            !hub.subscribe_from(&b, &t, &ids[0].to_string(), false)
                .await
                .unwrap()
        );
        broker.publish(vec![publication(&t, 21)]).await.unwrap();
        assert_eq!(data(&drain(&b)), vec![21]);
    }

    #[tokio::test]
    async fn gaps_are_caught_up_from_history_in_order() {
        let (hub, broker, _) = setup();
        let t = Topic::new("t").unwrap();
        let a = Arc::new(Outbox::new(1, Arc::from("a"), 100));
        hub.subscribe(&a, std::slice::from_ref(&t)).await.unwrap();
        let ids = broker
            .publish((1..=3).map(|n| publication(&t, n)).collect())
            .await
            .unwrap();
        assert_eq!(data(&drain(&a)), vec![1, 2, 3]);
        // Events 4 and 5 reach history but not this node (as if its broker
        // connection dropped); event 6 then arrives live.
        let epoch = ids[0].epoch;
        let registry = hub.registry();
        broker
            .publish(vec![publication(&t, 4), publication(&t, 5)])
            .await
            .unwrap();
        drain(&a);
        // Pretend the node only saw up to 3.
        lock(registry.shard(&t)).get_mut(&t).unwrap().last = Some(ids[2]);
        registry.deliver(&event(&t, epoch, 6));
        // 6 is not in history, but 4 and 5 are: the catch-up delivers 4, 5,
        // then the held 6.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 3 && Instant::now() < deadline {
            got.extend(data(&drain(&a)));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(got, vec![4, 5, 6]);
        // A duplicate is dropped.
        registry.deliver(&event(&t, epoch, 5));
        assert!(drain(&a).is_empty());
    }

    #[tokio::test]
    async fn a_gap_history_cannot_fill_closes_with_1012() {
        let (hub, broker, _) = setup();
        let t = Topic::new("t").unwrap();
        let a = Arc::new(Outbox::new(1, Arc::from("a"), 100));
        hub.subscribe(&a, std::slice::from_ref(&t)).await.unwrap();
        let ids = broker
            .publish((1..=30).map(|n| publication(&t, n)).collect())
            .await
            .unwrap();
        drain(&a);
        lock(hub.registry().shard(&t)).get_mut(&t).unwrap().last = Some(ids[0]);
        hub.registry().deliver(&event(&t, ids[0].epoch, 31));
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.close_requested().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(a.close_requested(), Some(CloseCode::Restart));
    }
}
