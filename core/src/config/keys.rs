//! The table of every configuration key (contract §2): its name, kind,
//! default, whether it is secret, and its help line.
//!
//! Everything else is derived from this one table, so nothing can drift
//! apart: the command-line flag and the environment variable of each key,
//! the `--help` text, the built-in defaults the loader starts from, the
//! check for unknown keys in a file, and what `check-config` prints.

/// What a key holds; decides how its text is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `host:port`.
    Addr,
    /// Free text.
    Text,
    /// `true` / `false`.
    Bool,
    /// A count.
    Count,
    /// Bytes: `65536`, `64KiB`, `1MiB`.
    Size,
    /// `25s`, `500ms`, `10m`, `1h`; a bare number is seconds.
    Duration,
    /// Comma-separated in flags and the environment, an array in the file.
    List,
    /// A file path.
    Path,
    /// A list of tables: `[[section.key]]` entries in the file, a JSON array
    /// of objects in flags and the environment.
    Tables,
}

/// One configuration key.
#[derive(Debug)]
pub struct KeySpec {
    /// Dotted name, as in the file: `limits.max_connections`.
    pub key: &'static str,
    /// How the value is written.
    pub kind: Kind,
    /// Default, written as a user would; `None` = unset.
    pub default: Option<&'static str>,
    /// Masked by `check-config` and never logged.
    pub secret: bool,
    /// One line for `--help`.
    pub help: &'static str,
}

const fn key(
    key: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    help: &'static str,
) -> KeySpec {
    KeySpec {
        key,
        kind,
        default,
        secret: false,
        help,
    }
}

const fn secret(key: &'static str, kind: Kind, help: &'static str) -> KeySpec {
    KeySpec {
        key,
        kind,
        default: None,
        secret: true,
        help,
    }
}

