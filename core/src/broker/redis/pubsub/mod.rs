//! The pub/sub side of the Redis broker: a router and a few connections.
//!
//! Every topic a node wants is subscribed on exactly one of a small, fixed set
//! of connections: with a single Redis, `PUBSUB_CONNECTIONS` connections
//! chosen by the channel's hash; with Redis Cluster, one connection per master,
//! chosen by the channel's slot (SSUBSCRIBE), so a node receives only its own
//! topics and each shard only carries the topics it owns.
//!
//! The router owns the wanted set and the routing; each connection task owns
//! its socket, batches SUBSCRIBE/UNSUBSCRIBE commands, resolves each
//! subscription's [`Ready`](crate::Ready) when Redis confirms it, delivers
//! messages to the sink in arrival order, and reconnects with backoff,
//! subscribing everything again. Both talk through unbounded channels whose
//! sends never block, so `Broker::subscribe` can be called under the hub's
//! lock and commands keep their call order end to end.
//!
//! Cluster topology: a MOVED reply to SSUBSCRIBE, or a SUNSUBSCRIBE Redis
//! sends on its own when a slot migrates, sends the channel back to the
//! router, which reads `CLUSTER SLOTS` again and re-routes every channel whose
//! owner changed. A master that stays unreachable also triggers a re-read, so
//! a failover is followed once the cluster has promoted a replica.

//!
//! Files: [`router`] (the wanted set and where each channel lives),
//! [`conn`] (one connection's loop: commands, confirmations, delivery) and
//! [`transport`] (connecting, TLS, AUTH, one-shot commands).

mod conn;
mod router;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use herald_protocol::Topic;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::sync::watch;

use super::commands::Commands;
use crate::broker::{BrokerError, Event, EventSink, Position, ReadySender};
use crate::metrics::Metrics;
use router::Router;
pub use transport::{Endpoint, TransportError, command};

/// Connections per node to a single (non-cluster) Redis.
pub const PUBSUB_CONNECTIONS: usize = 2;
/// Channels per SUBSCRIBE command when subscribing in bulk.
const SUBSCRIBE_CHUNK: usize = 512;
/// Health-check period of an idle connection.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A connection that read nothing for this long is considered dead.
const DEAD_AFTER: Duration = Duration::from_secs(15);
/// How often each connection proves its path with a probe.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe Redis accepted that has not come back after this long means the
/// connection no longer delivers: it is torn down and made again.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a subscribed channel carries.
#[derive(Clone, Debug)]
pub enum Target {
    /// Events of a topic.
    Topic(Topic),
    /// The cluster control channel.
    Control,
    /// This connection's own liveness probe.
    Probe,
}

/// Called with each payload of the control channel.
pub type ControlHandler = Arc<dyn Fn(Bytes) + Send + Sync>;

/// Routing mode.
#[derive(Clone, Debug)]
pub enum Mode {
    /// One Redis: `PUBSUB_CONNECTIONS` connections to it.
    Single(Endpoint),
    /// A Redis Cluster reached through these seeds.
    Cluster(Vec<Endpoint>),
    /// The primary of a Sentinel group, whichever it is now:
    /// `PUBSUB_CONNECTIONS` connections to it, made again when it changes.
    Sentinel(watch::Receiver<Option<Endpoint>>),
}

/// What the connections need besides their commands: where events go, and
/// how to prove their path (probes are published through the command
/// pool, the way events are).
#[derive(Clone)]
pub struct Shared {
    /// Receives every event.
    pub sink: Arc<dyn EventSink>,
    /// Receives every control-channel payload.
    pub control: ControlHandler,
    /// Publishes the probes.
    pub commands: Arc<Commands>,
    /// Probe round trips.
    pub metrics: Arc<Metrics>,
    /// Names this process's probe channels.
    pub probe_tag: Arc<str>,
}

/// What the router is asked to do (by the handle and its connections).
pub(crate) enum RouterCmd {
    Subscribe {
        channel: Bytes,
        target: Target,
        ready: Option<ReadySender>,
    },
    Unsubscribe {
        channel: Bytes,
    },
    /// A connection lost a channel to another shard.
    Moved {
        channel: Bytes,
        target: Target,
        ready: Vec<ReadySender>,
    },
    /// The topics wanted now.
    Topics(tokio::sync::oneshot::Sender<Vec<Topic>>),
    /// A connection came up or went down.
    State {
        conn: usize,
        up: bool,
    },
}

/// What a connection is asked to do by the router.
pub(crate) enum ConnCmd {
    /// Subscribe; the flag asks for a resync once confirmed (the channel
    /// moved here from elsewhere, so events may have been missed).
    Subscribe(Bytes, Target, Option<ReadySender>, bool),
    Unsubscribe(Bytes),
    /// Probe on this channel from now on (its slot is the connection's).
    Probe(Bytes),
}

/// The broker's handle on its pub/sub side.
pub struct PubSub {
    tx: UnboundedSender<RouterCmd>,
    up: Arc<AtomicBool>,
}

impl PubSub {
    /// Starts the router (and, lazily, its connections) on the current runtime.
    pub fn start(mode: Mode, shared: Shared) -> PubSub {
        let (tx, rx) = unbounded_channel();
        let up = Arc::new(AtomicBool::new(false));
        let router = Router::new(mode, shared, tx.clone(), up.clone());
        tokio::spawn(
            router
                .run(rx)
                .instrument(tracing::info_span!("redis_pubsub")),
        );
        PubSub { tx, up }
    }

