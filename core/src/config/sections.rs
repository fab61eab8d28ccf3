//! The typed configuration, one struct per subsystem, each read from its own
//! part of the merged sources and each checking its own rules.
//!
//! A section's fields are named as in the file (`[limits] client_queue`);
//! top-level keys are grouped by concern (`listen` and `admin_listen` under
//! [`ListenersConfig`], `redis_url` under [`RedisConfig`]). Every key has a
//! default in the key table or is optional here, so reading never invents a
//! value the table does not show.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::value::{addr, boolean, count, duration, list, opt_path, opt_text, size, text};
use super::{Check, ConfigError, Secret, Section};

pub(super) fn opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    text(d).map(|s| Some(Secret::new(s)))
}

/// This process: its name and its shutdown budget.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeConfig {
    /// `node_id`: shown in `welcome`, logs, metrics and `/v1/stats`; a
    /// hostname plus a random suffix when unset.
    #[serde(
        rename = "node_id",
        default = "default_node_id",
        deserialize_with = "node_id"
    )]
    pub id: String,
    /// `drain_timeout`: the graceful shutdown budget.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

impl Section for NodeConfig {
    const PATH: Option<&'static str> = None;
}

fn node_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = text(d)?;
    if id.is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(id)
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".to_owned());
    format!("{host}-{}", crate::random_hex(3))
}

/// The gateway's listeners and what they negotiate.
#[derive(Debug, Clone, Deserialize)]
pub struct ListenersConfig {
    /// `listen`: `/ws`, health, demo page.
    #[serde(deserialize_with = "addr")]
    pub listen: SocketAddr,
    /// `admin_listen`: `/v1`, `/metrics`, health.
    #[serde(deserialize_with = "addr")]
    pub admin_listen: SocketAddr,
    /// `compression`: negotiate permessage-deflate.
    #[serde(deserialize_with = "boolean")]
    pub compression: bool,
    /// `allowed_origins`: accepted `Origin` values; empty = any.
    #[serde(deserialize_with = "list")]
    pub allowed_origins: Vec<String>,
    /// `test_echo_endpoint`: serve `/echo` (conformance tests only).
    #[serde(deserialize_with = "boolean")]
    pub test_echo_endpoint: bool,
    /// `listen_backlog`: the public listener's accept queue; 0 = the
    /// system maximum.
    #[serde(deserialize_with = "count")]
    pub listen_backlog: u32,
    /// `io_uring`: batch a fan-out's inline writes through io_uring where
    /// the kernel offers it.
    #[serde(deserialize_with = "boolean")]
    pub io_uring: bool,
}

impl Section for ListenersConfig {
    const PATH: Option<&'static str> = None;
}

impl ListenersConfig {
    /// The accept queue to ask for: `listen_backlog`, or the system's
    /// maximum (`/proc/sys/net/core/somaxconn`; 4096 if unreadable), which
    /// the kernel caps it to anyway.
    pub fn backlog(&self) -> u32 {
        if self.listen_backlog > 0 {
            return self.listen_backlog;
        }
        std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096)
    }
}

/// `[tls]`: TLS on the public listener.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TlsConfig {
    /// PEM certificate chain.
    #[serde(default, deserialize_with = "opt_path")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    #[serde(default, deserialize_with = "opt_path")]
    pub key_file: Option<PathBuf>,
}

impl Section for TlsConfig {
    const PATH: Option<&'static str> = Some("tls");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(c.invalid(
                "tls.key_file",
                "tls.cert_file and tls.key_file must be set together",
            )),
            (None, Some(_)) => Err(c.invalid(
                "tls.cert_file",
                "tls.cert_file and tls.key_file must be set together",
            )),
            _ => Ok(()),
        }
    }
}

/// The broker: Redis when `redis_url` is set, else the embedded one.
#[derive(Debug, Clone, Deserialize)]
pub struct RedisConfig {
    /// `redis_url`: one URL, or comma-separated seeds of a cluster.
    #[serde(rename = "redis_url", default, deserialize_with = "opt_secret")]
    pub url: Option<Secret>,
    /// `redis_cluster`: the URL names a Redis Cluster.
    #[serde(rename = "redis_cluster", deserialize_with = "boolean")]
    pub cluster: bool,
}

