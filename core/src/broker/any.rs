//! The broker a process runs with, chosen by configuration.
//!
//! An enum rather than a trait object: the broker sits on the publish path and
//! [`Broker`]'s methods return `impl Future`, so static dispatch keeps every
//! call free of boxing. The gateway's hub and the admin routes both hold an
//! `Arc<AnyBroker>`; nothing above this seam knows which broker runs.

use std::sync::Arc;

use herald_protocol::Topic;

use super::memory::MemoryBroker;
use super::redis::RedisBroker;
use crate::Metrics;

use super::{
    Broker, BrokerError, HistoryPage, Member, MemberPage, NodeControl, NodeStats, Position,
    Publication, Ready, Revocation,
};
use futures_util::future::Either;
use std::future::Future;
use std::time::Duration;

use crate::webhooks::{Kind, Queued, SessionOpen};

/// Which broker runs.
pub enum Backend {
    /// The embedded single-node broker.
    Memory(Arc<MemoryBroker>),
    /// Redis or Redis Cluster: one node of many.
    Redis(Arc<RedisBroker>),
}

/// The broker of a process: whichever [`Backend`] runs, plus the one place
/// where accepted publications are counted (`herald_messages_published_total`),
/// whoever published them (admin API, client, demo feed).
pub struct AnyBroker {
    backend: Backend,
    metrics: Arc<Metrics>,
}

impl AnyBroker {
    /// Wraps `backend`, counting into `metrics`.
    pub fn new(backend: Backend, metrics: Arc<Metrics>) -> AnyBroker {
        AnyBroker { backend, metrics }
    }

    /// The broker that runs.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}

impl Broker for AnyBroker {
    async fn publish(&self, batch: Vec<Publication>) -> Result<Vec<Position>, BrokerError> {
        let positions = match &self.backend {
            Backend::Memory(b) => b.publish(batch).await,
            Backend::Redis(b) => b.publish(batch).await,
        }?;
        self.metrics.published.increment(positions.len() as u64);
        Ok(positions)
    }

    fn subscribe(&self, topic: &Topic) -> Ready {
        match &self.backend {
            Backend::Memory(b) => b.subscribe(topic),
            Backend::Redis(b) => b.subscribe(topic),
        }
    }

    fn unsubscribe(&self, topic: &Topic) {
        match &self.backend {
            Backend::Memory(b) => b.unsubscribe(topic),
            Backend::Redis(b) => b.unsubscribe(topic),
        }
    }

    async fn position(&self, topic: &Topic) -> Result<Position, BrokerError> {
        match &self.backend {
            Backend::Memory(b) => b.position(topic).await,
            Backend::Redis(b) => b.position(topic).await,
        }
    }

    async fn history(
        &self,
        topic: &Topic,
        since: Option<&str>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        match &self.backend {
            Backend::Memory(b) => b.history(topic, since, limit).await,
            Backend::Redis(b) => b.history(topic, since, limit).await,
        }
    }

    fn is_up(&self) -> bool {
        match &self.backend {
            Backend::Memory(b) => b.is_up(),
            Backend::Redis(b) => b.is_up(),
        }
    }

    fn register_node(&self, node: Arc<dyn NodeControl>) {
        match &self.backend {
            Backend::Memory(b) => b.register_node(node),
            Backend::Redis(b) => b.register_node(node),
        }
    }

    async fn stats(&self) -> Result<Vec<NodeStats>, BrokerError> {
        match &self.backend {
            Backend::Memory(b) => b.stats().await,
            Backend::Redis(b) => b.stats().await,
        }
    }

    async fn disconnect(&self, sub: &str) -> Result<usize, BrokerError> {
        match &self.backend {
            Backend::Memory(b) => b.disconnect(sub).await,
            Backend::Redis(b) => b.disconnect(sub).await,
        }
    }

    async fn revoke(&self, revocation: &Revocation) -> Result<usize, BrokerError> {
        match &self.backend {
            Backend::Memory(b) => b.revoke(revocation).await,
            Backend::Redis(b) => b.revoke(revocation).await,
        }
    }

    fn join(
        &self,
        topic: &Topic,
        member: Member,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        match &self.backend {
            Backend::Memory(b) => Either::Left(b.join(topic, member)),
            Backend::Redis(b) => Either::Right(b.join(topic, member)),
        }
    }

    fn admit(
        &self,
        sub: &str,
        limit: u32,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send + 'static {
        match &self.backend {
            Backend::Memory(b) => Either::Left(b.admit(sub, limit)),
            Backend::Redis(b) => Either::Right(b.admit(sub, limit)),
        }
    }

    fn release(&self, sub: &str) {
        match &self.backend {
            Backend::Memory(b) => b.release(sub),
            Backend::Redis(b) => b.release(sub),
        }
    }

    fn leave(&self, topic: &Topic, session: &str) {
        match &self.backend {
            Backend::Memory(b) => b.leave(topic, session),
            Backend::Redis(b) => b.leave(topic, session),
        }
    }

    async fn members(
        &self,
        topic: &Topic,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, BrokerError> {
        match &self.backend {
            Backend::Memory(b) => b.members(topic, cursor, limit).await,
            Backend::Redis(b) => b.members(topic, cursor, limit).await,
        }
    }

    fn session_opened(&self, open: SessionOpen) {
        match &self.backend {
            Backend::Memory(b) => b.session_opened(open),
            Backend::Redis(b) => b.session_opened(open),
        }
    }

    fn session_closed(&self, session: &str, data: Option<String>) {
        match &self.backend {
            Backend::Memory(b) => b.session_closed(session, data),
            Backend::Redis(b) => b.session_closed(session, data),
        }
    }

    async fn webhooks_lease(&self, holder: &str, ttl: Duration) -> Result<bool, BrokerError> {
        match &self.backend {
            Backend::Memory(b) => b.webhooks_lease(holder, ttl).await,
            Backend::Redis(b) => b.webhooks_lease(holder, ttl).await,
        }
    }

    async fn webhooks_read(&self, max: usize) -> Result<(Vec<Queued>, u64), BrokerError> {
        match &self.backend {
            Backend::Memory(b) => b.webhooks_read(max).await,
            Backend::Redis(b) => b.webhooks_read(max).await,
        }
    }

    async fn webhooks_done(&self, ids: &[String]) -> Result<(), BrokerError> {
        match &self.backend {
            Backend::Memory(b) => b.webhooks_done(ids).await,
            Backend::Redis(b) => b.webhooks_done(ids).await,
        }
    }

    fn webhooks_dropped(&self) -> [u64; Kind::ALL.len()] {
        match &self.backend {
            Backend::Memory(b) => b.webhooks_dropped(),
            Backend::Redis(b) => b.webhooks_dropped(),
        }
    }
}
