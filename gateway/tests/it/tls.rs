//! `wss://` on the public listener: the same protocol over rustls, with the
//! admin listener still plain HTTP.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

fn connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("tls_ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_gateway() -> TestGateway {
    TestGateway::spawn_with(|c| {
        c.tls.cert_file = Some(fixture("tls_cert.pem"));
        c.tls.key_file = Some(fixture("tls_key.pem"));
    })
    .await
}

/// A wss client of `gw` subscribed to nothing.
async fn wss_client(
    gw: &TestGateway,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let tls = connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("tls handshake");
    let url = format!(
        "wss://localhost:{}/ws?token={}",
        gw.public.port(),
        token("alice", &["news"], &[])
    );
    tokio_tungstenite::client_async(url, tls)
        .await
        .expect("websocket handshake over tls")
        .0
}

/// A TLS socket cannot be written by the heartbeat wheel itself: its
/// pings are queued for the session task, which writes them; a client that
/// answers them stays, a silent one is closed with 4002.
#[tokio::test]
async fn wss_pings_keep_answering_clients_and_close_silent_ones() {
    let gw = TestGateway::spawn_with(|c| {
        c.tls.cert_file = Some(fixture("tls_cert.pem"));
        c.tls.key_file = Some(fixture("tls_key.pem"));
        c.heartbeat.interval = std::time::Duration::from_millis(150);
        c.heartbeat.timeout = std::time::Duration::from_millis(600);
    })
    .await;
    let mut answering = wss_client(&gw).await;
    let mut silent = wss_client(&gw).await;
    // Reading lets tungstenite answer each ping; over 1.5 s (2.5 timeouts).
    let mut pings = 0;
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
    while let Ok(next) = tokio::time::timeout_at(until, answering.next()).await {
        match next.expect("open").expect("readable") {
            Message::Ping(_) => pings += 1,
            Message::Text(t) => assert!(t.contains("welcome"), "{t}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(pings >= 5, "pinged every interval: {pings}");
    // The silent one read nothing meanwhile, so it never answered.
    let code = loop {
        match silent.next().await.expect("open").expect("readable") {
            Message::Close(Some(f)) => break u16::from(f.code),
            Message::Close(None) => panic!("no code"),
            _ => {}
        }
    };
    assert_eq!(code, 4002);
    answering
        .send(Message::text(
            json!({"type": "ping", "ref": "1"}).to_string(),
        ))
        .await
        .unwrap();
    loop {
        match answering.next().await.expect("open").expect("readable") {
            Message::Text(t) => {
                assert_eq!(serde_json::from_str::<Value>(&t).unwrap()["type"], "pong");
                break;
            }
            Message::Ping(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn wss_carries_the_protocol() {
    let gw = tls_gateway().await;
    let mut ws = wss_client(&gw).await;
    let text = |m: Message| serde_json::from_str::<Value>(m.to_text().unwrap()).unwrap();
    assert_eq!(text(ws.next().await.unwrap().unwrap())["type"], "welcome");
    ws.send(Message::text(
        json!({"type": "subscribe", "ref": "1", "topics": ["news"]}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(
        text(ws.next().await.unwrap().unwrap())["type"],
        "subscribed"
    );
    gw.publish("news", json!({"secure": true})).await;
    assert_eq!(
        text(ws.next().await.unwrap().unwrap())["data"],
        json!({"secure": true})
    );
}

#[tokio::test]
async fn refusals_and_plain_clients() {
    let gw = tls_gateway().await;
    // A refusal is still the contract's JSON, inside TLS.
    let tcp = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let tls = connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/ws?token=not.a.jwt", gw.public.port());
    match tokio_tungstenite::client_async(url, tls).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    // A plain-text client gets nowhere, and the node keeps serving.
    let plain =
        tokio_tungstenite::connect_async(format!("{}?token={}", gw.ws_url(), token("a", &[], &[])))
            .await;
    assert!(plain.is_err());
    // The admin listener stays plain HTTP.
    assert_eq!(http(gw.admin, "GET", "/healthz", None, None).await.0, 200);
}

/// Events larger than a TLS record, many at once: each reaches a wss
/// subscriber whole and in order (records split and gathered by the
/// gateway's own TLS stream), and the client's own large frame is read.
#[tokio::test]
async fn large_events_over_wss_arrive_whole_and_in_order() {
    let gw = tls_gateway().await;
    let mut ws = wss_client(&gw).await;
    let text = |m: Message| serde_json::from_str::<Value>(m.to_text().unwrap()).unwrap();
    assert_eq!(text(ws.next().await.unwrap().unwrap())["type"], "welcome");
    // A 40 KB request: its frame spans three records.
    let padding = "p".repeat(40_000);
    ws.send(Message::text(
        json!({"type": "subscribe", "ref": padding.clone(), "topics": ["news"]}).to_string(),
    ))
    .await
    .unwrap();
    let subscribed = text(ws.next().await.unwrap().unwrap());
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["ref"].as_str().map(str::len), Some(40_000));
    for i in 0..30 {
        gw.publish("news", json!({"i": i, "pad": "x".repeat(50_000)}))
            .await;
    }
    for i in 0..30 {
        let event = text(ws.next().await.unwrap().unwrap());
        assert_eq!(event["data"]["i"], i);
        assert_eq!(event["data"]["pad"].as_str().map(str::len), Some(50_000));
    }
}
