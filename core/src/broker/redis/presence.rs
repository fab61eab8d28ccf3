//! Presence on Redis: members stored per topic, announced on the topic's
//! channel, and removed within `presence.timeout` when their node stops
//! reporting, without that node's help.
//!
//! **Layout.** A topic's members are one hash, `herald:{<topic>}:p`:
//! session → `<incarnation>\n<member JSON>`, in the topic's slot. A join or
//! a leave is one script on that hash (O(1)), which also publishes
//! `+<member JSON>` or `-<member JSON>` on the topic's channel, so every node
//! holding the topic hears it in order with its events. Reading a topic's
//! members is one `HVALS`.
//!
//! **Incarnations.** A node does not renew its members one by one: it
//! renews one *incarnation* (a random id) in the sorted set
//! `herald:{herald-nodes}:presence:alive`, scored by its expiry on the Redis
//! clock, every fifth of the timeout, for half of it. Each member carries
//! the incarnation that stored it, and the node lists the topics it stored
//! members in under `…:presence:topics:<incarnation>`. Any node (and
//! `herald-admin`) claims expired incarnations (moved atomically to
//! `…:presence:claimed`, so one sweeper works on each) and sweeps them:
//! every listed topic loses the members of that incarnation, each with one
//! `leave`. A member thus leaves at most ~0.7 × timeout after its node's
//! last report; a report costs O(1) whatever the number of members.
//!
//! **Coming back.** An expired incarnation is never renewed. A node that
//! was paused or cut off and comes back learns that its incarnation lapsed,
//! takes a new one, and joins its still-open sessions again: members that
//! were swept get a new `join`, members not yet swept are moved to the new
//! incarnation silently (so the sweep leaves them alone). A leave removes a
//! session whatever incarnation stored it, and announces only what it
//! removed: no member is resurrected, none leaves twice.
//!
//! **Sessions per user.** With `limits.max_connections_per_user`, the same
//! incarnations count each user's sessions: a hash per user (incarnation →
//! sessions) beside the live set, so one script admits a session only if
//! the live incarnations hold fewer than the limit, and drops the counts of
//! dead ones as it goes. A node coming back counts its sessions again.
//!
//! **Order.** Joins and leaves go through one worker task in the order they
//! were asked; a failed batch is retried (every script is idempotent) before
//! anything after it, so a leave never overtakes its join. Joins queued
//! beyond [`MAX_QUEUED_JOINS`] are refused; leaves are always queued (there
//! is at most one per member).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use herald_protocol::{Member, Topic};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, info, warn};

use super::cluster;
use super::commands::{Commands, Script, ScriptCall, as_text};
use super::scripts::{channel, script};
use crate::broker::{BrokerError, LeaveCause, NodeControl};
use crate::metrics::Metrics;

/// Joins waiting in the worker's queue beyond which new ones are refused.
pub const MAX_QUEUED_JOINS: usize = 100_000;
/// Joins and leaves sent to Redis in one batch.
const BATCH: usize = 512;
/// Incarnations one sweeper claims at a time.
const CLAIM_AT_ONCE: usize = 16;
/// How often the worker forgets topics where it holds no member any more.
const PRUNE_PERIOD: Duration = Duration::from_secs(30);

const ALIVE: &str = "herald:{herald-nodes}:presence:alive";
const CLAIMED: &str = "herald:{herald-nodes}:presence:claimed";

/// A user's session counts, by node incarnation (in the cluster-view slot,
/// beside the live incarnations the admission reads).
fn user_key(sub: &str) -> String {
    format!("herald:{{herald-nodes}}:user:{sub}")
}

fn topics_key(incarnation: &str) -> String {
    format!("herald:{{herald-nodes}}:presence:topics:{incarnation}")
}

/// A topic's member hash.
pub fn members_key(topic: &Topic) -> String {
    format!("herald:{{{topic}}}:p")
}

