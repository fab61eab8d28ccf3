//! Lifecycle webhooks on Redis (contract §10.6): the cluster's queue, the
//! sessions each node incarnation holds open, and the sender's lease.
//!
//! **Layout.** Every key shares the tag `{herald-nodes}` with the live
//! incarnations, so each script below is one slot under Redis Cluster:
//! - `…:wh:q`, a stream: the queue, one entry per event (fields `type`,
//!   `ts`, `data`, `session`, `topic`; the entry id is the event id), in
//!   the order events were recorded, trimmed to `webhooks.max_queue`;
//! - `…:wh:s:<incarnation>`, a hash: session → its `session.disconnected`
//!   data with reason `node_lost`, for every session open under that
//!   incarnation;
//! - `…:wh:t:<incarnation>`, a set: the topics that incarnation holds (has
//!   a local subscriber of); `…:wh:tc`, a hash: holders per topic;
//!   `…:wh:tv`, a sorted set: topics left without holder, scored by when
//!   their `topic.vacated` is due;
//! - `…:wh:lease`: the node that sends the queue, with a time to live.
//!
//! **Exactly one disconnect per connect.** Recording a session and queuing
//! its `session.connected` is one script (`open.lua`); forgetting it and
//! queuing its `session.disconnected` is another (`close.lua`), which
//! queues only when the session was still recorded. The presence sweeper,
//! which already claims each lapsed incarnation for one sweeper, also
//! sweeps its session hash (`sweep.lua`): one `node_lost` per session still
//! recorded. A node that comes back moves its open sessions to its new
//! incarnation (`move.lua`): silently if not yet swept, with a new
//! `session.connected` if it was. Each script is atomic and idempotent, so
//! retrying one whose reply was lost changes nothing.
//!
//! **Occupied and vacated.** A node holds a topic from its first local
//! subscriber to its last (`hold.lua`, `unhold.lua`); the first holder in
//! the cluster queues `topic.occupied`, the last one's release makes the
//! topic due for `topic.vacated` after `webhooks.vacated_delay`, which
//! whoever reads the queue queues once due (`vacate.lua`) unless a holder
//! came back first (then neither event: they still alternate). A lapsed
//! incarnation's topics are released by the same sweep as its sessions.
//!
//! **Presence events** are queued by the worker (or the sweeper) after the
//! presence script that made the change returned it (`add.lua`): a
//! topic's member hash lives in the topic's slot, the queue in another.
//! So a node killed between the two, or a reply lost to a Redis fault
//! while a join is retried, can lose that one `presence.join`/`leave`
//! webhook; session events have no such window.

use std::sync::Mutex;
use std::time::Duration;

use deadpool_redis::redis::{self, Value};

use super::worker::retry;
use super::{ALIVE, Shared, cluster};
use crate::broker::BrokerError;
use crate::broker::redis::commands::{Script, ScriptCall, as_text};
use crate::broker::redis::scripts::script;
use crate::webhooks::{Kind, Queued, SessionOpen, topic_data};

const QUEUE: &str = "herald:{herald-nodes}:wh:q";
const LEASE: &str = "herald:{herald-nodes}:wh:lease";
const HOLDERS: &str = "herald:{herald-nodes}:wh:tc";
const VACATING: &str = "herald:{herald-nodes}:wh:tv";
/// Presence events queued by one script call.
const ADD_AT_ONCE: usize = 256;

fn sessions_key(incarnation: &str) -> String {
    format!("herald:{{herald-nodes}}:wh:s:{incarnation}")
}

fn held_key(incarnation: &str) -> String {
    format!("herald:{{herald-nodes}}:wh:t:{incarnation}")
}

/// The webhook scripts, each with the shared `queue.lua` prelude.
pub(super) struct WebhookScripts {
    open: Script,
    close: Script,
    mv: Script,
    sweep: Script,
    add: Script,
    hold: Script,
    unhold: Script,
    vacate: Script,
    lease: Script,
}

impl WebhookScripts {
    pub(super) fn new(cluster: bool) -> WebhookScripts {
        let prelude = concat!(
            include_str!("../lua/webhooks/queue.lua"),
            include_str!("../lua/webhooks/release.lua")
        );
        let s = |body: &str| script(cluster, format!("{prelude}\n{body}"));
        WebhookScripts {
            open: s(include_str!("../lua/webhooks/open.lua")),
            close: s(include_str!("../lua/webhooks/close.lua")),
            mv: s(include_str!("../lua/webhooks/move.lua")),
            sweep: s(include_str!("../lua/webhooks/sweep.lua")),
            add: s(include_str!("../lua/webhooks/add.lua")),
            hold: s(include_str!("../lua/webhooks/hold.lua")),
            unhold: s(include_str!("../lua/webhooks/unhold.lua")),
            vacate: s(include_str!("../lua/webhooks/vacate.lua")),
            lease: script(
                cluster,
                include_str!("../lua/webhooks/lease.lua").to_owned(),
            ),
        }
    }
}

