//! The conformance suite every [`Broker`] must pass.
//!
//! One suite, run against the memory broker in this crate's unit tests and
//! against the Redis broker with a real `redis-server`, so the gateway can rely
//! on the guarantees of the module documentation whichever broker it runs.
//! Each check uses its own topics, so one broker instance serves them all.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_protocol::Topic;
use serde_json::value::RawValue;
use tokio::sync::Notify;

use super::{
    Broker, Change, Event, EventSink, Member, NodeControl, NodeStats, Position, Publication,
};

mod history;
mod presence;
mod webhooks;

use history::{
    empty_topic_history, history_pages_forward, quiet_topics_have_positions, unrecoverable_since,
};
pub use presence::member;
use presence::{presence_joins_and_leaves_once, presence_pages_cover_every_member};
pub use webhooks::SETTINGS as WEBHOOKS;
use webhooks::webhooks_pair_and_keep_order;

/// The `history.size` the suite expects the broker under test to be built with.
pub const HISTORY_SIZE: usize = 20;

/// How long the suite waits for an event before failing.
pub(super) const WAIT: Duration = Duration::from_secs(5);

/// A presence change as a sink heard it: topic, change, session.
pub type Heard = (Topic, Change, String);

/// A sink that records every event and presence change, for tests.
#[derive(Default)]
pub struct CollectingSink {
    events: Mutex<Vec<Event>>,
    changes: Mutex<Vec<Heard>>,
    arrived: Notify,
}

impl CollectingSink {
    /// Events of `topic` seen so far.
    pub fn events_of(&self, topic: &Topic) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| &e.topic == topic)
            .cloned()
            .collect()
    }

    /// Waits until `topic` has at least `n` events, at most a few seconds.
    ///
    /// # Panics
    /// When they do not arrive in time.
    pub async fn wait_for(&self, topic: &Topic, n: usize) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.arrived.notified();
            let seen = self.events_of(topic);
            if seen.len() >= n {
                return seen;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "only {} of {n} events of {topic} arrived",
                seen.len()
            );
        }
    }
}

impl CollectingSink {
    /// Presence changes of `topic` heard so far, as (change, session).
    pub fn changes_of(&self, topic: &Topic) -> Vec<(Change, String)> {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, c, s)| (*c, s.clone()))
            .collect()
    }

    /// Waits until `topic` has a presence change matching `last`.
    ///
    /// # Panics
    /// When it does not come in time.
    pub async fn wait_for_change(
        &self,
        topic: &Topic,
        last: &(Change, String),
    ) -> Vec<(Change, String)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.arrived.notified();
            let seen = self.changes_of(topic);
            if seen.contains(last) {
                return seen;
            }
            assert!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "{last:?} never arrived on {topic}; heard {seen:?}"
            );
        }
    }
}

impl EventSink for CollectingSink {
    fn deliver(&self, event: &Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event.clone());
        self.arrived.notify_waiters();
    }

    fn presence(&self, topic: &Topic, change: Change, member: &Member) {
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((topic.clone(), change, member.session.clone()));
        self.arrived.notify_waiters();
    }
}

/// A publication of `{"n":n}` to `topic`.
pub fn publication(topic: &Topic, n: u64) -> Publication {
    Publication::new(
        topic.clone(),
        RawValue::from_string(format!("{{\"n\":{n}}}"))
            .unwrap_or_else(|_| unreachable!("a number is valid JSON")),
    )
}

pub(super) fn unique_topic(name: &str) -> Topic {
    let suffix = crate::random_hex(4);
    Topic::new(&format!("conformance.{name}.{suffix}")).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn n_of(event: &Event) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&event.record).unwrap_or_default();
    v["data"]["n"].as_u64().unwrap_or(u64::MAX)
}

struct FakeNode;

impl NodeControl for FakeNode {
    fn stats(&self) -> NodeStats {
        NodeStats {
            node: "fake".to_owned(),
            connections: 3,
            subscriptions: 5,
            topics: 2,
        }
    }
    fn disconnect(&self, sub: &str) -> usize {
        if sub == "alice" { 2 } else { 0 }
    }
}

