//! The cluster view: which gateway nodes are alive and what they hold, and
//! the requests every node must act on (disconnecting a user's sessions).
//!
//! Every node writes its counts to a key with a TTL of three report periods
//! and adds its id to an index; `stats` reads the keys the index names and
//! prunes the ids whose keys expired (dead nodes). A disconnect or a
//! revocation is published on a control channel every node subscribes;
//! each node acts and answers on the caller's reply list, which the caller
//! reads for at most [`DISCONNECT_WAIT`]. Revocations are also stored (a
//! sorted set scored by expiry, with a version counter) so that a node that
//! missed the message, or starts later, loads them. Every key here shares the hash tag
//! `{herald-nodes}`, so the multi-key reads stay in one slot under Cluster.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_redis::redis;
use tracing::{debug, warn};

use super::commands::Commands;
use crate::broker::{BrokerError, NodeControl, NodeStats, Revocation};

/// How often a node reports its counts; it drops out after three periods.
pub const REPORT_PERIOD: Duration = Duration::from_secs(1);
/// How long `disconnect` waits for nodes to answer.
pub const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

const NODES_INDEX: &str = "herald:{herald-nodes}:index";
const CONTROL_CHANNEL: &str = "herald:{herald-nodes}:control";
const REPLY_PREFIX: &str = "herald:{herald-nodes}:reply:";
/// Revocations in force: JSON members scored by expiry (Unix ms).
const REVOKED: &str = "herald:{herald-nodes}:revoked";
/// Incremented with every revocation, so nodes reload only on change.
const REVOKED_VERSION: &str = "herald:{herald-nodes}:revoked:v";

fn node_key(node: &str) -> String {
    format!("herald:{{herald-nodes}}:node:{node}")
}

/// The channel every node subscribes for requests.
pub fn control_channel() -> Bytes {
    Bytes::from_static(CONTROL_CHANNEL.as_bytes())
}

/// Writes this node's counts, valid for three report periods.
pub async fn report(commands: &Commands, stats: &NodeStats) {
    let json = serde_json::to_string(stats).unwrap_or_default();
    let ttl = (REPORT_PERIOD * 3).as_millis() as u64;
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(node_key(&stats.node))
        .arg(&json)
        .arg("PX")
        .arg(ttl)
        .ignore();
    pipe.cmd("SADD").arg(NODES_INDEX).arg(&stats.node).ignore();
    if let Err(e) = commands.pipeline::<()>(&pipe).await {
        debug!(error = %e, "stats report failed");
    }
}

/// The counts of every node that reported recently.
///
/// # Errors
/// When Redis cannot be asked.
pub async fn stats(commands: &Commands) -> Result<Vec<NodeStats>, BrokerError> {
    let ids: Vec<String> = commands
        .query(redis::cmd("SMEMBERS").arg(NODES_INDEX))
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
    let values: Vec<Option<String>> = commands.query(redis::cmd("MGET").arg(&keys)).await?;
    let mut nodes = Vec::new();
    let mut gone = Vec::new();
    for (id, value) in ids.iter().zip(values) {
        match value.and_then(|v| serde_json::from_str::<NodeStats>(&v).ok()) {
            Some(stats) => nodes.push(stats),
            None => gone.push(id.clone()),
        }
    }
    if !gone.is_empty() {
        let _: Result<(), BrokerError> = commands
            .query(redis::cmd("SREM").arg(NODES_INDEX).arg(&gone))
            .await;
    }
    Ok(nodes)
}

/// Asks every node to close the sessions of `sub`; returns how many closed
/// on the nodes that answered within [`DISCONNECT_WAIT`].
///
/// # Errors
/// When the request could not be published.
pub async fn disconnect(commands: &Commands, sub: &str) -> Result<usize, BrokerError> {
    request(
        commands,
        serde_json::json!({"op": "disconnect", "sub": sub}),
    )
    .await
}

