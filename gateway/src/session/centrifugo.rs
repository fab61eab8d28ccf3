//! Centrifugo's client protocol on a session (contract §10.7): each command
//! is translated into the request a `/ws` client would make and handled by
//! the same session code (permissions, hooks, limits, presence, the hub and
//! the broker), and each reply is translated back. Nothing here keeps state
//! of its own or reaches the broker by another path.
//!
//! What is specific to the protocol:
//! - the `connect` command is the first of the connection (the handshake
//!   read its token, `crate::ws::connect`) and is answered here, in place of
//!   `welcome`; a second one, or any command before it, closes with 3501;
//! - a subscribe names one channel and its reply carries the events the
//!   session gets before its live ones (the replay of a recovery, and what
//!   was published while the subscription went live), rendered under the
//!   topic's lock by [`crate::hub::Hub::recover_in_reply`], because
//!   Centrifugo's SDKs drop publications that arrive before the reply;
//! - `history` reads the topic's history through the hub's bounded reads,
//!   for a client allowed to subscribe to it;
//! - `presence` answers one page of up to 1,000 members (the protocol has no
//!   paging), within `limits.max_message_size`;
//! - `rpc` and `sub_refresh` are answered with error 104; `send` (which has
//!   no reply) is dropped.
//!
//! Command ids are Herald `ref`s written in decimal, so a refusal from the
//! shared code finds its way back to the command that caused it.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use herald_core::broker::presence;
use herald_core::{Broker, Event, Position};
use herald_protocol::centrifugo::schema::{
    self, ClientInfo, Command, ConnectResult, Empty, HistoryRequest, HistoryResult, PresenceResult,
    PresenceStatsResult, PublishRequest, RefreshResult, Reply, SubscribeRequest, SubscribeResult,
    Unsubscribe,
};
use herald_protocol::centrifugo::{self, Wire};
use herald_protocol::{CloseCode, ErrorCode, Payload, ServerFrame};
use serde_json::value::RawValue;
use tracing::debug;

use super::Session;
use crate::hub::Recovered;
use crate::wire::codec::Encoding;

