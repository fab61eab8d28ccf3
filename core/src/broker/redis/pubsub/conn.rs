//! One pub/sub connection: its task, its socket, and the subscriptions the
//! router gave it.
//!
//! The task owns its socket and batches SUBSCRIBE/UNSUBSCRIBE commands;
//! every command it sends is remembered ([`InFlight`]) until Redis confirms
//! it, which is when each waiting subscription's [`Ready`](crate::Ready)
//! resolves. Messages go to the sink in arrival order. A SUNSUBSCRIBE Redis
//! sends on its own, or a MOVED reply, hands the channel back to the router.
//! When the connection is lost it reconnects with backoff, subscribes
//! everything again, and asks the sink to resync each topic once Redis
//! confirms it (events published meanwhile reach the topic's history only).
//! While it is down it keeps applying the router's commands, so its wanted
//! set stays right.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use deadpool_redis::redis;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::super::cluster::slot;
use super::super::resp::{self, Resp};
use super::super::sentinel::role_is_primary;
use super::transport::{Connection, Endpoint, TransportError};
use super::{
    ConnCmd, DEAD_AFTER, PING_EVERY, PROBE_EVERY, PROBE_TIMEOUT, RouterCmd, SUBSCRIBE_CHUNK,
    Shared, Target, decode, presence_change,
};
use crate::backoff::Backoff;
use crate::broker::{BrokerError, ReadySender};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Subscribe,
    Unsubscribe,
    Ping,
}

/// A command sent and the confirmations it still owes.
struct InFlight {
    kind: Kind,
    channels: VecDeque<Bytes>,
}

/// Where a connection connects: a fixed server, or the current primary of a
/// Sentinel group.
#[derive(Clone)]
pub(super) enum Source {
    /// Always this one.
    Fixed(Endpoint),
    /// Whichever primary the sentinels name; `ROLE` is checked on connect.
    Primary(watch::Receiver<Option<Endpoint>>),
}

impl Source {
    fn current(&self) -> Option<Endpoint> {
        match self {
            Source::Fixed(e) => Some(e.clone()),
            Source::Primary(rx) => rx.borrow().clone(),
        }
    }

