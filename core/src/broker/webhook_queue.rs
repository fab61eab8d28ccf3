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

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::webhooks::{Kind, Queued, SessionOpen, WebhookSettings};

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
        let inner = self.lock();
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
