//! The Redis broker: what turns stateless gateway nodes into one cluster.
//!
//! - **Publish.** One Lua script per event assigns the id, appends the
//!   message to the topic's stream (its history) and publishes it, atomically:
//!   no event is published without history or stored without being published.
//!   A batch is one pipeline, one round trip, with one script call and one
//!   pub/sub message per topic: the payload is a run of `<id> <len>\n<message
//!   JSON>` records, rendered once by the publisher; nodes only split it,
//!   never re-encode it.
//! - **Subscribe.** See [`pubsub`]: a node subscribes each wanted topic once,
//!   on a small fixed set of connections (one per master with Redis Cluster,
//!   using sharded pub/sub), and learns nothing about topics it does not want.
//! - **History and epochs.** A topic has a stream (entries `0-<seq>`, trimmed to
//!   `history.size`) and a meta hash (`e` = epoch, `s` = last seq), both
//!   expiring `history.ttl` after the last publish. When the meta hash is
//!   missing (expired, or Redis lost its data) the next publish starts a new
//!   random epoch, so old ids are never matched against new events. A
//!   subscribe reads the topic's position (starting an epoch if it has
//!   none), and every node keeps the meta hashes of the topics it
//!   subscribes alive ([`keep_epochs`]), so a quiet topic's position stays
//!   a valid `since`.
//! - **Cluster view.** See [`view`]: node counts with a TTL, and requests
//!   (disconnects) every node acts on.
//!
//! Files: [`scripts`] (the topic scripts and their replies), [`commands`]
//! (the pool, bounded commands, pipelines per slot), [`pubsub`] (the
//! subscription side), [`view`] (the cluster view), [`cluster`] (slots and
//! routing), [`resp`] (the wire format the pub/sub side speaks).
//!
//! Every key of a topic shares the hash tag `{<topic>}`, and every cluster-view
//! key the tag `{herald-nodes}`, so scripts and multi-key reads stay in one
//! slot under Redis Cluster.

pub mod cluster;
pub mod commands;
pub mod presence;
pub mod pubsub;
pub mod resp;
pub mod scripts;
pub mod sentinel;
pub mod view;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tracing::Instrument;

use deadpool_redis::redis;
use herald_protocol::Topic;
use tracing::warn;

use super::{
    Broker, BrokerError, BrokerSettings, EventSink, HistoryPage, Member, MemberPage, NodeControl,
    NodeStats, Position, Publication, Ready, Revocation,
};
use crate::config::Durability;
use crate::metrics::Metrics;
use crate::webhooks::{Kind, Queued, SessionOpen};
use commands::{Commands, Pool, SentinelPool, Wait};
use pubsub::{ControlHandler, Endpoint, Mode, PubSub, Shared, Target};
use scripts::{Scripts, channel};
use sentinel::Sentinel;

/// How often the broker checks that Redis answers.
const HEALTH_PERIOD: Duration = Duration::from_millis(500);

/// Parses `redis_url` into the endpoints the pub/sub side dials.
fn endpoints(urls: &[String]) -> Result<Vec<Endpoint>, BrokerError> {
    use redis::IntoConnectionInfo;
    urls.iter()
        .map(|u| {
            let info = u
                .as_str()
                .into_connection_info()
                .map_err(|e| BrokerError::Internal(format!("invalid redis_url: {e}")))?;
            let (addr, tls) = match info.addr() {
                redis::ConnectionAddr::Tcp(host, port) => (format!("{host}:{port}"), false),
                redis::ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    ..
                } => (format!("{host}:{port}"), true),
                redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
                    return Err(BrokerError::Internal(
                        "rediss:// without certificate verification (#insecure) is not supported"
                            .to_owned(),
                    ));
                }
                _ => {
                    return Err(BrokerError::Internal(
                        "only redis:// and rediss:// URLs are supported".to_owned(),
                    ));
                }
            };
            let settings = info.redis_settings();
            Ok(Endpoint {
                addr,
                username: settings.username().map(str::to_owned),
                password: settings.password().map(str::to_owned),
                tls,
            })
        })
        .collect()
}

