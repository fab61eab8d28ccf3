//! Contract §4: every handshake refusal, with its status and code, and the
//! node serving others afterwards.

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use tokio_tungstenite::tungstenite;

use crate::common::*;
use std::time::Duration;

#[tokio::test]
async fn welcome_carries_session_node_heartbeat_and_protocol() {
    let gw = TestGateway::spawn().await;
    let c = gw.client("alice", &["news"], &[]).await;
    let w = &c.welcome;
    assert_eq!(w["node"], "test-node");
    assert_eq!(w["heartbeat_ms"], 25000);
    assert_eq!(w["protocol"], 1);
    assert!(w["session"].as_str().is_some_and(|s| !s.is_empty()));
    let other = gw.client("bob", &[], &[]).await;
    assert_ne!(
        other.welcome["session"], c.welcome["session"],
        "session ids are unique"
    );
}

#[tokio::test]
async fn token_from_authorization_header() {
    let gw = TestGateway::spawn().await;
    let mut req = ws_request(&gw.ws_url());
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("alice", &[], &[]))
            .parse()
            .unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("accepted with a header token");
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"welcome\""));
}

#[tokio::test]
async fn unauthorized_rows() {
    let gw = TestGateway::spawn_with(|c| {
        c.jwt.issuer = Some("https://issuer.example".into());
        c.jwt.audience = Some("herald".into());
        c.auth.connect_timeout = Duration::from_millis(300);
    })
    .await;
    let url = gw.ws_url();
    let good = |extra: serde_json::Value| {
        let mut c = claims("alice", &["news"], &[]);
        c["iss"] = json!("https://issuer.example");
        c["aud"] = json!("herald");
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };

    // No token at all: upgraded, for the token in the first frame
    // (contract §10.4); none in time is 4005 `unauthorized`.
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(tungstenite::Message::Close(Some(f)))) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (4005, "unauthorized")
            );
        }
        other => panic!("expected close 4005, got {other:?}"),
    }
    // Malformed.
    assert_refused(
        ws_request(&format!("{url}?token=not.a.jwt")),
        401,
        "unauthorized",
    )
    .await;
    // Bad signature.
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"some-other-secret-entirely"),
        good(json!({})),
    );
    assert_refused(
        ws_request(&format!("{url}?token={forged}")),
        401,
        "unauthorized",
    )
    .await;
    // Wrong algorithm (same secret, HS384), and alg none.
    let hs384 = sign(
        Algorithm::HS384,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        good(json!({})),
    );
    assert_refused(
        ws_request(&format!("{url}?token={hs384}")),
        401,
        "unauthorized",
    )
    .await;
    let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    assert_refused(
        ws_request(&format!("{url}?token={none}")),
        401,
        "unauthorized",
    )
    .await;
    // Wrong issuer, wrong audience.
    let iss = token_with(good(json!({"iss": "https://evil.example"})));
    assert_refused(
        ws_request(&format!("{url}?token={iss}")),
        401,
        "unauthorized",
    )
    .await;
    let aud = token_with(good(json!({"aud": "someone-else"})));
    assert_refused(
        ws_request(&format!("{url}?token={aud}")),
        401,
        "unauthorized",
    )
    .await;
    // Missing sub, missing exp.
    let mut no_sub = good(json!({}));
    no_sub.as_object_mut().unwrap().remove("sub");
    assert_refused(
        ws_request(&format!("{url}?token={}", token_with(no_sub))),
        401,
        "unauthorized",
    )
    .await;
    let mut no_exp = good(json!({}));
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_refused(
        ws_request(&format!("{url}?token={}", token_with(no_exp))),
        401,
        "unauthorized",
    )
    .await;
    // Issuer or audience left out while configured.
    for claim in ["iss", "aud"] {
        let mut without = good(json!({}));
        without.as_object_mut().unwrap().remove(claim);
        assert_refused(
            ws_request(&format!("{url}?token={}", token_with(without))),
            401,
            "unauthorized",
        )
        .await;
    }
    // An invalid permission pattern.
    let bad_pattern = token_with(good(json!({"topics": ["a..b"]})));
    assert_refused(
        ws_request(&format!("{url}?token={bad_pattern}")),
        401,
        "unauthorized",
    )
    .await;

    assert_eq!(
        gw.node
            .metrics
            .value("herald_handshakes_total{result=\"unauthorized\"}"),
        Some(12.0)
    );
    // The node still serves a good token.
    let mut c = Client::connect(&url, &token_with(good(json!({})))).await;
    c.assert_alive().await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_are_token_expired() {
    let gw = TestGateway::spawn_with(|c| c.jwt.leeway = std::time::Duration::from_secs(5)).await;
    let url = gw.ws_url();
    let expired = token_with(json!({"sub": "a", "exp": now_secs() - 60}));
    assert_refused(
        ws_request(&format!("{url}?token={expired}")),
        401,
        "token_expired",
    )
    .await;
    let future = token_with(json!({"sub": "a", "exp": now_secs() + 3600, "nbf": now_secs() + 600}));
    assert_refused(
        ws_request(&format!("{url}?token={future}")),
        401,
        "token_expired",
    )
    .await;
    // Within the leeway: accepted.
    let recent = token_with(json!({"sub": "a", "exp": now_secs() - 2}));
    let mut c = Client::connect(&url, &recent).await;
    // Accepted, and warned at once (it is past exp, within the leeway).
    assert_eq!(c.recv().await["type"], "token_expiring");
    assert_eq!(
        gw.node
            .metrics
            .value("herald_handshakes_total{result=\"token_expired\"}"),
        Some(2.0)
    );
}