/// The presence (and per-user count) scripts.
struct PresenceScripts {
    join: Script,
    leave: Script,
    sweep: Script,
    heartbeat: Script,
    claim: Script,
    admit: Script,
    count: Script,
}

impl PresenceScripts {
    fn new(cluster: bool) -> PresenceScripts {
        let s = |body: &str| script(cluster, body.to_owned());
        PresenceScripts {
            join: s(include_str!("lua/presence/join.lua")),
            leave: s(include_str!("lua/presence/leave.lua")),
            sweep: s(include_str!("lua/presence/sweep.lua")),
            heartbeat: s(include_str!("lua/presence/heartbeat.lua")),
            claim: s(include_str!("lua/presence/claim.lua")),
            admit: s(include_str!("lua/presence/admit.lua")),
            count: s(include_str!("lua/presence/count.lua")),
        }
    }
}

/// How often reports and sweeps run, and how long a report keeps an
/// incarnation alive, for a given `presence.timeout`.
#[derive(Debug, Clone, Copy)]
struct Timing {
    period: Duration,
    alive: Duration,
    claim: Duration,
}

impl Timing {
    fn new(timeout: Duration) -> Timing {
        Timing {
            period: timeout / 5,
            alive: timeout / 2,
            claim: timeout,
        }
    }
}

enum Op {
    Join {
        topic: Topic,
        member: Member,
        done: Option<oneshot::Sender<Result<(), BrokerError>>>,
    },
    Leave {
        topic: Topic,
        session: String,
    },
    /// One more session of `sub`, if the cluster holds fewer than `limit`.
    Admit {
        sub: Arc<str>,
        limit: u32,
        done: Option<oneshot::Sender<Result<bool, BrokerError>>>,
    },
    /// `delta` sessions of `sub` on this node (−1 when one ends).
    Count {
        sub: Arc<str>,
        delta: i64,
    },
    /// The incarnation lapsed: take a new one and join every session again.
    Lapsed,
}

/// What the worker, the reporter and the sweeper share.
struct Shared {
    commands: Arc<Commands>,
    scripts: PresenceScripts,
    node: Arc<OnceLock<Arc<dyn NodeControl>>>,
    metrics: Arc<Metrics>,
    timing: Timing,
}

/// The presence side of a Redis broker.
pub struct Presence {
    ops: mpsc::UnboundedSender<Op>,
    queued_joins: Arc<AtomicUsize>,
    shared: Arc<Shared>,
}

