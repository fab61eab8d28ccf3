//! Redis Sentinel: finding the primary through any reachable sentinel, and
//! following every failover the sentinels announce.
//!
//! `redis+sentinel://[user:password@]host:port[,host:port…]/<master>` (or
//! `rediss+sentinel://`, TLS to sentinels and data nodes alike) names the
//! sentinels and the master group; the credentials are the data nodes'.
//!
//! A watcher task keeps the current primary in a `watch` channel that the
//! command pool and the pub/sub connections read. It asks every sentinel
//! at once (`SENTINEL get-master-addr-by-name`), then tries the addresses
//! they give, the one most of them name first, and checks `ROLE`: an
//! address that is down or not a primary is skipped and never used, so
//! nothing is written to a replica even while sentinels disagree, and a
//! stale sentinel (cut off while the others promoted a replica) cannot
//! hide the new primary. It
//! re-asks when a sentinel publishes `+switch-master`, when a user of the
//! primary reports trouble ([`Sentinel::refresh`]), and every
//! [`RESOLVE_PERIOD`] regardless, in case no announcement reached it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::pubsub::transport::{Connection, Endpoint, TransportError, command};
use super::resp::Resp;
use crate::broker::BrokerError;
use crate::metrics::Metrics;

/// How often the primary is re-checked without an announcement.
pub const RESOLVE_PERIOD: Duration = Duration::from_secs(2);

/// The sentinels of one master group, and the primary they agree on.
pub struct Sentinel {
    sentinels: Vec<Endpoint>,
    master: String,
    /// Credentials and TLS for the data nodes.
    template: Endpoint,
    primary: watch::Sender<Option<Endpoint>>,
    refresh: Notify,
    metrics: Arc<Metrics>,
}

/// Parses a Sentinel URL: the sentinels, the master name, and the data
/// nodes' credentials and TLS setting (as an endpoint with no address).
///
/// # Errors
/// A URL that is not `redis+sentinel://host:port[,…]/<master>`.
pub fn parse_url(url: &str) -> Result<(Vec<Endpoint>, String, Endpoint), BrokerError> {
    let bad = |why: &str| BrokerError::Internal(format!("invalid Sentinel redis_url: {why}"));
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
        (true, r)
    } else {
        return Err(bad(
            "must start with redis+sentinel:// or rediss+sentinel://",
        ));
    };
    let (hosts, master) = rest
        .split_once('/')
        .ok_or_else(|| bad("no /<master-name> after the sentinels"))?;
    let master = master.trim_end_matches('/');
    if master.is_empty() || master.contains(['/', '?', '#']) {
        return Err(bad("the master name must be one path segment"));
    }
    let (userinfo, hosts) = match hosts.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, hosts),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (
                (!user.is_empty()).then(|| user.to_owned()),
                Some(pass.to_owned()),
            ),
            None => (None, Some(u.to_owned())),
        },
    };
    let sentinels: Vec<Endpoint> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| Endpoint {
            addr: h.to_owned(),
            username: None,
            password: None,
            tls,
        })
        .collect();
    if sentinels.is_empty() || sentinels.iter().any(|s| !s.addr.contains(':')) {
        return Err(bad("every sentinel must be host:port"));
    }
    let template = Endpoint {
        addr: String::new(),
        username,
        password,
        tls,
    };
    Ok((sentinels, master.to_owned(), template))
}

impl Sentinel {
    /// Starts the watcher for `url` on the current runtime.
    ///
    /// # Errors
    /// When the URL cannot be parsed.
    pub fn start(url: &str, metrics: Arc<Metrics>) -> Result<Arc<Sentinel>, BrokerError> {
        let (sentinels, master, template) = parse_url(url)?;
        let (primary, _) = watch::channel(None);
        let sentinel = Arc::new(Sentinel {
            sentinels,
            master,
            template,
            primary,
            refresh: Notify::new(),
            metrics,
        });
        let weak = Arc::downgrade(&sentinel);
        tokio::spawn(tracing::Instrument::instrument(
            watch_primary(weak),
            tracing::info_span!("redis_sentinel"),
        ));
        Ok(sentinel)
    }

