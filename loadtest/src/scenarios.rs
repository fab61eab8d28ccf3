//! The three scenarios, and the worker protocol that spreads their
//! connections over several processes.
//!
//! Worker protocol (stdout/stdin lines): a worker opens its share of the
//! connections and prints `READY`; the parent, once every worker is ready,
//! measures and (for fanout) publishes, then writes `STOP <json>` (fanout: the
//! per-topic published counts); the worker finishes, prints its report as one
//! JSON line and exits. The parent merges the reports.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::procstat;
use crate::report::{Delivery, Latency, Report, Tracker};
use crate::settings::{Settings, Target, Via};
use crate::wsclient::{self, Frame, WsUrl};

/// Live counters for the progress display.
#[derive(Default)]
pub struct Live {
    /// Connections open.
    pub connected: AtomicU64,
    /// Connection attempts that failed.
    pub failed: AtomicU64,
    /// Events published.
    pub published: AtomicU64,
    /// Events received by subscribers.
    pub delivered: AtomicU64,
    /// Deliveries per second, sampled by the progress display.
    pub series: Mutex<Vec<f64>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn token_query(s: &Settings, sub: &str) -> String {
    match s.target {
        Target::Herald => format!("token={}", crate::token::mint(&s.secret, sub)),
        Target::Raw => String::new(),
    }
}

fn url_for(s: &Settings, i: u64, query: &str) -> WsUrl {
    if query.is_empty() {
        s.url(i).clone()
    } else {
        s.url(i).with_query(query)
    }
}

/// Shared histogram fed in batches, so thousands of connections do not
/// contend on it per sample.
#[derive(Default)]
struct Samples {
    all: Mutex<Latency>,
}

impl Samples {
    fn flush(&self, local: &mut Vec<u64>) {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        for us in local.drain(..) {
            all.record(us);
        }
    }
}

/// Subscribes to `lt.<topic>` and waits (at most `wait`) for the
/// confirmation; whatever else arrives meanwhile is dropped.
async fn subscribe(
    stream: &mut TcpStream,
    buf: &mut bytes::BytesMut,
    topic: usize,
    wait: Duration,
) -> bool {
    let frame = format!(r#"{{"type":"subscribe","ref":"s","topics":["lt.{topic}"]}}"#);
    send(stream, &wsclient::text_frame(frame.as_bytes())).await;
    let mut confirmed = false;
    while !confirmed {
        match tokio::time::timeout(wait, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
        let _ = wsclient::parse(buf, |f| {
            if let Frame::Text(t) = f {
                confirmed |= t.windows(12).any(|w| w == b"\"subscribed\"");
            }
        });
    }
    true
}

/// Waits until `count` connections have either opened or failed, at most
/// `limit`.
async fn settle(live: &Live, count: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while live.connected.load(Relaxed) + live.failed.load(Relaxed) < count
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resolves once `stop` is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Writes a whole buffer, ignoring errors (the peer may be gone).
async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
}

// ---------------------------------------------------------------- connect --

/// Opens this process's share of connections and holds them until `stop`.
async fn open_and_hold(
    s: &Settings,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<Samples>) {
    let (first, count) = s.share(s.connections);
    let samples = Arc::new(Samples::default());
    let query = token_query(s, "loadtest");
    let per_second = (s.rate as f64 / s.processes as f64).max(1.0);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(count as usize);
    for j in 0..count {
        let i = first + j;
        if s.rate > 0 {
            let due = start + Duration::from_secs_f64(j as f64 / per_second);
            tokio::time::sleep_until(due.into()).await;
        }
        let url = url_for(s, i, &query);
        let source = s.source(i);
        let (live, samples, mut stop) = (live.clone(), samples.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let Ok((mut stream, mut buf)) = wsclient::connect(&url, source).await else {
                live.failed.fetch_add(1, Relaxed);
                return;
            };
            samples.flush(&mut vec![t0.elapsed().as_micros() as u64]);
            live.connected.fetch_add(1, Relaxed);
            // Hold: answer pings until told to stop or closed.
            loop {
                tokio::select! {
                    () = stopped(&mut stop) => {
                        send(&mut stream, &wsclient::close_frame()).await;
                        break;
                    }
                    read = stream.read_buf(&mut buf) => {
                        if !matches!(read, Ok(n) if n > 0) {
                            break;
                        }
                        let mut pongs = Vec::new();
                        let mut closed = false;
                        let _ = wsclient::parse(&mut buf, |f| match f {
                            Frame::Ping(p) => pongs.push(wsclient::pong_frame(p)),
                            Frame::Close(_) => closed = true,
                            _ => {}
                        });
                        for p in pongs {
                            send(&mut stream, &p).await;
                        }
                        if closed {
                            break;
                        }
                    }
                }
            }
            live.connected.fetch_sub(1, Relaxed);
        }));
    }
    (handles, samples)
}

/// `connect`: open, hold idle, measure the gateway.
///
/// # Errors
/// When `/proc` of a given pid cannot be read or a worker fails.
pub async fn connect(s: &Settings, live: Arc<Live>) -> Result<Report> {
    let before = procstat::usage_all(&s.pids)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut workers = Vec::new();
    let mut local = None;
    if s.processes > 1 {
        for i in 0..s.processes {
            workers.push(Worker::spawn(s, i)?);
        }
        for w in &mut workers {
            w.wait_ready(&live).await?;
        }
    } else {
        let (handles, samples) = open_and_hold(s, live.clone(), stop_rx.clone()).await;
        // Let the last handshakes finish.
        settle(&live, s.connections, Duration::from_secs(30)).await;
        local = Some((handles, samples));
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    // Settle, then measure an idle hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hold_start = procstat::usage_all(&s.pids)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(s.duration)).await;
    let held = t0.elapsed().as_secs_f64();
    let hold_end = procstat::usage_all(&s.pids)?;
    let connections = live.connected.load(Relaxed);

    let mut parts = Vec::new();
    let _ = stop_tx.send(true);
    if let Some((handles, samples)) = local {
        for h in handles {
            let _ = h.await;
        }
        let latency = samples
            .all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        parts.push(Report {
            connections,
            connect_errors: live.failed.load(Relaxed),
            latency_pairs: latency.to_pairs(),
            ..Report::default()
        });
    }
    for w in workers {
        parts.push(w.stop(None).await?);
    }
    let mut report = Report::merge(&parts);
    report.scenario = "connect".into();
    report.target = target_name(s);
    report.settings = serde_json::to_value(s)?;
    report.connections = connections;
    report.seconds = held;
    report.usage_before = before;
    report.usage_after = hold_end.clone();
    // RSS from before connecting to the end of the hold; CPU over the hold only.
    if !s.pids.is_empty() && connections > 0 {
        let sum = |u: &[crate::report::Usage], f: fn(&crate::report::Usage) -> u64| {
            u.iter().map(f).sum::<u64>()
        };
        let rss =
            sum(&hold_end, |u| u.rss_kib).saturating_sub(sum(&report.usage_before, |u| u.rss_kib));
        let cpu = sum(&hold_end, |u| u.cpu_ms).saturating_sub(sum(&hold_start, |u| u.cpu_ms));
        report.per_connection = Some(crate::report::PerConnection {
            rss_bytes: rss as f64 * 1024.0 / connections as f64,
            cpu_us_per_second: cpu as f64 * 1000.0 / connections as f64 / held,
        });
    }
    report.settings["connect_seconds"] = serde_json::json!(connect_seconds);
    Ok(report)
}

/// A worker's side of `connect`.
async fn connect_worker(s: &Settings, live: Arc<Live>) -> Result<Report> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (handles, samples) = open_and_hold(s, live.clone(), stop_rx).await;
    let (_, count) = s.share(s.connections);
    settle(&live, count, Duration::from_secs(30)).await;
    let connections = live.connected.load(Relaxed);
    println!("READY {connections}");
    let _ = read_stop().await;
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    let latency = samples
        .all
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Report {
        connections,
        connect_errors: live.failed.load(Relaxed),
        latency_pairs: latency.to_pairs(),
        ..Report::default()
    })
}

