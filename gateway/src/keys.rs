//! The keys tokens are verified with (contract §4): parsed from PEM and JWKS
//! documents, and, for `jwt.jwks_url` (contract §10.9), a set that is
//! replaced whole whenever it is fetched again.
//!
//! Invariants:
//! - a [`RemoteKeys`] set is swapped in one step (readers take an `Arc`
//!   snapshot and never see half a set), and its lock is never held across
//!   an await or while a token is checked;
//! - the set only grows from "not loaded" to "loaded": a failed refetch keeps
//!   the keys it had, so a key server that is down does not refuse every
//!   user (the node is not ready only until the first fetch succeeds);
//! - refetches asked for by unknown `kid`s start at most once per
//!   [`REFETCH_MIN`], and never while one is under way: a stream of forged
//!   `kid`s costs the key server one request per 10 s, not one per token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Notify, watch};

/// A key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct KeyError {
    /// The configuration key at fault.
    pub setting: &'static str,
    /// What is wrong.
    pub message: String,
}

/// One verification key and the algorithm it may verify.
pub struct VerifyKey {
    /// The only algorithm this key is used for.
    pub alg: Algorithm,
    /// Its `kid`, if the document named one.
    pub kid: Option<String>,
    /// The key.
    pub key: DecodingKey,
}

/// A PEM public key and its algorithm: RSA (RS256), P-256 (ES256) or
/// Ed25519 (EdDSA).
pub fn pem_public_key(pem: &[u8]) -> Option<(Algorithm, DecodingKey)> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((Algorithm::RS256, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((Algorithm::ES256, k));
    }
    DecodingKey::from_ed_pem(pem)
        .ok()
        .map(|k| (Algorithm::EdDSA, k))
}

fn jwk_algorithm(params: &AlgorithmParameters) -> Option<Algorithm> {
    match params {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        AlgorithmParameters::OctetKey(_) => Some(Algorithm::HS256),
        _ => None,
    }
}

