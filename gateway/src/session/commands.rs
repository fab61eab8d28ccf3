//! What a session does with each client request: subscribe (with or
//! without recovery), unsubscribe, publish, and a token refresh. Each is
//! all-or-nothing and answers with exactly one reply.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use herald_core::{Broker, Publication};
use herald_protocol::{ErrorCode, ServerFrame, Topic};
use serde_json::value::RawValue;
use tracing::debug;

use super::Session;
use super::limits::expiry_times;

impl Session {
    /// Validates every name; the first invalid one is reported.
    fn parse_topics(&self, reference: Option<&str>, names: &[String]) -> Option<Vec<Topic>> {
        if names.is_empty() {
            self.error(reference, ErrorCode::BadRequest, "'topics' is empty", None);
            return None;
        }
        let mut topics = Vec::with_capacity(names.len());
        for name in names {
            match herald_core::publication::topic(name) {
                Ok(t) => topics.push(t),
                Err(e) => {
                    self.error(reference, e.code(), &e.to_string(), Some(name));
                    return None;
                }
            }
        }
        Some(topics)
    }

    pub(super) async fn subscribe(
        &mut self,
        reference: Option<&str>,
        names: &[String],
        since: &BTreeMap<String, String>,
    ) {
        let Some(topics) = self.parse_topics(reference, names) else {
            return;
        };
        if let Some(denied) = topics.iter().find(|t| !self.claims.topics.allows(t)) {
            let message = format!("not allowed to subscribe to {denied}");
            self.error(
                reference,
                ErrorCode::Forbidden,
                &message,
                Some(denied.as_str()),
            );
            return;
        }
        let mut unique = HashSet::with_capacity(topics.len());
        let topics: Vec<Topic> = topics
            .into_iter()
            .filter(|t| unique.insert(t.clone()))
            .collect();
        let new: Vec<Topic> = topics
            .iter()
            .filter(|t| !self.topics.contains(*t))
            .cloned()
            .collect();
        let max = self.node.config.limits.max_subscriptions;
        if self.topics.len() + new.len() > max {
            let message = format!("a connection may hold at most {max} topics");
            self.error(reference, ErrorCode::TooManySubscriptions, &message, None);
            return;
        }
        // Topics with `since` recover (whether new or already held); the
        // others are subscribed plainly, if new.
        let (recovering, plain): (Vec<&Topic>, Vec<&Topic>) =
            topics.iter().partition(|t| since.contains_key(t.as_str()));
        let plain_new: Vec<Topic> = plain
            .into_iter()
            .filter(|t| !self.topics.contains(*t))
            .cloned()
            .collect();
        let hub = &self.node.hub;
        let failed = hub.subscribe(&self.outbox, &plain_new).await.err();
        let results = if failed.is_none() {
            let held = &self.topics;
            let outbox = &self.outbox;
            futures_util::future::join_all(recovering.iter().map(|t| {
                let from = since.get(t.as_str()).map_or("", String::as_str);
                hub.subscribe_from(outbox, t, from, held.contains(*t))
            }))
            .await
        } else {
            Vec::new()
        };
        let failed = failed.or_else(|| results.iter().find_map(|r| r.as_ref().err().cloned()));
        let recovering_new: Vec<Topic> = recovering
            .iter()
            .filter(|t| !self.topics.contains(**t))
            .map(|t| (*t).clone())
            .collect();
        if let Some(e) = failed {
            // All or nothing: drop whatever this request added.
            hub.unsubscribe(&self.outbox, plain_new.iter().chain(&recovering_new));
            debug!(error = %e, "subscribe failed in the broker");
            self.error(
                reference,
                e.code(),
                "the broker is unavailable; retry later",
                None,
            );
            return;
        }
        let recovered: BTreeMap<&str, bool> = recovering
            .iter()
            .zip(&results)
            .map(|(t, r)| (t.as_str(), matches!(r, Ok(true))))
            .collect();
        self.topics.extend(plain_new);
        self.topics.extend(recovering_new);
        let names: Vec<&str> = topics.iter().map(Topic::as_str).collect();
        self.reply(&ServerFrame::Subscribed {
            reference,
            topics: &names,
            recovered: (!recovered.is_empty()).then_some(&recovered),
        });
    }

    pub(super) fn unsubscribe(&mut self, reference: Option<&str>, names: &[String]) {
        let Some(topics) = self.parse_topics(reference, names) else {
            return;
        };
        let held: Vec<Topic> = topics
            .iter()
            .filter(|t| self.topics.remove(*t))
            .cloned()
            .collect();
        self.node.hub.unsubscribe(&self.outbox, &held);
        let names: Vec<&str> = topics.iter().map(Topic::as_str).collect();
        self.reply(&ServerFrame::Unsubscribed {
            reference,
            topics: &names,
        });
    }

    pub(super) async fn publish(
        &mut self,
        reference: Option<&str>,
        name: &str,
        data: &RawValue,
        event: Option<String>,
    ) {
        let rules = self.node.config.limits.publication_rules();
        let topic = match rules.topic(name) {
            Ok(t) => t,
            Err(e) => return self.error(reference, e.code(), &e.to_string(), Some(name)),
        };
        if !self.claims.publish.allows(&topic) {
            let message = format!("not allowed to publish to {topic}");
            self.error(reference, ErrorCode::Forbidden, &message, Some(name));
            return;
        }
        if let Err(e) = rules.check(data, event.as_deref(), None) {
            return self.error(reference, e.code(), &e.to_string(), Some(name));
        }
        let publication = Publication {
            event,
            ..Publication::new(topic, data.to_owned())
        };
        match self.node.broker.publish(vec![publication]).await {
            Ok(positions) => {
                let id = positions
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                self.reply(&ServerFrame::Published {
                    reference,
                    topic: name,
                    id: &id,
                });
            }
            Err(e) => {
                debug!(error = %e, "client publish failed in the broker");
                self.error(
                    reference,
                    e.code(),
                    "the broker did not accept the event; retry later",
                    Some(name),
                );
            }
        }
    }

    pub(super) fn auth(&mut self, reference: Option<&str>, token: &str) {
        let claims = match self.node.verifier.verify(token) {
            Ok(c) => c,
            Err(e) => {
                // An expired replacement is as useless as a forged one.
                self.error(reference, ErrorCode::Unauthorized, &e.to_string(), None);
                return;
            }
        };
        if claims.sub != self.claims.sub {
            self.error(
                reference,
                ErrorCode::Forbidden,
                "a refreshed token must carry the same sub",
                None,
            );
            return;
        }
        let lost: Vec<Topic> = self
            .topics
            .iter()
            .filter(|t| !claims.topics.allows(t))
            .cloned()
            .collect();
        let (warn_at, expire_at) =
            expiry_times(claims.exp, self.node.verifier.leeway(), Instant::now());
        self.timers.warn_at = Some(warn_at);
        self.timers.expire_at = expire_at;
        let exp = claims.exp;
        self.claims = claims;
        self.reply(&ServerFrame::Authed { reference, exp });
        if !lost.is_empty() {
            for t in &lost {
                self.topics.remove(t);
            }
            self.node.hub.unsubscribe(&self.outbox, &lost);
            let mut names: Vec<&str> = lost.iter().map(Topic::as_str).collect();
            names.sort_unstable();
            self.reply(&ServerFrame::Unsubscribed {
                reference: None,
                topics: &names,
            });
        }
    }
}
