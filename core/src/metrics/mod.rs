//! Prometheus metrics (contract §9), declared and described in one place.
//!
//! The families are recorded with the `metrics` crate and rendered by
//! `metrics-exporter-prometheus`. **One recorder per node, never a global
//! one:** [`Metrics::new`] builds a private [`PrometheusRecorder`], registers
//! every family on it and keeps the handles, so several nodes in one test
//! process (or a gateway and its embedded admin API) never mix their counts,
//! and the hot path touches a pre-registered atomic, never a name lookup.
//!
//! Invariants:
//! - every family is described and registered here, at construction, so it
//!   is rendered (HELP, TYPE and a zero value) before any event;
//! - label values come from closed enums ([`HandshakeResult`],
//!   [`DropReason`], [`CloseCode`]), never from user ids or topics;
//! - histogram samples are buffered by the exporter until the next upkeep,
//!   which runs every [`UPKEEP_PERIOD`] (started with the node's runtime), so
//!   the buffer holds at most that period's samples.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::Instrument;

use crate::broker::LeaveCause;
use herald_protocol::CloseCode;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

mod labels;

pub use labels::{DropReason, HandshakeResult, ProxyHook, ProxyResult, WebhookResult};

/// How often buffered histogram samples are folded into their buckets.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(1);

/// Upper bounds of the delivery latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Upper bounds of the admin request duration histogram, in seconds.
pub const ADMIN_REQUEST_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `herald_admin_request_seconds{route,status}`: registered per series by
/// the admin API (its labels are its routes and keys), bucketed here.
pub const ADMIN_REQUEST_SECONDS: &str = "herald_admin_request_seconds";

const PROXY_SECONDS: &str = "herald_proxy_seconds";
const DELIVER_LATENCY: &str = "herald_publish_to_deliver_seconds";
const PROBE_RTT: &str = "herald_pubsub_probe_seconds";

static METADATA: Metadata<'static> = Metadata::new("herald", Level::INFO, None);

/// A gauge whose current value the node also reads (for `/v1/stats`).
///
/// The exported gauge and the readable count move by the same increments,
/// so they agree whatever order concurrent updates land in.
#[derive(Debug)]
pub struct Level64 {
    value: AtomicI64,
    gauge: Gauge,
}

impl Level64 {
    fn new(gauge: Gauge) -> Level64 {
        Level64 {
            value: AtomicI64::new(0),
            gauge,
        }
    }

    /// Adds `n` (which may be negative).
    pub fn add(&self, n: i64) {
        self.value.fetch_add(n, Relaxed);
        self.gauge.increment(n as f64);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.value.load(Relaxed)
    }
}

/// The `protocol` label values of `herald_protocol_connections`, indexed
/// by [`Metrics::protocol_session`].
pub const PROTOCOLS: [&str; 4] = [
    "herald_json",
    "herald_msgpack",
    "centrifugo_json",
    "centrifugo_protobuf",
];

/// Every metric of a node.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Open sessions.
    pub connections: Level64,
    /// Open sessions by client protocol ([`PROTOCOLS`]).
    by_protocol: Vec<Level64>,
    handshakes: Vec<Counter>,
    /// Session–topic pairs.
    pub subscriptions: Level64,
    /// Distinct topics with a local session.
    pub topics: Level64,
    /// Events accepted by the broker through this process.
    pub published: Counter,
    /// Events written to client sockets.
    pub delivered: Counter,
    dropped: Vec<Counter>,
    /// Broker receive → written to the socket, in seconds.
    pub deliver_latency: Histogram,
    /// 1 while the broker is reachable.
    pub broker_up: Gauge,
    /// History reads sent to the broker for recoveries and catch-ups.
    pub history_reads: Counter,
    disconnects: Vec<Counter>,
    /// Changes of Redis primary this process saw (Sentinel, Cluster).
    pub failovers: Counter,
    /// Topic epochs started because a new primary may lack acknowledged
    /// events.
    pub fenced: Counter,
    /// Round trip of the pub/sub probe: published through Redis, back on
    /// the node's own subscription.
    pub probe_rtt: Histogram,
    /// Presence memberships of this node's sessions.
    pub presence_members: Level64,
    /// Presence joins of this node's sessions.
    pub presence_joins: Counter,
    presence_leaves: Vec<Counter>,
    /// Times this node's presence lapsed (it stopped reporting past
    /// `presence.timeout`) and its sessions joined again.
    pub presence_lapses: Counter,
    /// Public connections accepted whose first request is not routed yet.
    pub handshakes_pending: Level64,
    /// Public connections refused on accept because too many were pending.
    pub connections_shed: Counter,
    /// Pending connections closed to make room, because they waited longest
    /// on their client (contract §10.8).
    pub handshakes_evicted: Counter,
    /// `accept` calls that failed (out of file descriptors, say).
    pub accept_errors: Counter,
    /// The `process_*` families (a well-kept crate's reading of `/proc`).
    process: metrics_process::Collector,
    proxy_requests: Vec<Counter>,
    proxy_seconds: Vec<Histogram>,
    webhooks: Vec<Counter>,
    /// Webhook events waiting in the queue, as the sending node last read
    /// it (0 on the others).
    pub webhook_queue: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.clone()))
        .collect();
    Key::from_parts(name, labels)
}

