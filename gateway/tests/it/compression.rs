//! permessage-deflate (RFC 7692) with `compression = true`, spoken by a raw
//! client that compresses and inflates with flate2 directly.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

async fn handshake(
    addr: std::net::SocketAddr,
    token: &str,
    offer: Option<&str>,
) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let ext = offer
        .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{ext}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (stream, head)
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1, 2, 3, 4];
    let mut f = vec![first_byte];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one server frame: (first byte, payload).
async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut h))
        .await
        .expect("frame in time")
        .unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (h[0], payload)
}

/// The next JSON frame, inflated if compressed; skips pings.
async fn read_json(s: &mut TcpStream) -> (bool, Value) {
    loop {
        let (b0, payload) = read_frame(s).await;
        if b0 & 0x0f == 0x9 {
            continue;
        }
        let compressed = b0 & 0x40 != 0;
        let text = if compressed {
            inflate(&payload)
        } else {
            payload
        };
        return (compressed, serde_json::from_slice(&text).unwrap());
    }
}

#[tokio::test]
async fn negotiated_and_used_both_ways() {
    let gw = TestGateway::spawn_with(|c| c.listeners.compression = true).await;
    let (mut s, head) = handshake(
        gw.public,
        &token("alice", &["news"], &[]),
        Some("permessage-deflate; client_max_window_bits"),
    )
    .await;
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "{head}"
    );
    let (_, welcome) = read_json(&mut s).await;
    assert_eq!(welcome["type"], "welcome");
    // A compressed subscribe (RSV1 set).
    let subscribe = json!({"type": "subscribe", "ref": "1", "topics": ["news"]}).to_string();
    s.write_all(&client_frame(0xC1, &deflate(subscribe.as_bytes())))
        .await
        .unwrap();
    let (_, reply) = read_json(&mut s).await;
    assert_eq!(reply["type"], "subscribed");
    // A large event arrives compressed, and smaller than it is.
    let big = "all the news that's fit to compress ".repeat(200);
    gw.publish("news", json!({"text": big})).await;
    let (b0, payload) = read_frame(&mut s).await;
    assert!(b0 & 0x40 != 0, "RSV1 set on a compressed event");
    assert!(payload.len() < big.len() / 5);
    let event: Value = serde_json::from_slice(&inflate(&payload)).unwrap();
    assert_eq!(event["data"]["text"], big);
    // A small one is sent plain (allowed, and cheaper).
    gw.publish("news", json!(1)).await;
    let (compressed, small) = read_json(&mut s).await;
    assert!(!compressed);
    assert_eq!(small["data"], 1);
}

#[tokio::test]
async fn declined_when_off_or_unacceptable() {
    let off = TestGateway::spawn().await;
    let (_, head) = handshake(
        off.public,
        &token("a", &[], &[]),
        Some("permessage-deflate"),
    )
    .await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    let on = TestGateway::spawn_with(|c| c.listeners.compression = true).await;
    let (_, head) = handshake(
        on.public,
        &token("a", &[], &[]),
        Some("permessage-deflate; server_max_window_bits=8"),
    )
    .await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "window 8 cannot be honoured: {head}"
    );
    let (_, head) = handshake(
        on.public,
        &token("a", &[], &[]),
        Some("permessage-deflate; server_max_window_bits=10"),
    )
    .await;
    assert!(
        head.to_ascii_lowercase()
            .contains("server_max_window_bits=10"),
        "{head}"
    );
}

#[tokio::test]
async fn rsv1_without_negotiation_is_a_protocol_error() {
    let gw = TestGateway::spawn_with(|c| c.listeners.compression = true).await;
    let (mut s, _) = handshake(gw.public, &token("a", &[], &[]), None).await;
    read_json(&mut s).await;
    s.write_all(&client_frame(0xC1, &deflate(b"{\"type\":\"ping\"}")))
        .await
        .unwrap();
    let (b0, payload) = read_frame(&mut s).await;
    assert_eq!(b0 & 0x0f, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
}

#[tokio::test]
async fn a_deflate_bomb_is_refused_with_1009() {
    let gw = TestGateway::spawn_with(|c| {
        c.listeners.compression = true;
        c.limits.max_message_size = 4096;
    })
    .await;
    let mut other = gw.client("bob", &[], &[]).await;
    let (mut s, _) = handshake(gw.public, &token("a", &[], &[]), Some("permessage-deflate")).await;
    read_json(&mut s).await;
    let bomb = deflate(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 4096);
    s.write_all(&client_frame(0xC1, &bomb)).await.unwrap();
    let (b0, payload) = read_frame(&mut s).await;
    assert_eq!(b0 & 0x0f, 0x8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009);
    other.assert_alive().await;
}
