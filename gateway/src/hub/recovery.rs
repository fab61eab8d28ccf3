//! Recovery: replaying history to a session that subscribes with `since`,
//! merged with the live events held back meanwhile, and the history reads
//! behind it and behind gap catch-ups, shared by every session or topic that
//! asks for the same page at about the same time.
//!
//! **Bounds** (contract §10.8). A node runs at most [`HISTORY_READS`]
//! history reads at once; more wait their turn (a pub/sub reconnect asks
//! for a catch-up of every topic at once) rather than failing on an
//! exhausted connection pool. A read that fails is retried with backoff
//! until its deadline; only then does a catch-up give up and close the
//! topic's sessions with 1012. A replay reads at most what fits in half of
//! the session's free queue room, so a session never holds more replayed
//! events than `limits.client_queue`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::metrics::DropReason;
use herald_core::{Broker, BrokerError, Event, HistoryPage, Metrics, Position};
use herald_protocol::Topic;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tracing::debug;

use super::registry::{CatchUp, Feed, Registry};
use super::{CATCH_UP_PATIENCE, COALESCE_WINDOW, HISTORY_TIMEOUT, Hub, Recovered, lock};
use crate::outbox::{Outbox, Pushed};

/// Renders a subscribe reply from the recovery's outcome and the events it
/// carries (see [`Hub::recover_in_reply`]).
pub type InReply<'a> = &'a (dyn Fn(&Recovered, &[&Event]) -> bytes::Bytes + Sync);

pub(super) type SharedRead = watch::Receiver<Option<Result<HistoryPage, BrokerError>>>;

impl<B: Broker> Hub<B> {
    /// Stops holding the session's live events of `topic`, delivering what
    /// was held (a [`Hub::hold`] undone).
    pub fn release(&self, outbox: &Arc<Outbox>, topic: &Topic) {
        self.merge(
            outbox,
            topic,
            "",
            Err(BrokerError::Unavailable(String::new())),
            0,
            None,
        );
    }

    /// Replays `page` (if it holds at most `allowed` events) to the
    /// session, then its held live events past the replay, then lets live
    /// events through; all under the topic's lock. With `in_reply`, the
    /// replayed and held events are not pushed one by one but handed to
    /// it, and the one reply frame it renders from them is queued instead
    /// (a protocol whose subscribe reply carries them, contract §10.7):
    /// still under the lock, so every live event comes after it.
    pub(super) fn merge(
        &self,
        outbox: &Arc<Outbox>,
        topic: &Topic,
        since: &str,
        page: Result<HistoryPage, BrokerError>,
        allowed: usize,
        in_reply: Option<InReply<'_>>,
    ) -> Recovered {
        // The session is no longer on the topic (its topic was dropped
        // meanwhile): nothing to replay, but a reply is still owed.
        let nothing = |position| {
            let none = Recovered {
                recovered: false,
                position,
                replayed: 0,
            };
            if let Some(render) = in_reply {
                let _ = outbox.push_reply(render(&none, &[]));
            }
            none
        };
        let mut shard = lock(self.registry.shard(topic));
        let Some(entry) = shard.get_mut(topic) else {
            return nothing(Position { epoch: 0, seq: 0 });
        };
        let head = entry.last;
        let Some(sub) = entry.subscribers.get_mut(outbox.id) else {
            return nothing(head.unwrap_or(Position { epoch: 0, seq: 0 }));
        };
        let held = match std::mem::replace(&mut sub.feed, Feed::Live) {
            Feed::Holding(held) => held,
            _ => Vec::new(),
        };
        let (recovered, replay) = match page {
            // A replay larger than the client can be sent at once is refused
            // rather than queued without bound: the client reloads instead.
            Ok(page) if page.recovered && page.events.len() > allowed => {
                debug!(topic = %topic, events = page.events.len(), "replay too large to queue: not recovered");
                (false, Vec::new())
            }
            Ok(page) if page.recovered => (true, page.events),
            Ok(_) => (false, Vec::new()),
            Err(e) => {
                if !since.is_empty() {
                    debug!(topic = %topic, error = %e, "history unavailable: not recovered");
                }
                (false, Vec::new())
            }
        };
        let mut last = if recovered {
            Position::parse(since)
        } else {
            None
        };
        let now = std::time::Instant::now();
        let mut given: Vec<&Event> = Vec::new();
        for event in &replay {
            if in_reply.is_some() {
                given.push(event);
            } else {
                let _ = outbox.push_replay(outbox.event_frame(&event.record), now);
            }
            last = Some(event.position);
        }
        for event in &held {
            let seen = last
                .is_some_and(|l| l.epoch == event.position.epoch && event.position.seq <= l.seq);
            if !seen {
                if in_reply.is_some() {
                    given.push(event);
                } else if let Pushed::Overflow(n) = outbox.push_event(
                    &outbox.event_frame(&event.record),
                    now,
                    &self.metrics,
                    false,
                ) {
                    self.metrics.dropped(DropReason::SlowConsumer, n as u64);
                }
                last = Some(event.position);
            }
        }
        // What the session got may be ahead of what this node has seen live.
        if let Some(last) = last {
            sub.feed = Feed::Ahead(last);
        }
        // Where it stands: past what it was given, and never behind what
        // the topic delivered (it gets every live event after that).
        let at = match (last, head) {
            (Some(l), Some(h)) if l.epoch == h.epoch => l.max(h),
            (Some(l), None) => l,
            (_, Some(h)) => h,
            (None, None) => Position { epoch: 0, seq: 0 },
        };
        let done = Recovered {
            recovered,
            position: at,
            replayed: replay.len(),
        };
        if let Some(render) = in_reply {
            if let Pushed::Overflow(n) = outbox.push_replay(render(&done, &given), now) {
                self.metrics.dropped(DropReason::SlowConsumer, n as u64);
            }
        }
        done
    }

