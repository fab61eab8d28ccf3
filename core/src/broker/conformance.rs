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

/// The `history.size` the suite expects the broker under test to be built with.
pub const HISTORY_SIZE: usize = 20;

/// How long the suite waits for an event before failing.
const WAIT: Duration = Duration::from_secs(5);

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

fn unique_topic(name: &str) -> Topic {
    let suffix = crate::random_hex(4);
    Topic::new(&format!("conformance.{name}.{suffix}")).unwrap_or_else(|e| panic!("{e}"))
}

fn n_of(event: &Event) -> u64 {
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
}

/// A member of `topic` for the presence checks.
pub fn member(sub: &str, session: &str) -> Member {
    Member {
        sub: sub.to_owned(),
        session: session.to_owned(),
        node: "n1".to_owned(),
        since: 1_767_222_000_000,
    }
}

async fn presence_joins_and_leaves_once<B: Broker>(broker: &B, sink: &CollectingSink) {
    let topic = unique_topic("presence");
    subscribed(broker, &topic).await;
    let (a, b, c) = (
        member("alice", "s1"),
        member("bob", "s2"),
        member("carol", "s3"),
    );
    broker.join(&topic, a.clone()).await.expect("join");
    broker
        .join(&topic, a.clone())
        .await
        .expect("a repeated join");
    broker.join(&topic, b.clone()).await.expect("join");
    let page = broker.members(&topic, None, 10).await.expect("members");
    let mut members = page.members.clone();
    super::presence::sort(&mut members);
    assert_eq!(members, vec![a.clone(), b.clone()], "both, whole");
    assert_eq!((page.count, page.users, page.next_cursor), (2, 2, None));
    // A second session of alice: one more session, no more users.
    broker
        .join(&topic, member("alice", "s9"))
        .await
        .expect("join");
    let page = broker.members(&topic, None, 0).await.expect("counts");
    assert_eq!((page.count, page.users), (3, 2), "counts only");
    assert!(page.members.is_empty() && page.next_cursor.is_none());
    broker.leave(&topic, "s9");
    broker.leave(&topic, "s1");
    broker.leave(&topic, "s1");
    broker.leave(&topic, "nobody");
    // Neither awaited: the leave still follows the join.
    drop(broker.join(&topic, c));
    broker.leave(&topic, "s3");
    // An awaited join after them: every change before it was stored (and
    // announced) before it.
    broker
        .join(&topic, member("dan", "s4"))
        .await
        .expect("join");
    let join = |s: &str| (Change::Join, s.to_owned());
    let leave = |s: &str| (Change::Leave, s.to_owned());
    let heard = sink.wait_for_change(&topic, &join("s4")).await;
    assert_eq!(
        heard,
        vec![
            join("s1"),
            join("s2"),
            join("s9"),
            leave("s9"),
            leave("s1"),
            join("s3"),
            leave("s3"),
            join("s4")
        ],
        "each member joins once and leaves once, in order"
    );
    let (sessions, count, users) = every_member(broker, &topic, 10).await;
    assert_eq!(sessions, vec!["s2", "s4"]);
    assert_eq!((count, users), (2, 2));
    broker.leave(&topic, "s2");
    broker.leave(&topic, "s4");
    broker
        .join(&topic, member("eve", "s5"))
        .await
        .expect("join");
    sink.wait_for_change(&topic, &join("s5")).await;
    let (left, _, _) = every_member(broker, &topic, 10).await;
    assert_eq!(left, vec!["s5"]);
    broker.leave(&topic, "s5");
}

/// Every member of `topic`, walked in pages of `limit` (sessions sorted,
/// each once), and the counts of the first page.
async fn every_member<B: Broker>(
    broker: &B,
    topic: &Topic,
    limit: usize,
) -> (Vec<String>, u64, u64) {
    let mut sessions = Vec::new();
    let mut cursor: Option<String> = None;
    let mut counts = None;
    for _ in 0..1000 {
        let page = broker
            .members(topic, cursor.as_deref(), limit)
            .await
            .expect("members");
        assert!(
            page.members.len() <= limit,
            "a page holds at most its limit"
        );
        counts.get_or_insert((page.count, page.users));
        sessions.extend(page.members.into_iter().map(|m| m.session));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "the walk ends");
    sessions.sort();
    sessions.dedup();
    let (count, users) = counts.unwrap_or_default();
    (sessions, count, users)
}