// ----------------------------------------------------------------- fanout --

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
    let per_second = (s.rate.max(1000) as f64 / s.processes as f64).max(1.0);
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

fn event_json(topic: usize, seq: u64, pad: &str) -> String {
    format!(r#"{{"t":{},"s":{seq},"k":{topic},"p":"{pad}"}}"#, now_us())
}

/// Publishes for `duration` at `rate` (0: as fast as the server takes them);
/// publisher `p` of `n` owns topics `p, p+n, …` so each topic's sequence
/// numbers go out in order. Returns per-topic published counts.
async fn publish(s: &Settings, live: Arc<Live>) -> Result<Vec<u64>> {
    let topics = if s.target == Target::Herald {
        s.topics as usize
    } else {
        1
    };
    let publishers = s.publishers.min(topics).max(1);
    let pad = "x".repeat(s.payload);
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let s = s.clone();
        let live = live.clone();
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            publisher(&s, p, publishers, topics, &pad, live).await
        }));
    }
    let mut per_topic = vec![0u64; topics];
    for t in tasks {
        let counts = t.await.map_err(|e| anyhow!("publisher panicked: {e}"))??;
        for (a, b) in per_topic.iter_mut().zip(counts) {
            *a += b;
        }
    }
    Ok(per_topic)
}

