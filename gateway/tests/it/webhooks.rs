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
    let url = receiver.url.clone();
    let gw = TestGateway::spawn_with(|c| {
        c.webhooks.url = Some(url);
        c.webhooks.secret = Some(herald_core::Secret::new(HOOK_SECRET));
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

/// Webhooks and presence on `room.>`, presence.timeout 2s.
async fn webhook_node(redis: &str, id: &str, url: &str) -> GatewayProc {
    let env = [
        ("HERALD_PRESENCE__TOPICS", "room.>"),
        ("HERALD_PRESENCE__TIMEOUT", "2s"),
        ("HERALD_WEBHOOKS__URL", url),
        ("HERALD_WEBHOOKS__SECRET", HOOK_SECRET),
    ];
    GatewayProc::start_env(redis, false, id, &env).await
}

async fn sessions_on(node: &GatewayProc, n: usize) -> (Vec<Client>, Vec<String>) {
    let mut clients = Vec::new();
    for i in 0..n {
        let mut c = Client::connect(
            &format!("ws://{}/ws", node.public),
            &presence_token(&format!("u{i}")),
        )
        .await;
        c.subscribe(&["room.lobby"]).await;
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
    let (_keep, survivors) = sessions_on(&n1, 1).await;
    let (_lost, lost) = sessions_on(&n2, 50).await;
    receiver
        .until("51 connects and joins", Duration::from_secs(20), |e| {
            of_type(e, "session.connected").len() == 51 && of_type(e, "presence.join").len() == 51
        })
        .await;
    let killed = tokio::time::Instant::now();
    n2.proc.signal("KILL");
    let events = receiver
        .until("50 node_lost", Duration::from_secs(20), |e| {
            of_type(e, "session.disconnected").len() >= 50
                && of_type(e, "presence.leave").len() >= 50
        })
        .await;
    let took = killed.elapsed();
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
