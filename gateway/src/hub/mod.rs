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
//! share one history read, and every history read of the node (replays and
//! gap catch-ups alike) waits for one of a few turns, so a reconnect storm
//! cannot flood the broker.
//!
//! Files: [`registry`] (topic entries, ordering, fan-out, gap catch-up),
//! [`recovery`] (replays with `since`, shared history reads), [`pace`]
//! (when a fan-out writes to sockets inline) and [`inline`] (the inline
//! writes themselves, and why they cannot deadlock).

pub mod beat;
mod inline;
mod pace;
mod recovery;
mod registry;
mod subscribers;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing::Instrument;

use futures_util::FutureExt;
use herald_core::broker::ReadySender;
use herald_core::{Broker, BrokerError, Metrics, Position, Ready};
use herald_protocol::{CloseCode, Topic};
use tokio::sync::{Semaphore, mpsc};

use crate::outbox::Outbox;
pub use recovery::InReply;
use recovery::SharedRead;
pub use registry::Registry;
use registry::{Feed, Subscriber, TopicEntry};
use subscribers::Subscribers;

const TOPIC_SHARDS: usize = 64;
const SESSION_SHARDS: usize = 16;
/// Longest wait for the broker to confirm a new topic subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a session's history read (a replay) may take, retries and
/// waiting for a turn included.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a gap's catch-up keeps retrying its history read before it
/// closes the topic's sessions with 1012.
const CATCH_UP_PATIENCE: Duration = Duration::from_secs(15);
/// History reads a node runs at once (its command pool holds 16
/// connections); more wait for a turn.
pub const HISTORY_READS: usize = 8;
/// How long a history read waits for others who want the same page.
const COALESCE_WINDOW: Duration = Duration::from_millis(5);
/// Live events an entry holds back while catching up before it gives up.
const MAX_HELD: usize = 100_000;

type SessionShard = Mutex<HashMap<u64, Arc<Outbox>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here leave entries consistent at every step, so a
    // poisoned lock still guards usable data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a recovery did (see [`Hub::recover`]).
#[derive(Debug, Clone, Copy)]
pub struct Recovered {
    /// Whether everything after `since` was replayed.
    pub recovered: bool,
    /// Where the session stands: the last event it was given, or the
    /// topic's.
    pub position: Position,
    /// Events replayed.
    pub replayed: usize,
}

/// The registry plus the broker it keeps in step, plus the session index.
pub struct Hub<B> {
    registry: Arc<Registry>,
    broker: Arc<B>,
    sessions: Box<[SessionShard]>,
    metrics: Arc<Metrics>,
    /// History reads still open for others to join, by (topic, since,
    /// limit).
    reads: Arc<Mutex<HashMap<recovery::ReadKey, SharedRead>>>,
    /// Turns for history reads ([`HISTORY_READS`] at once).
    turns: Arc<Semaphore>,
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
        let turns = Arc::new(Semaphore::new(HISTORY_READS));
        let (tx, rx) = mpsc::unbounded_channel();
        if registry.catch_up.set(tx).is_ok() {
            tokio::spawn(
                recovery::catch_up_worker(
                    rx,
                    Arc::downgrade(&registry),
                    broker.clone(),
                    (reads.clone(), turns.clone()),
                    metrics.clone(),
                    history_limit,
                )
                .instrument(tracing::info_span!("catch_up")),
            );
        }
        Hub {
            registry,
            broker,
            sessions: (0..SESSION_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            metrics,
            reads,
            turns,
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
        self.metrics
            .protocol_session(outbox.encoding.protocol_label(), 1);
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
            self.metrics
                .protocol_session(outbox.encoding.protocol_label(), -1);
        }
    }

