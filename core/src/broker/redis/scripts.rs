//! The topic side of the Redis broker: the Lua scripts that must be atomic
//! (publish a run of events with their idempotency records; confirm
//! replicated events; read history), how their arguments are built and how
//! their replies are read. The scripts are in `lua/`, each publish and
//! history script starting with the fence check of `lua/fence.lua`.
//!
//! Every key of a topic shares the hash tag `{<topic>}`, so each call's keys
//! and channel sit in one slot under Redis Cluster.

use bytes::Bytes;
use deadpool_redis::redis::Value;
use herald_protocol::Topic;

use super::cluster;
use super::commands::{Script, ScriptCall, as_text};
use crate::broker::{BrokerError, BrokerSettings, Event, HistoryPage, Position, Publication};
use crate::config::{Durability, HistoryConfig};

/// Most events of one topic published by one script call.
pub const PUBLISH_RUN: usize = 256;

/// The topic's channel.
pub fn channel(topic: &Topic) -> Bytes {
    Bytes::from(format!("herald:{{{topic}}}"))
}

fn stream_key(topic: &Topic) -> String {
    format!("herald:{{{topic}}}:h")
}

fn meta_key(topic: &Topic) -> String {
    format!("herald:{{{topic}}}:m")
}

/// Events refused under `replicated` durability, waiting to be taken back
/// (see `lua/rollback.lua`).
fn refused_key(topic: &Topic) -> String {
    format!("herald:{{{topic}}}:r")
}

/// The fence check every topic script starts with (see the file).
const FENCE_LUA: &str = include_str!("lua/fence.lua");

/// A script's text with the fence check prepended.
fn with_fence(body: &str) -> String {
    format!("{FENCE_LUA}\n{body}")
}

/// The topic scripts, with their digests.
pub struct Scripts {
    publish: Script,
    confirm: Script,
    history: Script,
    touch: Script,
    rollback: Script,
}

/// Topics whose epochs one `touch` call keeps alive.
pub const TOUCH_CHUNK: usize = 256;

/// A script for a Redis Cluster (`cluster`) or a single primary.
///
/// Under Cluster each script opens with a `#!lua` line (Redis 7): a script
/// without one counts as read-only to Redis, and since the cluster client
/// marks every connection `READONLY`, a node that became a replica would run
/// it (and fail its first write) instead of redirecting with `MOVED` to the
/// new primary; the client would then never learn the new slot owner.
/// Outside a cluster the scripts stay without it, so Redis 6 primaries keep
/// working.
pub fn script(cluster: bool, body: String) -> Script {
    if cluster {
        Script::new(format!("#!lua\n{body}"))
    } else {
        Script::new(body)
    }
}

impl Scripts {
    /// The scripts for a Redis Cluster (`cluster`) or a single primary.
    pub fn new(cluster: bool) -> Scripts {
        Scripts {
            publish: script(cluster, with_fence(include_str!("lua/publish.lua"))),
            confirm: script(cluster, include_str!("lua/confirm.lua").to_owned()),
            history: script(cluster, with_fence(include_str!("lua/history.lua"))),
            touch: script(cluster, include_str!("lua/touch.lua").to_owned()),
            rollback: script(cluster, include_str!("lua/rollback.lua").to_owned()),
        }
    }
}

/// How a publish is acknowledged, as the scripts spell it.
fn mode(durability: Durability) -> &'static str {
    match durability {
        Durability::Leader => "leader",
        Durability::Replicated => "replicated",
    }
}

fn idempotency_key(topic: &Topic, key: &str) -> String {
    format!("herald:{{{topic}}}:i:{key}")
}

/// A publish call's reply.
#[derive(Debug)]
pub struct Published {
    /// The epoch a fence replaced while publishing, if one did.
    pub replaced: Option<u32>,
    /// The topic's epoch.
    pub epoch: String,
    /// The topic's last seq after the call.
    pub last: u64,
    /// The seq of the call's first new event (0: every event was a repeat
    /// of an idempotency key already seen).
    pub first_new: u64,
}

/// The record of an event before and after its id, which Redis fills in.
fn frame_parts(p: &Publication, ts: u64) -> (Vec<u8>, Vec<u8>) {
    herald_protocol::record::around_id(p.topic.as_str(), p.event.as_deref(), &p.data, ts)
}

/// A batch split into runs of one topic's events, in request order: one
/// script call and one pub/sub message per run.
pub fn runs(batch: &[Publication]) -> Vec<(Topic, Vec<usize>)> {
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
    runs
}