async fn publisher(
    s: &Settings,
    p: usize,
    n: usize,
    topics: usize,
    pad: &str,
    live: Arc<Live>,
) -> Result<Vec<u64>> {
    let mine: Vec<usize> = (p..topics).step_by(n).collect();
    let mut seq = vec![0u64; topics];
    let rate = s.rate as f64 / n as f64;
    let batch = match (s.target, s.via) {
        (Target::Herald, Via::Admin) => s.batch,
        _ => s.batch.min(64),
    };
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(s.duration);
    let mut sent: u64 = 0;
    let mut next_topic = 0usize;
    enum Out {
        Admin(Admin),
        Ws(
            tokio::net::tcp::OwnedWriteHalf,
            tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
        ),
    }
    // Herald client publishes: each frame's topic, in send order, until its
    // reply (`published` or `error`) comes back; only acknowledged ones count.
    let pending: Arc<Mutex<std::collections::VecDeque<usize>>> = Arc::default();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..topics).map(|_| AtomicU64::new(0)).collect());
    let counts_acks = s.target == Target::Herald && s.via == Via::Client;
    let mut out = match (s.target, s.via) {
        (Target::Herald, Via::Admin) => {
            Out::Admin(Admin::connect(&s.admin[p % s.admin.len()], &s.admin_key).await?)
        }
        _ => {
            let url = url_for(s, p as u64, &token_query(s, "publisher"));
            let (stream, leftover) = wsclient::connect(&url, None)
                .await
                .context("publisher connection")?;
            // Drain whatever the server sends back (replies, broadcast
            // copies); pongs for its pings go out with the next write.
            let (mut rd, wr) = stream.into_split();
            let (pong_tx, pong_rx) = tokio::sync::mpsc::unbounded_channel();
            let (pending, acked) = (pending.clone(), acked.clone());
            tokio::spawn(async move {
                let mut buf = leftover;
                while matches!(rd.read_buf(&mut buf).await, Ok(n) if n > 0) {
                    let _ = wsclient::parse(&mut buf, |f| match f {
                        Frame::Ping(p) => {
                            let _ = pong_tx.send(wsclient::pong_frame(p));
                        }
                        Frame::Text(t) if counts_acks => {
                            let ok = t.windows(11).any(|w| w == b"\"published\"");
                            let refused = t.windows(7).any(|w| w == b"\"error\"");
                            if ok || refused {
                                let topic = pending
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .pop_front();
                                if let (true, Some(topic)) = (ok, topic) {
                                    acked[topic].fetch_add(1, Relaxed);
                                }
                            }
                        }
                        _ => {}
                    });
                }
            });
            Out::Ws(wr, pong_rx)
        }
    };
    while Instant::now() < end {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let mut events = Vec::with_capacity(batch);
        for _ in 0..batch {
            let topic = mine[next_topic % mine.len()];
            next_topic += 1;
            events.push((topic, seq[topic]));
            seq[topic] += 1;
        }
        match &mut out {
            Out::Admin(admin) => {
                let mut body = String::with_capacity(batch * (s.payload + 80) + 16);
                body.push_str(r#"{"messages":["#);
                for (i, (topic, sq)) in events.iter().enumerate() {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&format!(
                        r#"{{"topic":"lt.{topic}","data":{}}}"#,
                        event_json(*topic, *sq, pad)
                    ));
                }
                body.push_str("]}");
                admin.post("/v1/publish/batch", body).await?;
            }
            Out::Ws(stream, pongs) => {
                let mut frames = Vec::new();
                while let Ok(pong) = pongs.try_recv() {
                    frames.extend_from_slice(&pong);
                }
                if counts_acks {
                    pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(events.iter().map(|(t, _)| *t));
                }
                for (topic, sq) in &events {
                    let data = event_json(*topic, *sq, pad);
                    let text = match s.target {
                        Target::Herald => {
                            format!(r#"{{"type":"publish","topic":"lt.{topic}","data":{data}}}"#)
                        }
                        Target::Raw => data,
                    };
                    frames.extend_from_slice(&wsclient::text_frame(text.as_bytes()));
                }
                stream.write_all(&frames).await?;
            }
        }
        sent += batch as u64;
        live.published.fetch_add(batch as u64, Relaxed);
    }
    if counts_acks {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return Ok(acked.iter().map(|a| a.load(Relaxed)).collect());
    }
    Ok(seq)
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
    if s.processes > 1 {
        for i in 0..s.processes {
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
    report.target = target_name(s);
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
    let mut slowest: std::collections::HashMap<(usize, u64), u64> =
        std::collections::HashMap::new();
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

async fn fanout_worker(s: &Settings, live: Arc<Live>) -> Result<Report> {
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

// ------------------------------------------------------------------ churn --

/// `churn`: connect, subscribe, linger, close — at `rate` per second.
///
/// # Errors
/// Never for individual connection failures (they are counted).
pub async fn churn(s: &Settings, live: Arc<Live>) -> Result<Report> {
    let samples = Arc::new(Samples::default());
    let query = token_query(s, "churn");
    let start = Instant::now();
    let total = (s.rate as f64 * s.duration) as u64;
    let mut handles = Vec::with_capacity(total as usize);
    let completed = Arc::new(AtomicU64::new(0));
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / s.rate.max(1) as f64);
        tokio::time::sleep_until(due.into()).await;
        let url = url_for(s, i, &query);
        let source = s.source(i);
        let herald = s.target == Target::Herald;
        let topic = i % s.topics;
        let linger = Duration::from_millis(s.linger_ms);
        let (live, samples, completed) = (live.clone(), samples.clone(), completed.clone());
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let Ok((mut stream, mut buf)) = wsclient::connect(&url, source).await else {
                live.failed.fetch_add(1, Relaxed);
                return;
            };
            if herald
                && !subscribe(
                    &mut stream,
                    &mut buf,
                    topic as usize,
                    Duration::from_secs(10),
                )
                .await
            {
                live.failed.fetch_add(1, Relaxed);
                return;
            }
            samples.flush(&mut vec![t0.elapsed().as_micros() as u64]);
            live.connected.fetch_add(1, Relaxed);
            tokio::time::sleep(linger).await;
            send(&mut stream, &wsclient::close_frame()).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
                    buf.clear();
                }
            })
            .await;
            live.connected.fetch_sub(1, Relaxed);
            completed.fetch_add(1, Relaxed);
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let latency = samples
        .all
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let seconds = start.elapsed().as_secs_f64();
    Ok(Report {
        scenario: "churn".into(),
        target: target_name(s),
        settings: serde_json::to_value(s)?,
        seconds,
        connections: completed.load(Relaxed),
        connect_errors: live.failed.load(Relaxed),
        latency: latency.summary(),
        latency_pairs: latency.to_pairs(),
        ..Report::default()
    })
}

