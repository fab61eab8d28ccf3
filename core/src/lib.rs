//! What the gateway (`herald-gateway`) and the standalone admin API
//! (`herald-admin`) share: the configuration table, the broker seam with its
//! implementations, and the metrics registry.
//!
//! Nothing here knows about WebSockets or sessions; those live in `gateway`.
//! The HTTP toolbox both binaries serve with is [`http`].

pub mod broker;
pub mod cli;
pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod publication;

pub use broker::memory::MemoryBroker;
pub use broker::{
    AnyBroker, Backend, Broker, BrokerError, BrokerSettings, Change, Event, EventSink, HistoryPage,
    LeaveCause, Member, MemberPage, NoSink, NodeControl, NodeStats, Position, Publication, Ready,
    Revocation,
};
pub use config::{Config, ConfigError, Secret};
pub use metrics::Metrics;
pub use publication::{PublicationRules, PublishError};

/// `n` random bytes as lowercase hex, for ids, secrets and suffixes.
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
