//! The crate's randomness: idempotency keys and backoff jitter, from the
//! operating system (`getrandom`).

use std::time::Duration;

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The system's generator does not fail on supported platforms; a zero
    // only makes one jitter or key predictable.
    let _ = getrandom::getrandom(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// `n` random bytes, hex-encoded.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Uniform in `[0, ceiling)`: full jitter.
pub(crate) fn jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random_u64() % nanos)
}
