//! Contract §5: every client frame, its reply, every error code, and
//! delivery.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn subscribe_then_receive_admin_publishes() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &["news", "stocks.*"], &[]).await;
    let reply = c
        .call(json!({"type": "subscribe", "topics": ["news", "stocks.AAPL"]}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["topics"], json!(["news", "stocks.AAPL"]));
    assert!(reply.get("recovered").is_none());

    let (status, body) = gw
        .admin(
            "POST",
            "/v1/publish",
            Some(json!({"topic": "stocks.AAPL", "data": {"price": 189.21}, "event": "tick"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["results"][0]["id"].as_str().unwrap();
    let m = c.recv().await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["topic"], "stocks.AAPL");
    assert_eq!(m["id"], id);
    assert_eq!(m["event"], "tick");
    assert_eq!(m["data"], json!({"price": 189.21}));
    let ts = m["ts"].as_u64().unwrap();
    assert!(
        ts.abs_diff(now_secs() * 1000) < 60_000,
        "ts is the publish time in ms"
    );

    gw.publish("news", json!("plain")).await;
    let m = c.recv().await;
    assert_eq!(
        (m["topic"].as_str(), m.get("event")),
        (Some("news"), None),
        "no event when none was set: {m}"
    );
}

#[tokio::test]
async fn subscribe_is_all_or_nothing() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &["news", "marker"], &[]).await;
    // One forbidden topic: nothing subscribed.
    let reply = c
        .call(json!({"type": "subscribe", "topics": ["news", "secret"]}))
        .await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{reply}"
    );
    assert_eq!(reply["topic"], "secret");
    // One invalid topic (and a forbidden one): invalid_topic wins, nothing subscribed.
    let reply = c
        .call(json!({"type": "subscribe", "topics": ["news", "secret", "bad..topic"]}))
        .await;
    assert_eq!(reply["code"], "invalid_topic", "{reply}");
    assert_eq!(reply["topic"], "bad..topic");
    // An empty topic is invalid.
    let reply = c.call(json!({"type": "subscribe", "topics": [""]})).await;
    assert_eq!(reply["code"], "invalid_topic", "{reply}");

    c.subscribe(&["marker"]).await;
    gw.publish("news", json!(1)).await;
    gw.publish("marker", json!(2)).await;
    let m = c.recv().await;
    assert_eq!(
        m["topic"], "marker",
        "news must not have been subscribed: {m}"
    );
    assert_eq!(
        gw.node
            .hub
            .registry()
            .subscriber_count(&herald_protocol::Topic::new("news").unwrap()),
        0
    );
}

#[tokio::test]
async fn permission_patterns() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &["stocks.*", "chat.>"], &[]).await;
    for (topic, allowed) in [
        ("stocks.AAPL", true),
        ("stocks.AAPL.bid", false),
        ("stocks", false),
        ("chat.a", true),
        ("chat.a.b", true),
        ("chat", false),
        ("news", false),
    ] {
        let reply = c
            .call(json!({"type": "subscribe", "topics": [topic]}))
            .await;
        let expected = if allowed { "subscribed" } else { "error" };
        assert_eq!(reply["type"], expected, "{topic}: {reply}");
        if !allowed {
            assert_eq!(reply["code"], "forbidden", "{topic}");
        }
    }
}

#[tokio::test]
async fn too_many_subscriptions() {
    let gw = TestGateway::spawn_with(|c| c.limits.max_subscriptions = 2).await;
    let mut c = gw.client("alice", &[">"], &[]).await;
    c.subscribe(&["a", "b"]).await;
    // Re-subscribing held topics does not count twice.
    c.subscribe(&["a", "b"]).await;
    let reply = c.call(json!({"type": "subscribe", "topics": ["c"]})).await;
    assert_eq!(reply["code"], "too_many_subscriptions", "{reply}");
    let reply = c
        .call(json!({"type": "unsubscribe", "topics": ["a"]}))
        .await;
    assert_eq!(reply["type"], "unsubscribed");
    c.subscribe(&["c"]).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &[">"], &[]).await;
    c.subscribe(&["news", "marker"]).await;
    let reply = c
        .call(json!({"type": "unsubscribe", "topics": ["news", "never-subscribed"]}))
        .await;
    assert_eq!(
        reply["type"], "unsubscribed",
        "not subscribed is not an error"
    );
    assert_eq!(reply["topics"], json!(["news", "never-subscribed"]));
    gw.publish("news", json!(1)).await;
    gw.publish("marker", json!(2)).await;
    assert_eq!(c.recv().await["topic"], "marker");
    let reply = c
        .call(json!({"type": "unsubscribe", "topics": ["no..pe"]}))
        .await;
    assert_eq!(reply["code"], "invalid_topic");
}