fn target_name(s: &Settings) -> String {
    match s.target {
        Target::Herald => "herald".into(),
        Target::Raw => "raw".into(),
    }
}

// ---------------------------------------------------------------- workers --

struct Worker {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    fn spawn(s: &Settings, index: usize) -> Result<Worker> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args(s.worker_args(index, s.processes))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker process")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no worker stdout"))?;
        Ok(Worker {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    async fn wait_ready(&mut self, live: &Live) -> Result<()> {
        match tokio::time::timeout(Duration::from_secs(300), self.lines.next_line()).await {
            Ok(Ok(Some(line))) if line.starts_with("READY") => {
                let n: u64 = line.trim_start_matches("READY").trim().parse().unwrap_or(0);
                live.connected.fetch_add(n, Relaxed);
                Ok(())
            }
            other => bail!("worker did not get ready: {other:?}"),
        }
    }

    async fn stop(mut self, published: Option<&Arc<Vec<u64>>>) -> Result<Report> {
        let line = match published {
            Some(p) => format!("STOP {}\n", serde_json::to_string(p.as_ref())?),
            None => "STOP\n".to_owned(),
        };
        if let Some(stdin) = self.child.stdin.as_mut() {
            stdin.write_all(line.as_bytes()).await?;
        }
        let json = tokio::time::timeout(Duration::from_secs(120), self.lines.next_line())
            .await
            .map_err(|_| anyhow!("worker did not report in time"))??
            .ok_or_else(|| anyhow!("worker ended without a report"))?;
        let _ = self.child.wait().await;
        Ok(serde_json::from_str(&json)?)
    }
}

async fn read_stop() -> Result<String> {
    let mut line = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    Ok(line
        .trim()
        .strip_prefix("STOP")
        .unwrap_or("")
        .trim()
        .to_owned())
}

/// Runs this process as worker `i/n`: its share, the protocol, one JSON line.
///
/// # Errors
/// The scenario's.
pub async fn worker(s: &Settings) -> Result<()> {
    let live = Arc::new(Live::default());
    let report = match s.scenario.as_str() {
        "connect" => connect_worker(s, live).await?,
        "fanout" => fanout_worker(s, live).await?,
        other => bail!("{other} does not run in workers"),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
