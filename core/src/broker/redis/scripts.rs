//! The topic side of the Redis broker: the two Lua scripts that must be
//! atomic (publish a run of events; read history with its epoch check), how
//! their arguments are built and how their replies are read.
//!
//! Every key of a topic shares the hash tag `{<topic>}`, so each call's keys
//! and channel sit in one slot under Redis Cluster.

use bytes::Bytes;
use deadpool_redis::redis::Value;
use herald_protocol::{MessageFrame, Topic};

use super::cluster;
use super::commands::{Script, ScriptCall, as_text};
use crate::broker::{BrokerError, Event, HistoryPage, Position, Publication};
use crate::config::HistoryConfig;

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

/// The two scripts, with their digests.
pub struct Scripts {
    publish: Script,
    history: Script,
}

impl Default for Scripts {
    fn default() -> Scripts {
        Scripts {
            publish: Script::new(PUBLISH_LUA),
            history: Script::new(HISTORY_LUA),
        }
    }
}

/// The frame of an event before and after its id, which Redis fills in.
fn frame_parts(p: &Publication, ts: u64) -> (String, String) {
    MessageFrame {
        topic: p.topic.as_str(),
        id: "",
        event: p.event.as_deref(),
        data: &p.data,
        ts,
    }
    .around_id()
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
    /// no history.
    pub fn publish(
        &self,
        topic: &Topic,
        run: &[&Publication],
        verb: &str,
        history: &HistoryConfig,
        ts: u64,
        epoch: &str,
    ) -> ScriptCall {
        let ttl = history.ttl.as_millis().to_string();
        let size = history.size.to_string();
        let channel = channel(topic);
        let parts: Vec<(String, String)> = run.iter().map(|p| frame_parts(p, ts)).collect();
        let mut args: Vec<&[u8]> = vec![
            &channel,
            verb.as_bytes(),
            size.as_bytes(),
            ttl.as_bytes(),
            epoch.as_bytes(),
        ];
        for (prefix, suffix) in &parts {
            args.push(prefix.as_bytes());
            args.push(suffix.as_bytes());
        }
        ScriptCall::new(
            &self.publish,
            cluster::slot(&channel),
            &[&stream_key(topic), &meta_key(topic)],
            &args,
        )
    }

    /// The call reading up to `limit` events of `topic` after `since`.
    pub fn history(&self, topic: &Topic, since: Option<&str>, limit: usize) -> ScriptCall {
        let (since_epoch, since_seq) = match since.map(Position::parse) {
            None => (String::new(), String::from("-1")),
            // Unparseable: a non-matching epoch makes it unrecoverable.
            Some(None) => ("unparseable".to_owned(), String::from("-1")),
            Some(Some(p)) => (format!("{:08x}", p.epoch), p.seq.to_string()),
        };
        let limit = limit.to_string();
        let args: [&[u8]; 3] = [
            since_epoch.as_bytes(),
            since_seq.as_bytes(),
            limit.as_bytes(),
        ];
        ScriptCall::new(
            &self.history,
            cluster::slot(&channel(topic)),
            &[&stream_key(topic), &meta_key(topic)],
            &args,
        )
    }
}

/// The ids of a publish call's events, in `members` order into `positions`.
///
/// # Errors
/// A reply of the wrong shape.
pub fn read_publish(
    value: Value,
    members: &[usize],
    positions: &mut [Position],
) -> Result<(), BrokerError> {
    let bad = || BrokerError::Internal("unexpected reply from the publish script".to_owned());
    let Value::Array(ids) = value else {
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
    Ok(())
}

/// A history call's reply as a page.
///
/// # Errors
/// A reply of the wrong shape.
pub fn read_history(
    value: Value,
    topic: &Topic,
    since: Option<&str>,
) -> Result<HistoryPage, BrokerError> {
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
