//! Lifecycle webhooks (contract §10.6) against a real HTTP receiver the
//! test runs, which checks every signature: a session's events and a
//! topic's once each and in order, the same `id` on every retry after a
//! 500; in a cluster, a
//! killed node's sessions reported `node_lost` (with their presence
//! leaves first) by a surviving node, and events queued while the sender
//! died sent by another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::cluster::GatewayProc;
use crate::common::*;

const HOOK_SECRET: &str = "webhook-secret-0123456789";

/// Decides a request's status from its body and how often its `id` was
/// seen before.
type Answer = dyn Fn(&Value, usize) -> u16 + Send + Sync;

/// An HTTP receiver recording every request whose signature verified
/// (a bad one fails the test), in arrival order.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start(answer: impl Fn(&Value, usize) -> u16 + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Answer> = Arc::new(answer);
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (answer, log) = (answer.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (answer, log) = (answer.clone(), log.clone());
                            async move {
                                let signature = req
                                    .headers()
                                    .get("herald-signature")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                verify(&signature, &body);
                                let event: Value = serde_json::from_slice(&body).unwrap();
                                let before = {
                                    let mut log = log.lock().unwrap();
                                    let n = log.iter().filter(|e| e["id"] == event["id"]).count();
                                    log.push(event.clone());
                                    n
                                };
                                let status = answer(&event, before);
                                let response = hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap();
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Receiver { url, seen }
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Every request so far, first attempts only (what a receiver that
    /// deduplicates by `id` keeps), once `done` holds of them.
    async fn until(
        &self,
        what: &str,
        wait: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut ids = std::collections::HashSet::new();
            let unique: Vec<Value> = self
                .seen()
                .into_iter()
                .filter(|e| ids.insert(e["id"].as_str().unwrap_or_default().to_owned()))
                .collect();
            if done(&unique) {
                return unique;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {wait:?}; received {unique:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Checks `Herald-Signature: t=<s>,v1=<hex>` the way docs/hooks.md tells
/// receivers to.
fn verify(header: &str, body: &[u8]) {
    let (t, v1) = header
        .split_once(",v1=")
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v)))
        .unwrap_or_else(|| panic!("malformed signature header {header:?}"));
    let t: u64 = t.parse().unwrap();
    assert!(t.abs_diff(now_secs()) < 300, "signature time {t} is stale");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, HOOK_SECRET.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &signed);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, hex, "signature of {}", String::from_utf8_lossy(body));
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The types of the events about `session`, in arrival order.
fn types_of(events: &[Value], session: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["data"]["session"] == session)
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A node in this process whose webhooks go to `receiver`.
async fn sending_to(
    receiver: &Receiver,
    tweak: impl FnOnce(&mut herald_core::Config),
) -> TestGateway {
    let url = receiver.url.clone();
    TestGateway::spawn_with(|c| {
        c.webhooks.url = Some(url);
        c.webhooks.secret = Some(herald_core::Secret::new(HOOK_SECRET));
        tweak(c);
    })
    .await
}

fn presence_token(sub: &str) -> String {
    let mut c = claims(sub, &["room.>"], &[]);
    c["presence"] = json!(["room.>"]);
    token_with(c)
}

#[tokio::test]
async fn events_are_signed_ordered_and_retried_with_the_same_id() {
    // The first event is refused twice.
    let receiver = Receiver::start(|e, before| {
        if e["type"] == "session.connected" && before < 2 {
            500
        } else {
            200
        }
    })
    .await;
    let gw = sending_to(&receiver, |c| {
        c.presence.topics = herald_protocol::Permissions::parse(["room.>"]).unwrap();
        c.webhooks.vacated_delay = Duration::from_millis(300);
    })
    .await;
    let mut c = Client::connect(&gw.ws_url(), &presence_token("ann")).await;
    let session = c.welcome["session"].as_str().unwrap().to_owned();
    c.subscribe(&["room.a"]).await;
    let normal = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    };
    c.ws().close(Some(normal)).await.unwrap();
    let events = receiver
        .until("six events", Duration::from_secs(10), |e| {
            !of_type(e, "session.disconnected").is_empty()
                && !of_type(e, "topic.vacated").is_empty()
        })
        .await;
    let about_room: Vec<&str> = events
        .iter()
        .filter(|e| e["data"]["topic"] == "room.a")
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        about_room,
        [
            "topic.occupied",
            "presence.join",
            "presence.leave",
            "topic.vacated"
        ]
    );
    assert_eq!(
        types_of(&events, &session),
        [
            "session.connected",
            "presence.join",
            "presence.leave",
            "session.disconnected"
        ]
    );
    let connected = of_type(&events, "session.connected")[0];
    assert_eq!(
        connected["data"],
        json!({"sub": "ann", "session": session, "node": "test-node", "info": null})
    );
    assert_eq!(
        of_type(&events, "presence.join")[0]["data"],
        json!({"topic": "room.a", "sub": "ann", "session": session})
    );
    let bye = &of_type(&events, "session.disconnected")[0]["data"];
    assert_eq!(
        (bye["code"].as_u64(), bye["sub"].as_str()),
        (Some(1000), Some("ann"))
    );
    // Three attempts of the refused event, one id, the same body each time.
    let attempts: Vec<Value> = receiver
        .seen()
        .into_iter()
        .filter(|e| e["id"] == connected["id"])
        .collect();
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    assert!(attempts.iter().all(|a| a == connected));
    let ids: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "unique ids");
    let (_, _, metrics) = http_raw(gw.admin, "GET", "/metrics", None, None).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"herald_webhooks_total{type="session.connected",result="retry"} 2"#),
        "{metrics}"
    );
    gw.shutdown().await;
}

