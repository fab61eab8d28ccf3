//! `fanout`: subscribers over topics, a steady publisher, and what every
//! subscriber received: deliveries per second, latency percentiles, the last
//! recipient of each event, and lost, duplicated and out-of-order counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::publish::publish;
use super::worker::{Share, hold_share};
use super::{
    Live, Samples, centrifugo_connect, centrifugo_hello, centrifugo_pong, now_us, send, subscribe,
    token_query, url_for,
};
use crate::procstat;
use crate::report::{Delivery, IdleWindow, Report, Tracker};
use crate::settings::{Settings, Target};
use crate::wsclient::{self, Frame};

struct SubscriberDone {
    topic: usize,
    tracker: Tracker,
    received: u64,
    /// Payload bytes of the frames that carried an event.
    bytes: u64,
    last_us: u64,
    /// `(seq, latency µs)` of every event, with `--last-recipient`.
    each: Vec<(u64, u64)>,
}

/// The end of publishing: per-topic published counts.
type Stop = watch::Receiver<Option<Arc<Vec<u64>>>>;

/// Subscribes this process's share and reads until `stop` says what was
/// published and everything arrived (or a grace period passed).
/// What a share of subscribers measured: delivery latency and handshake
/// times.
type Shared = (
    Vec<tokio::task::JoinHandle<Option<SubscriberDone>>>,
    Arc<Samples>,
    Arc<Samples>,
);

async fn subscribe_share(s: &Settings, live: Arc<Live>, stop: Stop) -> Shared {
    let (first, count) = s.share(s.connections);
    let samples = Arc::new(Samples::default());
    let handshakes = Arc::new(Samples::default());
    let query = token_query(s, "subscriber");
    let mut handles = Vec::with_capacity(count as usize);
    let herald = s.target == Target::Herald;
    let protocol = s.protocol;
    let hello = centrifugo_hello(s, "subscriber");
    // Protobuf carries the generator's JSON payload as it is: a byte scan
    // of the frame finds its numbers as in a JSON text frame.
    let protobuf = protocol == crate::settings::Protocol::CentrifugoProtobuf;
    let keep_each = s.last_recipient;
    let retries = s.retries;
    let grace_for = Duration::from_secs_f64(s.grace.max(0.0));
    let topics = if herald { s.topics as usize } else { 1 };
    let start = Instant::now();
    // This process's share of --connect-rate (0: as fast as possible).
    let per_second = s.connect_rate() as f64 / s.processes() as f64;
    for j in 0..count {
        let i = first + j;
        if per_second > 0.0 {
            let due = start + Duration::from_secs_f64(j as f64 / per_second);
            tokio::time::sleep_until(due.into()).await;
        }
        let topic = (i % topics as u64) as usize;
        let names = super::topics_of(s, topic);
        let url = url_for(s, i, &query);
        let source = s.source(i);
        let (live, samples, handshakes, mut stop, hello) = (
            live.clone(),
            samples.clone(),
            handshakes.clone(),
            stop.clone(),
            hello.clone(),
        );
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let Ok((mut stream, mut buf, retried)) =
                wsclient::connect_retrying(&url, source, retries).await
            else {
                live.failed.fetch_add(1, Relaxed);
                live.retried.fetch_add(u64::from(retries), Relaxed);
                return None;
            };
            live.retried.fetch_add(u64::from(retried), Relaxed);
            handshakes.flush(&mut vec![t0.elapsed().as_micros() as u64]);
            let wait = Duration::from_secs(30);
            if herald
                && !(centrifugo_connect(&mut stream, &mut buf, hello.as_ref(), wait).await
                    && subscribe(&mut stream, &mut buf, names, wait, protocol).await)
            {
                live.failed.fetch_add(1, Relaxed);
                return None;
            }
            live.connected.fetch_add(1, Relaxed);
            let mut tracker = Tracker::default();
            let mut each = Vec::new();
            let mut received = 0u64;
            let mut bytes = 0u64;
            let mut local = Vec::with_capacity(512);
            let mut last_us = 0;
            let mut grace_until: Option<Instant> = None;
            loop {
                if let Some(published) = stop.borrow().clone() {
                    if tracker.unique >= published[topic] {
                        break;
                    }
                    let until = *grace_until.get_or_insert_with(|| Instant::now() + grace_for);
                    if Instant::now() > until {
                        break;
                    }
                }
                // Until publishing ends, a subscriber wakes only for data or
                // the stop: a timer per subscriber per turn would cost the
                // generator more than the gateway (190,000 of them).
                let grace = grace_until.map_or(Duration::MAX, |u| {
                    u.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(200))
                });
                let read = tokio::select! {
                    read = stream.read_buf(&mut buf) => read,
                    _ = stop.changed() => continue,
                    () = tokio::time::sleep(grace), if grace_until.is_some() => continue,
                };
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
                let now = now_us();
                let mut pongs = Vec::new();
                let mut closed = false;
                let _ = wsclient::parse(&mut buf, |f| {
                    if let Some(pong) = centrifugo_pong(protocol, &f) {
                        pongs.push(pong);
                        return;
                    }
                    let (payload, numbers) = match f {
                        Frame::Binary(b) if protobuf => (
                            b,
                            (
                                wsclient::scan_u64(b, b"\"t\":"),
                                wsclient::scan_u64(b, b"\"s\":"),
                            ),
                        ),
                        Frame::Text(t) => (
                            t,
                            (
                                wsclient::scan_u64(t, b"\"t\":"),
                                wsclient::scan_u64(t, b"\"s\":"),
                            ),
                        ),
                        Frame::Binary(b) => (
                            b,
                            (
                                wsclient::scan_msgpack_u64(b, b"t"),
                                wsclient::scan_msgpack_u64(b, b"s"),
                            ),
                        ),
                        Frame::Ping(p) => {
                            pongs.push(wsclient::pong_frame(p));
                            return;
                        }
                        Frame::Close(_) => {
                            closed = true;
                            return;
                        }
                        Frame::Other => return,
                    };
                    if let (Some(sent), Some(seq)) = numbers {
                        received += 1;
                        bytes += payload.len() as u64;
                        tracker.observe(seq);
                        local.push(now.saturating_sub(sent));
                        if keep_each {
                            each.push((seq, now.saturating_sub(sent)));
                        }
                        last_us = now;
                    }
                });

                live.delivered.fetch_add(local.len() as u64, Relaxed);
                if local.len() >= 512 {
                    samples.flush(&mut local);
                }
                for p in pongs {
                    send(&mut stream, &p).await;
                }
                if closed {
                    break;
                }
            }
            samples.flush(&mut local);
            Some(SubscriberDone {
                topic,
                tracker,
                received,
                bytes,
                last_us,
                each,
            })
        }));
    }
    (handles, samples, handshakes)
}

