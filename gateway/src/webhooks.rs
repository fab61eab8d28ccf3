//! The webhook sender (contract §10.6): POSTs the queue's lifecycle events
//! to `webhooks.url`, signed, at least once, in order per session and per
//! topic.
//!
//! Every node runs this task when `webhooks.url` is set, but only the
//! holder of the broker's lease sends (the lease lives `LEASE_TTL` and is
//! renewed every third of it), so the queue is sent by one node at a time
//! and a dead sender's queue is taken over within `LEASE_TTL`. The queue
//! itself is the broker's (a Redis stream, or memory): events a node
//! recorded are sent by whichever node holds the lease.
//!
//! Invariants:
//! - An event leaves the queue only after a 2xx, or once it is older than
//!   `webhooks.retry_for` (counted `expired`, logged): at least once.
//! - A batch's events that share a session or a topic (transitively) form
//!   one chain, sent one at a time in queue order, each retried with
//!   backoff before the next; chains run side by side, at most
//!   [`IN_FLIGHT`] calls at once. A failing event holds back its own chain,
//!   and the rest of the queue for at most [`BATCH_WINDOW`]: then chains
//!   still retrying stop after their current attempt, and what they did
//!   not deliver is read again, still first, with the next batch.
//! - Once the lease is lost (not renewed in time), no further attempt is
//!   made; what was not acknowledged stays queued for the next holder.
//! - Each attempt carries `Herald-Signature: t=<unix s>,v1=<hex
//!   HMAC-SHA256(secret, "<t>.<body>")>`; the body is the same bytes on
//!   every attempt.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::backoff::Backoff;
use herald_core::config::WebhooksConfig;
use herald_core::metrics::WebhookResult;
use herald_core::webhooks::{Kind, Queued};
use herald_core::{AnyBroker, Broker, Metrics};
use http::Uri;
use tracing::{Instrument, debug, info, warn};

use crate::backend::Backend;

/// How long the sender's lease lives without renewal.
const LEASE_TTL: Duration = Duration::from_secs(3);
/// Events read from the queue at a time.
const BATCH: usize = 256;
/// Longest one batch holds up the queue (see the module documentation).
pub const BATCH_WINDOW: Duration = Duration::from_secs(10);
/// Most webhook calls in flight at once.
pub const IN_FLIGHT: usize = 32;
/// Longest one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an empty queue is looked at again.
const IDLE: Duration = Duration::from_millis(100);
/// Most bytes of a receiver's answer read (and ignored).
const ANSWER_LIMIT: usize = 4096;

/// What the sender needs, taken from the node once.
struct Sender {
    broker: Weak<AnyBroker>,
    metrics: Arc<Metrics>,
    backend: Backend,
    url: Uri,
    key: ring::hmac::Key,
    retry_for: Duration,
    holder: String,
}

/// Starts the sender when `webhooks.url` is set; it stops once `broker`
/// is dropped (with its node).
pub fn spawn(
    config: &WebhooksConfig,
    node_id: &str,
    broker: &Arc<AnyBroker>,
    metrics: Arc<Metrics>,
    backend: Backend,
) {
    let (Some(url), Some(secret)) = (&config.url, &config.secret) else {
        return;
    };
    let Ok(url) = url.parse::<Uri>() else {
        // Checked when the configuration was loaded.
        warn!(%url, "webhooks.url does not parse; no webhook will be sent");
        return;
    };
    let sender = Sender {
        broker: Arc::downgrade(broker),
        metrics,
        backend,
        url,
        key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes()),
        retry_for: config.retry_for,
        holder: format!("{node_id}/{}", herald_core::random_hex(4)),
    };
    tokio::spawn(sender.run().instrument(tracing::info_span!("webhooks")));
}

