//! The revocations this node enforces (contract §8 `POST /v1/revoke`): a
//! token id, or every token of a user issued before a time, each until the
//! record expires.
//!
//! Handshakes and token refreshes consult it (two hash lookups under a read
//! lock); the broker adds to it when an admin revokes (on every node at
//! once), and, with Redis, loads the stored set when the node starts and
//! whenever it changed, so a node that missed a revocation or started later
//! enforces it too. Open sessions are matched through what their outbox
//! records of their token ([`TokenStamp`]), not through their claims, so an
//! idle session pays 16 bytes for it.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use herald_core::Revocation;

/// A 64-bit digest of a `jti`, stable within the process (FNV-1a): what an
/// outbox keeps instead of the string. Never 0 (0 means "no jti").
pub fn jti_digest(jti: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in jti.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// What a session's outbox records of its current token, for matching it
/// against revocations; updated on every refresh.
#[derive(Debug)]
pub struct TokenStamp {
    jti: AtomicU64,
    iat: AtomicU64,
}

/// No `iat` claim.
const NO_IAT: u64 = u64::MAX;

impl TokenStamp {
    /// A stamp for a token with `jti` and `iat`.
    pub fn new(jti: Option<&str>, iat: Option<u64>) -> TokenStamp {
        let stamp = TokenStamp {
            jti: AtomicU64::new(0),
            iat: AtomicU64::new(NO_IAT),
        };
        stamp.set(jti, iat);
        stamp
    }

    /// Records a refreshed token.
    pub fn set(&self, jti: Option<&str>, iat: Option<u64>) {
        self.jti.store(jti.map_or(0, jti_digest), Relaxed);
        self.iat.store(iat.unwrap_or(NO_IAT), Relaxed);
    }

    /// Whether `r` covers the token of `sub` this stamp records.
    pub fn covered_by(&self, r: &Revocation, sub: &str) -> bool {
        match (&r.jti, &r.sub, r.issued_before) {
            (Some(j), _, _) => self.jti.load(Relaxed) == jti_digest(j),
            (None, Some(s), Some(before)) => {
                let iat = self.iat.load(Relaxed);
                s == sub && (iat == NO_IAT || iat < before)
            }
            _ => false,
        }
    }
}

#[derive(Default)]
struct Records {
    /// jti → until (Unix s).
    tokens: HashMap<String, u64>,
    /// sub → (issued_before, until): the latest cutoff wins.
    users: HashMap<String, (u64, u64)>,
}

/// The revocations in force on this node.
#[derive(Default)]
pub struct Revocations {
    records: RwLock<Records>,
    /// Whether the stored list was applied at least once (contract §10.8):
    /// until then the node admits no token.
    loaded: std::sync::atomic::AtomicBool,
}

fn now_s() -> u64 {
    herald_core::now_ms() / 1000
}

impl Revocations {
    /// Records `r` (and forgets expired records); whether it was new.
    pub fn add(&self, r: &Revocation) -> bool {
        let now = now_s();
        if r.until <= now {
            return false;
        }
        let mut rec = self.records.write().unwrap_or_else(|p| p.into_inner());
        rec.tokens.retain(|_, until| *until > now);
        rec.users.retain(|_, (_, until)| *until > now);
        match (&r.jti, &r.sub, r.issued_before) {
            (Some(j), _, _) => {
                let until = rec.tokens.entry(j.clone()).or_insert(0);
                let new = *until < r.until;
                *until = (*until).max(r.until);
                new
            }
            (None, Some(s), Some(before)) => {
                let entry = rec.users.entry(s.clone()).or_insert((0, 0));
                let new = entry.0 < before || entry.1 < r.until;
                *entry = (entry.0.max(before), entry.1.max(r.until));
                new
            }
            _ => false,
        }
    }

    /// The stored list has been applied: tokens may be admitted.
    pub fn set_loaded(&self) {
        self.loaded
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the stored list has been applied since the node started.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a token of `sub` with `jti` and `iat` is revoked now.
    pub fn is_revoked(&self, sub: &str, jti: Option<&str>, iat: Option<u64>) -> bool {
        let now = now_s();
        let rec = self.records.read().unwrap_or_else(|p| p.into_inner());
        let by_id = jti
            .and_then(|j| rec.tokens.get(j))
            .is_some_and(|until| *until > now);
        let by_user = rec
            .users
            .get(sub)
            .is_some_and(|(before, until)| *until > now && iat.is_none_or(|i| i < *before));
        by_id || by_user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(jti: &str) -> Revocation {
        Revocation {
            jti: Some(jti.into()),
            sub: None,
            issued_before: None,
            until: now_s() + 60,
        }
    }

    fn user(sub: &str, before: u64) -> Revocation {
        Revocation {
            jti: None,
            sub: Some(sub.into()),
            issued_before: Some(before),
            until: now_s() + 60,
        }
    }

    #[test]
    fn tokens_and_users_are_revoked_until_the_record_expires() {
        let r = Revocations::default();
        assert!(r.add(&token("t1")));
        assert!(!r.add(&token("t1")), "applying twice changes nothing");
        assert!(r.is_revoked("alice", Some("t1"), Some(5)));
        assert!(!r.is_revoked("alice", Some("t2"), Some(5)));
        assert!(r.add(&user("bob", 100)));
        assert!(r.is_revoked("bob", None, Some(99)));
        assert!(
            r.is_revoked("bob", None, None),
            "no iat: cannot show it is newer"
        );
        assert!(
            !r.is_revoked("bob", None, Some(100)),
            "issued at the cutoff: kept"
        );
        assert!(!r.is_revoked("carol", None, Some(1)));
        // A later cutoff for the same user wins; an earlier one does not undo it.
        assert!(r.add(&user("bob", 200)));
        assert!(!r.add(&user("bob", 150)));
        assert!(r.is_revoked("bob", None, Some(199)));
        let expired = Revocation {
            until: now_s().saturating_sub(1),
            ..token("t3")
        };
        assert!(!r.add(&expired));
        assert!(!r.is_revoked("x", Some("t3"), None));
    }

    #[test]
    fn stamps_match_what_their_token_is() {
        let s = TokenStamp::new(Some("t1"), Some(50));
        assert!(s.covered_by(&token("t1"), "alice"));
        assert!(!s.covered_by(&token("t2"), "alice"));
        assert!(s.covered_by(&user("alice", 51), "alice"));
        assert!(!s.covered_by(&user("alice", 50), "alice"));
        assert!(!s.covered_by(&user("bob", 51), "alice"));
        s.set(None, None);
        assert!(!s.covered_by(&token("t1"), "alice"));
        assert!(s.covered_by(&user("alice", 1), "alice"));
        assert_eq!(jti_digest(""), jti_digest(""));
        assert_ne!(jti_digest("a"), 0);
    }
}
