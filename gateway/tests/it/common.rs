//! The test harness: an in-process gateway on port-0 listeners, a WebSocket
//! client speaking the protocol, an HTTP client for the admin API, token
//! minting, and bounded waits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_core::{Config, Secret};
use herald_gateway::{Listeners, Node};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789abcdef0123";
pub const ADMIN_KEY: &str = "test-admin-key";
/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn test_config() -> Config {
    let mut c = Config::defaults();
    c.listeners.listen = "127.0.0.1:0".parse().unwrap();
    c.listeners.admin_listen = "127.0.0.1:0".parse().unwrap();
    c.node.id = "test-node".to_owned();
    c.jwt.hs256_secret = Some(Secret::new(SECRET));
    c.admin.api_keys = vec![Secret::new(ADMIN_KEY)];
    c.node.drain_timeout = Duration::from_secs(5);
    c
}

/// A gateway running in this process.
pub struct TestGateway {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub node: Arc<Node>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    pub async fn spawn() -> TestGateway {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> TestGateway {
        let mut config = test_config();
        tweak(&mut config);
        let public = TcpListener::bind(config.listeners.listen).await.unwrap();
        let admin = TcpListener::bind(config.listeners.admin_listen)
            .await
            .unwrap();
        let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        let node = Node::new(config, false).unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(herald_gateway::run(
            node.clone(),
            Listeners { public, admin },
            async {
                let _ = rx.await;
            },
        ));
        TestGateway {
            public: public_addr,
            admin: admin_addr,
            node,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.public)
    }

    /// Connects with a token for `sub` allowed to subscribe to `topics` and
    /// publish to `publish`, and reads the welcome.
    pub async fn client(&self, sub: &str, topics: &[&str], publish: &[&str]) -> Client {
        Client::connect(&self.ws_url(), &token(sub, topics, publish)).await
    }