/// The usable keys of a JWKS document (`origin` names it in errors, the
/// configuration key `setting` too). Keys of other kinds are skipped; a key
/// that names its algorithm is used for that one only.
///
/// # Errors
/// Not a JWKS document, a key that does not load, or no usable key.
pub fn jwks_keys(
    text: &[u8],
    setting: &'static str,
    origin: &str,
) -> Result<Vec<VerifyKey>, KeyError> {
    let error = |message: String| KeyError { setting, message };
    let set: JwkSet = serde_json::from_slice(text)
        .map_err(|e| error(format!("{origin} is not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Some(alg) = jwk_algorithm(&jwk.algorithm) else {
            continue;
        };
        if jwk
            .common
            .key_algorithm
            .is_some_and(|declared| format!("{declared:?}") != format!("{alg:?}"))
        {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| error(format!("key {:?}: {e}", jwk.common.key_id)))?;
        keys.push(VerifyKey {
            alg,
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(error(format!(
            "{origin}: no usable RS256, ES256, EdDSA or HS256 key"
        )));
    }
    Ok(keys)
}

/// Least time between two refetches asked for by unknown `kid`s.
pub const REFETCH_MIN: Duration = Duration::from_secs(10);

/// The key set of `jwt.jwks_url`, shared by the verifier (which reads it)
/// and the fetcher (which fills it).
pub struct RemoteKeys {
    /// Where the set is fetched from.
    pub url: String,
    /// How often it is fetched again.
    pub refresh: Duration,
    keys: RwLock<Arc<[VerifyKey]>>,
    loaded: AtomicBool,
    wanted: Notify,
    /// When the last refetch for an unknown `kid` was started.
    last_wanted: Mutex<Option<Instant>>,
    /// A refetch for an unknown `kid` is under way.
    in_flight: AtomicBool,
    /// Counts finished fetch attempts, so a caller can wait for the next.
    attempts: watch::Sender<u64>,
}

impl RemoteKeys {
    /// An empty, not yet loaded set for `url`.
    pub fn new(url: &str, refresh: Duration) -> Arc<RemoteKeys> {
        Arc::new(RemoteKeys {
            url: url.to_owned(),
            refresh,
            keys: RwLock::new(Arc::from(Vec::new())),
            loaded: AtomicBool::new(false),
            wanted: Notify::new(),
            last_wanted: Mutex::new(None),
            in_flight: AtomicBool::new(false),
            attempts: watch::Sender::new(0),
        })
    }

    /// The current keys.
    pub fn snapshot(&self) -> Arc<[VerifyKey]> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a fetch has succeeded yet.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// A token named an unknown `kid`: starts a refetch unless one is
    /// under way or one started less than [`REFETCH_MIN`] ago. Returns
    /// whether a refetch is under way (worth waiting for).
    pub fn want_refetch(&self) -> bool {
        let now = Instant::now();
        let mut last = self.last_wanted.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| now.duration_since(t) >= REFETCH_MIN);
        if due && !self.in_flight.load(Ordering::Acquire) {
            *last = Some(now);
            self.in_flight.store(true, Ordering::Release);
            self.wanted.notify_one();
        }
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves when the fetcher asks to be woken early.
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }

    /// A watch that changes when the next fetch attempt finishes (whether
    /// it found new keys or not): take it *before* asking for a refetch.
    pub fn attempts(&self) -> watch::Receiver<u64> {
        self.attempts.subscribe()
    }

    /// A fetch succeeded: its keys replace the set.
    pub fn install(&self, keys: Vec<VerifyKey>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(keys);
        self.loaded.store(true, Ordering::Release);
        self.attempted();
    }

    /// A fetch failed: the set stays as it was.
    pub fn failed(&self) {
        self.attempted();
    }

    /// Whoever waits on [`RemoteKeys::attempts`] sees the change after
    /// `in_flight` is cleared.
    fn attempted(&self) {
        self.in_flight.store(false, Ordering::Release);
        self.attempts.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_documents_yield_their_usable_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"a","k":"MDEyMzQ1Njc4OWFiY2RlZg"},
            {"kty":"oct","kid":"b","alg":"RS256","k":"MDEyMzQ1Njc4OWFiY2RlZg"}
        ]}"#;
        let keys = jwks_keys(doc, "jwt.jwks_url", "the document").unwrap();
        assert_eq!(
            keys.len(),
            1,
            "a key declaring another algorithm is skipped"
        );
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        assert_eq!(keys[0].alg, Algorithm::HS256);
        let none = jwks_keys(br#"{"keys":[]}"#, "jwt.jwks_url", "x")
            .err()
            .unwrap();
        assert!(none.to_string().contains("no usable"), "{none}");
        let bad = jwks_keys(b"<html>", "jwt.jwks_url", "x").err().unwrap();
        assert!(bad.to_string().contains("not a JWKS document"), "{bad}");
    }

    #[test]
    fn a_set_is_replaced_whole_and_failures_keep_it() {
        let remote = RemoteKeys::new("http://127.0.0.1:1/jwks", Duration::from_secs(60));
        assert!(!remote.is_loaded());
        let doc = br#"{"keys":[{"kty":"oct","kid":"a","k":"MDEyMzQ1Njc4OWFiY2RlZg"}]}"#;
        let mut attempts = remote.attempts();
        remote.install(jwks_keys(doc, "jwt.jwks_url", "x").unwrap());
        assert!(attempts.has_changed().unwrap(), "the attempt is seen");
        attempts.mark_unchanged();
        assert!(remote.is_loaded());
        attempts.mark_unchanged();
        remote.failed();
        assert!(
            attempts.has_changed().unwrap(),
            "a failed attempt is seen too"
        );
        assert!(remote.is_loaded());
        assert_eq!(remote.snapshot().len(), 1, "a failure keeps the keys");
    }

    #[test]
    fn unknown_kids_refetch_at_most_once_per_period() {
        let remote = RemoteKeys::new("http://127.0.0.1:1/jwks", Duration::from_secs(60));
        assert!(remote.want_refetch(), "the first starts one");
        assert!(remote.want_refetch(), "the next ones wait for it");
        remote.failed();
        assert!(!remote.want_refetch(), "none again within REFETCH_MIN");
        *remote.last_wanted.lock().unwrap() = Instant::now().checked_sub(REFETCH_MIN);
        assert!(remote.want_refetch(), "after REFETCH_MIN, one more");
    }
}