#[tokio::test]
async fn double_subscribe_never_doubles_delivery() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &["news", "marker"], &[]).await;
    c.subscribe(&["news"]).await;
    c.subscribe(&["news", "news"]).await;
    c.subscribe(&["marker"]).await;
    gw.publish("news", json!(1)).await;
    gw.publish("marker", json!(2)).await;
    assert_eq!(c.recv().await["topic"], "news");
    assert_eq!(c.recv().await["topic"], "marker", "news arrived twice");
}

#[tokio::test]
async fn client_publish_reaches_subscribers_and_self() {
    let gw = TestGateway::spawn().await;
    let mut alice = gw.client("alice", &["chat.>"], &["chat.>"]).await;
    let mut bob = gw.client("bob", &["chat.>"], &[]).await;
    alice.subscribe(&["chat.room-1"]).await;
    bob.subscribe(&["chat.room-1"]).await;
    let r = alice
        .request(json!({"type": "publish", "topic": "chat.room-1", "data": {"text": "hi"}, "event": "line"}))
        .await;
    // The publisher's own copy may arrive before or after the reply.
    let (first, second) = (alice.recv().await, alice.recv().await);
    let (reply, own) = if first["type"] == "published" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(
        (reply["type"].as_str(), reply["ref"].as_str()),
        (Some("published"), Some(r.as_str())),
        "{reply}"
    );
    assert_eq!(reply["topic"], "chat.room-1");
    let id = reply["id"].clone();
    let theirs = bob.recv().await;
    for m in [own, theirs] {
        assert_eq!(
            (m["id"].clone(), m["data"].clone(), m["event"].clone()),
            (id.clone(), json!({"text": "hi"}), json!("line"))
        );
    }
    // Bob may not publish.
    let reply = bob
        .call(json!({"type": "publish", "topic": "chat.room-1", "data": 1}))
        .await;
    assert_eq!(
        (reply["code"].as_str(), reply["topic"].as_str()),
        (Some("forbidden"), Some("chat.room-1"))
    );
    let reply = alice
        .call(json!({"type": "publish", "topic": "chat..x", "data": 1}))
        .await;
    assert_eq!(reply["code"], "invalid_topic");
    let reply = alice
        .call(json!({"type": "publish", "topic": "news", "data": 1}))
        .await;
    assert_eq!(reply["code"], "forbidden");
}

