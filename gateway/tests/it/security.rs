//! Least privilege and abuse (contract §2 `admin.keys`, `limits.*`; §8
//! scopes, 413): poison payloads from a client and from the admin API,
//! oversized admin bodies, and scoped admin keys.

use std::io::{Read, Write};
use std::time::Duration;

use herald_core::Secret;
use herald_core::config::{Scope, ScopedKey};
use herald_protocol::Permissions;
use serde_json::{Value, json};

use crate::common::*;

/// `data` nested `depth` arrays deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn deep_json_is_refused_and_harms_nobody() {
    let gw = TestGateway::spawn().await;
    let mut watcher = gw.client("watcher", &["chat.>"], &[]).await;
    watcher.subscribe(&["chat.deep"]).await;
    let mut writer = gw.client("writer", &["chat.>"], &["chat.>"]).await;
    // At the limit (32): delivered.
    let frame = format!(
        r#"{{"type":"publish","ref":"ok","topic":"chat.deep","data":{}}}"#,
        nested(32)
    );
    writer.send_raw(tungstenite_text(&frame)).await;
    let reply = writer.recv().await;
    assert_eq!(reply["type"], "published", "{reply}");
    let got = watcher.recv().await;
    assert_eq!(got["type"], "message");
    // One deeper, and far deeper (past any parser's recursion limit): refused.
    for (depth, r) in [(33, "d33"), (20_000, "d20k")] {
        let frame = format!(
            r#"{{"type":"publish","ref":"{r}","topic":"chat.deep","data":{}}}"#,
            nested(depth)
        );
        writer.send_raw(tungstenite_text(&frame)).await;
        let reply = writer.recv().await;
        assert_eq!(reply["type"], "error", "{depth}: {reply}");
        assert_eq!(reply["code"], "bad_request", "{depth}: {reply}");
    }
    // The admin API, the same.
    for (depth, status) in [(32, 200), (33, 400), (20_000, 400)] {
        let body = format!(r#"{{"topic":"chat.deep","data":{}}}"#, nested(depth));
        let (got, reply) = http(gw.admin, "POST", "/v1/publish", Some(ADMIN_KEY), Some(body)).await;
        assert_eq!(got, status, "{depth}: {reply}");
        if status == 400 {
            assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
        }
    }
    let got = watcher.recv().await;
    assert_eq!(got["type"], "message", "the admin's 32-deep event");
    watcher.expect_silence(Duration::from_millis(200)).await;
    writer.assert_alive().await;
    watcher.assert_alive().await;
}

fn tungstenite_text(s: &str) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::text(s.to_owned())
}

/// A 50 MB body gets its 413 with a body, as a client that sends it all
/// and then reads would see it, and the node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_admin_body_gets_413_not_a_reset() {
    let gw = TestGateway::spawn().await;
    let admin = gw.admin;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        let body = vec![b'a'; 50_000_000];
        let head = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).expect("the whole body is taken, not reset");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "too_large");
    let (status, _) = gw.admin("GET", "/v1/stats", None).await;
    assert_eq!(status, 200, "still serving");
}

fn scoped(name: &str, key: &str, scopes: &[Scope], topics: &[&str]) -> ScopedKey {
    ScopedKey {
        name: name.to_owned(),
        key: Secret::new(key),
        scopes: scopes.to_vec(),
        topics: Permissions::parse(topics.iter().copied()).unwrap(),
    }
}