/// Every configuration key, in the order of the contract's table.
pub static KEYS: &[KeySpec] = &[
    key(
        "listen",
        Kind::Addr,
        Some("0.0.0.0:8080"),
        "public listener: /ws, /healthz, /readyz, demo page",
    ),
    key(
        "admin_listen",
        Kind::Addr,
        Some("127.0.0.1:8081"),
        "internal listener: /v1 admin API, /metrics, /healthz, /readyz",
    ),
    key(
        "node_id",
        Kind::Text,
        None,
        "node name in welcome, logs, metrics and /v1/stats (default: hostname + random suffix)",
    ),
    secret(
        "redis_url",
        Kind::Text,
        "redis:// or rediss:// URL, or redis+sentinel://host:port[,host:port]/<master> (rediss+sentinel:// for TLS); set = cluster mode",
    ),
    key(
        "redis_cluster",
        Kind::Bool,
        Some("false"),
        "redis_url names a Redis Cluster; topics use sharded pub/sub",
    ),
    secret("jwt.hs256_secret", Kind::Text, "HS256 verification secret"),
    key(
        "jwt.public_key_file",
        Kind::Path,
        None,
        "PEM public key: RS256, ES256 or EdDSA",
    ),
    key(
        "jwt.jwks_file",
        Kind::Path,
        None,
        "JWKS document; keys are looked up by kid",
    ),
    key(
        "jwt.jwks_url",
        Kind::Text,
        None,
        "http(s) URL of a JWKS document, fetched at start-up and refreshed; an unknown kid triggers a refetch (at most every 10 s)",
    ),
    key(
        "jwt.jwks_refresh",
        Kind::Duration,
        Some("5m"),
        "how often jwt.jwks_url is fetched again",
    ),
    key(
        "jwt.issuer",
        Kind::Text,
        None,
        "when set, tokens must carry this iss",
    ),
    key(
        "jwt.audience",
        Kind::Text,
        None,
        "when set, tokens must carry this aud",
    ),
    key(
        "jwt.leeway",
        Kind::Duration,
        Some("30s"),
        "clock skew allowed on exp and nbf",
    ),
    key(
        "jwt.max_lifetime",
        Kind::Duration,
        Some("7d"),
        "longest a token may live (exp after iat, or after now without iat); revocations are kept at least this long",
    ),
    secret(
        "admin.api_keys",
        Kind::List,
        "keys accepted as 'Authorization: Bearer <key>' on the admin API, each with every scope",
    ),
    secret(
        "admin.keys",
        Kind::Tables,
        "named admin keys with scopes: [[admin.keys]] name, key, scopes (publish, history, presence, stats, disconnect, revoke), topics (publish patterns)",
    ),
    key(
        "auth.connect_timeout",
        Kind::Duration,
        Some("5s"),
        "how long a connection that gave no token may take to send its connect frame (then 4005)",
    ),
    key(
        "heartbeat.interval",
        Kind::Duration,
        Some("25s"),
        "the server sends a WebSocket Ping this often",
    ),
    key(
        "heartbeat.timeout",
        Kind::Duration,
        Some("60s"),
        "no frame from a client for this long closes it (4002)",
    ),
    key(
        "limits.max_connections",
        Kind::Count,
        Some("100000"),
        "sessions per node; above it handshakes get 503",
    ),
    key(
        "limits.max_message_size",
        Kind::Size,
        Some("64KiB"),
        "largest client message and largest published data",
    ),
    key(
        "limits.max_subscriptions",
        Kind::Count,
        Some("256"),
        "topics per connection",
    ),
    key(
        "limits.max_pending_handshakes",
        Kind::Count,
        Some("1024"),
        "public connections accepted but not yet handshaken; when full, the one waiting longest on its client is closed to make room, or, if all are being worked on, a new one gets a quick 503 (reconnect storms)",
    ),
    key(
        "limits.max_connections_per_user",
        Kind::Count,
        Some("0"),
        "sessions one sub may hold across the whole cluster (0 = no limit); the one over it gets 429",
    ),
    key(
        "limits.max_json_depth",
        Kind::Count,
        Some("32"),
        "deepest nesting of arrays/objects in published data",
    ),
    key(
        "limits.client_queue",
        Kind::Count,
        Some("1024"),
        "messages queued for one client; overflow closes it (4004)",
    ),
    key(
        "limits.client_rate",
        Kind::Count,
        Some("50"),
        "client data frames per second (token bucket refill)",
    ),
    key(
        "limits.client_burst",
        Kind::Count,
        Some("100"),
        "token bucket size",
    ),
    key(
        "history.size",
        Kind::Count,
        Some("1000"),
        "messages kept per topic for recovery",
    ),
    key(
        "history.ttl",
        Kind::Duration,
        Some("10m"),
        "how long a topic's history is kept after its last publish",
    ),
    key(
        "publish.durability",
        Kind::Text,
        Some("leader"),
        "leader: acknowledged once the Redis primary applied it; replicated: once publish.min_replicas replicas confirmed it (WAIT)",
    ),
    key(
        "publish.min_replicas",
        Kind::Count,
        Some("1"),
        "replicas that must confirm a publish with durability = replicated",
    ),
    key(
        "publish.replication_timeout",
        Kind::Duration,
        Some("200ms"),
        "how long a replicated publish waits for its replicas before answering 503",
    ),
    key(
        "publish.idempotency_window",
        Kind::Duration,
        Some("5m"),
        "how long an idempotency_key is remembered",
    ),
    key(
        "presence.topics",
        Kind::List,
        Some(""),
        "topic patterns whose subscribers are tracked for presence",
    ),
    key(
        "presence.timeout",
        Kind::Duration,
        Some("30s"),
        "a member of a node that stopped reporting (crashed, cut off) leaves within this long",
    ),
    key(
        "proxy.connect_url",
        Kind::Text,
        None,
        "backend URL that authenticates connections without a JWT (cookies, API keys)",
    ),
    key(
        "proxy.headers",
        Kind::List,
        Some("Cookie,Authorization,Origin,User-Agent,X-Forwarded-For"),
        "handshake headers sent to proxy.connect_url",
    ),
    key(
        "proxy.subscribe_url",
        Kind::Text,
        None,
        "backend URL asked before a subscribe to a topic of proxy.subscribe_topics",
    ),
    key(
        "proxy.subscribe_topics",
        Kind::List,
        Some(""),
        "topic patterns whose subscribes ask proxy.subscribe_url",
    ),
    key(
        "proxy.publish_url",
        Kind::Text,
        None,
        "backend URL a client publish to a topic of proxy.publish_topics is sent to first (it may refuse or replace data)",
    ),
    key(
        "proxy.publish_topics",
        Kind::List,
        Some(""),
        "topic patterns whose client publishes go through proxy.publish_url",
    ),
    key(
        "proxy.timeout",
        Kind::Duration,
        Some("1s"),
        "longest a backend hook call may take",
    ),
    key(
        "webhooks.url",
        Kind::Text,
        None,
        "backend URL lifecycle events are POSTed to (session, presence, topic)",
    ),
    secret(
        "webhooks.secret",
        Kind::Text,
        "signs every webhook body (Herald-Signature, HMAC-SHA256); at least 16 characters",
    ),
    key(
        "webhooks.events",
        Kind::List,
        Some(""),
        "event types sent (session.connected, presence.join, ...); empty = all",
    ),
    key(
        "webhooks.retry_for",
        Kind::Duration,
        Some("1h"),
        "an event is retried with backoff until the backend takes it, for at most this long",
    ),
    key(
        "webhooks.max_queue",
        Kind::Count,
        Some("100000"),
        "most events waiting to be sent; beyond it the oldest are dropped (counted and logged)",
    ),
    key(
        "webhooks.vacated_delay",
        Kind::Duration,
        Some("5s"),
        "how long a topic stays empty before topic.vacated",
    ),
    key(
        "compat.centrifugo",
        Kind::Bool,
        Some("false"),
        "also serve /connection/websocket with Centrifugo's client protocol (JSON and Protobuf), for its SDKs",
    ),
    key(
        "listen_backlog",
        Kind::Count,
        Some("0"),
        "kernel accept queue of the public listener; 0 = the system maximum (net.core.somaxconn)",
    ),
    key(
        "io_uring",
        Kind::Bool,
        Some("true"),
        "on Linux, send a quiet topic's inline writes through io_uring (one system call per 64 sockets); false: one send per socket",
    ),
    key(
        "compression",
        Kind::Bool,
        Some("false"),
        "negotiate permessage-deflate with clients that offer it",
    ),
    key(
        "allowed_origins",
        Kind::List,
        Some(""),
        "when non-empty, handshakes from other Origins get 403",
    ),
    key(
        "tls.cert_file",
        Kind::Path,
        None,
        "PEM certificate chain: serve wss:// on the public listener",
    ),
    key(
        "tls.key_file",
        Kind::Path,
        None,
        "PEM private key for tls.cert_file",
    ),
    key(
        "drain_timeout",
        Kind::Duration,
        Some("30s"),
        "graceful shutdown budget",
    ),
    key(
        "log_level",
        Kind::Text,
        Some("info"),
        "log filter: a level, or target=level pairs (herald_gateway=debug,info)",
    ),
    key(
        "log_format",
        Kind::Text,
        Some("text"),
        "text, or json (one object per line)",
    ),
    key(
        "test_echo_endpoint",
        Kind::Bool,
        Some("false"),
        "test-only: serve an unauthenticated /echo for the WebSocket conformance suite; never in production",
    ),
];

