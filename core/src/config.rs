//! Configuration (contract §2): one table of keys, four sources, one precedence.
//!
//! Every key is declared once in [`KEYS`], with its default, its kind and its
//! help line; the flag name, the environment variable and the file path are
//! derived from the key, so they cannot drift apart. Sources are merged as
//! flag > environment > file > default, then parsed into the typed [`Config`].
//! The environment is passed in as a map, never read here, so tests need no
//! global state.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "herald.toml";

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
        "redis:// or rediss:// URL; set = cluster mode",
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
    secret(
        "admin.api_keys",
        Kind::List,
        "keys accepted as 'Authorization: Bearer <key>' on the admin API",
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

/// The key a command-line flag sets (`--heartbeat-interval`), if any.
pub fn key_for_flag(flag: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.flag() == flag)
}

fn spec(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.key == key)
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key nobody knows: usually a typo.
    #[error("unknown key '{key}' in {origin}")]
    UnknownKey {
        /// The dotted key.
        key: String,
        /// Where it was found.
        origin: String,
    },
    /// A value that does not parse or is out of range.
    #[error("invalid value for '{key}' (from {source_name}): {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// Where the value came from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A setting the chosen mode cannot run without.
    #[error("{0}")]
    Missing(String),
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable (its name).
    Env(String),
    /// The configuration file.
    File,
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File => f.write_str("file"),
            Source::Default => f.write_str("default"),
        }
    }
}

#[derive(Debug, Clone)]
enum Raw {
    Text(String),
    Toml(toml::Value),
}

/// The sources a configuration is built from.
#[derive(Debug, Default)]
pub struct Sources {
    /// `(key, value)` pairs from command-line flags, in order; later wins.
    pub flags: Vec<(&'static str, String)>,
    /// The process environment (only `HERALD_*` entries are looked at).
    pub env: HashMap<String, String>,
    /// `--config PATH` if given.
    pub config_file: Option<PathBuf>,
    /// Without `config_file`, read `herald.toml` from the working directory if
    /// it exists (what the commands do; tests and embedders leave this off).
    pub use_default_file: bool,
}

/// A string that must not be printed or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used, never to print.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// JWT verification (contract §4).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// HS256 secret.
    pub hs256_secret: Option<Secret>,
    /// PEM public key.
    pub public_key_file: Option<PathBuf>,
    /// JWKS document.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Allowed clock skew.
    pub leeway: Duration,
}

impl LimitsConfig {
    /// The rules every publication is held to.
    pub fn publication_rules(&self) -> crate::PublicationRules {
        crate::PublicationRules {
            max_data: self.max_message_size,
            max_depth: self.max_json_depth,
        }
    }
}

impl JwtConfig {
    /// Whether any verification key is configured.
    pub fn has_key(&self) -> bool {
        self.hs256_secret.is_some() || self.public_key_file.is_some() || self.jwks_file.is_some()
    }
}

/// Admin API access.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// Accepted bearer keys.
    pub api_keys: Vec<Secret>,
}

/// Connection liveness.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatConfig {
    /// Ping period.
    pub interval: Duration,
    /// Silence that closes a connection.
    pub timeout: Duration,
}

/// Per-node and per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    /// Sessions per node.
    pub max_connections: usize,
    /// Largest client message and published `data`, in bytes.
    pub max_message_size: usize,
    /// Topics per connection.
    pub max_subscriptions: usize,
    /// Deepest nesting of arrays and objects in published `data`.
    pub max_json_depth: usize,
    /// Messages queued per client.
    pub client_queue: usize,
    /// Token bucket refill per second.
    pub client_rate: u32,
    /// Token bucket size.
    pub client_burst: u32,
}

/// Per-topic history for recovery.
#[derive(Debug, Clone, Copy)]
pub struct HistoryConfig {
    /// Messages kept per topic.
    pub size: usize,
    /// Kept this long after the topic's last publish.
    pub ttl: Duration,
}

/// TLS on the public listener.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
}