/// How long the health check waits for `PING`: a paused Redis makes the
/// node unready this fast.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// The Redis (or Redis Cluster, or Sentinel-managed Redis) broker.
pub struct RedisBroker {
    commands: Arc<Commands>,
    node: Arc<OnceLock<Arc<dyn NodeControl>>>,
    mode: Mode,
    settings: BrokerSettings,
    sink: Arc<dyn EventSink>,
    pubsub: OnceLock<PubSub>,
    scripts: Scripts,
    presence: presence::Presence,
    reachable: AtomicBool,
    /// Whether the stored revocations were applied to the registered node
    /// at least once: until then it is not up, so a node that starts after
    /// a revocation never accepts the revoked token.
    revocations_synced: AtomicBool,
    metrics: Arc<Metrics>,
}

impl RedisBroker {
    /// Builds the broker for `redis_url` (comma-separated seeds when
    /// `cluster`; a `redis+sentinel://` URL for a Sentinel group) and starts
    /// its health check. Connections are made lazily; an unreachable Redis
    /// is reported by [`Broker::is_up`], not here.
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// When the URL cannot be parsed.
    pub fn new(
        redis_url: &str,
        cluster: bool,
        settings: BrokerSettings,
        sink: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let pool_config = deadpool_redis::PoolConfig {
            max_size: 16,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(Duration::from_secs(2)),
                create: Some(Duration::from_secs(2)),
                recycle: Some(Duration::from_secs(2)),
            },
            ..Default::default()
        };
        let trimmed = redis_url.trim();
        if trimmed.starts_with("redis+sentinel://") || trimmed.starts_with("rediss+sentinel://") {
            let sentinel = Sentinel::start(trimmed, metrics.clone())?;
            let mode = Mode::Sentinel(sentinel.primary());
            let pool = Pool::Sentinel(SentinelPool::new(sentinel, pool_config));
            return Ok(Self::with(pool, false, mode, settings, sink, metrics));
        }
        let urls: Vec<String> = redis_url
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        let endpoints = endpoints(&urls)?;
        let runtime = Some(deadpool_redis::Runtime::Tokio1);
        let (pool, mode) = if cluster {
            let mut cfg = deadpool_redis::cluster::Config::from_urls(urls.clone());
            cfg.pool = Some(pool_config);
            let pool = cfg
                .create_pool(runtime)
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
            (Pool::Cluster(pool), Mode::Cluster(endpoints))
        } else {
            let url = urls
                .first()
                .ok_or_else(|| BrokerError::Internal("redis_url is empty".to_owned()))?;
            let mut cfg = deadpool_redis::Config::from_url(url.clone());
            cfg.pool = Some(pool_config);
            let pool = cfg
                .create_pool(runtime)
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
            let endpoint = endpoints
                .into_iter()
                .next()
                .ok_or_else(|| BrokerError::Internal("redis_url is empty".to_owned()))?;
            (Pool::Single(pool), Mode::Single(endpoint))
        };
        Ok(Self::with(pool, cluster, mode, settings, sink, metrics))
    }

    fn with(
        pool: Pool,
        cluster: bool,
        mode: Mode,
        settings: BrokerSettings,
        sink: Arc<dyn EventSink>,
        metrics: Arc<Metrics>,
    ) -> Arc<RedisBroker> {
        let commands = Arc::new(Commands::new(pool, cluster));
        let node = Arc::new(OnceLock::new());
        let broker = Arc::new(RedisBroker {
            presence: presence::Presence::start(
                commands.clone(),
                node.clone(),
                metrics.clone(),
                settings.presence_timeout,
                settings.webhooks,
            ),
            commands,
            node,
            mode,
            settings,
            sink,
            pubsub: OnceLock::new(),
            scripts: Scripts::new(cluster),
            reachable: AtomicBool::new(false),
            revocations_synced: AtomicBool::new(false),
            metrics,
        });
        broker.metrics.broker_up.set(0.0);
        tokio::spawn(
            health(Arc::downgrade(&broker)).instrument(tracing::info_span!("redis_health")),
        );
        tokio::spawn(
            keep_epochs(Arc::downgrade(&broker)).instrument(tracing::info_span!("keep_epochs")),
        );
        broker
    }

    /// Reads `topic`'s history (see [`Broker::history`]); `positioning`:
    /// the read of a subscribed topic's position (see
    /// [`Scripts::history`](scripts::Scripts::history)).
    async fn read(
        &self,
        topic: &Topic,
        since: Option<&str>,
        limit: usize,
        positioning: bool,
    ) -> Result<HistoryPage, BrokerError> {
        let epoch = format!("{:08x}", crate::ids::new_epoch());
        let call = self.scripts.history(
            topic,
            since,
            limit,
            &self.settings,
            &epoch,
            self.commands.is_cluster(),
            positioning,
        );
        let value = self
            .commands
            .scripts(std::slice::from_ref(&call), None)
            .await?
            .into_iter()
            .next()
            .unwrap_or(redis::Value::Nil);
        let (page, fenced) = scripts::read_history(value, topic, since)?;
        if let (true, Some(old)) = (fenced, page.replaced) {
            self.fenced(topic, old);
        }
        Ok(page)
    }

    fn pubsub(&self) -> &PubSub {
        self.pubsub.get_or_init(|| {
            let (commands, node) = (Arc::downgrade(&self.commands), self.node.clone());
            let control: ControlHandler = Arc::new(move |payload| {
                if let (Some(commands), Some(node)) = (commands.upgrade(), node.get()) {
                    view::on_control(commands, node.clone(), &payload);
                }
            });
            PubSub::start(
                self.mode.clone(),
                Shared {
                    sink: self.sink.clone(),
                    control,
                    commands: self.commands.clone(),
                    metrics: self.metrics.clone(),
                    probe_tag: Arc::from(crate::random_hex(4)),
                },
            )
        })
    }
}

