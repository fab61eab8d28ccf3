//! The local registry: which sessions of this node want which topics.
//!
//! Topics are spread over sharded mutexes, so subscribes and deliveries on
//! different topics do not contend. Each topic entry counts its local
//! sessions; the broker is asked to subscribe when the first one arrives and to
//! unsubscribe when the last one leaves, and both calls are made while the
//! shard lock is held, so the broker sees them in the same order as the hub
//! changes its own state (they do not block; see the broker's contract).
//!
//! Delivery: an event's WebSocket frame is encoded once, then the same bytes
//! are pushed to the outbox of every local subscriber, under the shard lock
//! and without awaiting anything.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use herald_core::metrics::DropReason;
use herald_core::{Broker, BrokerError, Event, EventSink, Metrics, Ready};
use herald_protocol::{CloseCode, Topic};

use crate::outbox::{Outbox, Pushed};
use crate::ws::codec;

const TOPIC_SHARDS: usize = 64;
const SESSION_SHARDS: usize = 16;
/// Longest wait for the broker to confirm a new topic subscription.
const SUBSCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

struct TopicEntry {
    subscribers: HashMap<u64, Arc<Outbox>>,
    ready: Ready,
}

type TopicShard = Mutex<HashMap<Topic, TopicEntry>>;
type SessionShard = Mutex<HashMap<u64, Arc<Outbox>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here only insert and remove whole entries, so a
    // poisoned lock still guards consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Topic → local sessions. This is the broker's [`EventSink`].
pub struct Registry {
    shards: Box<[TopicShard]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
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
}

impl EventSink for Registry {
    fn deliver(&self, event: &Event) {
        let received = Instant::now();
        let shard = lock(self.shard(&event.topic));
        let Some(entry) = shard.get(&event.topic) else {
            return;
        };
        let frame = codec::text_frame(&event.json);
        let mut overflowed = 0;
        for outbox in entry.subscribers.values() {
            if let Pushed::Overflow(n) = outbox.push_event(&frame, received) {
                overflowed += n as u64;
            }
        }
        drop(shard);
        if overflowed > 0 {
            self.metrics.dropped(DropReason::SlowConsumer, overflowed);
        }
    }
}

/// The registry plus the broker it keeps in step, plus the session index.
pub struct Hub<B> {
    registry: Arc<Registry>,
    broker: Arc<B>,
    sessions: Box<[SessionShard]>,
    metrics: Arc<Metrics>,
}

impl<B: Broker> Hub<B> {
    /// A hub over `registry` (which must be the sink `broker` delivers to).
    pub fn new(registry: Arc<Registry>, broker: Arc<B>, metrics: Arc<Metrics>) -> Hub<B> {
        Hub {
            registry,
            broker,
            sessions: (0..SESSION_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            metrics,
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
        self.metrics.connections.fetch_add(1, Relaxed);
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
            self.metrics.connections.fetch_sub(1, Relaxed);
        }
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
        let mut waits = Vec::new();
        for topic in topics {
            let mut shard = lock(self.registry.shard(topic));
            let entry = shard.entry(topic.clone()).or_insert_with(|| {
                self.metrics.topics.fetch_add(1, Relaxed);
                TopicEntry {
                    subscribers: HashMap::new(),
                    ready: self.broker.subscribe(topic),
                }
            });
            if entry
                .subscribers
                .insert(outbox.id, outbox.clone())
                .is_none()
            {
                self.metrics.subscriptions.fetch_add(1, Relaxed);
            }
            if !entry.ready.is_live() {
                waits.push(entry.ready.clone());
            }
        }
        for ready in waits {
            let confirmed = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ready.wait()).await {
                Ok(result) => result,
                Err(_) => Err(BrokerError::Unavailable(
                    "the broker did not confirm the subscription in time".to_owned(),
                )),
            };
            if let Err(e) = confirmed {
                self.unsubscribe(outbox, topics);
                return Err(e);
            }
        }
        Ok(())
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
                self.metrics.subscriptions.fetch_sub(1, Relaxed);
            }
            if entry.subscribers.is_empty() {
                shard.remove(topic);
                self.broker.unsubscribe(topic);
                self.metrics.topics.fetch_sub(1, Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::config::HistoryConfig;
    use herald_core::{MemoryBroker, Publication};
    use serde_json::value::RawValue;
    use std::collections::VecDeque;
    use std::time::Duration;

    fn setup() -> (Hub<MemoryBroker>, Arc<MemoryBroker>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new("n1"));
        let registry = Arc::new(Registry::new(metrics.clone()));
        let broker = MemoryBroker::new(
            HistoryConfig {
                size: 10,
                ttl: Duration::from_secs(60),
            },
            registry.clone(),
        );
        (
            Hub::new(registry, broker.clone(), metrics.clone()),
            broker,
            metrics,
        )
    }

    fn publication(topic: &Topic) -> Publication {
        Publication {
            topic: topic.clone(),
            event: None,
            data: RawValue::from_string("1".into()).unwrap(),
        }
    }

    fn drain(outbox: &Outbox) -> usize {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut items = VecDeque::new();
        outbox.take(&mut items, &mut cx);
        items.len()
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
        assert_eq!(metrics.topics.load(Relaxed), 2);
        assert_eq!(metrics.subscriptions.load(Relaxed), 3);

        broker
            .publish(vec![publication(&news), publication(&x)])
            .await
            .unwrap();
        assert_eq!(drain(&a), 2);
        assert_eq!(drain(&b), 1);

        hub.unsubscribe(&a, [&news]);
        broker.publish(vec![publication(&news)]).await.unwrap();
        assert_eq!(drain(&a), 0);
        assert_eq!(drain(&b), 1);

        hub.remove_session(&b, [&news]);
        assert_eq!(hub.registry().subscriber_count(&news), 0);
        assert_eq!(metrics.topics.load(Relaxed), 1);
        assert_eq!(metrics.connections.load(Relaxed), 1);
        assert_eq!(hub.disconnect("alice"), 1);
        assert_eq!(hub.disconnect("alice"), 0, "already closing");
    }
}
