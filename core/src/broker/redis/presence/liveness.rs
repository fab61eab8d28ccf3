//! Liveness: a node's report of its incarnation, and the sweep that removes
//! the members (and per-user counts) of incarnations that stopped reporting
//! (see the module documentation of [`super`]).

use std::sync::Weak;

use deadpool_redis::redis::{self, Value};
use herald_protocol::Topic;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::{
    ALIVE, BATCH, CLAIM_AT_ONCE, CLAIMED, Op, Shared, cluster, members_key, topics_key, users_key,
};
use crate::broker::redis::commands::{ScriptCall, as_text};
use crate::broker::redis::scripts::channel;
use crate::broker::{BrokerError, LeaveCause};
use crate::webhooks::{Kind, member_data};

/// The presence period and a ticker at it (late ticks delayed, not
/// bunched), or `None` once the broker is gone.
fn ticker(shared: &Weak<Shared>) -> Option<(std::time::Duration, tokio::time::Interval)> {
    let period = shared.upgrade()?.timing.period;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some((period, tick))
}

/// Renews incarnation `inc` until it lapses, then tells the worker.
pub(super) async fn reporter(
    shared: Weak<Shared>,
    inc: String,
    worker: mpsc::WeakUnboundedSender<Op>,
) {
    let Some((period, mut tick)) = ticker(&shared) else {
        return;
    };
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        let call = s.heartbeat_call(&inc, false);
        let answer = tokio::time::timeout(
            period,
            s.commands.scripts(std::slice::from_ref(&call), None),
        )
        .await;
        match answer {
            Ok(Ok(values)) => {
                if matches!(values.first(), Some(Value::Int(0))) {
                    if let Some(w) = worker.upgrade() {
                        let _ = w.send(Op::Lapsed);
                    }
                    return;
                }
            }
            Ok(Err(e)) => debug!(error = %e, "presence report failed"),
            Err(_) => debug!("presence report timed out"),
        }
    }
}

/// Claims lapsed incarnations and removes their members, every period.
pub(super) async fn sweeper(shared: Weak<Shared>) {
    let Some((_, mut tick)) = ticker(&shared) else {
        return;
    };
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        if let Err(e) = s.sweep_once().await {
            debug!(error = %e, "presence sweep failed; the claim runs out and it is retried");
        }
    }
}

impl Shared {
    /// Claims what lapsed and sweeps it; returns how many members left.
    pub(super) async fn sweep_once(&self) -> Result<u64, BrokerError> {
        let claim_ms = self.timing.claim.as_millis().to_string();
        let at_once = CLAIM_AT_ONCE.to_string();
        let claim = ScriptCall::new(
            &self.scripts.claim,
            cluster::slot(ALIVE.as_bytes()),
            &[ALIVE, CLAIMED],
            &[claim_ms.as_bytes(), at_once.as_bytes()],
        );
        let claimed = self
            .commands
            .scripts(std::slice::from_ref(&claim), None)
            .await?;
        let incs: Vec<String> = match claimed.into_iter().next() {
            Some(Value::Array(items)) => items.iter().filter_map(as_text).collect(),
            _ => Vec::new(),
        };
        let mut left = 0;
        for inc in incs {
            left += self.sweep(&inc, LeaveCause::Timeout).await?;
        }
        Ok(left)
    }

    /// Removes every member of incarnation `inc`, counted as `cause`.
    pub(super) async fn sweep(&self, inc: &str, cause: LeaveCause) -> Result<u64, BrokerError> {
        let key = topics_key(inc);
        let topics: Vec<String> = self
            .commands
            .query(redis::cmd("SMEMBERS").arg(&key))
            .await?;
        let verb = self.commands.publish_verb();
        let calls: Vec<ScriptCall> = topics
            .iter()
            .filter_map(|t| Topic::new(t).ok())
            .map(|topic| {
                let ch = channel(&topic);
                ScriptCall::new(
                    &self.scripts.sweep,
                    cluster::slot(&ch),
                    &[&members_key(&topic), &users_key(&topic)],
                    &[inc.as_bytes(), &ch, verb.as_bytes()],
                )
            })
            .collect();
        let mut left = 0;
        let mut events = Vec::new();
        let mut swept = topics.iter().filter_map(|t| Topic::new(t).ok());
        for chunk in calls.chunks(BATCH) {
            let replies = self.commands.scripts(chunk, None).await?;
            for (topic, reply) in swept.by_ref().zip(replies) {
                let Value::Array(members) = reply else {
                    continue;
                };
                left += members.len() as u64;
                if self.webhooks.events.has(Kind::Leave) {
                    events.extend(members.iter().filter_map(|m| leave_event(&topic, m)));
                }
            }
        }
        // The leaves of its sessions, then their disconnects (node_lost).
        let until = std::time::Instant::now() + self.timing.claim;
        self.queue_events(&events, || std::time::Instant::now() > until)
            .await;
        let lost = self.sweep_sessions(inc).await?;
        if lost > 0 {
            info!(incarnation = %inc, sessions = lost, "sessions of a node that stopped reporting: session.disconnected (node_lost) queued");
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&key).ignore();
        pipe.cmd("ZREM").arg(CLAIMED).arg(inc).ignore();
        self.commands.pipeline::<()>(&pipe).await?;
        if left > 0 {
            info!(incarnation = %inc, members = left, topics = topics.len(), "members of a node that stopped reporting left presence");
        }
        self.metrics.presence_left(cause, left);
        Ok(left)
    }
}

/// The `presence.leave` webhook of a member `sweep.lua` removed.
fn leave_event(topic: &Topic, member: &Value) -> Option<super::webhooks::PresenceEvent> {
    let Value::BulkString(json) = member else {
        return None;
    };
    let m: crate::broker::Member = serde_json::from_slice(json).ok()?;
    Some((
        Kind::Leave,
        member_data(topic.as_str(), &m.sub, &m.session),
        m.session,
        topic.to_string(),
    ))
}
