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
        if want == 403 {
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
