//! The scenarios, and what they share: live counters, the latency samples,
//! token minting and the subscribe exchange.
//!
//! One file per scenario ([`connect`], [`fanout`] with its [`publish`]
//! side, [`churn`]), and [`worker`] for the protocol that spreads a
//! scenario's connections over several processes.
//!
//! Frames the generator sends and the replies it waits for go through
//! `herald-protocol` ([`ClientFrame`], [`ServerFrameHead`]). Event payloads
//! are the one exception: a subscriber reads only the send time and sequence
//! number the generator itself put into `data`, with a byte scan rather than
//! a JSON parse, because the generator shares two cores with the server it
//! measures and must stay far cheaper per delivery than the server.

mod churn;
mod connect;
mod fanout;
mod publish;
mod worker;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_protocol::centrifugo::schema::{Command, ConnectRequest, SubscribeRequest};
use herald_protocol::centrifugo::{self, Wire};
use herald_protocol::{ClientFrame, ServerFrameHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::report::Latency;
use crate::settings::{Protocol, Scenario, Settings, Target};
use crate::wsclient::{self, Frame, Stream, WsUrl};

pub use churn::churn;
pub use connect::connect;
pub use fanout::fanout;

/// Runs this process as worker `i/n`: its share, the protocol of
/// [`worker`], one JSON line.
///
/// # Errors
/// The scenario's.
pub async fn worker(s: &Settings) -> anyhow::Result<()> {
    let live = std::sync::Arc::new(Live::default());
    let report = match s.scenario {
        Scenario::Connect => connect::connect_worker(s, live).await?,
        Scenario::Fanout => fanout::fanout_worker(s, live).await?,
        Scenario::Churn => anyhow::bail!("churn does not run in workers"),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Live counters for the progress display.
#[derive(Default)]
pub struct Live {
    /// Connections open.
    pub connected: AtomicU64,
    /// Connection attempts that failed (after their retries).
    pub failed: AtomicU64,
    /// Handshakes retried after a refusal (each retry counts).
    pub retried: AtomicU64,
    /// Events published.
    pub published: AtomicU64,
    /// Events received by subscribers.
    pub delivered: AtomicU64,
    /// Deliveries per second, sampled by the progress display.
    pub series: Mutex<Vec<f64>>,
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn token_query(s: &Settings, sub: &str) -> String {
    if s.protocol.centrifugo().is_some() {
        // Centrifugo's SDKs send it in their `connect` command instead.
        return String::new();
    }
    match s.target {
        // HS256 signing cannot fail; an empty query would be refused (401)
        // and counted as a failed connection.
        Target::Herald => crate::token::mint(&s.secret, sub)
            .map(|t| format!("token={t}"))
            .unwrap_or_default(),
        Target::Raw => String::new(),
    }
}

fn url_for(s: &Settings, i: u64, query: &str) -> WsUrl {
    if query.is_empty() {
        s.url(i).clone()
    } else {
        s.url(i).with_query(query)
    }
}

/// Shared histogram fed in batches, so thousands of connections do not
/// contend on it per sample.
#[derive(Default)]
struct Samples {
    all: Mutex<Latency>,
}

impl Samples {
    fn flush(&self, local: &mut Vec<u64>) {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        for us in local.drain(..) {
            all.record(us);
        }
    }

    /// The histogram as `(value, count)` pairs, for a report.
    fn pairs(&self) -> Vec<(u64, u64)> {
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .to_pairs()
    }
}

/// The topic of the generator's topic number `n`.
fn topic_name(n: usize) -> String {
    format!("lt.{n}")
}

/// The topics connection `i` (of topic number `topic`) subscribes to: its
/// topic, and `lt.shared` with `--shared-topic`.
fn topics_of(s: &Settings, topic: usize) -> Vec<String> {
    let mut names = vec![topic_name(topic)];
    if s.shared_topic {
        names.push("lt.shared".to_owned());
    }
    names
}

/// Subscribes to `names` (Centrifugo: the first) and waits (at most
/// `wait`) for the confirmation; whatever else arrives meanwhile is
/// dropped.
async fn subscribe(
    stream: &mut Stream,
    buf: &mut bytes::BytesMut,
    names: Vec<String>,
    wait: Duration,
    protocol: Protocol,
) -> bool {
    if let Some(wire) = protocol.centrifugo() {
        let command = Command {
            id: 2,
            subscribe: Some(SubscribeRequest {
                channel: names.into_iter().next().unwrap_or_default(),
                ..SubscribeRequest::default()
            }),
            ..Command::default()
        };
        send(stream, &centrifugo_frame(wire, &command)).await;
        return centrifugo_reply(stream, buf, wire, 2, wait).await;
    }
    let frame = ClientFrame::Subscribe {
        reference: Some("s".to_owned()),
        topics: names,
        since: BTreeMap::new(),
    }
    .to_json();
    let frame = if protocol == Protocol::Msgpack {
        let packed = herald_protocol::msgpack::from_json(frame.as_bytes()).unwrap_or_default();
        wsclient::binary_frame(&packed)
    } else {
        wsclient::text_frame(frame.as_bytes())
    };
    send(stream, &frame).await;
    let mut confirmed = false;
    while !confirmed {
        match tokio::time::timeout(wait, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
        let _ = wsclient::parse(buf, |f| {
            let is_reply = |t: &[u8]| {
                ServerFrameHead::parse(t)
                    .is_some_and(|h| h.kind == "subscribed" && h.reference.as_deref() == Some("s"))
            };
            match f {
                Frame::Text(t) => confirmed |= is_reply(t),
                // Any MessagePack map reads as JSON this way (not a hot path).
                Frame::Binary(b) => {
                    if let Ok(json) = herald_protocol::msgpack::client_frame_to_json(b) {
                        confirmed |= is_reply(json.as_bytes());
                    }
                }
                _ => {}
            }
        });
    }
    true
}

/// A Centrifugo command in a frame of its encoding.
fn centrifugo_frame(wire: Wire, command: &Command) -> Vec<u8> {
    let payload = centrifugo::encode(wire, command);
    match wire {
        Wire::Json => wsclient::text_frame(&payload),
        Wire::Protobuf => wsclient::binary_frame(&payload),
    }
}

/// What a Centrifugo client sends first (`--protocol centrifugo-*`): the
/// encoding and a token for `sub`; `None` for Herald's protocols.
fn centrifugo_hello(s: &Settings, sub: &str) -> Option<(Wire, String)> {
    let wire = s.protocol.centrifugo()?;
    Some((wire, crate::token::mint(&s.secret, sub).unwrap_or_default()))
}

/// Opens a Centrifugo session on a fresh connection: its `connect` command
/// and the answer (at most `wait`). Without `hello` (Herald's protocols)
/// there is nothing to do.
async fn centrifugo_connect(
    stream: &mut Stream,
    buf: &mut bytes::BytesMut,
    hello: Option<&(Wire, String)>,
    wait: Duration,
) -> bool {
    let Some((wire, token)) = hello else {
        return true;
    };
    let command = Command {
        id: 1,
        connect: Some(ConnectRequest {
            token: token.clone(),
            ..ConnectRequest::default()
        }),
        ..Command::default()
    };
    send(stream, &centrifugo_frame(*wire, &command)).await;
    centrifugo_reply(stream, buf, *wire, 1, wait).await
}

/// Reads until the reply to command `id` (true unless it is an error).
async fn centrifugo_reply(
    stream: &mut Stream,
    buf: &mut bytes::BytesMut,
    wire: Wire,
    id: u32,
    wait: Duration,
) -> bool {
    let mut answer = None;
    while answer.is_none() {
        match tokio::time::timeout(wait, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
        let _ = wsclient::parse(buf, |f| {
            if let Frame::Text(b) | Frame::Binary(b) = f {
                for reply in centrifugo::decode_replies(wire, b).unwrap_or_default() {
                    if reply.id == id {
                        answer = Some(reply.error.is_none());
                    }
                }
            }
        });
    }
    answer.unwrap_or(false)
}

/// The answer to a Centrifugo server ping (an empty message), if `frame`
/// is one.
fn centrifugo_pong(protocol: Protocol, frame: &Frame<'_>) -> Option<Vec<u8>> {
    match (protocol.centrifugo()?, frame) {
        (Wire::Json, Frame::Text(b"{}")) => Some(wsclient::text_frame(b"{}")),
        (Wire::Protobuf, Frame::Binary([0])) => Some(wsclient::binary_frame(&[0])),
        _ => None,
    }
}

/// Waits until `count` connections have either opened or failed, at most
/// `limit`.
async fn settle(live: &Live, count: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while live.connected.load(Relaxed) + live.failed.load(Relaxed) < count
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resolves once `stop` is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Writes a whole buffer, ignoring errors (the peer may be gone).
async fn send(stream: &mut Stream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
}
