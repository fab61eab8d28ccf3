//! The Redis broker: what turns stateless gateway nodes into one cluster.
//!
//! - **Publish.** One Lua script per event assigns the id, appends the
//!   message to the topic's stream (its history) and publishes it, atomically:
//!   no event is published without history or stored without being published.
//!   A batch is one pipeline, one round trip, with one script call and one
//!   pub/sub message per topic: the payload is a run of `<id> <len>\n<message
//!   JSON>` records, rendered once by the publisher; nodes only split it,
//!   never re-encode it.
//! - **Subscribe.** See [`pubsub`]: a node subscribes each wanted topic once,
//!   on a small fixed set of connections (one per master with Redis Cluster,
//!   using sharded pub/sub), and learns nothing about topics it does not want.
//! - **History and epochs.** A topic has a stream (entries `0-<seq>`, trimmed to
//!   `history.size`) and a meta hash (`e` = epoch, `s` = last seq), both
//!   expiring `history.ttl` after the last publish. When the meta hash is
//!   missing (expired, or Redis lost its data) the next publish starts a new
//!   random epoch, so old ids are never matched against new events.
//! - **Cluster view.** Every node writes its counts to a key with a TTL of
//!   three report periods; `stats` reads them all. Disconnects go out on a
//!   control channel every node subscribes, and each node answers on a reply
//!   list the caller waits on for up to 2 s.
//!
//! Every key of a topic shares the hash tag `{<topic>}`, and every cluster-view
//! key the tag `{herald-nodes}`, so scripts and multi-key reads stay in one
//! slot under Redis Cluster.

pub mod cluster;
pub mod pubsub;
pub mod resp;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis::{self, Value};
use herald_protocol::Topic;
use tracing::{debug, warn};

use super::{
    Broker, BrokerError, Event, EventSink, HistoryPage, NodeControl, NodeStats, Position,
    Publication, Ready,
};
use crate::config::HistoryConfig;
use crate::metrics::Metrics;
use pubsub::{ControlHandler, Endpoint, Mode, PubSub, Target};

/// How often a node reports its counts; it drops out after three periods.
pub const REPORT_PERIOD: Duration = Duration::from_secs(1);
/// How long `disconnect` waits for nodes to answer.
pub const DISCONNECT_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for a Redis command before it counts as unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const HEALTH_PERIOD: Duration = Duration::from_millis(500);
/// Most events of one topic published by one script call.
const PUBLISH_RUN: usize = 256;

const NODES_INDEX: &str = "herald:{herald-nodes}:index";
const CONTROL_CHANNEL: &str = "herald:{herald-nodes}:control";

fn node_key(node: &str) -> String {
    format!("herald:{{herald-nodes}}:node:{node}")
}

fn channel(topic: &Topic) -> Bytes {
    Bytes::from(format!("herald:{{{topic}}}"))
}

fn stream_key(topic: &Topic) -> String {
    format!("herald:{{{topic}}}:h")
}

fn meta_key(topic: &Topic) -> String {
    format!("herald:{{{topic}}}:m")
}

/// Publishes a run of events of one topic. KEYS: stream, meta. ARGV:
/// channel, verb (PUBLISH/SPUBLISH), history size, ttl ms, epoch candidate,
/// then a (prefix, suffix) pair per event: the frame is prefix..id..suffix.
/// The events go out as one message of `<id> <len>\n<frame>` records.
const PUBLISH_LUA: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 's', 0)
end
local n = (#ARGV - 5) / 2
local last = redis.call('HINCRBY', KEYS[2], 's', n)
local first = last - n + 1
local size = tonumber(ARGV[3])
local ids = {}
local parts = {}
for i = 0, n - 1 do
  local seq = first + i
  local id = epoch .. '-' .. seq
  local frame = ARGV[6 + 2 * i] .. id .. ARGV[7 + 2 * i]
  if size > 0 then
    if i == n - 1 then
      redis.call('XADD', KEYS[1], 'MAXLEN', size, '0-' .. seq, 'f', frame)
    else
      redis.call('XADD', KEYS[1], '0-' .. seq, 'f', frame)
    end
  end
  ids[i + 1] = id
  parts[i + 1] = id .. ' ' .. #frame .. '\n' .. frame
end
if size > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[2], ARGV[1], table.concat(parts))
return ids
";

