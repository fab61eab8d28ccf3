//! The embedded broker of a single node: events and history in this process.
//!
//! Topics are spread over sharded locks. Publishing a topic's event happens
//! under its shard's lock: the id is assigned, the event is stored in the
//! topic's ring and handed to the sink in one step, so ids, history and
//! delivery order always agree. The sink only queues bytes, so the lock is held
//! for microseconds, and never across an `.await`.
//!
//! A topic's history starts a new epoch when it is created: at the first
//! publish or position read after the process starts, or after the history
//! expired (`history.ttl` after the last publish) while no session held the
//! topic. Ids from an older epoch are therefore never matched against new
//! events. A topic the hub holds ([`Broker::subscribe`] until
//! [`Broker::unsubscribe`]) keeps its epoch and sequence when its events
//! expire, so the positions its sessions were given stay valid `since`s.
//!
//! Presence members live in the same shards, by topic and session; a join
//! or leave is stored and announced to the sink under the shard lock, so
//! announcements follow the order of the changes. With one process there is
//! no other node to outlive: members leave only by unsubscribing or
//! disconnecting. Members are kept in session order, so a page of them
//! starts after its cursor (the last session of the previous page) in
//! O(log n + limit).
//!
//! **Locks.** A publish holds its shard's lock while it hands the event to
//! the sink, which takes the hub's topic lock; the hub calls `subscribe` and
//! `unsubscribe` under that topic lock. Those two therefore touch only the
//! `held` set, a lock under which nothing else is taken but the webhook
//! queue's, a leaf (it takes no lock; joins and leaves take it under their
//! shard lock too).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tracing::Instrument;

use herald_protocol::Topic;

use super::webhook_queue::WebhookQueue;
use super::{
    Broker, BrokerError, BrokerSettings, Change, Event, EventSink, HistoryPage, Member, MemberPage,
    NodeControl, NodeStats, Position, Publication, Ready, Revocation,
};
use crate::config::HistoryConfig;
use crate::ids::{new_epoch, now_ms};
use crate::webhooks::{Kind, Queued, SessionOpen, member_data};

const SHARDS: usize = 64;

struct TopicLog {
    epoch: u32,
    next_seq: u64,
    ring: VecDeque<Event>,
    last_publish: Instant,
}

impl TopicLog {
    fn new(now: Instant) -> TopicLog {
        TopicLog {
            epoch: new_epoch(),
            next_seq: 1,
            ring: VecDeque::new(),
            last_publish: now,
        }
    }

    /// The first sequence number still kept (or the next one when none is).
    fn first_kept(&self) -> u64 {
        self.ring.front().map_or(self.next_seq, |e| e.position.seq)
    }

    /// Whether everything after `since` is still here.
    fn covers(&self, since: Position) -> bool {
        since.epoch == self.epoch && since.seq < self.next_seq && since.seq + 1 >= self.first_kept()
    }

    /// The newest event's position, `<epoch>-0` before the first.
    fn head(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.next_seq - 1,
        }
    }
}

/// The presence of one topic: members by session (the paging order), and
/// sessions per `sub`.
#[derive(Default)]
struct Present {
    by_session: BTreeMap<String, Member>,
    users: HashMap<String, u32>,
}

/// One shard: the histories of its topics, and the idempotency keys seen for
/// them (kept apart from the histories, so a key outlives an expired history
/// for its whole window).
#[derive(Default)]
struct ShardState {
    logs: HashMap<Topic, TopicLog>,
    keys: HashMap<(Topic, String), (Position, Instant)>,
    /// Topic → its members.
    members: HashMap<Topic, Present>,
}

impl ShardState {
    /// `topic`'s log as it stands at `now`, if it has one: a log whose ttl
    /// passed is dropped, unless `held`, when it only loses its events.
    fn current(
        &mut self,
        topic: &Topic,
        now: Instant,
        ttl: Duration,
        held: bool,
    ) -> Option<&mut TopicLog> {
        let expired = self
            .logs
            .get(topic)
            .is_some_and(|log| now.duration_since(log.last_publish) > ttl);
        if expired && !held {
            self.logs.remove(topic);
            return None;
        }
        let log = self.logs.get_mut(topic)?;
        if expired {
            log.ring.clear();
        }
        Some(log)
    }

    /// `topic`'s log, started (a new epoch) if it has none at `now`.
    fn log(&mut self, topic: &Topic, now: Instant, ttl: Duration, held: bool) -> &mut TopicLog {
        if self.current(topic, now, ttl, held).is_none() {
            self.logs.insert(topic.clone(), TopicLog::new(now));
        }
        self.logs
            .entry(topic.clone())
            .or_insert_with(|| TopicLog::new(now))
    }
}