/// Stores `revocation` until it expires (nodes load the set when they
/// start and whenever its version changes), then asks every node to apply
/// it now; returns how many sessions closed on the nodes that answered
/// within [`DISCONNECT_WAIT`].
///
/// # Errors
/// When the record could not be stored or the request published.
pub async fn revoke(commands: &Commands, revocation: &Revocation) -> Result<usize, BrokerError> {
    let json = serde_json::to_string(revocation).unwrap_or_default();
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD")
        .arg(REVOKED)
        .arg(revocation.until.saturating_mul(1000))
        .arg(&json)
        .ignore();
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(REVOKED)
        .arg("-inf")
        .arg(format!("({}", crate::now_ms()))
        .ignore();
    pipe.cmd("INCR").arg(REVOKED_VERSION).ignore();
    commands.pipeline::<()>(&pipe).await?;
    request(
        commands,
        serde_json::json!({"op": "revoke", "revocation": revocation}),
    )
    .await
}

/// The version of the revocation set (changes with every revocation), and
/// the revocations still in force.
///
/// # Errors
/// When Redis cannot be read.
pub async fn revocations(commands: &Commands) -> Result<(u64, Vec<Revocation>), BrokerError> {
    let mut pipe = redis::pipe();
    pipe.cmd("GET").arg(REVOKED_VERSION);
    pipe.cmd("ZRANGEBYSCORE")
        .arg(REVOKED)
        .arg(crate::now_ms())
        .arg("+inf");
    let (version, entries): (Option<u64>, Vec<String>) = commands.pipeline(&pipe).await?;
    let list = entries
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    Ok((version.unwrap_or(0), list))
}

/// The version of the revocation set alone (one cheap read per check).
///
/// # Errors
/// When Redis cannot be read.
pub async fn revocations_version(commands: &Commands) -> Result<u64, BrokerError> {
    let v: Option<u64> = commands
        .query(redis::cmd("GET").arg(REVOKED_VERSION))
        .await?;
    Ok(v.unwrap_or(0))
}

/// Publishes `msg` (with a fresh reply list) on the control channel and
/// sums the `closed` counts of the nodes that answer within
/// [`DISCONNECT_WAIT`].
async fn request(commands: &Commands, mut msg: serde_json::Value) -> Result<usize, BrokerError> {
    let reply = format!("{REPLY_PREFIX}{}", crate::random_hex(12));
    msg["reply"] = serde_json::Value::String(reply.clone());
    let msg = msg.to_string();
    let receivers: usize = commands
        .query(
            redis::cmd(commands.publish_verb())
                .arg(CONTROL_CHANNEL)
                .arg(&msg),
        )
        .await?;
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
        let popped: Option<(String, String)> = commands
            .query(
                redis::cmd("BLPOP")
                    .arg(&reply)
                    .arg(left.as_secs_f64().max(0.01)),
            )
            .await?;
        let Some((_, answer)) = popped else { break };
        answered += 1;
        let value: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        closed += value["closed"].as_u64().unwrap_or(0) as usize;
    }
    Ok(closed)
}

#[derive(serde::Deserialize)]
struct ControlMessage {
    op: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    revocation: Option<Revocation>,
    reply: String,
}

/// Acts on a control-channel message (closes a user's sessions, or applies
/// a revocation) on `node` and answers on the caller's reply list.
pub fn on_control(commands: Arc<Commands>, node: Arc<dyn NodeControl>, payload: &[u8]) {
    let Ok(msg) = serde_json::from_slice::<ControlMessage>(payload) else {
        warn!("malformed control message");
        return;
    };
    if !msg.reply.starts_with(REPLY_PREFIX) {
        return;
    }
    let closed = match (msg.op.as_str(), &msg.sub, &msg.revocation) {
        ("disconnect", Some(sub), _) => node.disconnect(sub),
        ("revoke", _, Some(r)) => node.revoke(r),
        _ => return,
    };
    tokio::spawn(async move {
        let answer = serde_json::json!({"node": node.stats().node, "closed": closed}).to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("RPUSH").arg(&msg.reply).arg(&answer).ignore();
        pipe.cmd("PEXPIRE").arg(&msg.reply).arg(10_000).ignore();
        if let Err(e) = commands.pipeline::<()>(&pipe).await {
            warn!(error = %e, "cannot answer a disconnect request");
        }
    });
}