#[tokio::test]
async fn forbidden_origin() {
    let gw = TestGateway::spawn_with(|c| {
        c.listeners.allowed_origins = vec!["https://app.example".into()]
    })
    .await;
    let url = format!("{}?token={}", gw.ws_url(), token("alice", &[], &[]));
    let mut req = ws_request(&url);
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_refused(req, 403, "forbidden_origin").await;

    let mut req = ws_request(&url);
    req.headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("listed origin accepted");
    // No Origin header (native apps): accepted.
    Client::connect(&gw.ws_url(), &token("alice", &[], &[]))
        .await
        .assert_alive()
        .await;
}

#[tokio::test]
async fn max_connections_and_draining_are_unavailable() {
    let gw = TestGateway::spawn_with(|c| c.limits.max_connections = 2).await;
    let mut a = gw.client("a", &[], &[]).await;
    let b = gw.client("b", &[], &[]).await;
    let url = format!("{}?token={}", gw.ws_url(), token("c", &[], &[]));
    assert_refused(ws_request(&url), 503, "unavailable").await;
    drop(b);
    // The slot frees once the server sees the closed socket.
    eventually("a slot to free", async || gw.node.open_connections() == 1).await;
    let mut c = Client::connect(&gw.ws_url(), &token("c", &[], &[])).await;
    c.assert_alive().await;
    a.assert_alive().await;

    gw.node.start_draining();
    assert_refused(ws_request(&url), 503, "unavailable").await;
    let (status, body) = http(gw.public, "GET", "/readyz", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
}

#[tokio::test]
async fn not_a_websocket_upgrade() {
    let gw = TestGateway::spawn().await;
    let t = token("alice", &[], &[]);
    let (status, body) = http(gw.public, "GET", &format!("/ws?token={t}"), None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );

    // Not a GET: 405 with Allow and the contract's body, as the admin API.
    let (status, head, body) = http_raw(gw.public, "POST", "/ws", None, None).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{body}"
    );
    assert!(head["allow"].to_str().unwrap().contains("GET"));

    let mut req = ws_request(&format!("{}?token={t}", gw.ws_url()));
    req.headers_mut()
        .insert("sec-websocket-version", "8".parse().unwrap());
    let (status, body) = refused(req).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (426, Some("bad_request"))
    );
    gw.client("alice", &[], &[]).await.assert_alive().await;
}

async fn accepts_key(
    configure: impl FnOnce(&mut herald_core::Config),
    alg: Algorithm,
    private: &str,
    kid: Option<&str>,
) {
    let gw = TestGateway::spawn_with(configure).await;
    let pem = std::fs::read(fixture(private)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_ed_pem(&pem).unwrap(),
    };
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let good = jsonwebtoken::encode(&header, &claims("alice", &["news"], &[]), &key).unwrap();
    let mut c = Client::connect(&gw.ws_url(), &good).await;
    c.assert_alive().await;
    // An HS256 token signed with the public key as secret (algorithm confusion).
    let public = std::fs::read(fixture(&private.replace("private", "public"))).unwrap();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public),
        claims("alice", &[], &[]),
    );
    assert_refused(
        ws_request(&format!("{}?token={confused}", gw.ws_url())),
        401,
        "unauthorized",
    )
    .await;
}

fn public_key(file: &'static str) -> impl FnOnce(&mut herald_core::Config) {
    move |c| {
        c.jwt.hs256_secret = None;
        c.jwt.public_key_file = Some(fixture(file));
    }
}

#[tokio::test]
async fn rs256_public_key() {
    accepts_key(
        public_key("rsa_public.pem"),
        Algorithm::RS256,
        "rsa_private.pem",
        None,
    )
    .await;
}

