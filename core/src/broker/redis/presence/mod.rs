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
//! dead ones as it goes. A node writes its own count as an absolute value
//! from what it knows (never an increment), so a write retried after a
//! timeout that had in fact run cannot count a session twice and lock its
//! user out. A node coming back writes its counts again.
//!
//! **Order.** Joins and leaves go through one worker task in the order they
//! were asked; a failed batch is retried (every script is idempotent) before
//! anything after it, so a leave never overtakes its join. Joins queued
//! beyond [`MAX_QUEUED_JOINS`] are refused; leaves are always queued (there
//! is at most one per member).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_redis::redis::Value;
use herald_protocol::{Member, Topic};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

mod liveness;
mod webhooks;
mod worker;

use super::cluster;
use super::commands::{Commands, Script, as_text};
use super::scripts::script;
use crate::broker::{BrokerError, MemberPage, NodeControl};
use crate::metrics::Metrics;
use crate::webhooks::{Kind, Queued, SessionOpen, WebhookSettings};
use webhooks::{Dropped, WebhookScripts};
use worker::Worker;

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

/// A topic's sessions per user (sub → count), kept by the same scripts that
/// store its members, so `users` costs one `HLEN`.
pub fn users_key(topic: &Topic) -> String {
    format!("herald:{{{topic}}}:pu")
}

/// The presence (and per-user count) scripts.
struct PresenceScripts {
    join: Script,
    leave: Script,
    sweep: Script,
    heartbeat: Script,
    claim: Script,
    users: Script,
    members: Script,
}