/// `--idle-before`: with every subscriber open, the servers' CPU over a
/// quiet window (heartbeats only).
async fn idle_window(s: &Settings, live: &Live) -> Result<Option<IdleWindow>> {
    if s.idle_before <= 0.0 {
        return Ok(None);
    }
    let connections = live.connected.load(Relaxed);
    let a = procstat::usage_all(&s.pids)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(s.idle_before)).await;
    let b = procstat::usage_all(&s.pids)?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = |u: &[crate::report::Usage]| u.iter().map(|x| x.cpu_ms).sum::<u64>();
    let cpu_ms = cpu(&b).saturating_sub(cpu(&a));
    Ok(Some(IdleWindow {
        seconds,
        connections,
        cpu_us_per_connection_second: cpu_ms as f64 * 1000.0 / connections.max(1) as f64 / seconds,
        rss_kib: b.iter().map(|u| u.rss_kib).sum(),
    }))
}

/// `fanout`.
///
/// # Errors
/// Publishing failures and worker failures.
pub async fn fanout(s: &Settings, live: Arc<Live>) -> Result<Report> {
    let (stop_tx, stop_rx) = watch::channel(None);
    let before = procstat::usage_all(&s.pids)?;
    let share = Share::open(s, &live, SETTLE, || {
        subscribe_share(s, live.clone(), stop_rx)
    })
    .await?;
    let idle = idle_window(s, &live).await?;
    let start_us = now_us();
    let started = Instant::now();
    let published = publish(s, live.clone()).await?;
    let published = Arc::new(published);
    let _ = stop_tx.send(Some(published.clone()));
    let (here, workers) = share.stop(Some(&published)).await?;
    let mut parts = vec![Report {
        published: published.iter().sum(),
        published_per_topic: published.to_vec(),
        ..Report::default()
    }];
    parts.extend(workers);
    if let Some((handles, samples, handshakes)) = here {
        let mut r = collect_subscribers(s, handles, &samples, start_us).await;
        r.handshake_pairs = handshakes.pairs();
        r.connect_errors = live.failed.load(Relaxed);
        r.connect_retries = live.retried.load(Relaxed);
        parts.push(r);
    }
    let mut report = Report::merge(&parts);
    report.scenario = "fanout".into();
    report.target = s.target.name().into();
    report.settings = serde_json::to_value(s)?;
    report.usage_before = before;
    report.idle = idle;
    report.usage_after = procstat::usage_all(&s.pids)?;
    if report.seconds == 0.0 {
        report.seconds = started.elapsed().as_secs_f64();
    }
    report.deliveries_per_second = report.delivery.received as f64 / report.seconds.max(1e-9);
    Ok(report)
}

