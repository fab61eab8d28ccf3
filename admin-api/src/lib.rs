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
mod exact;
mod routes;

use std::sync::Arc;

use herald_core::config::{AdminConfig, Scope, ScopedKey};
use herald_core::http::ApiError;
use herald_core::{AnyBroker, Metrics, PublicationRules};
use herald_protocol::Permissions;

pub use doc::{ApiDoc, document};
pub use routes::{ROUTES, RequestCounters};

/// Builds the `/v1` router: the routes, and the OpenAPI document made from
/// them at `GET /v1/openapi.json`.
pub fn router(state: AdminState) -> axum::Router {
    routes::router(state, axum::routing::get(doc::openapi_json))
}

/// Everything the admin routes share.
#[derive(Clone)]
pub struct AdminState {
    /// Where events go and where history, stats and disconnects come from.
    pub broker: Arc<AnyBroker>,
    /// The accepted API keys, as digests with their names and scopes.
    pub keys: Arc<[ApiKey]>,
    /// What a publication must satisfy.
    pub rules: PublicationRules,
    /// Where publishes are counted.
    pub metrics: Arc<Metrics>,
    /// `presence.topics`: the topics whose members can be read.
    pub presence: Arc<Permissions>,
    /// `herald_admin_requests_total{key,route,status}`.
    pub requests: Arc<routes::RequestCounters>,
    /// `jwt.max_lifetime`: a revocation is kept at least this long, so it
    /// outlives every token it covers.
    pub max_lifetime: std::time::Duration,
}

impl AdminState {
    /// State for `broker`, accepting the keys of `admin` (`admin.api_keys`,
    /// each with every scope, and the scoped `admin.keys`).
    pub fn new(
        broker: Arc<AnyBroker>,
        admin: &AdminConfig,
        rules: PublicationRules,
        metrics: Arc<Metrics>,
    ) -> AdminState {
        let keys: Arc<[ApiKey]> = admin
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| ApiKey::unscoped(&format!("api_keys#{}", i + 1), k.expose()))
            .chain(admin.keys.iter().map(ApiKey::scoped))
            .collect();
        AdminState {
            requests: Arc::new(routes::RequestCounters::new(&metrics, &keys)),
            broker,
            keys,
            rules,
            metrics,
            presence: Arc::new(Permissions::default()),
            max_lifetime: std::time::Duration::from_secs(7 * 86_400),
        }
    }

    /// Keeps revocations at least `max_lifetime` (`jwt.max_lifetime`).
    pub fn with_max_lifetime(mut self, max_lifetime: std::time::Duration) -> AdminState {
        self.max_lifetime = max_lifetime;
        self
    }

    /// Serves the members of topics matching `topics` (`presence.topics`).
    pub fn with_presence(mut self, topics: Permissions) -> AdminState {
        self.presence = Arc::new(topics);
        self
    }
}

/// An accepted API key, kept only as its digest, with its name (what logs
/// and metrics show) and what it may do.
///
/// Comparing fixed-size digests in constant time means neither the key's
/// content nor its length leaks through response timing.
#[derive(Clone, Debug)]
pub struct ApiKey {
    digest: [u8; 32],
    /// `[[admin.keys]] name`, or `api_keys#N` for the N-th plain key.
    pub name: Arc<str>,
    scopes: Vec<Scope>,
    /// With the publish scope: where it may publish (`None`: anywhere).
    topics: Option<Arc<Permissions>>,
}

fn digest(key: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl ApiKey {
    /// A key with every scope (`admin.api_keys`).
    pub fn unscoped(name: &str, key: &str) -> ApiKey {
        ApiKey {
            digest: digest(key),
            name: Arc::from(name),
            scopes: Scope::ALL.to_vec(),
            topics: None,
        }
    }

    /// A key of `admin.keys`.
    pub fn scoped(k: &ScopedKey) -> ApiKey {
        ApiKey {
            digest: digest(k.key.expose()),
            name: Arc::from(k.name.as_str()),
            scopes: k.scopes.clone(),
            topics: (!k.topics.patterns().is_empty()).then(|| Arc::new(k.topics.clone())),
        }
    }

    /// Whether the key has `scope`.
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether the key may publish to `topic`.
    pub fn may_publish(&self, topic: &herald_protocol::Topic) -> bool {
        self.may(Scope::Publish) && self.topics.as_ref().is_none_or(|t| t.allows(topic))
    }

    fn matches(&self, other: &[u8; 32]) -> bool {
        let diff = self
            .digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// The key `presented` is, if any: every key is compared, always, so the
/// time taken does not tell which (or whether one) matched.
pub fn find_key<'a>(keys: &'a [ApiKey], presented: &str) -> Option<&'a ApiKey> {
    let presented = digest(presented);
    keys.iter().fold(None, |found, k| {
        let hit = k.matches(&presented);
        if hit && found.is_none() {
            Some(k)
        } else {
            found
        }
    })
}

/// The result of an admin handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Secret;

    #[test]
    fn keys_compare_by_digest_and_carry_their_scopes() {
        let scoped = ScopedKey {
            name: "ticks".into(),
            key: Secret::new("k3"),
            scopes: vec![Scope::Publish],
            topics: Permissions::parse(["stocks.>"]).unwrap(),
        };
        let keys = [
            ApiKey::unscoped("a", "k1"),
            ApiKey::unscoped("b", "k2"),
            ApiKey::scoped(&scoped),
        ];
        assert_eq!(find_key(&keys, "k1").map(|k| &*k.name), Some("a"));
        assert_eq!(find_key(&keys, "k2").map(|k| &*k.name), Some("b"));
        assert!(find_key(&keys, "k4").is_none());
        assert!(find_key(&keys, "").is_none());
        assert!(find_key(&[], "k1").is_none());
        let ticks = find_key(&keys, "k3").unwrap();
        assert!(ticks.may(Scope::Publish) && !ticks.may(Scope::Stats));
        let topic = |t: &str| herald_protocol::Topic::new(t).unwrap();
        assert!(ticks.may_publish(&topic("stocks.AAPL")));
        assert!(!ticks.may_publish(&topic("news")));
        assert!(keys[0].may_publish(&topic("news")) && keys[0].may(Scope::Revoke));
    }
}
