//! The presence worker: every join, leave and per-user count of this node,
//! stored in the order they were asked, and the node's incarnation (see the
//! module documentation of [`super`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use herald_protocol::Topic;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use super::liveness::reporter;
use super::{
    ALIVE, BATCH, Op, PRUNE_PERIOD, Shared, cluster, members_key, topics_key, user_key, users_key,
};
use crate::broker::redis::commands::ScriptCall;
use crate::broker::redis::scripts::channel;
use crate::broker::{BrokerError, LeaveCause, Member};
use crate::webhooks::{Kind, SessionOpen, member_data};

pub(super) struct Worker {
    shared: Arc<Shared>,
    ops: mpsc::UnboundedReceiver<Op>,
    /// For the reporter to say the incarnation lapsed, in line with the ops.
    lapsed: mpsc::WeakUnboundedSender<Op>,
    queued_joins: Arc<AtomicUsize>,
    incarnation: Option<String>,
    /// Topics listed under the current incarnation.
    indexed: HashSet<Topic>,
    /// This node's admitted sessions per user, the truth its counts in
    /// Redis are written from (absolute, so a retried write cannot drift).
    users: HashMap<Arc<str>, u64>,
    /// This node's open sessions, with webhooks on: moved to a new
    /// incarnation when the old one lapsed.
    sessions: HashMap<String, SessionOpen>,
    /// The topics this node holds, with topic webhooks on: held again
    /// under a new incarnation.
    held: HashSet<Topic>,
}

/// The per-user count changes of one batch for one user, in the order the
/// batch first mentions them.
struct Tally {
    sub: Arc<str>,
    limit: u32,
    ended: u64,
    asking: u64,
}

fn tallies(ops: &[Op]) -> Vec<Tally> {
    let mut out: Vec<Tally> = Vec::new();
    for op in ops {
        let (sub, limit, ended, asking) = match op {
            Op::Admit { sub, limit, .. } => (sub, *limit, 0, 1),
            Op::Count { sub, ended } => (sub, 0, *ended, 0),
            _ => continue,
        };
        match out.iter_mut().find(|t| t.sub == *sub) {
            Some(t) => {
                t.limit = t.limit.max(limit);
                t.ended += ended;
                t.asking += asking;
            }
            None => out.push(Tally {
                sub: sub.clone(),
                limit,
                ended,
                asking,
            }),
        }
    }
    out
}

impl Worker {
    pub(super) fn new(
        shared: Arc<Shared>,
        ops: mpsc::UnboundedReceiver<Op>,
        lapsed: mpsc::WeakUnboundedSender<Op>,
        queued_joins: Arc<AtomicUsize>,
    ) -> Worker {
        Worker {
            shared,
            ops,
            lapsed,
            queued_joins,
            incarnation: None,
            indexed: HashSet::new(),
            users: HashMap::new(),
            sessions: HashMap::new(),
            held: HashSet::new(),
        }
    }

