//! `[webhooks]`: lifecycle events POSTed to the app's backend (contract
//! §10.6). Unset by default: no event is recorded and nothing is sent.
//!
//! Invariants: `url` is `http://` or `https://` with a host, and comes with
//! a `secret` (an unsigned webhook is one anyone can forge); `events` names
//! only known types (empty = all); `retry_for` and `max_queue` are
//! positive, so a queue is always bounded in age and in length.

use std::time::Duration;

use serde::Deserialize;

use super::sections::opt_secret;
use super::value::{count, duration, list, opt_text};
use super::{Check, ConfigError, Secret, Section};
use crate::webhooks::{Events, Kind};

/// The webhook settings.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhooksConfig {
    /// Where events are POSTed.
    #[serde(default, deserialize_with = "opt_text")]
    pub url: Option<String>,
    /// Signs every body (`Herald-Signature`).
    #[serde(default, deserialize_with = "opt_secret")]
    pub secret: Option<Secret>,
    /// Types sent, as written; empty = every type.
    #[serde(deserialize_with = "list")]
    pub events: Vec<String>,
    /// How long an event is retried before it is dropped (and counted).
    #[serde(deserialize_with = "duration")]
    pub retry_for: Duration,
    /// Most events waiting to be sent; beyond it the oldest are dropped.
    #[serde(deserialize_with = "count")]
    pub max_queue: usize,
    /// How long a topic stays empty before `topic.vacated`.
    #[serde(deserialize_with = "duration")]
    pub vacated_delay: Duration,
}

impl WebhooksConfig {
    /// The types to record: none when no URL is set.
    pub fn selected(&self) -> Events {
        if self.url.is_none() {
            return Events::NONE;
        }
        if self.events.is_empty() {
            return Events::ALL;
        }
        self.events
            .iter()
            .filter_map(|e| Kind::parse(e))
            .fold(Events::NONE, Events::with)
    }
}

impl WebhooksConfig {
    /// What brokers are built with.
    pub fn settings(&self) -> crate::webhooks::WebhookSettings {
        crate::webhooks::WebhookSettings {
            events: self.selected(),
            max_queue: self.max_queue,
            vacated_delay: self.vacated_delay,
        }
    }
}

impl Section for WebhooksConfig {
    const PATH: Option<&'static str> = Some("webhooks");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        c.http_url("webhooks.url", self.url.as_deref())?;
        c.positive("webhooks.retry_for", self.retry_for.is_zero())?;
        c.positive("webhooks.max_queue", self.max_queue == 0)?;
        self.events.retain(|e| !e.trim().is_empty());
        if let Some(bad) = self.events.iter().find(|e| Kind::parse(e).is_none()) {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            return Err(c.invalid(
                "webhooks.events",
                format!("'{bad}' is not an event type (known: {})", known.join(", ")),
            ));
        }
        if self.url.is_some() && self.secret.as_ref().is_none_or(|s| s.expose().len() < 16) {
            return Err(c.invalid(
                "webhooks.secret",
                "must be set, at least 16 characters, when webhooks.url is (receivers verify the signature)",
            ));
        }
        Ok(())
    }
}