/// Runs every check against brokers built by `make`, which is handed the sink
/// the broker must deliver to.
///
/// # Panics
/// On the first guarantee broken, with what was expected.
pub async fn run_all<B, F, Fut>(make: F)
where
    B: Broker,
    F: Fn(Arc<dyn EventSink>) -> Fut,
    Fut: Future<Output = Arc<B>>,
{
    let sink = Arc::new(CollectingSink::default());
    let broker = make(sink.clone()).await;
    ids_increase_and_delivery_is_ordered(&*broker, &sink).await;
    batch_order_and_frame_shape(&*broker, &sink).await;
    history_pages_forward(&*broker, &sink).await;
    unrecoverable_since(&*broker, &sink).await;
    empty_topic_history(&*broker).await;
    concurrent_publishers_keep_one_order(broker.clone(), &sink).await;
    idempotent_publishes_happen_once(broker.clone(), &sink).await;
    presence_joins_and_leaves_once(&*broker, &sink).await;
    presence_pages_cover_every_member(&*broker).await;
    quiet_topics_have_positions(&*broker, &sink).await;
    byte_payloads_stay_bytes(&*broker, &sink).await;
    node_control_is_reached(&*broker).await;
    webhooks_pair_and_keep_order(&*broker).await;
}

/// Contract §10.2: a byte payload is stored and delivered as the bytes
/// published (zeros and the record's own marker byte included), in order
/// with JSON events, and reaches JSON readers as `data_b64`.
async fn byte_payloads_stay_bytes<B: Broker>(broker: &B, sink: &CollectingSink) {
    use herald_protocol::record::{Record, json_frame};
    let topic = unique_topic("bytes");
    subscribed(broker, &topic).await;
    let bytes: Vec<u8> = vec![0, 1, 0, 255, b'{', b'\n', 0];
    let mut p = Publication::of(
        topic.clone(),
        herald_protocol::Payload::Bytes(std::borrow::Cow::Owned(bytes.clone())),
    );
    p.event = Some("blob".to_owned());
    let ids = broker
        .publish(vec![publication(&topic, 1), p])
        .await
        .expect("publish");
    let seen = sink.wait_for(&topic, 2).await;
    let Some(Record::Binary { bytes: got, .. }) = Record::parse(&seen[1].record) else {
        panic!("a byte record");
    };
    assert_eq!(got, &bytes[..], "delivered as published");
    let page = broker
        .history(&topic, Some(&ids[0].to_string()), 10)
        .await
        .expect("history");
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].record, seen[1].record, "stored as delivered");
    let frame: serde_json::Value =
        serde_json::from_slice(&json_frame(&page.events[0].record).expect("a record"))
            .expect("JSON");
    assert_eq!(frame["data_b64"], "AAEA/3sKAA==");
    assert_eq!(frame["event"], "blob");
    assert_eq!(frame["id"], ids[1].to_string());
    assert!(frame.get("data").is_none());
}

/// Contract §10.3: a topic with no event has a position (`<epoch>-0`),
/// stable, and valid as `since`: everything published after it replays.
fn keyed(topic: &Topic, n: u64, key: &str) -> Publication {
    let mut p = publication(topic, n);
    p.idempotency_key = Some(key.to_owned());
    p
}

async fn idempotent_publishes_happen_once<B: Broker>(broker: Arc<B>, sink: &CollectingSink) {
    let topic = unique_topic("idem");
    let other = unique_topic("idem-other");
    subscribed(&*broker, &topic).await;
    let first = broker
        .publish(vec![keyed(&topic, 1, "k1")])
        .await
        .expect("publish");
    // A retry, a batch repeating the key, and two concurrent callers.
    let again = broker
        .publish(vec![keyed(&topic, 99, "k1")])
        .await
        .expect("retry");
    assert_eq!(again, first, "a repeated key answers the first position");
    let batch = broker
        .publish(vec![
            keyed(&topic, 2, "k2"),
            keyed(&topic, 98, "k2"),
            publication(&topic, 3),
        ])
        .await
        .expect("batch");
    assert_eq!(batch[0], batch[1], "a key repeated within a batch");
    let (a, b) = tokio::join!(
        broker.publish(vec![keyed(&topic, 4, "k3")]),
        broker.publish(vec![keyed(&topic, 97, "k3")]),
    );
    assert_eq!(
        a.expect("a"),
        b.expect("b"),
        "concurrent callers, one event"
    );
    // Keys belong to their topic.
    let elsewhere = broker
        .publish(vec![keyed(&other, 5, "k1")])
        .await
        .expect("other topic");
    assert_ne!(elsewhere, first);
    let seen = sink.wait_for(&topic, 4).await;
    assert_eq!(
        seen.iter().map(n_of).collect::<Vec<_>>(),
        vec![1, 2, 3, if a_first(&seen) { 4 } else { 97 }],
        "each keyed event once, in order"
    );
    let page = broker.history(&topic, None, 100).await.expect("history");
    assert_eq!(page.events.len(), 4, "history holds each keyed event once");
}