    /// Registers the session on `topic` (holding its live events back when
    /// `hold`; with presence frames when `sees`) and returns what to wait
    /// for before the subscription is live and positioned. A topic new to
    /// this node is subscribed on the broker and its position read once
    /// that is live (in the background, so every session that joins
    /// meanwhile waits on the same read, whichever of them goes away).
    fn register(&self, outbox: &Arc<Outbox>, topic: &Topic, hold: bool, sees: bool) -> Ready {
        let mut shard = lock(self.registry.shard(topic));
        let mut created = None;
        let entry = shard.entry(topic.clone()).or_insert_with(|| {
            self.metrics.topics.add(1);
            let (tx, positioned) = Ready::pending();
            let generation = self.registry.generation.fetch_add(1, Relaxed);
            created = Some((self.broker.subscribe(topic), tx, generation));
            TopicEntry {
                subscribers: Subscribers::new(),
                ready: positioned,
                generation,
                last: None,
                resync_pending: false,
                catching_up: None,
                last_fan_out: None,
            }
        });
        let feed = if hold {
            Feed::Holding(Vec::new())
        } else {
            Feed::Live
        };
        match entry.subscribers.get_mut(outbox.id) {
            // Already subscribed and recovering again: hold from now on.
            Some(sub) if hold => sub.feed = feed,
            Some(_) => {}
            None => {
                entry.subscribers.insert(
                    outbox.id,
                    Subscriber {
                        outbox: outbox.clone(),
                        feed,
                        presence: sees,
                    },
                );
                self.metrics.subscriptions.add(1);
            }
        }
        let ready = entry.ready.clone();
        drop(shard);
        if let Some((live, tx, generation)) = created {
            self.position(topic, live, tx, generation);
        }
        ready
    }

