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
use super::{
    Broker, BrokerError, HistoryPage, NodeControl, NodeStats, Position, Publication, Ready,
};

/// Any of the brokers a node can run with.
pub enum AnyBroker {
    /// The embedded single-node broker.
    Memory(Arc<MemoryBroker>),
    /// Redis or Redis Cluster: one node of many.
    Redis(Arc<RedisBroker>),
}

impl Broker for AnyBroker {
    async fn publish(&self, batch: Vec<Publication>) -> Result<Vec<Position>, BrokerError> {
        match self {
            AnyBroker::Memory(b) => b.publish(batch).await,
            AnyBroker::Redis(b) => b.publish(batch).await,
        }
    }

    fn subscribe(&self, topic: &Topic) -> Ready {
        match self {
            AnyBroker::Memory(b) => b.subscribe(topic),
            AnyBroker::Redis(b) => b.subscribe(topic),
        }
    }

    fn unsubscribe(&self, topic: &Topic) {
        match self {
            AnyBroker::Memory(b) => b.unsubscribe(topic),
            AnyBroker::Redis(b) => b.unsubscribe(topic),
        }
    }

    async fn history(
        &self,
        topic: &Topic,
        since: Option<&str>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        match self {
            AnyBroker::Memory(b) => b.history(topic, since, limit).await,
            AnyBroker::Redis(b) => b.history(topic, since, limit).await,
        }
    }

    fn is_up(&self) -> bool {
        match self {
            AnyBroker::Memory(b) => b.is_up(),
            AnyBroker::Redis(b) => b.is_up(),
        }
    }

    fn register_node(&self, node: Arc<dyn NodeControl>) {
        match self {
            AnyBroker::Memory(b) => b.register_node(node),
            AnyBroker::Redis(b) => b.register_node(node),
        }
    }

    async fn stats(&self) -> Result<Vec<NodeStats>, BrokerError> {
        match self {
            AnyBroker::Memory(b) => b.stats().await,
            AnyBroker::Redis(b) => b.stats().await,
        }
    }

    async fn disconnect(&self, sub: &str) -> Result<usize, BrokerError> {
        match self {
            AnyBroker::Memory(b) => b.disconnect(sub).await,
            AnyBroker::Redis(b) => b.disconnect(sub).await,
        }
    }
}
