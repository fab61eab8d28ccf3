//! A fan-out's inline writes, gathered [`BATCH`] subscribers at a time and
//! sent in one submission ([`crate::wire::uring`]); the first subscriber's
//! alone, so the first recipient waits for no batch.
//!
//! Each gathered subscriber's outbox stays locked ([`Claim`]) from the
//! moment it is found writable until its write has completed and its
//! result is settled (delivered, or queued from where the socket stopped),
//! so the hub's inline writes keep the guarantees of one `try_write` under
//! the lock: nothing else writes to the socket meanwhile, and order holds.
//!
//! **No deadlock.** A batch takes outbox locks only with `try_lock`. When
//! one is held elsewhere, the batch is flushed (every claim released)
//! before that outbox is pushed to the usual, waiting way. So a thread
//! never waits for a lock while it holds another outbox's, and two
//! fan-outs on different threads cannot wait on each other. Other holders
//! of an outbox lock (the session task, a presence frame) hold it for a
//! few instructions; a claim holds it for at most one batch's submission.
//!
//! Nothing here allocates: the batch lives on the stack.

use std::time::Instant;

use bytes::Bytes;
use herald_core::Metrics;
use smallvec::SmallVec;
use tokio::net::TcpStream;

use crate::outbox::{Claim, Claimed, Outbox, Pushed};
use crate::wire::uring::{self, BATCH};

/// The claimed subscribers of one event's fan-out, not yet written.
pub(super) struct InlineWrites<'a, 'm> {
    claims: SmallVec<[(Claim<'a>, Bytes); BATCH]>,
    /// Claims gathered before a flush: 1 for the first (the first
    /// recipient does not wait for 63 others), then [`BATCH`].
    limit: usize,
    /// When the event arrived; `None` for a control frame (a heartbeat
    /// ping), which is not counted as a delivery.
    received: Option<Instant>,
    metrics: &'m Metrics,
    /// Events discarded by slow-consumer overflows meanwhile.
    overflowed: u64,
}

impl<'a, 'm> InlineWrites<'a, 'm> {
    /// An empty batch for an event received at `received`.
    pub(super) fn new(received: Instant, metrics: &'m Metrics) -> Self {
        Self::of(Some(received), metrics)
    }

    /// An empty batch of control frames (heartbeat pings): written the same
    /// way, not counted as deliveries, queued like replies when the socket
    /// cannot take them.
    pub(super) fn control(metrics: &'m Metrics) -> Self {
        Self::of(None, metrics)
    }

    fn of(received: Option<Instant>, metrics: &'m Metrics) -> Self {
        InlineWrites {
            claims: SmallVec::new(),
            limit: 1,
            received,
            metrics,
            overflowed: 0,
        }
    }

    /// Delivers `frame` to `outbox`: claimed for the batch when it can be
    /// written inline, queued at once otherwise.
    pub(super) fn push(&mut self, outbox: &'a Outbox, frame: &Bytes) {
        match outbox.try_claim(frame, self.received, self.metrics) {
            Claimed::Inline(claim) => {
                self.claims.push((claim, frame.clone()));
                if self.claims.len() >= self.limit {
                    self.flush();
                }
            }
            Claimed::Done(pushed) => self.count(pushed),
            Claimed::Contended => {
                self.flush();
                let pushed = match self.received {
                    Some(received) => outbox.push_event(frame, received, self.metrics, true),
                    None => outbox.push_control(frame, self.metrics),
                };
                self.count(pushed);
            }
        }
    }

    /// Writes every claimed subscriber's frame and settles each result,
    /// releasing the claims.
    pub(super) fn flush(&mut self) {
        if self.claims.is_empty() {
            return;
        }
        self.limit = BATCH;
        let mut written = [0usize; BATCH];
        {
            let sends: SmallVec<[(&TcpStream, &[u8]); BATCH]> = self
                .claims
                .iter()
                .map(|(claim, frame)| (claim.socket(), &frame[..]))
                .collect();
            uring::write_each(&sends, &mut written);
        }
        let mut claims = std::mem::take(&mut self.claims);
        for ((claim, frame), n) in claims.drain(..).zip(written) {
            let pushed = claim.finish(&frame, self.received, n, self.metrics);
            self.count(pushed);
        }
    }

    /// Flushes, then returns the events discarded by overflows.
    pub(super) fn finish(mut self) -> u64 {
        self.flush();
        self.overflowed
    }

    fn count(&mut self, pushed: Pushed) {
        if let Pushed::Overflow(n) = pushed {
            self.overflowed += n as u64;
        }
    }
}

impl Drop for InlineWrites<'_, '_> {
    /// A batch dropped unflushed (a panic in the fan-out) still writes or
    /// queues what it claimed: no claimed event is lost.
    fn drop(&mut self) {
        self.flush();
    }
}
