//! Contract §10.8 against faults that combine and clients that do not play
//! fair, each case of issue 21 with real processes and a real
//! `redis-server`: a Redis write stall while a fresh topic is subscribed,
//! then a pub/sub blip; a stale sentinel listed first; a node started
//! while Redis is unreachable; per-user counts across a retried admission;
//! a thousand sockets that never send a byte; `replicated` durability with
//! a stalled replica; subscribing with `since` to many topics at once.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use herald_testkit::{
    Proc, Relay, StaleSentinel, TestRedis, TestReplicated, TestSentinels, addr_after, bin,
};
use serde_json::{Value, json};

use crate::cluster::{GatewayProc, admin_proc_env, post};
use crate::common::*;

/// Bound on a whole case.
const CASE: Duration = Duration::from_secs(60);

/// Reads frames until `n` messages arrived (returns their `data`), or the
/// server closes (returns the close code).
async fn messages(client: &mut Client, n: usize) -> Result<Vec<Value>, u16> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + CASE;
    while got.len() < n {
        let next = tokio::time::timeout_at(deadline, client.try_recv_or_close())
            .await
            .expect("the events or a close in time")?;
        if next["type"] == "message" {
            got.push(next["data"].clone());
        }
    }
    Ok(got)
}

/// A subscribe that the node may refuse for a while (Redis stalled): sent
/// again until `subscribed` comes back.
async fn subscribe_patiently(client: &mut Client, topic: &str) -> Value {
    let deadline = tokio::time::Instant::now() + CASE;
    loop {
        let reply = client
            .call(json!({"type": "subscribe", "topics": [topic]}))
            .await;
        if reply["type"] == "subscribed" {
            return reply;
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
    }
}

/// Issue 21's first case: Redis stops taking writes for longer than a
/// command may wait while a client subscribes to a fresh topic (the node
/// cannot read the topic's position, and its pub/sub path, whose probes are
/// writes, is rebuilt meanwhile); later the pub/sub path silently stops
/// delivering and comes back. The events published during that blip reach
/// the client, in order, or the client is told with 1012: never a silent
/// gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stall_then_a_pubsub_blip_is_never_a_silent_gap() {
    let redis = TestRedis::start();
    let relay = Relay::start(redis.port);
    let node = GatewayProc::start(&relay.url(), false, "n1").await;
    let (_admin_proc, admin) = admin_proc_env(&redis.url(), false, &[]).await;
    let mut client = node.client("u", &["cf.>"], &[]).await;
    // Longer than a Redis command may take (5 s): the first position read
    // fails and is retried.
    redis.cli(&["CLIENT", "PAUSE", "6000", "WRITE"]);
    let reply = subscribe_patiently(&mut client, "cf.fresh").await;
    let position = reply["positions"]["cf.fresh"].as_str().unwrap().to_owned();
    assert!(position.ends_with("-0"), "a fresh topic: {reply}");
    let publish = |n: u64| {
        post(
            admin,
            "/v1/publish",
            json!({"topic": "cf.fresh", "data": n}),
        )
    };
    assert_eq!(publish(1).await.0, 200);
    assert_eq!(messages(&mut client, 1).await, Ok(vec![json!(1)]));
    // The blip: nothing reaches the node's pub/sub connection meanwhile.
    relay.blackhole_pubsub(true);
    for n in 2..=4 {
        assert_eq!(publish(n).await.0, 200);
    }
    relay.blackhole_pubsub(false);
    eventually("the node to rebuild its pub/sub path", async || {
        http(node.admin, "GET", "/readyz", None, None).await.0 == 200
    })
    .await;
    assert_eq!(publish(5).await.0, 200);
    match messages(&mut client, 4).await {
        Ok(got) => assert_eq!(got, vec![json!(2), json!(3), json!(4), json!(5)]),
        // Told, not silent: a recovery from the last id says the truth.
        Err(code) => assert_eq!(code, 1012),
    }
}