#[tokio::test]
async fn es256_public_key() {
    accepts_key(
        public_key("ec_public.pem"),
        Algorithm::ES256,
        "ec_private.pem",
        None,
    )
    .await;
}

#[tokio::test]
async fn eddsa_public_key() {
    accepts_key(
        public_key("ed_public.pem"),
        Algorithm::EdDSA,
        "ed_private.pem",
        None,
    )
    .await;
}

#[tokio::test]
async fn jwks_keys_are_looked_up_by_kid() {
    let jwks = |c: &mut herald_core::Config| {
        c.jwt.hs256_secret = None;
        c.jwt.jwks_file = Some(fixture("jwks.json"));
    };
    accepts_key(jwks, Algorithm::RS256, "rsa_private.pem", Some("rsa-1")).await;
    accepts_key(jwks, Algorithm::EdDSA, "ed_private.pem", Some("ed-1")).await;

    let gw = TestGateway::spawn_with(jwks).await;
    let pem = std::fs::read(fixture("rsa_private.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("unknown-kid".into());
    let t = jsonwebtoken::encode(
        &header,
        &claims("alice", &[], &[]),
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    assert_refused(
        ws_request(&format!("{}?token={t}", gw.ws_url())),
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn handshake_counts_are_metrics() {
    let gw = TestGateway::spawn().await;
    gw.client("alice", &[], &[]).await;
    assert_refused(
        ws_request(&format!("{}?token=not.a.jwt", gw.ws_url())),
        401,
        "unauthorized",
    )
    .await;
    let (_, body) = http(gw.admin, "GET", "/metrics", None, None).await;
    let text = body.as_str().unwrap();
    assert!(
        text.contains("herald_handshakes_total{result=\"accepted\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("herald_handshakes_total{result=\"unauthorized\"} 1"),
        "{text}"
    );
}

/// Sockets that never send a byte cannot keep real clients out (contract
/// §10.8): while the pending table is full, the connection that has waited
/// longest on its client is closed to make room, so a client that sends its
/// upgrade promptly is accepted; the idle ones are closed, oldest first.
#[tokio::test]
async fn idle_sockets_make_room_for_a_prompt_client() {
    use tokio::io::AsyncReadExt;
    let gw = TestGateway::spawn_with(|c| c.limits.max_pending_handshakes = 4).await;
    let mut idle = Vec::new();
    // Fills the table with idle sockets, one at a time, so their order is
    // known.
    async fn fill(gw: &TestGateway, idle: &mut Vec<tokio::net::TcpStream>) {
        loop {
            let pending = gw.node.metrics.value("herald_handshakes_pending");
            if pending == Some(4.0) {
                return;
            }
            idle.push(tokio::net::TcpStream::connect(gw.public).await.unwrap());
            let want = pending.unwrap_or(0.0) + 1.0;
            eventually("the idle socket to be pending", async || {
                gw.node.metrics.value("herald_handshakes_pending") == Some(want)
            })
            .await;
        }
    }
    // Twice: a full table of idle sockets, and a client that gets in by
    // evicting the one that has waited longest.
    for round in 1..=2 {
        fill(&gw, &mut idle).await;
        let mut client = gw.client("a", &["news"], &[]).await;
        client.assert_alive().await;
        assert_eq!(
            gw.node.metrics.value("herald_handshakes_evicted_total"),
            Some(f64::from(round))
        );
    }
    assert_eq!(
        gw.node.metrics.value("herald_connections_shed_total"),
        Some(0.0)
    );
    // The two oldest were closed; the newer ones still wait.
    let mut buf = [0u8; 1];
    for (i, socket) in idle.iter_mut().enumerate() {
        let read = tokio::time::timeout(Duration::from_millis(300), socket.read(&mut buf)).await;
        match i {
            0 | 1 => assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "socket {i} closed"),
            _ => assert!(read.is_err(), "socket {i} still pending"),
        }
    }
    // A plain HTTP request is served the same way.
    let (status, _, _) = http_raw(gw.public, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
}

/// Plain TCP sessions keep their socket in the outbox, where the hub's
/// fan-out writes events inline (a wrapper around the socket that the
/// upgrade does not see through would silently lose that path).
#[tokio::test]
async fn a_plain_tcp_session_keeps_its_socket_for_inline_writes() {
    let gw = TestGateway::spawn().await;
    let mut client = gw.client("a", &["news"], &[]).await;
    client.assert_alive().await;
    let sessions = gw.node.hub.all_sessions();
    assert_eq!(sessions.len(), 1);
    assert!(
        sessions[0].socket().is_some(),
        "the socket is in the outbox"
    );
}
