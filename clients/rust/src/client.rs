//! `Client`: one WebSocket to a Herald gateway, kept alive across node loss,
//! deploys and token expiry, yielding every event of its topics once and in
//! order (contract §5, §10). The same behaviour as the TypeScript SDK.
//!
//! Invariants, each kept in one place:
//! - Every wanted topic is subscribed again on every `welcome`, with
//!   `since` = its position (the last id received, or the position its last
//!   `subscribed` gave), so events published while disconnected arrive in
//!   order before live ones, on topics that were quiet too
//!   (`subscribe_frame`).
//! - An event whose id is not after its topic's position is dropped, so
//!   none is delivered twice (`Shared::accept`).
//! - The token goes in the first frame (`connect`, contract §10.4);
//!   nothing else is sent before `welcome`.
//! - A reconnect waits as the close code says ([`close_action`], the table
//!   of docs/protocol.md): `Stop` ends the client with an error; a protocol
//!   fault is retried at most `max_faults` times in a row; a refused token
//!   is replaced first. Backoff is full jitter, and never shorter than the
//!   server's `Retry-After`.
//! - No frame for twice `heartbeat_ms` means a dead path: the socket is
//!   dropped and another opened.
//! - One task per client; the caller reads events from a bounded channel,
//!   so a caller that stops reading stops the reading of the socket too
//!   (the gateway then treats the client as slow, 4004, and the client
//!   recovers once it reads again).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message as Frame};

use crate::Error;
use crate::frames::{decode, encode};
use crate::policy::{Action, close_action, handshake_action};
use crate::publisher::{Data, tls_config};
use crate::random::jitter;

/// The encoding of protocol 2 (contract §10.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `herald.v2.json`: JSON text frames.
    #[default]
    Json,
    /// `herald.v2.msgpack`: MessagePack binary frames.
    Msgpack,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Json => "herald.v2.json",
            Protocol::Msgpack => "herald.v2.msgpack",
        }
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>;

/// Where tokens come from: one token, or a function asked for a fresh one
/// before each connection and when the gateway announces the expiry.
#[derive(Clone)]
pub enum Token {
    /// The same token every time (sessions end when it expires).
    Static(String),
    /// A fresh token each time.
    Provider(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

impl Token {
    /// A provider from an async function.
    pub fn provider<F, Fut>(f: F) -> Token
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        Token::Provider(Arc::new(move || Box::pin(f())))
    }

    async fn get(&self) -> Result<String, Error> {
        match self {
            Token::Static(t) => Ok(t.clone()),
            Token::Provider(f) => f().await,
        }
    }
}

/// One event of a subscribed topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// Its id: a valid `since`.
    pub id: String,
    /// The payload.
    pub data: Data,
    /// The publisher's event name, if any.
    pub event: Option<String>,
    /// Publish time, ms since the Unix epoch.
    pub ts: u64,
}

fn position(id: &str) -> Option<(u32, u64)> {
    let (epoch, seq) = id.split_once('-')?;
    Some((u32::from_str_radix(epoch, 16).ok()?, seq.parse().ok()?))
}

#[derive(Default)]
struct Shared {
    wanted: BTreeSet<String>,
    positions: HashMap<String, String>,
    recovered: HashMap<String, bool>,
    connections: u64,
    refs: u64,
}

impl Shared {
    /// Whether an event is new for its topic; moves the topic's position.
    fn accept(&mut self, topic: &str, id: &str) -> bool {
        if let (Some(new), Some(old)) = (
            position(id),
            self.positions.get(topic).and_then(|p| position(p)),
        ) {
            if new.0 == old.0 && new.1 <= old.1 {
                return false;
            }
        }
        self.positions.insert(topic.to_owned(), id.to_owned());
        true
    }