/// Webhooks and presence on `room.>`, presence.timeout 2s, a topic
/// vacated 1 s after its last subscriber.
async fn webhook_node(redis: &str, id: &str, url: &str) -> GatewayProc {
    let env = [
        ("HERALD_PRESENCE__TOPICS", "room.>"),
        ("HERALD_PRESENCE__TIMEOUT", "2s"),
        ("HERALD_WEBHOOKS__VACATED_DELAY", "1s"),
        ("HERALD_WEBHOOKS__URL", url),
        ("HERALD_WEBHOOKS__SECRET", HOOK_SECRET),
    ];
    GatewayProc::start_env(redis, false, id, &env).await
}

/// `n` sessions on `node` subscribed to `room.lobby`.
async fn sessions_on(node: &GatewayProc, n: usize) -> (Vec<Client>, Vec<String>) {
    sessions_in(node, n, "room.lobby").await
}

async fn sessions_in(node: &GatewayProc, n: usize, room: &str) -> (Vec<Client>, Vec<String>) {
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = Client::connect(
            &format!("ws://{}/ws", node.public),
            &presence_token(&format!("u{i}")),
        )
        .await;
        c.subscribe(&[room]).await;
        clients.push(c);
    }
    let ids = clients
        .iter()
        .map(|c| c.welcome["session"].as_str().unwrap().to_owned())
        .collect();
    (clients, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_sessions_are_reported_node_lost_after_their_leaves() {
    let redis = herald_testkit::TestRedis::start();
    let receiver = Receiver::start(|_, _| 200).await;
    let n1 = webhook_node(&redis.url(), "n1", &receiver.url).await;
    let n2 = webhook_node(&redis.url(), "n2", &receiver.url).await;
    let (_keep, survivors) = sessions_in(&n1, 1, "room.kept").await;
    let (_lost, lost) = sessions_on(&n2, 50).await;
    receiver
        .until("51 connects and joins", Duration::from_secs(20), |e| {
            of_type(e, "session.connected").len() == 51 && of_type(e, "presence.join").len() == 51
        })
        .await;
    let killed = tokio::time::Instant::now();
    n2.proc.signal("KILL");
    receiver
        .until("50 node_lost", Duration::from_secs(20), |e| {
            of_type(e, "session.disconnected").len() >= 50
                && of_type(e, "presence.leave").len() >= 50
        })
        .await;
    let took = killed.elapsed();
    // Then the room n2 alone held is vacated (1 s later), and only it.
    let events = receiver
        .until("room.lobby vacated", Duration::from_secs(10), |e| {
            !of_type(e, "topic.vacated").is_empty()
        })
        .await;
    let topic_events = |topic: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|e| e["data"]["topic"] == topic && e["data"]["session"].is_null())
            .filter_map(|e| e["type"].as_str())
            .collect()
    };
    assert_eq!(topic_events("room.kept"), ["topic.occupied"]);
    assert_eq!(
        topic_events("room.lobby"),
        ["topic.occupied", "topic.vacated"]
    );
    let vacated_at = events.iter().position(|e| e["type"] == "topic.vacated");
    let last_lost = events
        .iter()
        .rposition(|e| e["type"] == "session.disconnected");
    assert!(
        vacated_at > last_lost,
        "vacated after the sessions were lost"
    );
    eprintln!("node_lost of 50 sessions delivered {took:?} after the kill (presence.timeout 2s)");
    assert!(took < Duration::from_secs(2 + 6), "took {took:?}");
    for s in &lost {
        assert_eq!(
            types_of(&events, s),
            [
                "session.connected",
                "presence.join",
                "presence.leave",
                "session.disconnected"
            ],
            "session {s}"
        );
    }
    for bye in of_type(&events, "session.disconnected") {
        assert_eq!(bye["data"]["reason"], "node_lost", "{bye}");
        assert_eq!(bye["data"]["node"], "n2");
    }
    assert_eq!(
        types_of(&events, &survivors[0]),
        ["session.connected", "presence.join"]
    );
    assert!(
        events
            .iter()
            .all(|e| e["data"]["topic"] != "room.kept" || e["type"] != "presence.leave")
    );
    // Nothing more: one disconnect per session.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = receiver
        .until("settled", Duration::from_secs(1), |_| true)
        .await;
    assert_eq!(again.len(), events.len(), "{:#?}", &again[events.len()..]);
    drop(n1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_when_their_sender_died_are_sent_by_another_node() {
    let redis = herald_testkit::TestRedis::start();
    let accepting = Arc::new(AtomicBool::new(false));
    let open = accepting.clone();
    let receiver = Receiver::start(move |_, _| {
        if open.load(Ordering::Acquire) {
            200
        } else {
            503
        }
    })
    .await;
    let n1 = webhook_node(&redis.url(), "n1", &receiver.url).await;
    let (_clients, sessions) = sessions_on(&n1, 5).await;
    // n1 holds the lease and keeps retrying the first event.
    receiver
        .until("a first attempt", Duration::from_secs(10), |e| {
            !e.is_empty()
        })
        .await;
    let n2 = webhook_node(&redis.url(), "n2", &receiver.url).await;
    n1.proc.signal("KILL");
    accepting.store(true, Ordering::Release);
    let events = receiver
        .until("n1's events, from n2", Duration::from_secs(20), |e| {
            of_type(e, "session.disconnected").len() >= 5
        })
        .await;
    let mut by_session: HashMap<String, Vec<String>> = HashMap::new();
    for s in &sessions {
        by_session.insert(s.clone(), types_of(&events, s));
    }
    for (s, types) in by_session {
        assert_eq!(
            types,
            [
                "session.connected",
                "presence.join",
                "presence.leave",
                "session.disconnected"
            ],
            "session {s}"
        );
    }
    drop(n2);
}

/// Counts, per session, the `session.connected` and `session.disconnected`
/// first attempts received.
fn pairs(events: &[Value]) -> HashMap<String, (usize, usize)> {
    let mut out: HashMap<String, (usize, usize)> = HashMap::new();
    for e in events {
        let Some(session) = e["data"]["session"].as_str() else {
            continue;
        };
        let entry = out.entry(session.to_owned()).or_default();
        match e["type"].as_str() {
            Some("session.connected") => entry.0 += 1,
            Some("session.disconnected") => entry.1 += 1,
            _ => {}
        }
    }
    out
}

/// Three nodes, and a fixed script of faults while sessions come and go:
/// a node killed and started again, Redis killed and restarted (its
/// append-only file kept), a second node killed. At the end every
/// `session.connected` has exactly one `session.disconnected`, and every
/// session that closed normally has both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connected_gets_exactly_one_disconnected_through_kills_and_a_redis_restart() {
    let mut redis = herald_testkit::TestRedis::start_persistent();
    let receiver = Receiver::start(|_, _| 200).await;
    let url = redis.url();
    let mut nodes = vec![
        webhook_node(&url, "n1", &receiver.url).await,
        webhook_node(&url, "n2", &receiver.url).await,
        webhook_node(&url, "n3", &receiver.url).await,
    ];
    let mut closed_normally: Vec<String> = Vec::new();
    let mut open: Vec<Client> = Vec::new();
    let mut welcomed = 0;
    for round in 0..4 {
        for node in &nodes {
            let (clients, _) = sessions_on(node, 4).await;
            welcomed += clients.len();
            open.extend(clients);
        }
        // Every welcomed session is recorded before the faults.
        receiver
            .until("connects recorded", Duration::from_secs(20), |e| {
                of_type(e, "session.connected").len() >= welcomed
            })
            .await;
        // A few close normally.
        for _ in 0..3 {
            let mut c = open.remove(0);
            closed_normally.push(c.welcome["session"].as_str().unwrap().to_owned());
            let _ = c.ws().close(None).await;
        }
        match round {
            0 => {
                nodes[1].proc.signal("KILL");
                nodes[1] = webhook_node(&url, "n2", &receiver.url).await;
            }
            1 => {
                redis.restart();
            }
            2 => {
                nodes[2].proc.signal("KILL");
                nodes[2] = webhook_node(&url, "n3", &receiver.url).await;
            }
            _ => {
                nodes[0].proc.signal("KILL");
            }
        }
    }
    // The rest close normally (those of killed nodes are gone already).
    for mut c in open.drain(..) {
        let _ = c.ws().close(None).await;
    }
    let events = receiver
        .until(
            "every connected disconnected",
            Duration::from_secs(30),
            |e| pairs(e).values().all(|(c, d)| *c == 1 && *d == 1),
        )
        .await;
    let pairs = pairs(&events);
    eprintln!(
        "{} sessions welcomed, {} connected/disconnected pairs, {} events",
        welcomed,
        pairs.len(),
        events.len()
    );
    assert_eq!(pairs.len(), welcomed, "every welcomed session was recorded");
    for s in &closed_normally {
        assert_eq!(pairs.get(s), Some(&(1, 1)), "session {s} closed normally");
    }
    // Nothing more arrives: no second disconnected.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = receiver
        .until("settled", Duration::from_secs(1), |_| true)
        .await;
    assert_eq!(
        self::pairs(&again),
        pairs,
        "{:#?}",
        &again[events.len().min(again.len())..]
    );
}

