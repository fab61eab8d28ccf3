//! The pub/sub router: which channels the node wants, and on which
//! connection each one lives.
//!
//! With a single Redis a channel's connection is fixed by its hash. With
//! Redis Cluster it is the connection to the master owning the channel's
//! slot, found in the slot map ([`SlotMap`]); when the map changes (a MOVED
//! reply, a SUNSUBSCRIBE sent by Redis, a master that stays unreachable), the
//! router reads it again, and every channel whose owner changed ([`moves`])
//! is unsubscribed from its old connection and subscribed, with a resync, on
//! its new one. Subscriptions that arrive before any map is known wait for
//! one, and are refused if none can be read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{Instrument, debug, info, info_span, warn};

use super::super::cluster::{SlotMap, moves, slot};
use super::conn::{Conn, Source};
use super::transport::{Endpoint, TransportError, command};
use super::{ConnCmd, Mode, PUBSUB_CONNECTIONS, RouterCmd, Shared, Target};
use crate::backoff::Backoff;
use crate::broker::{BrokerError, ReadySender};

/// Under Cluster, how often the slot map is read again even when nothing
/// seems wrong.
const TOPOLOGY_PERIOD: Duration = Duration::from_secs(15);

/// The router's side of one connection task.
struct ConnHandle {
    addr: String,
    tx: UnboundedSender<ConnCmd>,
    up: bool,
    /// Its probe channel.
    probe: Bytes,
}

/// Owns the wanted set and the routing of each channel to a connection.
pub(super) struct Router {
    mode: Mode,
    sharded: bool,
    conns: Vec<Option<ConnHandle>>,
    /// Channel → (what it carries, connection index or `None` while unrouted).
    wanted: HashMap<Bytes, (Target, Option<usize>)>,
    slots: Option<SlotMap>,
    /// Subscriptions waiting for a slot map before they can be routed.
    waiting: Vec<(Bytes, ReadySender)>,
    tx: UnboundedSender<RouterCmd>,
    shared: Shared,
    up: Arc<AtomicBool>,
}

impl Router {
    pub(super) fn new(
        mode: Mode,
        shared: Shared,
        tx: UnboundedSender<RouterCmd>,
        up: Arc<AtomicBool>,
    ) -> Router {
        Router {
            sharded: matches!(mode, Mode::Cluster(_)),
            mode,
            conns: Vec::new(),
            wanted: HashMap::new(),
            slots: None,
            waiting: Vec::new(),
            tx,
            shared,
            up,
        }
    }

    /// The probe channel of connection `index`: under Cluster, one whose
    /// slot the connection's master owns, so the probe travels the path
    /// the connection's topics do.
    fn probe_channel(&self, index: usize, addr: &str) -> Bytes {
        let name = |k: u32| format!("herald:{{probe-{}-{index}-{k}}}", self.shared.probe_tag);
        if let (true, Some(map)) = (self.sharded, &self.slots) {
            for k in 0..100_000 {
                let candidate = name(k);
                if map.owner(slot(candidate.as_bytes())) == Some(addr) {
                    return Bytes::from(candidate);
                }
            }
        }
        Bytes::from(name(0))
    }

    fn addr_of(&self, conn: usize) -> Option<String> {
        self.conns.get(conn)?.as_ref().map(|c| c.addr.clone())
    }