    fn subscribe_frame(&mut self, topics: &[String]) -> Value {
        self.refs += 1;
        let mut frame =
            json!({"type": "subscribe", "ref": format!("s{}", self.refs), "topics": topics});
        let since: serde_json::Map<String, Value> = topics
            .iter()
            .filter_map(|t| Some((t.clone(), json!(self.positions.get(t)?))))
            .collect();
        if !since.is_empty() {
            frame["since"] = Value::Object(since);
        }
        frame
    }
}

enum Control {
    Subscribe(Vec<String>),
    Close,
}

struct Config {
    urls: Vec<String>,
    token: Token,
    protocol: Protocol,
    backoff_base: Duration,
    backoff_cap: Duration,
    max_faults: u32,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    config: Config,
    queue: usize,
    topics: Vec<(String, Option<String>)>,
}

impl ClientBuilder {
    /// `Protocol::Json` (default) or `Protocol::Msgpack`.
    pub fn protocol(mut self, protocol: Protocol) -> ClientBuilder {
        self.config.protocol = protocol;
        self
    }

    /// Full-jitter backoff: the first ceiling and the largest (defaults
    /// 500 ms and 30 s).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> ClientBuilder {
        self.config.backoff_base = base;
        self.config.backoff_cap = cap;
        self
    }

    /// Protocol faults in a row before giving up (default 5).
    pub fn max_faults(mut self, n: u32) -> ClientBuilder {
        self.config.max_faults = n;
        self
    }

    /// Topics to subscribe to from the start.
    pub fn topics(mut self, topics: &[&str]) -> ClientBuilder {
        self.topics
            .extend(topics.iter().map(|t| ((*t).to_owned(), None)));
        self
    }

    /// A topic to start after `since` (a position saved by an earlier run).
    pub fn topic_since(mut self, topic: &str, since: &str) -> ClientBuilder {
        self.topics.push((topic.to_owned(), Some(since.to_owned())));
        self
    }

    /// Starts connecting in the background (inside a Tokio runtime).
    pub fn connect(self) -> Client {
        let mut shared = Shared::default();
        for (topic, since) in self.topics {
            if let Some(s) = since {
                shared.positions.insert(topic.clone(), s);
            }
            shared.wanted.insert(topic);
        }
        let shared = Arc::new(Mutex::new(shared));
        let (events_tx, events) = mpsc::channel(self.queue);
        let (control, control_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(self.config, shared.clone(), control_rx, events_tx));
        Client {
            events,
            control,
            shared,
            task,
        }
    }
}