async fn presence_pages_cover_every_member<B: Broker>(broker: &B) {
    let topic = unique_topic("presence-pages");
    subscribed(broker, &topic).await;
    let mut want = Vec::new();
    for i in 0..45 {
        let session = format!("p{i:03}");
        let sub = format!("user{}", i % 9);
        broker
            .join(&topic, member(&sub, &session))
            .await
            .expect("join");
        want.push(session);
    }
    for limit in [1, 7, 100] {
        let (sessions, count, users) = every_member(broker, &topic, limit).await;
        assert_eq!(sessions, want, "pages of {limit} cover every member");
        assert_eq!((count, users), (45, 9));
    }
    for session in &want {
        broker.leave(&topic, session);
    }
    broker
        .join(&topic, member("last", "z"))
        .await
        .expect("join");
    let (sessions, count, users) = every_member(broker, &topic, 10).await;
    assert_eq!((sessions, count, users), (vec!["z".to_owned()], 1, 1));
    broker.leave(&topic, "z");
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
async fn quiet_topics_have_positions<B: Broker>(broker: &B, sink: &CollectingSink) {
    let topic = unique_topic("position");
    subscribed(broker, &topic).await;
    let start = broker.position(&topic).await.expect("position");
    assert_eq!(start.seq, 0, "no event yet: {start}");
    assert_eq!(broker.position(&topic).await.expect("position"), start);
    let ids = broker
        .publish((1..=3).map(|n| publication(&topic, n)).collect())
        .await
        .expect("publish");
    assert_eq!(
        ids[0],
        Position {
            epoch: start.epoch,
            seq: 1
        },
        "the epoch goes on"
    );
    sink.wait_for(&topic, 3).await;
    let page = broker
        .history(&topic, Some(&start.to_string()), 10)
        .await
        .expect("history");
    assert!(page.recovered, "a position is a valid since");
    assert_eq!(
        page.events.iter().map(n_of).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(broker.position(&topic).await.expect("position"), ids[2]);
}

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
fn a_first(seen: &[Event]) -> bool {
    seen.iter().any(|e| n_of(e) == 4)
}

async fn subscribed<B: Broker>(broker: &B, topic: &Topic) {
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

async fn history_pages_forward<B: Broker>(broker: &B, sink: &CollectingSink) {
    let topic = unique_topic("history");
    subscribed(broker, &topic).await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.extend(
            broker
                .publish(vec![publication(&topic, n)])
                .await
                .expect("publish"),
        );
    }
    sink.wait_for(&topic, 8).await;

    let all = broker.history(&topic, None, 100).await.expect("history");
    assert!(all.recovered);
    assert_eq!(
        all.events.iter().map(n_of).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );

    let page = broker
        .history(&topic, Some(&ids[2].to_string()), 3)
        .await
        .expect("history");
    assert!(page.recovered);
    assert_eq!(
        page.events.iter().map(n_of).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );

    let tail = broker
        .history(&topic, Some(&ids[7].to_string()), 10)
        .await
        .expect("history");
    assert!(
        tail.recovered && tail.events.is_empty(),
        "since = latest recovers nothing"
    );
    let head = broker.history(&topic, None, 0).await.expect("history");
    assert!(head.events.is_empty(), "limit 0 reads no events");
    assert_eq!(head.head, Some(ids[7]), "but still reports the head");
    let from_start = Position {
        epoch: ids[0].epoch,
        seq: 0,
    };
    let all = broker
        .history(&topic, Some(&from_start.to_string()), 100)
        .await
        .expect("history");
    assert!(
        all.recovered,
        "seq 0 of the current epoch means from the start"
    );
    assert_eq!(all.events.len(), 8);

    let first = broker.history(&topic, None, 2).await.expect("history");
    assert_eq!(
        first.events.iter().map(n_of).collect::<Vec<_>>(),
        vec![0, 1]
    );
}

async fn unrecoverable_since<B: Broker>(broker: &B, sink: &CollectingSink) {
    let topic = unique_topic("window");
    subscribed(broker, &topic).await;
    let total = HISTORY_SIZE as u64 + 5;
    let mut ids = Vec::new();
    for n in 0..total {
        ids.extend(
            broker
                .publish(vec![publication(&topic, n)])
                .await
                .expect("publish"),
        );
    }
    sink.wait_for(&topic, total as usize).await;

    let too_old = broker
        .history(&topic, Some(&ids[0].to_string()), 100)
        .await
        .expect("history");
    assert!(
        !too_old.recovered,
        "an id older than the window is not recoverable"
    );
    assert_eq!(
        too_old.events.len(),
        HISTORY_SIZE,
        "events start at the oldest kept"
    );
    assert_eq!(n_of(&too_old.events[0]), total - HISTORY_SIZE as u64);

    let edge = ids[total as usize - HISTORY_SIZE - 1];
    let page = broker
        .history(&topic, Some(&edge.to_string()), 100)
        .await
        .expect("history");
    assert!(
        page.recovered,
        "the id just before the oldest kept is recoverable"
    );
    assert_eq!(page.events.len(), HISTORY_SIZE);

    let other_epoch = Position {
        epoch: ids[0].epoch.wrapping_add(1).max(1),
        seq: ids[20].seq,
    };
    for since in [
        other_epoch.to_string(),
        "garbage".to_owned(),
        format!("{:08x}-999999", ids[0].epoch),
    ] {
        let page = broker
            .history(&topic, Some(&since), 5)
            .await
            .expect("history");
        assert!(!page.recovered, "{since} must not be recoverable");
        assert_eq!(page.events.len(), 5);
    }
}

async fn empty_topic_history<B: Broker>(broker: &B) {
    let topic = unique_topic("empty");
    let page = broker.history(&topic, None, 10).await.expect("history");
    assert!(page.events.is_empty());
    let page = broker
        .history(&topic, Some("00000001-1"), 10)
        .await
        .expect("history");
    assert!(page.events.is_empty() && !page.recovered);
    assert_eq!(page.head, None);
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