    pub(super) async fn run(mut self) {
        let mut prune = tokio::time::interval(PRUNE_PERIOD);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                n = self.ops.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                }
                _ = prune.tick() => {
                    self.prune().await;
                    continue;
                }
            }
            let lapsed = batch.iter().any(|op| matches!(op, Op::Lapsed));
            batch.retain(|op| !matches!(op, Op::Lapsed));
            if lapsed {
                self.reincarnate().await;
            }
            let mut rest = batch.as_mut_slice();
            while !rest.is_empty() {
                let (now, later) = rest.split_at_mut(in_order(rest));
                self.apply(now).await;
                rest = later;
            }
            batch.clear();
        }
        self.retire().await;
    }

    /// The current incarnation, registering one (and starting its reporter)
    /// when there is none.
    async fn incarnation(&mut self) -> Option<String> {
        if let Some(inc) = &self.incarnation {
            return Some(inc.clone());
        }
        let inc = crate::random_hex(8);
        let register = self.shared.heartbeat_call(&inc, true);
        let (commands, ops) = (&self.shared.commands, &self.ops);
        retry(
            "register presence",
            || ops.is_closed(),
            || commands.scripts(std::slice::from_ref(&register), None),
        )
        .await?;
        tokio::spawn(
            reporter(
                Arc::downgrade(&self.shared),
                inc.clone(),
                self.lapsed.clone(),
            )
            .instrument(tracing::info_span!("presence_report")),
        );
        debug!(incarnation = %inc, "presence incarnation registered");
        self.incarnation = Some(inc.clone());
        Some(inc)
    }

    /// Stores `ops` in order, retrying until Redis takes them.
    async fn apply(&mut self, ops: &mut [Op]) {
        if ops.is_empty() {
            return;
        }
        let Some(inc) = self.incarnation().await else {
            return;
        };
        let new_topics: Vec<&Topic> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Join { topic, .. } if !self.indexed.contains(topic) => Some(topic),
                _ => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !new_topics.is_empty() {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(topics_key(&inc));
            for t in &new_topics {
                sadd.arg(t.as_str());
            }
            let (commands, queue) = (&self.shared.commands, &self.ops);
            let listed = retry(
                "list presence topics",
                || queue.is_closed(),
                || commands.query::<()>(&sadd),
            )
            .await;
            if listed.is_none() {
                return;
            }
            self.indexed.extend(new_topics.into_iter().cloned());
        }
        let (mut calls, called): (Vec<ScriptCall>, Vec<usize>) = ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| Some((self.shared.call(op, &inc)?, i)))
            .unzip();
        let presence_calls = calls.len();
        // Per-user counts: one absolute write per user (see
        // `lua/presence/users.lua`), so retrying the batch cannot drift.
        let tallies = tallies(ops);
        calls.extend(tallies.iter().map(|t| {
            let own = self.users.get(&t.sub).copied().unwrap_or(0);
            self.shared.users_call(&inc, t, own)
        }));
        let (commands, queue) = (&self.shared.commands, &self.ops);
        let stored = retry(
            "store presence changes",
            || queue.is_closed(),
            || commands.scripts_in_order(&calls),
        )
        .await;
        let Some(values) = stored else {
            return;
        };
        self.queue_presence_events(ops, &called, &values).await;
        let mut admitted: HashMap<Arc<str>, u64> = HashMap::new();
        for (t, value) in tallies.iter().zip(values.iter().skip(presence_calls)) {
            let n = match value {
                Value::Int(n) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            };
            let own = self.users.get(&t.sub).copied().unwrap_or(0);
            let now = own.saturating_sub(t.ended) + n;
            if now == 0 {
                self.users.remove(&t.sub);
            } else {
                self.users.insert(t.sub.clone(), now);
            }
            admitted.insert(t.sub.clone(), n);
        }
        for op in ops.iter_mut() {
            match op {
                Op::Join { done, .. } => {
                    self.queued_joins.fetch_sub(1, Ordering::AcqRel);
                    if let Some(done) = done.take() {
                        let _ = done.send(Ok(()));
                    }
                }
                Op::Admit { sub, done, .. } => {
                    // The first sessions of a user in the batch get its room.
                    let left = admitted.get_mut(sub);
                    let yes = left.is_some_and(|n| {
                        let yes = *n > 0;
                        *n = n.saturating_sub(1);
                        yes
                    });
                    if let Some(done) = done.take() {
                        let _ = done.send(Ok(yes));
                    }
                }
                Op::Open(open) => {
                    self.sessions.insert(open.session.clone(), open.clone());
                }
                Op::Close { session, .. } => {
                    self.sessions.remove(session.as_str());
                }
                Op::Hold(topic) => {
                    self.held.insert(topic.clone());
                }
                Op::Unhold(topic) => {
                    self.held.remove(topic);
                }
                Op::Leave { .. } | Op::Count { .. } | Op::Lapsed => {}
            }
        }
    }

    /// A new incarnation, and every open session's membership stored under
    /// it.
    async fn reincarnate(&mut self) {
        let old = self.incarnation.take();
        self.indexed.clear();
        if let Some(old) = old.filter(|_| !self.sessions.is_empty() || !self.held.is_empty()) {
            self.move_sessions(&old).await;
        }
        let members = self
            .shared
            .node
            .get()
            .map(|n| n.members())
            .unwrap_or_default();
        warn!(
            members = members.len(),
            "this node's presence lapsed (paused or cut off from redis past presence.timeout): registering its sessions again"
        );
        self.shared.metrics.presence_lapses.increment(1);
        let mut ops: Vec<Op> = members
            .into_iter()
            .map(|(topic, member)| Op::Join {
                topic,
                member,
                done: None,
            })
            .collect();
        // Sessions counted per user (limits.max_connections_per_user) are
        // written again under the new incarnation, from this node's truth.
        ops.extend(self.users.keys().map(|sub| Op::Count {
            sub: sub.clone(),
            ended: 0,
        }));
        for chunk in ops.chunks_mut(BATCH) {
            // Joins are counted as queued, like any other, by `apply`.
            let joins = chunk
                .iter()
                .filter(|op| matches!(op, Op::Join { .. }))
                .count();
            self.queued_joins.fetch_add(joins, Ordering::AcqRel);
            self.apply(chunk).await;
        }
    }

    /// Records this node's open sessions and held topics under its new
    /// incarnation (see `lua/webhooks/move.lua` and `hold.lua`), before
    /// any of their joins.
    async fn move_sessions(&mut self, old: &str) {
        let Some(inc) = self.incarnation().await else {
            return;
        };
        let calls: Vec<ScriptCall> = self
            .sessions
            .values()
            .map(|open| self.shared.move_call(old, &inc, open))
            .chain(
                self.held
                    .iter()
                    .map(|t| self.shared.hold_call(&inc, t.as_str())),
            )
            .collect();
        for chunk in calls.chunks(BATCH) {
            let (commands, queue) = (&self.shared.commands, &self.ops);
            let moved = retry(
                "record open sessions again",
                || queue.is_closed(),
                || commands.scripts_in_order(chunk),
            )
            .await;
            for reply in moved.iter().flatten() {
                self.shared.count_dropped(reply);
            }
        }
    }

    /// Queues the webhooks of the presence changes `ops` made (`values`
    /// are the replies of the ops at `called`), and counts what the
    /// session scripts dropped.
    async fn queue_presence_events(&self, ops: &[Op], called: &[usize], values: &[Value]) {
        if !self.shared.webhooks.events.any() {
            return;
        }
        let mut events = Vec::new();
        for (&i, value) in called.iter().zip(values) {
            match (&ops[i], value) {
                (Op::Join { topic, member, .. }, Value::Int(1)) => events.push((
                    Kind::Join,
                    member_data(topic.as_str(), &member.sub, &member.session),
                    member.session.clone(),
                    topic.to_string(),
                )),
                (Op::Leave { topic, .. }, Value::BulkString(json)) => {
                    if let Ok(m) = serde_json::from_slice::<Member>(json) {
                        events.push((
                            Kind::Leave,
                            member_data(topic.as_str(), &m.sub, &m.session),
                            m.session,
                            topic.to_string(),
                        ));
                    }
                }
                (Op::Open(_) | Op::Close { .. } | Op::Hold(_), reply) => {
                    self.shared.count_dropped(reply);
                }
                _ => {}
            }
        }
        self.shared
            .queue_events(&events, || self.ops.is_closed())
            .await;
    }

    /// Forgets the listed topics where this node holds no member any more,
    /// so a sweep of this incarnation stays as small as its membership.
    async fn prune(&mut self) {
        let (Some(inc), Some(node)) = (&self.incarnation, self.shared.node.get()) else {
            return;
        };
        let held: HashSet<Topic> = node.members().into_iter().map(|(t, _)| t).collect();
        let gone: Vec<Topic> = self
            .indexed
            .iter()
            .filter(|t| !held.contains(*t))
            .cloned()
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut srem = redis::cmd("SREM");
        srem.arg(topics_key(inc));
        for t in &gone {
            srem.arg(t.as_str());
        }
        if self.shared.commands.query::<()>(&srem).await.is_ok() {
            for t in &gone {
                self.indexed.remove(t);
            }
        }
    }

    /// When the broker is dropped (every queued change applied): the
    /// incarnation ends, and whatever members it still had leave now rather
    /// than at the timeout.
    async fn retire(&mut self) {
        let Some(inc) = self.incarnation.take() else {
            return;
        };
        // Swept while still alive: should this fail, the incarnation
        // expires and another process sweeps it.
        if self
            .shared
            .sweep(&inc, LeaveCause::Disconnect)
            .await
            .is_ok()
        {
            let _: Result<(), BrokerError> = self
                .shared
                .commands
                .query(redis::cmd("ZREM").arg(ALIVE).arg(&inc))
                .await;
        }
    }
}

