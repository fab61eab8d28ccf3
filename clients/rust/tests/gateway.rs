//! The crate against real `herald-gateway` processes (this workspace's
//! build; run `cargo build --workspace --bins` first) and `redis-server`:
//! publishing with typed errors, a publish retried across a node restart
//! delivered once, `Retry-After` honoured, tokens of every algorithm
//! accepted, and the subscriber: both encodings, bytes, recovery across a
//! node killed with kill -9 with no loss and no duplicate, token refresh
//! before expiry, and a disconnect by the server.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use herald_client::{
    Action, Client, Data, Error, Protocol, Publication, Publisher, RetryPolicy, Token,
    TokenBuilder, close_action,
};
use herald_testkit::{Proc, TestRedis, addr_after, bin, free_port};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "rust-client-secret-0123456789abcdef";
const KEY: &str = "rust-client-admin-key";
const WAIT: Duration = Duration::from_secs(15);

struct Node {
    proc: Proc,
    public: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    fn start(args: &[&str]) -> Node {
        Node::on("127.0.0.1:0", "127.0.0.1:0", args)
    }

    fn on(public: &str, admin: &str, args: &[&str]) -> Node {
        let mut cmd = bin("herald-gateway");
        cmd.args([
            "--listen",
            public,
            "--admin-listen",
            admin,
            "--admin-api-keys",
            KEY,
        ]);
        cmd.args(["--log-level", "info"]);
        if !args.contains(&"--jwt-public-key-file") {
            cmd.args(["--jwt-hs256-secret", SECRET]);
        }
        cmd.args(args);
        let mut proc = Proc::start(cmd);
        let line = proc.line_with("herald-gateway listening");
        Node {
            public: addr_after(&line, "public="),
            admin: addr_after(&line, "admin="),
            proc,
        }
    }

    /// Waits until `/readyz` answers 200 (with Redis: connected, and the
    /// revocation list loaded).
    async fn ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = async {
                let mut s = tokio::net::TcpStream::connect(self.admin).await.ok()?;
                s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .await
                    .ok()?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.ok()?;
                Some(out.starts_with(b"HTTP/1.1 200"))
            };
            if answer.await == Some(true) {
                return;
            }
            assert!(Instant::now() < deadline, "{} not ready", self.admin);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.public)
    }

    fn publisher(&self) -> Publisher {
        Publisher::new(&format!("http://{}", self.admin), KEY).unwrap()
    }
}

fn token(ttl: u64) -> String {
    TokenBuilder::new("rust")
        .topics(["rs.>"])
        .expires_in(Duration::from_secs(ttl))
        .sign_hs256(SECRET)
        .unwrap()
}

async fn next(client: &mut Client) -> Result<herald_client::Message, Error> {
    tokio::time::timeout(WAIT, client.next())
        .await
        .expect("an event in time")
        .expect("the client is open")
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../gateway/tests/fixtures")
        .join(name)
}

#[tokio::test]
async fn publish_read_and_typed_errors() {
    let node = Node::start(&["--presence-topics", "rs.>"]);
    let herald = node.publisher();
    let first = herald
        .publish_one(&Publication::json("rs.a", json!({"n": 1})).idempotency_key("order-1"))
        .await
        .unwrap();
    let again = herald
        .publish_one(&Publication::json("rs.a", json!({"n": 1})).idempotency_key("order-1"))
        .await
        .unwrap();
    assert_eq!(first, again, "one key, one event");
    let ids = herald
        .publish_batch(&[
            Publication::json("rs.a", 2),
            Publication::bytes("rs.a", vec![0, 255]),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let history = herald.history("rs.a", None, None).await.unwrap();
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[2]["data_b64"], "AP8=");
    assert!(herald.presence("rs.a", Some(10), None).await.is_ok());
    assert!(herald.stats().await.unwrap()["nodes"].is_array());
    assert_eq!(herald.disconnect("nobody").await.unwrap(), 0);

    let started = Instant::now();
    let wrong = Publisher::new(&format!("http://{}", node.admin), "wrong").unwrap();
    let e = wrong.publish("rs.a", 1).await.unwrap_err();
    assert_eq!((e.code.as_str(), e.status), ("unauthorized", 401));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a 401 is not retried"
    );
    let e = herald.publish("bad topic", 1).await.unwrap_err();
    assert_eq!((e.code.as_str(), e.status), ("invalid_topic", 400), "{e}");
}

