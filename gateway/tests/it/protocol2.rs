//! Contract §10.1–§10.4: protocol 2 negotiated by `Sec-WebSocket-Protocol`
//! (JSON and MessagePack), byte payloads both ways and through the admin
//! API, and the token in the first frame; every bad input with its exact
//! close or error code, and the node serving others after each.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::*;

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A MessagePack value as JSON, `bin` as `{"$bin": [bytes]}` (tests only).
fn to_json(v: rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => json!(b),
        M::Integer(i) => i.as_u64().map_or_else(|| json!(i.as_i64()), |u| json!(u)),
        M::F32(f) => json!(f),
        M::F64(f) => json!(f),
        M::String(s) => json!(s.into_str().unwrap()),
        M::Binary(b) => json!({ "$bin": b }),
        M::Array(a) => Value::Array(a.into_iter().map(to_json).collect()),
        M::Map(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.as_str().unwrap().to_owned(), to_json(v)))
                .collect(),
        ),
        M::Ext(..) => panic!("no extension types"),
    }
}

/// JSON as MessagePack, `{"$bin": [bytes]}` as `bin` (tests only).
fn to_msgpack(v: &Value) -> rmpv::Value {
    use rmpv::Value as M;
    match v {
        Value::Null => M::Nil,
        Value::Bool(b) => M::Boolean(*b),
        Value::Number(n) => n
            .as_u64()
            .map(M::from)
            .or_else(|| n.as_i64().map(M::from))
            .unwrap_or_else(|| M::F64(n.as_f64().unwrap())),
        Value::String(s) => M::from(s.as_str()),
        Value::Array(a) => M::Array(a.iter().map(to_msgpack).collect()),
        Value::Object(o) if o.contains_key("$bin") => M::Binary(
            o["$bin"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect(),
        ),
        Value::Object(o) => M::Map(
            o.iter()
                .map(|(k, v)| (M::from(k.as_str()), to_msgpack(v)))
                .collect(),
        ),
    }
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &to_msgpack(v)).unwrap();
    out
}

/// A client of one protocol (`None`: protocol 1), through the raw socket.
struct V2 {
    ws: Ws,
    msgpack: bool,
    /// The `Sec-WebSocket-Protocol` the server answered.
    chosen: Option<String>,
}

impl V2 {
    /// Opens `/ws` asking for `protocol` (and giving `token` in the query
    /// when one is given); does not read anything.
    async fn open(gw: &TestGateway, protocol: Option<&str>, token: Option<&str>) -> V2 {
        let url = match token {
            Some(t) => format!("{}?token={t}", gw.ws_url()),
            None => gw.ws_url(),
        };
        let mut request = url.into_client_request().unwrap();
        if let Some(p) = protocol {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
            .expect("upgraded");
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        V2 {
            ws,
            msgpack: chosen.as_deref() == Some("herald.v2.msgpack"),
            chosen,
        }
    }

    /// Opens with a token in the query and reads `welcome`.
    async fn connect(
        gw: &TestGateway,
        protocol: Option<&str>,
        sub: &str,
        topics: &[&str],
        publish: &[&str],
    ) -> V2 {
        let t = token(sub, topics, publish);
        let mut c = V2::open(gw, protocol, Some(&t)).await;
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        c
    }

    async fn send(&mut self, frame: Value) {
        let message = if self.msgpack {
            Message::binary(encode(&frame))
        } else {
            Message::text(frame.to_string())
        };
        self.ws.send(message).await.unwrap();
    }

    /// The next frame as JSON (MessagePack decoded), pings skipped.
    async fn recv(&mut self) -> Value {
        match self.next().await {
            Ok(v) => v,
            Err(code) => panic!("closed with {code:?}"),
        }
    }

    /// The next frame, or the close (code and reason).
    async fn next(&mut self) -> Result<Value, (u16, String)> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("not ended")
                .expect("no error");
            match m {
                Message::Text(t) => {
                    assert!(!self.msgpack, "a text frame on MessagePack");
                    return Ok(serde_json::from_str(&t).unwrap());
                }
                Message::Binary(b) => {
                    assert!(self.msgpack, "a binary frame on JSON");
                    let mut rest = &b[..];
                    let v = rmpv::decode::read_value(&mut rest).unwrap();
                    assert!(rest.is_empty(), "one map per frame");
                    return Ok(to_json(v));
                }
                Message::Close(Some(CloseFrame { code, reason })) => {
                    return Err((u16::from(code), reason.to_string()));
                }
                Message::Close(None) => return Err((1005, String::new())),
                _ => {}
            }
        }
    }

    async fn call(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    async fn expect_close(&mut self) -> (u16, String) {
        loop {
            if let Err(close) = self.next().await {
                return close;
            }
        }
    }
}

