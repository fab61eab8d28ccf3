//! What a session does with each client request: subscribe (with or
//! without recovery), unsubscribe, publish, a token refresh, and a presence
//! query. Each is all-or-nothing and answers with exactly one reply.
//!
//! Presence: on a topic matching `presence.topics`, the session joins once
//! it was told `subscribed` (so its own `join` follows that reply, and a
//! `presence` request it sends next lists it), and leaves when the topic is
//! dropped for any reason: unsubscribe, a token refresh that lost it, a
//! failed subscribe, or the end of the session.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use herald_core::broker::presence;
use herald_core::{Broker, BrokerError, LeaveCause, Member, MemberPage, Publication};
use herald_protocol::{ErrorCode, Payload, ServerFrame, Topic};
use tracing::debug;

use super::Session;
use super::limits::expiry_times;

/// How long a subscribe waits for its presence joins to be stored before
/// moving on (they are applied later if need be).
const JOIN_WAIT: Duration = Duration::from_secs(5);

impl Session {
    /// Validates every name; the first invalid one is reported.
    pub(super) fn parse_topics(
        &self,
        reference: Option<&str>,
        names: &[String],
    ) -> Option<Vec<Topic>> {
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

    /// The checks every subscribe request passes, on either protocol:
    /// valid names, the token's `topics`, `limits.max_subscriptions`, the
    /// subscribe hook. Returns the request's distinct topics and those of
    /// them the session does not hold yet; `None` once a refusal was sent.
    pub(super) async fn admit_subscribe(
        &self,
        reference: Option<&str>,
        names: &[String],
    ) -> Option<(Vec<Topic>, Vec<Topic>)> {
        let topics = self.parse_topics(reference, names)?;
        if let Some(denied) = topics.iter().find(|t| !self.claims.topics.allows(t)) {
            let message = format!("not allowed to subscribe to {denied}");
            self.error(
                reference,
                ErrorCode::Forbidden,
                &message,
                Some(denied.as_str()),
            );
            return None;
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
            return None;
        }
        self.backend_allows_subscribe(reference, &new)
            .await
            .then_some((topics, new))
    }

    pub(super) async fn subscribe(
        &mut self,
        reference: Option<&str>,
        names: &[String],
        since: &BTreeMap<String, String>,
    ) {
        let Some((topics, _)) = self.admit_subscribe(reference, names).await else {
            return;
        };
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
        let sees = |t: &Topic| self.sees_presence(t);
        let (plain_positions, failed) = match hub.subscribe(&self.outbox, &plain_new, sees).await {
            Ok(positions) => (positions, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let outbox = &self.outbox;
        // Recovering topics are held back until every topic of the request
        // is live: a request that fails must not have let through events it
        // would not report (the client would take their ids as its next
        // `since` and never learn `recovered:false`).
        let holds = if failed.is_none() {
            let held = &self.topics;
            futures_util::future::join_all(
                recovering
                    .iter()
                    .map(|t| hub.hold(outbox, t, held.contains(*t), sees(t))),
            )
            .await
        } else {
            Vec::new()
        };
        let failed = failed.or_else(|| holds.iter().find_map(|r| r.as_ref().err().cloned()));
        let recovering_new: Vec<Topic> = recovering
            .iter()
            .filter(|t| !self.topics.contains(**t))
            .map(|t| (*t).clone())
            .collect();
        if let Some(e) = failed {
            // All or nothing: drop whatever this request added, and let
            // through what it held back of topics the session had before.
            for (t, hold) in recovering.iter().zip(&holds) {
                if hold.is_ok() && self.topics.contains(*t) {
                    hub.release(outbox, t);
                }
            }
            hub.unsubscribe(&self.outbox, plain_new.iter().chain(&recovering_new));
            self.leave_presence(plain_new.iter().chain(&recovering_new), None);
            debug!(error = %e, "subscribe failed in the broker");
            self.error(
                reference,
                e.code(),
                "the broker is unavailable; retry later",
                None,
            );
            return;
        }
        // One topic at a time, from one budget: a request never has more
        // than `limits.client_queue` events replayed (contract §10.8).
        let mut budget = self.node.config.limits.client_queue;
        let mut recovered: BTreeMap<&str, bool> = BTreeMap::new();
        let mut positions: BTreeMap<&str, String> = BTreeMap::new();
        for t in &recovering {
            let from = since.get(t.as_str()).map_or("", String::as_str);
            let r = hub.recover(outbox, t, from, budget).await;
            budget = budget.saturating_sub(r.replayed);
            recovered.insert(t.as_str(), r.recovered);
            positions.insert(t.as_str(), r.position.to_string());
        }

        for (t, at) in plain_new.iter().zip(&plain_positions) {
            positions.insert(t.as_str(), at.to_string());
        }
        // Topics the session already held and did not recover: where the
        // topic stands (everything after it reaches the session).
        for t in &topics {
            if !positions.contains_key(t.as_str()) {
                if let Some(at) = hub.position_of(t) {
                    positions.insert(t.as_str(), at.to_string());
                }
            }
        }
        let names: Vec<&str> = topics.iter().map(Topic::as_str).collect();
        self.reply(&ServerFrame::Subscribed {
            reference,
            topics: &names,
            recovered: (!recovered.is_empty()).then_some(&recovered),
            positions: &positions,
        });
        self.join_presence(plain_new.iter().chain(&recovering_new))
            .await;
        self.topics.extend(plain_new);
        self.topics.extend(recovering_new);
    }

    /// Whether this session gets `topic`'s join and leave frames.
    pub(super) fn sees_presence(&self, topic: &Topic) -> bool {
        self.node.config.presence.tracks(topic) && self.claims.presence.allows(topic)
    }

    /// Joins the presence of the tracked ones of `topics` (just
    /// subscribed), waiting a bounded time for the broker to store them.
    pub(super) async fn join_presence<'a>(&self, topics: impl Iterator<Item = &'a Topic>) {
        let node = &self.node;
        // Every join takes its place in the broker's order now.
        let joins: Vec<_> = topics
            .filter(|t| node.config.presence.tracks(t))
            .map(|t| node.broker.join(t, node.member(&self.outbox)))
            .collect();
        if joins.is_empty() {
            return;
        }
        let n = joins.len() as u64;
        node.metrics.presence_members.add(n as i64);
        node.metrics.presence_joins.increment(n);
        let stored = tokio::time::timeout(JOIN_WAIT, futures_util::future::join_all(joins)).await;
        // The broker keeps a join it could not store yet and applies it
        // (before any later leave) once it can: the session is a member
        // either way, only later than it asked.
        match stored {
            Ok(results) => {
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    debug!(error = %e, "presence join not stored yet");
                }
            }
            Err(_) => debug!(wait = ?JOIN_WAIT, "presence join not stored in time"),
        }
    }

    /// Leaves the presence of the tracked ones of `topics`; `cause` is
    /// `None` for topics a failed subscribe added (never counted as joined).
    pub(super) fn leave_presence<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a Topic>,
        cause: Option<LeaveCause>,
    ) {
        let node = &self.node;
        let mut session = None;
        let mut n = 0u64;
        for topic in topics
            .into_iter()
            .filter(|t| node.config.presence.tracks(t))
        {
            let session = session.get_or_insert_with(|| node.session_name(self.outbox.id));
            node.broker.leave(topic, session);
            n += 1;
        }
        if let (Some(cause), true) = (cause, n > 0) {
            node.metrics.presence_members.add(-(n as i64));
            node.metrics.presence_left(cause, n);
        }
    }

