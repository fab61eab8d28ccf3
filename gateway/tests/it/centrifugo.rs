//! Contract §10.7: the Centrifugo-compatible endpoint, through the raw
//! socket in both encodings: what its SDKs rely on (the connect answer,
//! positioned and recoverable subscriptions, recovery with the missed
//! publications in the subscribe reply, one stream with `/ws`), every bad
//! input with the protocol's answer and the node serving others after it,
//! and Herald's refusals and close codes with Centrifugo's advice. The
//! SDKs themselves (npm `centrifuge`, PyPI `centrifuge-python`) are run
//! against real nodes by `tests/compat` and `clients/python`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_protocol::centrifugo::schema::{
    ChannelRequest, Command, ConnectRequest, Empty, HistoryRequest, PublishRequest, RefreshRequest,
    Reply, StreamPosition, SubscribeRequest,
};
use herald_protocol::centrifugo::{self, Wire};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::*;

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn gateway() -> TestGateway {
    TestGateway::spawn_with(|c| {
        c.compat.centrifugo = true;
        c.presence.topics = herald_protocol::Permissions::parse(["room.>"]).unwrap();
    })
    .await
}

/// A Centrifugo client on the raw socket.
struct Cf {
    ws: Ws,
    wire: Wire,
    next_id: u32,
    /// Pushes read while waiting for a reply, for the next `recv`.
    early: std::collections::VecDeque<Value>,
}

impl Cf {
    async fn open(gw: &TestGateway, wire: Wire) -> Cf {
        let url = format!("ws://{}/connection/websocket", gw.public);
        let mut request = url.into_client_request().unwrap();
        if wire == Wire::Protobuf {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                centrifugo::PROTOBUF_SUBPROTOCOL.parse().unwrap(),
            );
        }
        let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
            .expect("upgraded");
        let chosen = response.headers().get("sec-websocket-protocol");
        assert_eq!(
            chosen.map(|v| v.to_str().unwrap()),
            (wire == Wire::Protobuf).then_some(centrifugo::PROTOBUF_SUBPROTOCOL)
        );
        Cf {
            ws,
            wire,
            next_id: 0,
            early: std::collections::VecDeque::new(),
        }
    }

    /// Opens and connects with `token`; returns the connect result.
    async fn connect(gw: &TestGateway, wire: Wire, token: &str) -> (Cf, Value) {
        let mut c = Cf::open(gw, wire).await;
        let reply = c
            .call(Command {
                connect: Some(ConnectRequest {
                    token: token.to_owned(),
                    ..ConnectRequest::default()
                }),
                ..Command::default()
            })
            .await;
        assert!(reply.get("error").is_none(), "{reply}");
        (c, reply["connect"].clone())
    }

    async fn send(&mut self, command: &Command) {
        let bytes = centrifugo::encode(self.wire, command);
        let message = match self.wire {
            Wire::Json => Message::text(String::from_utf8(bytes).unwrap()),
            Wire::Protobuf => Message::binary(bytes),
        };
        self.ws.send(message).await.unwrap();
    }

    /// Sends `command` with the next id and returns its reply (pushes
    /// before it are kept for `recv`), as JSON whatever the encoding.
    async fn call(&mut self, mut command: Command) -> Value {
        self.next_id += 1;
        command.id = self.next_id;
        self.send(&command).await;
        loop {
            let reply = self.read().await;
            if reply["id"] == json!(command.id) {
                return reply;
            }
            self.early.push_back(reply);
        }
    }

    /// The next server message (pings skipped), as JSON.
    async fn recv(&mut self) -> Value {
        match self.early.pop_front() {
            Some(early) => early,
            None => self.read().await,
        }
    }

    async fn read(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("open")
                .expect("readable");
            let bytes = match next {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => continue,
            };
            let replies = centrifugo::decode_replies(self.wire, &bytes).unwrap();
            assert_eq!(replies.len(), 1, "one message per frame");
            let reply: &Reply = &replies[0];
            if *reply == Reply::default() {
                continue;
            }
            // Protobuf data is bytes: shown as the JSON it holds, as the
            // JSON encoding writes it.
            return serde_json::to_value(reply).unwrap();
        }
    }

    /// Reads until the server's close and returns its code.
    async fn expect_close(&mut self) -> u16 {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time");
            match next {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    }

    async fn subscribe(&mut self, channel: &str, from: Option<(&str, u64)>) -> Value {
        let mut request = SubscribeRequest {
            channel: channel.to_owned(),
            ..SubscribeRequest::default()
        };
        if let Some((epoch, offset)) = from {
            request.recover = true;
            request.epoch = epoch.to_owned();
            request.offset = offset;
        }
        self.call(Command {
            subscribe: Some(request),
            ..Command::default()
        })
        .await
    }

    async fn ping(&mut self) {
        let reply = self
            .call(Command {
                ping: Some(Empty {}),
                ..Command::default()
            })
            .await;
        assert_eq!(reply["ping"], json!({}), "{reply}");
    }
}

