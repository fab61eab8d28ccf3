//! Redis high availability with real processes (contract §5, §7, §8): three
//! sentinels with a primary and two replicas, a Redis Cluster with a replica
//! per master, a managed endpoint whose address moves to a replica that
//! missed the last writes, a pub/sub path that silently stops delivering,
//! and idempotent publishes from several nodes.
//!
//! Clients follow their topics across reconnects and recover with `since`;
//! a publisher sends a steady stream through `herald-admin`, retrying every
//! refused publish with the same `idempotency_key` until it is
//! acknowledged. The checks:
//! - `durability = replicated`: every acknowledged event reaches every
//!   client exactly once, in order, and every recovery succeeds;
//! - `durability = leader`: no id is ever given to two events, and every
//!   client either has every acknowledged event, in order, or was told
//!   `recovered:false` for that topic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_testkit::{Relay, TestCluster, TestRedis, TestReplicated, TestSentinels};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{GatewayProc, admin_proc_env, post};
use crate::common::*;

/// How long a follower waits in silence, once told to stop, before it
/// reports what it saw.
const SETTLE: Duration = Duration::from_secs(3);
/// Bound on a whole scenario.
const SCENARIO: Duration = Duration::from_secs(90);

/// What one client saw.
#[derive(Default, Debug)]
struct Seen {
    /// Per topic: `(id, n)` in arrival order.
    events: BTreeMap<String, Vec<(String, u64)>>,
    /// Per topic: every `recovered` flag it was told.
    recovered: BTreeMap<String, Vec<bool>>,
    closes: Vec<u16>,
    connects: u32,
    /// Refused subscribes (retried, as a client would).
    errors: Vec<String>,
}

/// A client of `topics` that connects to `urls` in turn, recovers with
/// `since` after every close, and reports once `stop` is set and nothing
/// arrived for [`SETTLE`].
fn follow(
    urls: Vec<String>,
    topics: Vec<String>,
    mut stop: watch::Receiver<bool>,
    subscribed: mpsc::UnboundedSender<()>,
) -> JoinHandle<Seen> {
    tokio::spawn(async move {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let token = token("follower", &names, &[]);
        let mut seen = Seen::default();
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + SCENARIO;
        let mut attempt = 0usize;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "follower ran out of time"
            );
            let url = format!("{}?token={token}", urls[attempt % urls.len()]);
            attempt += 1;
            let Ok(Ok((mut ws, _))) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::connect_async(url),
            )
            .await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            seen.connects += 1;
            let since: serde_json::Map<String, Value> =
                last.iter().map(|(t, id)| (t.clone(), json!(id))).collect();
            let frame = json!({"type": "subscribe", "ref": "s", "topics": topics, "since": since});
            if ws.send(Message::text(frame.to_string())).await.is_err() {
                continue;
            }
            loop {
                let wait = if *stop.borrow() {
                    SETTLE
                } else {
                    Duration::from_secs(30)
                };
                let next = tokio::select! {
                    next = tokio::time::timeout(wait, ws.next()) => next,
                    _ = stop.changed() => continue,
                };
                match next {
                    Err(_) if *stop.borrow() => return seen,
                    Err(_) => panic!("a follower heard nothing for {wait:?}"),
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let f: Value = serde_json::from_str(&t).unwrap();
                        match f["type"].as_str() {
                            Some("message") => {
                                let topic = f["topic"].as_str().unwrap().to_owned();
                                let id = f["id"].as_str().unwrap().to_owned();
                                let n = f["data"]["n"].as_u64().unwrap();
                                last.insert(topic.clone(), id.clone());
                                seen.events.entry(topic).or_default().push((id, n));
                            }
                            Some("error") if f["ref"] == "s" => {
                                // The node could not subscribe yet (Redis
                                // between primaries): retry, as a client does.
                                seen.errors
                                    .push(f["code"].as_str().unwrap_or("?").to_owned());
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                let since: serde_json::Map<String, Value> =
                                    last.iter().map(|(t, id)| (t.clone(), json!(id))).collect();
                                let again = json!({"type": "subscribe", "ref": "s", "topics": topics, "since": since});
                                if ws.send(Message::text(again.to_string())).await.is_err() {
                                    break;
                                }
                            }
                            Some("subscribed") => {
                                let _ = subscribed.send(());
                                if let Some(r) = f["recovered"].as_object() {
                                    for (t, ok) in r {
                                        seen.recovered
                                            .entry(t.clone())
                                            .or_default()
                                            .push(ok.as_bool().unwrap());
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    Ok(Some(Ok(Message::Close(frame)))) => {
                        seen.closes.push(frame.map_or(1005, |f| u16::from(f.code)));
                        break;
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(_)) | None) => break,
                }
            }
        }
    })
}