    pub(super) async fn run(mut self, mut rx: UnboundedReceiver<RouterCmd>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut refresh_at: Option<tokio::time::Instant> = None;
        match self.mode.clone() {
            Mode::Single(endpoint) => {
                for _ in 0..PUBSUB_CONNECTIONS {
                    self.open(Source::Fixed(endpoint.clone()));
                }
            }
            Mode::Sentinel(primary) => {
                for _ in 0..PUBSUB_CONNECTIONS {
                    self.open(Source::Primary(primary.clone()));
                }
            }
            Mode::Cluster(_) => refresh_at = Some(tokio::time::Instant::now()),
        }
        // Under Cluster, the slot map is read again while any connection is
        // down (its master may have been failed over: a promoted replica
        // serves its slots elsewhere) and every TOPOLOGY_PERIOD regardless.
        let mut check = tokio::time::interval(Duration::from_secs(1));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut since_refresh = Duration::ZERO;
        loop {
            let refresh = async {
                match refresh_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    if self.handle(cmd) && refresh_at.is_none() {
                        refresh_at = Some(tokio::time::Instant::now() + backoff.next_delay());
                    }
                }
                _ = check.tick() => {
                    since_refresh += Duration::from_secs(1);
                    let degraded = self.conns.iter().flatten().any(|c| !c.up)
                        || self.wanted.values().any(|(_, conn)| conn.is_none());
                    if self.sharded
                        && refresh_at.is_none()
                        && (degraded || since_refresh >= TOPOLOGY_PERIOD)
                    {
                        refresh_at = Some(tokio::time::Instant::now());
                    }
                }
                () = refresh => {
                    since_refresh = Duration::ZERO;
                    refresh_at = None;
                    if self.refresh_slots().await {
                        backoff.reset();
                    } else {
                        refresh_at = Some(tokio::time::Instant::now() + backoff.next_delay());
                    }
                }
            }
            self.update_up();
        }
    }

    fn update_up(&self) {
        let live: Vec<&ConnHandle> = self.conns.iter().flatten().collect();
        let routed = self.wanted.values().all(|(_, conn)| conn.is_some());
        let up = !live.is_empty() && live.iter().all(|c| c.up) && routed;
        self.up.store(up, Ordering::Release);
    }

    /// Handles one command; returns whether the slot map should be re-read.
    fn handle(&mut self, cmd: RouterCmd) -> bool {
        match cmd {
            RouterCmd::Subscribe {
                channel,
                target,
                ready,
            } => {
                let conn = self.route(&channel);
                self.wanted.insert(channel.clone(), (target.clone(), conn));
                match conn.and_then(|c| self.conns[c].as_ref()) {
                    Some(handle) => {
                        let _ = handle
                            .tx
                            .send(ConnCmd::Subscribe(channel, target, ready, false));
                    }
                    None => {
                        // Routed (or refused) once the slot map has been read.
                        if let Some(r) = ready {
                            self.waiting.push((channel, r));
                        }
                        return true;
                    }
                }
                false
            }
            RouterCmd::Unsubscribe { channel } => {
                if let Some((_, Some(conn))) = self.wanted.remove(&channel) {
                    if let Some(handle) = &self.conns[conn] {
                        let _ = handle.tx.send(ConnCmd::Unsubscribe(channel));
                    }
                }
                false
            }
            RouterCmd::Moved {
                channel,
                target,
                ready,
            } => {
                match self.wanted.get_mut(&channel) {
                    Some(entry) => {
                        *entry = (target, None);
                        // Routed again once the slot map has been re-read.
                        self.waiting
                            .extend(ready.into_iter().map(|r| (channel.clone(), r)));
                    }
                    None => {
                        for r in ready {
                            r.send(Err(BrokerError::Unavailable("unsubscribed".to_owned())));
                        }
                    }
                }
                true
            }
            RouterCmd::Topics(answer) => {
                let topics = self
                    .wanted
                    .values()
                    .filter_map(|(target, _)| match target {
                        Target::Topic(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect();
                let _ = answer.send(topics);
                false
            }
            RouterCmd::State { conn, up } => {
                if let Some(Some(handle)) = self.conns.get_mut(conn) {
                    handle.up = up;
                }
                // A master that went away may have been failed over.
                !up && self.sharded
            }
        }
    }

    fn route(&mut self, channel: &[u8]) -> Option<usize> {
        match &self.mode {
            Mode::Single(_) | Mode::Sentinel(_) => {
                Some(usize::from(slot(channel)) % PUBSUB_CONNECTIONS)
            }
            Mode::Cluster(_) => {
                let addr = self.slots.as_ref()?.owner(slot(channel))?.to_owned();
                Some(self.conn_for(&addr))
            }
        }
    }

    fn conn_for(&mut self, addr: &str) -> usize {
        if let Some(i) = self
            .conns
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.addr == addr))
        {
            return i;
        }
        let template = match &self.mode {
            Mode::Cluster(seeds) => seeds.first().cloned(),
            Mode::Single(e) => Some(e.clone()),
            Mode::Sentinel(primary) => primary.borrow().clone(),
        };
        let endpoint = match template {
            Some(t) => t.at(addr),
            None => Endpoint {
                addr: addr.to_owned(),
                username: None,
                password: None,
                tls: false,
            },
        };
        self.open(Source::Fixed(endpoint))
    }

    fn open(&mut self, source: Source) -> usize {
        let (tx, rx) = unbounded_channel();
        let index = self.conns.len();
        let addr = match &source {
            Source::Fixed(e) => e.addr.clone(),
            Source::Primary(p) => p
                .borrow()
                .as_ref()
                .map(|e| e.addr.clone())
                .unwrap_or_default(),
        };
        let probe = self.probe_channel(index, &addr);
        self.conns.push(Some(ConnHandle {
            addr,
            tx,
            up: false,
            probe: probe.clone(),
        }));
        let conn = Conn::new(
            index,
            source,
            self.sharded,
            self.tx.clone(),
            probe,
            self.shared.clone(),
        );
        let span = info_span!("redis_pubsub_conn", addr = %conn.addr());
        tokio::spawn(conn.run(rx).instrument(span));
        index
    }

    /// Reads the slot map and re-routes what moved; returns whether it worked.
    async fn refresh_slots(&mut self) -> bool {
        let Mode::Cluster(seeds) = self.mode.clone() else {
            return true;
        };
        let mut candidates: Vec<Endpoint> = self
            .slots
            .as_ref()
            .map(|s| s.masters())
            .unwrap_or_default()
            .into_iter()
            .map(|addr| seeds[0].at(&addr))
            .collect();
        candidates.extend(seeds);
        let mut map = None;
        for endpoint in &candidates {
            match fetch_slots(endpoint).await {
                Ok(m) if m.is_complete() => {
                    map = Some(m);
                    break;
                }
                Ok(_) => debug!(addr = %endpoint.addr, "cluster slot map incomplete"),
                Err(e) => debug!(addr = %endpoint.addr, error = %e, "cannot read cluster slots"),
            }
        }
        let Some(map) = map else {
            warn!("cannot read the redis cluster slot map; retrying");
            for (_, ready) in self.waiting.drain(..) {
                ready.send(Err(BrokerError::Unavailable(
                    "redis cluster slot map unavailable".to_owned(),
                )));
            }
            return false;
        };
        if self.slots.as_ref() != Some(&map) {
            info!(
                masters = map.masters().len(),
                "redis cluster slot map loaded"
            );
        }
        self.slots = Some(map.clone());
        let current: Vec<(Bytes, Option<String>)> = self
            .wanted
            .iter()
            .map(|(c, (_, conn))| (c.clone(), conn.and_then(|i| self.addr_of(i))))
            .collect();
        for (channel, owner) in moves(&map, current) {
            let new = owner.map(|addr| self.conn_for(&addr));
            let Some((target, old)) = self.wanted.get(&channel).cloned() else {
                continue;
            };
            if let Some(old) = old.and_then(|o| self.conns[o].as_ref()) {
                let _ = old.tx.send(ConnCmd::Unsubscribe(channel.clone()));
            }
            if let Some(handle) = new.and_then(|n| self.conns[n].as_ref()) {
                let _ = handle.tx.send(ConnCmd::Subscribe(
                    channel.clone(),
                    target.clone(),
                    None,
                    true,
                ));
            }
            self.wanted.insert(channel, (target, new));
        }
        for (channel, ready) in std::mem::take(&mut self.waiting) {
            match self.wanted.get(&channel) {
                Some((target, Some(conn))) => match self.conns[*conn].as_ref() {
                    Some(handle) => {
                        let _ = handle.tx.send(ConnCmd::Subscribe(
                            channel.clone(),
                            target.clone(),
                            Some(ready),
                            true,
                        ));
                    }
                    None => ready.send(Err(BrokerError::Unavailable(
                        "no connection for the slot".to_owned(),
                    ))),
                },
                // Unsubscribed meanwhile.
                Some((_, None)) | None => {
                    ready.send(Err(BrokerError::Unavailable("not routed".to_owned())))
                }
            }
        }
        // Close connections to addresses that are no longer masters (a
        // failover or a master removed), and keep every probe on a slot of
        // its own connection's master.
        let masters = self
            .slots
            .as_ref()
            .map(SlotMap::masters)
            .unwrap_or_default();
        for index in 0..self.conns.len() {
            let Some(handle) = &self.conns[index] else {
                continue;
            };
            if !masters.contains(&handle.addr) {
                info!(addr = %handle.addr, "no longer a redis cluster master: closing its pub/sub connection");
                self.shared.metrics.failovers.increment(1);
                self.conns[index] = None;
                continue;
            }
            let probe = self.probe_channel(index, &handle.addr);
            if let Some(handle) = self.conns[index].as_mut() {
                if handle.probe != probe {
                    handle.probe = probe.clone();
                    let _ = handle.tx.send(ConnCmd::Probe(probe));
                }
            }
        }
        true
    }
}

async fn fetch_slots(endpoint: &Endpoint) -> Result<SlotMap, TransportError> {
    let reply = command(endpoint, &[b"CLUSTER", b"SLOTS"]).await?;
    SlotMap::from_cluster_slots(&reply).ok_or(TransportError::Unexpected("CLUSTER SLOTS"))
}
