//! Heartbeats (4002) and token expiry (`token_expiring`, 4001), with short
//! intervals so the suite stays fast. Lower bounds are exact; upper bounds are
//! generous, because CI machines are shared.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;
use crate::frames::raw_handshake;

#[tokio::test]
async fn silent_client_gets_pings_then_4002() {
    let gw = TestGateway::spawn_with(|c| {
        c.heartbeat.interval = Duration::from_millis(200);
        c.heartbeat.timeout = Duration::from_millis(700);
    })
    .await;
    // Before the request: the server's clock cannot start earlier than this.
    let opened = Instant::now();
    let mut stream = raw_handshake(gw.public, &token("alice", &[], &[])).await;
    let mut seen = Vec::new();
    let code = read_until_close(&mut stream, &mut seen).await;
    let elapsed = opened.elapsed();
    assert_eq!(code, 4002);
    assert!(
        seen.windows(2).any(|w| w == [0x89, 0x00]),
        "the server pinged"
    );
    assert!(
        elapsed >= Duration::from_millis(700),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(700) + Duration::from_secs(3),
        "closed too late: {elapsed:?}"
    );
    assert_eq!(
        gw.node
            .metrics
            .value("herald_disconnects_total{code=\"4002\"}"),
        Some(1.0)
    );
    gw.client("bob", &[], &[]).await.assert_alive().await;
}

#[tokio::test]
async fn answering_client_outlives_the_timeout() {
    let gw = TestGateway::spawn_with(|c| {
        c.heartbeat.interval = Duration::from_millis(100);
        c.heartbeat.timeout = Duration::from_millis(400);
    })
    .await;
    let mut c = gw.client("alice", &[], &[]).await;
    // Reading lets tungstenite answer every ping with a pong.
    c.expect_silence(Duration::from_millis(1200)).await;
    c.assert_alive().await;
}

#[tokio::test]
async fn token_expiring_then_4001() {
    let gw = TestGateway::spawn_with(|c| c.jwt.leeway = Duration::ZERO).await;
    let exp = now_secs() + 2;
    let mut c = Client::connect(
        &gw.ws_url(),
        &token_with(json!({"sub": "alice", "exp": exp})),
    )
    .await;
    // Less than 60 s left at connect: warned at once.
    let warning = c.recv().await;
    assert_eq!(warning, json!({"type": "token_expiring", "exp": exp}));
    let code = c.expect_close().await;
    assert_eq!(code, 4001);
    assert!(now_secs() >= exp, "closed before exp");
}

#[tokio::test]
async fn refreshed_token_postpones_expiry() {
    let gw = TestGateway::spawn_with(|c| c.jwt.leeway = Duration::ZERO).await;
    let exp = now_secs() + 2;
    let mut c = Client::connect(
        &gw.ws_url(),
        &token_with(json!({"sub": "alice", "exp": exp})),
    )
    .await;
    assert_eq!(c.recv().await["type"], "token_expiring");
    let reply = c
        .call(json!({"type": "auth", "token": token("alice", &[], &[])}))
        .await;
    assert_eq!(reply["type"], "authed");
    // Past the old exp: still open.
    c.expect_silence(Duration::from_millis(3000)).await;
    c.assert_alive().await;
}