/// Issue 21's second case: a sentinel listed first still names the primary
/// that died (it is cut off from the others, which promoted a replica).
/// Publishes succeed again once the others have failed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sentinel_listed_first_does_not_hide_the_new_primary() {
    let mut group = TestReplicated::start(1);
    let old = group.servers[0].port;
    let sentinels = TestSentinels::start(old, 1);
    let stale = StaleSentinel::start(old);
    let url = sentinels.url().replacen(
        "redis+sentinel://",
        &format!("redis+sentinel://{},", stale.host()),
        1,
    );
    let node = GatewayProc::start(&url, false, "n1").await;
    let body = json!({"topic": "cf.sentinel", "data": 1});
    assert_eq!(post(node.admin, "/v1/publish", body.clone()).await.0, 200);
    group.on_port(old).kill();
    sentinels.await_failover(old);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if post(node.admin, "/v1/publish", body.clone()).await.0 == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish succeeded 30 s after the failover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `herald-gateway` on `redis_url`, not waiting for it to be ready.
fn unready_node(redis_url: &str, env: &[(&str, &str)]) -> (Proc, SocketAddr, SocketAddr) {
    let mut cmd = bin("herald-gateway");
    cmd.envs(env.iter().copied());
    cmd.args(["--redis-url", redis_url, "--node-id", "late"]);
    cmd.args(["--jwt-hs256-secret", SECRET, "--admin-api-keys", ADMIN_KEY]);
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let mut proc = Proc::start(cmd);
    let line = proc.line_with("herald-gateway listening");
    (
        proc,
        addr_after(&line, "public="),
        addr_after(&line, "admin="),
    )
}

/// Issue 21's sixth case: a node started while Redis is unreachable has
/// not read the revocations, so it admits no token (503 with
/// `Retry-After`), and once it has, the revoked one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_admits_no_token_before_it_loaded_the_revocations() {
    let redis = TestRedis::start();
    let (_admin_proc, admin) = admin_proc_env(&redis.url(), false, &[]).await;
    let revoked = token_with(json!({
        "sub": "mallory", "exp": now_secs() + 3600, "iat": now_secs(),
        "jti": "stolen-1", "topics": ["news"],
    }));
    let (status, reply) = post(admin, "/v1/revoke", json!({"jti": "stolen-1"})).await;
    assert_eq!(status, 200, "{reply}");
    // Redis is unreachable for the new node: its relay leads nowhere.
    let relay = Relay::start(herald_testkit::free_port(false));
    let (_node, public, _) = unready_node(&relay.url(), &[]);
    let url = format!("ws://{public}/ws");
    for token in [revoked.as_str(), &token("alice", &["news"], &[])] {
        let request = ws_request(&format!("{url}?token={token}"));
        let (status, body) = refused(request).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable");
    }
    relay.set_target(redis.port);
    eventually("the node to load the revocations", async || {
        let request = ws_request(&format!("{url}?token={revoked}"));
        refused(request).await.0 == 401
    })
    .await;
    Client::connect(&url, &token("alice", &["news"], &[]))
        .await
        .assert_alive()
        .await;
}

/// Issue 21's per-user counts: an admission Redis runs late (it was paused
/// past a command's timeout, so the node's call is retried and both run)
/// counts the session once: after it ends, the user may hold as many
/// sessions as the limit says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_admission_does_not_count_a_session_twice() {
    let redis = TestRedis::start();
    let env = [("HERALD_LIMITS__MAX_CONNECTIONS_PER_USER", "2")];
    let node = GatewayProc::start_env(&redis.url(), false, "n1", &env).await;
    redis.cli(&["CLIENT", "PAUSE", "6500", "WRITE"]);
    // Admitted after ADMIT_WAIT (fail-open); the count is stored once the
    // pause ends, by the timed-out call and its retry.
    let first = node.client("alice", &["news"], &[]).await;
    eventually("the count to be stored", async || {
        !redis
            .cli(&["HGETALL", "herald:{herald-nodes}:user:alice"])
            .trim()
            .is_empty()
    })
    .await;
    drop(first);

    eventually("alice's session to end", async || {
        let (_, m) = http(node.admin, "GET", "/metrics", None, None).await;
        m.as_str().unwrap_or("").contains("herald_connections 0")
    })
    .await;
    let url = format!("ws://{}/ws", node.public);
    let alice = token("alice", &["news"], &[]);
    let mut a = Client::connect(&url, &alice).await;
    let mut b = Client::connect(&url, &alice).await;
    a.assert_alive().await;
    b.assert_alive().await;
    assert_refused(
        ws_request(&format!("{url}?token={alice}")),
        429,
        "too_many_connections",
    )
    .await;
}