    /// Reads a new topic's position once its subscription is `live`
    /// (retried until [`SUBSCRIBE_TIMEOUT`]), records it and resolves `tx`.
    /// Done in place when the broker answers at once (the memory broker),
    /// in a task otherwise. The read is made outside the topic's lock: the
    /// memory broker's publish holds its own lock while it delivers to the
    /// registry, so the registry must never wait for it.
    fn position(&self, topic: &Topic, live: Ready, tx: ReadySender, generation: u64) {
        if live.is_live() {
            if let Some(result) = self.broker.position(topic).now_or_never() {
                if let Ok(p) = &result {
                    self.registry.positioned(topic, generation, *p);
                }
                tx.send(result.map(|_| ()));
                return;
            }
        }
        let registry = Arc::downgrade(&self.registry);
        let broker = self.broker.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
            let result = match tokio::time::timeout_at(deadline, live.wait()).await {
                Ok(Ok(())) => recovery::retried(deadline, || broker.position(&topic)).await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(BrokerError::Unavailable(
                    "the broker did not confirm the subscription in time".to_owned(),
                )),
            };
            if let (Ok(p), Some(registry)) = (&result, registry.upgrade()) {
                registry.positioned(&topic, generation, *p);
            }
            tx.send(result.map(|_| ()));
        });
    }

    /// Waits until a subscription is live and positioned; returns where
    /// the session stands (see [`Registry::position_of`]).
    async fn confirm(&self, topic: &Topic, ready: Ready) -> Result<Position, BrokerError> {
        if !ready.is_live() {
            // The positioning task gives up by itself at SUBSCRIBE_TIMEOUT.
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT * 2, ready.wait()).await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(BrokerError::Unavailable(
                        "the broker did not confirm the subscription in time".to_owned(),
                    ));
                }
            }
        }
        self.registry
            .position_of(topic)
            .ok_or_else(|| BrokerError::Unavailable("the topic's position is unknown".to_owned()))
    }

    /// Adds the session to every topic in `topics` (none of which it already
    /// has), with presence frames on those `sees` allows, waits until each
    /// is live on the broker, and returns where the session stands on each
    /// (contract §10.3).
    ///
    /// # Errors
    /// The broker's error; the session is then subscribed to none of them.
    pub async fn subscribe(
        &self,
        outbox: &Arc<Outbox>,
        topics: &[Topic],
        sees: impl Fn(&Topic) -> bool,
    ) -> Result<Vec<Position>, BrokerError> {
        let waits: Vec<Ready> = topics
            .iter()
            .map(|t| self.register(outbox, t, false, sees(t)))
            .collect();
        let mut positions = Vec::with_capacity(topics.len());
        for (topic, ready) in topics.iter().zip(waits) {
            match self.confirm(topic, ready).await {
                Ok(p) => positions.push(p),
                Err(e) => {
                    self.unsubscribe(outbox, topics);
                    return Err(e);
                }
            }
        }
        Ok(positions)
    }

    /// Subscribes the session to `topic` (or keeps it subscribed) and replays
    /// the events after `since` before any live one; returns whether `since`
    /// could be recovered, and where the session then stands. When it could
    /// not, nothing is replayed and live delivery starts. [`Hub::hold`]
    /// then [`Hub::recover`].
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
        sees: bool,
    ) -> Result<(bool, Position), BrokerError> {
        self.hold(outbox, topic, already, sees).await?;
        let r = self.recover(outbox, topic, since, usize::MAX).await;
        Ok((r.recovered, r.position))
    }

    /// The first half of a recovery: subscribes the session to `topic` (or
    /// keeps it subscribed, `already`) with its live events of the topic
    /// held back, and waits until the topic is live on the broker. Nothing
    /// of the topic reaches the session until [`Hub::recover`] or
    /// [`Hub::release`], so a request that fails on another topic can be
    /// undone before the client has seen anything it asked for.
    ///
    /// # Errors
    /// The broker's error; the session is then as before (not subscribed,
    /// or subscribed and released).
    pub async fn hold(
        &self,
        outbox: &Arc<Outbox>,
        topic: &Topic,
        already: bool,
        sees: bool,
    ) -> Result<(), BrokerError> {
        let ready = self.register(outbox, topic, true, sees);
        if let Err(e) = self.confirm(topic, ready).await {
            if already {
                self.release(outbox, topic);
            } else {
                self.unsubscribe(outbox, std::slice::from_ref(topic));
            }
            return Err(e);
        }
        Ok(())
    }

    /// The second half: replays history after `since` to a session
    /// [`Hub::hold`] holds, then its held events, then lets live events
    /// through; returns whether `since` could be recovered, where the
    /// session then stands, and how many events were replayed. The replay
    /// takes at most `allowed` events (and half the room left in the
    /// session's queue): a longer one is not read, and the topic answers
    /// `recovered:false` (contract §10.8).
    pub async fn recover(
        &self,
        outbox: &Arc<Outbox>,
        topic: &Topic,
        since: &str,
        allowed: usize,
    ) -> Recovered {
        let allowed = allowed.min(outbox.room() / 2);
        let page = self.history(topic, since, allowed + 1).await;
        self.merge(outbox, topic, since, page, allowed, None)
    }

    /// Where a session subscribed to `topic` stands: the last event the
    /// topic delivered, or its position before any.
    pub fn position_of(&self, topic: &Topic) -> Option<Position> {
        self.registry.position_of(topic)
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
            if entry.subscribers.remove(outbox.id).is_some() {
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

    /// Closes every session whose token `revocation` covers with 4003;
    /// returns how many.
    pub fn revoke(&self, revocation: &herald_core::Revocation) -> usize {
        let mut closed = 0;
        for shard in self.sessions.iter() {
            for outbox in lock(shard).values() {
                if outbox.token.covered_by(revocation, &outbox.sub)
                    && outbox.close(CloseCode::Disconnected)
                {
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

#[cfg(test)]
mod tests {
    use super::registry::{CatchUp, Order, order};
    use super::*;
    use herald_core::config::HistoryConfig;
    use herald_core::{Event, EventSink, HistoryPage, Position};
    use herald_core::{MemoryBroker, Publication};
    use serde_json::value::RawValue;
    use std::collections::VecDeque;
    use std::time::Instant;

    fn setup() -> (Hub<MemoryBroker>, Arc<MemoryBroker>, Arc<Metrics>) {
        let metrics = Metrics::new("n1");
        let registry = Arc::new(Registry::new(metrics.clone()));
        let broker = MemoryBroker::new(
            herald_core::BrokerSettings {
                history: HistoryConfig {
                    size: 10,
                    ttl: Duration::from_secs(60),
                },
                publish: herald_core::config::PublishConfig::default(),
                presence_timeout: Duration::from_secs(30),
                webhooks: Default::default(),
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
        Publication::new(topic.clone(), RawValue::from_string(n.to_string()).unwrap())
    }

    fn drain(outbox: &Outbox) -> Vec<serde_json::Value> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut items = VecDeque::new();
        outbox.take(&mut items, &mut 0, &mut cx);
        items
            .iter()
            .map(|i| {
                let header = if i.frame[1] & 0x7f == 126 { 4 } else { 2 };
                serde_json::from_slice(&i.frame[header..]).unwrap()
            })
            .collect()
    }

    /// A session subscribed to `t`, with nothing left queued.
    async fn subscribed(hub: &Hub<MemoryBroker>, t: &Topic) -> Arc<Outbox> {
        let a = Arc::new(Outbox::new(1, Arc::from("a"), 100));
        hub.subscribe(&a, std::slice::from_ref(t), |_| false)
            .await
            .unwrap();
        drain(&a);
        a
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
        assert_eq!(order(l, Position { epoch: 8, seq: 3 }), Order::Gap(l));
    }

    /// A subscribe request with `since` holds each topic back until all of
    /// them are live on the broker: a request that then fails lets nothing
    /// through that its client would take as a position to recover from.
    #[tokio::test]
    async fn a_held_topic_lets_nothing_through_until_recovered_or_released() {
        let (hub, broker, _) = setup();
        let t = Topic::new("t").unwrap();
        let a = Arc::new(Outbox::new(1, Arc::from("a"), 100));
        hub.hold(&a, &t, false, false).await.unwrap();
        broker.publish(vec![publication(&t, 1)]).await.unwrap();
        assert!(drain(&a).is_empty(), "held back");
        hub.release(&a, &t);
        assert_eq!(data(&drain(&a)), vec![1], "released: what was held");
        broker.publish(vec![publication(&t, 2)]).await.unwrap();
        assert_eq!(data(&drain(&a)), vec![2], "then live");
    }

    /// A node that did not hear a new epoch's first event (it was
    /// subscribing again after a Redis failover, or after Redis lost its
    /// data) meets the epoch at its second: the catch-up starts from the
    /// old epoch, and since the node missed a stretch of the stream, the
    /// old epoch's tail may be lost whether or not a fence says so: the
    /// sessions are closed with 1012 (contract §10.8: continuity must be
    /// proven).
    #[tokio::test]
    async fn a_new_epoch_met_past_its_start_is_checked_for_a_failover() {
        for replaced in [Some(7), None] {
            let (hub, _, _) = setup();
            let t = Topic::new("t").unwrap();
            let a = subscribed(&hub, &t).await;
            let registry = hub.registry();
            let last = Position { epoch: 7, seq: 5 };
            let met = event(&t, 8, 2);
            let Order::Gap(since) = order(Some(last), met.position) else {
                panic!("a jump into a new epoch is a gap");
            };
            let generation = {
                let mut shard = lock(registry.shard(&t));
                let entry = shard.get_mut(&t).unwrap();
                entry.last = Some(last);
                entry.catching_up = Some(vec![met.clone()]);
                entry.generation
            };
            // What history answers: `since` matched only in its own epoch.
            let page = HistoryPage {
                events: vec![event(&t, 8, 1), met],
                recovered: since.is_some_and(|s| s.epoch == 8),
                head: Some(Position { epoch: 8, seq: 2 }),
                replaced,
            };
            let request = CatchUp {
                topic: t.clone(),
                generation,
                since,
            };
            registry.finish_catch_up(&request, Ok(page));
            assert_eq!(
                a.close_requested(),
                Some(CloseCode::Restart),
                "{replaced:?}"
            );
            assert!(drain(&a).is_empty(), "nothing of the new epoch first");
        }
    }

    /// Once a topic is positioned its entry drops the confirmation's
    /// channel (about 400 bytes a topic, docs/benchmarks.md), and a later
    /// subscriber is live at once, from the same position.
    #[tokio::test]
    async fn a_positioned_topic_keeps_no_confirmation_channel() {
        let (hub, _broker, _) = setup();
        let t = Topic::new("t").unwrap();
        let _a = subscribed(&hub, &t).await;
        let registry = hub.registry();
        {
            let shard = lock(registry.shard(&t));
            let entry = shard.get(&t).unwrap();
            assert!(entry.last.is_some());
            // `Ready` shows its channel in its Debug form, and has no other
            // way to say it holds none.
            assert_eq!(format!("{:?}", entry.ready), "Ready(None)");
        }
        let b = Arc::new(Outbox::new(2, Arc::from("b"), 100));
        let at = hub
            .subscribe(&b, std::slice::from_ref(&t), |_| false)
            .await
            .unwrap();
        assert_eq!(at.len(), 1);
        assert_eq!(Some(at[0]), hub.position_of(&t));
    }

    /// The compound fault of contract §10.8: the broker asks for a resync
    /// (its pub/sub connection came back) before the topic's position was
    /// read (a Redis stall while the topic was first subscribed). The
    /// catch-up is not dropped: it runs from the position once it is known,
    /// so the events of the blip reach the session.
    #[tokio::test]
    async fn a_resync_before_the_position_is_known_catches_up_from_it() {
        let (hub, broker, _) = setup();
        let t = Topic::new("t").unwrap();
        let a = subscribed(&hub, &t).await;
        let registry = hub.registry();
        let position = hub.position_of(&t).unwrap();
        // As if the position read were still in flight.
        let generation = {
            let mut shard = lock(registry.shard(&t));
            let entry = shard.get_mut(&t).unwrap();
            entry.last = None;
            entry.generation
        };
        registry.resync(&t);
        // Events the node missed meanwhile: in history, not delivered
        // (held by a pretended catch-up, then dropped).
        lock(registry.shard(&t)).get_mut(&t).unwrap().catching_up = Some(Vec::new());
        broker
            .publish(vec![publication(&t, 1), publication(&t, 2)])
            .await
            .unwrap();
        lock(registry.shard(&t)).get_mut(&t).unwrap().catching_up = None;
        assert!(drain(&a).is_empty(), "held while not positioned");
        registry.positioned(&t, generation, position);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 2 && Instant::now() < deadline {
            got.extend(data(&drain(&a)));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(got, vec![1, 2], "caught up from the position");
        assert_eq!(a.close_requested(), None);
    }

    /// Contract §10.3: a topic with no event yet gives its subscriber a
    /// position, valid as `since`: a session that recovers from it gets
    /// every event published after it.
    #[tokio::test]
    async fn a_quiet_topic_is_positioned_and_recovers() {
        let (hub, broker, _) = setup();
        let t = Topic::new("quiet").unwrap();
        let a = Arc::new(Outbox::new(1, Arc::from("a"), 100));
        let positions = hub
            .subscribe(&a, std::slice::from_ref(&t), |_| false)
            .await
            .unwrap();
        assert_eq!(positions[0].seq, 0, "no event yet");
        hub.unsubscribe(&a, [&t]);
        // Events published while the client was away (the topic stays
        // held by another session, so its epoch stays).
        let b = subscribed(&hub, &t).await;
        broker
            .publish(vec![publication(&t, 1), publication(&t, 2)])
            .await
            .unwrap();
        drain(&b);
        let c = Arc::new(Outbox::new(3, Arc::from("c"), 100));
        let (recovered, at) = hub
            .subscribe_from(&c, &t, &positions[0].to_string(), false, false)
            .await
            .unwrap();
        assert!(recovered);
        assert_eq!(at.seq, 2);
        assert_eq!(data(&drain(&c)), vec![1, 2]);
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
        hub.subscribe(&a, &[news.clone(), x.clone()], |_| false)
            .await
            .unwrap();
        hub.subscribe(&b, std::slice::from_ref(&news), |_| false)
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
        let (recovered, at) = hub
            .subscribe_from(&a, &t, &ids[1].to_string(), false, false)
            .await
            .unwrap();
        assert!(recovered);
        assert_eq!(at, ids[4], "where it stands: the last event replayed");
        broker.publish(vec![publication(&t, 6)]).await.unwrap();
        assert_eq!(data(&drain(&a)), vec![3, 4, 5, 6]);

        // Too old for a 10-event window: not recovered, nothing replayed.
        broker
            .publish((7..=20).map(|n| publication(&t, n)).collect())
            .await
            .unwrap();
        let b = Arc::new(Outbox::new(2, Arc::from("b"), 100));
        assert!(
            !hub.subscribe_from(&b, &t, &ids[0].to_string(), false, false)
                .await
                .unwrap()
                .0
        );
        broker.publish(vec![publication(&t, 21)]).await.unwrap();
        assert_eq!(data(&drain(&b)), vec![21]);
    }

    #[tokio::test]
    async fn a_replay_ahead_of_the_live_stream_is_not_delivered_twice() {
        let (hub, broker, _) = setup();
        let t = Topic::new("t").unwrap();
        // Events 1–4 are in history before this node holds the topic.
        let ids = broker
            .publish((1..=4).map(|n| publication(&t, n)).collect())
            .await
            .unwrap();
        let b = Arc::new(Outbox::new(2, Arc::from("b"), 100));
        assert!(
            hub.subscribe_from(&b, &t, &ids[1].to_string(), false, false)
                .await
                .unwrap()
                .0
        );
        assert_eq!(data(&drain(&b)), vec![3, 4], "replayed from history");
        // Event 4 reaches this node's live stream only now, then 5 follows.
        let epoch = ids[0].epoch;
        hub.registry().deliver(&event(&t, epoch, 4));
        hub.registry().deliver(&event(&t, epoch, 5));
        assert_eq!(data(&drain(&b)), vec![5], "4 once, then live");
        hub.registry().deliver(&event(&t, epoch, 6));
        assert_eq!(data(&drain(&b)), vec![6]);
    }

    #[tokio::test]
    async fn gaps_are_caught_up_from_history_in_order() {
        let (hub, broker, _) = setup();
        let t = Topic::new("t").unwrap();
        let a = Arc::new(Outbox::new(1, Arc::from("a"), 100));
        hub.subscribe(&a, std::slice::from_ref(&t), |_| false)
            .await
            .unwrap();
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
        hub.subscribe(&a, std::slice::from_ref(&t), |_| false)
            .await
            .unwrap();
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

    /// A failover fence reaching a node that has had no live event of the
    /// topic yet: its sessions (positioned only by their `since`) are closed
    /// with 1012 before the fenced epoch's first event can reach them, so
    /// their clients recover from the old epoch and learn `recovered:false`.
    #[tokio::test]
    async fn a_fence_closes_sessions_before_the_new_epoch_reaches_them() {
        use herald_core::EventSink;
        let (hub, _, _) = setup();
        let t = Topic::new("t").unwrap();
        let a = subscribed(&hub, &t).await;
        assert_eq!(
            hub.position_of(&t).map(|p| p.seq),
            Some(0),
            "no live event yet: only its position"
        );
        hub.registry().history_replaced(&t, 7);
        hub.registry().deliver(&event(&t, 8, 1));
        assert_eq!(a.close_requested(), Some(CloseCode::Restart));
        assert!(
            drain(&a).is_empty(),
            "the new epoch's event is not delivered"
        );
    }
}
