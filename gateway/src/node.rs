//! A gateway node's shared state: configuration, broker, hub, keys, counters,
//! and the draining flag.
//!
//! One `Arc<Node>` is shared by every connection task and every request
//! handler. Nothing in it is locked across an `.await`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use herald_core::broker::redis::RedisBroker;
use herald_core::{
    AnyBroker, Backend, Broker, BrokerSettings, Config, Member, MemoryBroker, Metrics, NodeControl,
    NodeStats, Revocation,
};
use herald_protocol::Topic;
use tokio::sync::Notify;

use crate::auth::{KeyError, Signer, Verifier};
use crate::hub::{Hub, Registry};

/// A running gateway node.
pub struct Node {
    /// The effective configuration.
    pub config: Config,
    /// This node's metrics.
    pub metrics: Arc<Metrics>,
    /// The broker.
    pub broker: Arc<AnyBroker>,
    /// Topic → local sessions.
    pub hub: Hub<AnyBroker>,
    /// The heartbeat wheel: every session's pings and 4002.
    pub beat: Arc<crate::hub::beat::Beat>,
    /// Token verification.
    pub verifier: Verifier,
    /// The backend hooks, when configured.
    pub proxy: Option<crate::proxy::Proxy>,
    /// The lifecycle webhooks recorded (none without `webhooks.url`).
    pub webhook_events: herald_core::webhooks::Events,
    /// Token minting for `/dev/token`; set only in `--dev`.
    pub dev_signer: Option<Signer>,
    /// TLS for the public listener, when `tls.*` is configured.
    pub tls: Option<crate::tls::Acceptor>,
    /// Tokens refused at the handshake and in `auth`.
    pub revocations: crate::revocations::Revocations,
    draining: AtomicBool,
    open: AtomicUsize,
    closed: Notify,
    next_session: AtomicU64,
    session_prefix: String,
}

/// A reserved connection slot; released when dropped.
pub struct Permit(Arc<Node>);

impl Drop for Permit {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

struct Control(Weak<Node>);

impl NodeControl for Control {
    fn stats(&self) -> NodeStats {
        match self.0.upgrade() {
            Some(node) => node.stats(),
            None => NodeStats {
                node: String::new(),
                connections: 0,
                subscriptions: 0,
                topics: 0,
            },
        }
    }

    fn disconnect(&self, sub: &str) -> usize {
        self.0.upgrade().map_or(0, |node| node.hub.disconnect(sub))
    }

    fn revocations_loaded(&self) {
        if let Some(node) = self.0.upgrade() {
            node.revocations.set_loaded();
        }
    }

    fn revoke(&self, revocation: &Revocation) -> usize {
        self.0.upgrade().map_or(0, |node| {
            node.revocations.add(revocation);
            node.hub.revoke(revocation)
        })
    }