fn publish_command(channel: &str, data: &[u8]) -> Command {
    Command {
        publish: Some(PublishRequest {
            channel: channel.to_owned(),
            data: data.to_vec(),
        }),
        ..Command::default()
    }
}

fn user_token(sub: &str) -> String {
    let mut c = claims(sub, &["news", "quiet.>", "chat.>", "room.>"], &["chat.>"]);
    c["presence"] = json!(["room.>"]);
    token_with(c)
}

#[tokio::test]
async fn both_encodings_subscribe_publish_and_recover_as_the_sdks_expect() {
    let gw = gateway().await;
    for wire in [Wire::Json, Wire::Protobuf] {
        let (mut c, connect) = Cf::connect(&gw, wire, &user_token("ann")).await;
        assert_eq!(connect["expires"], true);
        assert!(connect["ttl"].as_u64().unwrap() > 3500, "{connect}");
        assert_eq!(
            (connect["ping"].as_u64(), &connect["pong"]),
            (Some(25), &json!(true))
        );
        assert!(connect["client"].as_str().is_some_and(|s| !s.is_empty()));

        // Every subscription is positioned and recoverable, from its start.
        let sub = c.subscribe("news", None).await["subscribe"].clone();
        assert_eq!(
            (&sub["recoverable"], &sub["positioned"]),
            (&json!(true), &json!(true))
        );
        let epoch = sub["epoch"].as_str().unwrap().to_owned();
        let id = gw.publish("news", json!({"n": 1})).await;
        let (id_epoch, offset) = centrifugo::position(&id).unwrap();
        assert_eq!(id_epoch, epoch, "the epoch is the id's");
        let push = c.recv().await;
        assert_eq!(push["push"]["channel"], "news");
        assert_eq!(push["push"]["pub"]["data"], json!({"n": 1}));
        assert_eq!(push["push"]["pub"]["offset"], json!(offset));

        // A quiet topic: its position before any event is recoverable too.
        let quiet_topic = format!("quiet.{wire:?}");
        let quiet = c.subscribe(&quiet_topic, None).await["subscribe"].clone();
        let quiet_from = (quiet["epoch"].as_str().unwrap().to_owned(), 0);
        assert!(
            quiet.get("offset").is_none(),
            "offset 0 is omitted: {quiet}"
        );

        // Away: events published meanwhile come back in the subscribe
        // reply, in order, with `recovered` and `was_recovering`.
        drop(c);
        for n in 2..=4 {
            gw.publish("news", json!({ "n": n })).await;
        }
        gw.publish(&quiet_topic, json!("first")).await;
        let (mut c, _) = Cf::connect(&gw, wire, &user_token("ann")).await;
        let sub = c.subscribe("news", Some((&epoch, offset))).await["subscribe"].clone();
        assert_eq!(
            (&sub["recovered"], &sub["was_recovering"]),
            (&json!(true), &json!(true))
        );
        let got: Vec<&Value> = sub["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["data"]["n"])
            .collect();
        assert_eq!(got, [&json!(2), &json!(3), &json!(4)]);
        assert_eq!(sub["offset"], json!(offset + 3));
        let quiet = c
            .subscribe(&quiet_topic, Some((&quiet_from.0, quiet_from.1)))
            .await["subscribe"]
            .clone();
        assert_eq!(quiet["recovered"], true, "{quiet}");
        assert_eq!(quiet["publications"][0]["data"], "first");

        // From another epoch: not recovered, and told so.
        let other = c.subscribe("chat.x", Some(("0000beef", 3))).await["subscribe"].clone();
        // `recovered: false` is omitted, as every default is.
        assert_eq!(
            (&other["recovered"], &other["was_recovering"]),
            (&Value::Null, &json!(true))
        );
        c.ping().await;
    }
}

#[tokio::test]
async fn one_stream_across_both_endpoints_and_encodings() {
    let gw = gateway().await;
    let (mut json_client, _) = Cf::connect(&gw, Wire::Json, &user_token("ann")).await;
    let (mut proto_client, _) = Cf::connect(&gw, Wire::Protobuf, &user_token("bob")).await;
    let mut herald = gw.client("cy", &["chat.>"], &["chat.>"]).await;
    json_client.subscribe("chat.a", None).await;
    proto_client.subscribe("chat.a", None).await;
    herald.subscribe(&["chat.a"]).await;
    let metrics = &gw.node.metrics;
    for (protocol, n) in [
        ("herald_json", 1.0),
        ("centrifugo_json", 1.0),
        ("centrifugo_protobuf", 1.0),
        ("herald_msgpack", 0.0),
    ] {
        let series = format!("herald_protocol_connections{{protocol=\"{protocol}\"}}");
        assert_eq!(metrics.value(&series), Some(n), "{series}");
    }

    let reply = json_client
        .call(publish_command("chat.a", br#"{"from":"json"}"#))
        .await;
    assert_eq!(reply["publish"], json!({}), "{reply}");
    // Protobuf data that is not JSON travels as bytes (contract §10.2).
    proto_client
        .call(publish_command("chat.a", &[0, 159, 1]))
        .await;
    herald
        .send(json!({"type": "publish", "topic": "chat.a", "data": {"from": "ws"}}))
        .await;

    let mut seen_by_herald = Vec::new();
    while seen_by_herald.len() < 3 {
        let f = herald.recv().await;
        if f["type"] == "message" {
            seen_by_herald.push(f);
        }
    }
    assert_eq!(seen_by_herald[0]["data"], json!({"from": "json"}));
    assert_eq!(seen_by_herald[1]["data_b64"], "AJ8B");
    assert_eq!(seen_by_herald[2]["data"], json!({"from": "ws"}));
    for c in [&mut json_client, &mut proto_client] {
        let mut datas = Vec::new();
        for _ in 0..3 {
            let push = c.recv().await;
            datas.push(push["push"]["pub"].clone());
        }
        assert_eq!(datas[0]["data"], json!({"from": "json"}));
        assert_eq!(datas[2]["data"], json!({"from": "ws"}));
        // The same offsets everywhere: the ids of the /ws frames.
        for (p, f) in datas.iter().zip(&seen_by_herald) {
            let (_, offset) = centrifugo::position(f["id"].as_str().unwrap()).unwrap();
            assert_eq!(p["offset"], json!(offset));
        }
    }
    // Bytes reach a JSON Centrifugo client as tagged base64.
    // (The Protobuf client gets them as bytes: decoded above as JSON null,
    // since they are not JSON.)
}

#[tokio::test]
async fn bytes_reach_a_json_centrifugo_client_as_tagged_base64() {
    let gw = gateway().await;
    let (mut c, _) = Cf::connect(&gw, Wire::Json, &user_token("ann")).await;
    c.subscribe("news", None).await;
    let (status, body) = gw
        .admin(
            "POST",
            "/v1/publish",
            Some(json!({"topic": "news", "data_b64": "AAEC"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let push = c.recv().await;
    assert_eq!(push["push"]["pub"]["data"], "AAEC");
    assert_eq!(push["push"]["pub"]["tags"]["data_encoding"], "base64");
}

#[tokio::test]
async fn history_presence_and_refresh() {
    let gw = gateway().await;
    let (mut c, _) = Cf::connect(&gw, Wire::Json, &user_token("ann")).await;
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(gw.publish("news", json!(n)).await);
    }
    let (epoch, first) = centrifugo::position(&ids[0]).unwrap();
    let history = |limit: i32, since: Option<(u64, &str)>, reverse: bool| Command {
        history: Some(HistoryRequest {
            channel: "news".to_owned(),
            limit,
            since: since.map(|(offset, epoch)| StreamPosition {
                offset,
                epoch: epoch.to_owned(),
            }),
            reverse,
        }),
        ..Command::default()
    };
    let datas = |r: &Value| -> Vec<Value> {
        r["history"]["publications"]
            .as_array()
            .map(|a| a.iter().map(|p| p["data"].clone()).collect())
            .unwrap_or_default()
    };
    let all = c.call(history(-1, None, false)).await;
    assert_eq!(
        datas(&all),
        [json!(1), json!(2), json!(3), json!(4), json!(5)]
    );
    assert_eq!(
        (all["history"]["epoch"].as_str(), &all["history"]["offset"]),
        (Some(epoch), &json!(first + 4))
    );
    let position_only = c.call(history(0, None, false)).await;
    assert!(datas(&position_only).is_empty());
    assert_eq!(position_only["history"]["offset"], json!(first + 4));
    let after = c.call(history(2, Some((first + 1, epoch)), false)).await;
    assert_eq!(datas(&after), [json!(3), json!(4)]);
    let newest = c.call(history(2, None, true)).await;
    assert_eq!(datas(&newest), [json!(5), json!(4)]);
    let gone = c.call(history(10, Some((3, "0000beef")), false)).await;
    assert_eq!(gone["error"]["code"], 112, "{gone}");
    let not_mine = c
        .call(Command {
            history: Some(HistoryRequest {
                channel: "secret".to_owned(),
                ..HistoryRequest::default()
            }),
            ..Command::default()
        })
        .await;
    assert_eq!(not_mine["error"]["code"], 103, "{not_mine}");

    // Presence: the other member's join, then both listed and counted.
    c.subscribe("room.1", None).await;
    let (mut d, _) = Cf::connect(&gw, Wire::Protobuf, &user_token("bob")).await;
    d.subscribe("room.1", None).await;
    // Its own join first (contract §8: it follows the subscribe reply).
    let own = c.recv().await;
    assert_eq!(own["push"]["join"]["info"]["user"], "ann", "{own}");
    let join = c.recv().await;
    assert_eq!(join["push"]["join"]["info"]["user"], "bob", "{join}");
    let presence = c
        .call(Command {
            presence: Some(ChannelRequest {
                channel: "room.1".to_owned(),
            }),
            ..Command::default()
        })
        .await;
    let members = presence["presence"]["presence"].as_object().unwrap();
    let users: Vec<&str> = members
        .values()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(
        (users.len(), users.contains(&"bob")),
        (2, true),
        "{presence}"
    );
    let stats = c
        .call(Command {
            presence_stats: Some(ChannelRequest {
                channel: "room.1".to_owned(),
            }),
            ..Command::default()
        })
        .await;
    assert_eq!(
        stats["presence_stats"],
        json!({"num_clients": 2, "num_users": 2})
    );
    drop(d);
    let leave = c.recv().await;
    assert_eq!(leave["push"]["leave"]["info"]["user"], "bob", "{leave}");

    // A refreshed token: its ttl; one for another user is refused.
    let refreshed = c
        .call(Command {
            refresh: Some(RefreshRequest {
                token: user_token("ann"),
            }),
            ..Command::default()
        })
        .await;
    assert_eq!(refreshed["refresh"]["expires"], true, "{refreshed}");
    let other = c
        .call(Command {
            refresh: Some(RefreshRequest {
                token: user_token("eve"),
            }),
            ..Command::default()
        })
        .await;
    assert_eq!(other["error"]["code"], 103, "{other}");
    c.ping().await;
}

#[tokio::test]
async fn bad_input_gets_the_protocols_answer_and_others_are_served() {
    let gw = TestGateway::spawn_with(|c| {
        c.compat.centrifugo = true;
        c.limits.max_message_size = 4096;
        c.limits.max_subscriptions = 3;
    })
    .await;
    let (mut bystander, _) = Cf::connect(&gw, Wire::Json, &user_token("by")).await;

    // Replies with an error, and the connection stays.
    let (mut c, _) = Cf::connect(&gw, Wire::Json, &user_token("ann")).await;
    let no_method = c.call(Command::default()).await;
    assert_eq!(no_method["error"]["code"], 104, "{no_method}");
    let rpc = c
        .call(Command {
            rpc: Some(Empty {}),
            ..Command::default()
        })
        .await;
    assert_eq!(rpc["error"]["code"], 104, "{rpc}");
    let forbidden = c.subscribe("secret", None).await;
    assert_eq!(forbidden["error"]["code"], 103, "{forbidden}");
    let invalid = c.subscribe("bad topic", None).await;
    assert_eq!(invalid["error"]["code"], 107, "{invalid}");
    c.subscribe("news", None).await;
    let again = c.subscribe("news", None).await;
    assert_eq!(again["error"]["code"], 105, "{again}");
    c.subscribe("chat.1", None).await;
    c.subscribe("chat.2", None).await;
    let over = c.subscribe("chat.3", None).await;
    assert_eq!(over["error"]["code"], 106, "{over}");
    let not_allowed = c.call(publish_command("news", b"1")).await;
    assert_eq!(not_allowed["error"]["code"], 103, "{not_allowed}");
    let no_data = c.call(publish_command("chat.1", b"")).await;
    assert_eq!(no_data["error"]["code"], 107, "{no_data}");
    c.ping().await;

    // Each of these closes the connection with the protocol's code.
    let cases: Vec<(&str, Wire, Message, u16)> = vec![
        (
            "malformed JSON",
            Wire::Json,
            Message::text("{\"id\":"),
            3501,
        ),
        ("an array", Wire::Json, Message::text("[1]"), 3501),
        (
            "a second connect",
            Wire::Json,
            Message::text(format!(
                "{{\"id\":9,\"connect\":{{\"token\":\"{}\"}}}}",
                user_token("ann")
            )),
            3501,
        ),
        (
            "a request without an id",
            Wire::Json,
            Message::text("{\"subscribe\":{\"channel\":\"news\"}}"),
            3501,
        ),
        (
            "binary on JSON",
            Wire::Json,
            Message::binary(vec![1, 2]),
            3501,
        ),
        (
            "text on Protobuf",
            Wire::Protobuf,
            Message::text("{}"),
            3501,
        ),
        (
            "a Protobuf length past the end",
            Wire::Protobuf,
            Message::binary(vec![9, 8]),
            3501,
        ),
        (
            "oversize",
            Wire::Json,
            Message::text("x".repeat(5000)),
            1009,
        ),
    ];
    for (what, wire, message, code) in cases {
        let (mut c, _) = Cf::connect(&gw, wire, &user_token("ann")).await;
        c.ws.send(message).await.unwrap();
        assert_eq!(c.expect_close().await, code, "{what}");
        bystander.ping().await;
    }

    // Before connect: anything but connect closes with 3501.
    let mut early = Cf::open(&gw, Wire::Json).await;
    early
        .send(&Command {
            id: 1,
            subscribe: Some(SubscribeRequest {
                channel: "news".to_owned(),
                ..SubscribeRequest::default()
            }),
            ..Command::default()
        })
        .await;
    assert_eq!(early.expect_close().await, 3501);
    bystander.ping().await;
}

#[tokio::test]
async fn refusals_and_disconnects_keep_their_advice() {
    let gw = gateway().await;
    // A forged token: 101, then "do not reconnect".
    let mut c = Cf::open(&gw, Wire::Json).await;
    let reply = c
        .call(Command {
            connect: Some(ConnectRequest {
                token: "not-a-jwt".to_owned(),
                ..ConnectRequest::default()
            }),
            ..Command::default()
        })
        .await;
    assert_eq!(
        (&reply["error"]["code"], &reply["error"]["temporary"]),
        (&json!(101), &Value::Null)
    );
    assert_eq!(c.expect_close().await, 3500);

    // An expired one: 109, on which the SDKs fetch a new token.
    let mut expired = claims("ann", &["news"], &[]);
    expired["exp"] = json!(now_secs() - 3600);
    let mut c = Cf::open(&gw, Wire::Protobuf).await;
    let reply = c
        .call(Command {
            connect: Some(ConnectRequest {
                token: token_with(expired),
                ..ConnectRequest::default()
            }),
            ..Command::default()
        })
        .await;
    assert_eq!(reply["error"]["code"], 109, "{reply}");
    assert!(c.expect_close().await < 3500, "reconnect advised");

    // Disconnected by the admin API: "do not reconnect" (3503).
    let (mut c, _) = Cf::connect(&gw, Wire::Json, &user_token("mallory")).await;
    let (status, _) = gw
        .admin("POST", "/v1/disconnect", Some(json!({"sub": "mallory"})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.expect_close().await, 3503);

    // A node draining: "shutdown" (3001), reconnect advised (elsewhere).
    let (mut c, _) = Cf::connect(&gw, Wire::Protobuf, &user_token("ann")).await;
    c.subscribe("news", None).await;
    let drained = tokio::spawn(gw.shutdown());
    assert_eq!(c.expect_close().await, 3001);
    drained.await.unwrap();

    // A token that expires: "connection expired" (3005), reconnect advised.
    let gw = TestGateway::spawn_with(|c| {
        c.compat.centrifugo = true;
        c.jwt.leeway = Duration::ZERO;
    })
    .await;
    let mut short = claims("ann", &["news"], &[]);
    short["exp"] = json!(now_secs() + 2);
    let (mut c, connect) = Cf::connect(&gw, Wire::Json, &token_with(short)).await;
    assert!(connect["ttl"].as_u64().unwrap() <= 2, "{connect}");
    assert_eq!(c.expect_close().await, 3005);
}

/// The heartbeat wheel sends the protocol's own ping (an empty reply, what
/// the SDKs wait for) in each encoding, and a client that answers nothing
/// is closed with 3012 (Herald's 4002, reconnect advised).
#[tokio::test]
async fn the_protocols_ping_then_3012_for_a_silent_client() {
    let gw = TestGateway::spawn_with(|c| {
        c.compat.centrifugo = true;
        c.heartbeat.interval = Duration::from_millis(200);
        c.heartbeat.timeout = Duration::from_millis(900);
    })
    .await;
    for wire in [Wire::Json, Wire::Protobuf] {
        let (mut c, connect) = Cf::connect(&gw, wire, &user_token("ann")).await;
        assert_eq!(connect["ping"], json!(1), "{connect}");
        let mut pings = 0;
        let code = loop {
            let next = tokio::time::timeout(WAIT, c.ws.next())
                .await
                .expect("a message in time")
                .expect("open");
            match next.expect("readable") {
                Message::Text(t) => {
                    assert_eq!(wire, Wire::Json);
                    assert_eq!(t.as_str(), "{}", "a JSON ping");
                    pings += 1;
                }
                Message::Binary(b) => {
                    assert_eq!(wire, Wire::Protobuf);
                    assert_eq!(&b[..], &[0], "a Protobuf ping: an empty reply");
                    pings += 1;
                }
                Message::Close(Some(f)) => break u16::from(f.code),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(code, 3012, "heartbeat timeout, reconnect");
        assert!(pings >= 2, "pinged every interval: {pings}");
    }
}