type Shard = Mutex<ShardState>;

/// In-process broker with per-topic history rings.
pub struct MemoryBroker {
    shards: Box<[Shard]>,
    hasher: RandomState,
    sink: Arc<dyn EventSink>,
    history: HistoryConfig,
    idempotency_window: Duration,
    node: RwLock<Option<Arc<dyn NodeControl>>>,
    /// Sessions per user, for `limits.max_connections_per_user`.
    users: Mutex<HashMap<Arc<str>, u32>>,
    /// Topics the hub holds (see the module documentation on locks).
    held: Mutex<HashMap<Topic, usize>>,
    /// Lifecycle webhooks waiting to be sent.
    webhooks: WebhookQueue,
}

impl MemoryBroker {
    /// Builds the broker; when called inside a Tokio runtime, also starts the
    /// task that frees expired histories and idempotency keys.
    pub fn new(settings: BrokerSettings, sink: Arc<dyn EventSink>) -> Arc<MemoryBroker> {
        let broker = Arc::new(MemoryBroker {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            sink,
            history: settings.history,
            idempotency_window: settings.publish.idempotency_window,
            node: RwLock::new(None),
            users: Mutex::default(),
            held: Mutex::default(),
            webhooks: WebhookQueue::new(settings.webhooks),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(
                sweep(Arc::downgrade(&broker)).instrument(tracing::info_span!("history_sweep")),
            );
        }
        broker
    }

    fn shard(&self, topic: &Topic) -> &Shard {
        let h = self.hasher.hash_one(topic.as_str()) as usize;
        &self.shards[h % SHARDS]
    }

    fn lock(shard: &Shard) -> std::sync::MutexGuard<'_, ShardState> {
        // A panic while holding a shard lock cannot leave a log half-updated in
        // a way later readers mind, so poisoning is ignored.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expired(&self, log: &TopicLog, now: Instant) -> bool {
        now.duration_since(log.last_publish) > self.history.ttl
    }