/// A scripted admin API: 503 with `Retry-After: 1`, then 200.
#[tokio::test]
async fn retry_after_is_honoured_and_the_key_is_kept() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut bodies = Vec::new();
        let busy = r#"{"error":{"code":"unavailable","message":"busy"}}"#;
        let done = r#"{"results":[{"topic":"rs.r","id":"0000000a-1"}]}"#;
        for answer in [
            format!(
                "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{busy}",
                busy.len()
            ),
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{done}",
                done.len()
            ),
        ] {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 8192];
            let n = socket.read(&mut request).await.unwrap();
            bodies.push(String::from_utf8_lossy(&request[..n]).into_owned());
            socket.write_all(answer.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
        }
        bodies
    });
    let herald = Publisher::new(&format!("http://{addr}"), KEY).unwrap();
    let started = Instant::now();
    let id = herald.publish("rs.r", 1).await.unwrap();
    assert_eq!(id, "0000000a-1");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as told"
    );
    let bodies = server.await.unwrap();
    let key = |b: &str| {
        b.split("\"idempotency_key\":\"")
            .nth(1)
            .map(|k| k[..32].to_owned())
    };
    assert_eq!(
        key(&bodies[0]),
        key(&bodies[1]),
        "the same key on the retry"
    );
    assert!(key(&bodies[0]).is_some());
}

