//! Backend hooks (contract §10.6) against a real HTTP backend the test
//! runs: connections admitted by cookie, refused (401, 403), and a backend
//! that is down or slow costing a quick 503 with `Retry-After` while JWT
//! clients are served; the subscribe hook's veto (all or nothing) and the
//! publish hook's refusal and replacement; what each hook is told (and
//! the connect hook's `info` in `session.connected`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

use crate::common::*;

/// How the backend answers a call: status, body, delay.
type Rule = dyn Fn(&str, &Value) -> (u16, Value, Duration) + Send + Sync;

/// An HTTP backend recording every call (path and JSON body).
struct FakeBackend {
    base: String,
    calls: Arc<Mutex<Vec<(String, Value)>>>,
}

impl FakeBackend {
    async fn start(
        rule: impl Fn(&str, &Value) -> (u16, Value, Duration) + Send + Sync + 'static,
    ) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let rule: Arc<Rule> = Arc::new(rule);
        let seen = calls.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (rule, seen) = (rule.clone(), seen.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (rule, seen) = (rule.clone(), seen.clone());
                            async move {
                                let path = req.uri().path().to_owned();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let body: Value =
                                    serde_json::from_slice(&body).unwrap_or(Value::Null);
                                seen.lock().unwrap().push((path.clone(), body.clone()));
                                let (status, answer, delay) = rule(&path, &body);
                                tokio::time::sleep(delay).await;
                                let response = hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
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
        FakeBackend { base, calls }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn calls(&self, path: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn ok(body: Value) -> (u16, Value, Duration) {
    (200, body, Duration::ZERO)
}

/// The answer of a backend that knows the cookie `sid=alice`.
fn admit_alice(body: &Value) -> (u16, Value, Duration) {
    match body["headers"]["cookie"].as_str() {
        Some("sid=alice") => ok(json!({
            "sub": "alice", "topics": ["room.*", "news"], "publish": ["room.*"],
            "expire_at": null, "info": {"name": "Alice", "plan": "pro"}
        })),
        Some("sid=banned") => (403, json!({}), Duration::ZERO),
        _ => (401, json!({}), Duration::ZERO),
    }
}

/// A protocol-1 handshake with `cookie` and no token.
async fn connect_with_cookie(gw: &TestGateway, cookie: &str) -> Result<Client, (u16, Value)> {
    let mut request = format!("{}?room=lobby", gw.ws_url())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("an answer in time")
    {
        Ok((ws, _)) => Ok(Client::from_ws(ws).await),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).unwrap_or(Value::Null));
            Err((status, body.unwrap_or(Value::Null)))
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn the_backend_admits_by_cookie_and_its_info_travels_to_the_other_hooks() {
    let backend = FakeBackend::start(|path, body| match path {
        "/connect" => admit_alice(body),
        "/subscribe" if body["topic"] == "room.secret" => (403, json!({}), Duration::ZERO),
        "/subscribe" => ok(json!({})),
        "/publish" if body["data"]["text"] == "spam" => (403, json!({}), Duration::ZERO),
        "/publish" if body["data"]["text"] == "darn" => ok(json!({"data": {"text": "****"}})),
        _ => ok(json!({})),
    })
    .await;
    let (c, s, p, w) = (
        backend.url("/connect"),
        backend.url("/subscribe"),
        backend.url("/publish"),
        backend.url("/webhooks"),
    );
    let gw = TestGateway::spawn_with(move |cfg| {
        cfg.proxy.connect_url = Some(c);
        cfg.proxy.subscribe_url = Some(s);
        cfg.proxy.subscribe_topics = herald_protocol::Permissions::parse(["room.*"]).unwrap();
        cfg.proxy.publish_url = Some(p);
        cfg.proxy.publish_topics = herald_protocol::Permissions::parse(["room.*"]).unwrap();
        cfg.webhooks.url = Some(w);
        cfg.webhooks.secret = Some(herald_core::Secret::new("webhook-secret-0123456789"));
        cfg.webhooks.events = vec!["session.connected".to_owned()];
    })
    .await;

    // Admitted by cookie: the claims are the backend's.
    let mut alice = connect_with_cookie(&gw, "sid=alice")
        .await
        .expect("admitted");
    let session = alice.welcome["session"].as_str().unwrap().to_owned();
    // The backend's info travels to the session.connected webhook.
    eventually("session.connected", async || {
        !backend.calls("/webhooks").is_empty()
    })
    .await;
    assert_eq!(
        backend.calls("/webhooks")[0]["data"],
        json!({"sub": "alice", "session": session, "node": "test-node",
               "info": {"name": "Alice", "plan": "pro"}})
    );
    let asked = backend.calls("/connect");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["headers"]["cookie"], "sid=alice");
    assert_eq!(asked[0]["query"]["room"], "lobby");
    assert!(
        asked[0]["remote_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{}",
        asked[0]
    );
    assert_eq!(asked[0]["token"], Value::Null);

    // Subscribe: the hook is asked for room.* only, and one veto refuses
    // the whole request.
    let reply = alice
        .call(json!({"type": "subscribe", "topics": ["news", "room.a", "room.secret"]}))
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "forbidden");
    assert_eq!(reply["topic"], "room.secret");
    let reply = alice
        .call(json!({"type": "subscribe", "topics": ["news", "room.a"]}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let asked = backend.calls("/subscribe");
    assert!(
        asked.iter().all(|b| b["topic"] != "news"),
        "news is not a hooked topic"
    );
    let room_a = asked
        .iter()
        .find(|b| b["topic"] == "room.a")
        .expect("room.a was asked about");
    assert_eq!(room_a["sub"], "alice");
    assert_eq!(room_a["session"], session.as_str());
    assert_eq!(room_a["info"], json!({"name": "Alice", "plan": "pro"}));

    // Publish: refused, replaced, or as sent.
    let reply = alice
        .call(json!({"type": "publish", "topic": "room.a", "data": {"text": "spam"}}))
        .await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{reply}"
    );
    let event = publish_and_read(&mut alice, json!({"text": "darn"})).await;
    assert_eq!(
        event,
        json!({"text": "****"}),
        "the backend's replacement is what fans out"
    );
    let event = publish_and_read(&mut alice, json!({"text": "hi"})).await;
    assert_eq!(event, json!({"text": "hi"}));
    let published = backend.calls("/publish");
    assert_eq!(published.len(), 3);
    assert_eq!(published[0]["session"], session.as_str());
    assert_eq!(published[0]["info"]["plan"], "pro");

    // Refusals at the handshake: 401 and 403 as the backend said.
    let (status, body) = connect_with_cookie(&gw, "sid=nobody")
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = connect_with_cookie(&gw, "sid=banned")
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    // A JWT still works, without asking the backend.
    let before = backend.calls("/connect").len();
    let mut bob = gw.client("bob", &["news"], &[]).await;
    bob.subscribe(&["news"]).await;
    assert_eq!(backend.calls("/connect").len(), before);
    alice.assert_alive().await;
}

#[tokio::test]
async fn a_protocol_2_connect_frame_with_an_opaque_token_asks_the_backend() {
    let backend = FakeBackend::start(|_, body| match body["token"].as_str() {
        Some("app-session-42") => ok(json!({"sub": "carol", "topics": ["news"]})),
        _ => (401, json!({}), Duration::ZERO),
    })
    .await;
    let url = backend.url("/connect");
    let gw = TestGateway::spawn_with(move |cfg| cfg.proxy.connect_url = Some(url)).await;
    let ws = open_v2(&gw, json!({"type": "connect", "token": "app-session-42"})).await;
    let mut c = Client::from_ws(ws).await;
    c.subscribe(&["news"]).await;
    assert_eq!(backend.calls("/connect")[0]["token"], "app-session-42");
    // A refused opaque token closes with 4005 and the code as the reason.
    let mut ws = open_v2(&gw, json!({"type": "connect", "token": "nope"})).await;
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                break (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close, (4005, "unauthorized".to_owned()));
}

/// Publishes `data` on room.a (the client is subscribed): returns the
/// data of the event it gets back, after checking the `published` reply
/// (the two may come in either order).
async fn publish_and_read(c: &mut Client, data: Value) -> Value {
    c.send(json!({"type": "publish", "ref": "p", "topic": "room.a", "data": data}))
        .await;
    let (a, b) = (c.recv().await, c.recv().await);
    let (reply, event) = if a["type"] == "message" {
        (b, a)
    } else {
        (a, b)
    };
    assert_eq!(reply["type"], "published", "{reply}");
    assert_eq!(event["type"], "message", "{event}");
    event["data"].clone()
}

/// A `herald.v2.json` connection without a token that sends `first`.
async fn open_v2(gw: &TestGateway, first: Value) -> Ws {
    let mut request = gw.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "herald.v2.json".parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect in time")
        .expect("upgraded");
    ws.send(Message::text(first.to_string())).await.unwrap();
    ws
}

#[tokio::test]
async fn a_dead_or_slow_backend_costs_a_quick_503_and_jwt_clients_are_served() {
    // Slow: every answer comes after the timeout.
    let slow = FakeBackend::start(|_, _| (200, json!({"sub": "x"}), Duration::from_secs(5))).await;
    let url = slow.url("/connect");
    let gw = TestGateway::spawn_with(move |cfg| {
        cfg.proxy.connect_url = Some(url);
        cfg.proxy.timeout = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    let (status, body) = connect_with_cookie(&gw, "sid=alice")
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let mut jwt = gw.client("bob", &["news"], &[]).await;
    jwt.subscribe(&["news"]).await;

    // Dead: nothing listens. After TRIP_AFTER failures in a row the
    // breaker opens: refusals come without a call, with Retry-After.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/connect", dead.local_addr().unwrap());
    drop(dead);
    let gw = TestGateway::spawn_with(move |cfg| cfg.proxy.connect_url = Some(url)).await;
    for _ in 0..herald_gateway::proxy::TRIP_AFTER + 3 {
        let mut request = gw.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("cookie", "sid=alice".parse().unwrap());
        let (status, _) = refused(request).await;
        assert_eq!(status, 503);
    }
    let (_, metrics) = gw.admin("GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    let value = |series: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        value("herald_proxy_requests_total{hook=\"connect\",result=\"error\"} "),
        u64::from(herald_gateway::proxy::TRIP_AFTER),
        "{metrics}"
    );
    assert_eq!(
        value("herald_proxy_requests_total{hook=\"connect\",result=\"shed\"} "),
        3
    );
    let response = retry_after(&gw).await;
    assert!(response.is_some(), "a 503 says when to retry");
    let mut jwt = gw.client("bob", &["news"], &[]).await;
    jwt.subscribe(&["news"]).await;
}

/// The `Retry-After` of a refused cookie handshake.
async fn retry_after(gw: &TestGateway) -> Option<String> {
    let stream = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/ws")
        .header("host", gw.public.to_string())
        .header("cookie", "sid=alice")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(response.status(), 503);
    response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("").to_owned())
}

/// The connect hook's `info` travels with the session's presence entries:
/// the `join` frame, the `presence` reply and the admin route; a member
/// with a JWT carries none.
#[tokio::test]
async fn the_connect_hooks_info_is_in_presence_entries() {
    let backend = FakeBackend::start(|_, _| {
        ok(
            json!({"sub": "alice", "topics": ["room.*"], "presence": ["room.*"],
                  "info": {"name": "Alice"}}),
        )
    })
    .await;
    let url = backend.url("/connect");
    let gw = TestGateway::spawn_with(move |cfg| {
        cfg.proxy.connect_url = Some(url);
        cfg.presence.topics = herald_protocol::Permissions::parse(["room.*"]).unwrap();
    })
    .await;
    let mut bob_claims = claims("bob", &["room.*"], &[]);
    bob_claims["presence"] = json!(["room.*"]);
    let mut bob = Client::connect(&gw.ws_url(), &token_with(bob_claims)).await;
    bob.subscribe(&["room.a"]).await;
    let mut alice = connect_with_cookie(&gw, "sid=alice")
        .await
        .expect("admitted");
    alice.subscribe(&["room.a"]).await;
    let join = loop {
        let f = bob.recv().await;
        if f["type"] == "join" && f["sub"] == "alice" {
            break f;
        }
    };
    assert_eq!(join["info"], json!({"name": "Alice"}), "{join}");
    let reply = bob
        .call(json!({"type": "presence", "topic": "room.a"}))
        .await;
    let members = reply["members"].as_array().unwrap();
    let of = |sub: &str| members.iter().find(|m| m["sub"] == sub).unwrap().clone();
    assert_eq!(of("alice")["info"], json!({"name": "Alice"}), "{reply}");
    assert!(of("bob").get("info").is_none(), "{reply}");
    let (status, body) = gw.admin("GET", "/v1/topics/room.a/presence", None).await;
    assert_eq!(status, 200, "{body}");
    let alice_entry = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["sub"] == "alice")
        .unwrap();
    assert_eq!(alice_entry["info"], json!({"name": "Alice"}), "{body}");
}