/// The typed, validated configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// This node's name.
    pub node_id: String,
    /// Redis URL(s); `None` = memory broker.
    pub redis_url: Option<Secret>,
    /// `redis_url` is a Redis Cluster.
    pub redis_cluster: bool,
    /// JWT verification.
    pub jwt: JwtConfig,
    /// Admin API access.
    pub admin: AdminConfig,
    /// Connection liveness.
    pub heartbeat: HeartbeatConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// History for recovery.
    pub history: HistoryConfig,
    /// permessage-deflate.
    pub compression: bool,
    /// Accepted `Origin` values; empty = any.
    pub allowed_origins: Vec<String>,
    /// TLS on the public listener.
    pub tls: TlsConfig,
    /// Graceful shutdown budget.
    pub drain_timeout: Duration,
    /// Log filter.
    pub log_level: String,
    /// Emit JSON log lines.
    pub log_json: bool,
    /// Serve `/echo` (conformance tests only).
    pub test_echo_endpoint: bool,
}

/// A loaded configuration with the provenance of each value, for `check-config`.
#[derive(Debug)]
pub struct Loaded {
    /// The typed configuration.
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    effective: Vec<(&'static KeySpec, Option<String>, Source)>,
}

impl Loaded {
    /// Every key with its effective value (secrets masked) and its source.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (spec, value, source) in &self.effective {
            let shown = match value {
                None => "(unset)".to_owned(),
                Some(_) if spec.secret => "\"****\"".to_owned(),
                Some(v) => v.clone(),
            };
            out.push_str(&format!("{} = {shown}  # {source}\n", spec.key));
        }
        out
    }
}

impl Config {
    /// Builds a configuration from defaults only (plus `node_id`), for tests and
    /// embedding. Fields can then be set directly.
    pub fn defaults() -> Config {
        match load(&Sources::default()) {
            Ok(loaded) => loaded.config,
            // The defaults are constants covered by a unit test.
            Err(e) => unreachable!("built-in defaults are invalid: {e}"),
        }
    }

    /// Checks the settings a serving node needs beyond what parsing checks.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] naming the setting to add.
    pub fn require_keys(&self) -> Result<(), ConfigError> {
        if !self.jwt.has_key() {
            return Err(ConfigError::Missing(
                "no JWT verification key: set jwt.hs256_secret, jwt.public_key_file or jwt.jwks_file (or run with --dev)".to_owned(),
            ));
        }
        self.require_admin_keys()
    }

