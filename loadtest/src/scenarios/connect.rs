//! `connect`: open connections at a rate, hold them idle, and measure what
//! each costs the gateway (RSS and CPU from `/proc`) and how long the
//! handshakes took.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::worker::{Share, hold_share};
use super::{
    Live, Samples, centrifugo_connect, centrifugo_hello, centrifugo_pong, send, stopped, subscribe,
    token_query, url_for,
};
use crate::procstat;
use crate::report::Report;
use crate::settings::Settings;
use crate::wsclient::{self, Frame};

/// Opens this process's share of connections and holds them until `stop`.
async fn open_and_hold(
    s: &Settings,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<Samples>) {
    let (first, count) = s.share(s.connections);
    let samples = Arc::new(Samples::default());
    let query = token_query(s, "loadtest");
    let hello = centrifugo_hello(s, "loadtest");
    let protocol = s.protocol;
    let per_user = s.per_user;
    let per_second = (s.rate() as f64 / s.processes() as f64).max(1.0);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(count as usize);
    for j in 0..count {
        let i = first + j;
        if s.rate() > 0 {
            let due = start + Duration::from_secs_f64(j as f64 / per_second);
            tokio::time::sleep_until(due.into()).await;
        }
        let url = url_for(s, i, &query);
        let source = s.source(i);
        let (live, samples, mut stop, hello) =
            (live.clone(), samples.clone(), stop.clone(), hello.clone());
        // --per-user: its own topic, held with the connection.
        let names = super::topics_of(s, i as usize);
        let retries = s.retries;
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let Ok((mut stream, mut buf, retried)) =
                wsclient::connect_retrying(&url, source, retries).await
            else {
                live.failed.fetch_add(1, Relaxed);
                live.retried.fetch_add(u64::from(retries), Relaxed);
                return;
            };
            live.retried.fetch_add(u64::from(retried), Relaxed);
            let wait = Duration::from_secs(30);
            if !centrifugo_connect(&mut stream, &mut buf, hello.as_ref(), wait).await
                || (per_user && !subscribe(&mut stream, &mut buf, names, wait, protocol).await)
            {
                live.failed.fetch_add(1, Relaxed);
                return;
            }
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
                            f if centrifugo_pong(protocol, &f).is_some() => {
                                pongs.extend(centrifugo_pong(protocol, &f));
                            }
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
    let share = Share::open(s, &live, SETTLE, || {
        open_and_hold(s, live.clone(), stop_rx.clone())
    })
    .await?;
    let connect_seconds = started.elapsed().as_secs_f64();
    // Settle, then measure an idle hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hold_start = procstat::usage_all(&s.pids)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(s.duration)).await;
    let held_for = t0.elapsed().as_secs_f64();
    let hold_end = procstat::usage_all(&s.pids)?;
    let connections = live.connected.load(Relaxed);

    let _ = stop_tx.send(true);
    let (here, mut parts) = share.stop(None).await?;
    if let Some((handles, samples)) = here {
        parts.push(held(connections, &live, handles, &samples).await);
    }
    let mut report = Report::merge(&parts);
    report.scenario = "connect".into();
    report.target = s.target.name().into();
    report.settings = serde_json::to_value(s)?;
    report.connections = connections;
    report.seconds = held_for;
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
            cpu_us_per_second: cpu as f64 * 1000.0 / connections as f64 / held_for,
        });
    }
    report.settings["connect_seconds"] = serde_json::json!(connect_seconds);
    Ok(report)
}

/// A worker's side of `connect`.
pub(super) async fn connect_worker(s: &Settings, live: Arc<Live>) -> Result<Report> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ((handles, samples), _, _) =
        hold_share(s, &live, SETTLE, open_and_hold(s, live.clone(), stop_rx)).await?;
    let connections = live.connected.load(Relaxed);
    let _ = stop_tx.send(true);
    Ok(held(connections, &live, handles, &samples).await)
}

/// Longest wait for every connection of a share to open.
const SETTLE: Duration = Duration::from_secs(30);

/// What this process's `connections` (counted before they were told to
/// stop) measured, once they have closed.
async fn held(
    connections: u64,
    live: &Live,
    handles: Vec<tokio::task::JoinHandle<()>>,
    samples: &Samples,
) -> Report {
    for h in handles {
        let _ = h.await;
    }
    Report {
        connections,
        connect_errors: live.failed.load(Relaxed),
        connect_retries: live.retried.load(Relaxed),
        latency_pairs: samples.pairs(),
        ..Report::default()
    }
}
