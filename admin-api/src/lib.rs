//! The admin REST API (contract §8): one router, mounted by every gateway on
//! its admin listener and served alone by `herald-admin` in cluster mode, so
//! both answer the same routes with the same auth and the same errors.
//!
//! The routes talk to the broker ([`AnyBroker`]) and nothing else: they know
//! nothing about sessions or sockets. Every refusal is an [`ApiError`] with a
//! contract code and never carries internal details. Publications are held to
//! the same [`PublicationRules`] as a client's `publish`. The OpenAPI document
//! ([`ApiDoc`]) is generated from the handlers' annotations and request and
//! response types, and a test checks that every routed path is in it.

mod doc;
mod routes;

use std::sync::Arc;

use herald_core::http::ApiError;
use herald_core::{AnyBroker, Metrics, PublicationRules, Secret};
use herald_protocol::Permissions;

pub use doc::ApiDoc;
pub use routes::{ROUTES, router};

/// Everything the admin routes share.
#[derive(Clone)]
pub struct AdminState {
    /// Where events go and where history, stats and disconnects come from.
    pub broker: Arc<AnyBroker>,
    /// The accepted API keys, as digests.
    pub keys: Arc<[ApiKey]>,
    /// What a publication must satisfy.
    pub rules: PublicationRules,
    /// Where publishes are counted.
    pub metrics: Arc<Metrics>,
    /// `presence.topics`: the topics whose members can be read.
    pub presence: Arc<Permissions>,
}

impl AdminState {
    /// State for `broker`, accepting `keys`.
    pub fn new(
        broker: Arc<AnyBroker>,
        keys: &[Secret],
        rules: PublicationRules,
        metrics: Arc<Metrics>,
    ) -> AdminState {
        AdminState {
            broker,
            keys: keys.iter().map(|k| ApiKey::new(k.expose())).collect(),
            rules,
            metrics,
            presence: Arc::new(Permissions::default()),
        }
    }

    /// Serves the members of topics matching `topics` (`presence.topics`).
    pub fn with_presence(mut self, topics: Permissions) -> AdminState {
        self.presence = Arc::new(topics);
        self
    }
}

/// An accepted API key, kept only as its digest.
///
/// Comparing fixed-size digests in constant time means neither the key's
/// content nor its length leaks through response timing.
#[derive(Clone)]
pub struct ApiKey([u8; 32]);

impl ApiKey {
    /// The digest of `key`.
    pub fn new(key: &str) -> ApiKey {
        let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        ApiKey(out)
    }

    fn matches(&self, other: &ApiKey) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// Whether `presented` is one of `keys`; every key is compared, always.
pub fn key_accepted(keys: &[ApiKey], presented: &str) -> bool {
    let presented = ApiKey::new(presented);
    keys.iter()
        .fold(false, |found, k| found | k.matches(&presented))
}

/// The result of an admin handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_digest() {
        let keys = [ApiKey::new("k1"), ApiKey::new("k2")];
        assert!(key_accepted(&keys, "k1"));
        assert!(key_accepted(&keys, "k2"));
        assert!(!key_accepted(&keys, "k3"));
        assert!(!key_accepted(&keys, ""));
        assert!(!key_accepted(&[], "k1"));
    }
}
