//! How long to wait before retrying something that failed: reconnects to
//! Redis (pub/sub connections, the cluster router, presence upkeep).
//!
//! Equal jitter, not full jitter: a wait is never under half its ceiling, so
//! a Redis that just went away is not hammered by retries drawn near zero,
//! and the other half is random, so many nodes that lost the same Redis do
//! not come back in step. The generator is a per-instance xorshift seeded
//! from the operating system (jitter needs spread, not secrecy).

use std::time::Duration;

/// Capped exponential backoff with equal jitter: each wait is uniform in
/// [ceiling / 2, ceiling], the ceiling doubling per attempt up to the cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// Starts at `base`, never waits longer than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        Backoff {
            base,
            cap,
            attempt: 0,
            seed: u64::from_le_bytes(b) | 1,
        }
    }

    /// The wait before the next attempt: uniform in [ceiling/2, ceiling],
    /// where the ceiling doubles per attempt up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = ceiling / 2;
        let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(if jitter_ns == 0 {
            0
        } else {
            self.seed % (jitter_ns + 1)
        })
    }

    /// After a success: start from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn waits_double_up_to_the_cap_with_equal_jitter() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(base, cap);
        let ceilings = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
        for ms in ceilings {
            let ceiling = Duration::from_millis(ms);
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        b.reset();
        let d = b.next_delay();
        assert!(d >= base / 2 && d <= base, "after reset: {d:?}");
        // Spread: 200 draws at the cap are not all alike.
        let mut b = Backoff::new(cap, cap);
        let draws: std::collections::HashSet<_> = (0..200).map(|_| b.next_delay()).collect();
        assert!(draws.len() > 100, "{} distinct waits of 200", draws.len());
    }

    proptest! {
        #[test]
        fn backoff_stays_within_bounds(base_ms in 1u64..500, cap_ms in 500u64..10_000, steps in 1usize..40) {
            let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let mut b = Backoff::new(base, cap);
            let mut ceiling = base;
            for _ in 0..steps {
                let d = b.next_delay();
                prop_assert!(d <= cap, "{d:?} over the cap");
                prop_assert!(d >= ceiling.min(cap) / 2, "{d:?} under half the ceiling");
                prop_assert!(d <= ceiling.min(cap));
                ceiling = ceiling.saturating_mul(2);
            }
            b.reset();
            prop_assert!(b.next_delay() <= base);
        }
    }
}