impl Shared {
    fn call(&self, op: &Op, inc: &str) -> Option<ScriptCall> {
        let verb = self.commands.publish_verb();
        Some(match op {
            Op::Join { topic, member, .. } => {
                let json = serde_json::to_string(member).unwrap_or_default();
                let ch = channel(topic);
                ScriptCall::new(
                    &self.scripts.join,
                    cluster::slot(&ch),
                    &[&members_key(topic), &users_key(topic)],
                    &[
                        member.session.as_bytes(),
                        inc.as_bytes(),
                        json.as_bytes(),
                        &ch,
                        verb.as_bytes(),
                        member.sub.as_bytes(),
                    ],
                )
            }
            Op::Leave { topic, session } => {
                let ch = channel(topic);
                ScriptCall::new(
                    &self.scripts.leave,
                    cluster::slot(&ch),
                    &[&members_key(topic), &users_key(topic)],
                    &[session.as_bytes(), &ch, verb.as_bytes()],
                )
            }
            Op::Open(open) => self.open_call(inc, open),
            Op::Close { session, data } => self.close_call(inc, session, data.as_deref()),
            Op::Hold(topic) => self.hold_call(inc, topic.as_str()),
            Op::Unhold(topic) => self.unhold_call(inc, topic.as_str()),
            Op::Admit { .. } | Op::Count { .. } => return None,
            Op::Lapsed => return None,
        })
    }