/// Whether the first of two concurrent keyed publishes (n = 4) won.
pub(super) fn a_first(seen: &[Event]) -> bool {
    seen.iter().any(|e| n_of(e) == 4)
}

pub(super) async fn subscribed<B: Broker>(broker: &B, topic: &Topic) {
    broker
        .subscribe(topic)
        .wait()
        .await
        .unwrap_or_else(|e| panic!("subscribe {topic}: {e}"));
}

async fn ids_increase_and_delivery_is_ordered<B: Broker>(broker: &B, sink: &CollectingSink) {
    let topic = unique_topic("order");
    subscribed(broker, &topic).await;
    let mut positions = Vec::new();
    for n in 0..10 {
        positions.extend(
            broker
                .publish(vec![publication(&topic, n)])
                .await
                .expect("publish"),
        );
    }
    for pair in positions.windows(2) {
        assert_eq!(pair[0].epoch, pair[1].epoch, "epoch changed mid-stream");
        assert_eq!(pair[0].seq + 1, pair[1].seq, "ids must increase by one");
    }
    let seen = sink.wait_for(&topic, 10).await;
    let seen_positions: Vec<Position> = seen.iter().map(|e| e.position).collect();
    assert_eq!(
        seen_positions, positions,
        "sink order differs from id order"
    );
    assert_eq!(
        seen.iter().map(n_of).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
}

async fn batch_order_and_frame_shape<B: Broker>(broker: &B, sink: &CollectingSink) {
    let a = unique_topic("batch-a");
    let b = unique_topic("batch-b");
    subscribed(broker, &a).await;
    subscribed(broker, &b).await;
    let mut with_event = publication(&a, 1);
    with_event.event = Some("tick".to_owned());
    let batch = vec![with_event, publication(&b, 2), publication(&a, 3)];
    let positions = broker.publish(batch).await.expect("publish batch");
    assert_eq!(positions.len(), 3);
    assert_eq!(
        positions[0].seq + 1,
        positions[2].seq,
        "batch order within a topic"
    );
    let seen = sink.wait_for(&a, 2).await;
    let frame: serde_json::Value = serde_json::from_slice(&seen[0].record).expect("frame is JSON");
    assert_eq!(frame["type"], "message");
    assert_eq!(frame["topic"], a.as_str());
    assert_eq!(frame["id"], positions[0].to_string());
    assert_eq!(frame["event"], "tick");
    assert_eq!(frame["data"], serde_json::json!({"n": 1}));
    assert!(
        frame["ts"]
            .as_u64()
            .is_some_and(|ts| ts > 1_600_000_000_000)
    );
    let second: serde_json::Value = serde_json::from_slice(&seen[1].record).expect("frame is JSON");
    assert!(
        second.get("event").is_none(),
        "event must be absent when not set"
    );
    sink.wait_for(&b, 1).await;
}

async fn concurrent_publishers_keep_one_order<B: Broker>(broker: Arc<B>, sink: &CollectingSink) {
    let topic = unique_topic("concurrent");
    subscribed(&*broker, &topic).await;
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let broker = broker.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    broker
                        .publish(vec![publication(&topic, t * 100 + i)])
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher task");
    }
    let seen = sink.wait_for(&topic, 100).await;
    let seqs: Vec<u64> = seen.iter().map(|e| e.position.seq).collect();
    let expected: Vec<u64> = (seqs[0]..seqs[0] + 100).collect();
    assert_eq!(seqs, expected, "the sink must see one topic in id order");
    for t in 0..4 {
        let mine: Vec<u64> = seen.iter().map(n_of).filter(|n| n / 100 == t).collect();
        let mut sorted = mine.clone();
        sorted.sort_unstable();
        assert_eq!(mine, sorted, "one publisher's events stay in its order");
    }
}

async fn node_control_is_reached<B: Broker>(broker: &B) {
    broker.register_node(Arc::new(FakeNode));
    // Brokers that share stats through a store report periodically.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = broker.stats().await.expect("stats");
        if stats.iter().any(|s| s.node == "fake" && s.connections == 3) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never appeared in stats: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(broker.disconnect("alice").await.expect("disconnect"), 2);
    assert_eq!(broker.disconnect("bob").await.expect("disconnect"), 0);
}
