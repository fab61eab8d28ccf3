//! Configuration (contract §2): one table of keys, four sources, one
//! precedence, and a typed struct per subsystem.
//!
//! - [`keys`]: every key once, with its default and help line; flags,
//!   environment names, `--help` and `check-config` derive from it.
//! - [`sources`]: defaults < file < environment < flags, merged by figment,
//!   with the origin of every value kept for error messages.
//! - [`sections`]: the typed subsystems (listeners, jwt, admin, limits, …),
//!   each checking its own rules.
//! - [`value`]: how a size, a duration or a list may be written.
//!
//! A gateway reads every subsystem ([`Config`]); `herald-admin` reads only
//! its own ([`AdminServiceConfig`]) from the same sources, so one file serves
//! both, and a key that exists nowhere is still refused by either.
//! Every refusal is one [`ConfigError`] naming the key and where its value
//! came from.

pub mod admin;
pub mod keys;
pub mod proxy;
pub mod sections;
pub mod sources;
pub mod value;
pub mod webhooks;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use admin::{AdminConfig, Scope, ScopedKey};
pub use keys::{KEYS, KeySpec, Kind};
pub use proxy::ProxyConfig;
pub use sections::{
    AuthConfig, CompatConfig, Durability, HeartbeatConfig, HistoryConfig, JwtConfig, LimitsConfig,
    ListenersConfig, LogConfig, NodeConfig, PayloadLimits, PresenceConfig, PublishConfig,
    RedisConfig, TlsConfig,
};
pub use sources::{DEFAULT_CONFIG_FILE, Layers, Sources};
pub use value::{parse_duration, parse_size};
pub use webhooks::WebhooksConfig;

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

/// Builds the errors of the section checks, with each key's source.
pub struct Check<'a> {
    layers: &'a Layers,
}

impl Check<'_> {
    /// `key`'s value is unusable for `message`.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            source_name: self.layers.source_of(key),
            message: message.into(),
        }
    }

    /// Refuses a URL a node cannot call: not `http://` or `https://`, or
    /// without a host.
    pub fn http_url(&self, key: &str, url: Option<&str>) -> Result<(), ConfigError> {
        let Some(url) = url else {
            return Ok(());
        };
        let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
        if !scheme_ok
            || url
                .parse::<http::Uri>()
                .map_or(true, |u| u.host().is_none())
        {
            return Err(self.invalid(key, "must be an http:// or https:// URL"));
        }
        Ok(())
    }

    /// Refuses a zero where only a positive value makes sense.
    ///
    /// # Errors
    /// When `is_zero`.
    pub fn positive(&self, key: &str, is_zero: bool) -> Result<(), ConfigError> {
        if is_zero {
            Err(self.invalid(key, "must be greater than zero"))
        } else {
            Ok(())
        }
    }
}

/// The typed, checked configuration of a gateway node.
#[derive(Debug, Clone)]
pub struct Config {
    /// `node_id`, `drain_timeout`.
    pub node: NodeConfig,
    /// `listen`, `admin_listen`, `compression`, `allowed_origins`.
    pub listeners: ListenersConfig,
    /// `[tls]`.
    pub tls: TlsConfig,
    /// `redis_url`, `redis_cluster`.
    pub redis: RedisConfig,
    /// `[jwt]`.
    pub jwt: JwtConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[heartbeat]`.
    pub heartbeat: HeartbeatConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[history]`.
    pub history: HistoryConfig,
    /// `[publish]`.
    pub publish: PublishConfig,
    /// `[presence]`.
    pub presence: PresenceConfig,
    /// `[proxy]`: the backend hooks.
    pub proxy: ProxyConfig,
    /// `[webhooks]`: lifecycle events for the backend.
    pub webhooks: WebhooksConfig,
    /// `[compat]`: the Centrifugo-compatible endpoint.
    pub compat: CompatConfig,
    /// `log_level`, `log_format`.
    pub log: LogConfig,
}

