//! Recovery: replaying history to a session that subscribes with `since`,
//! merged with the live events held back meanwhile, and the history reads
//! behind it and behind gap catch-ups, shared by every session or topic that
//! asks for the same page at about the same time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use herald_core::metrics::DropReason;
use herald_core::{Broker, BrokerError, HistoryPage, Metrics, Position};
use herald_protocol::Topic;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::registry::{CatchUp, Feed, Registry};
use super::{COALESCE_WINDOW, HISTORY_TIMEOUT, Hub, lock};
use crate::outbox::{Outbox, Pushed};

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
        );
    }

    /// Replays `page` to the session, then its held live events past the
    /// replay, then lets live events through; all under the topic's lock.
    pub(super) fn merge(
        &self,
        outbox: &Arc<Outbox>,
        topic: &Topic,
        since: &str,
        page: Result<HistoryPage, BrokerError>,
    ) -> bool {
        let mut shard = lock(self.registry.shard(topic));
        let Some(sub) = shard
            .get_mut(topic)
            .and_then(|e| e.subscribers.get_mut(&outbox.id))
        else {
            return false;
        };
        let held = match std::mem::replace(&mut sub.feed, Feed::Live) {
            Feed::Holding(held) => held,
            _ => Vec::new(),
        };
        let room = outbox.room();
        let (recovered, replay) = match page {
            // A replay larger than the client can be sent at once is refused
            // rather than queued without bound: the client reloads instead.
            Ok(page) if page.recovered && page.events.len() > room / 2 => {
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
        let now = Instant::now();
        for event in &replay {
            let _ = outbox.push_replay(outbox.text_frame(&event.json), now);
            last = Some(event.position);
        }
        for event in &held {
            let seen = last
                .is_some_and(|l| l.epoch == event.position.epoch && event.position.seq <= l.seq);
            if !seen {
                if let Pushed::Overflow(n) =
                    outbox.push_event(&outbox.text_frame(&event.json), now, &self.metrics, false)
                {
                    self.metrics.dropped(DropReason::SlowConsumer, n as u64);
                }
                last = Some(event.position);
            }
        }
        // What the session got may be ahead of what this node has seen live.
        if let Some(last) = last {
            sub.feed = Feed::Ahead(last);
        }
        recovered
    }

    /// Reads history after `since`, sharing the read with every session
    /// that asks for the same page within a few milliseconds. A session only
    /// joins a read that has not started, so the page always covers what
    /// happened before the session's subscription went live.
    pub(super) async fn history(
        &self,
        topic: &Topic,
        since: &str,
    ) -> Result<HistoryPage, BrokerError> {
        shared_history(
            &self.reads,
            &*self.broker,
            &self.metrics,
            topic,
            Some(since),
            self.history_limit,
        )
        .await
    }
}

async fn shared_history<B: Broker>(
    reads: &Mutex<HashMap<(Topic, String), SharedRead>>,
    broker: &B,
    metrics: &Metrics,
    topic: &Topic,
    since: Option<&str>,
    limit: usize,
) -> Result<HistoryPage, BrokerError> {
    let key = (topic.clone(), since.unwrap_or("").to_owned());
    let joined = lock(reads).get(&key).cloned();
    if let Some(mut rx) = joined {
        if let Ok(result) = rx.wait_for(Option::is_some).await {
            if let Some(result) = result.clone() {
                return result;
            }
        }
        // The reader went away: read alone.
    }
    let (tx, rx) = watch::channel(None);
    lock(reads).insert(key.clone(), rx);
    tokio::time::sleep(COALESCE_WINDOW).await;
    // Closed to newcomers from here on: the read starts now.
    lock(reads).remove(&key);
    metrics.history_reads.increment(1);
    let result =
        match tokio::time::timeout(HISTORY_TIMEOUT, broker.history(topic, since, limit)).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable(
                "history read timed out".to_owned(),
            )),
        };
    let _ = tx.send(Some(result.clone()));
    result
}

pub(super) async fn catch_up_worker<B: Broker>(
    mut rx: mpsc::UnboundedReceiver<CatchUp>,
    registry: std::sync::Weak<Registry>,
    broker: Arc<B>,
    reads: Arc<Mutex<HashMap<(Topic, String), SharedRead>>>,
    metrics: Arc<Metrics>,
    limit: usize,
) {
    while let Some(request) = rx.recv().await {
        let registry = registry.clone();
        let broker = broker.clone();
        let reads = reads.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let since = request.since.map(|p| p.to_string());
            let result = shared_history(
                &reads,
                &*broker,
                &metrics,
                &request.topic,
                since.as_deref(),
                limit.max(1),
            )
            .await;
            if let Some(registry) = registry.upgrade() {
                registry.finish_catch_up(&request, result);
            }
        });
    }
}