    /// Checks that the admin API can authenticate anyone.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] naming `admin.api_keys`.
    pub fn require_admin_keys(&self) -> Result<(), ConfigError> {
        if self.admin.api_keys.is_empty() {
            return Err(ConfigError::Missing(
                "no admin API key: set admin.api_keys (herald-gateway also accepts --dev)"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            // A table is a section unless the key itself names a value.
            toml::Value::Table(t) if spec(&path).is_none() => flatten(&path, t, out),
            other => out.push((path, other.clone())),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<(String, toml::Value)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    let mut out = Vec::new();
    flatten("", &table, &mut out);
    for (k, _) in &out {
        if spec(k).is_none() {
            return Err(ConfigError::UnknownKey {
                key: k.clone(),
                origin: path.display().to_string(),
            });
        }
    }
    Ok(out)
}

/// Merges the sources and parses the result.
///
/// # Errors
/// A [`ConfigError`] naming the file, the key or the value at fault.
pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
    let file = match &sources.config_file {
        Some(path) => Some(path.clone()),
        None => {
            let default = PathBuf::from(DEFAULT_CONFIG_FILE);
            (sources.use_default_file && default.is_file()).then_some(default)
        }
    };
    let file_values = match &file {
        Some(path) => read_file(path)?,
        None => Vec::new(),
    };

    let mut resolved: BTreeMap<&'static str, (Raw, Source)> = BTreeMap::new();
    for spec in KEYS {
        let from_flag = sources.flags.iter().rev().find(|(k, _)| *k == spec.key);
        let env_name = spec.env_var();
        let value = if let Some((_, v)) = from_flag {
            Some((Raw::Text(v.clone()), Source::Flag))
        } else if let Some(v) = sources.env.get(&env_name) {
            Some((Raw::Text(v.clone()), Source::Env(env_name)))
        } else if let Some((_, v)) = file_values.iter().find(|(k, _)| k == spec.key) {
            Some((Raw::Toml(v.clone()), Source::File))
        } else {
            spec.default
                .map(|d| (Raw::Text(d.to_owned()), Source::Default))
        };
        if let Some(v) = value {
            resolved.insert(spec.key, v);
        }
    }

    let mut r = Resolver {
        resolved,
        effective: Vec::new(),
    };
    let config = Config {
        listen: r.req("listen")?,
        admin_listen: r.req("admin_listen")?,
        node_id: match r.opt::<String>("node_id")? {
            Some(id) if !id.is_empty() => id,
            Some(_) => return Err(r.invalid("node_id", "must not be empty")),
            None => default_node_id(),
        },
        redis_url: r.opt::<String>("redis_url")?.map(Secret),
        redis_cluster: r.req("redis_cluster")?,
        jwt: JwtConfig {
            hs256_secret: r.opt::<String>("jwt.hs256_secret")?.map(Secret),
            public_key_file: r.opt("jwt.public_key_file")?,
            jwks_file: r.opt("jwt.jwks_file")?,
            issuer: r.opt("jwt.issuer")?,
            audience: r.opt("jwt.audience")?,
            leeway: r.req("jwt.leeway")?,
        },
        admin: AdminConfig {
            api_keys: r
                .opt::<Vec<String>>("admin.api_keys")?
                .unwrap_or_default()
                .into_iter()
                .map(Secret)
                .collect(),
        },
        heartbeat: HeartbeatConfig {
            interval: r.req("heartbeat.interval")?,
            timeout: r.req("heartbeat.timeout")?,
        },
        limits: LimitsConfig {
            max_connections: r.req("limits.max_connections")?,
            max_message_size: r.req::<Size>("limits.max_message_size")?.0,
            max_subscriptions: r.req("limits.max_subscriptions")?,
            max_json_depth: r.req("limits.max_json_depth")?,
            client_queue: r.req("limits.client_queue")?,
            client_rate: r.req("limits.client_rate")?,
            client_burst: r.req("limits.client_burst")?,
        },
        history: HistoryConfig {
            size: r.req("history.size")?,
            ttl: r.req("history.ttl")?,
        },
        compression: r.req("compression")?,
        allowed_origins: r.req("allowed_origins")?,
        tls: TlsConfig {
            cert_file: r.opt("tls.cert_file")?,
            key_file: r.opt("tls.key_file")?,
        },
        drain_timeout: r.req("drain_timeout")?,
        log_level: r.req("log_level")?,
        log_json: match r.req::<String>("log_format")?.as_str() {
            "text" => false,
            "json" => true,
            _ => return Err(r.invalid("log_format", "must be text or json")),
        },
        test_echo_endpoint: r.req("test_echo_endpoint")?,
    };
    r.validate(&config)?;
    // Keep the table's order for check-config.
    let mut effective = r.effective;
    effective.sort_by_key(|(spec, _, _)| KEYS.iter().position(|k| std::ptr::eq(k, *spec)));
    Ok(Loaded {
        config,
        file,
        effective,
    })
}

struct Resolver {
    resolved: BTreeMap<&'static str, (Raw, Source)>,
    effective: Vec<(&'static KeySpec, Option<String>, Source)>,
}

impl Resolver {
    fn source_name(&self, key: &str) -> String {
        self.resolved
            .get(key)
            .map(|(_, s)| s.to_string())
            .unwrap_or_else(|| "default".to_owned())
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            source_name: self.source_name(key),
            message: message.into(),
        }
    }

    fn opt<T: FromRaw>(&mut self, key: &'static str) -> Result<Option<T>, ConfigError> {
        let spec = spec(key).ok_or_else(|| ConfigError::UnknownKey {
            key: key.to_owned(),
            origin: "the program".to_owned(),
        })?;
        match self.resolved.get(key).cloned() {
            None => {
                self.effective.push((spec, None, Source::Default));
                Ok(None)
            }
            Some((raw, source)) => {
                let value = T::from_raw(&raw).map_err(|m| self.invalid(key, m))?;
                let shown = match &raw {
                    Raw::Text(t) => format!("{t:?}"),
                    Raw::Toml(v) => v.to_string(),
                };
                self.effective.push((spec, Some(shown), source));
                Ok(Some(value))
            }
        }
    }

    fn req<T: FromRaw>(&mut self, key: &'static str) -> Result<T, ConfigError> {
        self.opt(key)?
            .ok_or_else(|| self.invalid(key, "a value is required"))
    }

    fn validate(&self, c: &Config) -> Result<(), ConfigError> {
        let positive = [
            ("heartbeat.interval", c.heartbeat.interval.is_zero()),
            ("heartbeat.timeout", c.heartbeat.timeout.is_zero()),
            ("limits.max_connections", c.limits.max_connections == 0),
            ("limits.max_subscriptions", c.limits.max_subscriptions == 0),
            ("limits.client_queue", c.limits.client_queue == 0),
            ("limits.client_rate", c.limits.client_rate == 0),
            ("limits.client_burst", c.limits.client_burst == 0),
            ("history.ttl", c.history.ttl.is_zero()),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, bad)| *bad) {
            return Err(self.invalid(key, "must be greater than zero"));
        }
        if c.heartbeat.timeout <= c.heartbeat.interval {
            return Err(self.invalid(
                "heartbeat.timeout",
                "must be longer than heartbeat.interval, or idle clients are closed between pings",
            ));
        }
        if !(128..=(1 << 30)).contains(&c.limits.max_message_size) {
            return Err(self.invalid("limits.max_message_size", "must be between 128B and 1GiB"));
        }
        if c.history.size > 1_000_000 {
            return Err(self.invalid("history.size", "must be at most 1000000"));
        }
        if c.tls.cert_file.is_some() != c.tls.key_file.is_some() {
            let key = if c.tls.cert_file.is_some() {
                "tls.key_file"
            } else {
                "tls.cert_file"
            };
            return Err(self.invalid(key, "tls.cert_file and tls.key_file must be set together"));
        }
        if let Some(url) = &c.redis_url {
            let ok = url
                .expose()
                .split(',')
                .all(|u| u.trim().starts_with("redis://") || u.trim().starts_with("rediss://"));
            if !ok {
                return Err(self.invalid("redis_url", "must start with redis:// or rediss://"));
            }
        }
        if c.admin.api_keys.iter().any(|k| k.expose().is_empty()) {
            return Err(self.invalid("admin.api_keys", "keys must not be empty"));
        }
        if c.jwt
            .hs256_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 16)
        {
            return Err(self.invalid("jwt.hs256_secret", "must be at least 16 bytes"));
        }
        Ok(())
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "herald".to_owned());
    format!("{host}-{}", crate::random_hex(3))
}

trait FromRaw: Sized {
    fn from_raw(raw: &Raw) -> Result<Self, String>;
}

fn text(raw: &Raw) -> Result<String, String> {
    match raw {
        Raw::Text(t) => Ok(t.clone()),
        Raw::Toml(toml::Value::String(s)) => Ok(s.clone()),
        Raw::Toml(v) => Err(format!("expected a string, found {}", v.type_str())),
    }
}

impl FromRaw for String {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        text(raw)
    }
}

