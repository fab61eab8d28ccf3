//! `jwt.jwks_url` (contract §10.9): keys rotate without a restart. A local
//! JWKS server whose document the test swaps, counting every fetch: the
//! node is not ready (503) until the first fetch succeeds, accepts the
//! first token signed with a key rotated in since (a refetch on the unknown
//! `kid`), refuses forged `kid`s at the cost of at most one fetch per 10 s,
//! and keeps its keys when the server fails.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::*;

/// What the server answers: a status and a body, swapped by the test.
struct JwksServer {
    url: String,
    answer: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(status: u16, body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let answer = Arc::new(Mutex::new((status, body)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (a, f) = (answer.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (a, f) = (a.clone(), f.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.ends_with(b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    assert!(request.starts_with(b"GET /.well-known/jwks.json HTTP/1.1\r\n"));
                    f.fetch_add(1, SeqCst);
                    let (status, body) = a.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        JwksServer {
            url,
            answer,
            fetches,
        }
    }

    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(SeqCst)
    }
}

/// An HS256 key as a JWK (`oct`), and tokens signed with it.
fn secret(kid: &str) -> String {
    format!("jwks-test-secret-{kid}-0123456789")
}

fn jwks(kids: &[&str]) -> String {
    let keys: Vec<Value> = kids
        .iter()
        .map(|kid| {
            let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret(kid));
            json!({"kty": "oct", "kid": kid, "k": k})
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn token_by(kid: &str, signed_with: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_secret(secret(signed_with).as_bytes());
    jsonwebtoken::encode(&header, &claims("alice", &["news"], &[]), &key).unwrap()
}

async fn gateway_for(server: &JwksServer) -> TestGateway {
    let url = server.url.clone();
    TestGateway::spawn_with(move |c| {
        c.jwt.hs256_secret = None;
        c.jwt.jwks_url = Some(url);
    })
    .await
}

#[tokio::test]
async fn keys_rotate_without_a_restart() {
    let server = JwksServer::start(200, jwks(&["a"])).await;
    let gw = gateway_for(&server).await;
    eventually("the key set is fetched", async || {
        gw.node.verifier.keys_loaded()
    })
    .await;
    let mut c = Client::connect(&gw.ws_url(), &token_by("a", "a")).await;
    c.subscribe(&["news"]).await;
    let fetched = server.fetches();
    assert_eq!(fetched, 1);

    // Key b is published and a comes off: the first token signed with b
    // gets in, after one refetch.
    server.serve(200, jwks(&["b"]));
    let mut d = Client::connect(&gw.ws_url(), &token_by("b", "b")).await;
    d.subscribe(&["news"]).await;
    assert_eq!(
        server.fetches(),
        fetched + 1,
        "one refetch, on the unknown kid"
    );
    // Sessions already open keep running; a new token signed with a is no
    // longer accepted.
    c.assert_alive().await;
    assert_refused(
        ws_request(&format!("{}?token={}", gw.ws_url(), token_by("a", "a"))),
        401,
        "unauthorized",
    )
    .await;

    // Forged kids, many: refused at once (a refetch started less than 10 s
    // ago), and the key server is not asked again.
    let before = server.fetches();
    for i in 0..20 {
        let forged = token_by(&format!("forged-{i}"), "b");
        assert_refused(
            ws_request(&format!("{}?token={forged}", gw.ws_url())),
            401,
            "unauthorized",
        )
        .await;
    }
    assert_eq!(
        server.fetches(),
        before,
        "no fetch for forged kids within 10 s"
    );
    d.assert_alive().await;
}

#[tokio::test]
async fn a_node_without_its_keys_is_not_ready_and_a_failing_server_keeps_them() {
    let server = JwksServer::start(500, "down".to_owned()).await;
    let gw = gateway_for(&server).await;
    eventually("a first fetch was tried", async || server.fetches() >= 1).await;
    // Not loaded: handshakes are refused 503, /readyz says why.
    assert_refused(
        ws_request(&format!("{}?token={}", gw.ws_url(), token_by("a", "a"))),
        503,
        "unavailable",
    )
    .await;
    let (status, body) = http(gw.admin, "GET", "/readyz", None, None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("JWT keys"), "{body}");

    // The server comes back: the retry (1 s backoff, doubling) loads the set.
    server.serve(200, jwks(&["a"]));
    eventually(
        "the key set is fetched after the server recovered",
        async || gw.node.verifier.keys_loaded(),
    )
    .await;
    let (status, _) = http(gw.admin, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200);

    // The server fails again: an unknown kid asks for a refetch that fails,
    // and the keys already fetched stay in use.
    server.serve(500, "down".to_owned());
    let before = server.fetches();
    assert_refused(
        ws_request(&format!("{}?token={}", gw.ws_url(), token_by("c", "c"))),
        401,
        "unauthorized",
    )
    .await;
    eventually("the refetch was tried", async || server.fetches() > before).await;
    let mut c = Client::connect(&gw.ws_url(), &token_by("a", "a")).await;
    c.subscribe(&["news"]).await;
}