impl PresenceScripts {
    fn new(cluster: bool) -> PresenceScripts {
        let s = |body: &str| script(cluster, body.to_owned());
        PresenceScripts {
            join: s(include_str!("../lua/presence/join.lua")),
            leave: s(include_str!("../lua/presence/leave.lua")),
            sweep: s(include_str!("../lua/presence/sweep.lua")),
            heartbeat: s(include_str!("../lua/presence/heartbeat.lua")),
            claim: s(include_str!("../lua/presence/claim.lua")),
            users: s(include_str!("../lua/presence/users.lua")),
            members: s(include_str!("../lua/presence/members.lua")),
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
    /// `ended` sessions of `sub` on this node ended (0: rewrite its count,
    /// under a new incarnation).
    Count {
        sub: Arc<str>,
        ended: u64,
    },
    /// The incarnation lapsed: take a new one and join every session again.
    Lapsed,
    /// A session opened (webhooks).
    Open(SessionOpen),
    /// A session closed (webhooks): its `session.disconnected` data.
    Close {
        session: String,
        data: Option<String>,
    },
    /// The node's first local subscriber of a topic came (webhooks).
    Hold(Topic),
    /// The node's last local subscriber of a topic left (webhooks).
    Unhold(Topic),
}

/// What the worker, the reporter and the sweeper share.
struct Shared {
    commands: Arc<Commands>,
    scripts: PresenceScripts,
    node: Arc<OnceLock<Arc<dyn NodeControl>>>,
    metrics: Arc<Metrics>,
    timing: Timing,
    webhooks: WebhookSettings,
    wh_scripts: WebhookScripts,
    dropped: Dropped,
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
        webhooks: WebhookSettings,
    ) -> Presence {
        let shared = Arc::new(Shared {
            scripts: PresenceScripts::new(commands.is_cluster()),
            wh_scripts: WebhookScripts::new(commands.is_cluster()),
            commands,
            node,
            metrics,
            timing: Timing::new(timeout),
            webhooks,
            dropped: Dropped::default(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let queued_joins = Arc::new(AtomicUsize::new(0));
        let worker = Worker::new(shared.clone(), rx, tx.downgrade(), queued_joins.clone());
        tokio::spawn(worker.run().instrument(tracing::info_span!("presence")));
        tokio::spawn(
            liveness::sweeper(Arc::downgrade(&shared))
                .instrument(tracing::info_span!("presence_sweep")),
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
            ended: 1,
        });
    }

    /// Records a session that opened (see
    /// [`Broker::session_opened`](crate::Broker::session_opened)).
    pub fn opened(&self, open: SessionOpen) {
        let _ = self.ops.send(Op::Open(open));
    }

    /// Records that this node holds `topic` (it has a local subscriber),
    /// for `topic.occupied` / `topic.vacated`; a no-op unless one of them
    /// is selected.
    pub fn hold(&self, topic: &Topic) {
        if self.shared.webhooks.events.topics() {
            let _ = self.ops.send(Op::Hold(topic.clone()));
        }
    }

    /// Records that this node no longer holds `topic`.
    pub fn unhold(&self, topic: &Topic) {
        if self.shared.webhooks.events.topics() {
            let _ = self.ops.send(Op::Unhold(topic.clone()));
        }
    }

    /// Records a session that closed.
    pub fn closed(&self, session: &str, data: Option<String>) {
        let _ = self.ops.send(Op::Close {
            session: session.to_owned(),
            data,
        });
    }

    /// See [`Broker::webhooks_lease`](crate::Broker::webhooks_lease).
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn webhooks_lease(&self, holder: &str, ttl: Duration) -> Result<bool, BrokerError> {
        self.shared.lease(holder, ttl).await
    }

    /// See [`Broker::webhooks_read`](crate::Broker::webhooks_read).
    ///
    /// # Errors
    /// When Redis cannot be read.
    pub async fn webhooks_read(&self, max: usize) -> Result<(Vec<Queued>, u64), BrokerError> {
        self.shared.read(max).await
    }

    /// See [`Broker::webhooks_done`](crate::Broker::webhooks_done).
    ///
    /// # Errors
    /// When Redis cannot be written.
    pub async fn webhooks_done(&self, ids: &[String]) -> Result<(), BrokerError> {
        self.shared.done(ids).await
    }

    /// See [`Broker::webhooks_dropped`](crate::Broker::webhooks_dropped).
    pub fn webhooks_dropped(&self) -> [u64; Kind::ALL.len()] {
        self.shared.take_dropped()
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

    /// A page of `topic`'s members and its counts (see
    /// [`Broker::members`](crate::Broker::members)); the cursor is
    /// `<HSCAN cursor>:<last session listed>` (see
    /// `lua/presence/members.lua`).
    ///
    /// # Errors
    /// When Redis cannot be read, or `cursor` is not one this gave.
    pub async fn members(
        &self,
        topic: &Topic,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, BrokerError> {
        let (scan, after) = match cursor {
            None => ("0", ""),
            Some(c) => c
                .split_once(':')
                .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| BrokerError::Invalid("not a presence cursor".to_owned()))?,
        };
        let limit_arg = limit.to_string();
        let ch = super::scripts::channel(topic);
        let call = super::commands::ScriptCall::new(
            &self.shared.scripts.members,
            cluster::slot(&ch),
            &[&members_key(topic), &users_key(topic)],
            &[scan.as_bytes(), after.as_bytes(), limit_arg.as_bytes()],
        );
        let value = self
            .shared
            .commands
            .scripts(std::slice::from_ref(&call), None)
            .await?
            .into_iter()
            .next()
            .unwrap_or(Value::Nil);
        read_members(value)
    }
}

/// The members script's reply as a page.
fn read_members(value: Value) -> Result<MemberPage, BrokerError> {
    let bad = || BrokerError::Internal("unexpected reply from the members script".to_owned());
    let Value::Array(parts) = value else {
        return Err(bad());
    };
    let [count, users, members, next, last] = <[Value; 5]>::try_from(parts).map_err(|_| bad())?;
    let number = |v: &Value| match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| bad()),
        _ => Err(bad()),
    };
    let Value::Array(members) = members else {
        return Err(bad());
    };
    let members: Vec<Member> = members
        .iter()
        .filter_map(|v| serde_json::from_str(&as_text(v)?).ok())
        .collect();
    let next = as_text(&next).unwrap_or_default();
    Ok(MemberPage {
        count: number(&count)?,
        users: number(&users)?,
        members,
        next_cursor: (!next.is_empty())
            .then(|| format!("{next}:{}", as_text(&last).unwrap_or_default())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_reply_reads_as_a_page() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let page = read_members(Value::Array(vec![
            Value::Int(3),
            Value::Int(2),
            Value::Array(vec![
                bulk("{\"sub\":\"a\",\"session\":\"s1\",\"node\":\"n\",\"since\":5}"),
                bulk("not json"),
            ]),
            bulk("17"),
            bulk("s1"),
        ]))
        .unwrap();
        assert_eq!((page.count, page.users), (3, 2));
        assert_eq!(page.members.len(), 1, "an unreadable entry is skipped");
        assert_eq!(page.members[0].session, "s1");
        assert_eq!(page.next_cursor.as_deref(), Some("17:s1"));
        let done = read_members(Value::Array(vec![
            Value::Int(0),
            Value::Int(0),
            Value::Array(vec![]),
            bulk(""),
            bulk(""),
        ]))
        .unwrap();
        assert!(done.next_cursor.is_none());
        assert!(read_members(Value::Nil).is_err());
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