    /// The topic of a `presence` or `presence_stats` request, if the
    /// session may ask about it; otherwise the error is sent.
    pub(super) fn presence_topic(&self, reference: Option<&str>, name: &str) -> Option<Topic> {
        let topic = match herald_core::publication::topic(name) {
            Ok(t) => t,
            Err(e) => {
                self.error(reference, e.code(), &e.to_string(), Some(name));
                return None;
            }
        };
        if !self.node.config.presence.tracks(&topic) {
            let message = format!("{topic} is not tracked for presence (presence.topics)");
            self.error(reference, ErrorCode::BadRequest, &message, Some(name));
            return None;
        }
        if !self.claims.presence.allows(&topic) {
            let message = format!("not allowed to see who is present on {topic}");
            self.error(reference, ErrorCode::Forbidden, &message, Some(name));
            return None;
        }
        Some(topic)
    }

    /// A page of the topic's members (contract §10.5), never larger than
    /// `limits.max_message_size`.
    pub(super) async fn presence(
        &self,
        reference: Option<&str>,
        name: &str,
        limit: Option<u64>,
        cursor: Option<&str>,
    ) {
        let Some(topic) = self.presence_topic(reference, name) else {
            return;
        };
        let limit = match limit {
            None => presence::DEFAULT_PAGE,
            Some(n) if (1..=presence::MAX_PAGE as u64).contains(&n) => n as usize,
            Some(_) => {
                let message = format!("'limit' must be from 1 to {}", presence::MAX_PAGE);
                return self.error(reference, ErrorCode::BadRequest, &message, Some(name));
            }
        };
        let render = |page: &MemberPage| {
            let public: Vec<_> = page.members.iter().map(Member::public).collect();
            ServerFrame::Presence {
                reference,
                topic: name,
                members: &public,
                count: page.count,
                next_cursor: page.next_cursor.as_deref(),
            }
            .to_json()
        };
        let max = self.node.config.limits.max_message_size;
        match presence::page_within(&*self.node.broker, &topic, cursor, limit, max, render).await {
            Ok(frame) => self.push(self.outbox.reply_frame(frame.as_bytes())),
            Err(e) => self.broker_error(reference, &e, name),
        }
    }

