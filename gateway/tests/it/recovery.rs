//! Zero loss across reconnects, node loss and Redis blips, with real
//! processes: gateways and `herald-admin` around a `redis-server` the test
//! starts, kills and restarts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_testkit::TestRedis;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::cluster::{GatewayProc, admin_proc, post};
use crate::common::*;

/// Publishes `n` events to `topic` at about `per_second`, through `admin`,
/// and returns every acknowledged id in order. `midway` runs once, after half.
async fn publish_paced(
    admin: SocketAddr,
    topic: &str,
    n: usize,
    per_second: u64,
    midway: impl FnOnce(),
) -> Vec<String> {
    let mut midway = Some(midway);
    let mut acked = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    for i in 0..n {
        tick.tick().await;
        if i == n / 2 {
            if let Some(f) = midway.take() {
                f();
            }
        }
        let (status, body) = post(admin, "/v1/publish", json!({"topic": topic, "data": i})).await;
        if status == 200 {
            acked.push(body["results"][0]["id"].as_str().unwrap().to_owned());
        }
    }
    acked
}

/// A client that keeps itself subscribed to `topic`, reconnecting with
/// `since` to whichever node answers, and records every id it receives.
struct Follower {
    ids: Arc<Mutex<Vec<String>>>,
    connects: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    fn start(nodes: Vec<SocketAddr>, first: usize, topic: &'static str, sub: String) -> Follower {
        let ids = Arc::new(Mutex::new(Vec::new()));
        let record = ids.clone();
        let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connects.clone();
        let task = tokio::spawn(async move {
            let mut node = first;
            loop {
                let url = format!(
                    "ws://{}/ws?token={}",
                    nodes[node % nodes.len()],
                    token(&sub, &[topic], &[])
                );
                node += 1;
                let Ok(Ok((mut ws, _))) =
                    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                use futures_util::{SinkExt, StreamExt};
                let since = record.lock().await.last().cloned();
                let mut frame = json!({"type": "subscribe", "ref": "s", "topics": [topic]});
                if let Some(since) = since {
                    frame["since"] = json!({ topic: since });
                }
                if ws
                    .send(tokio_tungstenite::tungstenite::Message::text(
                        frame.to_string(),
                    ))
                    .await
                    .is_err()
                {
                    continue;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    let Ok(text) = msg.to_text() else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(text) else {
                        continue;
                    };
                    match v["type"].as_str() {
                        Some("message") => record
                            .lock()
                            .await
                            .push(v["id"].as_str().unwrap_or_default().to_owned()),
                        Some("subscribed") => {
                            assert_ne!(v["recovered"][topic], json!(false), "recovery failed: {v}")
                        }
                        Some("error") => panic!("error frame: {v}"),
                        _ => {}
                    }
                }
                // The connection ended (its node died): go elsewhere.
            }
        });
        Follower {
            ids,
            connects,
            task,
        }
    }