/// The `Herald-Signature` value for `body` signed at `t` (Unix seconds).
pub fn signature(key: &ring::hmac::Key, t: u64, body: &[u8]) -> String {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = format!("t={t},v1=");
    for b in tag.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

impl Sender {
    async fn run(self) {
        let mut holding = false;
        while let Some(broker) = self.broker.upgrade() {
            self.report_dropped(&broker);
            let held = match broker.webhooks_lease(&self.holder, LEASE_TTL).await {
                Ok(held) => held,
                Err(e) => {
                    debug!(error = %e, "webhook lease: store unreachable");
                    false
                }
            };
            if held != holding {
                info!(holder = %self.holder, held, "webhook sender lease");
                holding = held;
            }
            if !held {
                self.metrics.webhook_queue.set(0.0);
                drop(broker);
                tokio::time::sleep(LEASE_TTL / 3).await;
                continue;
            }
            let (events, len) = match broker.webhooks_read(BATCH).await {
                Ok(read) => read,
                Err(e) => {
                    debug!(error = %e, "webhook queue: store unreachable");
                    drop(broker);
                    tokio::time::sleep(IDLE).await;
                    continue;
                }
            };
            self.metrics.webhook_queue.set(len as f64);
            if events.is_empty() {
                drop(broker);
                tokio::time::sleep(IDLE).await;
                continue;
            }
            let done = self.send_holding_lease(&broker, events).await;
            self.finish(&broker, &done).await;
        }
    }

    /// Counts (and logs) what the queue's cap dropped.
    fn report_dropped(&self, broker: &AnyBroker) {
        let dropped = broker.webhooks_dropped();
        for kind in Kind::ALL {
            let n = dropped[kind.index()];
            if n > 0 {
                warn!(
                    r#type = kind.name(),
                    dropped = n,
                    "webhook queue over webhooks.max_queue: oldest events dropped unsent"
                );
                self.metrics.webhook(kind, WebhookResult::Dropped, n);
            }
        }
    }

    /// Sends `events` while renewing the lease, for at most
    /// [`BATCH_WINDOW`] (then the chains still retrying stop after their
    /// current attempt); returns the ids to remove.
    async fn send_holding_lease(&self, broker: &AnyBroker, events: Vec<Queued>) -> Vec<String> {
        let stop = AtomicBool::new(false);
        let send = self.send(events, &stop);
        tokio::pin!(send);
        let window = tokio::time::sleep(BATCH_WINDOW);
        tokio::pin!(window);
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + LEASE_TTL / 3, LEASE_TTL / 3);
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                done = &mut send => return done,
                () = &mut window, if !stop.load(Ordering::Acquire) => {
                    debug!("webhook batch window over: events still retried go back to the queue");
                    stop.store(true, Ordering::Release);
                }
                _ = renew.tick() => {
                    let held = match broker.webhooks_lease(&self.holder, LEASE_TTL).await {
                        Ok(held) => held,
                        Err(_) => renewed.elapsed() + LEASE_TTL / 3 < LEASE_TTL,
                    };
                    if !held {
                        stop.store(true, Ordering::Release);
                        warn!("webhook lease lost while sending: the rest stays queued for the next holder");
                        return send.await;
                    }
                    renewed = Instant::now();
                }
            }
        }
    }

    /// Removes what was sent (or abandoned) from the queue; retried, since
    /// an event left there is sent again.
    async fn finish(&self, broker: &AnyBroker, done: &[String]) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        for _ in 0..20 {
            match broker.webhooks_done(done).await {
                Ok(()) => return,
                Err(e) => debug!(error = %e, "webhook queue: cannot remove sent events yet"),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
        warn!(
            events = done.len(),
            "webhook queue unreachable: sent events stay queued and will be sent again"
        );
    }

    /// Sends a batch as chains (see the module documentation).
    async fn send(&self, events: Vec<Queued>, stop: &AtomicBool) -> Vec<String> {
        futures_util::stream::iter(chains(events))
            .map(|chain| self.send_chain(chain, stop))
            .buffer_unordered(IN_FLIGHT)
            .flat_map(futures_util::stream::iter)
            .collect()
            .await
    }

    async fn send_chain(&self, chain: Vec<Queued>, stop: &AtomicBool) -> Vec<String> {
        let mut done = Vec::with_capacity(chain.len());
        for event in chain {
            if !self.deliver(&event, stop).await {
                break;
            }
            done.push(event.id);
        }
        done
    }

    /// Delivers one event; `true` once it may leave the queue (sent, or
    /// expired), `false` when told to `stop` first (the lease was lost, or
    /// the batch window is over).
    async fn deliver(&self, event: &Queued, stop: &AtomicBool) -> bool {
        let body = Bytes::from(event.body());
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut failures = 0u32;
        loop {
            if stop.load(Ordering::Acquire) {
                return false;
            }
            let age = herald_core::now_ms().saturating_sub(event.ts);
            if u128::from(age) > self.retry_for.as_millis() {
                warn!(id = %event.id, r#type = event.kind.name(), failures, "webhook given up after webhooks.retry_for");
                self.metrics.webhook(event.kind, WebhookResult::Expired, 1);
                return true;
            }
            let t = herald_core::now_ms() / 1000;
            let signature = signature(&self.key, t, &body);
            let answer = self
                .backend
                .post_json_with(
                    &self.url,
                    body.clone(),
                    ("herald-signature", &signature),
                    ANSWER_LIMIT,
                    CALL_TIMEOUT,
                )
                .await;
            match answer {
                Ok((status, _)) if status.is_success() => {
                    self.metrics.webhook(event.kind, WebhookResult::Ok, 1);
                    return true;
                }
                Ok((status, _)) => {
                    debug!(id = %event.id, %status, "webhook refused; retrying");
                }
                Err(e) => debug!(id = %event.id, error = %e, "webhook failed; retrying"),
            }
            failures += 1;
            if failures == 1 {
                warn!(id = %event.id, r#type = event.kind.name(), "webhook not accepted; retrying with backoff");
            }
            self.metrics.webhook(event.kind, WebhookResult::Retry, 1);
            // Waits in short steps, so a stop does not wait out a long backoff.
            let until = Instant::now() + backoff.next_delay();
            while !stop.load(Ordering::Acquire) && Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_millis(250))).await;
            }
        }
    }
}