/// Events dropped by the cap, per [`Kind::index`], until the sender asks.
pub(super) type Dropped = Mutex<[u64; Kind::ALL.len()]>;

/// A stream entry: its id and fields.
type StreamEntry = (String, Vec<(String, String)>);

/// A presence event to queue: type, data, session, topic.
pub(super) type PresenceEvent = (Kind, String, String, String);

fn slot() -> u16 {
    cluster::slot(ALIVE.as_bytes())
}

impl Shared {
    fn max_queue(&self) -> String {
        self.webhooks.max_queue.to_string()
    }

    pub(super) fn open_call(&self, inc: &str, open: &SessionOpen) -> ScriptCall {
        ScriptCall::new(
            &self.wh_scripts.open,
            slot(),
            &[&sessions_key(inc), QUEUE],
            &[
                self.max_queue().as_bytes(),
                open.session.as_bytes(),
                open.lost.as_bytes(),
                open.connected.as_deref().unwrap_or("").as_bytes(),
            ],
        )
    }

    pub(super) fn close_call(&self, inc: &str, session: &str, data: Option<&str>) -> ScriptCall {
        let data = data.filter(|_| self.webhooks.events.has(Kind::Disconnected));
        ScriptCall::new(
            &self.wh_scripts.close,
            slot(),
            &[&sessions_key(inc), QUEUE],
            &[
                self.max_queue().as_bytes(),
                session.as_bytes(),
                data.unwrap_or("").as_bytes(),
            ],
        )
    }

    pub(super) fn move_call(&self, old: &str, new: &str, open: &SessionOpen) -> ScriptCall {
        ScriptCall::new(
            &self.wh_scripts.mv,
            slot(),
            &[&sessions_key(old), &sessions_key(new), QUEUE],
            &[
                self.max_queue().as_bytes(),
                open.session.as_bytes(),
                open.lost.as_bytes(),
                open.connected.as_deref().unwrap_or("").as_bytes(),
            ],
        )
    }

    pub(super) fn hold_call(&self, inc: &str, topic: &str) -> ScriptCall {
        let occupied: &[u8] = if self.webhooks.events.has(Kind::Occupied) {
            b"1"
        } else {
            b"0"
        };
        ScriptCall::new(
            &self.wh_scripts.hold,
            slot(),
            &[&held_key(inc), HOLDERS, VACATING, QUEUE],
            &[
                self.max_queue().as_bytes(),
                topic.as_bytes(),
                topic_data(topic).as_bytes(),
                occupied,
            ],
        )
    }

    pub(super) fn unhold_call(&self, inc: &str, topic: &str) -> ScriptCall {
        ScriptCall::new(
            &self.wh_scripts.unhold,
            slot(),
            &[&held_key(inc), HOLDERS, VACATING],
            &[topic.as_bytes(), self.vacated_delay_ms().as_bytes()],
        )
    }

    fn vacated_delay_ms(&self) -> String {
        self.webhooks.vacated_delay.as_millis().to_string()
    }

    /// One call queuing `events` (selected types only), or `None`.
    pub(super) fn add_call(&self, events: &[PresenceEvent]) -> Option<ScriptCall> {
        let events: Vec<&PresenceEvent> = events
            .iter()
            .filter(|e| self.webhooks.events.has(e.0))
            .collect();
        if events.is_empty() {
            return None;
        }
        let max = self.max_queue();
        let mut args: Vec<&[u8]> = vec![max.as_bytes()];
        for (kind, data, session, topic) in events {
            args.extend([
                kind.name().as_bytes(),
                data.as_bytes(),
                session.as_bytes(),
                topic.as_bytes(),
            ]);
        }
        Some(ScriptCall::new(
            &self.wh_scripts.add,
            slot(),
            &[QUEUE],
            &args,
        ))
    }

    /// Queues presence `events` (selected types only), retrying until
    /// Redis takes them or `stopped` says the broker is gone.
    pub(super) async fn queue_events(&self, events: &[PresenceEvent], stopped: impl Fn() -> bool) {
        for chunk in events.chunks(ADD_AT_ONCE) {
            let Some(call) = self.add_call(chunk) else {
                continue;
            };
            let queued = retry("queue presence webhooks", &stopped, || {
                self.commands.scripts(std::slice::from_ref(&call), None)
            })
            .await;
            for reply in queued.iter().flatten() {
                self.count_dropped(reply);
            }
        }
    }