impl Section for RedisConfig {
    const PATH: Option<&'static str> = None;

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        let url = url.expose().trim();
        if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://") {
            if self.cluster {
                return Err(c.invalid(
                    "redis_cluster",
                    "a Sentinel redis_url names one primary, not a Redis Cluster",
                ));
            }
            return Ok(());
        }
        let ok = url
            .split(',')
            .all(|u| u.trim().starts_with("redis://") || u.trim().starts_with("rediss://"));
        if !ok {
            return Err(c.invalid(
                "redis_url",
                "must start with redis://, rediss://, redis+sentinel:// or rediss+sentinel://",
            ));
        }
        Ok(())
    }
}

/// How a publication is acknowledged: by the Redis primary alone, or once
/// replicas confirmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged once the primary applied it.
    Leader,
    /// Acknowledged once `min_replicas` replicas confirmed it (`WAIT`).
    Replicated,
}

fn durability<'de, D: Deserializer<'de>>(d: D) -> Result<Durability, D::Error> {
    match text(d)?.as_str() {
        "leader" => Ok(Durability::Leader),
        "replicated" => Ok(Durability::Replicated),
        other => Err(serde::de::Error::custom(format!(
            "'{other}' is not leader or replicated"
        ))),
    }
}

/// `[publish]`: how publications are acknowledged and deduplicated.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PublishConfig {
    /// `leader` or `replicated`.
    #[serde(deserialize_with = "durability")]
    pub durability: Durability,
    /// Replicas that must confirm a replicated publish.
    #[serde(deserialize_with = "count")]
    pub min_replicas: u32,
    /// How long a replicated publish waits for them.
    #[serde(deserialize_with = "duration")]
    pub replication_timeout: Duration,
    /// How long an `idempotency_key` is remembered.
    #[serde(deserialize_with = "duration")]
    pub idempotency_window: Duration,
}

impl Default for PublishConfig {
    /// The key table's defaults (a test checks they agree).
    fn default() -> PublishConfig {
        PublishConfig {
            durability: Durability::Leader,
            min_replicas: 1,
            replication_timeout: Duration::from_millis(200),
            idempotency_window: Duration::from_secs(300),
        }
    }
}

impl Section for PublishConfig {
    const PATH: Option<&'static str> = Some("publish");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.positive(
            "publish.idempotency_window",
            self.idempotency_window.is_zero(),
        )?;
        if self.durability == Durability::Replicated {
            c.positive("publish.min_replicas", self.min_replicas == 0)?;
            c.positive(
                "publish.replication_timeout",
                self.replication_timeout.is_zero(),
            )?;
        }
        Ok(())
    }
}

/// `[presence]`: which topics track who is subscribed, and how soon the
/// members of a node that stopped reporting leave.
#[derive(Debug, Clone, Deserialize)]
pub struct PresenceConfig {
    /// Topic patterns whose subscribers are members.
    #[serde(deserialize_with = "patterns")]
    pub topics: herald_protocol::Permissions,
    /// A member of a dead or cut-off node leaves within this long.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl PresenceConfig {
    /// Whether `topic`'s subscribers are tracked.
    pub fn tracks(&self, topic: &herald_protocol::Topic) -> bool {
        self.topics.allows(topic)
    }
}