#[tokio::test]
async fn protocol_2_is_negotiated_and_echoed() {
    let gw = TestGateway::spawn().await;
    for (asked, chosen, version) in [
        (None, None, 1),
        (Some("herald.v2.json"), Some("herald.v2.json"), 2),
        (Some("herald.v2.msgpack"), Some("herald.v2.msgpack"), 2),
        (
            Some("chat, herald.v2.msgpack"),
            Some("herald.v2.msgpack"),
            2,
        ),
    ] {
        let t = token("a", &["news"], &[]);
        let mut c = V2::open(&gw, asked, Some(&t)).await;
        assert_eq!(c.chosen.as_deref(), chosen, "{asked:?}");
        let welcome = c.recv().await;
        assert_eq!(welcome["protocol"], version, "{asked:?}: {welcome}");
        assert!(welcome["heartbeat_ms"].is_u64());
    }
    // A name the server does not know: protocol 1, no name echoed (a
    // strict client library refuses that, so it is checked on the wire).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let t = token("a", &["news"], &[]);
    let request = format!(
        "GET /ws?token={t} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, raw.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
    assert!(
        head.contains(r#""protocol":1"#),
        "welcome says protocol 1: {head}"
    );
}

/// Every frame of contract §5 on the MessagePack encoding, and byte
/// payloads reaching every encoding as contract §10.2 says.
#[tokio::test]
async fn msgpack_frames_and_byte_payloads_reach_every_encoding() {
    let gw = TestGateway::spawn().await;
    let mut packed = V2::connect(&gw, Some("herald.v2.msgpack"), "m", &["bin.>"], &["bin.>"]).await;
    let mut json2 = V2::connect(&gw, Some("herald.v2.json"), "j", &["bin.>"], &["bin.>"]).await;
    let mut v1 = gw.client("v1", &["bin.>"], &[]).await;
    for c in [&mut packed, &mut json2] {
        let r = c
            .call(json!({"type": "subscribe", "ref": "s", "topics": ["bin.a"]}))
            .await;
        assert_eq!(r["type"], "subscribed", "{r}");
        assert!(
            r["positions"]["bin.a"].as_str().unwrap().ends_with("-0"),
            "{r}"
        );
    }
    v1.subscribe(&["bin.a"]).await;
    // Bytes from a MessagePack client: a bin, zeros and all. Its own
    // event and the `published` reply may come in either order.
    packed
        .send(json!({"type": "publish", "ref": "p", "topic": "bin.a", "data": {"$bin": [0, 1, 0, 255]}, "event": "raw"}))
        .await;
    let (a, b) = (packed.recv().await, packed.recv().await);
    let (reply, m) = if a["type"] == "published" {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(reply["type"], "published", "{reply}");
    assert_eq!(m["data"], json!({"$bin": [0, 1, 0, 255]}), "{m}");
    assert_eq!(
        (m["event"].clone(), m["id"].clone()),
        (json!("raw"), reply["id"].clone())
    );
    assert!(m["ts"].is_u64());
    for frame in [json2.recv().await, v1.recv().await] {
        assert_eq!(frame["data_b64"], "AAEA/w==", "{frame}");
        assert!(frame.get("data").is_none());
    }
    // Bytes from a JSON client, as data_b64.
    json2
        .send(json!({"type": "publish", "ref": "q", "topic": "bin.a", "data_b64": "3q2+7w=="}))
        .await;
    let (a, b) = (json2.recv().await, json2.recv().await);
    let own = if a["type"] == "message" { a } else { b };
    assert_eq!(own["data_b64"], "3q2+7w==");
    assert_eq!(
        packed.recv().await["data"],
        json!({"$bin": [0xde, 0xad, 0xbe, 0xef]})
    );
    assert_eq!(v1.recv().await["data_b64"], "3q2+7w==");
    // JSON from the admin API reaches MessagePack as the same value.
    gw.publish(
        "bin.a",
        json!({"price": 189.25, "n": -3, "ok": true, "l": [null, "x"]}),
    )
    .await;
    let m = packed.recv().await;
    assert_eq!(
        m["data"],
        json!({"price": 189.25, "n": -3, "ok": true, "l": [null, "x"]})
    );
    // Bytes from the admin API, and history answering data_b64.
    let (status, reply) = gw
        .admin(
            "POST",
            "/v1/publish",
            Some(json!({"topic": "bin.a", "data_b64": "AA=="})),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(packed.recv().await["data"], json!({"$bin": [0]}));
    let (_, history) = gw.admin("GET", "/v1/topics/bin.a/history", None).await;
    let datas: Vec<Value> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.get("data_b64").cloned().unwrap_or(m["data"].clone()))
        .collect();
    assert_eq!(datas[0], "AAEA/w==");
    assert_eq!(datas[3], "AA==");
    // Every other frame on MessagePack.
    let pong = packed.call(json!({"type": "ping", "ref": "1"})).await;
    assert_eq!(pong, json!({"type": "pong", "ref": "1"}));
    let err = packed
        .call(json!({"type": "subscribe", "ref": "2", "topics": ["other"]}))
        .await;
    assert_eq!(
        (err["type"].clone(), err["code"].clone()),
        (json!("error"), json!("forbidden"))
    );
    let unsub = packed
        .call(json!({"type": "unsubscribe", "ref": "3", "topics": ["bin.a"]}))
        .await;
    assert_eq!(
        unsub,
        json!({"type": "unsubscribed", "ref": "3", "topics": ["bin.a"]})
    );
}

/// Contract §10.2's refusals, from clients and the admin API.
#[tokio::test]
async fn payload_refusals() {
    let gw = TestGateway::spawn_with(|c| c.limits.max_message_size = 1024).await;
    let mut c = V2::connect(&gw, Some("herald.v2.json"), "j", &["p.>"], &["p.>"]).await;
    for (frame, code) in [
        (
            json!({"type": "publish", "ref": "1", "topic": "p.a", "data": 1, "data_b64": "AA=="}),
            "bad_request",
        ),
        (
            json!({"type": "publish", "ref": "2", "topic": "p.a"}),
            "bad_request",
        ),
        (
            json!({"type": "publish", "ref": "3", "topic": "p.a", "data_b64": "%%%"}),
            "bad_request",
        ),
    ] {
        let r = c.call(frame.clone()).await;
        assert_eq!(
            (r["type"].clone(), r["code"].clone()),
            (json!("error"), json!(code)),
            "{frame}: {r}"
        );
    }
    let mut packed = V2::connect(&gw, Some("herald.v2.msgpack"), "m", &["p.>"], &["p.>"]).await;
    for data in [json!([{"$bin": [1]}]), json!({"k": {"$bin": [1]}})] {
        let r = packed
            .call(json!({"type": "publish", "ref": "5", "topic": "p.a", "data": data}))
            .await;
        assert_eq!(
            (r["code"].clone(), r["ref"].clone()),
            (json!("bad_request"), json!("5")),
            "{r}"
        );
    }
    // A client's bytes cannot outgrow its frame, which the frame limit
    // (1009) bounds first; the admin API's body limit is its own.
    for (body, status, code) in [
        (
            json!({"topic": "p.a", "data": 1, "data_b64": "AA=="}),
            400,
            "bad_request",
        ),
        (json!({"topic": "p.a"}), 400, "bad_request"),
        (
            json!({"topic": "p.a", "data_b64": "not base64"}),
            400,
            "bad_request",
        ),
        (
            json!({"topic": "p.a", "data_b64": "A".repeat(1400)}),
            413,
            "too_large",
        ),
        (
            json!({"messages": [{"topic": "p.a", "data_b64": "AA==", "data": 2}]}),
            400,
            "bad_request",
        ),
    ] {
        let path = if body.get("messages").is_some() {
            "/v1/publish/batch"
        } else {
            "/v1/publish"
        };
        let (got, reply) = gw.admin("POST", path, Some(body.clone())).await;
        assert_eq!(
            (got, reply["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {reply}"
        );
    }
    c.call(json!({"type": "ping"})).await;
    packed.call(json!({"type": "ping"})).await;
}

/// Contract §10.1's closes: the wrong frame kind (1003), MessagePack that
/// is not one map (1007); the node serves others meanwhile.
#[tokio::test]
async fn wrong_frame_kinds_and_invalid_msgpack_close() {
    let gw = TestGateway::spawn().await;
    let mut bystander = gw.client("b", &["news"], &[]).await;
    let cases: [(Option<&str>, Message, u16); 5] = [
        (Some("herald.v2.json"), Message::binary(vec![0x80]), 1003),
        (
            Some("herald.v2.msgpack"),
            Message::text("{\"type\":\"ping\"}"),
            1003,
        ),
        (Some("herald.v2.msgpack"), Message::binary(vec![0xc1]), 1007),
        (
            Some("herald.v2.msgpack"),
            Message::binary(encode(&json!([1, 2]))),
            1007,
        ),
        (None, Message::binary(vec![0x80]), 1008),
    ];
    for (protocol, message, code) in cases {
        let mut c = V2::connect(&gw, protocol, "a", &["news"], &[]).await;
        c.ws.send(message.clone()).await.unwrap();
        assert_eq!(c.expect_close().await.0, code, "{protocol:?} {message:?}");
        bystander.assert_alive().await;
    }
}

/// Contract §10.4: the token in the first frame, on every protocol, with
/// every handshake check, and each refusal's 4005 reason.
#[tokio::test]
async fn the_token_in_the_first_frame() {
    let gw = TestGateway::spawn_with(|c| {
        c.auth.connect_timeout = Duration::from_millis(400);
        c.limits.max_connections_per_user = 1;
    })
    .await;
    let mut bystander = gw.client("b", &["news"], &[]).await;
    for protocol in [None, Some("herald.v2.json"), Some("herald.v2.msgpack")] {
        let mut c = V2::open(&gw, protocol, None).await;
        c.send(json!({"type": "connect", "token": token("alice", &["news"], &[])}))
            .await;
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{protocol:?}: {welcome}");
        // A second connect is a bad request, not a new login.
        let again = c
            .call(json!({"type": "connect", "token": token("mallory", &["news"], &[])}))
            .await;
        assert_eq!(again["code"], "bad_request", "{again}");
        assert_eq!(
            c.call(json!({"type": "subscribe", "ref": "s", "topics": ["news"]}))
                .await["type"],
            "subscribed"
        );
        // The per-user limit holds: alice is here already.
        let mut second = V2::open(&gw, protocol, None).await;
        second
            .send(json!({"type": "connect", "token": token("alice", &["news"], &[])}))
            .await;
        assert_eq!(
            second.expect_close().await,
            (4005, "too_many_connections".to_owned())
        );
        drop(c);
        eventually("alice to be gone", async || {
            gw.node.metrics.value("herald_connections") == Some(1.0)
        })
        .await;
    }
    let (status, _) = gw
        .admin("POST", "/v1/revoke", Some(json!({"jti": "stolen"})))
        .await;
    assert_eq!(status, 200);
    let expired = token_with(json!({"sub": "x", "exp": now_secs() - 3600, "topics": []}));
    let revoked =
        token_with(json!({"sub": "x", "exp": now_secs() + 3600, "jti": "stolen", "topics": []}));
    let cases: Vec<(Option<Value>, &str)> = vec![
        (
            Some(json!({"type": "connect", "token": "not.a.jwt"})),
            "unauthorized",
        ),
        (
            Some(json!({"type": "connect", "token": expired})),
            "token_expired",
        ),
        (
            Some(json!({"type": "connect", "token": revoked})),
            "unauthorized",
        ),
        (Some(json!({"type": "ping"})), "unauthorized"),
        (None, "unauthorized"),
    ];
    for (first, reason) in cases {
        let mut c = V2::open(&gw, Some("herald.v2.json"), None).await;
        if let Some(frame) = &first {
            c.send(frame.clone()).await;
        }
        assert_eq!(
            c.expect_close().await,
            (4005, reason.to_owned()),
            "{first:?}"
        );
        bystander.assert_alive().await;
    }
}
