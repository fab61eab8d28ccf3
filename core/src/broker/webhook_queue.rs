//! The memory broker's webhook queue (contract §10.6, single node): the
//! same entries, order and bounds as the Redis stream, kept in the process
//! (lost if it dies, as the contract says).
//!
//! Invariants: entries leave only through [`WebhookQueue::done`] or by
//! the `max_queue` cap (oldest first, counted in `dropped`); a session's
//! `session.disconnected` is queued only if its `session.connected` record
//! is still open, so each opened session closes exactly once. One lock,
//! never held across an await, and taken inside the memory broker's shard
//! locks only (it takes none itself).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::webhooks::{Kind, Queued, SessionOpen, WebhookSettings, topic_data};

/// The queue and the open sessions it knows.
pub struct WebhookQueue {
    settings: WebhookSettings,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    entries: VecDeque<Queued>,
    open: HashSet<String>,
    /// Topics left empty, and when their `topic.vacated` is due.
    vacating: HashMap<String, Instant>,
    lease: Option<(String, Instant)>,
    dropped: [u64; Kind::ALL.len()],
}

impl WebhookQueue {
    /// An empty queue recording what `settings` selects.
    pub fn new(settings: WebhookSettings) -> WebhookQueue {
        WebhookQueue {
            settings,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event of `kind` (if selected).
    pub fn push(&self, kind: Kind, data: String, session: Option<&str>, topic: Option<&str>) {
        if self.settings.events.has(kind) {
            Self::push_locked(
                &mut self.lock(),
                self.settings.max_queue,
                kind,
                data,
                session,
                topic,
            );
        }
    }

    fn push_locked(
        inner: &mut Inner,
        max: usize,
        kind: Kind,
        data: String,
        session: Option<&str>,
        topic: Option<&str>,
    ) {
        inner.next += 1;
        let id = format!("{}-{}", crate::now_ms(), inner.next);
        inner.entries.push_back(Queued {
            id,
            kind,
            ts: crate::now_ms(),
            data,
            session: session.map(str::to_owned),
            topic: topic.map(str::to_owned),
        });
        while inner.entries.len() > max {
            if let Some(old) = inner.entries.pop_front() {
                inner.dropped[old.kind.index()] += 1;
            }
        }
    }

    /// See [`crate::Broker::session_opened`].
    pub fn opened(&self, open: SessionOpen) {
        if !self.settings.events.sessions() {
            return;
        }
        let mut inner = self.lock();
        if !inner.open.insert(open.session.clone()) {
            return;
        }
        if let Some(data) = open.connected {
            let max = self.settings.max_queue;
            Self::push_locked(
                &mut inner,
                max,
                Kind::Connected,
                data,
                Some(&open.session),
                None,
            );
        }
    }

    /// See [`crate::Broker::session_closed`].
    pub fn closed(&self, session: &str, data: Option<String>) {
        let mut inner = self.lock();
        if !inner.open.remove(session) {
            return;
        }
        if let Some(data) = data.filter(|_| self.settings.events.has(Kind::Disconnected)) {
            let max = self.settings.max_queue;
            Self::push_locked(
                &mut inner,
                max,
                Kind::Disconnected,
                data,
                Some(session),
                None,
            );
        }
    }

    /// The first local subscriber of `topic` came: `topic.occupied`,
    /// unless its `topic.vacated` was still pending (then neither).
    pub fn occupied(&self, topic: &str) {
        if !self.settings.events.topics() {
            return;
        }
        let mut inner = self.lock();
        if inner.vacating.remove(topic).is_none() && self.settings.events.has(Kind::Occupied) {
            let max = self.settings.max_queue;
            Self::push_locked(
                &mut inner,
                max,
                Kind::Occupied,
                topic_data(topic),
                None,
                Some(topic),
            );
        }
    }

    /// The last subscriber of `topic` left: its `topic.vacated` is due
    /// after `webhooks.vacated_delay`.
    pub fn vacating(&self, topic: &str) {
        if !self.settings.events.topics() {
            return;
        }
        let due = Instant::now() + self.settings.vacated_delay;
        self.lock().vacating.insert(topic.to_owned(), due);
    }

    /// Queues the `topic.vacated` events that are due.
    fn vacate_due(&self, inner: &mut Inner) {
        let now = Instant::now();
        let due: Vec<String> = inner
            .vacating
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in due {
            inner.vacating.remove(&topic);
            if self.settings.events.has(Kind::Vacated) {
                let max = self.settings.max_queue;
                Self::push_locked(
                    inner,
                    max,
                    Kind::Vacated,
                    topic_data(&topic),
                    None,
                    Some(&topic),
                );
            }
        }
    }

    /// See [`crate::Broker::webhooks_lease`].
    pub fn lease(&self, holder: &str, ttl: Duration) -> bool {
        let mut inner = self.lock();
        let now = Instant::now();
        let free = match &inner.lease {
            None => true,
            Some((h, until)) => h == holder || *until <= now,
        };
        if free {
            inner.lease = Some((holder.to_owned(), now + ttl));
        }
        free
    }

    /// See [`crate::Broker::webhooks_read`].
    pub fn read(&self, max: usize) -> (Vec<Queued>, u64) {
        let mut inner = self.lock();
        self.vacate_due(&mut inner);
        let events = inner.entries.iter().take(max).cloned().collect();
        (events, inner.entries.len() as u64)
    }

    /// See [`crate::Broker::webhooks_done`].
    pub fn done(&self, ids: &[String]) {
        let mut inner = self.lock();
        let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
        inner.entries.retain(|e| !ids.contains(e.id.as_str()));
    }

    /// Events dropped by the cap since the last call, per [`Kind::index`].
    pub fn dropped(&self) -> [u64; Kind::ALL.len()] {
        std::mem::take(&mut self.lock().dropped)
    }
}