impl Default for PresenceConfig {
    /// The key table's defaults (a test checks they agree).
    fn default() -> PresenceConfig {
        PresenceConfig {
            topics: herald_protocol::Permissions::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Shortest `presence.timeout`: nodes report a fifth of it apart, and a
/// report must fit in that with room to spare.
pub const MIN_PRESENCE_TIMEOUT: Duration = Duration::from_millis(500);

impl Section for PresenceConfig {
    const PATH: Option<&'static str> = Some("presence");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        if self.timeout < MIN_PRESENCE_TIMEOUT {
            return Err(c.invalid(
                "presence.timeout",
                format!("must be at least {MIN_PRESENCE_TIMEOUT:?}"),
            ));
        }
        Ok(())
    }
}

pub(super) fn patterns<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<herald_protocol::Permissions, D::Error> {
    let list = list(d)?;
    herald_protocol::Permissions::parse(list.iter().map(String::as_str))
        .map_err(|(p, e)| serde::de::Error::custom(format!("'{p}' is not a topic pattern: {e}")))
}

/// `[jwt]`: token verification (contract §4).
#[derive(Debug, Clone, Deserialize)]
pub struct JwtConfig {
    /// HS256 secret.
    #[serde(default, deserialize_with = "opt_secret")]
    pub hs256_secret: Option<Secret>,
    /// PEM public key.
    #[serde(default, deserialize_with = "opt_path")]
    pub public_key_file: Option<PathBuf>,
    /// JWKS document.
    #[serde(default, deserialize_with = "opt_path")]
    pub jwks_file: Option<PathBuf>,
    /// JWKS document served over HTTP(S), kept fresh (contract §10.9).
    #[serde(default, deserialize_with = "opt_text")]
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again.
    #[serde(deserialize_with = "duration")]
    pub jwks_refresh: Duration,
    /// Required `iss`.
    #[serde(default, deserialize_with = "opt_text")]
    pub issuer: Option<String>,
    /// Required `aud`.
    #[serde(default, deserialize_with = "opt_text")]
    pub audience: Option<String>,
    /// Allowed clock skew.
    #[serde(deserialize_with = "duration")]
    pub leeway: Duration,
    /// Longest a token may live: a longer one is refused, and a revocation
    /// is kept at least this long, so it outlives every token it covers.
    #[serde(deserialize_with = "duration")]
    pub max_lifetime: Duration,
}

impl JwtConfig {
    /// Whether any verification key is configured.
    pub fn has_key(&self) -> bool {
        self.hs256_secret.is_some()
            || self.public_key_file.is_some()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
    }
}

impl Section for JwtConfig {
    const PATH: Option<&'static str> = Some("jwt");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        if self
            .hs256_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 16)
        {
            return Err(c.invalid("jwt.hs256_secret", "must be at least 16 bytes"));
        }
        c.positive("jwt.max_lifetime", self.max_lifetime.is_zero())?;
        c.http_url("jwt.jwks_url", self.jwks_url.as_deref())?;
        if self.jwks_refresh < Duration::from_secs(10) {
            return Err(c.invalid("jwt.jwks_refresh", "must be at least 10s"));
        }
        Ok(())
    }
}

/// `[auth]`: how a connection authenticates besides its handshake.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct AuthConfig {
    /// How long a connection that gave no token may take to send its
    /// `connect` frame (contract §10.4).
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
}

impl Section for AuthConfig {
    const PATH: Option<&'static str> = Some("auth");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.positive("auth.connect_timeout", self.connect_timeout.is_zero())
    }
}

/// `[heartbeat]`: connection liveness.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct HeartbeatConfig {
    /// Ping period.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Silence that closes a connection.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Section for HeartbeatConfig {
    const PATH: Option<&'static str> = Some("heartbeat");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.positive("heartbeat.interval", self.interval.is_zero())?;
        c.positive("heartbeat.timeout", self.timeout.is_zero())?;
        if self.timeout <= self.interval {
            return Err(c.invalid(
                "heartbeat.timeout",
                "must be longer than heartbeat.interval, or idle clients are closed between pings",
            ));
        }
        Ok(())
    }
}

/// What a publication may carry; the part of `[limits]` every process that
/// accepts publications (gateway and `herald-admin`) reads.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct PayloadLimits {
    /// Largest client message and published `data`, in bytes.
    #[serde(deserialize_with = "size")]
    pub max_message_size: usize,
    /// Deepest nesting of arrays and objects in published `data`.
    #[serde(deserialize_with = "count")]
    pub max_json_depth: usize,
}

impl PayloadLimits {
    /// The rules every publication is held to.
    pub fn publication_rules(&self) -> crate::PublicationRules {
        crate::PublicationRules {
            max_data: self.max_message_size,
            max_depth: self.max_json_depth,
        }
    }
}

impl Section for PayloadLimits {
    const PATH: Option<&'static str> = Some("limits");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        if !(128..=(1 << 30)).contains(&self.max_message_size) {
            return Err(c.invalid("limits.max_message_size", "must be between 128B and 1GiB"));
        }
        if !(1..=1000).contains(&self.max_json_depth) {
            return Err(c.invalid("limits.max_json_depth", "must be between 1 and 1000"));
        }
        Ok(())
    }
}