impl Presence {
    /// Starts the worker and the sweeper. Must be called inside a Tokio
    /// runtime; both stop when the `Presence` is dropped.
    pub fn start(
        commands: Arc<Commands>,
        node: Arc<OnceLock<Arc<dyn NodeControl>>>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Presence {
        let shared = Arc::new(Shared {
            scripts: PresenceScripts::new(commands.is_cluster()),
            commands,
            node,
            metrics,
            timing: Timing::new(timeout),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let queued_joins = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            shared: shared.clone(),
            ops: rx,
            lapsed: tx.downgrade(),
            queued_joins: queued_joins.clone(),
            incarnation: None,
            indexed: HashSet::new(),
        };
        tokio::spawn(worker.run().instrument(tracing::info_span!("presence")));
        tokio::spawn(
            sweeper(Arc::downgrade(&shared)).instrument(tracing::info_span!("presence_sweep")),
        );
        Presence {
            ops: tx,
            queued_joins,
            shared,
        }
    }

    /// Queues a join; the returned future resolves once it is stored.
    pub fn join(
        &self,
        topic: &Topic,
        member: Member,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        let (done, answer) = oneshot::channel();
        let queued = self.queued_joins.fetch_add(1, Ordering::AcqRel);
        let refused = if queued >= MAX_QUEUED_JOINS {
            Some("too many presence joins waiting for redis")
        } else {
            let op = Op::Join {
                topic: topic.clone(),
                member,
                done: Some(done),
            };
            self.ops.send(op).err().map(|_| "presence worker stopped")
        };
        if refused.is_some() {
            self.queued_joins.fetch_sub(1, Ordering::AcqRel);
        }
        async move {
            if let Some(why) = refused {
                return Err(BrokerError::Unavailable(why.to_owned()));
            }
            answer.await.unwrap_or_else(|_| {
                Err(BrokerError::Unavailable(
                    "presence worker stopped".to_owned(),
                ))
            })
        }
    }

    /// Counts one more session of `sub` if the cluster holds fewer than
    /// `limit`; the future says whether it was admitted.
    pub fn admit(
        &self,
        sub: &str,
        limit: u32,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send + 'static {
        let (done, answer) = oneshot::channel();
        let op = Op::Admit {
            sub: Arc::from(sub),
            limit,
            done: Some(done),
        };
        let sent = self.ops.send(op).is_ok();
        async move {
            if !sent {
                return Err(BrokerError::Unavailable(
                    "presence worker stopped".to_owned(),
                ));
            }
            answer.await.unwrap_or_else(|_| {
                Err(BrokerError::Unavailable(
                    "presence worker stopped".to_owned(),
                ))
            })
        }
    }

    /// Counts one session of `sub` fewer.
    pub fn release(&self, sub: &str) {
        let _ = self.ops.send(Op::Count {
            sub: Arc::from(sub),
            delta: -1,
        });
    }

    /// Queues a leave.
    pub fn leave(&self, topic: &Topic, session: &str) {
        let op = Op::Leave {
            topic: topic.clone(),
            session: session.to_owned(),
        };
        // Only fails once the broker is gone, and then nobody is left to tell.
        let _ = self.ops.send(op);
    }

    /// The members of `topic`, in one read.
    ///
    /// # Errors
    /// When Redis cannot be read.
    pub async fn members(&self, topic: &Topic) -> Result<Vec<Member>, BrokerError> {
        let values: Vec<Value> = self
            .shared
            .commands
            .query(redis::cmd("HVALS").arg(members_key(topic)))
            .await?;
        let mut members: Vec<Member> = values
            .iter()
            .filter_map(|v| parse_entry(&as_text(v)?))
            .collect();
        crate::broker::presence::sort(&mut members);
        Ok(members)
    }
}

/// A stored entry `<incarnation>\n<member JSON>` as its member.
fn parse_entry(entry: &str) -> Option<Member> {
    let (_, json) = entry.split_once('\n')?;
    serde_json::from_str(json).ok()
}

struct Worker {
    shared: Arc<Shared>,
    ops: mpsc::UnboundedReceiver<Op>,
    /// For the reporter to say the incarnation lapsed, in line with the ops.
    lapsed: mpsc::WeakUnboundedSender<Op>,
    queued_joins: Arc<AtomicUsize>,
    incarnation: Option<String>,
    /// Topics listed under the current incarnation.
    indexed: HashSet<Topic>,
}

impl Worker {
    async fn run(mut self) {
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
            self.apply(&mut batch).await;
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
        let calls: Vec<ScriptCall> = ops
            .iter()
            .filter_map(|op| self.shared.call(op, &inc))
            .collect();
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
        // `Lapsed` makes no call; every other op made one, in order.
        let mut values = values.into_iter();
        for op in ops.iter_mut() {
            match op {
                Op::Join { done, .. } => {
                    values.next();
                    self.queued_joins.fetch_sub(1, Ordering::AcqRel);
                    if let Some(done) = done.take() {
                        let _ = done.send(Ok(()));
                    }
                }
                Op::Admit { done, .. } => {
                    let admitted = matches!(values.next(), Some(Value::Int(1)));
                    if let Some(done) = done.take() {
                        let _ = done.send(Ok(admitted));
                    }
                }
                Op::Leave { .. } | Op::Count { .. } => {
                    values.next();
                }
                Op::Lapsed => {}
            }
        }
    }

    /// A new incarnation, and every open session's membership stored under
    /// it.
    async fn reincarnate(&mut self) {
        self.incarnation = None;
        self.indexed.clear();
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
        // counted again under the new incarnation.
        let users = self
            .shared
            .node
            .get()
            .map(|n| n.users())
            .unwrap_or_default();
        ops.extend(users.into_iter().map(|(sub, n)| Op::Count {
            sub,
            delta: i64::try_from(n).unwrap_or(i64::MAX),
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
                    &[&members_key(topic)],
                    &[
                        member.session.as_bytes(),
                        inc.as_bytes(),
                        json.as_bytes(),
                        &ch,
                        verb.as_bytes(),
                    ],
                )
            }
            Op::Leave { topic, session } => {
                let ch = channel(topic);
                ScriptCall::new(
                    &self.scripts.leave,
                    cluster::slot(&ch),
                    &[&members_key(topic)],
                    &[session.as_bytes(), &ch, verb.as_bytes()],
                )
            }
            Op::Admit { sub, limit, .. } => {
                let limit = limit.to_string();
                ScriptCall::new(
                    &self.scripts.admit,
                    cluster::slot(ALIVE.as_bytes()),
                    &[&user_key(sub), ALIVE],
                    &[inc.as_bytes(), limit.as_bytes()],
                )
            }
            Op::Count { sub, delta } => {
                let delta = delta.to_string();
                ScriptCall::new(
                    &self.scripts.count,
                    cluster::slot(ALIVE.as_bytes()),
                    &[&user_key(sub)],
                    &[inc.as_bytes(), delta.as_bytes()],
                )
            }
            Op::Lapsed => return None,
        })
    }

    fn heartbeat_call(&self, inc: &str, first: bool) -> ScriptCall {
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

/// Retries `attempt` with capped backoff until it succeeds, or gives up
/// (`None`) once `stopped` says the broker is gone.
async fn retry<T, F, Fut>(what: &str, stopped: impl Fn() -> bool, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BrokerError>>,
{
    let mut backoff = cluster::Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
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

/// Renews incarnation `inc` until it lapses, then tells the worker.
async fn reporter(shared: Weak<Shared>, inc: String, worker: mpsc::WeakUnboundedSender<Op>) {
    let period = match shared.upgrade() {
        Some(s) => s.timing.period,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
async fn sweeper(shared: Weak<Shared>) {
    let period = match shared.upgrade() {
        Some(s) => s.timing.period,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
    async fn sweep_once(&self) -> Result<u64, BrokerError> {
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
    async fn sweep(&self, inc: &str, cause: LeaveCause) -> Result<u64, BrokerError> {
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
                    &[&members_key(&topic)],
                    &[inc.as_bytes(), &ch, verb.as_bytes()],
                )
            })
            .collect();
        let mut left = 0;
        for chunk in calls.chunks(BATCH) {
            for v in self.commands.scripts(chunk, None).await? {
                if let Value::Int(n) = v {
                    left += u64::try_from(n).unwrap_or(0);
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_past_their_incarnation() {
        let m = parse_entry("0a1b\n{\"sub\":\"a\",\"session\":\"s\",\"node\":\"n\",\"since\":5}")
            .unwrap();
        assert_eq!(
            (m.sub.as_str(), m.session.as_str(), m.node.as_str(), m.since),
            ("a", "s", "n", 5)
        );
        assert!(parse_entry("no newline").is_none());
        assert!(parse_entry("x\nnot json").is_none());
    }

    #[test]
    fn a_member_leaves_well_within_the_timeout() {
        let t = Timing::new(Duration::from_secs(30));
        // Dead right after a report: expires `alive` later, claimed within
        // one more period.
        assert!(t.alive + t.period < Duration::from_secs(30));
        // A report may be late by more than a period without lapsing.
        assert!(t.alive > t.period * 2);
    }
}