/// The unsubscribe push's code for a channel the session lost (a refreshed
/// token without it): below 2500, so the SDKs do not subscribe again.
const UNSUBSCRIBED_BY_SERVER: u32 = 2000;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds until `exp`, as the SDKs schedule their token refresh.
fn ttl(exp: u64) -> u32 {
    u32::try_from(exp.saturating_sub(unix_now()))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// A stream position as the protocol writes it.
fn stream(p: Position) -> (String, u64) {
    (format!("{:08x}", p.epoch), p.seq)
}

fn error_reply(id: u32, code: u32, message: String, temporary: bool) -> Reply {
    Reply {
        id,
        error: Some(schema::Error {
            code,
            message,
            temporary,
        }),
        ..Reply::default()
    }
}

impl Session {
    /// The connection's wire encoding (always Centrifugo's here).
    fn wire(&self) -> Wire {
        match self.outbox.encoding {
            Encoding::Centrifugo(wire) => wire,
            _ => Wire::Json,
        }
    }

    /// Queues one message of the protocol.
    pub(super) fn push_centrifugo(&self, wire: Wire, reply: &Reply) {
        let payload = centrifugo::encode(wire, reply);
        self.push(self.outbox.encoding.frame(&payload, self.outbox.deflate));
    }

    /// One WebSocket message of commands; a close code ends the session.
    pub(super) async fn on_centrifugo(&mut self, bytes: &[u8]) -> Result<(), CloseCode> {
        let wire = self.wire();
        let commands =
            centrifugo::decode_commands(wire, bytes).map_err(|_| CloseCode::ProtocolError)?;
        for command in commands {
            self.on_command(wire, command).await?;
        }
        Ok(())
    }

    async fn on_command(&mut self, wire: Wire, c: Command) -> Result<(), CloseCode> {
        let id = c.id;
        if c.connect.is_some() {
            if self.connected || id == 0 {
                return Err(CloseCode::ProtocolError);
            }
            self.connected = true;
            self.answer_connect(wire, id);
            return Ok(());
        }
        if !self.connected {
            return Err(CloseCode::ProtocolError);
        }
        if id == 0 {
            return match c {
                // A pong: the session saw the client, nothing to answer.
                c if c == Command::default() => Ok(()),
                c if c.send.is_some() => {
                    debug!("centrifugo send: not supported, dropped");
                    Ok(())
                }
                // A request that needs a reply, without an id.
                _ => Err(CloseCode::ProtocolError),
            };
        }
        let reference = id.to_string();
        let r = Some(reference.as_str());
        if !self.within_rate(r)? {
            return Ok(());
        }
        if let Some(s) = c.subscribe {
            self.centrifugo_subscribe(wire, id, s).await;
        } else if let Some(u) = c.unsubscribe {
            self.unsubscribe(r, &[u.channel]);
        } else if let Some(p) = c.publish {
            self.centrifugo_publish(wire, r, p).await;
        } else if let Some(p) = c.presence {
            self.centrifugo_presence(wire, id, &p.channel).await;
        } else if let Some(p) = c.presence_stats {
            self.presence_stats(r, &p.channel).await;
        } else if let Some(h) = c.history {
            self.centrifugo_history(wire, id, h).await;
        } else if c.ping.is_some() {
            self.reply(&ServerFrame::Pong { reference: r });
        } else if let Some(t) = c.refresh {
            self.auth(r, &t.token);
        } else {
            let what = if c.rpc.is_some() {
                "rpc is not supported by Herald"
            } else if c.sub_refresh.is_some() {
                "subscription tokens are not supported by Herald"
            } else {
                "unknown method"
            };
            let reply = error_reply(id, centrifugo::METHOD_NOT_FOUND, what.to_owned(), false);
            self.push_centrifugo(wire, &reply);
        }
        Ok(())
    }

    /// The `connect` command's answer: who the session is, when its token
    /// expires (the SDKs refresh it before), and the server's ping period.
    fn answer_connect(&self, wire: Wire, id: u32) {
        let node = &self.node;
        let session = node.session_name(self.outbox.id);
        let interval = node.config.heartbeat.interval;
        let ping = u32::try_from(interval.as_millis().div_ceil(1000)).unwrap_or(u32::MAX);
        let result = ConnectResult {
            client: session.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            expires: true,
            ttl: ttl(self.claims.exp),
            ping,
            pong: true,
            session,
            node: node.config.node.id.clone(),
        };
        self.push_centrifugo(
            wire,
            &Reply {
                id,
                connect: Some(result),
                ..Reply::default()
            },
        );
    }

    /// A Herald reply as the protocol's messages (none for frames it has
    /// no counterpart for, such as `token_expiring`: its SDKs refresh on
    /// their own from the `ttl` they were given).
    pub(super) fn centrifugo_replies(&self, frame: &ServerFrame<'_>) -> Vec<Reply> {
        let id = |r: &Option<&str>| r.and_then(|r| r.parse::<u32>().ok()).unwrap_or(0);
        let reply = |reference: &Option<&str>, fill: &dyn Fn(&mut Reply)| {
            let mut reply = Reply {
                id: id(reference),
                ..Reply::default()
            };
            fill(&mut reply);
            // Nothing can be answered without an id.
            (reply.id != 0).then_some(reply)
        };
        let one = match frame {
            ServerFrame::Error {
                reference,
                code,
                message,
                ..
            } => {
                let (code, _, temporary) = centrifugo::error(*code);
                let message = (*message).to_owned();
                reply(reference, &|r| {
                    r.error = Some(schema::Error {
                        code,
                        message: message.clone(),
                        temporary,
                    });
                })
            }
            ServerFrame::Unsubscribed {
                reference: None,
                topics,
            } => {
                return topics
                    .iter()
                    .map(|t| Reply {
                        push: Some(schema::Push {
                            channel: (*t).to_owned(),
                            unsubscribe: Some(Unsubscribe {
                                code: UNSUBSCRIBED_BY_SERVER,
                                reason: "permission lost".to_owned(),
                            }),
                            ..schema::Push::default()
                        }),
                        ..Reply::default()
                    })
                    .collect();
            }
            ServerFrame::Unsubscribed { reference, .. } => {
                reply(reference, &|r| r.unsubscribe = Some(Empty {}))
            }
            ServerFrame::Published { reference, .. } => {
                reply(reference, &|r| r.publish = Some(Empty {}))
            }
            ServerFrame::Pong { reference } => reply(reference, &|r| r.ping = Some(Empty {})),
            ServerFrame::Authed { reference, exp } => {
                let client = self.node.session_name(self.outbox.id);
                reply(reference, &|r| {
                    r.refresh = Some(RefreshResult {
                        client: client.clone(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        expires: true,
                        ttl: ttl(*exp),
                    });
                })
            }
            ServerFrame::PresenceStats {
                reference,
                count,
                users,
                ..
            } => reply(reference, &|r| {
                r.presence_stats = Some(PresenceStatsResult {
                    num_clients: u32::try_from(*count).unwrap_or(u32::MAX),
                    num_users: u32::try_from(*users).unwrap_or(u32::MAX),
                });
            }),
            _ => None,
        };
        one.into_iter().collect()
    }

    /// Subscribe to one channel, recovering from `offset`/`epoch` when
    /// asked; every subscription is positioned and recoverable.
    async fn centrifugo_subscribe(&mut self, wire: Wire, id: u32, req: SubscribeRequest) {
        let reference = id.to_string();
        let r = Some(reference.as_str());
        let names = [req.channel];
        let Some((_, mut new)) = self.admit_subscribe(r, &names).await else {
            return;
        };
        let Some(topic) = new.pop() else {
            let reply = error_reply(
                id,
                centrifugo::ALREADY_SUBSCRIBED,
                "already subscribed".to_owned(),
                false,
            );
            return self.push_centrifugo(wire, &reply);
        };
        let hub = &self.node.hub;
        let sees = self.sees_presence(&topic);
        if let Err(e) = hub.hold(&self.outbox, &topic, false, sees).await {
            debug!(error = %e, "subscribe failed in the broker");
            let message = "the broker is unavailable; retry later";
            return self.error(r, e.code(), message, None);
        }
        let since = if req.recover {
            centrifugo::since(&req.epoch, req.offset)
        } else {
            String::new()
        };
        let (encoding, deflate) = (self.outbox.encoding, self.outbox.deflate);
        let render = |done: &Recovered, events: &[&Event]| {
            let (epoch, offset) = stream(done.position);
            let result = SubscribeResult {
                recoverable: true,
                positioned: true,
                epoch,
                offset,
                recovered: done.recovered,
                was_recovering: req.recover,
                publications: events
                    .iter()
                    .filter_map(|e| centrifugo::publication(&e.record, wire))
                    .collect(),
            };
            let reply = Reply {
                id,
                subscribe: Some(result),
                ..Reply::default()
            };
            encoding.frame(&centrifugo::encode(wire, &reply), deflate)
        };
        let budget = self.node.config.limits.client_queue;
        hub.recover_in_reply(&self.outbox, &topic, &since, budget, &render)
            .await;
        self.join_presence(std::iter::once(&topic)).await;
        self.topics.insert(topic);
    }

    /// A client publish: JSON data as it came; Protobuf data as JSON when
    /// it is JSON text, else as bytes (contract §10.2).
    async fn centrifugo_publish(&mut self, wire: Wire, r: Option<&str>, req: PublishRequest) {
        let json = |bytes: &[u8]| {
            let text = std::str::from_utf8(bytes).ok()?;
            RawValue::from_string(text.to_owned()).ok()
        };
        let payload = match (wire, json(&req.data)) {
            (_, Some(raw)) => Payload::Json(Cow::Owned(raw)),
            (Wire::Protobuf, None) => Payload::Bytes(Cow::Owned(req.data)),
            (Wire::Json, None) => {
                let message = "'data' is required";
                return self.error(r, ErrorCode::BadRequest, message, Some(&req.channel));
            }
        };
        self.publish(r, &req.channel, payload, None).await;
    }

    /// Who is present: the first 1,000 members (the protocol has no
    /// paging), fewer when they would not fit in `limits.max_message_size`.
    async fn centrifugo_presence(&self, wire: Wire, id: u32, channel: &str) {
        let reference = id.to_string();
        let r = Some(reference.as_str());
        let Some(topic) = self.presence_topic(r, channel) else {
            return;
        };
        let render = |page: &herald_core::MemberPage| {
            let presence = page
                .members
                .iter()
                .map(|m| {
                    let info = ClientInfo {
                        user: m.sub.clone(),
                        client: m.session.clone(),
                        conn_info: m
                            .info
                            .as_ref()
                            .map(|i| i.0.get().as_bytes().to_vec())
                            .unwrap_or_default(),
                    };
                    (m.session.clone(), info)
                })
                .collect();
            let reply = Reply {
                id,
                presence: Some(PresenceResult { presence }),
                ..Reply::default()
            };
            centrifugo::encode(wire, &reply)
        };
        let max = self.node.config.limits.max_message_size;
        let broker = &*self.node.broker;
        match presence::page_within(broker, &topic, None, presence::MAX_PAGE, max, render).await {
            Ok(payload) => self.push(self.outbox.encoding.frame(&payload, self.outbox.deflate)),
            Err(e) => self.broker_error(r, &e, channel),
        }
    }

    /// A channel's history, for a client allowed to subscribe to it:
    /// `limit` 0 gives only the stream's position, a negative one (or one
    /// above `history.size`) everything kept; `since` reads after a
    /// position (error 112 when it is no longer kept); `reverse` gives the
    /// newest first.
    async fn centrifugo_history(&self, wire: Wire, id: u32, req: HistoryRequest) {
        let reference = id.to_string();
        let r = Some(reference.as_str());
        let Some(topic) = self.parse_topics(r, std::slice::from_ref(&req.channel)) else {
            return;
        };
        let Some(topic) = topic.into_iter().next() else {
            return;
        };
        if !self.claims.topics.allows(&topic) {
            let message = format!("not allowed to read the history of {topic}");
            return self.error(r, ErrorCode::Forbidden, &message, Some(&req.channel));
        }
        let since = req
            .since
            .as_ref()
            .map(|s| centrifugo::since(&s.epoch, s.offset));
        let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
        // Newest first reads everything after `since` and keeps the end.
        let read_limit = if req.reverse { usize::MAX } else { limit };
        let page = match self
            .node
            .hub
            .history_page(&topic, since.as_deref(), read_limit)
            .await
        {
            Ok(page) => page,
            Err(e) => return self.broker_error(r, &e, &req.channel),
        };
        if since.is_some() && !page.recovered {
            let reply = error_reply(
                id,
                centrifugo::UNRECOVERABLE_POSITION,
                "unrecoverable position".to_owned(),
                false,
            );
            return self.push_centrifugo(wire, &reply);
        }
        let mut events: Vec<&Event> = page.events.iter().collect();
        if req.reverse {
            events.reverse();
        }
        events.truncate(limit);
        let head = match page.head {
            Some(head) => Some(head),
            // No history yet: the position its first event will follow.
            None => self.node.broker.position(&topic).await.ok(),
        };
        let (epoch, offset) = head.map(stream).unwrap_or_default();
        let result = HistoryResult {
            publications: events
                .iter()
                .filter_map(|e| centrifugo::publication(&e.record, wire))
                .collect(),
            epoch,
            offset,
        };
        let reply = Reply {
            id,
            history: Some(result),
            ..Reply::default()
        };
        self.push_centrifugo(wire, &reply);
    }
}
