//! One client session: the protocol of contract §5 on top of a [`Conn`].
//!
//! The session task owns everything about its client: the token's claims,
//! the topics it holds, its timers (heartbeat, token expiry) and its rate
//! limiter. Shared state is reached only through the hub (subscriptions) and
//! the outbox (queued frames, close requests). Commands are handled one at a
//! time in arrival order, so replies are in request order.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::{Broker, Publication};
use herald_protocol::{
    ClientFrame, CloseCode, ErrorCode, PROTOCOL_VERSION, ServerFrame, Topic, parse_client_frame,
};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::auth::Claims;
use crate::node::{Node, Permit};
use crate::outbox::{Outbox, Pushed};
use crate::ws::codec::{self, Decoder, Message};
use crate::ws::conn::{Conn, NextStep, Step};
use crate::ws::deflate::Deflate;
use herald_core::metrics::DropReason;

/// How long before `exp` the client is warned with `token_expiring`.
const EXPIRY_WARNING: Duration = Duration::from_secs(60);
/// Longest wait for a client to take our Close before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// `rate_limited` replies within [`STRIKE_WINDOW`] that close the connection.
const MAX_STRIKES: usize = 20;
const STRIKE_WINDOW: Duration = Duration::from_secs(10);
/// Timers further out than this are re-armed when they fire.
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

/// Token bucket for client data frames.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The times the session timer serves.
struct Timers {
    last_seen: Instant,
    next_ping: Instant,
    /// When to send `token_expiring`; `None` once sent.
    warn_at: Option<Instant>,
    /// When to close with 4001.
    expire_at: Instant,
}

fn instant_of_unix(exp_secs: u64, offset: Duration, now: Instant) -> Instant {
    let now_ms = herald_core::now_ms();
    let target_ms = exp_secs
        .saturating_mul(1000)
        .saturating_add(offset.as_millis() as u64);
    let until = Duration::from_millis(target_ms.saturating_sub(now_ms)).min(MAX_TIMER * 365);
    now.checked_add(until).unwrap_or(now + MAX_TIMER)
}

fn expiry_times(exp: u64, leeway: Duration, now: Instant) -> (Instant, Instant) {
    let expire_at = instant_of_unix(exp, leeway, now);
    let warn_at = instant_of_unix(
        exp.saturating_sub(EXPIRY_WARNING.as_secs()),
        Duration::ZERO,
        now,
    );
    (warn_at, expire_at)
}

struct Session {
    node: Arc<Node>,
    outbox: Arc<Outbox>,
    claims: Claims,
    topics: HashSet<Topic>,
    timers: Timers,
    bucket: Bucket,
    /// Times of recent `rate_limited` replies; allocated on the first one.
    strikes: VecDeque<Instant>,
}