impl FromRaw for PathBuf {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        let t = text(raw)?;
        if t.is_empty() {
            return Err("path is empty".to_owned());
        }
        Ok(PathBuf::from(t))
    }
}

impl FromRaw for SocketAddr {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        let t = text(raw)?;
        t.parse()
            .map_err(|_| format!("'{t}' is not an address like 0.0.0.0:8080"))
    }
}

impl FromRaw for bool {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        match raw {
            Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
            _ => match text(raw)?.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                other => Err(format!("'{other}' is not true or false")),
            },
        }
    }
}

fn integer(raw: &Raw) -> Result<u64, String> {
    match raw {
        Raw::Toml(toml::Value::Integer(i)) => {
            u64::try_from(*i).map_err(|_| format!("{i} is negative"))
        }
        _ => {
            let t = text(raw)?;
            t.trim()
                .replace('_', "")
                .parse()
                .map_err(|_| format!("'{t}' is not a whole number"))
        }
    }
}

impl FromRaw for usize {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        usize::try_from(integer(raw)?).map_err(|_| "number is too large".to_owned())
    }
}

impl FromRaw for u32 {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        u32::try_from(integer(raw)?).map_err(|_| "number is too large".to_owned())
    }
}

/// A byte count written as `65536`, `64KiB`, `1MiB`, `64KB`.
struct Size(usize);