    fn members(&self) -> Vec<(Topic, Member)> {
        let Some(node) = self.0.upgrade() else {
            return Vec::new();
        };
        let tracked = |t: &Topic| node.config.presence.tracks(t);
        node.hub
            .registry()
            .memberships(tracked)
            .into_iter()
            .map(|(topic, outbox)| {
                let member = node.member(&outbox);
                (topic, member)
            })
            .collect()
    }
}

impl Node {
    /// Builds a node with the broker its configuration names: the memory
    /// broker, or Redis when `redis_url` is set.
    ///
    /// Must be called inside a Tokio runtime (brokers start background tasks).
    ///
    /// # Errors
    /// When a configured key or certificate cannot be loaded, or `redis_url`
    /// cannot be parsed. (A `jwt.jwks_url` set is fetched in the background:
    /// until it is, the node is not ready.)
    pub fn new(config: Config, dev: bool) -> Result<Arc<Node>, KeyError> {
        let verifier = Verifier::new(&config.jwt)?;
        let dev_signer = if dev {
            Some(Signer::hs256(&config.jwt)?)
        } else {
            None
        };
        let tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        // Process-wide: the last node made in a process decides.
        crate::wire::uring::set_enabled(config.listeners.io_uring);
        let metrics = Metrics::new(&config.node.id);
        let registry = Arc::new(Registry::new(metrics.clone()));
        let settings = BrokerSettings {
            history: config.history,
            publish: config.publish,
            presence_timeout: config.presence.timeout,
            webhooks: config.webhooks.settings(),
        };
        let backend = match &config.redis.url {
            None => Backend::Memory(MemoryBroker::new(settings, registry.clone())),
            Some(url) => Backend::Redis(
                RedisBroker::new(
                    url.expose(),
                    config.redis.cluster,
                    settings,
                    registry.clone(),
                    metrics.clone(),
                )
                .map_err(|e| KeyError {
                    setting: "redis_url",
                    message: e.to_string(),
                })?,
            ),
        };
        let broker = Arc::new(AnyBroker::new(backend, metrics.clone()));
        let hub = Hub::new(
            registry,
            broker.clone(),
            metrics.clone(),
            config.history.size,
        );
        let beat = Arc::new(crate::hub::beat::Beat::new(
            config.heartbeat.interval,
            config.heartbeat.timeout,
            metrics.clone(),
        ));
        crate::hub::beat::Beat::start(&beat);
        let backend = crate::backend::Backend::new().map_err(|message| KeyError {
            setting: "proxy",
            message,
        })?;
        if let Some(remote) = verifier.remote() {
            use tracing::Instrument;
            tokio::spawn(
                crate::jwks::keep_fresh(Arc::downgrade(remote), backend.clone())
                    .instrument(tracing::info_span!("jwks")),
            );
        }
        let proxy = crate::proxy::Proxy::new(
            &config.proxy,
            config.jwt.max_lifetime,
            backend.clone(),
            metrics.clone(),
        )
        .map_err(|message| KeyError {
            setting: "proxy",
            message,
        })?;
        let node = Arc::new(Node {
            session_prefix: herald_core::random_hex(4),
            webhook_events: config.webhooks.selected(),
            config,
            metrics,
            broker,
            hub,
            beat,
            verifier,
            proxy,
            dev_signer,
            tls,
            revocations: crate::revocations::Revocations::default(),
            draining: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            next_session: AtomicU64::new(1),
        });
        node.broker
            .register_node(Arc::new(Control(Arc::downgrade(&node))));
        crate::webhooks::spawn(
            &node.config.webhooks,
            &node.config.node.id,
            &node.broker,
            node.metrics.clone(),
            backend,
        );
        Ok(node)
    }

    /// This node's current counts.
    pub fn stats(&self) -> NodeStats {
        let count = |v: &herald_core::metrics::Level64| u64::try_from(v.get()).unwrap_or(0);
        NodeStats {
            node: self.config.node.id.clone(),
            connections: count(&self.metrics.connections),
            subscriptions: count(&self.metrics.subscriptions),
            topics: count(&self.metrics.topics),
        }
    }

    /// Reserves a connection slot, unless the node is full or draining.
    pub fn try_reserve(self: &Arc<Node>) -> Option<Permit> {
        if self.is_draining() {
            return None;
        }
        let max = self.config.limits.max_connections;
        let mut current = self.open.load(Ordering::Acquire);
        loop {
            if current >= max {
                return None;
            }
            match self.open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Permit(self.clone())),
                Err(actual) => current = actual,
            }
        }
    }

    /// Reserved slots: sessions open or being opened.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection slot is held.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.closed.notified();
            if self.open_connections() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// A fresh session number and its opaque id string.
    pub fn next_session(&self) -> (u64, String) {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        (n, self.session_name(n))
    }

    /// The opaque id of session number `n` (as in its `welcome`): rendered
    /// when needed rather than kept by every session.
    pub fn session_name(&self, n: u64) -> String {
        format!("{}{n:x}", self.session_prefix)
    }

    /// The session of `outbox` as a presence member joining now.
    pub fn member(&self, outbox: &crate::outbox::Outbox) -> Member {
        Member {
            sub: outbox.sub.to_string(),
            session: self.session_name(outbox.id),
            node: self.config.node.id.clone(),
            since: herald_core::now_ms(),
            info: outbox.info.as_deref().cloned(),
        }
    }

    /// Enters draining: new handshakes get 503 and `/readyz` answers 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the node can serve, for `/readyz`.
    ///
    /// # Errors
    /// The reason it cannot.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.is_draining() {
            Err("node is draining")
        } else if !self.verifier.keys_loaded() {
            Err("JWT keys not loaded")
        } else if !self.broker.is_up() {
            Err("broker is unreachable")
        } else {
            Ok(())
        }
    }
}