/// `[limits]`: per-node and per-connection limits of a gateway.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LimitsConfig {
    /// Sessions per node.
    #[serde(deserialize_with = "count")]
    pub max_connections: usize,
    /// Largest client message and published `data`, in bytes.
    #[serde(deserialize_with = "size")]
    pub max_message_size: usize,
    /// Deepest nesting of arrays and objects in published `data`.
    #[serde(deserialize_with = "count")]
    pub max_json_depth: usize,
    /// Topics per connection.
    #[serde(deserialize_with = "count")]
    pub max_subscriptions: usize,
    /// Sessions of one `sub` across the cluster; 0 = no limit.
    #[serde(deserialize_with = "count")]
    pub max_connections_per_user: u32,
    /// Public connections accepted but not yet handshaken before new ones
    /// are shed.
    #[serde(deserialize_with = "count")]
    pub max_pending_handshakes: usize,
    /// Messages queued per client.
    #[serde(deserialize_with = "count")]
    pub client_queue: usize,
    /// Token bucket refill per second.
    #[serde(deserialize_with = "count")]
    pub client_rate: u32,
    /// Token bucket size.
    #[serde(deserialize_with = "count")]
    pub client_burst: u32,
}

impl LimitsConfig {
    /// The payload part.
    pub fn payload(&self) -> PayloadLimits {
        PayloadLimits {
            max_message_size: self.max_message_size,
            max_json_depth: self.max_json_depth,
        }
    }

    /// The rules every publication is held to.
    pub fn publication_rules(&self) -> crate::PublicationRules {
        self.payload().publication_rules()
    }
}

impl Section for LimitsConfig {
    const PATH: Option<&'static str> = Some("limits");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.positive("limits.max_connections", self.max_connections == 0)?;
        c.positive("limits.max_subscriptions", self.max_subscriptions == 0)?;
        c.positive(
            "limits.max_pending_handshakes",
            self.max_pending_handshakes == 0,
        )?;
        c.positive("limits.client_queue", self.client_queue == 0)?;
        c.positive("limits.client_rate", self.client_rate == 0)?;
        c.positive("limits.client_burst", self.client_burst == 0)?;
        Section::check(&mut self.payload(), c)
    }
}

/// `[history]`: per-topic history for recovery.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct HistoryConfig {
    /// Messages kept per topic.
    #[serde(deserialize_with = "count")]
    pub size: usize,
    /// Kept this long after the topic's last publish.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
}

impl Section for HistoryConfig {
    const PATH: Option<&'static str> = Some("history");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.positive("history.ttl", self.ttl.is_zero())?;
        if self.size > 1_000_000 {
            return Err(c.invalid("history.size", "must be at most 1000000"));
        }
        Ok(())
    }
}

/// `[compat]`: endpoints that speak another product's client protocol.
#[derive(Debug, Clone, Deserialize)]
pub struct CompatConfig {
    /// `compat.centrifugo`: serve `/connection/websocket` with
    /// Centrifugo's client protocol (contract §10.7).
    #[serde(deserialize_with = "boolean")]
    pub centrifugo: bool,
}

impl Section for CompatConfig {
    const PATH: Option<&'static str> = Some("compat");
}

/// `log_level` and `log_format`.
#[derive(Debug, Clone, Deserialize)]
pub struct LogConfig {
    /// Log filter.
    #[serde(rename = "log_level", deserialize_with = "text")]
    pub level: String,
    /// `log_format`: `text` or `json`.
    #[serde(rename = "log_format", deserialize_with = "text")]
    pub format: String,
}

impl LogConfig {
    /// Whether to emit JSON lines.
    pub fn json(&self) -> bool {
        self.format == "json"
    }
}

impl Section for LogConfig {
    const PATH: Option<&'static str> = None;

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        if !matches!(self.format.as_str(), "text" | "json") {
            return Err(c.invalid("log_format", "must be text or json"));
        }
        crate::logging::check(&self.level).map_err(|e| c.invalid("log_level", e))
    }
}
