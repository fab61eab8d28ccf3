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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_protocol::Topic;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, info, warn};

use super::cluster::{Backoff, SlotMap, slot};
use super::resp::{self, Resp};
use crate::broker::{BrokerError, Event, EventSink, Position, ReadySender};

/// Connections per node to a single (non-cluster) Redis.
pub const PUBSUB_CONNECTIONS: usize = 2;
/// Channels per SUBSCRIBE command when subscribing in bulk.
const SUBSCRIBE_CHUNK: usize = 512;
/// Health-check period of an idle connection.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A connection that read nothing for this long is considered dead.
const DEAD_AFTER: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a subscribed channel carries.
#[derive(Clone, Debug)]
pub enum Target {
    /// Events of a topic.
    Topic(Topic),
    /// The cluster control channel.
    Control,
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `host:port`.
    pub addr: String,
    /// ACL user, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
    /// `rediss://`: TLS, verified against the system's roots (or
    /// `SSL_CERT_FILE`).
    pub tls: bool,
}

impl Endpoint {
    /// The same credentials and TLS setting, at another address (a master
    /// found in the slot map).
    fn at(&self, addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_owned(),
            ..self.clone()
        }
    }
}

/// A connection to Redis, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type BoxStream = Box<dyn Stream>;

/// The TLS client configuration, built once: the ring provider and the
/// platform's roots (`rustls-native-certs` honours `SSL_CERT_FILE`).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(
                    "no trusted root certificates for rediss:// (set SSL_CERT_FILE)".to_owned(),
                );
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
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
}

enum RouterCmd {
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
    /// A connection came up or went down.
    State {
        conn: usize,
        up: bool,
    },
}

enum ConnCmd {
    /// Subscribe; the flag asks for a resync once confirmed (the channel
    /// moved here from elsewhere, so events may have been missed).
    Subscribe(Bytes, Target, Option<ReadySender>, bool),
    Unsubscribe(Bytes),
}

/// The broker's handle on its pub/sub side.
pub struct PubSub {
    tx: UnboundedSender<RouterCmd>,
    up: Arc<AtomicBool>,
}