/// Groups `events` (in queue order) into chains: events linked by a shared
/// session or topic, directly or through others, in one chain, in order.
fn chains(events: Vec<Queued>) -> Vec<Vec<Queued>> {
    let n = events.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first: HashMap<(bool, &str), usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let keys = [
            e.session.as_deref().map(|s| (true, s)),
            e.topic.as_deref().map(|t| (false, t)),
        ];
        for key in keys.into_iter().flatten() {
            match first.get(&key) {
                Some(&j) => {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    parent[a.max(b)] = a.min(b);
                }
                None => {
                    first.insert(key, i);
                }
            }
        }
    }
    let roots: Vec<usize> = (0..n).map(|i| root(&mut parent, i)).collect();
    let mut order: Vec<usize> = Vec::new();
    let mut by_root: HashMap<usize, Vec<Queued>> = HashMap::new();
    for (e, r) in events.into_iter().zip(roots) {
        by_root
            .entry(r)
            .or_insert_with(|| {
                order.push(r);
                Vec::new()
            })
            .push(e);
    }
    order
        .into_iter()
        .filter_map(|r| by_root.remove(&r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, session: Option<&str>, topic: Option<&str>) -> Queued {
        Queued {
            id: id.to_owned(),
            kind: Kind::Join,
            ts: 0,
            data: "{}".to_owned(),
            session: session.map(str::to_owned),
            topic: topic.map(str::to_owned),
        }
    }

    fn ids(chains: &[Vec<Queued>]) -> Vec<Vec<&str>> {
        chains
            .iter()
            .map(|c| c.iter().map(|e| e.id.as_str()).collect())
            .collect()
    }

    #[test]
    fn events_sharing_a_session_or_topic_chain_in_queue_order() {
        let events = vec![
            ev("1", Some("a"), None),
            ev("2", Some("b"), None),
            ev("3", Some("a"), Some("t")),
            ev("4", Some("c"), Some("t")),
            ev("5", Some("b"), None),
            ev("6", Some("d"), None),
        ];
        assert_eq!(
            ids(&chains(events)),
            vec![vec!["1", "3", "4"], vec!["2", "5"], vec!["6"]]
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_t_dot_body() {
        // Known answer: python3 -c 'import hmac,hashlib;print(hmac.new(
        // b"0123456789abcdef", b"1700000000.{}", hashlib.sha256).hexdigest())'
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"0123456789abcdef");
        assert_eq!(
            signature(&key, 1_700_000_000, b"{}"),
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }
}
