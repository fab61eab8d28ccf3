//! The broker conformance suite against real Redis: a single server and a
//! three-master cluster started by the test, plus what only Redis can do
//! (outages, epochs after data loss).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::broker::conformance::{self, CollectingSink, HISTORY_SIZE};
use herald_core::broker::redis::RedisBroker;
use herald_core::config::{HistoryConfig, PublishConfig};
use herald_core::{Broker, BrokerError, BrokerSettings, Metrics};
use herald_protocol::Topic;
use herald_testkit::{TestCluster, TestRedis};

fn settings() -> BrokerSettings {
    BrokerSettings {
        history: HistoryConfig {
            size: HISTORY_SIZE,
            ttl: Duration::from_secs(60),
        },
        publish: PublishConfig::default(),
        presence_timeout: Duration::from_secs(2),
        webhooks: conformance::WEBHOOKS,
    }
}

fn broker(url: &str, cluster: bool, sink: Arc<dyn herald_core::EventSink>) -> Arc<RedisBroker> {
    RedisBroker::new(url, cluster, settings(), sink, Metrics::new("t")).unwrap()
}

async fn wait_up(b: &RedisBroker) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !b.is_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_single_redis() {
    let redis = TestRedis::start();
    let url = redis.url();
    conformance::run_all(|sink| {
        let url = url.clone();
        async move {
            let b = broker(&url, false, sink);
            wait_up(&b).await;
            b
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_redis_cluster() {
    let cluster = TestCluster::start();
    let urls = cluster.urls();
    conformance::run_all(|sink| {
        let urls = urls.clone();
        async move {
            let b = broker(&urls, true, sink);
            wait_up(&b).await;
            b
        }
    })
    .await;
}

fn publication(topic: &Topic, n: u64) -> herald_core::Publication {
    conformance::publication(topic, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_publishes_then_resubscribes() {
    let mut redis = TestRedis::start();
    let sink = Arc::new(CollectingSink::default());
    let b = broker(&redis.url(), false, sink.clone());
    let topic = Topic::new("outage").unwrap();
    b.subscribe(&topic).wait().await.unwrap();
    wait_up(&b).await;
    b.publish(vec![publication(&topic, 1)]).await.unwrap();
    sink.wait_for(&topic, 1).await;

    redis.kill();
    let err = b.publish(vec![publication(&topic, 2)]).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.is_up() {
        assert!(tokio::time::Instant::now() < deadline, "outage not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    redis.restart();
    wait_up(&b).await;
    // The subscription came back by itself: a new event is delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if b.publish(vec![publication(&topic, 3)]).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishes never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = sink.wait_for(&topic, 2).await;
    let last: serde_json::Value = serde_json::from_slice(&seen.last().unwrap().record).unwrap();
    assert_eq!(last["data"]["n"], 3);
    // Redis came back empty: a new epoch.
    assert_ne!(seen[0].position.epoch, seen.last().unwrap().position.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_releases_the_redis_subscription() {
    let redis = TestRedis::start();
    let b = broker(&redis.url(), false, Arc::new(CollectingSink::default()));
    let topic = Topic::new("numsub").unwrap();
    b.subscribe(&topic).wait().await.unwrap();
    assert_eq!(
        redis
            .cli(&["PUBSUB", "NUMSUB", "herald:{numsub}"])
            .lines()
            .nth(1),
        Some("1")
    );
    b.unsubscribe(&topic);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while redis
        .cli(&["PUBSUB", "NUMSUB", "herald:{numsub}"])
        .lines()
        .nth(1)
        != Some("0")
    {
        assert!(std::time::Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After `SCRIPT FLUSH` (a restart, a failover to a replica that never ran
/// them): publishes send their scripts in full, and presence changes still
/// happen in the order they were asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_scripts_keeps_ids_and_presence_order() {
    use herald_core::Change;
    let redis = TestRedis::start();
    let sink = Arc::new(CollectingSink::default());
    let b = broker(&redis.url(), false, sink.clone());
    wait_up(&b).await;
    let topic = Topic::new("flushed").unwrap();
    b.subscribe(&topic).wait().await.unwrap();
    let first = b.publish(vec![publication(&topic, 1)]).await.unwrap()[0];
    b.join(&topic, conformance::member("a", "s1"))
        .await
        .unwrap();
    redis.cli(&["SCRIPT", "FLUSH"]);
    let second = b.publish(vec![publication(&topic, 2)]).await.unwrap()[0];
    assert_eq!((second.epoch, second.seq), (first.epoch, 2));
    redis.cli(&["SCRIPT", "FLUSH"]);
    b.leave(&topic, "s1");
    b.join(&topic, conformance::member("b", "s2"))
        .await
        .unwrap();
    let heard = sink
        .wait_for_change(&topic, &(Change::Join, "s2".to_owned()))
        .await;
    assert_eq!(
        heard,
        vec![
            (Change::Join, "s1".to_owned()),
            (Change::Leave, "s1".to_owned()),
            (Change::Join, "s2".to_owned())
        ]
    );
    assert_eq!(sink.wait_for(&topic, 2).await.len(), 2);
}

fn replicated() -> BrokerSettings {
    let mut s = settings();
    s.history.size = 50;
    s.publish.durability = herald_core::config::Durability::Replicated;
    s.publish.min_replicas = 1;
    s.publish.replication_timeout = Duration::from_millis(20);
    s
}

/// Contract §10.8 with `durability = replicated` and a stalled replica:
/// every refused publish is taken back, so Redis does not grow however
/// many are refused, nothing refused surfaces later, and a retry with the
/// same `idempotency_key` (once the replica is back) delivers its event
/// once.
async fn refusals_are_taken_back(
    url: &str,
    cluster: bool,
    stall: impl Fn(bool),
    cli: impl Fn(&[&str]) -> String,
) {
    let sink = Arc::new(CollectingSink::default());
    let b = RedisBroker::new(url, cluster, replicated(), sink.clone(), Metrics::new("t")).unwrap();
    wait_up(&b).await;
    let topic = Topic::new("refused").unwrap();
    b.subscribe(&topic).wait().await.unwrap();
    let first = b.publish(vec![publication(&topic, 1)]).await.unwrap()[0];
    sink.wait_for(&topic, 1).await;
    stall(true);
    // 400 publishes of 4 KB, eight at a time (a refused one below one
    // still in flight is taken back once that one is refused too).
    let payload = "x".repeat(4096);
    let refused = futures_util::stream::iter(0..400)
        .map(|n| {
            let mut p = herald_core::Publication::new(
                topic.clone(),
                serde_json::value::RawValue::from_string(format!("\"{payload}{n}\"")).unwrap(),
            );
            p.idempotency_key = Some(format!("k{n}"));
            let b = &b;
            async move { b.publish(vec![p]).await }
        })
        .buffer_unordered(8)
        .filter(|r| std::future::ready(matches!(r, Err(BrokerError::Unavailable(_)))))
        .count()
        .await;
    assert_eq!(
        refused, 400,
        "every publish is refused while the replica stalls"
    );
    let len: u64 = cli(&["XLEN", "herald:{refused}:h"]).trim().parse().unwrap();
    assert_eq!(len, 1, "the refused events were taken back");
    assert_eq!(
        cli(&["HLEN", "herald:{refused}:r"]).trim(),
        "0",
        "none is left waiting"
    );
    stall(false);
    let mut retry = publication(&topic, 2);
    retry.idempotency_key = Some("k5".to_owned());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let id = loop {
        match b.publish(vec![retry.clone()]).await {
            Ok(ids) => break ids[0],
            Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the replica never came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        id.seq,
        first.seq + 1,
        "the refused ids were never shown: the next one follows"
    );
    assert_eq!(
        b.publish(vec![retry]).await.unwrap()[0],
        id,
        "a repeat answers the same id"
    );
    b.publish(vec![publication(&topic, 3)]).await.unwrap();
    let seen: Vec<u64> = sink
        .wait_for(&topic, 3)
        .await
        .iter()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.record).unwrap()["data"]["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seen,
        vec![1, 2, 3],
        "nothing refused surfaced; the retry once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_refusals_are_taken_back() {
    let group = herald_testkit::TestReplicated::start(1);
    let replica = &group.servers[1];
    refusals_are_taken_back(
        &group.servers[0].url(),
        false,
        |on| {
            if on {
                replica.pause()
            } else {
                replica.resume()
            }
        },
        |args| group.servers[0].cli(args),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_refusals_are_taken_back_in_a_cluster() {
    let cluster = TestCluster::start_with_replicas();
    let owner = cluster.owner_of("herald:{refused}");
    refusals_are_taken_back(
        &cluster.urls(),
        true,
        |on| {
            for n in &cluster.nodes[3..] {
                if on { n.pause() } else { n.resume() }
            }
        },
        |args| owner.cli(args),
    )
    .await;
}
