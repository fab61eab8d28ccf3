//! What a run measured, in a form that merges across processes and prints as
//! JSON, a Markdown table and an SVG chart.
//!
//! Latencies are kept in an HDR histogram (microseconds, 3 significant
//! digits) and shipped between processes as its recorded `(value, count)`
//! pairs, so merging several processes' results gives exactly the histogram
//! one process would have recorded.
//!
//! One file (about 700 lines with its tests) on purpose: the report's
//! fields, how they merge and how they print change together.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histogram tracks, in microseconds (one minute).
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .unwrap_or_else(|_| unreachable!("constant bounds are valid")),
        )
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Latency({} samples)", self.0.len())
    }
}

impl Latency {
    /// Records one sample, clamped into range.
    pub fn record(&mut self, us: u64) {
        let _ = self.0.record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at percentile `p` (0–100), in microseconds.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_percentile(p)
        }
    }

    /// The largest sample.
    pub fn max(&self) -> u64 {
        self.0.max()
    }

    /// The summary printed in reports.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            samples: self.count(),
            p50_us: self.percentile(50.0),
            p90_us: self.percentile(90.0),
            p99_us: self.percentile(99.0),
            p999_us: self.percentile(99.9),
            max_us: self.max(),
        }
    }

    /// The recorded `(value, count)` pairs, for shipping to another process.
    pub fn to_pairs(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// Rebuilds a histogram from [`Latency::to_pairs`].
    pub fn from_pairs(pairs: &[(u64, u64)]) -> Latency {
        let mut l = Latency::default();
        for (value, count) in pairs {
            let _ = l.0.record_n(*value, *count);
        }
        l
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub samples: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

/// Loss, duplicate and order accounting for one subscriber of one topic,
/// whose events carry a per-topic sequence number from 0.
///
/// Without a bitmap per subscriber (too big at 10,000 subscribers), a repeat
/// of the newest sequence counts as a duplicate and anything older as out of
/// order; an out-of-order arrival is assumed to fill a gap seen before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracker {
    next: u64,
    started: bool,
    /// Distinct events received (in order, or late into a gap).
    pub unique: u64,
    /// Repeats of the newest event.
    pub duplicated: u64,
    /// Events older than the newest one seen.
    pub out_of_order: u64,
}

impl Tracker {
    /// Accounts one received sequence number.
    pub fn observe(&mut self, seq: u64) {
        if !self.started || seq >= self.next {
            self.started = true;
            self.next = seq + 1;
            self.unique += 1;
        } else if seq + 1 == self.next {
            self.duplicated += 1;
        } else {
            self.out_of_order += 1;
            self.unique += 1;
        }
    }
}

/// Delivery accounting summed over subscribers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Events every subscriber should have received (published × subscribers).
    pub expected: u64,
    /// Frames received that carried an event.
    pub received: u64,
    /// Expected events never received.
    pub lost: u64,
    /// Events received twice.
    pub duplicated: u64,
    /// Events received after a newer one of the same topic.
    pub out_of_order: u64,
    /// Payload bytes of the frames that carried an event (WebSocket
    /// headers not counted).
    #[serde(default)]
    pub received_bytes: u64,
}

impl Delivery {
    /// Totals for subscribers of topics with `published[t]` events, from
    /// `unique[t]` (distinct events received, summed over the topic's
    /// subscribers) and `subscribers[t]`.
    pub fn account(
        published: &[u64],
        subscribers: &[u64],
        unique: &[u64],
        received: u64,
        duplicated: u64,
        out_of_order: u64,
    ) -> Delivery {
        let expected: u64 = published.iter().zip(subscribers).map(|(p, s)| p * s).sum();
        let got: u64 = unique.iter().sum();
        Delivery {
            expected,
            received,
            lost: expected.saturating_sub(got),
            duplicated,
            out_of_order,
            received_bytes: 0,
        }
    }
}

/// A gateway process's resource use, read from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// User + system CPU time, milliseconds.
    pub cpu_ms: u64,
}

/// The servers' CPU while every connection was open and nothing was
/// published (fanout `--idle-before`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleWindow {
    /// Seconds measured.
    pub seconds: f64,
    /// Connections open at its start.
    pub connections: u64,
    /// Server CPU (all `--pid`s) per connection per second, µs.
    pub cpu_us_per_connection_second: f64,
    /// The servers' RSS at its end, KiB (summed).
    pub rss_kib: u64,
}