    /// The current primary, and every change to come.
    pub fn primary(&self) -> watch::Receiver<Option<Endpoint>> {
        self.primary.subscribe()
    }

    /// Asks the watcher to check the primary now (a user of it saw errors).
    pub fn refresh(&self) {
        self.refresh.notify_one();
    }

    /// The primary the sentinels name, checked with `ROLE`.
    ///
    /// Every sentinel is asked at once (each wait bounded by the
    /// transport's timeout), and the addresses they name are tried in
    /// order of how many name them, ties in the URL's order: a sentinel
    /// that is unreachable, does not know the master, or names an address
    /// that is down or not a primary (a sentinel cut off from the others
    /// still names the primary that died) is skipped, so one stale
    /// sentinel listed first cannot hide the primary the others promoted
    /// (contract §10.8).
    async fn resolve(&self) -> Result<Endpoint, TransportError> {
        let asks = self.sentinels.iter().map(|sentinel| async move {
            let args = [
                b"SENTINEL".as_slice(),
                b"get-master-addr-by-name",
                self.master.as_bytes(),
            ];
            (sentinel, command(sentinel, &args).await)
        });
        let mut last = TransportError::Unexpected("SENTINEL get-master-addr-by-name");
        let mut named = Vec::with_capacity(self.sentinels.len());
        for (sentinel, reply) in futures_util::future::join_all(asks).await {
            match reply {
                Ok(reply) => match host_port(&reply) {
                    Some(addr) => named.push(addr),
                    None => debug!(sentinel = %sentinel.addr, "sentinel does not know the master"),
                },
                Err(e) => {
                    debug!(sentinel = %sentinel.addr, error = %e, "sentinel unreachable");
                    last = e;
                }
            }
        }
        for addr in by_votes(named) {
            let candidate = self.template.at(&addr);
            match is_primary(&candidate).await {
                Ok(true) => return Ok(candidate),
                Ok(false) => {
                    debug!(addr = %addr, "the address a sentinel names is not a primary (yet)");
                    last = TransportError::Unexpected("ROLE: not a primary");
                }
                Err(e) => {
                    debug!(addr = %addr, error = %e, "the address a sentinel names is down");
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn publish(&self, found: Endpoint) {
        let previous = self.primary.borrow().as_ref().map(|e| e.addr.clone());
        if previous.as_deref() == Some(found.addr.as_str()) {
            return;
        }
        match previous {
            Some(old) => {
                self.metrics.failovers.increment(1);
                warn!(from = %old, to = %found.addr, master = %self.master, "redis primary changed");
            }
            None => info!(addr = %found.addr, master = %self.master, "redis primary found"),
        }
        self.primary.send_replace(Some(found));
    }

    /// A connection to any sentinel subscribed to `+switch-master`.
    async fn subscribe(&self) -> Option<Connection> {
        for sentinel in &self.sentinels {
            let Ok(mut conn) = Connection::open(sentinel).await else {
                continue;
            };
            if conn
                .call(&[b"SUBSCRIBE".as_slice(), b"+switch-master"])
                .await
                .is_ok()
            {
                return Some(conn);
            }
        }
        None
    }
}

/// The distinct addresses of `named` (one per answering sentinel), most
/// named first; ties keep the order of their first mention.
fn by_votes(named: Vec<String>) -> Vec<String> {
    let mut tally: Vec<(String, usize)> = Vec::new();
    for addr in named {
        match tally.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, n)) => *n += 1,
            None => tally.push((addr, 1)),
        }
    }
    // A stable sort: equal counts stay in first-mention order.
    tally.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    tally.into_iter().map(|(a, _)| a).collect()
}

/// `[host, port]` as `host:port`.
fn host_port(reply: &Resp) -> Option<String> {
    let Resp::Array(parts) = reply else {
        return None;
    };
    let host = std::str::from_utf8(parts.first()?.as_bytes()?).ok()?;
    let port = std::str::from_utf8(parts.get(1)?.as_bytes()?).ok()?;
    Some(format!("{host}:{port}"))
}

/// Whether `endpoint` answers `ROLE` as a primary.
///
/// # Errors
/// When it cannot be asked.
pub async fn is_primary(endpoint: &Endpoint) -> Result<bool, TransportError> {
    let reply = command(endpoint, &[b"ROLE".as_slice()]).await?;
    Ok(role_is_primary(&reply))
}

/// Whether a `ROLE` reply is a primary's.
pub fn role_is_primary(reply: &Resp) -> bool {
    let Resp::Array(parts) = reply else {
        return false;
    };
    parts.first().and_then(Resp::as_bytes) == Some(&Bytes::from_static(b"master"))
}

async fn watch_primary(sentinel: std::sync::Weak<Sentinel>) {
    let mut announcements: Option<Connection> = None;
    let mut warned = false;
    loop {
        let Some(s) = sentinel.upgrade() else { return };
        match s.resolve().await {
            Ok(found) => {
                warned = false;
                s.publish(found);
            }
            Err(e) if !warned => {
                warned = true;
                warn!(master = %s.master, error = %e, "cannot find the redis primary through the sentinels; retrying");
            }
            Err(e) => debug!(error = %e, "cannot find the redis primary"),
        }
        if announcements.is_none() {
            announcements = s.subscribe().await;
        }
        let next = async {
            match announcements.as_mut() {
                Some(conn) => conn.read_value().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        // Holding `s` for one wait at most: the watcher ends at the next
        // round once the broker is gone.
        let refresh = s.refresh.notified();
        tokio::select! {
            read = next => {
                // An announcement (any: re-asking is cheap), or a lost
                // subscription to re-make.
                if read.is_err() {
                    announcements = None;
                }
            }
            () = refresh => {}
            () = tokio::time::sleep(RESOLVE_PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let (s, m, t) = parse_url("redis+sentinel://u:p@h1:26379,h2:26380/mymaster").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].addr, "h2:26380");
        assert!(s[0].password.is_none(), "credentials are the data nodes'");
        assert_eq!(m, "mymaster");
        assert_eq!(
            (t.username.as_deref(), t.password.as_deref()),
            (Some("u"), Some("p"))
        );
        assert!(!t.tls);
        let (_, _, t) = parse_url("rediss+sentinel://:secret@h:1/m").unwrap();
        assert!(t.tls && t.username.is_none() && t.password.as_deref() == Some("secret"));
        for bad in [
            "redis://h:1/m",
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel://h/m",
            "redis+sentinel:///m",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_address_most_sentinels_name_is_tried_first() {
        let v = |s: &[&str]| s.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        // A stale sentinel listed first names the dead primary; the two
        // others name the promoted replica.
        assert_eq!(
            by_votes(v(&["old:1", "new:2", "new:2"])),
            v(&["new:2", "old:1"])
        );
        assert_eq!(
            by_votes(v(&["a:1", "b:2"])),
            v(&["a:1", "b:2"]),
            "ties: URL order"
        );
        assert!(by_votes(Vec::new()).is_empty());
    }

    #[test]
    fn roles() {
        let primary = Resp::Array(vec![
            Resp::Bulk(Bytes::from_static(b"master")),
            Resp::Int(0),
        ]);
        let replica = Resp::Array(vec![Resp::Bulk(Bytes::from_static(b"slave"))]);
        assert!(role_is_primary(&primary));
        assert!(!role_is_primary(&replica));
        assert!(!role_is_primary(&Resp::Nil));
        let hp = Resp::Array(vec![
            Resp::Bulk(Bytes::from_static(b"127.0.0.1")),
            Resp::Bulk(Bytes::from_static(b"6380")),
        ]);
        assert_eq!(host_port(&hp).as_deref(), Some("127.0.0.1:6380"));
        assert_eq!(host_port(&Resp::Nil), None);
    }
}