impl Metrics {
    /// A fresh set for node `node_id`, with `herald_broker_up` at 1. When
    /// called inside a Tokio runtime, also starts the upkeep task (it ends
    /// when the last `Arc` is dropped).
    pub fn new(node_id: &str) -> Arc<Metrics> {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DELIVER_LATENCY.to_owned()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(PROBE_RTT.to_owned()), &LATENCY_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(ADMIN_REQUEST_SECONDS.to_owned()),
                    &ADMIN_REQUEST_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(PROXY_SECONDS.to_owned()),
                    &ADMIN_REQUEST_BUCKETS,
                )
            });
        // Only an empty bucket list is refused, and ours is a constant.
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        let r = &recorder;
        let describe = |kind: Kind, name: &'static str, help: &'static str| {
            let (name_key, help) = (KeyName::from(name), help.into());
            match kind {
                Kind::Counter => r.describe_counter(name_key, None, help),
                Kind::Gauge => r.describe_gauge(name_key, None, help),
                Kind::Histogram => r.describe_histogram(name_key, None, help),
            }
        };
        let counter = |name: &'static str, labels: &[(&'static str, String)]| {
            r.register_counter(&key(name, labels), &METADATA)
        };
        let gauge = |name: &'static str, labels: &[(&'static str, String)]| {
            r.register_gauge(&key(name, labels), &METADATA)
        };

        describe(
            Kind::Gauge,
            "herald_node_info",
            "This process: node id and version.",
        );
        gauge(
            "herald_node_info",
            &[
                ("node", node_id.to_owned()),
                ("version", crate::cli::VERSION.to_owned()),
            ],
        )
        .set(1.0);
        describe(
            Kind::Gauge,
            "herald_build_info",
            "The version of this process (always 1).",
        );
        gauge(
            "herald_build_info",
            &[("version", crate::cli::VERSION.to_owned())],
        )
        .set(1.0);
        describe(
            Kind::Histogram,
            ADMIN_REQUEST_SECONDS,
            "Admin API requests, from the key check to the response, by route and status.",
        );
        describe(
            Kind::Counter,
            "herald_proxy_requests_total",
            "Backend hook calls by hook and result.",
        );
        describe(
            Kind::Counter,
            "herald_webhooks_total",
            "Webhook events by type and result (ok, retry, expired, dropped).",
        );
        describe(
            Kind::Gauge,
            "herald_webhook_queue",
            "Webhook events waiting to be sent (read by the node that sends them).",
        );
        describe(
            Kind::Histogram,
            PROXY_SECONDS,
            "Backend hook calls, from the request to the answer, by hook.",
        );
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_max_fds, process_threads, ...: read from
        // /proc at each scrape (see `render`).
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(r, || process.describe());
        describe(
            Kind::Gauge,
            "herald_connections",
            "Open WebSocket sessions on this node.",
        );
        describe(
            Kind::Gauge,
            "herald_protocol_connections",
            "Open WebSocket sessions on this node by client protocol: herald_json (/ws, protocol 1 and herald.v2.json), herald_msgpack, centrifugo_json, centrifugo_protobuf (/connection/websocket).",
        );
        describe(
            Kind::Counter,
            "herald_handshakes_total",
            "WebSocket handshakes by result.",
        );
        describe(
            Kind::Gauge,
            "herald_subscriptions",
            "Session-topic subscription pairs on this node.",
        );
        describe(
            Kind::Gauge,
            "herald_topics",
            "Distinct topics with at least one local session.",
        );
        describe(
            Kind::Counter,
            "herald_messages_published_total",
            "Events accepted by the broker through this process.",
        );
        describe(
            Kind::Counter,
            "herald_messages_delivered_total",
            "Events written to client sockets.",
        );
        describe(
            Kind::Counter,
            "herald_messages_dropped_total",
            "Queued events discarded, by reason.",
        );
        describe(
            Kind::Histogram,
            DELIVER_LATENCY,
            "Time from the broker handing an event to this node to its write to a client socket.",
        );
        describe(
            Kind::Gauge,
            "herald_broker_up",
            "1 while the broker is reachable, 0 otherwise.",
        );
        describe(
            Kind::Counter,
            "herald_history_reads_total",
            "History reads sent to the broker for recoveries and catch-ups (shared by sessions recovering together).",
        );
        describe(
            Kind::Counter,
            "herald_disconnects_total",
            "Sessions closed by the server, by close code.",
        );
        describe(
            Kind::Counter,
            "herald_redis_failovers_total",
            "Changes of Redis primary this process followed (Sentinel announcements, Cluster slot owners).",
        );
        describe(
            Kind::Counter,
            "herald_history_fenced_total",
            "Topic histories restarted in a new epoch because a new Redis primary may lack acknowledged events.",
        );
        describe(
            Kind::Histogram,
            PROBE_RTT,
            "Round trip of the pub/sub liveness probe: published through Redis, received on the node's own subscription.",
        );

        describe(
            Kind::Gauge,
            "herald_presence_members",
            "Presence memberships (session-topic pairs on tracked topics) of this node's sessions.",
        );
        describe(
            Kind::Counter,
            "herald_presence_joins_total",
            "Presence joins of this node's sessions.",
        );
        describe(
            Kind::Counter,
            "herald_presence_leaves_total",
            "Presence leaves by cause: this node's sessions unsubscribing or disconnecting, and members of nodes that stopped reporting removed by this process (timeout).",
        );
        describe(
            Kind::Counter,
            "herald_presence_lapses_total",
            "Times this node stopped reporting presence past presence.timeout (paused, cut off from Redis) and registered its sessions again.",
        );

        describe(
            Kind::Gauge,
            "herald_handshakes_pending",
            "Public connections accepted whose first request (the WebSocket handshake) is not routed yet: TLS and header reading in progress.",
        );
        describe(
            Kind::Counter,
            "herald_connections_shed_total",
            "Public connections refused at accept (503 with Retry-After, or a close under TLS) because limits.max_pending_handshakes were pending, each being worked on.",
        );
        describe(
            Kind::Counter,
            "herald_handshakes_evicted_total",
            "Pending public connections closed to make room for a new one, because they waited longest on their client without completing a request (idle sockets, slow-loris).",
        );
        describe(
            Kind::Counter,
            "herald_accept_errors_total",
            "Failed accept calls on the listeners (typically out of file descriptors).",
        );

        let metrics = Metrics {
            connections: Level64::new(gauge("herald_connections", &[])),
            by_protocol: PROTOCOLS
                .iter()
                .map(|p| {
                    Level64::new(gauge(
                        "herald_protocol_connections",
                        &[("protocol", (*p).into())],
                    ))
                })
                .collect(),
            handshakes: HandshakeResult::ALL
                .iter()
                .map(|h| counter("herald_handshakes_total", &[("result", h.label().into())]))
                .collect(),
            subscriptions: Level64::new(gauge("herald_subscriptions", &[])),
            topics: Level64::new(gauge("herald_topics", &[])),
            published: counter("herald_messages_published_total", &[]),
            delivered: counter("herald_messages_delivered_total", &[]),
            dropped: DropReason::ALL
                .iter()
                .map(|d| {
                    counter(
                        "herald_messages_dropped_total",
                        &[("reason", d.label().into())],
                    )
                })
                .collect(),
            deliver_latency: r.register_histogram(&key(DELIVER_LATENCY, &[]), &METADATA),
            broker_up: gauge("herald_broker_up", &[]),
            history_reads: counter("herald_history_reads_total", &[]),
            disconnects: CloseCode::ALL
                .iter()
                .map(|c| {
                    counter(
                        "herald_disconnects_total",
                        &[("code", c.as_u16().to_string())],
                    )
                })
                .collect(),
            failovers: counter("herald_redis_failovers_total", &[]),
            fenced: counter("herald_history_fenced_total", &[]),
            probe_rtt: r.register_histogram(&key(PROBE_RTT, &[]), &METADATA),
            presence_members: Level64::new(gauge("herald_presence_members", &[])),
            presence_joins: counter("herald_presence_joins_total", &[]),
            presence_leaves: LeaveCause::ALL
                .iter()
                .map(|c| {
                    counter(
                        "herald_presence_leaves_total",
                        &[("cause", c.label().into())],
                    )
                })
                .collect(),
            presence_lapses: counter("herald_presence_lapses_total", &[]),
            handshakes_pending: Level64::new(gauge("herald_handshakes_pending", &[])),
            connections_shed: counter("herald_connections_shed_total", &[]),
            handshakes_evicted: counter("herald_handshakes_evicted_total", &[]),
            accept_errors: counter("herald_accept_errors_total", &[]),
            proxy_requests: ProxyHook::ALL
                .iter()
                .flat_map(|h| ProxyResult::ALL.iter().map(move |r| (h, r)))
                .map(|(h, r)| {
                    counter(
                        "herald_proxy_requests_total",
                        &[("hook", h.label().into()), ("result", r.label().into())],
                    )
                })
                .collect(),
            proxy_seconds: ProxyHook::ALL
                .iter()
                .map(|h| {
                    r.register_histogram(
                        &key(PROXY_SECONDS, &[("hook", h.label().into())]),
                        &METADATA,
                    )
                })
                .collect(),
            webhooks: crate::webhooks::Kind::ALL
                .into_iter()
                .flat_map(|k| WebhookResult::ALL.iter().map(move |r| (k, r)))
                .map(|(k, r)| {
                    counter(
                        "herald_webhooks_total",
                        &[("type", k.name().into()), ("result", r.label().into())],
                    )
                })
                .collect(),
            webhook_queue: gauge("herald_webhook_queue", &[]),
            handle,
            recorder,
            process,
        };
        metrics.broker_up.set(1.0);
        let metrics = Arc::new(metrics);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(
                upkeep(Arc::downgrade(&metrics)).instrument(tracing::info_span!("metrics_upkeep")),
            );
        }
        metrics
    }

    /// The recorder, for families other modules register and describe
    /// themselves (always at start-up).
    pub fn recorder(&self) -> &PrometheusRecorder {
        &self.recorder
    }

    /// A session of the client protocol `PROTOCOLS[index]` opened (`+1`)
    /// or closed (`-1`).
    pub fn protocol_session(&self, index: usize, delta: i64) {
        if let Some(level) = self.by_protocol.get(index) {
            level.add(delta);
        }
    }

    /// Counts a handshake outcome.
    pub fn handshake(&self, result: HandshakeResult) {
        self.handshakes[result.index()].increment(1);
    }

    /// Counts an event handed to a client's socket, `waited` after the node
    /// received it (the session's writes and the hub's inline writes alike).
    pub fn delivered(&self, waited: std::time::Duration) {
        self.deliver_latency.record(waited.as_secs_f64());
        self.delivered.increment(1);
    }

    /// Counts dropped messages.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason.index()].increment(n);
    }

    /// Counts `n` presence leaves for `cause`.
    pub fn presence_left(&self, cause: LeaveCause, n: u64) {
        self.presence_leaves[cause.index()].increment(n);
    }

    /// Counts a backend hook call that ended with `result` after `took`
    /// (not timed when it was not made).
    pub fn proxy(&self, hook: ProxyHook, result: ProxyResult, took: std::time::Duration) {
        let at = hook.index() * ProxyResult::ALL.len() + result.index();
        if let Some(c) = self.proxy_requests.get(at) {
            c.increment(1);
        }
        if result != ProxyResult::Shed {
            self.proxy_seconds[hook.index()].record(took.as_secs_f64());
        }
    }

    /// Counts `n` webhook events of `kind` that ended an attempt with
    /// `result`.
    pub fn webhook(&self, kind: crate::webhooks::Kind, result: WebhookResult, n: u64) {
        let at = kind.index() * WebhookResult::ALL.len() + result.index();
        if let Some(c) = self.webhooks.get(at) {
            c.increment(n);
        }
    }

    /// Counts a server-side close with `code`.
    pub fn disconnect(&self, code: CloseCode) {
        self.disconnects[code.index()].increment(1);
    }

    /// The Prometheus text exposition (format 0.0.4). The process figures
    /// (memory, CPU, descriptors, threads) are read as it renders, so a
    /// scrape sees them as of that moment.
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.render()
    }

    /// The value of one series as rendered, e.g.
    /// `herald_handshakes_total{result="unauthorized"}`; for tests and
    /// diagnostics, which thereby read exactly what Prometheus would.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.render().lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            rest.trim().parse().ok()
        })
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