    async fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ids = self.ids.lock().await.clone();
            if ids.len() >= n || tokio::time::Instant::now() > deadline {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn assert_exactly(client: usize, got: &[String], acked: &[String]) {
    if got != acked {
        let missing = acked.iter().filter(|id| !got.contains(id)).count();
        let mut seen = std::collections::HashSet::new();
        let duplicated = got.iter().filter(|id| !seen.insert(*id)).count();
        panic!(
            "client {client}: {} received vs {} acknowledged; {missing} missing, {duplicated} duplicated, order {}",
            got.len(),
            acked.len(),
            if got
                .windows(2)
                .all(|w| acked.iter().position(|a| a == &w[0])
                    < acked.iter().position(|a| a == &w[1]))
            {
                "kept"
            } else {
                "broken"
            }
        );
    }
}

/// The chaos test: three nodes, `herald-admin` and Redis; 30 clients spread
/// over the nodes; 3000 events at ~300/s; one node SIGKILLed midway. Every
/// client ends with every acknowledged id exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_node_killed_mid_stream_loses_nothing() {
    let redis = TestRedis::start();
    let nodes = GatewayProc::three(&redis.url()).await;
    let (_admin, admin) = admin_proc(&redis.url()).await;
    let publics: Vec<SocketAddr> = nodes.iter().map(|n| n.public).collect();
    let followers: Vec<Follower> = (0..30)
        .map(|i| Follower::start(publics.clone(), i % 3, "chaos", format!("c{i}")))
        .collect();
    // Everyone subscribed before the first event.
    eventually("30 subscriptions", async || {
        let (_, stats) = http(nodes[0].admin, "GET", "/v1/stats", Some(ADMIN_KEY), None).await;
        let nodes = stats["nodes"].as_array().cloned().unwrap_or_default();
        nodes
            .iter()
            .map(|n| n["subscriptions"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == 30
    })
    .await;

    let victim = &nodes[2];
    let acked = publish_paced(admin, "chaos", 3000, 300, || victim.proc.signal("KILL")).await;
    assert_eq!(acked.len(), 3000, "every publish was acknowledged");
    for (i, f) in followers.iter().enumerate() {
        let got = f.wait_for(acked.len()).await;
        assert_exactly(i, &got, &acked);
        let connects = f.connects.load(std::sync::atomic::Ordering::SeqCst);
        if i % 3 == 2 {
            assert!(
                connects >= 2,
                "client {i} was on the killed node and must have reconnected"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connection_loses_nothing() {
    let redis = TestRedis::start();
    let node = GatewayProc::start(&redis.url(), false, "n1").await;
    let followers: Vec<Follower> = (0..5)
        .map(|i| Follower::start(vec![node.public], 0, "blip", format!("c{i}")))
        .collect();
    eventually("5 subscriptions", async || {
        let (_, stats) = http(node.admin, "GET", "/v1/stats", Some(ADMIN_KEY), None).await;
        stats["nodes"][0]["subscriptions"] == 5
    })
    .await;
    let port = redis.port;
    let acked = publish_paced(node.admin, "blip", 1000, 500, move || {
        let killed = herald_testkit::redis_cli(port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(
            killed.trim().parse::<u32>().is_ok_and(|n| n >= 1),
            "killed {killed}"
        );
    })
    .await;
    assert_eq!(acked.len(), 1000);
    for (i, f) in followers.iter().enumerate() {
        assert_exactly(i, &f.wait_for(acked.len()).await, &acked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_reports_unrecovered_then_delivers() {
    let mut redis = TestRedis::start();
    let node = GatewayProc::start(&redis.url(), false, "n1").await;
    let mut c = node.client("alice", &["r"], &[]).await;
    c.subscribe(&["r"]).await;
    post(node.admin, "/v1/publish", json!({"topic": "r", "data": 1})).await;
    let last = c.recv().await["id"].as_str().unwrap().to_owned();
    drop(c);

    redis.restart();
    eventually("the node to be ready again", async || {
        http(node.admin, "GET", "/readyz", None, None).await.0 == 200
    })
    .await;
    let mut c = node.client("alice", &["r"], &[]).await;
    let (replayed, reply) = c.subscribe_since(&["r"], json!({"r": last})).await;
    assert!(replayed.is_empty());
    assert_eq!(
        reply["recovered"],
        json!({"r": false}),
        "history from before the restart is gone"
    );
    let (status, _) = post(node.admin, "/v1/publish", json!({"topic": "r", "data": 2})).await;
    assert_eq!(status, 200);
    assert_eq!(c.recv().await["data"], 2, "then live events again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_to_another_node_recovers_exactly() {
    let redis = TestRedis::start();
    let a = GatewayProc::start(&redis.url(), false, "a").await;
    let b = GatewayProc::start(&redis.url(), false, "b").await;
    let mut c = a.client("alice", &["news"], &[]).await;
    c.subscribe(&["news"]).await;
    post(a.admin, "/v1/publish", json!({"topic": "news", "data": 1})).await;
    let last = c.recv().await["id"].as_str().unwrap().to_owned();
    drop(c);
    for i in 2..=4 {
        post(b.admin, "/v1/publish", json!({"topic": "news", "data": i})).await;
    }
    let mut c = b.client("alice", &["news"], &[]).await;
    let (replayed, reply) = c.subscribe_since(&["news"], json!({"news": last})).await;
    assert_eq!(
        replayed
            .iter()
            .map(|m| m["data"].clone())
            .collect::<Vec<_>>(),
        vec![json!(2), json!(3), json!(4)]
    );
    assert_eq!(reply["recovered"], json!({"news": true}));
    post(a.admin, "/v1/publish", json!({"topic": "news", "data": 5})).await;
    assert_eq!(c.recv().await["data"], 5);
}