/// A subscriber: see the module documentation.
pub struct Client {
    events: mpsc::Receiver<Result<Message, Error>>,
    control: mpsc::UnboundedSender<Control>,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// A client of the gateways at `urls` (`ws://host:8080/ws`, tried in
    /// turn) with tokens from `token`.
    pub fn builder<I, S>(urls: I, token: Token) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            config: Config {
                urls: urls.into_iter().map(Into::into).collect(),
                token,
                protocol: Protocol::Json,
                backoff_base: Duration::from_millis(500),
                backoff_cap: Duration::from_secs(30),
                max_faults: 5,
            },
            queue: 10_000,
            topics: Vec::new(),
        }
    }

    /// Adds topics; subscribed at once when connected, and on every
    /// reconnect.
    pub fn subscribe(&self, topics: &[&str]) {
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        lock(&self.shared).wanted.extend(topics.iter().cloned());
        let _ = self.control.send(Control::Subscribe(topics));
    }

    /// The next event; an `Err` ends the client (`disconnected`: the
    /// gateway ended the session; `protocol_fault`; a refused subscribe);
    /// `None` once closed.
    pub async fn next(&mut self) -> Option<Result<Message, Error>> {
        self.events.recv().await
    }

    /// Each topic's position: a valid `since` to start from later.
    pub fn positions(&self) -> HashMap<String, String> {
        lock(&self.shared).positions.clone()
    }

    /// Per topic resubscribed with `since`: whether nothing was missed
    /// (`false`: events were lost beyond the history window; reload).
    pub fn recovered(&self) -> HashMap<String, bool> {
        lock(&self.shared).recovered.clone()
    }

    /// Sessions opened so far (each reconnect adds one).
    pub fn connections(&self) -> u64 {
        lock(&self.shared).connections
    }

    /// Closes the connection (a normal close) and stops.
    pub async fn close(self) {
        let _ = self.control.send(Control::Close);
        let task = self.task;
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

/// How one connection ended.
struct Ended {
    action: Action,
    retry_after: Option<Duration>,
    welcomed: bool,
    /// The caller closed the client, or stopped reading for good.
    closed: bool,
}

impl Ended {
    fn because(action: Action) -> Ended {
        Ended {
            action,
            retry_after: None,
            welcomed: false,
            closed: false,
        }
    }
}

async fn run(
    config: Config,
    shared: Arc<Mutex<Shared>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::Sender<Result<Message, Error>>,
) {
    let (mut attempt, mut faults, mut turn) = (0u32, 0u32, 0usize);
    if config.urls.is_empty() {
        let _ = events.send(Err(Error::new("bad_request", "no URL"))).await;
        return;
    }
    loop {
        let url = &config.urls[turn % config.urls.len()];
        turn += 1;
        let ended = match config.token.get().await {
            Ok(token) => session(url, &token, &config, &shared, &mut control, &events).await,
            Err(_) => Ended::because(Action::Backoff),
        };
        if ended.closed {
            return;
        }
        if ended.welcomed {
            attempt = 0;
            if ended.action != Action::Fault {
                faults = 0;
            }
        }
        let delay = match ended.action {
            Action::Stop => {
                let error = Error::new("disconnected", "the gateway ended the session");
                let _ = events.send(Err(error)).await;
                return;
            }
            Action::Fault if faults >= config.max_faults => {
                let error = Error::new("protocol_fault", "refused repeatedly");
                let _ = events.send(Err(error)).await;
                return;
            }
            Action::Now | Action::Refresh => jitter(Duration::from_millis(100)),
            Action::Fault | Action::Backoff => jitter(
                config
                    .backoff_base
                    .saturating_mul(1 << attempt.min(16))
                    .min(config.backoff_cap),
            ),
        };
        if ended.action == Action::Fault {
            faults += 1;
        }
        attempt += 1;
        let delay = ended.retry_after.map_or(delay, |r| delay.max(r));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            c = control.recv() => if matches!(c, None | Some(Control::Close)) { return },
        }
    }
}