/// Runs a session on an upgraded connection until it closes.
pub async fn run<S>(
    io: S,
    initial: Bytes,
    node: Arc<Node>,
    claims: Claims,
    deflate: Option<Deflate>,
    permit: Permit,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (id, session_id) = node.next_session();
    let config = &node.config;
    let decoder =
        Decoder::new(config.limits.max_message_size, false).with_deflate(deflate.is_some());
    let mut conn = Conn::new(io, decoder, &initial);
    drop(initial);
    let outbox = Arc::new(
        Outbox::new(id, claims.sub.clone(), config.limits.client_queue).with_deflate(deflate),
    );
    node.hub.add_session(&outbox);
    debug!(session = %session_id, sub = %claims.sub, "session opened");

    let now = Instant::now();
    let (warn_at, expire_at) = expiry_times(claims.exp, node.verifier.leeway(), now);
    let mut session = Session {
        timers: Timers {
            last_seen: now,
            next_ping: now + config.heartbeat.interval,
            warn_at: Some(warn_at),
            expire_at,
        },
        bucket: Bucket::new(config.limits.client_rate, config.limits.client_burst, now),
        node: node.clone(),
        outbox: outbox.clone(),
        claims,
        topics: HashSet::new(),
        strikes: VecDeque::new(),
    };
    session.reply(&ServerFrame::Welcome {
        session: &session_id,
        node: &node.config.node.id,
        heartbeat_ms: u64::try_from(config.heartbeat.interval.as_millis()).unwrap_or(u64::MAX),
        protocol: PROTOCOL_VERSION,
    });
    drop(session_id);

    let sleep = tokio::time::sleep_until(session.next_deadline().into());
    tokio::pin!(sleep);
    let end = match conn.decode_initial() {
        Err(code) => End::Close(code),
        Ok(()) => loop {
            let step = NextStep {
                conn: &mut conn,
                outbox: &outbox,
                sleep: sleep.as_mut(),
                metrics: &node.metrics,
            }
            .await;
            match step {
                Step::Messages => {
                    session.timers.last_seen = Instant::now();
                    if let Some(end) = session.handle_messages(&mut conn).await {
                        break end;
                    }
                }
                Step::Timer => {
                    if let Some(code) = session.on_timer(Instant::now()) {
                        break End::Close(code);
                    }
                    sleep.as_mut().reset(session.next_deadline().into());
                }
                Step::Close(code) => break End::Close(code),
                Step::Gone => break End::Gone,
            }
        },
    };

    let deadline = Instant::now() + CLOSE_GRACE;
    match end {
        End::Close(code) => {
            outbox.close(code);
            node.metrics.disconnect(code);
            // Boxed, like every rarely-taken await below: an idle session's
            // future is then only as large as its steady state.
            Box::pin(conn.close(
                Some(code.as_u16()),
                code.reason(),
                &outbox,
                &node.metrics,
                deadline,
            ))
            .await;
        }
        End::PeerClosed(code) => {
            outbox.close(CloseCode::Normal);
            Box::pin(conn.answer_close(code, &outbox, &node.metrics, deadline)).await;
        }
        End::Gone => {
            outbox.close(CloseCode::Normal);
        }
    }
    node.hub.remove_session(&outbox, &session.topics);
    debug!(sub = %session.claims.sub, "session closed");
    drop(permit);
}

enum End {
    Close(CloseCode),
    PeerClosed(Option<u16>),
    Gone,
}

impl Session {
    /// Queues a frame for this client, counting what an overflow discards.
    fn push(&self, frame: Bytes) {
        if let Pushed::Overflow(n) = self.outbox.push_reply(frame) {
            self.node
                .metrics
                .dropped(DropReason::SlowConsumer, n as u64);
        }
    }

    fn reply(&self, frame: &ServerFrame<'_>) {
        self.push(self.outbox.text_frame(frame.to_json().as_bytes()));
    }

    fn error(&self, reference: Option<&str>, code: ErrorCode, message: &str, topic: Option<&str>) {
        self.reply(&ServerFrame::Error {
            reference,
            code,
            message,
            topic,
        });
    }

    fn next_deadline(&self) -> Instant {
        let t = &self.timers;
        let mut next = t
            .next_ping
            .min(t.last_seen + self.node.config.heartbeat.timeout)
            .min(t.expire_at);
        if let Some(w) = t.warn_at {
            next = next.min(w);
        }
        next
    }

    /// Handles whatever is due; returns a close code when the session must end.
    fn on_timer(&mut self, now: Instant) -> Option<CloseCode> {
        if now >= self.timers.last_seen + self.node.config.heartbeat.timeout {
            return Some(CloseCode::HeartbeatTimeout);
        }
        if now >= self.timers.expire_at {
            return Some(CloseCode::TokenExpired);
        }
        if self.timers.warn_at.is_some_and(|w| now >= w) {
            self.timers.warn_at = None;
            self.reply(&ServerFrame::TokenExpiring {
                exp: self.claims.exp,
            });
        }
        if now >= self.timers.next_ping {
            self.push(codec::ping_frame(&[]));
            self.timers.next_ping = now + self.node.config.heartbeat.interval;
        }
        None
    }

    async fn handle_messages<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Option<End> {
        while let Some(message) = conn.inbox.pop_front() {
            match message {
                Message::Text(text) => {
                    if let Err(code) = self.on_text(&text).await {
                        return Some(End::Close(code));
                    }
                }
                // The decoder refuses binary frames (1008) before they get here.
                Message::Binary(_) => return Some(End::Close(CloseCode::PolicyViolation)),
                Message::Ping(payload) => self.push(codec::pong_frame(&payload)),
                Message::Pong => {}
                Message::Close(code) => return Some(End::PeerClosed(code)),
            }
        }
        None
    }

