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
use super::worker::{Worker, read_stop};
use super::{Live, Samples, now_us, send, settle, subscribe, token_query, url_for};
use crate::procstat;
use crate::report::{Delivery, Latency, Report, Tracker};
use crate::settings::{Settings, Target};
use crate::wsclient::{self, Frame};

struct SubscriberDone {
    topic: usize,
    tracker: Tracker,
    received: u64,
    last_us: u64,
    /// `(seq, latency µs)` of every event, with `--last-recipient`.
    each: Vec<(u64, u64)>,
}

/// The end of publishing: per-topic published counts.
type Stop = watch::Receiver<Option<Arc<Vec<u64>>>>;

/// Subscribes this process's share and reads until `stop` says what was
/// published and everything arrived (or a grace period passed).
async fn subscribe_share(
    s: &Settings,
    live: Arc<Live>,
    stop: Stop,
) -> (
    Vec<tokio::task::JoinHandle<Option<SubscriberDone>>>,
    Arc<Samples>,
) {
    let (first, count) = s.share(s.connections);
    let samples = Arc::new(Samples::default());
    let query = token_query(s, "subscriber");
    let mut handles = Vec::with_capacity(count as usize);
    let herald = s.target == Target::Herald;
    let keep_each = s.last_recipient;
    let topics = if herald { s.topics as usize } else { 1 };
    let start = Instant::now();
    let per_second = (s.rate().max(1000) as f64 / s.processes() as f64).max(1.0);
    for j in 0..count {
        let i = first + j;
        if j > 0 && j % 500 == 0 {
            // Pace handshakes a little, so the server's accept queue keeps up.
            let due = start + Duration::from_secs_f64(j as f64 / per_second.max(5000.0));
            tokio::time::sleep_until(due.into()).await;
        }
        let topic = (i % topics as u64) as usize;
        let url = url_for(s, i, &query);
        let source = s.source(i);
        let (live, samples, mut stop) = (live.clone(), samples.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let Ok((mut stream, mut buf)) = wsclient::connect(&url, source).await else {
                live.failed.fetch_add(1, Relaxed);
                return None;
            };
            if herald && !subscribe(&mut stream, &mut buf, topic, Duration::from_secs(30)).await {
                live.failed.fetch_add(1, Relaxed);
                return None;
            }
            live.connected.fetch_add(1, Relaxed);
            let mut tracker = Tracker::default();
            let mut each = Vec::new();
            let mut received = 0u64;
            let mut local = Vec::with_capacity(512);
            let mut last_us = 0;
            let mut grace_until: Option<Instant> = None;
            loop {
                if let Some(published) = stop.borrow().clone() {
                    if tracker.unique >= published[topic] {
                        break;
                    }
                    let until = *grace_until
                        .get_or_insert_with(|| Instant::now() + Duration::from_secs(10));
                    if Instant::now() > until {
                        break;
                    }
                }
                let read = tokio::select! {
                    read = stream.read_buf(&mut buf) => read,
                    _ = stop.changed() => continue,
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                };
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
                let now = now_us();
                let mut pongs = Vec::new();
                let mut closed = false;
                let _ = wsclient::parse(&mut buf, |f| match f {
                    Frame::Text(t) => {
                        if let (Some(sent), Some(seq)) = (
                            wsclient::scan_u64(t, b"\"t\":"),
                            wsclient::scan_u64(t, b"\"s\":"),
                        ) {
                            received += 1;
                            tracker.observe(seq);
                            local.push(now.saturating_sub(sent));
                            if keep_each {
                                each.push((seq, now.saturating_sub(sent)));
                            }
                            last_us = now;
                        }
                    }
                    Frame::Ping(p) => pongs.push(wsclient::pong_frame(p)),
                    Frame::Close(_) => closed = true,
                    Frame::Other => {}
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
                last_us,
                each,
            })
        }));
    }
    (handles, samples)
}

/// `fanout`.
///
/// # Errors
/// Publishing failures and worker failures.
pub async fn fanout(s: &Settings, live: Arc<Live>) -> Result<Report> {
    let (stop_tx, stop_rx) = watch::channel(None);
    let mut workers = Vec::new();
    let mut local = None;
    let before = procstat::usage_all(&s.pids)?;
    if s.processes() > 1 {
        for i in 0..s.processes() {
            workers.push(Worker::spawn(s, i)?);
        }
        for w in &mut workers {
            w.wait_ready(&live).await?;
        }
    } else {
        let share = subscribe_share(s, live.clone(), stop_rx).await;
        settle(&live, s.connections, Duration::from_secs(60)).await;
        local = Some(share);
    }
    let start_us = now_us();
    let started = Instant::now();
    let published = publish(s, live.clone()).await?;
    let published = Arc::new(published);
    let _ = stop_tx.send(Some(published.clone()));
    let mut parts = vec![Report {
        published: published.iter().sum(),
        published_per_topic: published.to_vec(),
        ..Report::default()
    }];
    if let Some((handles, samples)) = local {
        parts.push(collect_subscribers(s, handles, &samples, start_us).await);
    }
    for w in workers {
        parts.push(w.stop(Some(&published)).await?);
    }
    let mut report = Report::merge(&parts);
    report.scenario = "fanout".into();
    report.target = s.target.name().into();
    report.settings = serde_json::to_value(s)?;
    report.usage_before = before;
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
    let mut slowest: HashMap<(usize, u64), u64> = HashMap::new();
    for h in handles {
        if let Ok(Some(done)) = h.await {
            for (seq, us) in &done.each {
                let e = slowest.entry((done.topic, *seq)).or_default();
                *e = (*e).max(*us);
            }
            connections += 1;
            subscribers[done.topic] += 1;
            unique[done.topic] += done.tracker.unique;
            received += done.received;
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
    let last_recipient = (!slowest.is_empty()).then(|| {
        let mut l = Latency::default();
        for us in slowest.values() {
            l.record(*us);
        }
        l.summary()
    });
    Report {
        connections,
        last_recipient,
        seconds: (last.saturating_sub(start_us)) as f64 / 1e6,
        delivery: Delivery {
            received,
            duplicated,
            out_of_order,
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
    let (handles, samples) = subscribe_share(s, live.clone(), stop_rx).await;
    let (_, count) = s.share(s.connections);
    settle(&live, count, Duration::from_secs(60)).await;
    println!("READY {}", live.connected.load(Relaxed));
    let start_us = now_us();
    let stop = read_stop().await?;
    let published: Vec<u64> = serde_json::from_str(&stop).unwrap_or_default();
    let _ = stop_tx.send(Some(Arc::new(published)));
    let mut r = collect_subscribers(s, handles, &samples, start_us).await;
    r.connect_errors = live.failed.load(Relaxed);
    Ok(r)
}