    /// Subscribes `channel`; `ready` resolves on Redis' confirmation.
    pub fn subscribe(&self, channel: Bytes, target: Target, ready: Option<ReadySender>) {
        if let Err(e) = self.tx.send(RouterCmd::Subscribe {
            channel,
            target,
            ready,
        }) {
            if let RouterCmd::Subscribe { ready: Some(r), .. } = e.0 {
                r.send(Err(BrokerError::Unavailable(
                    "pub/sub router stopped".to_owned(),
                )));
            }
        }
    }

    /// Unsubscribes `channel`.
    pub fn unsubscribe(&self, channel: Bytes) {
        let _ = self.tx.send(RouterCmd::Unsubscribe { channel });
    }

    /// The topics subscribed (wanted) now; empty once the router stopped.
    pub async fn topics(&self) -> Vec<Topic> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(RouterCmd::Topics(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Whether every connection is up and has proven its path.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// A published payload, split: a run of `<id> <len>\n<message json>`
/// records (slices of the payload, no copy), optionally preceded by
/// `! <epoch>\n`: the events start a new epoch that replaced that one
/// because it may have lost acknowledged events (see `lua/fence.lua`).
#[derive(Debug)]
pub struct Decoded {
    /// The epoch the events' epoch replaced by fencing.
    pub replaced: Option<u32>,
    /// The events, in order.
    pub events: Vec<Event>,
}

/// A presence announcement on a topic's channel: `+<member JSON>` (join) or
/// `-<member JSON>` (leave); `None` for a payload of events (which starts
/// with an id or a fence marker, never with `+` or `-`).
pub fn presence_change(payload: &[u8]) -> Option<(crate::broker::Change, &[u8])> {
    use crate::broker::Change;
    match payload.split_first()? {
        (b'+', json) => Some((Change::Join, json)),
        (b'-', json) => Some((Change::Leave, json)),
        _ => None,
    }
}

/// Splits a published payload (see [`Decoded`]).
pub fn decode(topic: &Topic, payload: &Bytes) -> Option<Decoded> {
    let mut events = Vec::with_capacity(1);
    let mut at = 0;
    let mut replaced = None;
    if let Some(rest) = payload.strip_prefix(b"! ") {
        let newline = rest.iter().position(|&b| b == b'\n')?;
        let epoch = std::str::from_utf8(&rest[..newline]).ok()?;
        replaced = Some(u32::from_str_radix(epoch, 16).ok()?);
        at = 2 + newline + 1;
    }
    while at < payload.len() {
        let rest = &payload[at..];
        let newline = rest.iter().position(|&b| b == b'\n')?;
        let (id, len) = std::str::from_utf8(&rest[..newline])
            .ok()?
            .split_once(' ')?;
        let position = Position::parse(id)?;
        let len: usize = len.parse().ok()?;
        let start = at + newline + 1;
        let end = start.checked_add(len).filter(|e| *e <= payload.len())?;
        events.push(Event {
            topic: topic.clone(),
            position,
            record: payload.slice(start..end),
        });
        at = end;
    }
    Some(Decoded { replaced, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_announcements_are_told_from_events() {
        use crate::broker::Change;
        assert_eq!(presence_change(b"+{}"), Some((Change::Join, &b"{}"[..])));
        assert_eq!(
            presence_change(b"-{\"a\":1}"),
            Some((Change::Leave, &b"{\"a\":1}"[..]))
        );
        assert_eq!(presence_change(b"0000000a-1 2\n{}"), None);
        assert_eq!(presence_change(b"! 0000000a\n"), None);
        assert_eq!(presence_change(b""), None);
    }

    #[test]
    fn a_fence_marker_names_the_replaced_epoch() {
        let topic = Topic::new("news").unwrap();
        let payload = Bytes::from_static(b"! 0000000a\n0000000b-1 2\n{}");
        let decoded = decode(&topic, &payload).unwrap();
        assert_eq!(decoded.replaced, Some(10));
        assert_eq!(decoded.events.len(), 1);
        assert_eq!(decoded.events[0].position, Position { epoch: 11, seq: 1 });
    }

    #[test]
    fn payloads_decode_without_copy() {
        let topic = Topic::new("news").unwrap();
        let payload = Bytes::from_static(b"0000000a-7 18\n{\"type\":\"message\"}0000000a-8 2\n{}");
        let decoded = decode(&topic, &payload).unwrap();
        assert_eq!(decoded.replaced, None);
        let events = decoded.events;
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].position, Position { epoch: 10, seq: 7 });
        assert_eq!(&events[0].record[..], b"{\"type\":\"message\"}");
        assert_eq!(
            events[0].record.as_ptr(),
            payload[14..].as_ptr(),
            "a slice, not a copy"
        );
        assert_eq!(events[1].position.seq, 8);
        assert_eq!(&events[1].record[..], b"{}");
        for bad in [
            &b"no newline"[..],
            b"bad 2\n{}",
            b"0000000a-7 99\n{}",
            b"0000000a-7\n{}",
            b"! zz\n0000000a-7 2\n{}",
            b"! 0000000a",
        ] {
            assert!(
                decode(&topic, &Bytes::copy_from_slice(bad)).is_none(),
                "{bad:?}"
            );
        }
    }
}
