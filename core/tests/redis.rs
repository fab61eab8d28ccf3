//! The broker conformance suite against real Redis: a single server and a
//! three-master cluster started by the test, plus what only Redis can do
//! (outages, epochs after data loss).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

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
    let last: serde_json::Value = serde_json::from_slice(&seen.last().unwrap().json).unwrap();
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
