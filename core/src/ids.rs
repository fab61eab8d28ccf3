//! Where Herald's identifiers and clocks come from: random hex for node,
//! session and reply ids, secrets for `--dev`, the epochs that name a
//! topic's history, and wall-clock milliseconds.
//!
//! Invariants: an epoch is never 0 (0 means "no epoch" on the wire and in
//! Redis); ids that need not be secret still come from the operating
//! system's generator and fall back to the clock rather than fail, while
//! [`random_secret`] fails rather than return something guessable.

/// `n` random bytes as lowercase hex, for ids and suffixes.
///
/// Uses the operating system's generator; should it fail, the result is
/// derived from the clock instead, which is unique but not secret, so callers
/// that need a secret use [`random_secret`].
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random secret of `n` bytes as hex.
///
/// # Errors
/// When the operating system cannot provide randomness.
pub fn random_secret(n: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fresh random epoch for a topic's history (never 0). Both brokers start
/// a topic's history with one, so a client can tell a restarted history from
/// the one it read before.
pub fn new_epoch() -> u32 {
    let mut b = [0u8; 4];
    // A failed getrandom leaves zeros; the epoch is then merely predictable.
    let _ = getrandom::getrandom(&mut b);
    u32::from_le_bytes(b).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_length_and_epochs_are_never_zero() {
        assert_eq!(random_hex(6).len(), 12);
        assert!(random_hex(6).bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(random_secret(16).map(|s| s.len()).ok(), Some(32));
        assert!((0..1000).all(|_| new_epoch() != 0));
        assert!(now_ms() > 1_700_000_000_000);
    }
}