const HISTORY_LUA: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then return {0, '', {}, 0} end
local last = tonumber(redis.call('HGET', KEYS[2], 's'))
local first = last + 1
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '-(%d+)$')) end
local recovered = 1
local from = '-'
if ARGV[1] ~= '' then
  local s = tonumber(ARGV[2])
  if ARGV[1] == epoch and s <= last and s + 1 >= first then
    from = '0-' .. (s + 1)
  else
    recovered = 0
  end
end
local out = {}
if tonumber(ARGV[3]) > 0 then
  local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', ARGV[3])
  for _, e in ipairs(entries) do
    out[#out + 1] = string.match(e[1], '-(%d+)$')
    out[#out + 1] = e[2][2]
  end
end
return {recovered, epoch, out, last}
";

fn sha1_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

struct Script {
    text: &'static str,
    sha: String,
}

impl Script {
    fn new(text: &'static str) -> Script {
        Script {
            text,
            sha: sha1_hex(text),
        }
    }

    fn cmd(&self, by_sha: bool, keys: &[&str], args: &[&[u8]]) -> redis::Cmd {
        let mut cmd = if by_sha {
            redis::cmd("EVALSHA")
        } else {
            redis::cmd("EVAL")
        };
        cmd.arg(if by_sha { self.sha.as_str() } else { self.text })
            .arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

fn broker_error(e: &redis::RedisError) -> BrokerError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Internal(e.to_string())
    }
}

fn pool_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("no redis connection: {e}"))
}

enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// Runs `$body` with `$conn` bound to a pooled connection of either kind.
macro_rules! with_conn {
    ($pool:expr, $conn:ident => $body:expr) => {{
        let fut = async {
            match $pool {
                Pool::Single(p) => {
                    let mut $conn = p.get().await.map_err(pool_error)?;
                    $body
                }
                Pool::Cluster(p) => {
                    let mut $conn = p.get().await.map_err(pool_error)?;
                    $body
                }
            }
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable(
                "redis did not answer in time".to_owned(),
            )),
        }
    }};
}

/// Parses `redis_url` into the endpoints the pub/sub side dials.
fn endpoints(urls: &[String]) -> Result<Vec<Endpoint>, BrokerError> {
    use redis::IntoConnectionInfo;
    urls.iter()
        .map(|u| {
            let info = u
                .as_str()
                .into_connection_info()
                .map_err(|e| BrokerError::Internal(format!("invalid redis_url: {e}")))?;
            let (addr, tls) = match info.addr() {
                redis::ConnectionAddr::Tcp(host, port) => (format!("{host}:{port}"), false),
                redis::ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    ..
                } => (format!("{host}:{port}"), true),
                redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
                    return Err(BrokerError::Internal(
                        "rediss:// without certificate verification (#insecure) is not supported"
                            .to_owned(),
                    ));
                }
                _ => {
                    return Err(BrokerError::Internal(
                        "only redis:// and rediss:// URLs are supported".to_owned(),
                    ));
                }
            };
            let settings = info.redis_settings();
            Ok(Endpoint {
                addr,
                username: settings.username().map(str::to_owned),
                password: settings.password().map(str::to_owned),
                tls,
            })
        })
        .collect()
}

struct Shared {
    pool: Pool,
    cluster: bool,
    node: OnceLock<Arc<dyn NodeControl>>,
}