/// The receivers docs/hooks.md shows, run as written: each verifies the
/// signature of real webhooks (and refuses a forged one with 401) and
/// prints the events.
#[tokio::test]
async fn the_documented_receivers_verify_real_webhooks() {
    for (program, file) in [
        ("python3", "webhook-receiver.py"),
        ("node", "webhook-receiver.js"),
    ] {
        let port = herald_testkit::free_port(false);
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/examples")
            .join(file);
        let mut child = std::process::Command::new(program)
            .arg(&path)
            .env("PORT", port.to_string())
            .env("WEBHOOK_SECRET", HOOK_SECRET)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        eventually(&format!("{file} listens"), async || {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        // A forged signature is refused.
        let forged = http::Request::post(format!("http://{addr}/"))
            .header("host", addr.to_string())
            .header("herald-signature", format!("t={},v1=00", now_secs()))
            .body(r#"{"id":"x"}"#.to_owned())
            .unwrap();
        let (status, _) = send_plain(forged).await;
        assert_eq!(status, 401, "{file}: forged signature");

        let url = format!("http://{addr}/");
        let gw = TestGateway::spawn_with(|c| {
            c.webhooks.url = Some(url);
            c.webhooks.secret = Some(herald_core::Secret::new(HOOK_SECRET));
            c.webhooks.events = vec![
                "session.connected".to_owned(),
                "session.disconnected".to_owned(),
            ];
        })
        .await;
        let mut c = gw.client("ann", &["news"], &[]).await;
        let session = c.welcome["session"].as_str().unwrap().to_owned();
        let _ = c.ws().close(None).await;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.recv())
                .await
                .unwrap_or_else(|_| panic!("{file}: printed {seen:?} only"))
                .unwrap();
            let event: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(event["data"]["session"], session.as_str(), "{file}: {line}");
            seen.push(event["type"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            seen,
            ["session.connected", "session.disconnected"],
            "{file}"
        );
        gw.shutdown().await;
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// POSTs `request` over plain HTTP/1.1; the status and body.
async fn send_plain(request: http::Request<String>) -> (u16, String) {
    let authority = request.uri().authority().unwrap().to_string();
    let stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An event the receiver keeps refusing holds back the events recorded
/// after it (beyond its batch) for at most the batch window, not for
/// `webhooks.retry_for`.
#[tokio::test]
async fn an_event_the_receiver_keeps_refusing_does_not_hold_back_the_rest() {
    let receiver = Receiver::start(|e, _| {
        if e["data"]["sub"] == "poison" {
            500
        } else {
            200
        }
    })
    .await;
    let gw = sending_to(&receiver, |_| {}).await;
    let _poison = gw.client("poison", &["news"], &[]).await;
    receiver
        .until("the refused event tried", Duration::from_secs(5), |e| {
            !e.is_empty()
        })
        .await;
    let good = gw.client("good", &["news"], &[]).await;
    let session = good.welcome["session"].as_str().unwrap().to_owned();
    let recorded = tokio::time::Instant::now();
    receiver
        .until(
            "the later event",
            herald_gateway::webhooks::BATCH_WINDOW + Duration::from_secs(5),
            |e| types_of(e, &session) == ["session.connected"],
        )
        .await;
    eprintln!(
        "a later event delivered {:?} after it was recorded",
        recorded.elapsed()
    );
    let attempts = receiver
        .seen()
        .iter()
        .filter(|e| e["data"]["sub"] == "poison")
        .count();
    assert!(
        attempts >= 2,
        "the refused event is still retried: {attempts}"
    );
    gw.shutdown().await;
}