impl Scripts {
    /// The call publishing `run` (events of `topic`, in order) on `verb`
    /// (`PUBLISH` or `SPUBLISH`), starting epoch `epoch` if the topic has
    /// no history (or a fence replaces it).
    pub fn publish(
        &self,
        topic: &Topic,
        run: &[&Publication],
        verb: &str,
        settings: &BrokerSettings,
        ts: u64,
        epoch: &str,
    ) -> ScriptCall {
        let history = &settings.history;
        let ttl = history.ttl.as_millis().to_string();
        let size = history.size.to_string();
        let window = settings.publish.idempotency_window.as_millis().to_string();
        let channel = channel(topic);
        let mut keys = vec![stream_key(topic), meta_key(topic)];
        let mut parts: Vec<(Vec<u8>, Vec<u8>, String)> = Vec::with_capacity(run.len());
        for p in run {
            let (prefix, suffix) = frame_parts(p, ts);
            let index = match &p.idempotency_key {
                Some(k) => {
                    keys.push(idempotency_key(topic, k));
                    keys.len().to_string()
                }
                None => "0".to_owned(),
            };
            parts.push((prefix, suffix, index));
        }
        let mut args: Vec<&[u8]> = vec![
            &channel,
            verb.as_bytes(),
            size.as_bytes(),
            ttl.as_bytes(),
            epoch.as_bytes(),
            mode(settings.publish.durability).as_bytes(),
            window.as_bytes(),
        ];
        for (prefix, suffix, index) in &parts {
            args.extend([prefix.as_slice(), suffix.as_slice(), index.as_bytes()]);
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        ScriptCall::new(&self.publish, cluster::slot(&channel), &keys, &args)
    }

    /// The call making `topic`'s events of `epoch` up to `last` visible and
    /// publishing them (durability = replicated, after WAIT).
    pub fn confirm(
        &self,
        topic: &Topic,
        verb: &str,
        epoch: &str,
        last: u64,
        history: &HistoryConfig,
    ) -> ScriptCall {
        let channel = channel(topic);
        let (last, size) = (last.to_string(), history.size.to_string());
        let args: [&[u8]; 5] = [
            &channel,
            verb.as_bytes(),
            epoch.as_bytes(),
            last.as_bytes(),
            size.as_bytes(),
        ];
        ScriptCall::new(
            &self.confirm,
            cluster::slot(&channel),
            &[&stream_key(topic), &meta_key(topic), &refused_key(topic)],
            &args,
        )
    }

    /// The call taking back the new events of a publish of `run` (whose
    /// events got `positions`) when its replicas did not confirm it (see
    /// `lua/rollback.lua`).
    pub fn rollback(
        &self,
        topic: &Topic,
        run: &[&Publication],
        positions: &[Position],
        published: &Published,
        history: &HistoryConfig,
    ) -> ScriptCall {
        let epoch = |p: &Position| format!("{:08x}", p.epoch) == published.epoch;
        // With no new event, the repeats' ids: visible ones mean the
        // publish had succeeded before.
        let last = if published.first_new > 0 {
            published.last
        } else {
            positions
                .iter()
                .filter(|p| epoch(p))
                .map(|p| p.seq)
                .max()
                .unwrap_or(u64::MAX)
        };
        let (first, last) = (published.first_new.to_string(), last.to_string());
        let ttl = history.ttl.as_millis().to_string();
        // New events took consecutive seqs from `first_new`, in run order;
        // a repeated key answered an older id instead (also one new in this
        // very run: its seq is then not above the last one counted).
        let mut counted = published.first_new.saturating_sub(1);
        let records: Vec<String> = run
            .iter()
            .zip(positions)
            .filter(|(_, p)| {
                let new = published.first_new > 0 && p.seq > counted && epoch(p);
                if new {
                    counted = p.seq;
                }
                new
            })
            .map(|(e, _)| {
                e.idempotency_key
                    .as_deref()
                    .map_or_else(String::new, |k| idempotency_key(topic, k))
            })
            .collect();
        let mut args: Vec<&[u8]> = vec![
            published.epoch.as_bytes(),
            first.as_bytes(),
            last.as_bytes(),
            ttl.as_bytes(),
        ];
        args.extend(records.iter().map(String::as_bytes));
        ScriptCall::new(
            &self.rollback,
            cluster::slot(&channel(topic)),
            &[&stream_key(topic), &meta_key(topic), &refused_key(topic)],
            &args,
        )
    }

    /// The calls keeping the epochs of `topics` alive for `ttl`: one per
    /// slot and [`TOUCH_CHUNK`] topics.
    pub fn touch(&self, topics: &[Topic], ttl: std::time::Duration) -> Vec<ScriptCall> {
        let ttl = ttl.as_millis().to_string();
        let mut by_slot: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
        for t in topics {
            by_slot
                .entry(cluster::slot(&channel(t)))
                .or_default()
                .push(meta_key(t));
        }
        let mut calls = Vec::new();
        for (slot, keys) in by_slot {
            for chunk in keys.chunks(TOUCH_CHUNK) {
                let keys: Vec<&str> = chunk.iter().map(String::as_str).collect();
                calls.push(ScriptCall::new(&self.touch, slot, &keys, &[ttl.as_bytes()]));
            }
        }
        calls
    }

    /// The call reading up to `limit` events of `topic` after `since`;
    /// `positioning`: the read of a subscribed topic's position, which
    /// starts an epoch when it has none and keeps it alive (see
    /// `lua/history.lua`).
    #[allow(clippy::too_many_arguments, reason = "one call's arguments, named")]
    pub fn history(
        &self,
        topic: &Topic,
        since: Option<&str>,
        limit: usize,
        settings: &BrokerSettings,
        epoch: &str,
        clustered: bool,
        positioning: bool,
    ) -> ScriptCall {
        let (since_epoch, since_seq) = match since.map(Position::parse) {
            None => (String::new(), String::from("-1")),
            // Unparseable: a non-matching epoch makes it unrecoverable.
            Some(None) => ("unparseable".to_owned(), String::from("-1")),
            Some(Some(p)) => (format!("{:08x}", p.epoch), p.seq.to_string()),
        };
        let limit = limit.to_string();
        let ttl = settings.history.ttl.as_millis().to_string();
        let args: [&[u8]; 8] = [
            since_epoch.as_bytes(),
            since_seq.as_bytes(),
            limit.as_bytes(),
            mode(settings.publish.durability).as_bytes(),
            epoch.as_bytes(),
            ttl.as_bytes(),
            if clustered { b"1" } else { b"0" },
            if positioning { b"1" } else { b"0" },
        ];
        ScriptCall::new(
            &self.history,
            cluster::slot(&channel(topic)),
            &[&stream_key(topic), &meta_key(topic)],
            &args,
        )
    }
}

/// A publish call's reply: its events' ids, in `members` order, go into
/// `positions`.
///
/// # Errors
/// A reply of the wrong shape.
pub fn read_publish(
    value: Value,
    members: &[usize],
    positions: &mut [Position],
) -> Result<Published, BrokerError> {
    let bad = || BrokerError::Internal("unexpected reply from the publish script".to_owned());
    let parts = match value {
        Value::Array(parts) => parts,
        other => {
            return Err(BrokerError::Internal(format!(
                "unexpected reply from the publish script: {other:.200?}"
            )));
        }
    };
    let [ids, replaced, epoch, last, first_new] =
        <[Value; 5]>::try_from(parts).map_err(|_| bad())?;
    let Value::Array(ids) = ids else {
        return Err(bad());
    };
    if ids.len() != members.len() {
        return Err(bad());
    }
    for (i, id) in members.iter().zip(ids) {
        let position = as_text(&id)
            .and_then(|id| Position::parse(&id))
            .ok_or_else(bad)?;
        *positions.get_mut(*i).ok_or_else(bad)? = position;
    }
    Ok(Published {
        replaced: as_text(&replaced)
            .filter(|r| !r.is_empty())
            .and_then(|r| u32::from_str_radix(&r, 16).ok()),
        epoch: as_text(&epoch).ok_or_else(bad)?,
        last: as_text(&last)
            .and_then(|l| l.parse().ok())
            .ok_or_else(bad)?,
        first_new: as_text(&first_new)
            .and_then(|l| l.parse().ok())
            .ok_or_else(bad)?,
    })
}

/// A history call's reply as a page, and whether the read itself fenced the
/// topic (started a new epoch).
///
/// # Errors
/// A reply of the wrong shape.
pub fn read_history(
    value: Value,
    topic: &Topic,
    since: Option<&str>,
) -> Result<(HistoryPage, bool), BrokerError> {
    let bad = || BrokerError::Internal("unexpected reply from the history script".to_owned());
    let Value::Array(parts) = value else {
        return Err(bad());
    };
    let [recovered, epoch, entries, last, replaced, fenced] =
        <[Value; 6]>::try_from(parts).map_err(|_| bad())?;
    let fenced = matches!(fenced, Value::Int(1));
    let recovered = matches!(recovered, Value::Int(1));
    let Some(epoch) = as_text(&epoch).filter(|e| !e.is_empty()) else {
        // No history for this topic.
        return Ok((
            HistoryPage {
                events: Vec::new(),
                recovered: since.is_none(),
                head: None,
                replaced: None,
            },
            fenced,
        ));
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
            record: Bytes::from(json.clone()),
        });
    }
    let page = HistoryPage {
        events,
        recovered,
        head: Some(Position { epoch, seq: last }),
        replaced: as_text(&replaced)
            .filter(|r| !r.is_empty())
            .and_then(|r| u32::from_str_radix(&r, 16).ok()),
    };
    Ok((page, fenced))
}
