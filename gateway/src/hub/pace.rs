//! When the hub writes events to sockets inline and when it queues them.
//!
//! An inline write (the fan-out writing to the socket itself, 64 sockets
//! per system call where `io_uring` is available: see `hub::inline`)
//! saves a quiet connection a task wake-up and a scheduling round, which is
//! what the first and the median recipient of a broadcast feel. But it is
//! one send per event per subscriber, while the queue lets a busy
//! connection take several events in one vectored write. Measured on a 2-core machine
//! (docs/benchmarks.md): inline writes for every delivery cut server CPU per
//! delivery at 50,000 deliveries/s by 13 %, and cut the maximum broadcast
//! from 974,000 to 172,000 deliveries/s.
//!
//! So a fan-out writes inline only when both hold:
//! - its topic is quiet: its previous event was fanned out at least
//!   [`QUIET`] before. A busy topic's stream (over 2,000 events/s) is
//!   queued, and each connection takes what came meanwhile in one write;
//! - the node is not busy: it has written fewer than [`INLINE_PER_SECOND`]
//!   deliveries per second inline. Each window of [`WINDOW_MS`] grants that
//!   many, first come first served, and an event whose fan-out does not fit
//!   in what is left is queued for every subscriber.
//!
//! A quiet node gets the latency, a saturated one the batching. Two relaxed
//! atomics per event; windows are counted from the registry's creation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Deliveries per second the node writes inline at most: about a third of
/// a core at the 6 µs a loopback write costs on the reference machine.
pub const INLINE_PER_SECOND: u64 = 50_000;
/// Least time since a topic's previous fan-out for an inline one: a topic
/// of up to 2,000 events/s is quiet. Batching pays only when events reach
/// a connection faster than its task writes them (tens of µs); at 2 ms, a
/// 1,000 events/s topic took the queue and its first recipient waited
/// 0.43 ms against Node's 0.28, at 500 µs 0.21–0.25 ms (docs/benchmarks.md).
pub const QUIET: Duration = Duration::from_micros(500);
/// Length of an accounting window.
const WINDOW_MS: u64 = 100;
/// Inline deliveries granted per window.
const PER_WINDOW: u64 = INLINE_PER_SECOND * WINDOW_MS / 1000;

/// The node's inline-write budget.
#[derive(Debug)]
pub struct Pace {
    start: Instant,
    /// The current window's number.
    window: AtomicU64,
    /// Inline deliveries granted in it.
    granted: AtomicU64,
}

impl Pace {
    /// A fresh budget.
    pub fn new() -> Pace {
        Pace {
            start: Instant::now(),
            window: AtomicU64::new(0),
            granted: AtomicU64::new(0),
        }
    }

    /// Whether an event of a topic last fanned out at `last` (updated to
    /// `now`), for `subscribers`, received at `now`, is written inline.
    /// Racing callers at a window's turn may grant a window a few events
    /// more or less: the budget is a throttle, not an account.
    pub fn inline(&self, now: Instant, last: &mut Option<Instant>, subscribers: usize) -> bool {
        let quiet = last.is_none_or(|t| now.saturating_duration_since(t) >= QUIET);
        *last = Some(now);
        quiet && self.grant(now, subscribers)
    }

    fn grant(&self, now: Instant, subscribers: usize) -> bool {
        let window = u64::try_from(now.saturating_duration_since(self.start).as_millis())
            .unwrap_or(u64::MAX)
            / WINDOW_MS;
        if self.window.load(Relaxed) != window {
            self.window.store(window, Relaxed);
            self.granted.store(0, Relaxed);
        }
        let n = subscribers as u64;
        let before = self.granted.fetch_add(n, Relaxed);
        before + n <= PER_WINDOW
    }
}

impl Default for Pace {
    fn default() -> Pace {
        Pace::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_quiet_node_writes_inline_and_a_busy_one_queues() {
        let pace = Pace::new();
        let t = pace.start;
        let per_event = (PER_WINDOW / 2) as usize;
        assert!(pace.grant(t, per_event), "one broadcast");
        assert!(pace.grant(t, per_event), "the whole budget");
        assert!(!pace.grant(t, 1), "beyond the budget: queued");
        assert!(
            !pace.grant(t + Duration::from_millis(WINDOW_MS - 1), 1),
            "the same window"
        );
        assert!(
            pace.grant(t + Duration::from_millis(WINDOW_MS), per_event),
            "a new window, a new budget"
        );
        assert!(
            !pace.grant(
                t + Duration::from_millis(WINDOW_MS + 1),
                PER_WINDOW as usize
            ),
            "a fan-out larger than what is left is queued whole"
        );
    }

    #[test]
    fn only_a_quiet_topic_is_written_inline() {
        let pace = Pace::new();
        let t = pace.start;
        let mut last = None;
        assert!(pace.inline(t, &mut last, 10), "a topic's first event");
        assert!(
            !pace.inline(t + QUIET / 2, &mut last, 10),
            "the next event of a batch or a busy stream: queued"
        );
        assert!(
            !pace.inline(t + QUIET, &mut last, 10),
            "quiet is measured from the previous event, queued or not"
        );
        assert!(pace.inline(t + QUIET * 3, &mut last, 10));
    }

    #[test]
    fn a_topic_of_a_thousand_events_a_second_is_quiet() {
        let pace = Pace::new();
        let t = pace.start;
        let mut last = None;
        for ms in 0..10 {
            assert!(
                pace.inline(t + Duration::from_millis(ms), &mut last, 10),
                "event {ms}, 1 ms after the previous"
            );
        }
    }
}
