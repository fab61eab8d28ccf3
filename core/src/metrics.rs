//! Prometheus metrics (contract §9), declared and described in one place.
//!
//! Plain atomics rather than a metrics framework: the set is small and fixed,
//! label values come from closed enums (never user ids or topics), and every
//! family is rendered from start-up, before any event. One [`Metrics`] per node
//! instance, so several nodes in one test process do not mix their counts.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use herald_protocol::CloseCode;

/// Outcome of a handshake, the `result` label of `herald_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// Upgraded.
    Accepted,
    /// 401 unauthorized.
    Unauthorized,
    /// 401 token_expired.
    TokenExpired,
    /// 403 forbidden_origin.
    ForbiddenOrigin,
    /// 503: at `max_connections` or draining.
    Unavailable,
    /// 400/426: not a WebSocket upgrade.
    BadRequest,
}

impl HandshakeResult {
    const ALL: [HandshakeResult; 6] = [
        HandshakeResult::Accepted,
        HandshakeResult::Unauthorized,
        HandshakeResult::TokenExpired,
        HandshakeResult::ForbiddenOrigin,
        HandshakeResult::Unavailable,
        HandshakeResult::BadRequest,
    ];

    fn label(self) -> &'static str {
        match self {
            HandshakeResult::Accepted => "accepted",
            HandshakeResult::Unauthorized => "unauthorized",
            HandshakeResult::TokenExpired => "token_expired",
            HandshakeResult::ForbiddenOrigin => "forbidden_origin",
            HandshakeResult::Unavailable => "unavailable",
            HandshakeResult::BadRequest => "bad_request",
        }
    }
}

/// Why queued messages were thrown away, the `reason` label of
/// `herald_messages_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The client's queue overflowed (it is then closed with 4004).
    SlowConsumer,
    /// The session was closing and could not take them.
    Closed,
}

impl DropReason {
    const ALL: [DropReason; 2] = [DropReason::SlowConsumer, DropReason::Closed];

    fn label(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::Closed => "closed",
        }
    }
}

/// Upper bounds of the delivery latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        self.observe_many(d, 1);
    }

    /// Records `n` observations of the same duration.
    pub fn observe_many(&self, d: Duration, n: u64) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(n, Relaxed);
        }
        self.count.fetch_add(n, Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns.saturating_mul(n), Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// Every metric of a node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `node_id`, shown as a label of `herald_node_info`.
    node: String,
    /// Open sessions.
    pub connections: AtomicI64,
    handshakes: [AtomicU64; HandshakeResult::ALL.len()],
    /// Session–topic pairs.
    pub subscriptions: AtomicI64,
    /// Distinct topics with a local session.
    pub topics: AtomicI64,
    /// Events accepted by the broker through this process.
    pub published: AtomicU64,
    /// Events written to client sockets.
    pub delivered: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Broker receive → written to the socket.
    pub deliver_latency: Histogram,
    /// 1 while the broker is reachable.
    pub broker_up: AtomicI64,
    /// History reads sent to the broker for recoveries and catch-ups.
    pub history_reads: AtomicU64,
    disconnects: [AtomicU64; CloseCode::ALL.len()],
}

impl Metrics {
    /// A fresh set for node `node_id`, with `herald_broker_up` at 1.
    pub fn new(node_id: &str) -> Metrics {
        let m = Metrics {
            node: node_id.to_owned(),
            ..Metrics::default()
        };
        m.broker_up.store(1, Relaxed);
        m
    }

    /// Counts a handshake outcome.
    pub fn handshake(&self, result: HandshakeResult) {
        let i = HandshakeResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.handshakes[i].fetch_add(1, Relaxed);
    }

    /// Handshakes with `result` so far.
    pub fn handshakes(&self, result: HandshakeResult) -> u64 {
        let i = HandshakeResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.handshakes[i].load(Relaxed)
    }

