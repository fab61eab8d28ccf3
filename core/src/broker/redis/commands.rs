//! The command side of the Redis broker: a `deadpool-redis` pool (single
//! Redis or Cluster), every command bounded in time, Lua scripts sent by
//! digest, and pipelines grouped by hash slot.
//!
//! Errors are classified once here: I/O, refused connections, timeouts and
//! an empty pool are [`BrokerError::Unavailable`] (retrying may work);
//! anything else Redis answers is [`BrokerError::Internal`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use deadpool_redis::redis::{self, FromRedisValue, RedisFuture, RedisResult, Value};
use tokio::sync::watch;
use tracing::debug;

use super::pubsub::transport::Endpoint;
use super::sentinel::Sentinel;

use crate::broker::BrokerError;

/// Longest wait for a Redis command before it counts as unavailable.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Server errors that mean "not now, here": a replica (after a failover),
/// a cluster re-sharding or failing over.
const RETRYABLE: [&str; 6] = [
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "LOADING",
    "MOVED",
];

fn broker_error(e: &redis::RedisError) -> BrokerError {
    let retryable = e.code().is_some_and(|c| RETRYABLE.contains(&c));
    if retryable
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
    {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Internal(e.to_string())
    }
}

/// Waiting for replicas after a group of writes (durability = replicated).
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Replicas that must confirm.
    pub replicas: u32,
    /// How long Redis may wait for them.
    pub timeout: Duration,
}

fn pool_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("no redis connection: {e}"))
}

/// The pool, of any kind.
pub enum Pool {
    /// One Redis.
    Single(deadpool_redis::Pool),
    /// A Redis Cluster (commands are routed by key slot).
    Cluster(deadpool_redis::cluster::Pool),
    /// The primary the sentinels name, whichever it is now.
    Sentinel(SentinelPool),
}

/// A pool to the current primary of a Sentinel group, replaced whenever the
/// primary changes (the old one's connections are dropped with it).
pub struct SentinelPool {
    sentinel: Arc<Sentinel>,
    primary: watch::Receiver<Option<Endpoint>>,
    current: Mutex<Option<(String, deadpool_redis::Pool)>>,
    config: deadpool_redis::PoolConfig,
}

impl SentinelPool {
    /// A pool following `sentinel`'s primary.
    pub fn new(sentinel: Arc<Sentinel>, config: deadpool_redis::PoolConfig) -> SentinelPool {
        SentinelPool {
            primary: sentinel.primary(),
            sentinel,
            current: Mutex::new(None),
            config,
        }
    }

    /// The pool of the current primary.
    fn pool(&self) -> Result<deadpool_redis::Pool, BrokerError> {
        let primary = self
            .primary
            .borrow()
            .clone()
            .ok_or_else(|| BrokerError::Unavailable("no redis primary known yet".to_owned()))?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, pool)) = &*current {
            if *addr == primary.addr {
                return Ok(pool.clone());
            }
        }
        let (host, port) = primary
            .addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)))
            .ok_or_else(|| {
                BrokerError::Internal(format!("bad primary address {}", primary.addr))
            })?;
        let addr = if primary.tls {
            deadpool_redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
            }
        } else {
            deadpool_redis::ConnectionAddr::Tcp(host, port)
        };
        let cfg = deadpool_redis::Config {
            url: None,
            connection: Some(deadpool_redis::ConnectionInfo {
                addr,
                redis: deadpool_redis::RedisConnectionInfo {
                    db: 0,
                    username: primary.username.clone(),
                    password: primary.password.clone(),
                    protocol: deadpool_redis::ProtocolVersion::RESP2,
                },
            }),
            pool: Some(self.config),
        };
        let pool = cfg
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        *current = Some((primary.addr.clone(), pool.clone()));
        Ok(pool)
    }
}

/// A pooled connection of either kind, usable wherever redis-rs takes a
/// connection.
enum Conn {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

impl Conn {
    /// Runs `pipe` on the node serving `slot` (the primary, under Cluster).
    async fn pipeline_at(&mut self, pipe: &redis::Pipeline, slot: u16) -> RedisResult<Vec<Value>> {
        match self {
            Conn::Single(c) => pipe.query_async(c).await,
            Conn::Cluster(c) => {
                c.route_pipeline(pipe.clone(), 0, pipe.len(), primary_of(slot))
                    .await
            }
        }
    }

    /// Runs `cmd` on the node serving `slot`.
    async fn command_at(&mut self, cmd: &redis::Cmd, slot: u16) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                c.route_command(cmd.clone(), RoutingInfo::SingleNode(primary_of(slot)))
                    .await
            }
        }
    }
}