#[tokio::test]
async fn ping_pong() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &[], &[]).await;
    c.send(json!({"type": "ping", "ref": "5"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "ref": "5"}));
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn bad_requests_keep_the_connection() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &["news"], &[]).await;
    let cases: Vec<(String, Option<&str>)> = vec![
        ("not json".into(), None),
        ("[1,2]".into(), None),
        (json!({"ref": "1"}).to_string(), Some("1")),
        (json!({"type": "dance", "ref": "2"}).to_string(), Some("2")),
        (
            json!({"type": "subscribe", "ref": "3"}).to_string(),
            Some("3"),
        ),
        (
            json!({"type": "subscribe", "ref": "4", "topics": "news"}).to_string(),
            Some("4"),
        ),
        (
            json!({"type": "publish", "ref": "5", "topic": "a"}).to_string(),
            Some("5"),
        ),
        (json!({"type": "auth", "ref": "6"}).to_string(), Some("6")),
        (
            json!({"type": "subscribe", "ref": "7", "topics": []}).to_string(),
            Some("7"),
        ),
    ];
    for (text, reference) in cases {
        c.send_raw(Message::text(text.clone())).await;
        let reply = c.recv().await;
        assert_eq!(reply["type"], "error", "{text}");
        assert_eq!(reply["code"], "bad_request", "{text}: {reply}");
        assert_eq!(reply["ref"].as_str(), reference, "{text}: {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.assert_alive().await;
}

#[tokio::test]
async fn thousand_messages_arrive_in_order() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &["seq"], &[]).await;
    c.subscribe(&["seq"]).await;
    for batch in 0..10 {
        let messages: Vec<Value> = (0..100)
            .map(|i| json!({"topic": "seq", "data": batch * 100 + i}))
            .collect();
        let (status, body) = gw
            .admin(
                "POST",
                "/v1/publish/batch",
                Some(json!({"messages": messages})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut last_id: Option<String> = None;
    for expected in 0..1000 {
        let m = c.recv().await;
        assert_eq!(m["data"], json!(expected), "out of order or lost");
        let id = m["id"].as_str().unwrap().to_owned();
        assert_ne!(Some(&id), last_id.as_ref());
        last_id = Some(id);
    }
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn reconnect_with_since_gets_exactly_the_missed_events() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &["news", "other"], &[]).await;
    c.subscribe(&["news"]).await;
    for i in 1..=3 {
        gw.publish("news", json!(i)).await;
    }
    let mut last = String::new();
    for i in 1..=3 {
        let m = c.recv().await;
        assert_eq!(m["data"], i);
        last = m["id"].as_str().unwrap().to_owned();
    }
    drop(c);
    for i in 4..=6 {
        gw.publish("news", json!(i)).await;
    }
    gw.publish("other", json!("not asked for")).await;
    let mut c = gw.client("alice", &["news", "other"], &[]).await;
    let (replayed, reply) = c.subscribe_since(&["news"], json!({"news": last})).await;
    assert_eq!(
        replayed
            .iter()
            .map(|m| m["data"].clone())
            .collect::<Vec<_>>(),
        vec![json!(4), json!(5), json!(6)]
    );
    assert_eq!(reply["recovered"], json!({"news": true}));
    gw.publish("news", json!(7)).await;
    assert_eq!(c.recv().await["data"], 7, "then live, without a duplicate");
    c.expect_silence(QUIET).await;

    // Up to date: recovered, nothing replayed.
    let latest = gw.publish("news", json!(8)).await;
    c.recv().await;
    let mut d = gw.client("bob", &["news"], &[]).await;
    let (replayed, reply) = d.subscribe_since(&["news"], json!({"news": latest})).await;
    assert!(replayed.is_empty());
    assert_eq!(reply["recovered"], json!({"news": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_shares_history_reads() {
    let gw = TestGateway::spawn().await;
    let first = gw.publish("storm", json!(0)).await;
    for i in 1..=5 {
        gw.publish("storm", json!(i)).await;
    }
    let mut clients = Vec::new();
    for i in 0..50 {
        clients.push(gw.client(&format!("c{i}"), &["storm"], &[]).await);
    }
    for c in &mut clients {
        c.send(json!({"type": "subscribe", "ref": "s", "topics": ["storm"], "since": {"storm": first}})).await;
    }
    for c in &mut clients {
        let mut replayed = 0;
        loop {
            let frame = c.recv().await;
            if frame["type"] == "subscribed" {
                assert_eq!(frame["recovered"], json!({"storm": true}));
                break;
            }
            replayed += 1;
        }
        assert_eq!(replayed, 5);
    }
    let reads = gw
        .node
        .metrics
        .value("herald_history_reads_total")
        .unwrap_or(f64::MAX);
    assert!(
        reads < 10.0,
        "50 concurrent recoveries made {reads} history reads"
    );
}

#[tokio::test]
async fn unrecoverable_since_is_reported_and_replays_nothing() {
    let gw = TestGateway::spawn_with(|c| c.history.size = 5).await;
    let first = gw.publish("news", json!(0)).await;
    for i in 1..=10 {
        gw.publish("news", json!(i)).await;
    }
    let (epoch, _) = first.split_once('-').unwrap();
    let other_epoch = if epoch == "00000001" {
        "00000002-3"
    } else {
        "00000001-3"
    };
    for since in [
        first.as_str(),
        "nonsense",
        other_epoch,
        &format!("{epoch}-999"),
    ] {
        let mut c = gw.client("alice", &["news"], &[]).await;
        let (replayed, reply) = c.subscribe_since(&["news"], json!({"news": since})).await;
        assert!(replayed.is_empty(), "since {since}: nothing replayed");
        assert_eq!(reply["recovered"], json!({"news": false}), "since {since}");
        gw.publish("news", json!("live")).await;
        assert_eq!(c.recv().await["data"], "live", "then live delivery starts");
    }
}

#[tokio::test]
async fn since_on_a_held_topic_replays_and_plain_topics_are_not_in_recovered() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &["news", "alerts"], &[]).await;
    c.subscribe(&["news"]).await;
    let first = gw.publish("news", json!(1)).await;
    gw.publish("news", json!(2)).await;
    assert_eq!(c.recv().await["data"], 1);
    assert_eq!(c.recv().await["data"], 2);
    let (replayed, reply) = c
        .subscribe_since(&["news", "alerts"], json!({"news": first}))
        .await;
    assert_eq!(
        replayed
            .iter()
            .map(|m| m["data"].clone())
            .collect::<Vec<_>>(),
        vec![json!(2)]
    );
    assert_eq!(
        reply["recovered"],
        json!({"news": true}),
        "alerts had no since"
    );
    gw.publish("news", json!(3)).await;
    assert_eq!(c.recv().await["data"], 3);
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn auth_refresh() {
    let gw = TestGateway::spawn().await;
    let mut c = gw.client("alice", &["news", "alerts"], &[]).await;
    c.subscribe(&["news", "alerts"]).await;

    // Different sub: forbidden, old token still holds.
    let reply = c
        .call(json!({"type": "auth", "token": token("mallory", &["news"], &[])}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    // Garbage and expired: unauthorized.
    let reply = c.call(json!({"type": "auth", "token": "garbage"})).await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    let expired = token_with(json!({"sub": "alice", "exp": now_secs() - 3600}));
    let reply = c.call(json!({"type": "auth", "token": expired})).await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    // One that lives longer than jwt.max_lifetime (7 days): unauthorized,
    // in `auth` as at the handshake (contract §10.9).
    let forever = json!({"sub": "alice", "iat": now_secs(), "exp": now_secs() + 8 * 86_400});
    let reply = c
        .call(json!({"type": "auth", "token": token_with(forever.clone())}))
        .await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    assert_refused(
        ws_request(&format!("{}?token={}", gw.ws_url(), token_with(forever))),
        401,
        "unauthorized",
    )
    .await;

    // A fresh token that drops `alerts`.
    let fresh = claims("alice", &["news"], &[]);
    let exp = fresh["exp"].clone();
    let r = c
        .request(json!({"type": "auth", "token": token_with(fresh)}))
        .await;
    let authed = c.recv().await;
    assert_eq!(authed, json!({"type": "authed", "ref": r, "exp": exp}));
    let notice = c.recv().await;
    assert_eq!(
        notice,
        json!({"type": "unsubscribed", "topics": ["alerts"]}),
        "no ref on the notice"
    );

    gw.publish("alerts", json!(1)).await;
    gw.publish("news", json!(2)).await;
    assert_eq!(
        c.recv().await["topic"],
        "news",
        "alerts must be unsubscribed"
    );
    let reply = c
        .call(json!({"type": "subscribe", "topics": ["alerts"]}))
        .await;
    assert_eq!(reply["code"], "forbidden");
}

#[tokio::test]
async fn binary_frames_close_1008() {
    let gw = TestGateway::spawn().await;
    let mut other = gw.client("bob", &[], &[]).await;
    let mut c = gw.client("alice", &[], &[]).await;
    c.send_raw(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(c.expect_close().await, 1008);
    other.assert_alive().await;
}

#[tokio::test]
async fn oversized_frames_close_1009() {
    let gw = TestGateway::spawn_with(|c| c.limits.max_message_size = 1024).await;
    let mut other = gw.client("bob", &[], &[]).await;
    let mut c = gw.client("alice", &[], &[]).await;
    c.send_raw(Message::text("x".repeat(2000))).await;
    assert_eq!(c.expect_close().await, 1009);
    other.assert_alive().await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    use tokio::io::AsyncWriteExt;
    let gw = TestGateway::spawn().await;
    let mut other = gw.client("bob", &[], &[]).await;
    // tungstenite refuses to send invalid UTF-8, so speak raw frames.
    let mut stream = raw_handshake(gw.public, &token("alice", &[], &[])).await;
    let payload = [0xff, 0xfe, b'a'];
    let mask = [1, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.unwrap();
    let code = read_until_close(&mut stream, &mut Vec::new()).await;
    assert_eq!(code, 1007);
    other.assert_alive().await;
}

/// Performs the opening handshake by hand and returns the raw stream after
/// the 101 response and the welcome frame's header bytes are left unread.
pub async fn raw_handshake(addr: std::net::SocketAddr, token: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}