#[tokio::test]
async fn each_admin_key_may_do_only_what_its_scopes_say() {
    let gw = TestGateway::spawn_with(|c| {
        c.presence.topics = Permissions::parse(["room.>"]).unwrap();
        c.admin.keys = vec![
            scoped(
                "ticks",
                "k-ticks-0123456789",
                &[Scope::Publish],
                &["stocks.>"],
            ),
            scoped(
                "reader",
                "k-reader-0123456789",
                &[Scope::History, Scope::Presence],
                &[],
            ),
            scoped(
                "ops",
                "k-ops-0123456789",
                &[Scope::Stats, Scope::Disconnect],
                &[],
            ),
        ];
    })
    .await;
    let call =
        |key: &'static str, method: &'static str, path: &'static str, body: Option<Value>| {
            let admin = gw.admin;
            async move { http(admin, method, path, Some(key), body.map(|b| b.to_string())).await }
        };
    let publish = |topic: &str| json!({"topic": topic, "data": 1});
    let batch = |topic: &str| json!({"messages": [{"topic": topic, "data": 1}]});
    let cases: Vec<(&str, &str, &str, Option<Value>, u16)> = vec![
        (
            "k-ticks-0123456789",
            "POST",
            "/v1/publish",
            Some(publish("stocks.AAPL")),
            200,
        ),
        (
            "k-ticks-0123456789",
            "POST",
            "/v1/publish/batch",
            Some(batch("stocks.MSFT")),
            200,
        ),
        (
            "k-ticks-0123456789",
            "POST",
            "/v1/publish",
            Some(publish("news")),
            403,
        ),
        (
            "k-ticks-0123456789",
            "POST",
            "/v1/publish/batch",
            Some(batch("news")),
            403,
        ),
        ("k-ticks-0123456789", "GET", "/v1/stats", None, 403),
        // Every method of a route holds its scope (contract §10.8): HEAD,
        // which axum answers with the GET handler, included.
        ("k-ticks-0123456789", "HEAD", "/v1/stats", None, 403),
        (
            "k-ticks-0123456789",
            "HEAD",
            "/v1/topics/stocks.AAPL/history",
            None,
            403,
        ),
        (
            "k-ticks-0123456789",
            "HEAD",
            "/v1/topics/room.a/presence",
            None,
            403,
        ),
        ("k-ops-0123456789", "HEAD", "/v1/stats", None, 200),
        (
            "k-ticks-0123456789",
            "GET",
            "/v1/topics/stocks.AAPL/history",
            None,
            403,
        ),
        (
            "k-ticks-0123456789",
            "POST",
            "/v1/disconnect",
            Some(json!({"sub": "a"})),
            403,
        ),
        (
            "k-reader-0123456789",
            "GET",
            "/v1/topics/stocks.AAPL/history",
            None,
            200,
        ),
        (
            "k-reader-0123456789",
            "GET",
            "/v1/topics/room.a/presence",
            None,
            200,
        ),
        (
            "k-reader-0123456789",
            "POST",
            "/v1/publish",
            Some(publish("stocks.AAPL")),
            403,
        ),
        ("k-reader-0123456789", "GET", "/v1/stats", None, 403),
        ("k-ops-0123456789", "GET", "/v1/stats", None, 200),
        (
            "k-ops-0123456789",
            "POST",
            "/v1/disconnect",
            Some(json!({"sub": "a"})),
            200,
        ),
        (
            "k-ops-0123456789",
            "GET",
            "/v1/topics/room.a/presence",
            None,
            403,
        ),
        // The plain list keeps every scope.
        (ADMIN_KEY, "POST", "/v1/publish", Some(publish("news")), 200),
        (ADMIN_KEY, "GET", "/v1/stats", None, 200),
        (ADMIN_KEY, "GET", "/v1/topics/room.a/presence", None, 200),
        ("not-a-key", "GET", "/v1/stats", None, 401),
    ];
    for (key, method, path, body, want) in cases {
        let (status, reply) = call(key, method, path, body.clone()).await;
        assert_eq!(status, want, "{key} {method} {path} {body:?}: {reply}");
        if want == 403 && method != "HEAD" {
            assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
            assert!(
                !reply.to_string().contains(key),
                "the key itself never appears: {reply}"
            );
        }
    }
    // Counted by key name, never by key.
    let m = gw.node.metrics.render();
    assert!(
        m.contains(
            r#"herald_admin_requests_total{key="ticks",route="/v1/publish",status="403"} 1"#
        ),
        "{m}"
    );
    assert!(m.contains(r#"key="api_keys#1""#), "{m}");
    assert!(m.contains(r#"key="unauthenticated",route="/v1/stats",status="401""#));
    assert!(!m.contains("k-ticks-0123456789"));
}

fn token_of(sub: &str, jti: Option<&str>, iat: u64) -> String {
    let mut c = claims(sub, &["news"], &[]);
    c["iat"] = json!(iat);
    if let Some(j) = jti {
        c["jti"] = json!(j);
    }
    token_with(c)
}

async fn refused_with(url: &str, token: &str) -> (u16, Value) {
    refused(ws_request(&format!("{url}?token={token}"))).await
}

#[tokio::test]
async fn revoked_tokens_are_closed_and_refused() {
    let gw = TestGateway::spawn().await;
    let url = gw.ws_url();
    let now = now_secs();
    let t1 = token_of("alice", Some("t1"), now - 10);
    let t2 = token_of("alice", Some("t2"), now - 10);
    let mut a1 = Client::connect(&url, &t1).await;
    let mut a2 = Client::connect(&url, &t2).await;
    let mut bob = Client::connect(&url, &token_of("bob", Some("t3"), now - 10)).await;

    let (status, reply) = gw
        .admin("POST", "/v1/revoke", Some(json!({"jti": "t1"})))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"revoked": true, "disconnected": 1}));
    assert_eq!(a1.expect_close().await, 4003);
    a2.assert_alive().await;
    let (status, body) = refused_with(&url, &t1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let reply = a2.call(json!({"type": "auth", "token": t1})).await;
    assert_eq!(
        reply["code"], "unauthorized",
        "a revoked token cannot be refreshed to: {reply}"
    );
    a2.assert_alive().await;

    // Every token of alice issued before the cutoff.
    let (status, reply) = gw
        .admin(
            "POST",
            "/v1/revoke",
            Some(json!({"sub": "alice", "issued_before": now - 5})),
        )
        .await;
    assert_eq!(
        (status, reply["disconnected"].as_u64()),
        (200, Some(1)),
        "{reply}"
    );
    assert_eq!(a2.expect_close().await, 4003);
    let (status, _) = refused_with(&url, &t2).await;
    assert_eq!(status, 401);
    let fresh = token_of("alice", Some("t4"), now);
    let mut again = Client::connect(&url, &fresh).await;
    again.assert_alive().await;
    bob.assert_alive().await;

    for bad in [
        json!({}),
        json!({"jti": ""}),
        json!({"jti": "x", "sub": "alice"}),
        json!({"sub": "alice"}),
        json!({"issued_before": 5}),
        json!({"jti": "x", "expire_at": null}),
        json!({"jti": "x", "expire_at": -1}),
        json!({"jti": null}),
        json!({"jti": "x", "extra": 1}),
        json!({"jti": "x".repeat(300)}),
        json!({"sub": "x", "issued_before": 2.5}),
    ] {
        let (status, reply) = gw.admin("POST", "/v1/revoke", Some(bad.clone())).await;
        assert_eq!(
            (status, reply["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    // An integer written as a float is an integer (JSON Schema): the
    // fuzzer's find of 2026-12 (issue 21), read exactly.
    for body in [
        r#"{"sub":"zed","issued_before":2251799813685247.0}"#,
        r#"{"sub":"zed","issued_before":5e3}"#,
    ] {
        let (status, reply) = http(
            gw.admin,
            "POST",
            "/v1/revoke",
            Some(ADMIN_KEY),
            Some(body.to_owned()),
        )
        .await;
        assert_eq!(status, 200, "{body}: {reply}");
    }
    bob.assert_alive().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_every_node_and_survive_a_restart() {
    use crate::cluster::{GatewayProc, admin_proc};
    let redis = herald_testkit::TestRedis::start();
    let url = redis.url();
    let nodes = GatewayProc::three(&url).await;
    let (_admin, admin) = admin_proc(&url).await;
    let now = now_secs();
    let stolen = token_of("mallory", Some("stolen-1"), now - 60);
    let ws = |n: &GatewayProc| format!("ws://{}/ws", n.public);
    let mut sessions = Vec::new();
    for n in &nodes {
        sessions.push(Client::connect(&ws(n), &stolen).await);
    }
    let started = tokio::time::Instant::now();
    let (status, reply) = http(
        admin,
        "POST",
        "/v1/revoke",
        Some(ADMIN_KEY),
        Some(json!({"jti": "stolen-1"}).to_string()),
    )
    .await;
    assert_eq!(
        (status, reply["disconnected"].as_u64()),
        (200, Some(3)),
        "{reply}"
    );
    for s in &mut sessions {
        assert_eq!(s.expect_close().await, 4003);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        started.elapsed()
    );
    for n in &nodes {
        let (status, _) = refused_with(&ws(n), &stolen).await;
        assert_eq!(status, 401, "refused on every node");
    }
    // A node started after the revocation refuses the token from its
    // first handshake.
    nodes[1].proc.signal("KILL");
    let restarted = GatewayProc::start(&url, false, "n2").await;
    let (status, _) = refused_with(&ws(&restarted), &stolen).await;
    assert_eq!(status, 401);
    let mut fine = Client::connect(&ws(&restarted), &token_of("mallory", Some("new"), now)).await;
    fine.assert_alive().await;
}

#[tokio::test]
async fn one_user_holds_at_most_the_limit_on_one_node() {
    let gw = TestGateway::spawn_with(|c| c.limits.max_connections_per_user = 2).await;
    let url = gw.ws_url();
    let alice = token("alice", &["news"], &[]);
    let a1 = Client::connect(&url, &alice).await;
    let mut a2 = Client::connect(&url, &alice).await;
    let (status, body) = refused_with(&url, &alice).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_connections")),
        "{body}"
    );
    let mut bob = Client::connect(&url, &token("bob", &["news"], &[])).await;
    bob.assert_alive().await;
    drop(a1);
    // The slot frees once the node has seen the close.
    let mut a3 = None;
    eventually("a slot to free", async || {
        match tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("{url}?token={alice}")),
        )
        .await
        {
            Ok(Ok((ws, _))) => {
                a3 = Some(ws);
                true
            }
            _ => false,
        }
    })
    .await;
    assert!(a3.is_some());
    a2.assert_alive().await;
    assert_eq!(
        gw.node
            .metrics
            .value(r#"herald_handshakes_total{result="too_many_connections"}"#),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_across_nodes_and_forgets_dead_ones() {
    use crate::cluster::GatewayProc;
    let redis = herald_testkit::TestRedis::start();
    let url = redis.url();
    let env = [
        ("HERALD_LIMITS__MAX_CONNECTIONS_PER_USER", "2"),
        ("HERALD_PRESENCE__TIMEOUT", "2s"),
    ];
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(GatewayProc::start_env(&url, false, id, &env).await);
    }
    let ws = |n: &GatewayProc| format!("ws://{}/ws", n.public);
    let alice = token("alice", &["news"], &[]);
    let _on_n1 = Client::connect(&ws(&nodes[0]), &alice).await;
    let on_n2 = Client::connect(&ws(&nodes[1]), &alice).await;
    for n in &nodes {
        let (status, body) = refused_with(&ws(n), &alice).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (429, Some("too_many_connections")),
            "{body}"
        );
    }
    let mut bob = Client::connect(&ws(&nodes[2]), &token("bob", &["news"], &[])).await;
    bob.assert_alive().await;
    // Closing one frees a slot, wherever the next one lands.
    drop(on_n2);
    let mut third = None;
    eventually(
        "the closed session to stop counting",
        async || match tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("{}?token={alice}", ws(&nodes[2]))),
        )
        .await
        {
            Ok(Ok((s, _))) => {
                third = Some(s);
                true
            }
            _ => false,
        },
    )
    .await;
    let (status, _) = refused_with(&ws(&nodes[1]), &alice).await;
    assert_eq!(status, 429, "full again");
    // n1 dies with one of alice's sessions: it stops counting within
    // presence.timeout.
    nodes[0].proc.signal("KILL");
    let killed = tokio::time::Instant::now();
    let mut fourth = None;
    eventually(
        "the dead node's session to stop counting",
        async || match tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("{}?token={alice}", ws(&nodes[1]))),
        )
        .await
        {
            Ok(Ok((s, _))) => {
                fourth = Some(s);
                true
            }
            _ => false,
        },
    )
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "after {:?}",
        killed.elapsed()
    );
    assert!(third.is_some() && fourth.is_some());
}