/// Issue 21's fifth case, at the default `limits.max_pending_handshakes`:
/// 1,100 sockets from one address that never send a byte do not keep a
/// real client out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_sockets_do_not_lock_clients_out() {
    let gw = TestGateway::spawn().await;
    let mut idle = Vec::with_capacity(1100);
    for _ in 0..1100 {
        idle.push(tokio::net::TcpStream::connect(gw.public).await.unwrap());
    }
    eventually("the table to be full", async || {
        gw.node.metrics.value("herald_handshakes_pending") == Some(1024.0)
    })
    .await;
    for _ in 0..3 {
        gw.client("alice", &["news"], &[])
            .await
            .assert_alive()
            .await;
    }
    assert!(gw.node.metrics.value("herald_handshakes_evicted_total") >= Some(3.0));
    drop(idle);
}

/// Issue 21's third case, with processes: `replicated` durability and a
/// stalled replica. 400 publishes of 4 KB are all refused, Redis does not
/// grow, none of them ever reaches a subscriber, and a retry with the same
/// key once the replica is back delivers its event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_replicated_publishes_never_surface() {
    let group = TestReplicated::start(1);
    let env = [
        ("HERALD_PUBLISH__DURABILITY", "replicated"),
        ("HERALD_PUBLISH__REPLICATION_TIMEOUT", "20ms"),
        ("HERALD_HISTORY__SIZE", "50"),
    ];
    let url = group.servers[0].url();
    let node = GatewayProc::start_env(&url, false, "n1", &env).await;
    let (_admin_proc, admin) = admin_proc_env(&url, false, &env).await;
    let mut client = node.client("u", &["cf.repl"], &[]).await;
    client.subscribe(&["cf.repl"]).await;
    let number = |args: &[&str]| -> u64 { group.servers[0].cli(args).trim().parse().unwrap_or(0) };
    let keys_before = number(&["DBSIZE"]);
    group.servers[1].pause();
    let data = "x".repeat(4096);
    let statuses: Vec<u16> = futures_util::stream::iter(0..400)
        .map(|n| {
            let body = json!({"topic": "cf.repl", "data": format!("{data}{n}"), "idempotency_key": format!("k{n}")});
            async move { post(admin, "/v1/publish", body).await.0 }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    // The topic's history and keys do not grow (Redis's own replication
    // buffer for the stalled replica is bounded by its output buffer
    // limits, not by Herald).
    assert_eq!(
        number(&["XLEN", "herald:{cf.repl}:h"]),
        0,
        "nothing refused is kept"
    );
    let bytes = number(&["MEMORY", "USAGE", "herald:{cf.repl}:h"]);
    assert!(bytes < 16 * 1024, "the stream holds {bytes} bytes");
    let keys = number(&["DBSIZE"]);
    assert!(
        keys <= keys_before + 2,
        "{keys_before} keys then {keys}: no idempotency record kept"
    );

    group.servers[1].resume();
    let retry = json!({"topic": "cf.repl", "data": "again", "idempotency_key": "k7"});
    let deadline = tokio::time::Instant::now() + CASE;
    let id = loop {
        let (status, reply) = post(admin, "/v1/publish", retry.clone()).await;
        if status == 200 {
            break reply["results"][0]["id"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never confirmed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A repeat answers the same id, even when its own wait for the
    // replica misses (the event is visible already).
    assert_eq!(
        post(admin, "/v1/publish", retry).await.1["results"][0]["id"],
        id
    );
    let event = client.recv().await;
    assert_eq!(
        (event["data"].clone(), event["id"].clone()),
        (json!("again"), id)
    );
    client.expect_silence(Duration::from_millis(500)).await;
}

/// Issue 21's bounds: a `subscribe` with `since` for 256 topics, each with
/// a long history, never queues more replayed events for the session than
/// `limits.client_queue`; a topic whose replay does not fit answers
/// `recovered:false` rather than growing the queue, and the ones that fit
/// are replayed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_to_many_topics_stay_within_the_queue() {
    let gw = TestGateway::spawn_with(|c| {
        c.history.size = 40;
        c.limits.client_queue = 512;
    })
    .await;
    let topics: Vec<String> = (0..256).map(|i| format!("many.t{i}")).collect();
    let mut since = serde_json::Map::new();
    for t in &topics {
        let mut first = None;
        for n in 0..30 {
            let id = gw.publish(t, json!(n)).await;
            first.get_or_insert(id);
        }
        since.insert(t.clone(), json!(first.unwrap()));
    }
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut client = gw.client("u", &["many.>"], &[]).await;
    let (replayed, reply) = client.subscribe_since(&names, Value::Object(since)).await;
    assert!(replayed.len() <= 512, "{} replayed", replayed.len());
    let recovered = reply["recovered"].as_object().unwrap();
    let whole = recovered.values().filter(|v| **v == json!(true)).count();
    assert!(whole > 0 && whole < 256, "some fit, some do not: {whole}");
    assert_eq!(
        replayed.len(),
        whole * 29,
        "each recovered topic is replayed whole"
    );
    for t in &topics {
        assert!(reply["positions"][t].is_string(), "{t} is positioned");
    }
}

/// Issue 21's presence bounds: a topic with 50,000 members (stored
/// directly in Redis, as 50,000 sessions would) is read a page at a time,
/// each frame and each admin reply within `limits.max_message_size`, and
/// the pages cover every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_presence_is_read_in_bounded_pages() {
    let redis = TestRedis::start();
    let env = [("HERALD_PRESENCE__TOPICS", "big.>")];
    let node = GatewayProc::start_env(&redis.url(), false, "n1", &env).await;
    // 50,000 members of 5,000 users, as the join script stores them.
    let fill = r#"
        for i = 1, 50000 do
          local sub = 'user-' .. (i % 5000)
          local json = cjson.encode({sub = sub, session = 's' .. i, node = 'n9', since = 1767222000000 + i})
          redis.call('HSET', KEYS[1], 's' .. i, 'inc\n' .. json)
          redis.call('HINCRBY', KEYS[2], sub, 1)
        end
        return 1"#;
    redis.cli(&[
        "EVAL",
        fill,
        "2",
        "herald:{big.room}:p",
        "herald:{big.room}:pu",
    ]);
    let claims = json!({"sub": "watcher", "exp": now_secs() + 3600, "topics": ["big.>"], "presence": ["big.>"]});
    let mut client =
        Client::connect(&format!("ws://{}/ws", node.public), &token_with(claims)).await;
    let stats = client
        .call(json!({"type": "presence_stats", "topic": "big.room"}))
        .await;
    assert_eq!(
        (stats["count"].clone(), stats["users"].clone()),
        (json!(50000), json!(5000)),
        "{stats}"
    );
    let mut seen = std::collections::HashSet::new();
    let mut cursor = Value::Null;
    let mut pages = 0;
    loop {
        let mut ask = json!({"type": "presence", "topic": "big.room", "limit": 1000});
        if !cursor.is_null() {
            ask["cursor"] = cursor.clone();
        }
        let r = client.request(ask).await;
        let frame = client.ws().next().await.unwrap().unwrap();
        let text = frame.into_text().unwrap();
        assert!(text.len() <= 64 * 1024, "a frame of {} bytes", text.len());
        let page: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(page["ref"], json!(r), "{page}");
        assert_eq!(page["count"], 50000);
        let members = page["members"].as_array().unwrap();
        assert!(!members.is_empty() && members.len() <= 1000);
        seen.extend(
            members
                .iter()
                .map(|m| m["session"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        assert!(pages < 1000, "the walk ends");
        cursor = page["next_cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    assert_eq!(seen.len(), 50000, "every member, in {pages} pages");
    let (status, _, body) = http_raw(
        node.admin,
        "GET",
        "/v1/topics/big.room/presence?limit=1000",
        Some(ADMIN_KEY),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.len() <= 64 * 1024,
        "an admin reply of {} bytes",
        body.len()
    );
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (page["count"].clone(), page["users"].clone()),
        (json!(50000), json!(5000))
    );
    assert!(page["next_cursor"].is_string());
    let bad = client
        .call(json!({"type": "presence", "topic": "big.room", "cursor": "nonsense"}))
        .await;
    assert_eq!(
        (bad["type"].clone(), bad["code"].clone()),
        (json!("error"), json!("bad_request")),
        "{bad}"
    );
    client.assert_alive().await;
}