/// The Redis (or Redis Cluster) broker.
pub struct RedisBroker {
    shared: Arc<Shared>,
    mode: Mode,
    history: HistoryConfig,
    sink: Arc<dyn EventSink>,
    pubsub: OnceLock<PubSub>,
    publish: Script,
    history_script: Script,
    reachable: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl RedisBroker {
    /// Builds the broker for `redis_url` (comma-separated seeds when
    /// `cluster`) and starts its health check. Connections are made lazily;
    /// an unreachable Redis is reported by [`Broker::is_up`], not here.
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// When the URL cannot be parsed.
    pub fn new(
        redis_url: &str,
        cluster: bool,
        history: HistoryConfig,
        sink: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let urls: Vec<String> = redis_url
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        let endpoints = endpoints(&urls)?;
        let pool_config = deadpool_redis::PoolConfig {
            max_size: 16,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(Duration::from_secs(2)),
                create: Some(Duration::from_secs(2)),
                recycle: Some(Duration::from_secs(2)),
            },
            ..Default::default()
        };
        let runtime = Some(deadpool_redis::Runtime::Tokio1);
        let (pool, mode) = if cluster {
            let mut cfg = deadpool_redis::cluster::Config::from_urls(urls.clone());
            cfg.pool = Some(pool_config);
            let pool = cfg
                .create_pool(runtime)
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
            (Pool::Cluster(pool), Mode::Cluster(endpoints))
        } else {
            let url = urls
                .first()
                .ok_or_else(|| BrokerError::Internal("redis_url is empty".to_owned()))?;
            let mut cfg = deadpool_redis::Config::from_url(url.clone());
            cfg.pool = Some(pool_config);
            let pool = cfg
                .create_pool(runtime)
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
            let endpoint = endpoints
                .into_iter()
                .next()
                .ok_or_else(|| BrokerError::Internal("redis_url is empty".to_owned()))?;
            (Pool::Single(pool), Mode::Single(endpoint))
        };
        let broker = Arc::new(RedisBroker {
            shared: Arc::new(Shared {
                pool,
                cluster,
                node: OnceLock::new(),
            }),
            mode,
            history,
            sink,
            pubsub: OnceLock::new(),
            publish: Script::new(PUBLISH_LUA),
            history_script: Script::new(HISTORY_LUA),
            reachable: Arc::new(AtomicBool::new(false)),
            metrics,
        });
        broker.metrics.broker_up.set(0.0);
        tokio::spawn(health(Arc::downgrade(&broker)));
        Ok(broker)
    }

    fn pubsub(&self) -> &PubSub {
        self.pubsub.get_or_init(|| {
            let shared = Arc::downgrade(&self.shared);
            let control: ControlHandler = Arc::new(move |payload| on_control(&shared, payload));
            PubSub::start(self.mode.clone(), self.sink.clone(), control)
        })
    }

    /// The prefix and suffix of an event's frame; its id goes between.
    fn frame_parts(p: &Publication, ts: u64) -> (String, String) {
        let prefix = format!("{{\"type\":\"message\",\"topic\":\"{}\",\"id\":\"", p.topic);
        let mut suffix = String::with_capacity(p.data.get().len() + 64);
        suffix.push('"');
        if let Some(event) = &p.event {
            suffix.push_str(",\"event\":");
            suffix.push_str(&serde_json::to_string(event).unwrap_or_else(|_| "\"\"".to_owned()));
        }
        suffix.push_str(",\"data\":");
        suffix.push_str(p.data.get());
        suffix.push_str(",\"ts\":");
        suffix.push_str(&ts.to_string());
        suffix.push('}');
        (prefix, suffix)
    }

    /// The script call publishing `run` (events of one topic, in order).
    fn publish_cmd(
        &self,
        topic: &Topic,
        run: &[&Publication],
        ts: u64,
        epoch: &str,
        by_sha: bool,
    ) -> redis::Cmd {
        let ttl = self.history.ttl.as_millis().to_string();
        let size = self.history.size.to_string();
        let verb: &[u8] = if self.shared.cluster {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        };
        let channel = channel(topic);
        let parts: Vec<(String, String)> = run.iter().map(|p| Self::frame_parts(p, ts)).collect();
        let mut args: Vec<&[u8]> = vec![
            &channel,
            verb,
            size.as_bytes(),
            ttl.as_bytes(),
            epoch.as_bytes(),
        ];
        for (prefix, suffix) in &parts {
            args.push(prefix.as_bytes());
            args.push(suffix.as_bytes());
        }
        self.publish
            .cmd(by_sha, &[&stream_key(topic), &meta_key(topic)], &args)
    }

