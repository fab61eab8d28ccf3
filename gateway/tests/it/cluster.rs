//! Contract §1, §7, §8 in cluster mode, with real processes: three gateway
//! nodes and `herald-admin` around a `redis-server` (or a 3-master Redis
//! Cluster) started by the test, and node loss by SIGKILL.

use std::net::SocketAddr;
use std::time::Duration;

use herald_testkit::{Proc, TestCluster, TestRedis, addr_after, bin};
use serde_json::{Value, json};

use crate::common::*;

pub struct GatewayProc {
    pub proc: Proc,
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

impl GatewayProc {
    pub async fn start(redis_url: &str, cluster: bool, node_id: &str) -> GatewayProc {
        Self::start_env(redis_url, cluster, node_id, &[]).await
    }

    pub async fn start_env(
        redis_url: &str,
        cluster: bool,
        node_id: &str,
        env: &[(&str, &str)],
    ) -> GatewayProc {
        let mut cmd = gateway_cmd(redis_url, node_id);
        cmd.envs(env.iter().copied());
        if cluster {
            cmd.arg("--redis-cluster");
        }
        let mut proc = Proc::start(cmd);
        let line = proc.line_with("herald-gateway listening");
        let node = GatewayProc {
            public: addr_after(&line, "public="),
            admin: addr_after(&line, "admin="),
            proc,
        };
        wait_ready(node.admin).await;
        node
    }

    /// Nodes `n1`, `n2` and `n3` of a single-Redis cluster.
    pub async fn three(redis_url: &str) -> [GatewayProc; 3] {
        [
            Self::start(redis_url, false, "n1").await,
            Self::start(redis_url, false, "n2").await,
            Self::start(redis_url, false, "n3").await,
        ]
    }