/// Waits (at most 30 s) for one more follower's `subscribed`.
async fn await_subscribed(subscribed: &mut mpsc::UnboundedReceiver<()>) {
    tokio::time::timeout(Duration::from_secs(30), subscribed.recv())
        .await
        .expect("a follower subscribes within 30 s")
        .expect("followers are running");
}

/// Acknowledged publications: `(topic, n, id)` in acknowledgement order.
type Acked = Vec<(String, u64, String)>;

/// Publishes `count` events to each topic through `admin`, one at a time,
/// each retried with its idempotency key until acknowledged. `progress`
/// counts the rounds done. Fails with the event that was never
/// acknowledged (the scenario then shows the services' logs).
fn publish_steadily(
    admin: SocketAddr,
    topics: Vec<String>,
    count: u64,
    progress: watch::Sender<u64>,
) -> JoinHandle<Result<Acked, String>> {
    tokio::spawn(async move {
        let mut acked = Acked::new();
        let deadline = tokio::time::Instant::now() + SCENARIO;
        for n in 0..count {
            for topic in &topics {
                loop {
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!("{topic} #{n} was never acknowledged"));
                    }
                    let body = json!({"topic": topic, "data": {"n": n}, "idempotency_key": format!("{topic}-{n}")});
                    let answer = tokio::time::timeout(
                        Duration::from_secs(10),
                        try_post(admin, "/v1/publish", &body),
                    )
                    .await;
                    if let Ok(Some((200, reply))) = answer {
                        let id = reply["results"][0]["id"].as_str().unwrap().to_owned();
                        acked.push((topic.clone(), n, id));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            progress.send_replace(n + 1);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        Ok(acked)
    })
}

/// A POST that reports a failed connection instead of panicking (the
/// service may be between two Redis primaries, or restarting).
async fn try_post(addr: SocketAddr, path: &str, body: &Value) -> Option<(u16, Value)> {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = http::Request::post(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .ok()?;
    let response = sender.send_request(req).await.ok()?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

async fn rounds_done(progress: &mut watch::Receiver<u64>, n: u64) {
    tokio::time::timeout(SCENARIO, progress.wait_for(|done| *done >= n))
        .await
        .expect("the publisher made progress")
        .expect("the publisher is running");
}

/// What a durability level promises, checked against what was seen.
fn check(durability: &str, topics: &[String], acked: &Acked, clients: &[Seen]) {
    // No id is ever given to two events (leader and replicated alike).
    let mut owner: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    let everything = acked
        .iter()
        .map(|(t, n, id)| (t.as_str(), *n, id.as_str()))
        .chain(clients.iter().flat_map(|c| {
            c.events
                .iter()
                .flat_map(|(t, evs)| evs.iter().map(move |(id, n)| (t.as_str(), *n, id.as_str())))
        }));
    for (topic, n, id) in everything {
        let prior = *owner.entry(id).or_insert((topic, n));
        assert_eq!(prior, (topic, n), "id {id} was given to two events");
    }
    for topic in topics {
        let want: Vec<u64> = acked
            .iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, n, _)| *n)
            .collect();
        for (i, c) in clients.iter().enumerate() {
            let got: Vec<u64> = c
                .events
                .get(topic)
                .map(|evs| evs.iter().map(|(_, n)| *n).collect())
                .unwrap_or_default();
            let told_false = c.recovered.get(topic).is_some_and(|r| r.contains(&false));
            match durability {
                "replicated" => {
                    assert_eq!(
                        got, want,
                        "client {i}, {topic}: every acknowledged event once, in order"
                    );
                    assert!(
                        !told_false,
                        "client {i}, {topic}: a recovery failed: {:?}",
                        c.recovered
                    );
                }
                _ => assert!(
                    got == want || told_false,
                    "client {i}, {topic}: events missing without recovered:false\n got {got:?}\nwant {want:?}"
                ),
            }
        }
    }
}

/// Three gateways and `herald-admin` on `url` with `durability`, a
/// follower on each gateway, and a publisher; `fail` runs once a third of
/// the events are acknowledged.
async fn scenario(url: &str, cluster: bool, durability: &str, fail: impl AsyncFnOnce()) {
    let env = [("HERALD_PUBLISH__DURABILITY", durability)];
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(GatewayProc::start_env(url, cluster, id, &env).await);
    }
    let (mut admin_proc, admin) = admin_proc_env(url, cluster, &env).await;
    let topics: Vec<String> = (0..3).map(|i| format!("ha.t{i}")).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    let followers: Vec<JoinHandle<Seen>> = nodes
        .iter()
        .map(|n| {
            let urls: Vec<String> = std::iter::once(n.public)
                .chain(nodes.iter().map(|m| m.public))
                .map(|a| format!("ws://{a}/ws"))
                .collect();
            follow(urls, topics.clone(), stop_rx.clone(), subscribed_tx.clone())
        })
        .collect();
    // Every follower subscribed before the first event.
    for _ in &followers {
        await_subscribed(&mut subscribed).await;
    }
    let (progress_tx, mut progress) = watch::channel(0);
    let publisher = publish_steadily(admin, topics.clone(), 90, progress_tx);
    rounds_done(&mut progress, 30).await;
    fail().await;
    let published = publisher.await.unwrap();
    stop_tx.send_replace(true);
    let mut clients = Vec::new();
    if published.is_ok() {
        for f in followers {
            clients.push(f.await.unwrap());
        }
    }
    // The verdict, with the services' logs when it fails.
    let verdict = published.and_then(|acked| {
        std::panic::catch_unwind(|| check(durability, &topics, &acked, &clients)).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "the check failed".to_owned())
        })
    });
    if verdict.is_err() || std::env::var_os("HERALD_HA_LOGS").is_some() {
        admin_proc.signal("TERM");
        for line in admin_proc.drain_lines() {
            eprintln!("admin: {line}");
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            n.proc.signal("TERM");
            for line in n.proc.drain_lines() {
                eprintln!("n{}: {line}", i + 1);
            }
        }
        for (i, c) in clients.iter().enumerate() {
            eprintln!(
                "client {i}: connects {}, closes {:?}, errors {:?}, recovered {:?}",
                c.connects, c.closes, c.errors, c.recovered
            );
        }
    }
    verdict.unwrap_or_else(|e| panic!("{e}"));
}