    /// Runs commands as pipelines, one round trip per slot (a cluster
    /// pipeline may not cross slots; a topic's keys share one slot, so its
    /// events stay in order). A script Redis does not know yet (after a
    /// restart) is sent again in full.
    async fn run_scripts(
        &self,
        slots: Vec<u16>,
        cmds: Vec<(redis::Cmd, redis::Cmd)>,
    ) -> Result<Vec<Value>, BrokerError> {
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let slot = if self.shared.cluster { *slot } else { 0 };
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        let runs = groups
            .iter()
            .map(|(_, members)| self.run_group(members, &cmds));
        let mut out = vec![Value::Nil; cmds.len()];
        for (result, (_, members)) in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .zip(&groups)
        {
            for (value, i) in result?.into_iter().zip(members) {
                out[*i] = value;
            }
        }
        Ok(out)
    }

    async fn run_group(
        &self,
        members: &[usize],
        cmds: &[(redis::Cmd, redis::Cmd)],
    ) -> Result<Vec<Value>, BrokerError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for i in members {
            pipe.add_command(cmds[*i].0.clone());
        }
        let results: Vec<redis::RedisResult<Value>> = with_conn!(&self.shared.pool, c => pipe.query_async(&mut c).await.map_err(|e| broker_error(&e)))?;
        let mut out = Vec::with_capacity(results.len());
        for (result, i) in results.into_iter().zip(members) {
            let value = match result {
                Ok(v) => v,
                Err(e) if is_noscript(&e) => {
                    debug!("redis lost its scripts; sending them in full");
                    let full = &cmds[*i].1;
                    with_conn!(&self.shared.pool, c => full.query_async::<Value>(&mut c).await.map_err(|e| broker_error(&e)))?
                }
                Err(e) => return Err(broker_error(&e)),
            };
            out.push(value);
        }
        Ok(out)
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Keeps `reachable` and the `herald_broker_up` gauge current, and reports
/// this node's counts while one is registered.
async fn health(broker: Weak<RedisBroker>) {
    let mut tick = tokio::time::interval(HEALTH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since_report = Duration::MAX;
    loop {
        tick.tick().await;
        let Some(b) = broker.upgrade() else { return };
        let ping: Result<String, BrokerError> = with_conn!(&b.shared.pool, c => redis::cmd("PING").query_async::<String>(&mut c).await.map_err(|e| broker_error(&e)));
        let was = b.reachable.swap(ping.is_ok(), Ordering::AcqRel);
        if was != ping.is_ok() {
            match &ping {
                Ok(_) => tracing::info!("redis reachable"),
                Err(e) => warn!(error = %e, "redis unreachable"),
            }
        }
        b.metrics.broker_up.set(f64::from(u8::from(b.is_up())));
        since_report = since_report.saturating_add(HEALTH_PERIOD);
        if since_report >= REPORT_PERIOD && ping.is_ok() {
            if let Some(node) = b.shared.node.get() {
                since_report = Duration::ZERO;
                let stats = node.stats();
                let json = serde_json::to_string(&stats).unwrap_or_default();
                let ttl = (REPORT_PERIOD * 3).as_millis() as u64;
                let result: Result<(), BrokerError> = with_conn!(&b.shared.pool, c => {
                    let mut pipe = redis::pipe();
                    pipe.cmd("SET").arg(node_key(&stats.node)).arg(&json).arg("PX").arg(ttl).ignore();
                    pipe.cmd("SADD").arg(NODES_INDEX).arg(&stats.node).ignore();
                    pipe.query_async::<()>(&mut c).await.map_err(|e| broker_error(&e))
                });
                if let Err(e) = result {
                    debug!(error = %e, "stats report failed");
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct ControlMessage {
    op: String,
    sub: String,
    reply: String,
}

/// Handles a control-channel message on a node: close the user's sessions
/// and answer on the caller's reply list.
fn on_control(shared: &Weak<Shared>, payload: Bytes) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let Ok(msg) = serde_json::from_slice::<ControlMessage>(&payload) else {
        warn!("malformed control message");
        return;
    };
    if msg.op != "disconnect" || !msg.reply.starts_with("herald:{herald-nodes}:reply:") {
        return;
    }
    let Some(node) = shared.node.get().cloned() else {
        return;
    };
    let closed = node.disconnect(&msg.sub);
    tokio::spawn(async move {
        let answer = serde_json::json!({"node": node.stats().node, "closed": closed}).to_string();
        let result: Result<(), BrokerError> = with_conn!(&shared.pool, c => {
            let mut pipe = redis::pipe();
            pipe.cmd("RPUSH").arg(&msg.reply).arg(&answer).ignore();
            pipe.cmd("PEXPIRE").arg(&msg.reply).arg(10_000).ignore();
            pipe.query_async::<()>(&mut c).await.map_err(|e| broker_error(&e))
        });
        if let Err(e) = result {
            warn!(error = %e, "cannot answer a disconnect request");
        }
    });
}

impl Broker for RedisBroker {
    async fn publish(&self, batch: Vec<Publication>) -> Result<Vec<Position>, BrokerError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let ts = crate::now_ms();
        let epoch = format!("{:08x}", super::memory::new_epoch());
        // One script call (and one pub/sub message) per topic: its events in
        // request order. Runs of at most PUBLISH_RUN keep each call short.
        let mut runs: Vec<(Topic, Vec<usize>)> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            match runs
                .iter_mut()
                .rev()
                .find(|(t, members)| *t == p.topic && members.len() < PUBLISH_RUN)
            {
                Some((_, members)) => members.push(i),
                None => runs.push((p.topic.clone(), vec![i])),
            }
        }
        let cmds = runs
            .iter()
            .map(|(topic, members)| {
                let run: Vec<&Publication> = members.iter().map(|i| &batch[*i]).collect();
                (
                    self.publish_cmd(topic, &run, ts, &epoch, true),
                    self.publish_cmd(topic, &run, ts, &epoch, false),
                )
            })
            .collect();
        let slots = runs
            .iter()
            .map(|(topic, _)| cluster::slot(&channel(topic)))
            .collect();
        let values = self.run_scripts(slots, cmds).await?;
        let bad = || BrokerError::Internal("unexpected reply from the publish script".to_owned());
        let mut positions = vec![Position { epoch: 0, seq: 0 }; batch.len()];
        for ((_, members), value) in runs.iter().zip(values) {
            let Value::Array(ids) = value else {
                return Err(bad());
            };
            if ids.len() != members.len() {
                return Err(bad());
            }
            for (i, id) in members.iter().zip(ids) {
                positions[*i] = as_text(&id)
                    .and_then(|id| Position::parse(&id))
                    .ok_or_else(bad)?;
            }
        }
        Ok(positions)
    }

    fn subscribe(&self, topic: &Topic) -> Ready {
        let (tx, ready) = Ready::pending();
        self.pubsub()
            .subscribe(channel(topic), Target::Topic(topic.clone()), Some(tx));
        ready
    }

    fn unsubscribe(&self, topic: &Topic) {
        self.pubsub().unsubscribe(channel(topic));
    }

    async fn history(
        &self,
        topic: &Topic,
        since: Option<&str>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let (since_epoch, since_seq) = match since.map(Position::parse) {
            None => (String::new(), String::from("-1")),
            // Unparseable: a non-matching epoch makes it unrecoverable.
            Some(None) => ("unparseable".to_owned(), String::from("-1")),
            Some(Some(p)) => (format!("{:08x}", p.epoch), p.seq.to_string()),
        };
        let limit = limit.to_string();
        let keys = [stream_key(topic), meta_key(topic)];
        let keys = [keys[0].as_str(), keys[1].as_str()];
        let args: [&[u8]; 3] = [
            since_epoch.as_bytes(),
            since_seq.as_bytes(),
            limit.as_bytes(),
        ];
        let cmds = vec![(
            self.history_script.cmd(true, &keys, &args),
            self.history_script.cmd(false, &keys, &args),
        )];
        let value = self
            .run_scripts(vec![cluster::slot(&channel(topic))], cmds)
            .await?
            .into_iter()
            .next()
            .unwrap_or(Value::Nil);
        let bad = || BrokerError::Internal("unexpected reply from the history script".to_owned());
        let Value::Array(parts) = value else {
            return Err(bad());
        };
        let [recovered, epoch, entries, last] = <[Value; 4]>::try_from(parts).map_err(|_| bad())?;
        let recovered = matches!(recovered, Value::Int(1));
        let Some(epoch) = as_text(&epoch).filter(|e| !e.is_empty()) else {
            // No history for this topic.
            return Ok(HistoryPage {
                events: Vec::new(),
                recovered: since.is_none(),
                head: None,
            });
        };
        let epoch = u32::from_str_radix(&epoch, 16).map_err(|_| bad())?;
        let last: u64 = as_text(&last)
            .and_then(|l| l.parse().ok())
            .ok_or_else(bad)?;
        let Value::Array(flat) = entries else {
            return Err(bad());
        };
        let mut events = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let seq = as_text(&pair[0])
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)?;
            let Value::BulkString(json) = &pair[1] else {
                return Err(bad());
            };
            events.push(Event {
                topic: topic.clone(),
                position: Position { epoch, seq },
                json: Bytes::from(json.clone()),
            });
        }
        Ok(HistoryPage {
            events,
            recovered,
            head: Some(Position { epoch, seq: last }),
        })
    }

    fn is_up(&self) -> bool {
        self.reachable.load(Ordering::Acquire) && self.pubsub.get().is_none_or(PubSub::is_up)
    }

    fn register_node(&self, node: Arc<dyn NodeControl>) {
        if self.shared.node.set(node).is_ok() {
            self.pubsub().subscribe(
                Bytes::from_static(CONTROL_CHANNEL.as_bytes()),
                Target::Control,
                None,
            );
        }
    }

    async fn stats(&self) -> Result<Vec<NodeStats>, BrokerError> {
        let ids: Vec<String> = with_conn!(&self.shared.pool, c =>
            redis::cmd("SMEMBERS").arg(NODES_INDEX).query_async(&mut c).await.map_err(|e| broker_error(&e)))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
        let values: Vec<Option<String>> = with_conn!(&self.shared.pool, c =>
            redis::cmd("MGET").arg(&keys).query_async(&mut c).await.map_err(|e| broker_error(&e)))?;
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value.and_then(|v| serde_json::from_str::<NodeStats>(&v).ok()) {
                Some(stats) => nodes.push(stats),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let _: Result<(), BrokerError> = with_conn!(&self.shared.pool, c =>
                redis::cmd("SREM").arg(NODES_INDEX).arg(&gone).query_async::<()>(&mut c).await.map_err(|e| broker_error(&e)));
        }
        Ok(nodes)
    }

    async fn disconnect(&self, sub: &str) -> Result<usize, BrokerError> {
        let reply = format!("herald:{{herald-nodes}}:reply:{}", crate::random_hex(12));
        let msg = serde_json::json!({"op": "disconnect", "sub": sub, "reply": reply}).to_string();
        let verb = if self.shared.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let receivers: usize = with_conn!(&self.shared.pool, c =>
            redis::cmd(verb).arg(CONTROL_CHANNEL).arg(&msg).query_async(&mut c).await.map_err(|e| broker_error(&e)))?;
        let deadline = tokio::time::Instant::now() + DISCONNECT_WAIT;
        let mut answered = 0;
        let mut closed = 0;
        while answered < receivers {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                debug!(
                    answered,
                    receivers, "not every node answered the disconnect in time"
                );
                break;
            }
            let popped: Option<(String, String)> = with_conn!(&self.shared.pool, c =>
                redis::cmd("BLPOP").arg(&reply).arg(left.as_secs_f64().max(0.01)).query_async(&mut c).await.map_err(|e| broker_error(&e)))?;
            let Some((_, answer)) = popped else { break };
            answered += 1;
            let value: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            closed += value["closed"].as_u64().unwrap_or(0) as usize;
        }
        Ok(closed)
    }
}
