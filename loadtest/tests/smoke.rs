//! A short run of each scenario against a real gateway process (and of
//! `--target raw` against a minimal broadcast server), asserting zero loss.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::process::Command;

use herald_testkit::{Proc, addr_after, bin};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

const SECRET: &str = "loadtest-smoke-secret-0123456789";

fn gateway() -> (Proc, SocketAddr, SocketAddr) {
    gateway_with(&[])
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../gateway/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn gateway_with(extra: &[&str]) -> (Proc, SocketAddr, SocketAddr) {
    let mut cmd = bin("herald-gateway");
    cmd.args(extra);
    cmd.args([
        "--jwt-hs256-secret",
        SECRET,
        "--admin-api-keys",
        "k",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    // Client publishing at load-test rates needs the per-client limit raised.
    cmd.args([
        "--limits-client-rate",
        "100000",
        "--limits-client-burst",
        "100000",
    ]);
    let mut p = Proc::start(cmd);
    let line = p.line_with("herald-gateway listening");
    (p, addr_after(&line, "public="), addr_after(&line, "admin="))
}

fn loadtest(args: &[String]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald-loadtest"))
        .args(args)
        .args(["--quiet", "--out", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadtest failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(dir.path().join("report.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    assert!(
        std::fs::read_to_string(dir.path().join("report.md"))
            .unwrap()
            .contains("| measure | value |")
    );
    serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn fanout_via_admin_and_client_loses_nothing() {
    let (_p, public, admin) = gateway();
    for via in ["admin", "client"] {
        let r = loadtest(&s(&[
            "fanout",
            "--secret",
            SECRET,
            "--admin-key",
            "k",
            "--url",
            &format!("ws://{public}/ws"),
            "--admin",
            &format!("http://{admin}"),
            "--connections",
            "40",
            "--topics",
            "4",
            "--rate",
            "1000",
            "--duration",
            "1",
            "--via",
            via,
        ]));
        assert_eq!(r["connections"], 40, "{via}");
        let d = &r["delivery"];
        assert!(d["expected"].as_u64().unwrap() > 0, "{via}");
        assert_eq!(
            (
                d["lost"].as_u64(),
                d["duplicated"].as_u64(),
                d["out_of_order"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{via}: {d}"
        );
        assert!(r["latency"]["samples"].as_u64().unwrap() > 0);
    }
}

/// Subscribers on protocol 2's MessagePack encoding: nothing lost, and the
/// report carries the bytes per delivery (smaller than JSON's).
#[test]
fn fanout_over_msgpack_loses_nothing_in_fewer_bytes() {
    let (_p, public, admin) = gateway();
    let mut bytes = Vec::new();
    for protocol in ["json", "msgpack"] {
        let r = loadtest(&s(&[
            "fanout",
            "--secret",
            SECRET,
            "--admin-key",
            "k",
            "--url",
            &format!("ws://{public}/ws"),
            "--admin",
            &format!("http://{admin}"),
            "--connections",
            "20",
            "--topics",
            "2",
            "--rate",
            "500",
            "--duration",
            "1",
            "--processes",
            "2",
            "--protocol",
            protocol,
        ]));
        let d = &r["delivery"];
        assert_eq!(
            (d["lost"].as_u64(), d["duplicated"].as_u64()),
            (Some(0), Some(0)),
            "{protocol}: {d}"
        );
        assert!(d["received"].as_u64().unwrap() > 0);
        bytes.push(d["received_bytes"].as_f64().unwrap() / d["received"].as_f64().unwrap());
    }
    assert!(
        bytes[1] < bytes[0],
        "msgpack {} bytes against json {}",
        bytes[1],
        bytes[0]
    );
}

#[test]
fn fanout_over_worker_processes_merges() {
    let (_p, public, admin) = gateway();
    let r = loadtest(&s(&[
        "fanout",
        "--secret",
        SECRET,
        "--admin-key",
        "k",
        "--url",
        &format!("ws://{public}/ws"),
        "--admin",
        &format!("http://{admin}"),
        "--connections",
        "30",
        "--topics",
        "3",
        "--rate",
        "600",
        "--duration",
        "1",
        "--processes",
        "3",
        "--sources",
        "2",
    ]));
    assert_eq!(r["connections"], 30);
    assert_eq!(r["delivery"]["lost"], 0, "{}", r["delivery"]);
    assert_eq!(r["delivery"]["expected"], r["delivery"]["received"]);
}

/// `connect` against `p` at `url` (with `extra` arguments): every one of
/// `n` connections opened and measured.
fn connect_all(p: &Proc, url: &str, n: u32, extra: &[&str]) {
    let mut args = s(&["connect", "--secret", SECRET, "--url", url]);
    args.extend(s(extra));
    let (n_text, pid) = (n.to_string(), p.pid().to_string());
    args.extend(s(&["--connections", &n_text, "--duration", "1"]));
    args.extend(s(&["--pid", &pid, "--processes", "2"]));
    let r = loadtest(&args);
    assert_eq!(r["connections"], n);
    assert_eq!(r["connect_errors"], 0);
    assert!(r["per_connection"]["rss_bytes"].as_f64().is_some());
}

#[test]
fn connect_measures_the_gateway() {
    let (p, public, _) = gateway();
    connect_all(&p, &format!("ws://{public}/ws"), 200, &[]);
}

/// `wss://` (the TLS row of docs/benchmarks.md): the generator trusts the
/// test CA given with `--tls-ca`, in every worker process.
#[test]
fn connect_measures_a_tls_gateway() {
    let (cert, key) = (fixture("tls_cert.pem"), fixture("tls_key.pem"));
    let (p, public, _) = gateway_with(&["--tls-cert-file", &cert, "--tls-key-file", &key]);
    let ca = fixture("tls_ca.pem");
    connect_all(&p, &format!("wss://{public}/ws"), 100, &["--tls-ca", &ca]);
}

#[test]
fn churn_completes() {
    let (_p, public, _) = gateway();
    let r = loadtest(&s(&[
        "churn",
        "--secret",
        SECRET,
        "--url",
        &format!("ws://{public}/ws"),
        "--rate",
        "50",
        "--duration",
        "1",
        "--linger-ms",
        "20",
    ]));
    assert_eq!(r["connections"], 50);
    assert_eq!(r["connect_errors"], 0);
}

/// A minimal broadcast server: every text frame from any client goes to all.
async fn broadcast_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, _) = broadcast::channel::<Vec<u8>>(100_000);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                buf.drain(..end);
                stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
                    .await
                    .unwrap();
                let (mut rd, mut wr) = stream.into_split();
                tokio::spawn(async move {
                    while let Ok(frame) = rx.recv().await {
                        if wr.write_all(&frame).await.is_err() {
                            break;
                        }
                    }
                });
                loop {
                    while buf.len() >= 6 {
                        let len = (buf[1] & 0x7f) as usize;
                        let (len, at) = if len == 126 {
                            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
                        } else {
                            (len, 2)
                        };
                        if buf.len() < at + 4 + len {
                            break;
                        }
                        let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
                        let payload: Vec<u8> = buf[at + 4..at + 4 + len]
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ mask[i % 4])
                            .collect();
                        if buf[0] & 0x0f == 1 {
                            let mut out = vec![0x81];
                            if payload.len() < 126 {
                                out.push(payload.len() as u8);
                            } else {
                                out.push(126);
                                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                            }
                            out.extend_from_slice(&payload);
                            let _ = tx.send(out);
                        }
                        buf.drain(..at + 4 + len);
                    }
                    let n = rd.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_target_measures_a_plain_broadcast_server() {
    let addr = broadcast_server().await;
    let r = tokio::task::spawn_blocking(move || {
        loadtest(&s(&[
            "fanout",
            "--target",
            "raw",
            "--url",
            &format!("ws://{addr}/"),
            "--connections",
            "20",
            "--rate",
            "500",
            "--duration",
            "1",
        ]))
    })
    .await
    .unwrap();
    assert_eq!(r["target"], "raw");
    assert_eq!(r["delivery"]["lost"], 0, "{}", r["delivery"]);
    assert!(r["delivery"]["received"].as_u64().unwrap() >= 20 * 400);
}