    /// How many are present on the topic (contract §10.5).
    pub(super) async fn presence_stats(&self, reference: Option<&str>, name: &str) {
        let Some(topic) = self.presence_topic(reference, name) else {
            return;
        };
        match self.node.broker.members(&topic, None, 0).await {
            Ok(page) => self.reply(&ServerFrame::PresenceStats {
                reference,
                topic: name,
                count: page.count,
                users: page.users,
            }),
            Err(e) => self.broker_error(reference, &e, name),
        }
    }

    /// A presence read the broker refused.
    pub(super) fn broker_error(&self, reference: Option<&str>, e: &BrokerError, name: &str) {
        debug!(error = %e, "presence read failed in the broker");
        let message = match e {
            BrokerError::Invalid(why) => why.as_str(),
            _ => "the broker is unavailable; retry later",
        };
        self.error(reference, e.code(), message, Some(name));
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
        self.leave_presence(&held, Some(LeaveCause::Unsubscribe));
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
        data: Payload<'_>,
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
        if let Err(e) = rules.check(&data, event.as_deref(), None) {
            return self.error(reference, e.code(), &e.to_string(), Some(name));
        }
        let data = match self.backend_vets_publish(&topic, data).await {
            Ok((data, false)) => data,
            Ok((replaced, true)) => match rules.check(&replaced, event.as_deref(), None) {
                // The backend's replacement is held to the same rules.
                Ok(()) => replaced,
                Err(e) => return self.error(reference, e.code(), &e.to_string(), Some(name)),
            },
            Err(refusal) => {
                return self.error(reference, refusal.code(), refusal.message(), Some(name));
            }
        };
        let publication = Publication {
            event,
            ..Publication::of(topic, data.into_owned())
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

    /// Asks the subscribe hook about each new topic it covers, all at
    /// once; the first refusal is the request's answer (all or nothing, as
    /// for permissions). Returns whether the request may go on.
    async fn backend_allows_subscribe(&self, reference: Option<&str>, new: &[Topic]) -> bool {
        let Some(proxy) = &self.node.proxy else {
            return true;
        };
        let asked: Vec<&Topic> = new.iter().filter(|t| proxy.asks_subscribe(t)).collect();
        if asked.is_empty() {
            return true;
        }
        let session = self.node.session_name(self.outbox.id);
        let answers = futures_util::future::join_all(
            asked
                .iter()
                .map(|t| proxy.subscribe(&self.claims, &session, t)),
        )
        .await;
        match asked
            .iter()
            .zip(answers)
            .find_map(|(t, a)| a.err().map(|e| (t, e)))
        {
            None => true,
            Some((topic, refusal)) => {
                self.error(
                    reference,
                    refusal.code(),
                    refusal.message(),
                    Some(topic.as_str()),
                );
                false
            }
        }
    }

    /// A client publish to a topic the publish hook covers goes through it:
    /// the data as sent (`false`), the backend's replacement (`true`), or
    /// its refusal.
    async fn backend_vets_publish<'a>(
        &self,
        topic: &Topic,
        data: Payload<'a>,
    ) -> Result<(Payload<'a>, bool), crate::proxy::Refused> {
        let Some(proxy) = self.node.proxy.as_ref().filter(|p| p.asks_publish(topic)) else {
            return Ok((data, false));
        };
        let session = self.node.session_name(self.outbox.id);
        Ok(
            match proxy.publish(&self.claims, &session, topic, &data).await? {
                None => (data, false),
                Some(replacement) => (Payload::Json(std::borrow::Cow::Owned(replacement)), true),
            },
        )
    }

    pub(super) fn auth(&mut self, reference: Option<&str>, token: &str) {
        let (claims, id) = match self.node.verifier.verify_token(token) {
            Ok(verified) => verified,
            Err(e) => {
                // An expired replacement is as useless as a forged one.
                self.error(reference, ErrorCode::Unauthorized, &e.to_string(), None);
                return;
            }
        };
        if self
            .node
            .revocations
            .is_revoked(&claims.sub, id.jti.as_deref(), id.iat)
        {
            self.error(reference, ErrorCode::Unauthorized, "token revoked", None);
            return;
        }
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
        self.outbox.token.set(id.jti.as_deref(), id.iat);
        self.reply(&ServerFrame::Authed { reference, exp });
        for t in &self.topics {
            if self.node.config.presence.tracks(t) {
                let sees = self.sees_presence(t);
                self.node
                    .hub
                    .registry()
                    .set_presence(t, self.outbox.id, sees);
            }
        }
        if !lost.is_empty() {
            for t in &lost {
                self.topics.remove(t);
            }
            self.node.hub.unsubscribe(&self.outbox, &lost);
            self.leave_presence(&lost, Some(LeaveCause::Unsubscribe));
            let mut names: Vec<&str> = lost.iter().map(Topic::as_str).collect();
            names.sort_unstable();
            self.reply(&ServerFrame::Unsubscribed {
                reference: None,
                topics: &names,
            });
        }
    }
}