async fn sentinel_failover(durability: &str) {
    let mut group = TestReplicated::start(2);
    let sentinels = TestSentinels::start(group.servers[0].port, 2);
    let url = sentinels.url();
    let old = group.servers[0].port;
    scenario(&url, false, durability, async || {
        group.on_port(old).kill();
        sentinels.await_failover(old);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_replicated_loses_nothing() {
    sentinel_failover("replicated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_leader_never_reuses_ids() {
    sentinel_failover("leader").await;
}

async fn cluster_failover(durability: &str) {
    let mut cluster = TestCluster::start_with_replicas();
    let url = cluster.urls();
    let owner = cluster.owner_port("herald:{ha.t0}").unwrap();
    scenario(&url, true, durability, async || {
        cluster.node(owner).kill();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while cluster
            .owner_port("herald:{ha.t0}")
            .is_none_or(|p| p == owner)
        {
            assert!(std::time::Instant::now() < deadline, "no replica took over");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The old master comes back (empty) and rejoins as the new one's
        // replica, so a replicated publish can be confirmed again.
        cluster.node(owner).restart();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_replicated_loses_nothing() {
    cluster_failover("replicated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_leader_never_reuses_ids() {
    cluster_failover("leader").await;
}

/// The managed-endpoint case: no sentinel, an address that moves. The
/// replica stops replicating (as if cut off), so it misses the primary's
/// last writes; then the primary dies and the address points at the
/// replica, promoted.
async fn endpoint_moves(durability: &str) {
    let mut group = TestReplicated::start(2);
    let relay = Relay::start(group.servers[0].port);
    let url = relay.url();
    scenario(&url, false, durability, async || {
        // The first replica is cut off and promoted; the second follows it.
        let promoted = group.servers[1].port;
        group.servers[1].cli(&["REPLICAOF", "NO", "ONE"]);
        group.servers[2].cli(&["REPLICAOF", "127.0.0.1", &promoted.to_string()]);
        // The old primary goes on acknowledging (leader: the promoted one
        // misses these) or refusing (replicated: no replica left) a moment…
        tokio::time::sleep(Duration::from_millis(700)).await;
        group.servers[0].kill();
        relay.set_target(promoted);
        relay.cut();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_endpoint_replicated_loses_nothing() {
    endpoint_moves("replicated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_endpoint_leader_never_reuses_ids() {
    endpoint_moves("leader").await;
}

async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (_, _, body) = http_raw(admin, "GET", "/metrics", None, None).await;
    String::from_utf8_lossy(&body).lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn readiness(node: &GatewayProc) -> u16 {
    http(node.admin, "GET", "/readyz", None, None).await.0
}

/// A pub/sub path that accepts commands but stops delivering: within the
/// probe's bound the node is not ready, and once the path works again it is
/// rebuilt and every acknowledged event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_pubsub_path_is_detected_and_rebuilt() {
    let redis = TestRedis::start();
    let relay = Relay::start(redis.port);
    let mut node = GatewayProc::start(&relay.url(), false, "n1").await;
    let topics = vec!["ha.silent".to_owned()];
    let (stop_tx, stop_rx) = watch::channel(false);
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    let follower = follow(
        vec![format!("ws://{}/ws", node.public)],
        topics.clone(),
        stop_rx,
        subscribed_tx,
    );
    await_subscribed(&mut subscribed).await;
    relay.blackhole_pubsub(true);
    let started = tokio::time::Instant::now();
    eventually("the node to notice its pub/sub path is dead", async || {
        readiness(&node).await == 503
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "noticed after {:?}",
        started.elapsed()
    );
    assert_eq!(metric(node.admin, "herald_broker_up").await, Some(0.0));
    // Publishes still go through Redis meanwhile; they must not be lost.
    let mut acked = Acked::new();
    for n in 0..10 {
        let (status, reply) = post(
            node.admin,
            "/v1/publish",
            json!({"topic": "ha.silent", "data": {"n": n}}),
        )
        .await;
        assert_eq!(status, 200, "{reply}");
        acked.push((
            "ha.silent".to_owned(),
            n,
            reply["results"][0]["id"].as_str().unwrap().to_owned(),
        ));
    }
    relay.blackhole_pubsub(false);
    eventually("the node to rebuild its pub/sub path", async || {
        readiness(&node).await == 200
    })
    .await;
    stop_tx.send_replace(true);
    let seen = follower.await.unwrap();
    let got = seen.events.get("ha.silent").map_or(0, Vec::len);
    if got != acked.len() {
        eprintln!("follower: {seen:?}");
        node.proc.signal("TERM");
        for line in node.proc.drain_lines() {
            eprintln!("n1: {line}");
        }
    }
    check("replicated", &topics, &acked, &[seen]);
    assert!(
        metric(node.admin, "herald_pubsub_probe_seconds_count")
            .await
            .unwrap_or(0.0)
            > 0.0
    );
}

/// Redis paused with SIGSTOP: it keeps its sockets and answers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_makes_the_node_unready_then_delivery_resumes() {
    let redis = TestRedis::start();
    let node = GatewayProc::start(&redis.url(), false, "n1").await;
    let mut client = node.client("u", &["ha.pause"], &[]).await;
    client.subscribe(&["ha.pause"]).await;
    redis.pause();
    let started = tokio::time::Instant::now();
    eventually("the node to be unready", async || {
        readiness(&node).await == 503
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "noticed after {:?}",
        started.elapsed()
    );
    let (status, _) = post(
        node.admin,
        "/v1/publish",
        json!({"topic": "ha.pause", "data": {"n": 0}}),
    )
    .await;
    assert_eq!(status, 503, "nothing is acknowledged while Redis is paused");
    redis.resume();
    eventually("the node to be ready again", async || {
        readiness(&node).await == 200
    })
    .await;
    let (status, reply) = post(
        node.admin,
        "/v1/publish",
        json!({"topic": "ha.pause", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let event = client.recv().await;
    assert_eq!(event["data"]["n"], 1, "{event}");
}

/// The same key twice, concurrently, through two nodes; and repeated in a
/// batch: one event each time, and every caller gets its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publishes_across_nodes() {
    let redis = TestRedis::start();
    let [a, b, _c] = GatewayProc::three(&redis.url()).await;
    let mut client = a.client("u", &["ha.idem"], &[]).await;
    client.subscribe(&["ha.idem"]).await;
    let body = |n: u64| json!({"topic": "ha.idem", "data": {"n": n}, "idempotency_key": "order-1"});
    let (ra, rb) = tokio::join!(
        post(a.admin, "/v1/publish", body(1)),
        post(b.admin, "/v1/publish", body(2))
    );
    assert_eq!((ra.0, rb.0), (200, 200));
    assert_eq!(
        ra.1["results"], rb.1["results"],
        "both callers get the one id"
    );
    let batch = json!({"messages": [
        {"topic": "ha.idem", "data": {"n": 3}, "idempotency_key": "order-2"},
        {"topic": "ha.idem", "data": {"n": 4}, "idempotency_key": "order-2"},
        {"topic": "ha.idem", "data": {"n": 5}, "idempotency_key": "order-1"},
    ]});
    let (status, reply) = post(b.admin, "/v1/publish/batch", batch).await;
    assert_eq!(status, 200, "{reply}");
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results[0], results[1]);
    assert_eq!(results[2], ra.1["results"][0]);
    let first = client.recv().await;
    let second = client.recv().await;
    assert_eq!(first["id"], ra.1["results"][0]["id"]);
    assert_eq!(second["id"], results[0]["id"]);
    client.expect_silence(Duration::from_millis(500)).await;
    let (status, reply) = post(
        a.admin,
        "/v1/publish",
        json!({"topic": "ha.idem", "data": 1, "idempotency_key": "k".repeat(65)}),
    )
    .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}