impl FromRaw for Size {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        if let Raw::Toml(toml::Value::Integer(_)) = raw {
            return usize::from_raw(raw).map(Size);
        }
        let t = text(raw)?;
        parse_size(&t).map(Size)
    }
}

/// Parses `65536`, `64KiB`, `1MiB`, `2GiB`, `64KB`, `1MB` into bytes.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 65536, 64KiB or 1MiB"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "'{s}' has an unknown unit; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

impl FromRaw for Duration {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        if let Raw::Toml(toml::Value::Integer(_)) = raw {
            return integer(raw).map(Duration::from_secs);
        }
        parse_duration(&text(raw)?)
    }
}

/// Parses `500ms`, `25s`, `10m`, `1h`, `1d`, or a bare number of seconds.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("'{s}' is not a duration like 500ms, 25s, 10m or 1h");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(bad()),
    };
    ms.map(Duration::from_millis).ok_or_else(bad)
}

impl FromRaw for Vec<String> {
    fn from_raw(raw: &Raw) -> Result<Self, String> {
        match raw {
            Raw::Toml(toml::Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "list items must be strings, found {}",
                        other.type_str()
                    )),
                })
                .collect(),
            _ => Ok(text(raw)?
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.heartbeat.interval, Duration::from_secs(25));
        assert_eq!(c.heartbeat.timeout, Duration::from_secs(60));
        assert_eq!(c.limits.max_connections, 100_000);
        assert_eq!(c.limits.max_message_size, 64 * 1024);
        assert_eq!(c.limits.max_subscriptions, 256);
        assert_eq!(c.limits.client_queue, 1024);
        assert_eq!(c.limits.client_rate, 50);
        assert_eq!(c.limits.client_burst, 100);
        assert_eq!(c.history.size, 1000);
        assert_eq!(c.history.ttl, Duration::from_secs(600));
        assert_eq!(c.jwt.leeway, Duration::from_secs(30));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert!(!c.compression && !c.redis_cluster);
        assert!(c.allowed_origins.is_empty() && c.redis_url.is_none());
        assert!(!c.node_id.is_empty());
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = write_file(
            "[heartbeat]\ninterval = \"10s\"\ntimeout = \"70s\"\n[limits]\nclient_rate = 7\nmax_subscriptions = 3\n",
        );
        let mut env = HashMap::new();
        env.insert("HERALD_HEARTBEAT__INTERVAL".to_owned(), "11s".to_owned());
        env.insert("HERALD_LIMITS__CLIENT_RATE".to_owned(), "8".to_owned());
        let sources = Sources {
            flags: vec![("heartbeat.interval", "12s".to_owned())],
            env,
            config_file: Some(file.path().to_owned()),
            use_default_file: false,
        };
        let loaded = load(&sources).unwrap();
        let c = &loaded.config;
        assert_eq!(c.heartbeat.interval, Duration::from_secs(12)); // flag
        assert_eq!(c.limits.client_rate, 8); // env
        assert_eq!(c.heartbeat.timeout, Duration::from_secs(70)); // file
        assert_eq!(c.limits.max_subscriptions, 3); // file
        assert_eq!(c.limits.client_burst, 100); // default
        let described = loaded.describe();
        assert!(
            described.contains("heartbeat.interval = \"12s\"  # flag"),
            "{described}"
        );
        assert!(
            described.contains("# env HERALD_LIMITS__CLIENT_RATE"),
            "{described}"
        );
    }

    #[test]
    fn unknown_file_key_is_named() {
        let file = write_file("[limits]\nmax_conections = 5\n");
        let err = load(&Sources {
            config_file: Some(file.path().to_owned()),
            ..Sources::default()
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown key 'limits.max_conections'"),
            "{err}"
        );
        let file = write_file("colour = true\n");
        let err = load(&Sources {
            config_file: Some(file.path().to_owned()),
            ..Sources::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("'colour'"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_source() {
        let mut env = HashMap::new();
        env.insert(
            "HERALD_LIMITS__MAX_MESSAGE_SIZE".to_owned(),
            "64 parsecs".to_owned(),
        );
        let err = load(&Sources {
            env,
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("limits.max_message_size"), "{err}");
        assert!(err.contains("HERALD_LIMITS__MAX_MESSAGE_SIZE"), "{err}");

        let err = load(&Sources {
            flags: vec![("listen", "nowhere".to_owned())],
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("'listen'") && err.contains("flag"), "{err}");

        let err = load(&Sources {
            flags: vec![("heartbeat.timeout", "10s".to_owned())],
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("heartbeat.timeout"), "{err}");
    }

    #[test]
    fn lists_secrets_and_masking() {
        let file = write_file(
            "admin.api_keys = [\"k1\", \"k2\"]\nallowed_origins = [\"https://a.example\"]\n",
        );
        let sources = Sources {
            flags: vec![("jwt.hs256_secret", "0123456789abcdef0123".to_owned())],
            config_file: Some(file.path().to_owned()),
            ..Sources::default()
        };
        let loaded = load(&sources).unwrap();
        assert_eq!(loaded.config.admin.api_keys.len(), 2);
        assert_eq!(loaded.config.allowed_origins, vec!["https://a.example"]);
        let described = loaded.describe();
        assert!(
            !described.contains("k1") && !described.contains("0123456789abcdef"),
            "{described}"
        );
        assert!(
            described.contains("admin.api_keys = \"****\""),
            "{described}"
        );

        let env = HashMap::from([("HERALD_ADMIN__API_KEYS".to_owned(), "a, b".to_owned())]);
        let c = load(&Sources {
            env,
            ..Sources::default()
        })
        .unwrap()
        .config;
        assert_eq!(c.admin.api_keys, vec![Secret::new("a"), Secret::new("b")]);
    }

    #[test]
    fn every_key_has_a_flag_and_env_name() {
        assert_eq!(key_for_flag("--redis-url").unwrap().key, "redis_url");
        assert_eq!(
            key_for_flag("--heartbeat-interval").unwrap().key,
            "heartbeat.interval"
        );
        assert_eq!(
            key_for_flag("--admin-api-keys").unwrap().key,
            "admin.api_keys"
        );
        assert_eq!(
            key_for_flag("--jwt-hs256-secret").unwrap().key,
            "jwt.hs256_secret"
        );
        assert_eq!(
            spec("limits.max_connections").unwrap().env_var(),
            "HERALD_LIMITS__MAX_CONNECTIONS"
        );
        let flags: std::collections::HashSet<String> = KEYS.iter().map(KeySpec::flag).collect();
        assert_eq!(flags.len(), KEYS.len(), "two keys share a flag");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert!(parse_size("KiB").is_err() && parse_size("1 XB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("1.5s").is_err() && parse_duration("").is_err());
    }

    #[test]
    fn toml_native_types_are_accepted() {
        let file = write_file(
            "compression = true\ndrain_timeout = 5\n[limits]\nmax_message_size = 4096\n",
        );
        let c = load(&Sources {
            config_file: Some(file.path().to_owned()),
            ..Sources::default()
        })
        .unwrap()
        .config;
        assert!(c.compression);
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_message_size, 4096);
        let file = write_file("compression = \"maybe\"\n");
        let err = load(&Sources {
            config_file: Some(file.path().to_owned()),
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("compression") && err.contains("file"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = load(&Sources {
            config_file: Some(PathBuf::from("/nonexistent/herald.toml")),
            ..Sources::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }
}