    /// Whether the hub holds `topic` (a leaf lock: see the module doc).
    fn is_held(&self, topic: &Topic) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(topic)
    }

    /// Drops the histories whose ttl has passed (only the events of those
    /// the hub holds); returns how many were dropped.
    fn sweep_once(&self) -> usize {
        let now = Instant::now();
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut st = Self::lock(shard);
            let before = st.logs.len();
            st.logs.retain(|topic, log| {
                if !self.expired(log, now) {
                    return true;
                }
                log.ring.clear();
                self.is_held(topic)
            });
            dropped += before - st.logs.len();
            let window = self.idempotency_window;
            st.keys
                .retain(|_, (_, at)| now.duration_since(*at) <= window);
        }
        dropped
    }

    fn node(&self) -> Option<Arc<dyn NodeControl>> {
        self.node.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn sweep(broker: Weak<MemoryBroker>) {
    let period = {
        let Some(b) = broker.upgrade() else { return };
        (b.history.ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(10))
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = broker.upgrade() else { return };
        b.sweep_once();
    }
}

impl Broker for MemoryBroker {
    async fn publish(&self, batch: Vec<Publication>) -> Result<Vec<Position>, BrokerError> {
        let mut positions = Vec::with_capacity(batch.len());
        for publication in batch {
            let now = Instant::now();
            let ts = now_ms();
            let mut st = Self::lock(self.shard(&publication.topic));
            let key = publication
                .idempotency_key
                .as_ref()
                .map(|k| (publication.topic.clone(), k.clone()));
            if let Some(key) = &key {
                match st.keys.get(key) {
                    Some((p, at)) if now.duration_since(*at) <= self.idempotency_window => {
                        positions.push(*p);
                        continue;
                    }
                    _ => {}
                }
            }
            let held = self.is_held(&publication.topic);
            let log = st.log(&publication.topic, now, self.history.ttl, held);
            let position = Position {
                epoch: log.epoch,
                seq: log.next_seq,
            };
            log.next_seq += 1;
            log.last_publish = now;
            let event = Event::render(&publication, position, ts);
            if self.history.size > 0 {
                if log.ring.len() == self.history.size {
                    log.ring.pop_front();
                }
                log.ring.push_back(event.clone());
            }
            self.sink.deliver(&event);
            if let Some(key) = key {
                st.keys.insert(key, (position, now));
            }
            drop(st);
            positions.push(position);
        }
        Ok(positions)
    }

    fn subscribe(&self, topic: &Topic) -> Ready {
        // Every publish reaches the sink (the hub ignores topics nobody
        // wants); a held topic keeps its epoch.
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(topic.clone()).or_default();
        *n += 1;
        if *n == 1 {
            self.webhooks.occupied(topic.as_str());
        }
        Ready::now()
    }

    fn unsubscribe(&self, topic: &Topic) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(topic) {
            *n -= 1;
            if *n == 0 {
                held.remove(topic);
                self.webhooks.vacating(topic.as_str());
            }
        }
    }

    async fn position(&self, topic: &Topic) -> Result<Position, BrokerError> {
        let held = self.is_held(topic);
        let mut st = Self::lock(self.shard(topic));
        Ok(st.log(topic, Instant::now(), self.history.ttl, held).head())
    }

    async fn history(
        &self,
        topic: &Topic,
        since: Option<&str>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let now = Instant::now();
        let held = self.is_held(topic);
        let mut st = Self::lock(self.shard(topic));
        let Some(log) = st.current(topic, now, self.history.ttl, held) else {
            return Ok(HistoryPage {
                events: Vec::new(),
                recovered: since.is_none(),
                head: None,
                replaced: None,
            });
        };
        let head = Some(log.head());
        let after = since.map(|s| Position::parse(s).filter(|p| log.covers(*p)));
        let (start_seq, recovered) = match after {
            None => (log.first_kept(), true),
            Some(Some(p)) => (p.seq + 1, true),
            Some(None) => (log.first_kept(), false),
        };
        let skip = usize::try_from(start_seq - log.first_kept()).unwrap_or(usize::MAX);
        let events = log.ring.iter().skip(skip).take(limit).cloned().collect();
        Ok(HistoryPage {
            events,
            recovered,
            head,
            replaced: None,
        })
    }

    fn is_up(&self) -> bool {
        true
    }

    fn register_node(&self, node: Arc<dyn NodeControl>) {
        // Revocations of a single node live in it: nothing to load.
        node.revocations_loaded();
        *self.node.write().unwrap_or_else(|p| p.into_inner()) = Some(node);
    }

    async fn stats(&self) -> Result<Vec<NodeStats>, BrokerError> {
        Ok(self.node().map(|n| vec![n.stats()]).unwrap_or_default())
    }

    async fn disconnect(&self, sub: &str) -> Result<usize, BrokerError> {
        Ok(self.node().map_or(0, |n| n.disconnect(sub)))
    }

    async fn revoke(&self, revocation: &Revocation) -> Result<usize, BrokerError> {
        Ok(self.node().map_or(0, |n| n.revoke(revocation)))
    }

    fn join(
        &self,
        topic: &Topic,
        member: Member,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        let mut st = Self::lock(self.shard(topic));
        let present = st.members.entry(topic.clone()).or_default();
        if let std::collections::btree_map::Entry::Vacant(slot) =
            present.by_session.entry(member.session.clone())
        {
            self.sink.presence(topic, Change::Join, &member);
            self.webhooks.push(
                Kind::Join,
                member_data(topic.as_str(), &member.sub, &member.session),
                Some(&member.session),
                Some(topic.as_str()),
            );
            *present.users.entry(member.sub.clone()).or_default() += 1;
            slot.insert(member);
        }
        std::future::ready(Ok(()))
    }

    fn admit(
        &self,
        sub: &str,
        limit: u32,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send + 'static {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let n = users.entry(Arc::from(sub)).or_insert(0);
        let admitted = *n < limit;
        if admitted {
            *n += 1;
        }
        std::future::ready(Ok(admitted))
    }

    fn release(&self, sub: &str) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = users.get_mut(sub) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                users.remove(sub);
            }
        }
    }

    fn leave(&self, topic: &Topic, session: &str) {
        let mut st = Self::lock(self.shard(topic));
        let Some(present) = st.members.get_mut(topic) else {
            return;
        };
        if let Some(member) = present.by_session.remove(session) {
            if let Some(n) = present.users.get_mut(&member.sub) {
                *n -= 1;
                if *n == 0 {
                    present.users.remove(&member.sub);
                }
            }
            if present.by_session.is_empty() {
                st.members.remove(topic);
            }
            self.sink.presence(topic, Change::Leave, &member);
            self.webhooks.push(
                Kind::Leave,
                member_data(topic.as_str(), &member.sub, &member.session),
                Some(&member.session),
                Some(topic.as_str()),
            );
        }
    }

    fn session_opened(&self, open: SessionOpen) {
        self.webhooks.opened(open);
    }

    fn session_closed(&self, session: &str, data: Option<String>) {
        self.webhooks.closed(session, data);
    }

    async fn webhooks_lease(&self, holder: &str, ttl: Duration) -> Result<bool, BrokerError> {
        Ok(self.webhooks.lease(holder, ttl))
    }

    async fn webhooks_read(&self, max: usize) -> Result<(Vec<Queued>, u64), BrokerError> {
        Ok(self.webhooks.read(max))
    }

    async fn webhooks_done(&self, ids: &[String]) -> Result<(), BrokerError> {
        self.webhooks.done(ids);
        Ok(())
    }

    fn webhooks_dropped(&self) -> [u64; Kind::ALL.len()] {
        self.webhooks.dropped()
    }

    async fn members(
        &self,
        topic: &Topic,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, BrokerError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let st = Self::lock(self.shard(topic));
        let Some(present) = st.members.get(topic) else {
            return Ok(MemberPage::default());
        };
        let after = cursor.map_or(Unbounded, |c| Excluded(c.to_owned()));
        let mut rest = present.by_session.range((after, Unbounded));
        let members: Vec<Member> = rest.by_ref().take(limit).map(|(_, m)| m.clone()).collect();
        let next_cursor = match (rest.next(), members.last()) {
            (Some(_), Some(last)) => Some(last.session.clone()),
            _ => None,
        };
        Ok(MemberPage {
            count: present.by_session.len() as u64,
            users: present.users.len() as u64,
            members,
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::conformance;

    fn config(size: usize, ttl: Duration) -> BrokerSettings {
        BrokerSettings {
            history: HistoryConfig { size, ttl },
            publish: crate::config::PublishConfig::default(),
            presence_timeout: Duration::from_secs(30),
            webhooks: conformance::WEBHOOKS,
        }
    }

    #[tokio::test]
    async fn conformance_suite() {
        conformance::run_all(|sink| async move {
            MemoryBroker::new(
                config(conformance::HISTORY_SIZE, Duration::from_secs(60)),
                sink,
            )
        })
        .await;
    }

    #[tokio::test]
    async fn history_expires_after_ttl_and_starts_a_new_epoch() {
        let sink = Arc::new(conformance::CollectingSink::default());
        let broker = MemoryBroker::new(config(10, Duration::from_millis(50)), sink);
        let topic = Topic::new("t").unwrap();
        let first = broker
            .publish(vec![conformance::publication(&topic, 1)])
            .await
            .unwrap()[0];
        tokio::time::sleep(Duration::from_millis(80)).await;
        let page = broker.history(&topic, None, 10).await.unwrap();
        assert!(page.events.is_empty());
        let second = broker
            .publish(vec![conformance::publication(&topic, 2)])
            .await
            .unwrap()[0];
        assert_ne!(first.epoch, second.epoch);
        assert_eq!(second.seq, 1);
        let page = broker
            .history(&topic, Some(&first.to_string()), 10)
            .await
            .unwrap();
        assert!(!page.recovered);
        assert_eq!(broker.sweep_once(), 0);
    }

    #[tokio::test]
    async fn sweeper_frees_expired_topics() {
        let broker = MemoryBroker::new(
            config(10, Duration::from_millis(20)),
            Arc::new(super::super::NoSink),
        );
        for i in 0..5 {
            let topic = Topic::new(&format!("t{i}")).unwrap();
            broker
                .publish(vec![conformance::publication(&topic, i)])
                .await
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(broker.sweep_once(), 5);
    }

    #[tokio::test]
    async fn zero_size_history_keeps_ids_but_no_events() {
        let broker = MemoryBroker::new(
            config(0, Duration::from_secs(60)),
            Arc::new(super::super::NoSink),
        );
        let topic = Topic::new("t").unwrap();
        let p = broker
            .publish(vec![conformance::publication(&topic, 1)])
            .await
            .unwrap()[0];
        let page = broker
            .history(&topic, Some(&p.to_string()), 10)
            .await
            .unwrap();
        assert!(page.recovered && page.events.is_empty());
        broker
            .publish(vec![conformance::publication(&topic, 2)])
            .await
            .unwrap();
        let page = broker
            .history(&topic, Some(&p.to_string()), 10)
            .await
            .unwrap();
        assert!(!page.recovered);
    }
}
