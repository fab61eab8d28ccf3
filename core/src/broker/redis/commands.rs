//! The command side of the Redis broker: a `deadpool-redis` pool (single
//! Redis or Cluster), every command bounded in time, Lua scripts sent by
//! digest, and pipelines grouped by hash slot.
//!
//! Errors are classified once here: I/O, refused connections, timeouts and
//! an empty pool are [`BrokerError::Unavailable`] (retrying may work);
//! anything else Redis answers is [`BrokerError::Internal`].

use std::time::Duration;

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{self, FromRedisValue, RedisFuture, Value};
use tracing::debug;

use crate::broker::BrokerError;

/// Longest wait for a Redis command before it counts as unavailable.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

fn broker_error(e: &redis::RedisError) -> BrokerError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        BrokerError::Unavailable(e.to_string())
    } else {
        BrokerError::Internal(e.to_string())
    }
}

fn pool_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("no redis connection: {e}"))
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// The pool, of either kind.
pub enum Pool {
    /// One Redis.
    Single(deadpool_redis::Pool),
    /// A Redis Cluster (commands are routed by key slot).
    Cluster(deadpool_redis::cluster::Pool),
}

/// A pooled connection of either kind, usable wherever redis-rs takes a
/// connection.
enum Conn {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
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
    text: &'static str,
    sha: String,
}

impl Script {
    /// Wraps `text`.
    pub fn new(text: &'static str) -> Script {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
        Script {
            text,
            sha: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// The `EVALSHA` (or, `by_sha` false, `EVAL`) call with `keys` and `args`.
    pub fn cmd(&self, by_sha: bool, keys: &[&str], args: &[&[u8]]) -> redis::Cmd {
        let mut cmd = if by_sha {
            redis::cmd("EVALSHA")
        } else {
            redis::cmd("EVAL")
        };
        cmd.arg(if by_sha { self.sha.as_str() } else { self.text })
            .arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }
}

/// One script call: by digest, and in full for when Redis lost its scripts.
pub struct ScriptCall {
    /// The slot of its keys (all of one call's keys share a slot).
    pub slot: u16,
    /// `EVALSHA …`.
    pub by_sha: redis::Cmd,
    /// `EVAL …`.
    pub full: redis::Cmd,
}

impl ScriptCall {
    /// `script` with `keys` and `args`, whose keys hash to `slot`.
    pub fn new(script: &Script, slot: u16, keys: &[&str], args: &[&[u8]]) -> ScriptCall {
        ScriptCall {
            slot,
            by_sha: script.cmd(true, keys, args),
            full: script.cmd(false, keys, args),
        }
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

    /// A pooled connection of either kind.
    async fn connection(&self) -> Result<Conn, BrokerError> {
        Ok(match &self.pool {
            Pool::Single(p) => Conn::Single(p.get().await.map_err(pool_error)?),
            Pool::Cluster(p) => Conn::Cluster(p.get().await.map_err(pool_error)?),
        })
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
        match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable(
                "redis did not answer in time".to_owned(),
            )),
        }
    }

    /// Runs script calls as pipelines, one round trip per slot (a cluster
    /// pipeline may not cross slots; a topic's keys share one slot, so its
    /// calls stay in order), and returns their replies in call order. A
    /// script Redis does not know yet (after a restart) is sent again in
    /// full.
    ///
    /// # Errors
    /// The first failure of any call.
    pub async fn scripts(&self, calls: &[ScriptCall]) -> Result<Vec<Value>, BrokerError> {
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            let slot = if self.cluster { call.slot } else { 0 };
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        let runs = groups
            .iter()
            .map(|(_, members)| self.script_group(members, calls));
        let mut out = vec![Value::Nil; calls.len()];
        for (result, (_, members)) in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .zip(&groups)
        {
            for (value, i) in result?.into_iter().zip(members) {
                out[*i] = value;
            }
        }
        Ok(out)
    }

    async fn script_group(
        &self,
        members: &[usize],
        calls: &[ScriptCall],
    ) -> Result<Vec<Value>, BrokerError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for i in members {
            pipe.add_command(calls[*i].by_sha.clone());
        }
        let results: Vec<redis::RedisResult<Value>> = self.pipeline(&pipe).await?;
        let mut out = Vec::with_capacity(results.len());
        for (result, i) in results.into_iter().zip(members) {
            let value = match result {
                Ok(v) => v,
                Err(e) if is_noscript(&e) => {
                    debug!("redis lost its scripts; sending them in full");
                    self.query::<Value>(&calls[*i].full).await?
                }
                Err(e) => return Err(broker_error(&e)),
            };
            out.push(value);
        }
        Ok(out)
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