    pub async fn client(&self, sub: &str, topics: &[&str], publish: &[&str]) -> Client {
        Client::connect(
            &format!("ws://{}/ws", self.public),
            &token(sub, topics, publish),
        )
        .await
    }
}

/// A node of a cluster on `redis_url`, listening on free loopback ports.
fn gateway_cmd(redis_url: &str, node_id: &str) -> std::process::Command {
    let mut cmd = bin("herald-gateway");
    cmd.args(["--redis-url", redis_url, "--node-id", node_id]);
    cmd.args(["--jwt-hs256-secret", SECRET, "--admin-api-keys", ADMIN_KEY]);
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    cmd
}

async fn wait_ready(admin: SocketAddr) {
    eventually("the node to be ready", async || {
        http(admin, "GET", "/readyz", None, None).await.0 == 200
    })
    .await;
}

pub async fn admin_proc(redis_url: &str) -> (Proc, SocketAddr) {
    admin_proc_env(redis_url, false, &[]).await
}

/// `herald-admin` on `redis_url` (a Cluster's seeds when `cluster`), with
/// extra environment.
pub async fn admin_proc_env(
    redis_url: &str,
    cluster: bool,
    env: &[(&str, &str)],
) -> (Proc, SocketAddr) {
    let mut cmd = bin("herald-admin");
    cmd.envs(env.iter().copied());
    if cluster {
        cmd.arg("--redis-cluster");
    }
    cmd.args([
        "--redis-url",
        redis_url,
        "--admin-api-keys",
        ADMIN_KEY,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let mut proc = Proc::start(cmd);
    let addr = addr_after(&proc.line_with("herald-admin listening"), "admin=");
    wait_ready(addr).await;
    (proc, addr)
}

pub async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    http(addr, "POST", path, Some(ADMIN_KEY), Some(body.to_string())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_from_anywhere_reach_every_node() {
    let redis = TestRedis::start();
    let nodes = GatewayProc::three(&redis.url()).await;
    let (_admin, admin) = admin_proc(&redis.url()).await;
    let mut talker = nodes[0].client("talker", &[], &["news"]).await;
    let mut readers = vec![
        nodes[1].client("r2", &["news"], &[]).await,
        nodes[2].client("r3", &["news"], &[]).await,
    ];
    for r in &mut readers {
        r.subscribe(&["news"]).await;
        assert_ne!(r.welcome["node"], "n1");
    }

    let (status, body) = post(
        admin,
        "/v1/publish",
        json!({"topic": "news", "data": "via herald-admin"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        nodes[0].admin,
        "/v1/publish",
        json!({"topic": "news", "data": "via node 1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reply = talker
        .call(json!({"type": "publish", "topic": "news", "data": "via a client"}))
        .await;
    assert_eq!(reply["type"], "published", "{reply}");

    for r in &mut readers {
        let got: Vec<Value> = vec![
            r.recv().await["data"].clone(),
            r.recv().await["data"].clone(),
            r.recv().await["data"].clone(),
        ];
        assert_eq!(
            got,
            vec![
                json!("via herald-admin"),
                json!("via node 1"),
                json!("via a client")
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_lists_live_nodes_and_drops_a_killed_one() {
    let redis = TestRedis::start();
    let mut nodes = Vec::from(GatewayProc::three(&redis.url()).await);
    let (_admin, admin) = admin_proc(&redis.url()).await;
    let mut c = nodes[1].client("alice", &["a", "b"], &[]).await;
    c.subscribe(&["a", "b"]).await;
    let stats = |want: usize| async move {
        let (status, stats) = http(admin, "GET", "/v1/stats", Some(ADMIN_KEY), None).await;
        status == 200 && stats["nodes"].as_array().is_some_and(|n| n.len() == want)
    };
    eventually("3 nodes in stats", async || stats(3).await).await;
    eventually("n2's counts", async || {
        let (_, s) = http(admin, "GET", "/v1/stats", Some(ADMIN_KEY), None).await;
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == &json!({"node": "n2", "connections": 1, "subscriptions": 2, "topics": 2}))
            && s["connections"] == 1
    })
    .await;

    let killed = nodes.remove(2);
    killed.proc.signal("KILL");
    let started = std::time::Instant::now();
    eventually("2 nodes in stats", async || stats(2).await).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "dropped out after {:?}",
        started.elapsed()
    );
    let (_, s) = http(admin, "GET", "/v1/stats", Some(ADMIN_KEY), None).await;
    let names: Vec<&str> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["n1", "n2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_reaches_every_node() {
    let redis = TestRedis::start();
    let nodes = GatewayProc::three(&redis.url()).await;
    let (_admin, admin) = admin_proc(&redis.url()).await;
    let mut a1 = nodes[0].client("alice", &[], &[]).await;
    let mut a2 = nodes[1].client("alice", &[], &[]).await;
    let mut bob = nodes[2].client("bob", &[], &[]).await;
    let (status, body) = post(admin, "/v1/disconnect", json!({"sub": "alice"})).await;
    assert_eq!((status, body), (200, json!({"disconnected": 2})));
    assert_eq!(a1.expect_close().await, 4003);
    assert_eq!(a2.expect_close().await, 4003);
    bob.assert_alive().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_503_then_a_lost_history_is_told() {
    let mut redis = TestRedis::start();
    let node = GatewayProc::start(&redis.url(), false, "n1").await;
    let mut c = node.client("alice", &["news"], &[]).await;
    c.subscribe(&["news"]).await;
    let (status, _) = post(
        node.admin,
        "/v1/publish",
        json!({"topic": "news", "data": 1}),
    )
    .await;
    assert_eq!(status, 200);
    let first = c.recv().await;
    assert_eq!(first["data"], 1);
    let last = first["id"].clone();

    redis.kill();
    let (status, body) = post(
        node.admin,
        "/v1/publish",
        json!({"topic": "news", "data": 2}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    eventually("/readyz to fail", async || {
        http(node.admin, "GET", "/readyz", None, None).await.0 == 503
    })
    .await;
    assert_eq!(http(node.public, "GET", "/readyz", None, None).await.0, 503);
    let (_, metrics) = http(node.admin, "GET", "/metrics", None, None).await;
    assert!(metrics.as_str().unwrap().contains("herald_broker_up 0"));
    c.assert_alive().await;

    redis.restart();
    wait_ready(node.admin).await;
    // Redis came back empty: whatever it had acknowledged and not yet sent
    // this node before it died is gone, and nothing proves there was
    // nothing. The session is told (1012) rather than left with a silent
    // gap (contract §10.8), and its recovery says recovered:false.
    assert_eq!(c.expect_close().await, 1012);
    let mut c = node.client("alice", &["news"], &[]).await;
    let (replayed, reply) = c.subscribe_since(&["news"], json!({"news": last})).await;
    assert!(replayed.is_empty());
    assert_eq!(reply["recovered"]["news"], false, "{reply}");
    let (status, body) = post(
        node.admin,
        "/v1/publish",
        json!({"topic": "news", "data": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.recv().await["data"], 3, "delivery resumes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_subscribes_each_topic_once_and_releases_it() {
    let redis = TestRedis::start();
    let node = GatewayProc::start(&redis.url(), false, "n1").await;
    let numsub = || {
        redis
            .cli(&["PUBSUB", "NUMSUB", "herald:{news}"])
            .lines()
            .nth(1)
            .unwrap_or("")
            .to_owned()
    };
    let mut a = node.client("a", &["news"], &[]).await;
    let mut b = node.client("b", &["news"], &[]).await;
    a.subscribe(&["news"]).await;
    b.subscribe(&["news"]).await;
    assert_eq!(
        numsub(),
        "1",
        "one Redis subscription per node, not per session"
    );
    a.call(json!({"type": "unsubscribe", "topics": ["news"]}))
        .await;
    assert_eq!(numsub(), "1");
    drop(b);
    eventually("the node to release the topic", async || numsub() == "0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_sharded_pubsub_across_nodes() {
    sharded_pubsub_across_nodes(&TestCluster::start(), &[]).await;
}

/// The same over `rediss://` seeds: nodes discovered through `CLUSTER SLOTS`
/// are reached over TLS too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_over_tls() {
    let ca = fixture("tls_ca.pem");
    let cluster = TestCluster::start_tls(&fixture("tls_cert.pem"), &fixture("tls_key.pem"), &ca);
    assert!(cluster.urls().starts_with("rediss://"));
    sharded_pubsub_across_nodes(&cluster, &[("SSL_CERT_FILE", ca.to_str().unwrap())]).await;
}

async fn sharded_pubsub_across_nodes(cluster: &TestCluster, env: &[(&str, &str)]) {
    let a = GatewayProc::start_env(&cluster.urls(), true, "a", env).await;
    let b = GatewayProc::start_env(&cluster.urls(), true, "b", env).await;
    let topics: Vec<String> = (0..50).map(|i| format!("shard.t{i}")).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut c = a.client("alice", &["shard.*"], &[]).await;
    c.subscribe(&names).await;
    // The topics really are spread over the three masters.
    let owners: std::collections::HashSet<u16> = topics
        .iter()
        .map(|t| cluster.owner_of(&format!("herald:{{{t}}}")).port)
        .collect();
    assert_eq!(owners.len(), 3, "50 topics should cover every shard");

    let messages: Vec<Value> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"topic": t, "data": i}))
        .collect();
    let (status, body) = post(b.admin, "/v1/publish/batch", json!({"messages": messages})).await;
    assert_eq!(status, 200, "{body}");
    let mut got: Vec<i64> = Vec::new();
    for _ in 0..50 {
        got.push(c.recv().await["data"].as_i64().unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (0..50).collect::<Vec<_>>());

    // Node a holds one sharded subscription per topic, on the owning shard;
    // after unsubscribing, none.
    let owner = cluster.owner_of("herald:{shard.t0}");
    assert_eq!(
        owner
            .cli(&["PUBSUB", "SHARDNUMSUB", "herald:{shard.t0}"])
            .lines()
            .nth(1),
        Some("1")
    );
    c.call(json!({"type": "unsubscribe", "topics": names}))
        .await;
    eventually("the shard subscription to go", async || {
        owner
            .cli(&["PUBSUB", "SHARDNUMSUB", "herald:{shard.t0}"])
            .lines()
            .nth(1)
            == Some("0")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_admin_drains_on_sigterm() {
    let redis = TestRedis::start();
    let (mut admin, addr) = admin_proc(&redis.url()).await;
    assert_eq!(http(addr, "GET", "/readyz", None, None).await.0, 200);
    admin.signal("TERM");
    assert_eq!(admin.wait_exit(), 0);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

/// A topic's slot migrates to another master while a session holds it: the
/// node sees Redis drop its sharded subscription, reads the slot map again,
/// subscribes on the new owner, catches up what it missed, and the session
/// receives every event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migration_moves_the_subscription() {
    let cluster = TestCluster::start();
    let node = GatewayProc::start(&cluster.urls(), true, "a").await;
    let mut c = node.client("alice", &["mig.>"], &[]).await;
    c.subscribe(&["mig.t"]).await;
    let channel = "herald:{mig.t}";
    let (status, _) = post(
        node.admin,
        "/v1/publish",
        json!({"topic": "mig.t", "data": 0}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(c.recv().await["data"], 0);

    let source = cluster.owner_of(channel);
    let target = cluster
        .nodes
        .iter()
        .find(|n| n.port != source.port)
        .unwrap();
    let slot = source
        .cli(&["CLUSTER", "KEYSLOT", channel])
        .trim()
        .to_owned();
    let source_id = source.cli(&["CLUSTER", "MYID"]).trim().to_owned();
    let target_id = target.cli(&["CLUSTER", "MYID"]).trim().to_owned();
    assert!(
        target
            .cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id])
            .contains("OK")
    );
    assert!(
        source
            .cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id])
            .contains("OK")
    );
    let keys = source.cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    if !keys.is_empty() {
        let port = target.port.to_string();
        let mut args = vec![
            "MIGRATE",
            "127.0.0.1",
            port.as_str(),
            "",
            "0",
            "5000",
            "KEYS",
        ];
        args.extend(keys.iter().copied());
        assert!(source.cli(&args).contains("OK"), "keys migrated");
    }
    for n in &cluster.nodes {
        assert!(
            n.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &target_id])
                .contains("OK")
        );
    }

    // Publish right away and for a while: whatever the node missed while
    // moving its subscription comes from history.
    for i in 1..=20 {
        let (status, body) = post(
            node.admin,
            "/v1/publish",
            json!({"topic": "mig.t", "data": i}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for i in 1..=20 {
        assert_eq!(c.recv().await["data"], i, "every event, once, in order");
    }
    eventually("the subscription to live on the new owner", async || {
        target
            .cli(&["PUBSUB", "SHARDNUMSUB", channel])
            .lines()
            .nth(1)
            == Some("1")
    })
    .await;
}

/// `rediss://`: the same cluster behaviour over TLS to Redis, trusting the
/// test CA through `SSL_CERT_FILE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_carries_publishes_and_subscriptions() {
    let redis = TestRedis::start_tls(
        &fixture("tls_cert.pem"),
        &fixture("tls_key.pem"),
        &fixture("tls_ca.pem"),
    );
    assert!(redis.url().starts_with("rediss://"));
    let ca = fixture("tls_ca.pem");
    let env = [("SSL_CERT_FILE", ca.to_str().unwrap())];
    let a = GatewayProc::start_env(&redis.url(), false, "a", &env).await;
    let b = GatewayProc::start_env(&redis.url(), false, "b", &env).await;
    let mut c = b.client("alice", &["secure"], &[]).await;
    c.subscribe(&["secure"]).await;
    let (status, body) = post(
        a.admin,
        "/v1/publish",
        json!({"topic": "secure", "data": "over tls"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.recv().await["data"], "over tls");
    assert_eq!(
        redis
            .cli(&["PUBSUB", "NUMSUB", "herald:{secure}"])
            .lines()
            .nth(1),
        Some("1")
    );
}

/// `rediss://` mistakes an operator can make: `#insecure` is refused at
/// start-up, naming the setting; a server whose certificate the node does
/// not trust keeps the node unready and says why at the default log level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_refuses_insecure_and_untrusted_servers() {
    let redis = TestRedis::start_tls(
        &fixture("tls_cert.pem"),
        &fixture("tls_key.pem"),
        &fixture("tls_ca.pem"),
    );
    let gateway = |url: String| {
        let mut cmd = gateway_cmd(&url, "a");
        // The system's roots do not include the test CA.
        cmd.env_remove("SSL_CERT_FILE");
        Proc::start(cmd)
    };

    let mut insecure = gateway(format!("{}/#insecure", redis.url()));
    let line = insecure.line_with("error");
    assert!(
        line.contains("redis_url") && line.contains("#insecure"),
        "{line}"
    );
    assert_eq!(insecure.wait_exit(), 1);

    let mut untrusted = gateway(redis.url());
    let admin = addr_after(&untrusted.line_with("herald-gateway listening"), "admin=");
    let warning = untrusted.line_with("redis pub/sub connect failed");
    assert!(
        warning.contains("certificate") || warning.contains("root"),
        "{warning}"
    );
    assert_eq!(http(admin, "GET", "/readyz", None, None).await.0, 503);
}