    /// Triggers the drain and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("drain finished in time")
                .unwrap()
                .unwrap();
        }
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(
            self.admin,
            method,
            path,
            Some(ADMIN_KEY),
            body.map(|b| b.to_string()),
        )
        .await
    }

    pub async fn publish(&self, topic: &str, data: Value) -> String {
        let (status, body) = self
            .admin(
                "POST",
                "/v1/publish",
                Some(json!({"topic": topic, "data": data})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["results"][0]["id"].as_str().unwrap().to_owned()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token with arbitrary claims.
pub fn token_with(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

pub fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

pub fn claims(sub: &str, topics: &[&str], publish: &[&str]) -> Value {
    json!({"sub": sub, "exp": now_secs() + 3600, "iat": now_secs(), "topics": topics, "publish": publish})
}

pub fn token(sub: &str, topics: &[&str], publish: &[&str]) -> String {
    token_with(claims(sub, topics, publish))
}

/// A protocol client over tokio-tungstenite.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    next_ref: u64,
}

impl Client {
    pub async fn connect(url: &str, token: &str) -> Client {
        let url = format!("{url}?token={token}");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("handshake accepted");
        Client::from_ws(ws).await
    }

    /// A client over an upgraded socket: reads (and checks) `welcome`.
    pub async fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        let mut client = Client {
            ws,
            welcome: Value::Null,
            next_ref: 0,
        };
        client.welcome = client.recv().await;
        assert_eq!(client.welcome["type"], "welcome", "{}", client.welcome);
        client
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.unwrap();
    }

    /// Sends `frame` with a fresh ref and returns the ref.
    pub async fn request(&mut self, mut frame: Value) -> String {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        frame["ref"] = json!(r);
        self.send(frame).await;
        r
    }

    /// The next JSON frame (pings are answered and skipped).
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(WAIT).await {
            Some(v) => v,
            None => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next JSON frame within `wait`, or `None`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended"),
            }
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(v) = self.try_recv(wait).await {
            panic!("expected nothing, got {v}");
        }
    }

    /// Sends a request and returns the reply with the same ref.
    pub async fn call(&mut self, frame: Value) -> Value {
        let r = self.request(frame).await;
        let reply = self.recv().await;
        assert_eq!(reply["ref"], json!(r), "reply out of order: {reply}");
        reply
    }

    pub async fn subscribe(&mut self, topics: &[&str]) {
        let reply = self
            .call(json!({"type": "subscribe", "topics": topics}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    /// Subscribes with `since` and returns the messages replayed before the
    /// `subscribed` reply, and the reply.
    pub async fn subscribe_since(&mut self, topics: &[&str], since: Value) -> (Vec<Value>, Value) {
        let r = self
            .request(json!({"type": "subscribe", "topics": topics, "since": since}))
            .await;
        let mut replayed = Vec::new();
        loop {
            let frame = self.recv().await;
            match frame["type"].as_str() {
                Some("message") => replayed.push(frame),
                Some("subscribed") if frame["ref"] == json!(r) => return (replayed, frame),
                _ => panic!("unexpected frame while subscribing: {frame}"),
            }
        }
    }

    /// Reads until the server's Close, completes the closing handshake as a
    /// well-behaved client does, and returns the server's code.
    pub async fn expect_close(&mut self) -> u16 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("close in time");
            let code = match next {
                Some(Ok(Message::Close(Some(ref frame)))) => Some(u16::from(frame.code)),
                Some(Ok(Message::Close(None))) => Some(1005),
                _ => None,
            };
            if let Some(code) = code {
                // Polling on sends our Close reply and sees the socket end.
                while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.ws.next()).await {}
                return code;
            }
            match next {
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// The next JSON frame, or the server's close code.
    pub async fn try_recv_or_close(&mut self) -> Result<Value, u16> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// The underlying WebSocket.
    pub fn ws(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }

    /// Checks the session still answers.
    pub async fn assert_alive(&mut self) {
        let pong = self.call(json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong");
    }
}

/// Attempts a handshake that must be refused; returns status and JSON body.
pub async fn refused(request: http::Request<()>) -> (u16, Value) {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("answer in time")
    {
        Ok(_) => panic!("handshake unexpectedly accepted"),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).unwrap())
                .unwrap_or(Value::Null);
            (status, body)
        }
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

/// A handshake request for `url` (which may carry `?token=`).
pub fn ws_request(url: &str) -> http::Request<()> {
    url.into_client_request().unwrap()
}

/// Asserts a refusal's status and code.
pub async fn assert_refused(request: http::Request<()>, status: u16, code: &str) {
    let (got, body) = refused(request).await;
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
}

/// One HTTP/1.1 request; returns the status and the body as JSON (or as a
/// JSON string when it is not JSON).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let (status, _, body) = http_raw(addr, method, path, key, body).await;
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, value)
}

pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<String>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("response in time")
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// Polls `check` until it returns true, failing after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads raw bytes from `stream` into `seen` until they hold a complete
/// server Close frame, and returns its code. Fails if the socket closes
/// without one or none arrives within [`WAIT`].
pub async fn read_until_close<S>(stream: &mut S, seen: &mut Vec<u8>) -> u16
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(code) = find_close(seen) {
                return code;
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without a close frame");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a close frame in time")
}

/// The code of the first server Close frame in `bytes`, if complete.
pub fn find_close(bytes: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 => (
                u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]) as usize,
                4,
            ),
            127 => return None,
            n => (n as usize, 2),
        };
        if at + header + len > bytes.len() {
            return None;
        }
        if opcode == 0x8 {
            let p = &bytes[at + header..at + header + len];
            return Some(u16::from_be_bytes([p[0], p[1]]));
        }
        at += header + len;
    }
    None
}

/// Runs `command` to its end: its exit code and everything it printed
/// (stdout, then stderr).
pub fn output_of(command: &mut std::process::Command) -> (Option<i32>, String) {
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}