    fn strike(&mut self, now: Instant) -> bool {
        let strikes = &mut self.strikes;
        strikes.push_back(now);
        while strikes
            .front()
            .is_some_and(|t| now.duration_since(*t) > STRIKE_WINDOW)
        {
            strikes.pop_front();
        }
        strikes.len() >= MAX_STRIKES
    }

    async fn on_text(&mut self, text: &[u8]) -> Result<(), CloseCode> {
        let Ok(text) = std::str::from_utf8(text) else {
            return Err(CloseCode::InvalidPayload);
        };
        let now = Instant::now();
        if !self.bucket.take(now) {
            let reference = parse_client_frame(text)
                .ok()
                .and_then(|f| f.reference().map(str::to_owned));
            self.error(
                reference.as_deref(),
                ErrorCode::RateLimited,
                "rate limit exceeded",
                None,
            );
            return if self.strike(now) {
                Err(CloseCode::PolicyViolation)
            } else {
                Ok(())
            };
        }
        match parse_client_frame(text) {
            Err(e) => self.error(
                e.reference.as_deref(),
                ErrorCode::BadRequest,
                &e.message,
                None,
            ),
            Ok(frame) => Box::pin(self.dispatch(frame)).await,
        }
        Ok(())
    }

    async fn dispatch(&mut self, frame: ClientFrame<'_>) {
        match frame {
            ClientFrame::Subscribe {
                reference,
                topics,
                since,
            } => {
                self.subscribe(reference.as_deref(), &topics, &since).await;
            }
            ClientFrame::Unsubscribe { reference, topics } => {
                self.unsubscribe(reference.as_deref(), &topics)
            }
            ClientFrame::Publish {
                reference,
                topic,
                data,
                event,
            } => {
                self.publish(reference.as_deref(), &topic, data, event)
                    .await;
            }
            ClientFrame::Ping { reference } => self.reply(&ServerFrame::Pong {
                reference: reference.as_deref(),
            }),
            ClientFrame::Auth { reference, token } => self.auth(reference.as_deref(), &token),
        }
    }

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

    async fn subscribe(
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

    fn unsubscribe(&mut self, reference: Option<&str>, names: &[String]) {
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

    async fn publish(
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
        if let Err(e) = rules.check(data, event.as_deref()) {
            return self.error(reference, e.code(), &e.to_string(), Some(name));
        }
        let publication = Publication {
            topic,
            event,
            data: data.to_owned(),
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

    fn auth(&mut self, reference: Option<&str>, token: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_starts_full_and_refills() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3, t0);
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        assert!(b.take(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn expiry_times_are_in_order() {
        let now = Instant::now();
        let exp = herald_core::now_ms() / 1000 + 120;
        let (warn, expire) = expiry_times(exp, Duration::from_secs(30), now);
        assert!(warn < expire);
        let until_warn = warn - now;
        assert!(
            until_warn > Duration::from_secs(55) && until_warn <= Duration::from_secs(61),
            "{until_warn:?}"
        );
        let (warn, _) = expiry_times(exp - 100, Duration::ZERO, now);
        assert_eq!(warn, now, "already inside the warning window: warn at once");
    }
}

#[cfg(test)]
mod footprint {
    use super::*;
    use herald_core::{Config, Secret};

    /// Memory per idle connection is the product's headline figure: the
    /// session future is most of it, so guard its size against regressions.
    #[tokio::test]
    async fn an_idle_session_stays_small() {
        let mut config = Config::defaults();
        config.jwt.hs256_secret = Some(Secret::new("0123456789abcdef0123"));
        config.admin.api_keys = vec![Secret::new("k")];
        let node = Node::new(config, false).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let claims = Claims {
            sub: Arc::from("a"),
            exp: u64::MAX / 2,
            topics: herald_protocol::Permissions::default(),
            publish: herald_protocol::Permissions::default(),
        };
        let permit = node.try_reserve().unwrap();
        let future = run(stream, Bytes::new(), node.clone(), claims, None, permit);
        let size = std::mem::size_of_val(&future);
        println!("session future: {size} bytes");
        assert!(size < 1536, "the session future grew to {size} bytes");
    }
}