    /// The absolute write of one user's count on this node (see
    /// `lua/presence/users.lua`); `own` is the count before the batch.
    fn users_call(&self, inc: &str, t: &Tally, own: u64) -> ScriptCall {
        let (limit, own, ended, asking) = (
            t.limit.to_string(),
            own.to_string(),
            t.ended.to_string(),
            t.asking.to_string(),
        );
        ScriptCall::new(
            &self.scripts.users,
            cluster::slot(ALIVE.as_bytes()),
            &[&user_key(&t.sub), ALIVE],
            &[
                inc.as_bytes(),
                limit.as_bytes(),
                own.as_bytes(),
                ended.as_bytes(),
                asking.as_bytes(),
            ],
        )
    }

    pub(super) fn heartbeat_call(&self, inc: &str, first: bool) -> ScriptCall {
        let alive = self.timing.alive.as_millis().to_string();
        ScriptCall::new(
            &self.scripts.heartbeat,
            cluster::slot(ALIVE.as_bytes()),
            &[ALIVE],
            &[
                inc.as_bytes(),
                alive.as_bytes(),
                if first { b"1" } else { b"0" },
            ],
        )
    }
}

/// How many of `ops` to apply before the rest: up to the first session or
/// topic op that follows a presence op. A session's (or topic's) events
/// are queued by its script, a presence change's after its script's
/// reply, so a batch that mixed them could queue a session's
/// `disconnected` before its `leave`.
fn in_order(ops: &[Op]) -> usize {
    let mut presence = false;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Join { .. } | Op::Leave { .. } => presence = true,
            Op::Open(_) | Op::Close { .. } | Op::Hold(_) | Op::Unhold(_) if presence => {
                return i;
            }
            _ => {}
        }
    }
    ops.len()
}

/// Retries `attempt` with capped backoff until it succeeds, or gives up
/// (`None`) once `stopped` says the broker is gone.
pub(super) async fn retry<T, F, Fut>(
    what: &str,
    stopped: impl Fn() -> bool,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BrokerError>>,
{
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(v) => {
                if failures > 0 {
                    info!(failures, "{what}: redis took it");
                }
                return Some(v);
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    warn!(error = %e, "{what}: failed; retrying");
                }
                if stopped() {
                    return None;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