impl RedisBroker {
    /// A topic's history was started anew because a new primary may lack
    /// acknowledged events of epoch `old`.
    fn fenced(&self, topic: &Topic, old: u32) {
        self.metrics.fenced.increment(1);
        warn!(topic = %topic, replaced = %format!("{old:08x}"), "a new redis primary may lack acknowledged events: the topic's history starts a new epoch");
    }
}

/// How often the epochs of subscribed topics are kept alive, for
/// `history.ttl`: a few times per ttl, within bounds.
fn keep_period(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

/// Keeps the epoch (meta hash) of every topic this node subscribes alive,
/// so the positions its sessions were given stay valid `since`s however
/// quiet the topic (contract §10.3). Best effort: a round that fails is
/// tried again next period, long before the ttl runs out.
async fn keep_epochs(broker: Weak<RedisBroker>) {
    let period = match broker.upgrade() {
        Some(b) => keep_period(b.settings.history.ttl),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(b) = broker.upgrade() else { return };
        let Some(pubsub) = b.pubsub.get() else {
            continue;
        };
        let topics = pubsub.topics().await;
        if topics.is_empty() {
            continue;
        }
        let calls = b.scripts.touch(&topics, b.settings.history.ttl);
        for chunk in calls.chunks(64) {
            if let Err(e) = b.commands.scripts(chunk, None).await {
                tracing::debug!(error = %e, "cannot keep the epochs of subscribed topics this round");
                break;
            }
        }
    }
}

/// Applies the stored revocations to `node` when their version differs
/// from `seen` (or on the first call); returns the version now applied.
/// Covers a node that starts after a revocation, or missed its message.
async fn sync_revocations(
    commands: &Commands,
    node: &Arc<dyn NodeControl>,
    seen: Option<u64>,
) -> Option<u64> {
    let Ok(version) = view::revocations_version(commands).await else {
        return seen;
    };
    if seen == Some(version) {
        return seen;
    }
    match view::revocations(commands).await {
        Ok((version, list)) => {
            for r in &list {
                node.revoke(r);
            }
            Some(version)
        }
        Err(_) => seen,
    }
}

/// Keeps `reachable` and the `herald_broker_up` gauge current, and reports
/// this node's counts (and applies new revocations) while one is
/// registered.
async fn health(broker: Weak<RedisBroker>) {
    let mut tick = tokio::time::interval(HEALTH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since_report = Duration::MAX;
    let mut revocations_seen = None;
    loop {
        tick.tick().await;
        let Some(b) = broker.upgrade() else { return };
        let ping: Result<String, BrokerError> =
            match tokio::time::timeout(PING_TIMEOUT, b.commands.query(&redis::cmd("PING"))).await {
                Ok(result) => result,
                Err(_) => Err(BrokerError::Unavailable(
                    "redis did not answer PING in time".to_owned(),
                )),
            };
        let was = b.reachable.swap(ping.is_ok(), Ordering::AcqRel);
        if was != ping.is_ok() {
            match &ping {
                Ok(_) => tracing::info!("redis reachable"),
                Err(e) => warn!(error = %e, "redis unreachable"),
            }
        }
        b.metrics.broker_up.set(f64::from(u8::from(b.is_up())));
        since_report = since_report.saturating_add(HEALTH_PERIOD);
        if since_report >= view::REPORT_PERIOD && ping.is_ok() {
            if let Some(node) = b.node.get() {
                since_report = Duration::ZERO;
                view::report(&b.commands, &node.stats()).await;
                revocations_seen = sync_revocations(&b.commands, node, revocations_seen).await;
                if revocations_seen.is_some() {
                    b.revocations_synced.store(true, Ordering::Release);
                    node.revocations_loaded();
                }
            }
        }
    }
}

impl Broker for RedisBroker {
    async fn publish(&self, batch: Vec<Publication>) -> Result<Vec<Position>, BrokerError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let ts = crate::now_ms();
        let epoch = format!("{:08x}", crate::ids::new_epoch());
        let verb = self.commands.publish_verb();
        let runs = scripts::runs(&batch);
        let calls: Vec<_> = runs
            .iter()
            .map(|(topic, members)| {
                let run: Vec<&Publication> = members.iter().map(|i| &batch[*i]).collect();
                self.scripts
                    .publish(topic, &run, verb, &self.settings, ts, &epoch)
            })
            .collect();
        let publish = &self.settings.publish;
        let (values, confirmed) = match publish.durability {
            Durability::Leader => (self.commands.scripts(&calls, None).await?, true),
            Durability::Replicated => {
                let wait = Wait {
                    replicas: publish.min_replicas,
                    timeout: publish.replication_timeout,
                };
                self.commands.scripts_replicated(&calls, wait).await?
            }
        };
        let mut positions = vec![Position { epoch: 0, seq: 0 }; batch.len()];
        let mut published = Vec::with_capacity(runs.len());
        for ((topic, members), value) in runs.iter().zip(values) {
            let run = scripts::read_publish(value, members, &mut positions)?;
            if let Some(old) = run.replaced {
                self.fenced(topic, old);
            }
            published.push(run);
        }
        if publish.durability == Durability::Leader {
            return Ok(positions);
        }
        let history = &self.settings.history;
        if !confirmed {
            // Refused: take the events back (contract §10.8), unless another
            // publisher's confirmation already made them visible.
            let rollbacks: Vec<_> = runs
                .iter()
                .zip(&published)
                .map(|((topic, members), run)| {
                    let events: Vec<&Publication> = members.iter().map(|i| &batch[*i]).collect();
                    let ids: Vec<Position> = members.iter().map(|i| positions[*i]).collect();
                    self.scripts.rollback(topic, &events, &ids, run, history)
                })
                .collect();
            let visible = self.commands.scripts(&rollbacks, None).await?;
            if !visible.iter().all(|v| matches!(v, redis::Value::Int(1))) {
                return Err(BrokerError::Unavailable(format!(
                    "not confirmed by {} replicas within {:?}",
                    publish.min_replicas, publish.replication_timeout
                )));
            }
            return Ok(positions);
        }
        // The replicas have the events: make them visible, and deliver.
        let confirms: Vec<_> = runs
            .iter()
            .zip(&published)
            .map(|((topic, _), run)| {
                self.scripts
                    .confirm(topic, verb, &run.epoch, run.last, history)
            })
            .collect();
        self.commands.scripts(&confirms, None).await?;
        Ok(positions)
    }

    fn subscribe(&self, topic: &Topic) -> Ready {
        let (tx, ready) = Ready::pending();
        self.pubsub()
            .subscribe(channel(topic), Target::Topic(topic.clone()), Some(tx));
        self.presence.hold(topic);
        ready
    }

    fn unsubscribe(&self, topic: &Topic) {
        self.pubsub().unsubscribe(channel(topic));
        self.presence.unhold(topic);
    }

    async fn position(&self, topic: &Topic) -> Result<Position, BrokerError> {
        self.read(topic, None, 0, true).await?.head.ok_or_else(|| {
            BrokerError::Internal("the history script gave a topic no position".to_owned())
        })
    }

    async fn history(
        &self,
        topic: &Topic,
        since: Option<&str>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        self.read(topic, since, limit, false).await
    }

    fn is_up(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
            && self.pubsub.get().is_none_or(PubSub::is_up)
            && (self.node.get().is_none() || self.revocations_synced.load(Ordering::Acquire))
    }

    fn register_node(&self, node: Arc<dyn NodeControl>) {
        if self.node.set(node).is_ok() {
            self.pubsub()
                .subscribe(view::control_channel(), Target::Control, None);
        }
    }

    async fn stats(&self) -> Result<Vec<NodeStats>, BrokerError> {
        view::stats(&self.commands).await
    }

    async fn disconnect(&self, sub: &str) -> Result<usize, BrokerError> {
        view::disconnect(&self.commands, sub).await
    }

    async fn revoke(&self, revocation: &Revocation) -> Result<usize, BrokerError> {
        view::revoke(&self.commands, revocation).await
    }

    fn join(
        &self,
        topic: &Topic,
        member: Member,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        self.presence.join(topic, member)
    }

    fn leave(&self, topic: &Topic, session: &str) {
        self.presence.leave(topic, session);
    }

    fn admit(
        &self,
        sub: &str,
        limit: u32,
    ) -> impl Future<Output = Result<bool, BrokerError>> + Send + 'static {
        self.presence.admit(sub, limit)
    }

    fn release(&self, sub: &str) {
        self.presence.release(sub);
    }

    async fn members(
        &self,
        topic: &Topic,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, BrokerError> {
        self.presence.members(topic, cursor, limit).await
    }

    fn session_opened(&self, open: SessionOpen) {
        self.presence.opened(open);
    }

    fn session_closed(&self, session: &str, data: Option<String>) {
        self.presence.closed(session, data);
    }

    async fn webhooks_lease(&self, holder: &str, ttl: Duration) -> Result<bool, BrokerError> {
        self.presence.webhooks_lease(holder, ttl).await
    }

    async fn webhooks_read(&self, max: usize) -> Result<(Vec<Queued>, u64), BrokerError> {
        self.presence.webhooks_read(max).await
    }

    async fn webhooks_done(&self, ids: &[String]) -> Result<(), BrokerError> {
        self.presence.webhooks_done(ids).await
    }

    fn webhooks_dropped(&self) -> [u64; Kind::ALL.len()] {
        self.presence.webhooks_dropped()
    }
}