fn primary_of(slot: u16) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A Lua script, sent by its SHA-1 and in full when Redis does not know it.
pub struct Script {
    text: Arc<str>,
    sha: String,
}

impl Script {
    /// Wraps `text`, less its comment and blank lines (they would be sent
    /// with every `SCRIPT LOAD` and every call in full).
    pub fn new(text: impl Into<String>) -> Script {
        let text: String = text
            .into()
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !l.is_empty() && !l.starts_with("--")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
        Script {
            text: Arc::from(text),
            sha: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// One script call, sent by digest; the script's text is kept (shared, not
/// copied) for when Redis lost its scripts and the call is sent in full.
pub struct ScriptCall {
    /// The slot of its keys (all of one call's keys share a slot).
    pub slot: u16,
    /// `EVALSHA <sha> <numkeys> <keys…> <args…>`.
    pub by_sha: redis::Cmd,
    text: Arc<str>,
}

impl ScriptCall {
    /// `script` with `keys` and `args`, whose keys hash to `slot`.
    pub fn new(script: &Script, slot: u16, keys: &[&str], args: &[&[u8]]) -> ScriptCall {
        let mut by_sha = redis::cmd("EVALSHA");
        by_sha.arg(&script.sha).arg(keys.len());
        for k in keys {
            by_sha.arg(*k);
        }
        for a in args {
            by_sha.arg(*a);
        }
        ScriptCall {
            slot,
            by_sha,
            text: script.text.clone(),
        }
    }

    /// The same call as `EVAL <text> …`, built only when Redis answered
    /// `NOSCRIPT` (rare), so a publish never copies a script's text.
    pub fn full(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(&*self.text);
        for arg in self.by_sha.args_iter().skip(2) {
            if let redis::Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        cmd
    }
}

/// Runs commands on the pool.
pub struct Commands {
    pool: Pool,
    cluster: bool,
}

impl Commands {
    /// Commands through `pool`; `cluster` when it is a Redis Cluster.
    pub fn new(pool: Pool, cluster: bool) -> Commands {
        Commands { pool, cluster }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// `PUBLISH`, or `SPUBLISH` on a Redis Cluster.
    pub fn publish_verb(&self) -> &'static str {
        if self.cluster { "SPUBLISH" } else { "PUBLISH" }
    }

    /// A pooled connection of any kind.
    async fn connection(&self) -> Result<Conn, BrokerError> {
        Ok(match &self.pool {
            Pool::Single(p) => Conn::Single(p.get().await.map_err(pool_error)?),
            Pool::Cluster(p) => Conn::Cluster(p.get().await.map_err(pool_error)?),
            Pool::Sentinel(s) => {
                let pool = s.pool()?;
                match pool.get().await {
                    Ok(c) => Conn::Single(c),
                    Err(e) => {
                        s.sentinel.refresh();
                        return Err(pool_error(e));
                    }
                }
            }
        })
    }

    /// After a failure that may mean the primary moved: with Sentinel, ask
    /// the sentinels again.
    fn on_failure(&self, e: &BrokerError) {
        if let (Pool::Sentinel(s), BrokerError::Unavailable(_)) = (&self.pool, e) {
            s.sentinel.refresh();
        }
    }

    /// Runs one command.
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BrokerError> {
        self.bounded(async {
            let mut c = self.connection().await?;
            cmd.query_async(&mut c).await.map_err(|e| broker_error(&e))
        })
        .await
    }

    /// Runs a pipeline (whose keys, under Cluster, share one slot).
    ///
    /// # Errors
    /// See the module documentation.
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BrokerError> {
        self.bounded(async {
            let mut c = self.connection().await?;
            pipe.query_async(&mut c).await.map_err(|e| broker_error(&e))
        })
        .await
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable(
                "redis did not answer in time".to_owned(),
            )),
        };
        if let Err(e) = &result {
            self.on_failure(e);
        }
        result
    }

    /// Runs script calls as pipelines, one round trip per slot (a cluster
    /// pipeline may not cross slots; a topic's keys share one slot, so its
    /// calls stay in order), and returns their replies in call order. With
    /// `wait`, each slot's pipeline ends with `WAIT`, on the same connection
    /// as its writes, and fewer confirmations than asked is
    /// [`BrokerError::Unavailable`]. A script Redis does not know yet (after
    /// a restart) is sent again in full.
    ///
    /// # Errors
    /// The first failure of any call.
    pub async fn scripts(
        &self,
        calls: &[ScriptCall],
        wait: Option<Wait>,
    ) -> Result<Vec<Value>, BrokerError> {
        let (values, confirmed) = self.run_scripts(calls, wait, false).await?;
        match (wait, confirmed) {
            (Some(w), false) => Err(BrokerError::Unavailable(format!(
                "not confirmed by {} replicas within {:?}",
                w.replicas, w.timeout
            ))),
            _ => Ok(values),
        }
    }

    /// Like [`Commands::scripts`] with `WAIT`, but an unconfirmed write is
    /// not an error: the replies come back with whether every slot's
    /// replicas confirmed, so the caller can take back what they did not.
    ///
    /// # Errors
    /// The first failure of any call.
    pub async fn scripts_replicated(
        &self,
        calls: &[ScriptCall],
        wait: Wait,
    ) -> Result<(Vec<Value>, bool), BrokerError> {
        self.run_scripts(calls, Some(wait), false).await
    }

    /// Like [`Commands::scripts`], for calls whose effects must happen in
    /// call order even on a Redis that lost its scripts: each pipeline
    /// first loads (`SCRIPT LOAD`) the scripts it calls. Without that, a
    /// call Redis did not know would be refused while the calls after it
    /// ran, and would then run after them when sent again in full.
    ///
    /// # Errors
    /// The first failure of any call.
    pub async fn scripts_in_order(&self, calls: &[ScriptCall]) -> Result<Vec<Value>, BrokerError> {
        Ok(self.run_scripts(calls, None, true).await?.0)
    }

    /// The replies in call order, and whether every slot's `WAIT` (if
    /// any) was confirmed.
    async fn run_scripts(
        &self,
        calls: &[ScriptCall],
        wait: Option<Wait>,
        load: bool,
    ) -> Result<(Vec<Value>, bool), BrokerError> {
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            let slot = if self.cluster { call.slot } else { 0 };
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        let runs = groups.iter().map(|(slot, members)| {
            self.bounded(self.script_group(*slot, members, calls, wait, load))
        });
        let mut out = vec![Value::Nil; calls.len()];
        let mut confirmed = true;
        for (result, (_, members)) in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .zip(&groups)
        {
            let (values, group_confirmed) = result?;
            confirmed &= group_confirmed;
            for (value, i) in values.into_iter().zip(members) {
                out[*i] = value;
            }
        }
        Ok((out, confirmed))
    }

    async fn script_group(
        &self,
        slot: u16,
        members: &[usize],
        calls: &[ScriptCall],
        wait: Option<Wait>,
        load: bool,
    ) -> Result<(Vec<Value>, bool), BrokerError> {
        let failed = |e: redis::RedisError| broker_error(&e);
        let mut conn = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if load {
            let mut loaded: Vec<&Arc<str>> = Vec::new();
            for i in members {
                let text = &calls[*i].text;
                if !loaded.iter().any(|t| Arc::ptr_eq(t, text)) {
                    pipe.cmd("SCRIPT").arg("LOAD").arg(&**text).ignore();
                    loaded.push(text);
                }
            }
        }
        for i in members {
            pipe.add_command(calls[*i].by_sha.clone());
        }
        let wait_cmd = wait.map(|w| {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(w.replicas)
                .arg(u64::try_from(w.timeout.as_millis()).unwrap_or(u64::MAX));
            cmd
        });
        if let Some(cmd) = &wait_cmd {
            pipe.add_command(cmd.clone());
        }
        let mut values = conn.pipeline_at(&pipe, slot).await.map_err(failed)?;
        // A cluster connection's routed pipeline answers the ignored
        // `SCRIPT LOAD`s too (the single connection drops them): only the
        // calls' replies (and the WAIT's) are kept.
        let extra = values
            .len()
            .saturating_sub(members.len() + usize::from(wait_cmd.is_some()));
        values.drain(..extra);
        let mut waited = wait_cmd.as_ref().and_then(|_| values.pop());
        for (value, i) in values.iter_mut().zip(members) {
            if let Value::ServerError(e) = value {
                if e.code() != "NOSCRIPT" {
                    return Err(failed(e.clone().into()));
                }
                debug!("redis lost its scripts; sending them in full");
                *value = conn
                    .command_at(&calls[*i].full(), slot)
                    .await
                    .map_err(failed)?;
                if let Some(cmd) = &wait_cmd {
                    // The write came after the pipeline's WAIT: wait again.
                    waited = Some(conn.command_at(cmd, slot).await.map_err(failed)?);
                }
            }
        }
        let confirmed = wait.is_none_or(|w| {
            let n = match waited {
                Some(Value::Int(n)) => u32::try_from(n).unwrap_or(0),
                _ => 0,
            };
            n >= w.replicas
        });
        Ok((values, confirmed))
    }
}

/// A bulk, simple or integer reply as text.
pub fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}