async fn session(
    url: &str,
    token: &str,
    config: &Config,
    shared: &Mutex<Shared>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    events: &mpsc::Sender<Result<Message, Error>>,
) -> Ended {
    let protocol = config.protocol;
    let Ok(mut request) = url.into_client_request() else {
        return Ended::because(Action::Fault);
    };
    if let Ok(name) = protocol.name().parse() {
        request.headers_mut().insert("sec-websocket-protocol", name);
    }
    let connector = match tls_config() {
        Ok(tls) => Some(tokio_tungstenite::Connector::Rustls(Arc::new(tls))),
        Err(_) => None,
    };
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector);
    let ws = match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(tungstenite::Error::Http(response))) => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_secs);
            return Ended {
                retry_after,
                ..Ended::because(handshake_action(response.status().as_u16()))
            };
        }
        _ => return Ended::because(Action::Backoff),
    };
    let (mut sink, mut stream) = ws.split();
    let connect = json!({"type": "connect", "token": token});
    if sink.send(encode(protocol, &connect)).await.is_err() {
        return Ended::because(Action::Backoff);
    }
    let mut ended = Ended::because(Action::Backoff);
    let mut silence = Duration::from_secs(10);
    let mut refreshed: Option<tokio::time::Instant> = None;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(silence, stream.next()) => next,
            c = control.recv() => {
                match c {
                    Some(Control::Subscribe(topics)) if ended.welcomed => {
                        let frame = lock(shared).subscribe_frame(&topics);
                        let _ = sink.send(encode(protocol, &frame)).await;
                    }
                    Some(Control::Subscribe(_)) => {}
                    None | Some(Control::Close) => {
                        let _ = sink.send(Frame::Close(None)).await;
                        ended.closed = true;
                        return ended;
                    }
                }
                continue;
            }
        };
        let frame = match next {
            // A dead path: nothing, not even the server's ping, for twice
            // the heartbeat.
            Err(_) => {
                return Ended {
                    action: Action::Now,
                    ..ended
                };
            }
            Ok(None | Some(Err(_))) => return ended,
            Ok(Some(Ok(frame))) => frame,
        };
        if let Frame::Close(close) = &frame {
            let (code, reason) = close
                .as_ref()
                .map_or((1005, ""), |c| (u16::from(c.code), c.reason.as_str()));
            return Ended {
                action: close_action(code, reason),
                ..ended
            };
        }
        let Some((fields, data)) = decode(protocol, &frame) else {
            continue;
        };
        match fields["type"].as_str() {
            Some("welcome") if !ended.welcomed => {
                ended.welcomed = true;
                let heartbeat = fields["heartbeat_ms"].as_u64().unwrap_or(25_000).max(500);
                silence = Duration::from_millis(heartbeat * 2);
                let frame = {
                    let mut shared = lock(shared);
                    shared.connections += 1;
                    let wanted: Vec<String> = shared.wanted.iter().cloned().collect();
                    (!wanted.is_empty()).then(|| shared.subscribe_frame(&wanted))
                };
                if let Some(frame) = frame {
                    let _ = sink.send(encode(protocol, &frame)).await;
                }
            }
            Some("message") => {
                let (Some(topic), Some(id)) = (fields["topic"].as_str(), fields["id"].as_str())
                else {
                    continue;
                };
                if !lock(shared).accept(topic, id) {
                    continue;
                }
                let message = Message {
                    topic: topic.to_owned(),
                    id: id.to_owned(),
                    data: data.unwrap_or(Data::Json(Value::Null)),
                    event: fields["event"].as_str().map(str::to_owned),
                    ts: fields["ts"].as_u64().unwrap_or(0),
                };
                if events.send(Ok(message)).await.is_err() {
                    ended.closed = true;
                    return ended;
                }
            }
            Some("subscribed") => {
                let mut shared = lock(shared);
                if let Some(positions) = fields["positions"].as_object() {
                    for (topic, at) in positions {
                        if let Some(at) = at.as_str() {
                            // Where the topic stands; never behind an id given.
                            shared.accept(topic, at);
                        }
                    }
                }
                if let Some(recovered) = fields["recovered"].as_object() {
                    for (topic, ok) in recovered {
                        shared
                            .recovered
                            .insert(topic.clone(), ok.as_bool().unwrap_or(false));
                    }
                }
            }
            Some("error") if fields["ref"].as_str().is_some_and(|r| r.starts_with('s')) => {
                let error = Error::new(
                    fields["code"].as_str().unwrap_or("unknown"),
                    fields["message"].as_str().unwrap_or_default(),
                );
                if error.is_retryable() {
                    // The broker is briefly unavailable: reconnecting
                    // subscribes everything again.
                    return Ended::because(Action::Backoff);
                }
                let _ = events.send(Err(error)).await;
            }
            Some("token_expiring") if matches!(config.token, Token::Provider(_)) => {
                // A fresh token inside the warning window is announced
                // again at once: at most one refresh a second.
                let now = tokio::time::Instant::now();
                if refreshed.is_some_and(|t| now - t < Duration::from_secs(1)) {
                    continue;
                }
                refreshed = Some(now);
                if let Ok(fresh) = config.token.get().await {
                    let auth = json!({"type": "auth", "ref": "auth", "token": fresh});
                    let _ = sink.send(encode(protocol, &auth)).await;
                }
            }
            _ => {}
        }
    }
}