    /// Counts dropped messages.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dropped[i].fetch_add(n, Relaxed);
    }

    /// Counts a server-side close with `code`.
    pub fn disconnect(&self, code: CloseCode) {
        self.disconnects[code.index()].fetch_add(1, Relaxed);
    }

    /// Closes with `code` so far.
    pub fn disconnects(&self, code: CloseCode) -> u64 {
        self.disconnects[code.index()].load(Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = write!(
            out,
            "# HELP herald_node_info This process: node id and version.\n# TYPE herald_node_info gauge\nherald_node_info{{node=\"{}\",version=\"{}\"}} 1\n",
            self.node.replace(['\\', '"', '\n'], "_"),
            env!("CARGO_PKG_VERSION")
        );
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            );
        };
        let counter_head = |out: &mut String, name: &str, help: &str| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
        };

        gauge(
            &mut out,
            "herald_connections",
            "Open WebSocket sessions on this node.",
            self.connections.load(Relaxed),
        );

        counter_head(
            &mut out,
            "herald_connections_total",
            "WebSocket handshakes by result.",
        );
        for (r, n) in HandshakeResult::ALL.iter().zip(&self.handshakes) {
            let _ = writeln!(
                out,
                "herald_connections_total{{result=\"{}\"}} {}",
                r.label(),
                n.load(Relaxed)
            );
        }

        gauge(
            &mut out,
            "herald_subscriptions",
            "Session-topic subscription pairs on this node.",
            self.subscriptions.load(Relaxed),
        );
        gauge(
            &mut out,
            "herald_topics",
            "Distinct topics with at least one local session.",
            self.topics.load(Relaxed),
        );

        counter_head(
            &mut out,
            "herald_messages_published_total",
            "Events accepted by the broker through this process.",
        );
        let _ = writeln!(
            out,
            "herald_messages_published_total {}",
            self.published.load(Relaxed)
        );

        counter_head(
            &mut out,
            "herald_messages_delivered_total",
            "Events written to client sockets.",
        );
        let _ = writeln!(
            out,
            "herald_messages_delivered_total {}",
            self.delivered.load(Relaxed)
        );

        counter_head(
            &mut out,
            "herald_messages_dropped_total",
            "Queued events discarded, by reason.",
        );
        for (r, n) in DropReason::ALL.iter().zip(&self.dropped) {
            let _ = writeln!(
                out,
                "herald_messages_dropped_total{{reason=\"{}\"}} {}",
                r.label(),
                n.load(Relaxed)
            );
        }

        let name = "herald_publish_to_deliver_seconds";
        let _ = write!(
            out,
            "# HELP {name} Time from the broker handing an event to this node to its write to a client socket.\n# TYPE {name} histogram\n"
        );
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&self.deliver_latency.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.deliver_latency.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.deliver_latency.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");

        gauge(
            &mut out,
            "herald_broker_up",
            "1 while the broker is reachable, 0 otherwise.",
            self.broker_up.load(Relaxed),
        );

        counter_head(
            &mut out,
            "herald_history_reads_total",
            "History reads sent to the broker for recoveries and catch-ups (shared by sessions recovering together).",
        );
        let _ = writeln!(
            out,
            "herald_history_reads_total {}",
            self.history_reads.load(Relaxed)
        );

        counter_head(
            &mut out,
            "herald_disconnects_total",
            "Sessions closed by the server, by close code.",
        );
        for (c, n) in CloseCode::ALL.iter().zip(&self.disconnects) {
            let _ = writeln!(
                out,
                "herald_disconnects_total{{code=\"{}\"}} {}",
                c.as_u16(),
                n.load(Relaxed)
            );
        }
        out
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
            "herald_connections_total",
            "herald_subscriptions",
            "herald_topics",
            "herald_messages_published_total",
            "herald_messages_delivered_total",
            "herald_messages_dropped_total",
            "herald_publish_to_deliver_seconds",
            "herald_broker_up",
            "herald_history_reads_total",
            "herald_disconnects_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family} has no HELP"
            );
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} has no TYPE"
            );
        }
        assert!(text.contains("herald_broker_up 1"));
        assert!(text.contains("herald_node_info{node=\"n1\",version=\""));
        assert!(text.contains("herald_disconnects_total{code=\"4004\"} 0"));
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::new("n1");
        m.deliver_latency.observe(Duration::from_micros(50));
        m.deliver_latency.observe_many(Duration::from_millis(3), 2);
        m.deliver_latency.observe(Duration::from_secs(60));
        let text = m.render();
        assert!(
            text.contains("herald_publish_to_deliver_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_publish_to_deliver_seconds_bucket{le=\"0.005\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_publish_to_deliver_seconds_bucket{le=\"5\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_publish_to_deliver_seconds_bucket{le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_publish_to_deliver_seconds_count 4\n"),
            "{text}"
        );
    }
}