/// The result of one run, as written to JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// `connect`, `fanout` or `churn`.
    pub scenario: String,
    /// `herald` or `raw`.
    pub target: String,
    /// The settings, as given.
    pub settings: serde_json::Value,
    /// Wall-clock seconds of the measured phase.
    pub seconds: f64,
    /// Connections opened (and, for `connect`, held).
    pub connections: u64,
    /// Connection attempts that failed (after their retries).
    pub connect_errors: u64,
    /// Handshakes retried after a refusal (each retry counts).
    #[serde(default)]
    pub connect_retries: u64,
    /// Time to open a connection (first attempt to `101`, retries included;
    /// fanout).
    #[serde(default)]
    pub handshake: Option<LatencySummary>,
    /// Raw handshake histogram pairs, for merging.
    #[serde(default)]
    pub handshake_pairs: Vec<(u64, u64)>,
    /// Per event `(topic, seq, µs)`, the latency of its slowest recipient in
    /// this process (fanout with `--last-recipient`), for merging.
    #[serde(default)]
    pub slowest: Vec<(u32, u64, u64)>,
    /// Per event `(topic, seq, µs)`, the latency of its fastest recipient
    /// in this process, for merging.
    #[serde(default)]
    pub fastest: Vec<(u32, u64, u64)>,
    /// Events published (fanout).
    pub published: u64,
    /// Delivery accounting (fanout).
    pub delivery: Delivery,
    /// Deliveries per second over the measured phase.
    pub deliveries_per_second: f64,
    /// Publish → deliver, or handshake time for `connect`/`churn`.
    pub latency: LatencySummary,
    /// Per event, the latency of its last recipient (fanout with
    /// `--last-recipient`).
    #[serde(default)]
    pub last_recipient: Option<LatencySummary>,
    /// Per event, the latency of its first recipient (fanout with
    /// `--last-recipient`): what the luckiest subscriber waits.
    #[serde(default)]
    pub first_recipient: Option<LatencySummary>,
    /// Raw histogram pairs, for merging.
    #[serde(default)]
    pub latency_pairs: Vec<(u64, u64)>,
    /// Deliveries per second, one sample per second, for the chart.
    #[serde(default)]
    pub throughput_series: Vec<f64>,
    /// Gateway usage before the measured phase, per pid.
    #[serde(default)]
    pub usage_before: Vec<Usage>,
    /// Gateway usage after it, per pid.
    #[serde(default)]
    pub usage_after: Vec<Usage>,
    /// Derived per-connection figures (`connect`).
    #[serde(default)]
    pub per_connection: Option<PerConnection>,
    /// Fanout with `--idle-before`: the servers' CPU per connection per
    /// second of the idle window, in µs, and the window's length.
    #[serde(default)]
    pub idle: Option<IdleWindow>,
    /// Per-topic published counts (fanout; for merging loss across processes).
    #[serde(default)]
    pub published_per_topic: Vec<u64>,
    /// Per-topic subscriber counts.
    #[serde(default)]
    pub subscribers_per_topic: Vec<u64>,
    /// Per-topic distinct events received, summed over subscribers.
    #[serde(default)]
    pub unique_per_topic: Vec<u64>,
}

/// What one idle connection costs the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PerConnection {
    /// RSS growth per connection, bytes.
    pub rss_bytes: f64,
    /// CPU per connection per second while idle, microseconds.
    pub cpu_us_per_second: f64,
}