    /// Counts the types a webhook script dropped (its reply, or a reply's
    /// last element for `sweep.lua`).
    pub(super) fn count_dropped(&self, reply: &Value) {
        let Value::Array(items) = reply else { return };
        let items = match items.as_slice() {
            [Value::Int(_), Value::Array(d)] => d.as_slice(),
            all => all,
        };
        if items.is_empty() {
            return;
        }
        let mut dropped = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
        for kind in items
            .iter()
            .filter_map(as_text)
            .filter_map(|t| Kind::parse(&t))
        {
            dropped[kind.index()] += 1;
        }
    }

    /// Queues `node_lost` for every session of incarnation `inc` still
    /// recorded, and forgets them; returns how many.
    pub(super) async fn sweep_sessions(&self, inc: &str) -> Result<u64, BrokerError> {
        // Whatever this process's own settings: the hash exists only if
        // the swept node recorded sessions.
        let call = ScriptCall::new(
            &self.wh_scripts.sweep,
            slot(),
            &[&sessions_key(inc), QUEUE, &held_key(inc), HOLDERS, VACATING],
            &[
                self.max_queue().as_bytes(),
                self.vacated_delay_ms().as_bytes(),
            ],
        );
        let reply = self
            .commands
            .scripts(std::slice::from_ref(&call), None)
            .await?;
        let reply = reply.into_iter().next().unwrap_or(Value::Nil);
        self.count_dropped(&reply);
        Ok(match &reply {
            Value::Array(items) => match items.first() {
                Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            },
            _ => 0,
        })
    }

    /// See [`crate::Broker::webhooks_lease`].
    pub(super) async fn lease(&self, holder: &str, ttl: Duration) -> Result<bool, BrokerError> {
        let ttl = ttl.as_millis().max(1).to_string();
        let call = ScriptCall::new(
            &self.wh_scripts.lease,
            slot(),
            &[LEASE],
            &[holder.as_bytes(), ttl.as_bytes()],
        );
        let reply = self
            .commands
            .scripts(std::slice::from_ref(&call), None)
            .await?;
        Ok(matches!(reply.first(), Some(Value::Int(1))))
    }

    /// See [`crate::Broker::webhooks_read`].
    pub(super) async fn read(&self, max: usize) -> Result<(Vec<Queued>, u64), BrokerError> {
        // Topics whose delay ran out are vacated by whoever reads.
        let vacated: &[u8] = if self.webhooks.events.has(Kind::Vacated) {
            b"1"
        } else {
            b"0"
        };
        let vacate = ScriptCall::new(
            &self.wh_scripts.vacate,
            slot(),
            &[VACATING, QUEUE],
            &[self.max_queue().as_bytes(), vacated],
        );
        let reply = self
            .commands
            .scripts(std::slice::from_ref(&vacate), None)
            .await?;
        if let Some(reply) = reply.first() {
            self.count_dropped(reply);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(QUEUE)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(max);
        pipe.cmd("XLEN").arg(QUEUE);
        let (entries, len): (Vec<StreamEntry>, u64) = self.commands.pipeline(&pipe).await?;
        let mut foreign = Vec::new();
        let mut events = Vec::with_capacity(entries.len());
        for (id, fields) in entries {
            match entry(&id, fields) {
                Some(e) => events.push(e),
                None => foreign.push(id),
            }
        }
        // An entry Herald did not write would block the head for ever.
        self.done(&foreign).await?;
        Ok((events, len))
    }

    /// See [`crate::Broker::webhooks_done`].
    pub(super) async fn done(&self, ids: &[String]) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(QUEUE);
        for id in ids {
            cmd.arg(id);
        }
        self.commands.query::<()>(&cmd).await
    }

    /// See [`crate::Broker::webhooks_dropped`].
    pub(super) fn take_dropped(&self) -> [u64; Kind::ALL.len()] {
        std::mem::take(&mut *self.dropped.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A stream entry as a queued event; `None` for one Herald did not write.
fn entry(id: &str, fields: Vec<(String, String)>) -> Option<Queued> {
    let (mut kind, mut ts, mut data, mut session, mut topic) = (None, 0, None, None, None);
    for (k, v) in fields {
        match k.as_str() {
            "type" => kind = Kind::parse(&v),
            "ts" => ts = v.parse().unwrap_or(0),
            "data" => data = Some(v),
            "session" => session = Some(v).filter(|s| !s.is_empty()),
            "topic" => topic = Some(v).filter(|t| !t.is_empty()),
            _ => {}
        }
    }
    Some(Queued {
        id: id.to_owned(),
        kind: kind?,
        ts,
        data: data?,
        session,
        topic,
    })
}