async fn collect_subscribers(
    s: &Settings,
    handles: Vec<tokio::task::JoinHandle<Option<SubscriberDone>>>,
    samples: &Samples,
    start_us: u64,
) -> Report {
    let topics = if s.target == Target::Herald {
        s.topics as usize
    } else {
        1
    };
    let mut subscribers = vec![0u64; topics];
    let mut unique = vec![0u64; topics];
    let (mut received, mut duplicated, mut out_of_order, mut connections, mut last) =
        (0, 0, 0, 0, start_us);
    let mut bytes = 0;
    // Per event: its fastest and slowest recipient in this process.
    let mut extremes: HashMap<(usize, u64), (u64, u64)> = HashMap::new();
    for h in handles {
        if let Ok(Some(done)) = h.await {
            for (seq, us) in &done.each {
                let e = extremes.entry((done.topic, *seq)).or_insert((u64::MAX, 0));
                *e = (e.0.min(*us), e.1.max(*us));
            }
            connections += 1;
            subscribers[done.topic] += 1;
            unique[done.topic] += done.tracker.unique;
            received += done.received;
            bytes += done.bytes;
            duplicated += done.tracker.duplicated;
            out_of_order += done.tracker.out_of_order;
            last = last.max(done.last_us);
        }
    }
    let latency = samples
        .all
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    // Shipped per event, so the parent takes the fastest and the slowest
    // over every process (the first and last recipients of the whole run).
    let (fastest, slowest) = extremes
        .into_iter()
        .map(|((topic, seq), (min, max))| ((topic as u32, seq, min), (topic as u32, seq, max)))
        .unzip();
    Report {
        connections,
        fastest,
        slowest,
        seconds: (last.saturating_sub(start_us)) as f64 / 1e6,
        delivery: Delivery {
            received,
            duplicated,
            out_of_order,
            received_bytes: bytes,
            ..Delivery::default()
        },
        latency_pairs: latency.to_pairs(),
        subscribers_per_topic: subscribers,
        unique_per_topic: unique,
        ..Report::default()
    }
}

pub(super) async fn fanout_worker(s: &Settings, live: Arc<Live>) -> Result<Report> {
    let (stop_tx, stop_rx) = watch::channel(None);
    let open = subscribe_share(s, live.clone(), stop_rx);
    let ((handles, samples, handshakes), start_us, stop) =
        hold_share(s, &live, SETTLE, open).await?;
    let published: Vec<u64> = serde_json::from_str(&stop).unwrap_or_default();
    let _ = stop_tx.send(Some(Arc::new(published)));
    let mut r = collect_subscribers(s, handles, &samples, start_us).await;
    r.connect_errors = live.failed.load(Relaxed);
    r.connect_retries = live.retried.load(Relaxed);
    r.handshake_pairs = handshakes.pairs();
    Ok(r)
}

/// Longest wait for every connection of a share to be open and subscribed
/// (a storm with retries after `Retry-After` takes a while).
const SETTLE: Duration = Duration::from_secs(300);