/// The typed, checked configuration of `herald-admin`: only the subsystems
/// it uses.
#[derive(Debug, Clone)]
pub struct AdminServiceConfig {
    /// `admin_listen`: where the API is served.
    pub listen: SocketAddr,
    /// `node_id`, `drain_timeout`.
    pub node: NodeConfig,
    /// `redis_url`, `redis_cluster`.
    pub redis: RedisConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `limits.max_message_size`, `limits.max_json_depth`.
    pub payload: PayloadLimits,
    /// `[history]`.
    pub history: HistoryConfig,
    /// `[publish]`.
    pub publish: PublishConfig,
    /// `jwt.max_lifetime`: how long a revocation is kept at least.
    pub max_lifetime: std::time::Duration,
    /// `[presence]`.
    pub presence: PresenceConfig,
    /// `[webhooks]`: its presence sweeper queues the `presence.leave`s of
    /// dead nodes like a gateway's would.
    pub webhooks: WebhooksConfig,
    /// `log_level`, `log_format`.
    pub log: LogConfig,
}

#[derive(Deserialize)]
struct AdminListen {
    #[serde(deserialize_with = "value::addr")]
    admin_listen: SocketAddr,
}

/// A loaded gateway configuration with its sources, for `check-config`.
#[derive(Debug)]
pub struct Loaded {
    /// The typed configuration.
    pub config: Config,
    /// The merged sources.
    pub layers: Layers,
}

impl Loaded {
    /// Every key with its effective value (secrets masked) and its source.
    pub fn describe(&self) -> String {
        self.layers.describe()
    }

    /// The file read, if any.
    pub fn file(&self) -> Option<&std::path::Path> {
        self.layers.file()
    }
}

/// A subsystem's part of the configuration: where it is read from, and the
/// rules it checks once read.
pub trait Section: serde::de::DeserializeOwned {
    /// Its `[section]`, or `None` for keys at the top level.
    const PATH: Option<&'static str>;

    /// Checks what parsing alone cannot (ranges, pairs of keys) and fills
    /// in computed defaults.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and its source.
    fn check(&mut self, _c: &Check<'_>) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Reads one section from the merged sources and checks it.
fn read<T: Section>(layers: &Layers) -> Result<T, ConfigError> {
    let mut section: T = layers.extract(T::PATH)?;
    section.check(&Check { layers })?;
    Ok(section)
}

/// Reads and checks a gateway's configuration.
///
/// # Errors
/// A [`ConfigError`] naming the file, the key or the value at fault.
pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
    let layers = Layers::load(sources)?;
    let config = Config {
        node: read(&layers)?,
        listeners: read(&layers)?,
        tls: read(&layers)?,
        redis: read(&layers)?,
        jwt: read(&layers)?,
        auth: read(&layers)?,
        admin: read(&layers)?,
        heartbeat: read(&layers)?,
        limits: read(&layers)?,
        history: read(&layers)?,
        publish: read(&layers)?,
        presence: read(&layers)?,
        proxy: read(&layers)?,
        webhooks: read(&layers)?,
        compat: read(&layers)?,
        log: read(&layers)?,
    };
    Ok(Loaded { config, layers })
}

/// What `check-config` prints before checking: the file read, if any, and
/// every key with its effective value (secrets masked) and its source.
///
/// # Errors
/// When the sources cannot be read or merged (a file that is not TOML, an
/// unknown key).
pub fn describe(sources: &Sources) -> Result<(Option<std::path::PathBuf>, String), ConfigError> {
    let layers = Layers::load(sources)?;
    Ok((
        layers.file().map(std::path::Path::to_path_buf),
        layers.describe(),
    ))
}

/// Reads and checks `herald-admin`'s configuration: only its own
/// subsystems; gateway-only keys are accepted and ignored.
///
/// # Errors
/// A [`ConfigError`] naming the file, the key or the value at fault.
pub fn load_admin_service(sources: &Sources) -> Result<AdminServiceConfig, ConfigError> {
    let layers = Layers::load(sources)?;
    let AdminListen { admin_listen } = layers.extract(None)?;
    Ok(AdminServiceConfig {
        listen: admin_listen,
        node: read(&layers)?,
        redis: read(&layers)?,
        admin: read(&layers)?,
        payload: read(&layers)?,
        history: read(&layers)?,
        publish: read(&layers)?,
        max_lifetime: {
            let jwt: JwtConfig = read(&layers)?;
            jwt.max_lifetime
        },
        presence: read(&layers)?,
        webhooks: read(&layers)?,
        log: read(&layers)?,
    })
}

impl Config {
    /// The built-in defaults (plus a generated `node_id`), for tests and
    /// embedding; fields can then be set directly.
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
                "no JWT verification key: set jwt.hs256_secret, jwt.public_key_file, jwt.jwks_file or jwt.jwks_url (or run with --dev)".to_owned(),
            ));
        }
        self.admin.require_keys()
    }
}

#[cfg(test)]
mod tests;