impl PubSub {
    /// Starts the router (and, lazily, its connections) on the current runtime.
    pub fn start(mode: Mode, sink: Arc<dyn EventSink>, control: ControlHandler) -> PubSub {
        let (tx, rx) = unbounded_channel();
        let up = Arc::new(AtomicBool::new(false));
        let router = Router {
            sharded: matches!(mode, Mode::Cluster(_)),
            mode,
            conns: Vec::new(),
            wanted: HashMap::new(),
            slots: None,
            waiting: Vec::new(),
            tx: tx.clone(),
            sink,
            control,
            up: up.clone(),
        };
        tokio::spawn(router.run(rx));
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

    /// Whether every connection is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

struct ConnHandle {
    addr: String,
    tx: UnboundedSender<ConnCmd>,
    up: bool,
}

struct Router {
    mode: Mode,
    sharded: bool,
    conns: Vec<Option<ConnHandle>>,
    /// Channel → (what it carries, connection index or `None` while unrouted).
    wanted: HashMap<Bytes, (Target, Option<usize>)>,
    slots: Option<SlotMap>,
    /// Subscriptions waiting for a slot map before they can be routed.
    waiting: Vec<(Bytes, ReadySender)>,
    tx: UnboundedSender<RouterCmd>,
    sink: Arc<dyn EventSink>,
    control: ControlHandler,
    up: Arc<AtomicBool>,
}

impl Router {
    async fn run(mut self, mut rx: UnboundedReceiver<RouterCmd>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut refresh_at: Option<tokio::time::Instant> = None;
        if let Mode::Single(endpoint) = self.mode.clone() {
            for _ in 0..PUBSUB_CONNECTIONS {
                self.open(endpoint.clone());
            }
        } else {
            refresh_at = Some(tokio::time::Instant::now());
        }
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
                () = refresh => {
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
            Mode::Single(_) => Some(usize::from(slot(channel)) % PUBSUB_CONNECTIONS),
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
        self.open(endpoint)
    }

    fn open(&mut self, endpoint: Endpoint) -> usize {
        let (tx, rx) = unbounded_channel();
        let index = self.conns.len();
        self.conns.push(Some(ConnHandle {
            addr: endpoint.addr.clone(),
            tx,
            up: false,
        }));
        let conn = Conn {
            index,
            endpoint,
            sharded: self.sharded,
            router: self.tx.clone(),
            channels: HashMap::new(),
            pending: HashMap::new(),
            resync: HashSet::new(),
            connected_before: false,
            sink: self.sink.clone(),
            control: self.control.clone(),
        };
        tokio::spawn(conn.run(rx));
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
        self.slots = Some(map);
        let channels: Vec<Bytes> = self.wanted.keys().cloned().collect();
        for channel in channels {
            let new = self.route(&channel);
            let Some((target, old)) = self.wanted.get(&channel).cloned() else {
                continue;
            };
            if new == old {
                continue;
            }
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
        // Close connections to addresses that are no longer masters.
        let masters = self
            .slots
            .as_ref()
            .map(SlotMap::masters)
            .unwrap_or_default();
        for slot in &mut self.conns {
            if slot.as_ref().is_some_and(|c| !masters.contains(&c.addr)) {
                *slot = None;
            }
        }
        true
    }
}

async fn connect(endpoint: &Endpoint) -> Result<(BoxStream, BytesMut), String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&endpoint.addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut stream: BoxStream = if endpoint.tls {
        let host = endpoint
            .addr
            .rsplit_once(':')
            .map_or(endpoint.addr.as_str(), |(h, _)| h);
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| format!("bad TLS server name {host}: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(tls_config()?);
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let mut buf = BytesMut::with_capacity(16 * 1024);
    if let Some(password) = &endpoint.password {
        let mut out = BytesMut::new();
        match &endpoint.username {
            Some(user) => resp::encode(
                &[b"AUTH".as_slice(), user.as_bytes(), password.as_bytes()],
                &mut out,
            ),
            None => resp::encode(&[b"AUTH".as_slice(), password.as_bytes()], &mut out),
        }
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        if let Resp::Error(e) = read_one(&mut stream, &mut buf).await? {
            return Err(format!("AUTH refused: {}", String::from_utf8_lossy(&e)));
        }
    }
    Ok((stream, buf))
}

async fn read_one(stream: &mut BoxStream, buf: &mut BytesMut) -> Result<Resp, String> {
    loop {
        if let Some(v) = resp::parse(buf).map_err(|e| e.to_string())? {
            return Ok(v);
        }
        let n = tokio::time::timeout(CONNECT_TIMEOUT, stream.read_buf(buf))
            .await
            .map_err(|_| "redis did not answer".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".to_owned());
        }
    }
}

/// Runs one command on a fresh connection.
pub async fn command(endpoint: &Endpoint, args: &[&[u8]]) -> Result<Resp, String> {
    let (mut stream, mut buf) = connect(endpoint).await?;
    let mut out = BytesMut::new();
    resp::encode(args, &mut out);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    read_one(&mut stream, &mut buf).await
}

async fn fetch_slots(endpoint: &Endpoint) -> Result<SlotMap, String> {
    let reply = command(endpoint, &[b"CLUSTER", b"SLOTS"]).await?;
    SlotMap::from_cluster_slots(&reply).ok_or_else(|| "unexpected CLUSTER SLOTS reply".to_owned())
}

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

struct Conn {
    index: usize,
    endpoint: Endpoint,
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
    sink: Arc<dyn EventSink>,
    control: ControlHandler,
}

fn unavailable(why: &str) -> BrokerError {
    BrokerError::Unavailable(why.to_owned())
}

impl Conn {
    async fn run(mut self, mut rx: UnboundedReceiver<ConnCmd>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // The first failure of a streak is a warning (a wrong address, CA or
        // password shows up at the default level); the retries are noise.
        let mut warned = false;
        loop {
            match connect(&self.endpoint).await {
                Ok((stream, buf)) => {
                    backoff.reset();
                    warned = false;
                    info!(addr = %self.endpoint.addr, channels = self.channels.len(), "redis pub/sub connected");
                    let _ = self.router.send(RouterCmd::State {
                        conn: self.index,
                        up: true,
                    });
                    let ended = self.serve(stream, buf, &mut rx).await;
                    let _ = self.router.send(RouterCmd::State {
                        conn: self.index,
                        up: false,
                    });
                    match ended {
                        Ok(()) => return,
                        Err(e) => {
                            warn!(addr = %self.endpoint.addr, error = %e, "redis pub/sub connection lost")
                        }
                    }
                }
                Err(e) if !warned => {
                    warned = true;
                    warn!(addr = %self.endpoint.addr, error = %e, "redis pub/sub connect failed; retrying")
                }
                Err(e) => {
                    debug!(addr = %self.endpoint.addr, error = %e, "redis pub/sub connect failed")
                }
            }
            self.fail_pending("redis pub/sub connection down");
            // While down, keep applying commands so the wanted set stays right.
            let sleep = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
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
        }
    }

    /// Runs a connected session; `Ok` when the router is gone.
    async fn serve(
        &mut self,
        mut stream: BoxStream,
        mut buf: BytesMut,
        rx: &mut UnboundedReceiver<ConnCmd>,
    ) -> Result<(), String> {
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut out = BytesMut::new();
        // Everything wanted, again: this is also how a reconnect resubscribes,
        // and then whatever was published meanwhile must be caught up.
        let all: Vec<Bytes> = self.channels.keys().cloned().collect();
        if self.connected_before {
            self.resync.extend(all.iter().cloned());
        }
        self.connected_before = true;
        self.encode(Kind::Subscribe, all, &mut out, &mut inflight);
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        out.clear();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut last_read = tokio::time::Instant::now();
        loop {
            tokio::select! {
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
                    stream.write_all(&out).await.map_err(|e| e.to_string())?;
                    out.clear();
                }
                read = stream.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => return Err("closed by redis".to_owned()),
                        Ok(_) => last_read = tokio::time::Instant::now(),
                        Err(e) => return Err(e.to_string()),
                    }
                    while let Some(value) = resp::parse(&mut buf).map_err(|e| e.to_string())? {
                        self.on_value(value, &mut inflight);
                    }
                    if buf.capacity() > 1 << 20 && buf.is_empty() {
                        buf = BytesMut::with_capacity(16 * 1024);
                    }
                }
                _ = ping.tick() => {
                    if last_read.elapsed() > DEAD_AFTER {
                        return Err("redis stopped answering".to_owned());
                    }
                    resp::encode(&[b"PING".as_slice()], &mut out);
                    inflight.push_back(InFlight { kind: Kind::Ping, channels: VecDeque::new() });
                    stream.write_all(&out).await.map_err(|e| e.to_string())?;
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
            };
            if kind != run_kind && !run.is_empty() {
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
                                self.sink.resync(topic);
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

    fn deliver(&self, channel: &Bytes, payload: Bytes) {
        match self.channels.get(channel) {
            Some(Target::Topic(topic)) => match decode(topic, &payload) {
                Some(events) => {
                    for event in &events {
                        self.sink.deliver(event);
                    }
                }
                None => warn!(topic = %topic, "malformed event payload from redis"),
            },
            Some(Target::Control) => (self.control)(payload),
            None => {} // unsubscribed meanwhile
        }
    }
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

/// Splits a published payload, a run of `<id> <len>\n<message json>`
/// records, into events (slices of the payload, no copy).
pub fn decode(topic: &Topic, payload: &Bytes) -> Option<Vec<Event>> {
    let mut events = Vec::with_capacity(1);
    let mut at = 0;
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
            json: payload.slice(start..end),
        });
        at = end;
    }
    Some(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decode_without_copy() {
        let topic = Topic::new("news").unwrap();
        let payload = Bytes::from_static(b"0000000a-7 18\n{\"type\":\"message\"}0000000a-8 2\n{}");
        let events = decode(&topic, &payload).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].position, Position { epoch: 10, seq: 7 });
        assert_eq!(&events[0].json[..], b"{\"type\":\"message\"}");
        assert_eq!(
            events[0].json.as_ptr(),
            payload[14..].as_ptr(),
            "a slice, not a copy"
        );
        assert_eq!(events[1].position.seq, 8);
        assert_eq!(&events[1].json[..], b"{}");
        for bad in [
            &b"no newline"[..],
            b"bad 2\n{}",
            b"0000000a-7 99\n{}",
            b"0000000a-7\n{}",
        ] {
            assert!(
                decode(&topic, &Bytes::copy_from_slice(bad)).is_none(),
                "{bad:?}"
            );
        }
    }

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