fn add_vec(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

impl Report {
    /// Merges the reports of several processes that ran the same scenario
    /// concurrently: counts add up, histograms merge, the longest phase
    /// counts, and loss is recomputed from the per-topic counts.
    pub fn merge(parts: &[Report]) -> Report {
        let Some(first) = parts.first() else {
            return Report::default();
        };
        let mut out = Report {
            scenario: first.scenario.clone(),
            target: first.target.clone(),
            settings: first.settings.clone(),
            usage_before: first.usage_before.clone(),
            usage_after: first.usage_after.clone(),
            ..Report::default()
        };
        let mut latency = Latency::default();
        let mut handshake = Latency::default();
        let mut slowest: std::collections::HashMap<(u32, u64), u64> = Default::default();
        let mut fastest: std::collections::HashMap<(u32, u64), u64> = Default::default();
        for p in parts {
            out.seconds = out.seconds.max(p.seconds);
            out.connections += p.connections;
            out.connect_errors += p.connect_errors;
            out.connect_retries += p.connect_retries;
            handshake.merge(&Latency::from_pairs(&p.handshake_pairs));
            for (topic, seq, us) in &p.slowest {
                let e = slowest.entry((*topic, *seq)).or_default();
                *e = (*e).max(*us);
            }
            for (topic, seq, us) in &p.fastest {
                let e = fastest.entry((*topic, *seq)).or_insert(u64::MAX);
                *e = (*e).min(*us);
            }
            out.published += p.published;
            out.delivery.received += p.delivery.received;
            out.delivery.duplicated += p.delivery.duplicated;
            out.delivery.out_of_order += p.delivery.out_of_order;
            out.delivery.received_bytes += p.delivery.received_bytes;
            latency.merge(&Latency::from_pairs(&p.latency_pairs));
            add_vec(&mut out.published_per_topic, &p.published_per_topic);
            add_vec(&mut out.subscribers_per_topic, &p.subscribers_per_topic);
            add_vec(&mut out.unique_per_topic, &p.unique_per_topic);
            if out.throughput_series.len() < p.throughput_series.len() {
                out.throughput_series.resize(p.throughput_series.len(), 0.0);
            }
            for (a, b) in out.throughput_series.iter_mut().zip(&p.throughput_series) {
                *a += b;
            }
        }
        out.delivery = Delivery {
            received_bytes: out.delivery.received_bytes,
            ..Delivery::account(
                &out.published_per_topic,
                &out.subscribers_per_topic,
                &out.unique_per_topic,
                out.delivery.received,
                out.delivery.duplicated,
                out.delivery.out_of_order,
            )
        };
        out.latency = latency.summary();
        out.latency_pairs = latency.to_pairs();
        if handshake.count() > 0 {
            out.handshake = Some(handshake.summary());
            out.handshake_pairs = handshake.to_pairs();
        }
        // An event's first and last recipients over every process.
        out.first_recipient = per_event(&fastest, parts, |p| p.first_recipient.as_ref());
        out.last_recipient = per_event(&slowest, parts, |p| p.last_recipient.as_ref());
        out.deliveries_per_second = if out.seconds > 0.0 {
            out.delivery.received as f64 / out.seconds
        } else {
            0.0
        };
        out.per_connection = derive_per_connection(&out);
        out
    }

    /// A Markdown table of the headline figures.
    pub fn markdown(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                "scenario".into(),
                format!("{} ({})", self.scenario, self.target),
            ),
            (
                "connections".into(),
                format!(
                    "{} ({} failed, {} retries)",
                    self.connections, self.connect_errors, self.connect_retries
                ),
            ),
            ("measured phase".into(), format!("{:.1} s", self.seconds)),
        ];
        if self.scenario == "fanout" {
            rows.push(("events published".into(), self.published.to_string()));
            rows.push((
                "deliveries/s".into(),
                format!("{:.0}", self.deliveries_per_second),
            ));
            let d = &self.delivery;
            if d.received > 0 && d.received_bytes > 0 {
                rows.push((
                    "bytes per delivery (payload)".into(),
                    format!("{:.1}", d.received_bytes as f64 / d.received as f64),
                ));
            }
            rows.push((
                "lost / duplicated / out of order".into(),
                format!(
                    "{} / {} / {} (of {} expected)",
                    d.lost, d.duplicated, d.out_of_order, d.expected
                ),
            ));
        }
        let l = &self.latency;
        let what = if self.scenario == "fanout" {
            "publish→deliver"
        } else {
            "handshake"
        };
        rows.push((
            format!("{what} p50 / p90 / p99 / p99.9 / max"),
            percentiles(l),
        ));
        for (label, l) in [
            ("connect (to 101, retries included)", &self.handshake),
            ("first recipient", &self.first_recipient),
            ("last recipient", &self.last_recipient),
        ] {
            if let Some(l) = l {
                rows.push((
                    format!("{label} p50 / p90 / p99 / p99.9 / max"),
                    percentiles(l),
                ));
            }
        }
        if let Some(pc) = &self.per_connection {
            rows.push((
                "gateway RSS per connection".into(),
                format!(
                    "{:.0} bytes ({:.2} KiB)",
                    pc.rss_bytes,
                    pc.rss_bytes / 1024.0
                ),
            ));
            rows.push((
                "gateway idle CPU per connection".into(),
                format!("{:.3} µs/s", pc.cpu_us_per_second),
            ));
        }
        let mut out = String::from("| measure | value |\n|---|---|\n");
        for (k, v) in rows {
            out.push_str(&format!("| {k} | {v} |\n"));
        }
        out
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// RSS and CPU per connection from the usage before and after, summed over
/// the gateway processes measured.
pub fn derive_per_connection(r: &Report) -> Option<PerConnection> {
    if r.scenario != "connect"
        || r.connections == 0
        || r.usage_before.is_empty()
        || r.usage_after.is_empty()
    {
        return None;
    }
    let before: u64 = r.usage_before.iter().map(|u| u.rss_kib).sum();
    let after: u64 = r.usage_after.iter().map(|u| u.rss_kib).sum();
    let cpu_before: u64 = r.usage_before.iter().map(|u| u.cpu_ms).sum();
    let cpu_after: u64 = r.usage_after.iter().map(|u| u.cpu_ms).sum();
    let n = r.connections as f64;
    let idle_cpu_us = cpu_after.saturating_sub(cpu_before) as f64 * 1000.0;
    Some(PerConnection {
        rss_bytes: after.saturating_sub(before) as f64 * 1024.0 / n,
        cpu_us_per_second: if r.seconds > 0.0 {
            idle_cpu_us / n / r.seconds
        } else {
            0.0
        },
    })
}

/// An SVG with two panels: latency percentiles and deliveries per second.
pub fn svg(report: &Report) -> String {
    use plotters::prelude::*;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 420)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let (left, right) = root.split_horizontally(450);
        let l = &report.latency;
        let bars = [
            ("p50", l.p50_us),
            ("p90", l.p90_us),
            ("p99", l.p99_us),
            ("p99.9", l.p999_us),
            ("max", l.max_us),
        ];
        let top = bars
            .iter()
            .map(|(_, v)| *v as f64 / 1000.0)
            .fold(0.1, f64::max)
            * 1.1;
        if let Ok(mut chart) = ChartBuilder::on(&left)
            .caption("latency (ms)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((0..bars.len()).into_segmented(), 0.0..top)
        {
            let _ = chart
                .configure_mesh()
                .disable_x_mesh()
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => {
                        bars.get(*i).map_or(String::new(), |b| b.0.to_owned())
                    }
                    _ => String::new(),
                })
                .draw();
            let _ = chart.draw_series(
                Histogram::vertical(&chart)
                    .style(BLUE.filled())
                    .margin(8)
                    .data(
                        bars.iter()
                            .enumerate()
                            .map(|(i, (_, v))| (i, *v as f64 / 1000.0)),
                    ),
            );
        }
        let series = &report.throughput_series;
        let peak = series.iter().copied().fold(1.0, f64::max) * 1.1;
        if let Ok(mut chart) = ChartBuilder::on(&right)
            .caption("deliveries / s", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..(series.len().max(1) as f64), 0.0..peak)
        {
            let _ = chart.configure_mesh().x_desc("seconds").draw();
            let _ = chart.draw_series(LineSeries::new(
                series.iter().enumerate().map(|(i, v)| (i as f64, *v)),
                &RED,
            ));
        }
        let _ = root.present();
    }
    out
}