impl KeySpec {
    /// The command-line flag: `--` and the key with `.` and `_` written `-`.
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace(['.', '_'], "-"))
    }

    /// The environment variable: `HERALD_` + upper-snake, nested with `__`.
    pub fn env_var(&self) -> String {
        format!(
            "HERALD_{}",
            self.key.replace('.', "__").to_ascii_uppercase()
        )
    }
}

/// The key named `key` (dotted), if it exists.
pub fn find(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.key == key)
}

impl Kind {
    /// How the value is shown in `--help`.
    pub fn value_name(self) -> &'static str {
        match self {
            Kind::Addr => "ADDR",
            Kind::Text => "TEXT",
            Kind::Bool => "BOOL",
            Kind::Count => "N",
            Kind::Size => "SIZE",
            Kind::Duration => "DURATION",
            Kind::List => "LIST",
            Kind::Path => "PATH",
            Kind::Tables => "JSON",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_its_own_flag_and_env_name() {
        let k = find("limits.max_connections").unwrap();
        assert_eq!(k.flag(), "--limits-max-connections");
        assert_eq!(k.env_var(), "HERALD_LIMITS__MAX_CONNECTIONS");
        assert_eq!(find("redis_url").unwrap().flag(), "--redis-url");
        assert_eq!(find("admin.api_keys").unwrap().flag(), "--admin-api-keys");
        let flags: std::collections::HashSet<String> = KEYS.iter().map(KeySpec::flag).collect();
        assert_eq!(flags.len(), KEYS.len(), "two keys share a flag");
        assert!(KEYS.iter().all(|k| !(k.secret && k.default.is_some())));
    }
}