#[tokio::test]
async fn a_publish_retried_across_a_node_restart_is_delivered_once() {
    let redis = TestRedis::start();
    let (public, admin) = (free_port(false), free_port(false));
    let (public, admin) = (format!("127.0.0.1:{public}"), format!("127.0.0.1:{admin}"));
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    let mut node = Node::on(&public, &admin, &args);
    node.ready().await;
    let herald = node.publisher().with_retry(RetryPolicy {
        attempts: 30,
        base: Duration::from_millis(100),
        cap: Duration::from_millis(500),
        timeout: Duration::from_secs(5),
    });
    herald.publish("rs.once", 0).await.unwrap();
    node.proc.signal("KILL");
    node.proc.wait_exit();
    let publishing = {
        let herald = herald.clone();
        tokio::spawn(async move {
            herald
                .publish_one(&Publication::json("rs.once", 1).idempotency_key("order-9"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _node = Node::on(&public, &admin, &args);
    let id = publishing
        .await
        .unwrap()
        .expect("delivered after the restart");
    let again = herald
        .publish_one(&Publication::json("rs.once", 1).idempotency_key("order-9"))
        .await
        .unwrap();
    assert_eq!(id, again);
    let history = herald.history("rs.once", None, None).await.unwrap();
    let ones = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["data"] == 1)
        .count();
    assert_eq!(ones, 1, "exactly once");
}

#[tokio::test]
async fn tokens_of_every_algorithm_are_accepted() {
    let cases = [
        ("RS256", "rsa_private.pem", "rsa_public.pem"),
        ("ES256", "ec_private.pem", "ec_public.pem"),
        ("EdDSA", "ed_private.pem", "ed_public.pem"),
    ];
    for (alg, private, public) in cases {
        let key_file = fixture(public);
        let node = Node::start(&["--jwt-public-key-file", key_file.to_str().unwrap()]);
        let pem = std::fs::read(fixture(private)).unwrap();
        let token = TokenBuilder::new("rust")
            .topics(["rs.>"])
            .sign(alg, &pem, None)
            .unwrap();
        let client = Client::builder([node.ws()], Token::Static(token))
            .topics(&["rs.alg"])
            .connect();
        until("subscribed", || client.positions().contains_key("rs.alg")).await;
        assert_eq!(client.connections(), 1, "{alg}");
        client.close().await;
    }
    let node = Node::start(&[]);
    let mut client = Client::builder([node.ws()], Token::Static(token(60)))
        .topics(&["rs.alg"])
        .connect();
    until("subscribed (HS256)", || {
        client.positions().contains_key("rs.alg")
    })
    .await;
    node.publisher().publish("rs.alg", "hs").await.unwrap();
    assert_eq!(
        next(&mut client).await.unwrap().data,
        Data::Json(json!("hs"))
    );
    assert!(TokenBuilder::new("x").sign("HS512", b"", None).is_err());
}

#[tokio::test]
async fn both_encodings_carry_json_and_bytes() {
    let node = Node::start(&[]);
    let herald = node.publisher();
    for protocol in [Protocol::Json, Protocol::Msgpack] {
        let topic = format!("rs.enc.{protocol:?}");
        let mut client = Client::builder([node.ws()], Token::Static(token(600)))
            .protocol(protocol)
            .topics(&[topic.as_str()])
            .connect();
        until("subscribed", || client.positions().contains_key(&topic)).await;
        let id = herald
            .publish_one(&Publication::json(&topic, json!({"n": 1})).event("tick"))
            .await
            .unwrap();
        herald
            .publish_one(&Publication::bytes(&topic, vec![0, 1, 255]))
            .await
            .unwrap();
        let first = next(&mut client).await.unwrap();
        assert_eq!(
            (first.id.as_str(), first.event.as_deref()),
            (id.as_str(), Some("tick"))
        );
        assert_eq!(first.data, Data::Json(json!({"n": 1})));
        assert_eq!(
            next(&mut client).await.unwrap().data,
            Data::Bytes(vec![0, 1, 255])
        );
        client.close().await;
    }
}

#[tokio::test]
async fn recovery_across_a_node_killed_with_no_loss_and_no_duplicate() {
    let redis = TestRedis::start();
    let url = redis.url();
    let mut first = Node::start(&["--redis-url", url.as_str(), "--node-id", "n1"]);
    let second = Node::start(&["--redis-url", url.as_str(), "--node-id", "n2"]);
    // Both ready, so the client's first attempt lands on the first node.
    first.ready().await;
    second.ready().await;
    let mut client = Client::builder([first.ws(), second.ws()], Token::Static(token(600)))
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .topics(&["rs.ha"])
        .connect();
    until("subscribed", || client.positions().contains_key("rs.ha")).await;
    let herald = second.publisher();
    herald.publish("rs.ha", 1).await.unwrap();
    assert_eq!(next(&mut client).await.unwrap().data, Data::Json(json!(1)));
    first.proc.signal("KILL");
    first.proc.wait_exit();
    herald.publish("rs.ha", 2).await.unwrap();
    herald.publish("rs.ha", 3).await.unwrap();
    until("reconnected", || client.connections() == 2).await;
    herald.publish("rs.ha", 4).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut client).await.unwrap().data);
    }
    assert_eq!(
        got,
        [2, 3, 4].map(|n| Data::Json(json!(n))),
        "each once, in order"
    );
    until("the resubscribe's answer", || {
        client.recovered().contains_key("rs.ha")
    })
    .await;
    assert!(client.recovered()["rs.ha"]);
}

#[tokio::test]
async fn the_token_is_refreshed_before_it_expires() {
    // No leeway: a session still on its first token would end at its exp.
    let node = Node::start(&["--jwt-leeway", "0s"]);
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let provider = {
        let calls = calls.clone();
        Token::provider(move || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok(token(if n == 0 { 3 } else { 3600 })) }
        })
    };
    let mut client = Client::builder([node.ws()], provider)
        .topics(&["rs.refresh"])
        .connect();
    until("a refresh", || {
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    node.publisher()
        .publish("rs.refresh", "still here")
        .await
        .unwrap();
    assert_eq!(
        next(&mut client).await.unwrap().data,
        Data::Json(json!("still here"))
    );
    assert_eq!(client.connections(), 1, "refreshed in place, no reconnect");
}

#[tokio::test]
async fn a_disconnect_by_the_server_ends_the_client() {
    let node = Node::start(&[]);
    let mut client = Client::builder([node.ws()], Token::Static(token(600)))
        .topics(&["rs.gone"])
        .connect();
    until("subscribed", || client.positions().contains_key("rs.gone")).await;
    assert_eq!(node.publisher().disconnect("rust").await.unwrap(), 1);
    let e = next(&mut client).await.unwrap_err();
    assert_eq!(e.code, "disconnected");
}

#[test]
fn the_close_code_table() {
    for (code, reason, action) in [
        (1000, "", Action::Stop),
        (4003, "", Action::Stop),
        (1012, "", Action::Now),
        (4001, "", Action::Refresh),
        (4004, "", Action::Backoff),
        (1006, "", Action::Backoff),
        (1008, "", Action::Fault),
        (4005, "unauthorized", Action::Refresh),
        (4005, "unavailable", Action::Backoff),
        (4005, "forbidden", Action::Stop),
    ] {
        assert_eq!(close_action(code, reason), action, "{code} {reason}");
    }
}

/// Load shedding (a node at `limits.max_connections`) answers 503 with a
/// `Retry-After` of 1–5 s: the client waits that long, not its own
/// 100 ms backoff, then connects once there is room.
#[tokio::test]
async fn retry_after_of_a_shed_handshake_is_honoured() {
    let node = Node::start(&["--limits-max-connections", "1"]);
    let holder = Client::builder([node.ws()], Token::Static(token(600)))
        .topics(&["rs.full"])
        .connect();
    until("the slot taken", || holder.connections() == 1).await;
    let started = Instant::now();
    let waiting = Client::builder([node.ws()], Token::Static(token(600)))
        .backoff(Duration::from_millis(100), Duration::from_millis(100))
        .topics(&["rs.full"])
        .connect();
    // Its first attempt is refused; free the slot right after.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(waiting.connections(), 0);
    holder.close().await;
    until("connected once there is room", || {
        waiting.connections() == 1
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited Retry-After, not the 100 ms backoff: {:?}",
        started.elapsed()
    );
}
