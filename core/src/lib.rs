//! What the gateway (`herald-gateway`) and the standalone admin API
//! (`herald-admin`) share: the configuration table, the broker seam with its
//! implementations, and the metrics registry.
//!
//! Nothing here knows about WebSockets or sessions; those live in `gateway`.
//! The HTTP toolbox both binaries serve with is [`http`].

pub mod backoff;
pub mod broker;
pub mod cli;
pub mod config;
pub mod http;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod publication;
pub mod tls;
pub mod webhooks;

pub use broker::memory::MemoryBroker;
pub use broker::{
    AnyBroker, Backend, Broker, BrokerError, BrokerSettings, Change, Event, EventSink, HistoryPage,
    LeaveCause, Member, MemberPage, NoSink, NodeControl, NodeStats, Position, Publication, Ready,
    Revocation,
};
pub use config::{Config, ConfigError, Secret};
pub use ids::{now_ms, random_hex, random_secret};
pub use metrics::Metrics;
pub use publication::{PublicationRules, PublishError};