async fn upkeep(metrics: Weak<Metrics>) {
    let mut tick = tokio::time::interval(UPKEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = metrics.upgrade() else { return };
        m.handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_described_from_start() {
        let text = Metrics::new("n1").render();
        for family in [
            "herald_connections",
            "herald_handshakes_total",
            "herald_subscriptions",
            "herald_topics",
            "herald_messages_published_total",
            "herald_messages_delivered_total",
            "herald_messages_dropped_total",
            "herald_publish_to_deliver_seconds",
            "herald_broker_up",
            "herald_history_reads_total",
            "herald_disconnects_total",
            "herald_node_info",
            "herald_redis_failovers_total",
            "herald_history_fenced_total",
            "herald_pubsub_probe_seconds",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family} has no HELP:\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} has no TYPE:\n{text}"
            );
        }
        assert!(text.contains("herald_broker_up 1"), "{text}");
        assert!(
            text.contains("herald_node_info{node=\"n1\",version=\""),
            "{text}"
        );
        assert!(
            text.contains("herald_disconnects_total{code=\"4004\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("herald_publish_to_deliver_seconds_bucket{le=\"+Inf\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn histogram_is_cumulative_with_the_contract_buckets() {
        let m = Metrics::new("n1");
        m.deliver_latency.record(0.00005);
        m.deliver_latency.record(0.003);
        m.deliver_latency.record(0.003);
        m.deliver_latency.record(60.0);
        let text = m.render();
        for line in [
            "herald_publish_to_deliver_seconds_bucket{le=\"0.0001\"} 1\n",
            "herald_publish_to_deliver_seconds_bucket{le=\"0.005\"} 3\n",
            "herald_publish_to_deliver_seconds_bucket{le=\"5\"} 3\n",
            "herald_publish_to_deliver_seconds_bucket{le=\"+Inf\"} 4\n",
            "herald_publish_to_deliver_seconds_count 4\n",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn nodes_do_not_share_counts() {
        let (a, b) = (Metrics::new("a"), Metrics::new("b"));
        a.handshake(HandshakeResult::Unauthorized);
        a.connections.add(2);
        a.connections.add(-1);
        assert_eq!(
            a.value("herald_handshakes_total{result=\"unauthorized\"}"),
            Some(1.0)
        );
        assert_eq!(
            b.value("herald_handshakes_total{result=\"unauthorized\"}"),
            Some(0.0)
        );
        assert_eq!(a.connections.get(), 1);
        assert_eq!(a.value("herald_connections"), Some(1.0));
        assert_eq!(b.value("herald_connections"), Some(0.0));
    }
}