    /// [`Hub::recover`] for a protocol whose subscribe reply carries the
    /// replayed events (Centrifugo's, contract §10.7): `render` makes the
    /// reply from the outcome and every event the session is given before
    /// its live ones, and the reply is queued in their place. An empty
    /// `since` reads nothing (a plain subscribe whose reply carries only
    /// the live events held meanwhile).
    pub async fn recover_in_reply(
        &self,
        outbox: &Arc<Outbox>,
        topic: &Topic,
        since: &str,
        allowed: usize,
        render: InReply<'_>,
    ) -> Recovered {
        let allowed = allowed.min(outbox.room() / 2);
        let page = if since.is_empty() {
            Err(BrokerError::Unavailable(String::new()))
        } else {
            self.history(topic, since, allowed + 1).await
        };
        self.merge(outbox, topic, since, page, allowed, Some(render))
    }

    /// A page of `topic`'s history for a client's own history request:
    /// the same bounded, shared reads as recoveries; at most
    /// `history.size` events.
    ///
    /// # Errors
    /// The broker's, once its retries ran out.
    pub async fn history_page(
        &self,
        topic: &Topic,
        since: Option<&str>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let reads = Reads {
            open: &self.reads,
            turns: &self.turns,
            metrics: &self.metrics,
        };
        let deadline = tokio::time::Instant::now() + HISTORY_TIMEOUT;
        reads
            .shared(
                &*self.broker,
                topic,
                since,
                limit.min(self.history_limit),
                deadline,
            )
            .await
    }

    /// Reads up to `limit` events after `since` (at most `history.size`),
    /// sharing the read with every session that asks for the same page
    /// within a few milliseconds. A session only joins a read that has not
    /// started, so the page always covers what happened before the
    /// session's subscription went live.
    pub(super) async fn history(
        &self,
        topic: &Topic,
        since: &str,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        self.history_page(topic, Some(since), limit).await
    }
}

/// Retries `read` with backoff until it succeeds or `deadline` passes
/// (then its last error).
pub(super) async fn retried<T, F, Fut>(deadline: Instant, mut read: F) -> Result<T, BrokerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BrokerError>>,
{
    let mut delay = Duration::from_millis(50);
    loop {
        let attempt = match tokio::time::timeout_at(deadline, read()).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable(
                "redis did not answer in time".to_owned(),
            )),
        };
        match attempt {
            Ok(v) => return Ok(v),
            Err(e @ BrokerError::Invalid(_)) => return Err(e),
            Err(e) => {
                if Instant::now() + delay >= deadline {
                    return Err(e);
                }
                debug!(error = %e, "history read failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The node's history reads: those still open for others to join, the
/// turns that bound how many run at once, and their count.
struct Reads<'a> {
    open: &'a Mutex<HashMap<ReadKey, SharedRead>>,
    turns: &'a Semaphore,
    metrics: &'a Metrics,
}

/// A read is shared by those asking for the same topic, since and limit.
pub(super) type ReadKey = (Topic, String, usize);

impl Reads<'_> {
    /// Reads (or joins the read of) up to `limit` events of `topic` after
    /// `since`, waiting for a turn and retrying failures until `deadline`.
    async fn shared<B: Broker>(
        &self,
        broker: &B,
        topic: &Topic,
        since: Option<&str>,
        limit: usize,
        deadline: Instant,
    ) -> Result<HistoryPage, BrokerError> {
        let key = (topic.clone(), since.unwrap_or("").to_owned(), limit);
        let joined = lock(self.open).get(&key).cloned();
        if let Some(mut rx) = joined {
            if let Ok(result) = rx.wait_for(Option::is_some).await {
                if let Some(result) = result.clone() {
                    return result;
                }
            }
            // The reader went away: read alone.
        }
        let (tx, rx) = watch::channel(None);
        lock(self.open).insert(key.clone(), rx);
        tokio::time::sleep(COALESCE_WINDOW).await;
        // Closed to newcomers from here on: the read starts now.
        lock(self.open).remove(&key);
        let result = retried(deadline, || async {
            let _turn = self
                .turns
                .acquire()
                .await
                .map_err(|_| BrokerError::Unavailable("the node is stopping".to_owned()))?;
            self.metrics.history_reads.increment(1);
            broker.history(topic, since, limit).await
        })
        .await;
        let _ = tx.send(Some(result.clone()));
        result
    }
}

/// Runs the registry's catch-ups, each in a task of its own (their reads
/// share the node's turns; see the module documentation).
pub(super) async fn catch_up_worker<B: Broker>(
    mut rx: mpsc::UnboundedReceiver<CatchUp>,
    registry: std::sync::Weak<Registry>,
    broker: Arc<B>,
    hub_reads: (Arc<Mutex<HashMap<ReadKey, SharedRead>>>, Arc<Semaphore>),
    metrics: Arc<Metrics>,
    limit: usize,
) {
    while let Some(request) = rx.recv().await {
        let registry = registry.clone();
        let broker = broker.clone();
        let (open, turns) = hub_reads.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let since = request.since.map(|p| p.to_string());
            let reads = Reads {
                open: &open,
                turns: &turns,
                metrics: &metrics,
            };
            let deadline = Instant::now() + CATCH_UP_PATIENCE;
            let result = reads
                .shared(
                    &*broker,
                    &request.topic,
                    since.as_deref(),
                    limit.max(1),
                    deadline,
                )
                .await;
            if let Some(registry) = registry.upgrade() {
                registry.finish_catch_up(&request, result);
            }
        });
    }
}