    /// Resolves when the primary changes (never, for a fixed server).
    async fn changed(&mut self) {
        match self {
            Source::Fixed(_) => std::future::pending().await,
            Source::Primary(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// The liveness probe of one connection: a nonce published through the
/// command pool on the connection's own channel, which must come back.
struct Probe {
    channel: Bytes,
    /// The last nonce sent, and when.
    outstanding: Option<(u64, tokio::time::Instant)>,
    /// The last nonce Redis accepted (set by the publishing task).
    accepted: Arc<AtomicU64>,
    next: u64,
}

/// One pub/sub connection task's state.
pub(super) struct Conn {
    index: usize,
    source: Source,
    /// The address of the last connection (for logs).
    addr: String,
    sharded: bool,
    router: UnboundedSender<RouterCmd>,
    /// Channels this connection should hold.
    channels: HashMap<Bytes, Target>,
    /// Subscriptions waiting for Redis' confirmation.
    pending: HashMap<Bytes, Vec<ReadySender>>,
    /// Channels to resync once their subscription is confirmed.
    resync: HashSet<Bytes>,
    /// Whether this connection was up before: a reconnect resyncs everything.
    connected_before: bool,
    probe: Probe,
    /// Whether a probe came back since this connection was made.
    proven: bool,
    shared: Shared,
}

fn unavailable(why: &str) -> BrokerError {
    BrokerError::Unavailable(why.to_owned())
}

impl Conn {
    pub(super) fn new(
        index: usize,
        source: Source,
        sharded: bool,
        router: UnboundedSender<RouterCmd>,
        probe_channel: Bytes,
        shared: Shared,
    ) -> Conn {
        Conn {
            index,
            addr: source.current().map(|e| e.addr).unwrap_or_default(),
            source,
            sharded,
            router,
            channels: HashMap::new(),
            pending: HashMap::new(),
            resync: HashSet::new(),
            connected_before: false,
            probe: Probe {
                channel: probe_channel,
                outstanding: None,
                accepted: Arc::new(AtomicU64::new(0)),
                next: 1,
            },
            proven: false,
            shared,
        }
    }

    /// The address it connects to.
    pub(super) fn addr(&self) -> &str {
        &self.addr
    }

    /// Connects to the current server and, for a Sentinel primary, checks
    /// that it still is one.
    async fn connect(&mut self) -> Result<Connection, TransportError> {
        let endpoint = self.source.current().ok_or(TransportError::NotPrimary)?;
        self.addr.clone_from(&endpoint.addr);
        let mut conn = Connection::open(&endpoint).await?;
        if let Source::Primary(_) = self.source {
            let role = conn.call(&[b"ROLE".as_slice()]).await?;
            if !role_is_primary(&role) {
                return Err(TransportError::NotPrimary);
            }
        }
        Ok(conn)
    }

    pub(super) async fn run(mut self, mut rx: UnboundedReceiver<ConnCmd>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // The first failure of a streak is a warning (a wrong address, CA or
        // password shows up at the default level); the retries are noise.
        let mut warned = false;
        loop {
            match self.connect().await {
                Ok(conn) => {
                    backoff.reset();
                    warned = false;
                    info!(addr = %self.addr, channels = self.channels.len(), "redis pub/sub connected");
                    let ended = self.serve(conn, &mut rx).await;
                    let _ = self.router.send(RouterCmd::State {
                        conn: self.index,
                        up: false,
                    });
                    match ended {
                        Ok(()) => return,
                        Err(e) => {
                            warn!(addr = %self.addr, error = %e, "redis pub/sub connection lost")
                        }
                    }
                }
                Err(e) if !warned => {
                    warned = true;
                    warn!(addr = %self.addr, error = %e, "redis pub/sub connect failed; retrying")
                }
                Err(e) => {
                    debug!(addr = %self.addr, error = %e, "redis pub/sub connect failed")
                }
            }
            self.fail_pending("redis pub/sub connection down");
            // While down, keep applying commands so the wanted set stays right.
            let sleep = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    () = self.source.changed() => break,
                    cmd = rx.recv() => match cmd {
                        None => return,
                        Some(cmd) => self.apply_while_down(cmd),
                    },
                }
            }
        }
    }

    fn fail_pending(&mut self, why: &str) {
        for (_, waiters) in self.pending.drain() {
            for w in waiters {
                w.send(Err(unavailable(why)));
            }
        }
    }

    fn apply_while_down(&mut self, cmd: ConnCmd) {
        match cmd {
            ConnCmd::Subscribe(channel, target, ready, _) => {
                self.channels.insert(channel, target);
                if let Some(r) = ready {
                    r.send(Err(unavailable("redis pub/sub connection down")));
                }
            }
            ConnCmd::Unsubscribe(channel) => {
                self.channels.remove(&channel);
            }
            ConnCmd::Probe(channel) => self.probe.channel = channel,
        }
    }

    /// Sends the next probe when none is out, and judges the one that is:
    /// a probe Redis accepted that did not come back within
    /// [`PROBE_TIMEOUT`] means this connection no longer delivers.
    fn probe_tick(&mut self) -> Result<(), TransportError> {
        if let Some((nonce, sent)) = self.probe.outstanding {
            if sent.elapsed() < PROBE_TIMEOUT {
                return Ok(());
            }
            if self.probe.accepted.load(Ordering::Acquire) >= nonce {
                return Err(TransportError::ProbeLost(PROBE_TIMEOUT));
            }
            // Redis did not take the probe (commands fail too): the health
            // check reports that; this connection is not to blame.
        }
        let nonce = self.probe.next;
        self.probe.next += 1;
        self.probe.outstanding = Some((nonce, tokio::time::Instant::now()));
        let (commands, accepted) = (self.shared.commands.clone(), self.probe.accepted.clone());
        let mut cmd = redis::cmd(commands.publish_verb());
        cmd.arg(self.probe.channel.as_ref()).arg(nonce);
        tokio::spawn(async move {
            if commands.query::<redis::Value>(&cmd).await.is_ok() {
                accepted.fetch_max(nonce, Ordering::AcqRel);
            }
        });
        Ok(())
    }

    /// A probe came back: the path is proven (again).
    fn probe_back(&mut self, payload: &[u8]) {
        let nonce = std::str::from_utf8(payload)
            .ok()
            .and_then(|n| n.parse::<u64>().ok());
        let Some((outstanding, sent)) = self.probe.outstanding else {
            return;
        };
        if nonce != Some(outstanding) {
            return;
        }
        self.shared
            .metrics
            .probe_rtt
            .record(sent.elapsed().as_secs_f64());
        self.probe.outstanding = None;
        if !self.proven {
            self.proven = true;
            let _ = self.router.send(RouterCmd::State {
                conn: self.index,
                up: true,
            });
        }
    }

    /// Runs a connected session; `Ok` when the router is gone.
    async fn serve(
        &mut self,
        mut conn: Connection,
        rx: &mut UnboundedReceiver<ConnCmd>,
    ) -> Result<(), TransportError> {
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut out = BytesMut::new();
        self.proven = false;
        self.probe.outstanding = None;
        self.channels
            .insert(self.probe.channel.clone(), Target::Probe);
        // Everything wanted, again: this is also how a reconnect resubscribes,
        // and then whatever was published meanwhile must be caught up.
        let all: Vec<Bytes> = self.channels.keys().cloned().collect();
        if self.connected_before {
            self.resync.extend(all.iter().cloned());
        }
        self.connected_before = true;
        self.encode(Kind::Subscribe, all, &mut out, &mut inflight);
        conn.write(&out).await?;
        out.clear();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_read = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = self.source.changed() => return Err(TransportError::NotPrimary),
                _ = probe.tick() => self.probe_tick()?,
                cmd = rx.recv() => {
                    let Some(first) = cmd else { return Ok(()) };
                    let mut cmds = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        cmds.push(more);
                        if cmds.len() >= 4096 {
                            break;
                        }
                    }
                    self.apply(cmds, &mut out, &mut inflight);
                    conn.write(&out).await?;
                    out.clear();
                }
                read = conn.read_more() => {
                    read?;
                    last_read = tokio::time::Instant::now();
                    while let Some(value) = resp::parse(&mut conn.buf)? {
                        self.on_value(value, &mut inflight);
                    }
                    if conn.buf.capacity() > 1 << 20 && conn.buf.is_empty() {
                        conn.buf = BytesMut::with_capacity(16 * 1024);
                    }
                }
                _ = ping.tick() => {
                    if last_read.elapsed() > DEAD_AFTER {
                        return Err(TransportError::Silent);
                    }
                    resp::encode(&[b"PING".as_slice()], &mut out);
                    inflight.push_back(InFlight { kind: Kind::Ping, channels: VecDeque::new() });
                    conn.write(&out).await?;
                    out.clear();
                }
            }
        }
    }

    /// Applies commands in order, coalescing runs of the same kind.
    fn apply(&mut self, cmds: Vec<ConnCmd>, out: &mut BytesMut, inflight: &mut VecDeque<InFlight>) {
        let mut run: Vec<Bytes> = Vec::new();
        let mut run_kind = Kind::Subscribe;
        for cmd in cmds {
            let (kind, channel) = match cmd {
                ConnCmd::Subscribe(channel, target, ready, resync) => {
                    if resync {
                        self.resync.insert(channel.clone());
                    }
                    self.channels.insert(channel.clone(), target);
                    if let Some(r) = ready {
                        self.pending.entry(channel.clone()).or_default().push(r);
                    }
                    (Kind::Subscribe, channel)
                }
                ConnCmd::Unsubscribe(channel) => {
                    self.channels.remove(&channel);
                    self.resync.remove(&channel);
                    if let Some(waiters) = self.pending.remove(&channel) {
                        for w in waiters {
                            w.send(Err(unavailable("unsubscribed before confirmation")));
                        }
                    }
                    (Kind::Unsubscribe, channel)
                }
                ConnCmd::Probe(channel) => {
                    // The probe moves to a channel of this connection's
                    // shard: drop the old one, then take the new one.
                    let old = std::mem::replace(&mut self.probe.channel, channel.clone());
                    self.channels.remove(&old);
                    self.channels.insert(channel.clone(), Target::Probe);
                    self.probe.outstanding = None;
                    if kind_differs(run_kind, Kind::Unsubscribe, &run) {
                        self.encode(run_kind, std::mem::take(&mut run), out, inflight);
                    }
                    self.encode(Kind::Unsubscribe, vec![old], out, inflight);
                    run_kind = Kind::Subscribe;
                    (Kind::Subscribe, channel)
                }
            };
            if kind_differs(run_kind, kind, &run) {
                self.encode(run_kind, std::mem::take(&mut run), out, inflight);
            }
            run_kind = kind;
            run.push(channel);
        }
        if !run.is_empty() {
            self.encode(run_kind, run, out, inflight);
        }
    }

    fn encode(
        &self,
        kind: Kind,
        channels: Vec<Bytes>,
        out: &mut BytesMut,
        inflight: &mut VecDeque<InFlight>,
    ) {
        let verb: &[u8] = match (kind, self.sharded) {
            (Kind::Subscribe, false) => b"SUBSCRIBE",
            (Kind::Subscribe, true) => b"SSUBSCRIBE",
            (Kind::Unsubscribe, false) => b"UNSUBSCRIBE",
            (Kind::Unsubscribe, true) => b"SUNSUBSCRIBE",
            (Kind::Ping, _) => b"PING",
        };
        // A sharded command may only name channels of one slot.
        let groups: Vec<Vec<Bytes>> = if self.sharded {
            let mut by_slot: Vec<(u16, Vec<Bytes>)> = Vec::new();
            for c in channels {
                let s = slot(&c);
                match by_slot.iter_mut().find(|(k, _)| *k == s) {
                    Some((_, v)) => v.push(c),
                    None => by_slot.push((s, vec![c])),
                }
            }
            by_slot.into_iter().flat_map(|(_, v)| chunks(v)).collect()
        } else {
            chunks(channels)
        };
        for group in groups {
            let mut args: Vec<&[u8]> = Vec::with_capacity(group.len() + 1);
            args.push(verb);
            args.extend(group.iter().map(|c| c.as_ref()));
            resp::encode(&args, out);
            inflight.push_back(InFlight {
                kind,
                channels: group.into(),
            });
        }
    }

    fn on_value(&mut self, value: Resp, inflight: &mut VecDeque<InFlight>) {
        match value {
            Resp::Array(items) => {
                let kind = items
                    .first()
                    .and_then(Resp::as_bytes)
                    .map(|b| b.to_ascii_lowercase());
                let channel = items.get(1).and_then(Resp::as_bytes).cloned();
                match (kind.as_deref(), channel) {
                    (Some(b"message" | b"smessage"), Some(channel)) => {
                        if let Some(Resp::Bulk(payload)) = items.into_iter().nth(2) {
                            self.deliver(&channel, payload);
                        }
                    }
                    (Some(b"subscribe" | b"ssubscribe"), Some(channel)) => {
                        confirm(inflight, Kind::Subscribe);
                        if let Some(waiters) = self.pending.remove(&channel) {
                            for w in waiters {
                                w.send(Ok(()));
                            }
                        }
                        if self.resync.remove(&channel) {
                            if let Some(Target::Topic(topic)) = self.channels.get(&channel) {
                                self.shared.sink.resync(topic);
                            }
                        }
                    }
                    (Some(b"unsubscribe" | b"sunsubscribe"), Some(channel)) => {
                        let expected = inflight.front().is_some_and(|f| {
                            f.kind == Kind::Unsubscribe && f.channels.front() == Some(&channel)
                        });
                        if expected {
                            confirm(inflight, Kind::Unsubscribe);
                        } else if let Some(target) = self.channels.remove(&channel) {
                            // Redis dropped it on its own: the slot moved.
                            let ready = self.pending.remove(&channel).unwrap_or_default();
                            let _ = self.router.send(RouterCmd::Moved {
                                channel,
                                target,
                                ready,
                            });
                        }
                    }
                    (Some(b"pong"), _) => confirm(inflight, Kind::Ping),
                    _ => debug!("unexpected pub/sub frame"),
                }
            }
            Resp::Simple(s) if s.eq_ignore_ascii_case(b"PONG") => confirm(inflight, Kind::Ping),
            Resp::Error(e) => {
                let Some(failed) = inflight.pop_front() else {
                    return;
                };
                let moved = e.starts_with(b"MOVED") || e.starts_with(b"ASK");
                warn!(error = %String::from_utf8_lossy(&e), moved, "redis refused a pub/sub command");
                for channel in failed.channels {
                    let ready = self.pending.remove(&channel).unwrap_or_default();
                    if moved {
                        if let Some(target) = self.channels.remove(&channel) {
                            let _ = self.router.send(RouterCmd::Moved {
                                channel,
                                target,
                                ready,
                            });
                        }
                    } else {
                        for r in ready {
                            r.send(Err(BrokerError::Internal(
                                String::from_utf8_lossy(&e).into_owned(),
                            )));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn deliver(&mut self, channel: &Bytes, payload: Bytes) {
        match self.channels.get(channel) {
            Some(Target::Topic(topic)) => {
                if let Some((change, json)) = presence_change(&payload) {
                    match serde_json::from_slice::<herald_protocol::Member>(json) {
                        Ok(member) => self.shared.sink.presence(topic, change, &member),
                        Err(_) => warn!(topic = %topic, "malformed presence payload from redis"),
                    }
                    return;
                }
                match decode(topic, &payload) {
                    Some(decoded) => {
                        if let Some(old) = decoded.replaced {
                            self.shared.sink.history_replaced(topic, old);
                        }
                        for event in &decoded.events {
                            self.shared.sink.deliver(event);
                        }
                    }
                    None => warn!(topic = %topic, "malformed event payload from redis"),
                }
            }
            Some(Target::Control) => (self.shared.control)(payload),
            Some(Target::Probe) => self.probe_back(&payload),
            None => {} // unsubscribed meanwhile
        }
    }
}

/// Whether a run of `run_kind` must be written out before a command of
/// `kind`.
fn kind_differs(run_kind: Kind, kind: Kind, run: &[Bytes]) -> bool {
    run_kind != kind && !run.is_empty()
}

/// Pops one confirmation of `kind` off the in-flight queue.
fn confirm(inflight: &mut VecDeque<InFlight>, kind: Kind) {
    if let Some(front) = inflight.front_mut() {
        if front.kind == kind {
            front.channels.pop_front();
            if front.channels.is_empty() {
                inflight.pop_front();
            }
        }
    }
}

fn chunks(v: Vec<Bytes>) -> Vec<Vec<Bytes>> {
    if v.len() <= SUBSCRIBE_CHUNK {
        return if v.is_empty() { Vec::new() } else { vec![v] };
    }
    v.chunks(SUBSCRIBE_CHUNK).map(<[Bytes]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_pop_in_order() {
        let mut q = VecDeque::new();
        q.push_back(InFlight {
            kind: Kind::Subscribe,
            channels: vec![Bytes::from("a"), Bytes::from("b")].into(),
        });
        q.push_back(InFlight {
            kind: Kind::Ping,
            channels: VecDeque::new(),
        });
        confirm(&mut q, Kind::Subscribe);
        assert_eq!(q.front().unwrap().channels.len(), 1);
        confirm(&mut q, Kind::Subscribe);
        assert_eq!(q.front().unwrap().kind, Kind::Ping);
    }
}