/// `p50 / p90 / p99 / p99.9 / max` in milliseconds.
fn percentiles(l: &LatencySummary) -> String {
    format!(
        "{} / {} / {} / {} / {} ms",
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.p999_us),
        ms(l.max_us)
    )
}

/// The summary of a per-event figure merged across processes, or the one
/// process's own summary when none shipped per-event samples.
fn per_event(
    merged: &std::collections::HashMap<(u32, u64), u64>,
    parts: &[Report],
    own: impl Fn(&Report) -> Option<&LatencySummary>,
) -> Option<LatencySummary> {
    if merged.is_empty() {
        let measured: Vec<&LatencySummary> = parts.iter().filter_map(own).collect();
        return (measured.len() == 1).then(|| *measured[0]);
    }
    let mut l = Latency::default();
    for us in merged.values() {
        l.record(*us);
    }
    Some(l.summary())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut l = Latency::default();
        for us in 1..=1000 {
            l.record(us);
        }
        let s = l.summary();
        assert_eq!(s.samples, 1000);
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p90_us, 900);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.max_us, 1000);
        assert_eq!(Latency::default().percentile(99.0), 0);
    }

    #[test]
    fn merged_histograms_equal_one_recording() {
        let (mut a, mut b, mut all) = (Latency::default(), Latency::default(), Latency::default());
        for us in (1..5000).step_by(7) {
            a.record(us);
            all.record(us);
        }
        for us in (3..90_000).step_by(13) {
            b.record(us);
            all.record(us);
        }
        let mut merged = Latency::from_pairs(&a.to_pairs());
        merged.merge(&Latency::from_pairs(&b.to_pairs()));
        assert_eq!(merged.summary(), all.summary());
    }

    #[test]
    fn tracker_counts_loss_duplicates_and_order() {
        let mut t = Tracker::default();
        for seq in [0, 1, 2, 2, 5, 3, 6] {
            t.observe(seq);
        }
        // 0,1,2,5,3,6 distinct; one repeat of 2; 3 arrived after 5.
        assert_eq!((t.unique, t.duplicated, t.out_of_order), (6, 1, 1));
        let d = Delivery::account(&[7], &[1], &[t.unique], 7, t.duplicated, t.out_of_order);
        assert_eq!(d.lost, 1, "event 4 never came");
        assert_eq!(d.expected, 7);
    }

    #[test]
    fn a_tracker_may_start_mid_stream() {
        let mut t = Tracker::default();
        for seq in 10..20 {
            t.observe(seq);
        }
        assert_eq!((t.unique, t.duplicated, t.out_of_order), (10, 0, 0));
    }

    #[test]
    fn merge_sums_counts_and_recomputes_loss() {
        let mut lat = Latency::default();
        lat.record(100);
        let part = |unique: u64| Report {
            scenario: "fanout".into(),
            seconds: 2.0,
            connections: 5,
            delivery: Delivery {
                received: unique,
                ..Delivery::default()
            },
            subscribers_per_topic: vec![5],
            unique_per_topic: vec![unique],
            latency_pairs: lat.to_pairs(),
            throughput_series: vec![1.0, 2.0],
            ..Report::default()
        };
        let publisher = Report {
            scenario: "fanout".into(),
            published: 10,
            published_per_topic: vec![10],
            ..Report::default()
        };
        let merged = Report::merge(&[publisher, part(50), part(48)]);
        assert_eq!(merged.connections, 10);
        assert_eq!(merged.delivery.expected, 100);
        assert_eq!(merged.delivery.lost, 2);
        assert_eq!(merged.latency.samples, 2);
        assert_eq!(merged.throughput_series, vec![2.0, 4.0]);
        assert!((merged.deliveries_per_second - 49.0).abs() < 1e-9);
        assert!(
            merged
                .markdown()
                .contains("| lost / duplicated / out of order | 2 / 0 / 0")
        );
    }

    #[test]
    fn first_and_last_recipients_span_every_process() {
        // Two events seen by two worker processes: the first recipient of
        // an event is the fastest over both, the last the slowest.
        let part = |fastest: Vec<(u32, u64, u64)>, slowest: Vec<(u32, u64, u64)>| Report {
            scenario: "fanout".into(),
            fastest,
            slowest,
            ..Report::default()
        };
        let merged = Report::merge(&[
            part(
                vec![(0, 1, 300), (0, 2, 900)],
                vec![(0, 1, 500), (0, 2, 950)],
            ),
            part(
                vec![(0, 1, 200), (0, 2, 1000)],
                vec![(0, 1, 700), (0, 2, 990)],
            ),
        ]);
        let first = merged.first_recipient.expect("first recipients");
        let last = merged.last_recipient.expect("last recipients");
        assert_eq!((first.samples, last.samples), (2, 2));
        assert!(first.max_us < 905 && first.max_us >= 895, "{first:?}");
        assert!(last.max_us >= 985 && last.max_us < 1000, "{last:?}");
        assert!(merged.markdown().contains("first recipient p50"));
    }

    #[test]
    fn per_connection_figures() {
        let r = Report {
            scenario: "connect".into(),
            connections: 1000,
            seconds: 10.0,
            usage_before: vec![Usage {
                rss_kib: 10_000,
                cpu_ms: 100,
            }],
            usage_after: vec![Usage {
                rss_kib: 13_000,
                cpu_ms: 110,
            }],
            ..Report::default()
        };
        let pc = derive_per_connection(&r).unwrap();
        assert!((pc.rss_bytes - 3072.0).abs() < 1e-9);
        assert!((pc.cpu_us_per_second - 1.0).abs() < 1e-9);
    }

    #[test]
    fn svg_renders() {
        let mut lat = Latency::default();
        lat.record(1500);
        let r = Report {
            latency: lat.summary(),
            throughput_series: vec![10.0, 20.0, 15.0],
            ..Report::default()
        };
        let svg = svg(&r);
        assert!(svg.starts_with("<svg") && svg.contains("latency"));
    }
}
