//! A session's clocks and counters: the token bucket for client frames,
//! the strikes that end a flooding client, and the timers (heartbeat, token
//! expiry) folded into one deadline.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long before `exp` the client is warned with `token_expiring`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(60);
/// `rate_limited` replies within [`STRIKE_WINDOW`] that close the connection.
pub const MAX_STRIKES: usize = 20;
/// See [`MAX_STRIKES`].
pub const STRIKE_WINDOW: Duration = Duration::from_secs(10);
/// Timers further out than this are re-armed when they fire.
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

/// Token bucket for client data frames.
pub(super) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    pub(super) fn new(rate: u32, burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: now,
        }
    }

    pub(super) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Times of recent `rate_limited` replies; allocated on the first one.
#[derive(Default)]
pub(super) struct Strikes(VecDeque<Instant>);

impl Strikes {
    /// Records a strike at `now`; whether the client has had too many.
    pub(super) fn strike(&mut self, now: Instant) -> bool {
        let strikes = &mut self.0;
        strikes.push_back(now);
        while strikes
            .front()
            .is_some_and(|t| now.duration_since(*t) > STRIKE_WINDOW)
        {
            strikes.pop_front();
        }
        strikes.len() >= MAX_STRIKES
    }
}

/// The times the session timer serves (heartbeats are the node's wheel's:
/// [`crate::hub::beat`]).
pub(super) struct Timers {
    /// When to send `token_expiring`; `None` once sent.
    pub(super) warn_at: Option<Instant>,
    /// When to close with 4001.
    pub(super) expire_at: Instant,
}

fn instant_of_unix(exp_secs: u64, offset: Duration, now: Instant) -> Instant {
    let now_ms = herald_core::now_ms();
    let target_ms = exp_secs
        .saturating_mul(1000)
        .saturating_add(offset.as_millis() as u64);
    let until = Duration::from_millis(target_ms.saturating_sub(now_ms)).min(MAX_TIMER * 365);
    now.checked_add(until).unwrap_or(now + MAX_TIMER)
}

pub(super) fn expiry_times(exp: u64, leeway: Duration, now: Instant) -> (Instant, Instant) {
    let expire_at = instant_of_unix(exp, leeway, now);
    let warn_at = instant_of_unix(
        exp.saturating_sub(EXPIRY_WARNING.as_secs()),
        Duration::ZERO,
        now,
    );
    (warn_at, expire_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_starts_full_and_refills() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        assert!(b.take(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn strikes_end_a_flood_within_the_window() {
        let t0 = Instant::now();
        let mut s = Strikes::default();
        for i in 0..MAX_STRIKES - 1 {
            assert!(!s.strike(t0 + Duration::from_millis(i as u64)));
        }
        assert!(s.strike(t0 + Duration::from_secs(1)));
        let mut s = Strikes::default();
        for i in 0..MAX_STRIKES * 2 {
            assert!(
                !s.strike(t0 + STRIKE_WINDOW.mul_f64(0.6) * i as u32),
                "spread out, never too many"
            );
        }
    }

    #[test]
    fn expiry_times_are_in_order() {
        let now = Instant::now();
        let exp = herald_core::now_ms() / 1000 + 120;
        let (warn, expire) = expiry_times(exp, Duration::from_secs(30), now);
        assert!(warn < expire);
        let until_warn = warn - now;
        assert!(
            until_warn > Duration::from_secs(55) && until_warn <= Duration::from_secs(61),
            "{until_warn:?}"
        );
        let (warn, _) = expiry_times(exp - 100, Duration::ZERO, now);
        assert_eq!(warn, now, "already inside the warning window: warn at once");
    }
}
