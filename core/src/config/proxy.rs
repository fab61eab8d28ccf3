//! `[proxy]`: backend hooks (contract §10.6). A connection without a JWT is
//! authenticated by `proxy.connect_url`; subscribes to and client publishes
//! on chosen topics ask `proxy.subscribe_url` / `proxy.publish_url` first.
//! All unset by default: no hook runs.
//!
//! Invariants: a hook URL is `http://` or `https://` with a host; a topic
//! list and its URL are given together (a URL no topic reaches, or topics
//! with nowhere to ask, are configuration mistakes and refused).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::value::{duration, list, opt_text};
use super::{Check, ConfigError, Section};

fn patterns<'de, D: Deserializer<'de>>(d: D) -> Result<herald_protocol::Permissions, D::Error> {
    super::sections::patterns(d)
}

/// The backend hooks.
#[derive(Debug, Clone, Deserialize)]
pub struct ProxyConfig {
    /// Authenticates connections that bring no JWT.
    #[serde(default, deserialize_with = "opt_text")]
    pub connect_url: Option<String>,
    /// Handshake headers forwarded to `connect_url` (case-insensitive).
    #[serde(deserialize_with = "list")]
    pub headers: Vec<String>,
    /// Asked before a subscribe to a topic of `subscribe_topics`.
    #[serde(default, deserialize_with = "opt_text")]
    pub subscribe_url: Option<String>,
    /// Topics whose subscribes ask `subscribe_url`.
    #[serde(deserialize_with = "patterns")]
    pub subscribe_topics: herald_protocol::Permissions,
    /// Sent a client publish to a topic of `publish_topics` first.
    #[serde(default, deserialize_with = "opt_text")]
    pub publish_url: Option<String>,
    /// Topics whose client publishes go through `publish_url`.
    #[serde(deserialize_with = "patterns")]
    pub publish_topics: herald_protocol::Permissions,
    /// Longest one hook call may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl ProxyConfig {
    /// Whether any hook is configured.
    pub fn any(&self) -> bool {
        self.connect_url.is_some() || self.subscribe_url.is_some() || self.publish_url.is_some()
    }
}

impl Section for ProxyConfig {
    const PATH: Option<&'static str> = Some("proxy");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.http_url("proxy.connect_url", self.connect_url.as_deref())?;
        c.http_url("proxy.subscribe_url", self.subscribe_url.as_deref())?;
        c.http_url("proxy.publish_url", self.publish_url.as_deref())?;
        c.positive("proxy.timeout", self.timeout.is_zero())?;
        let pairs = [
            (
                "subscribe",
                self.subscribe_url.is_some(),
                self.subscribe_topics.patterns().is_empty(),
            ),
            (
                "publish",
                self.publish_url.is_some(),
                self.publish_topics.patterns().is_empty(),
            ),
        ];
        for (hook, has_url, no_topics) in pairs {
            if has_url && no_topics {
                return Err(c.invalid(
                    &format!("proxy.{hook}_topics"),
                    format!("is empty, so proxy.{hook}_url would never be asked (use \">\" for every topic)"),
                ));
            }
            if !has_url && !no_topics {
                return Err(c.invalid(
                    &format!("proxy.{hook}_url"),
                    format!("is not set, but proxy.{hook}_topics names topics to ask about"),
                ));
            }
        }
        self.headers.retain(|h| !h.trim().is_empty());
        Ok(())
    }
}
