//! `churn`: connect, subscribe, linger, close, at a steady rate: a
//! reconnect storm, measured by its handshake latency and failures.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::AsyncReadExt;

use std::sync::atomic::AtomicU64;

use super::{
    Live, Samples, centrifugo_connect, centrifugo_hello, send, subscribe, token_query, url_for,
};
use crate::report::Report;
use crate::settings::{Settings, Target};
use crate::wsclient;

/// `churn`: connect, subscribe, linger, close — at `rate` per second.
///
/// # Errors
/// Never for individual connection failures (they are counted).
pub async fn churn(s: &Settings, live: Arc<Live>) -> Result<Report> {
    let samples = Arc::new(Samples::default());
    let query = token_query(s, "churn");
    let hello = centrifugo_hello(s, "churn");
    let start = Instant::now();
    let total = (s.rate() as f64 * s.duration) as u64;
    let mut handles = Vec::with_capacity(total as usize);
    let completed = Arc::new(AtomicU64::new(0));
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / s.rate().max(1) as f64);
        tokio::time::sleep_until(due.into()).await;
        let url = url_for(s, i, &query);
        let source = s.source(i);
        let herald = s.target == Target::Herald;
        let protocol = s.protocol;
        let hello = hello.clone();
        let topic = i % s.topics;
        let names = super::topics_of(s, topic as usize);
        let linger = Duration::from_millis(s.linger_ms);
        let (live, samples, completed) = (live.clone(), samples.clone(), completed.clone());
        handles.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let Ok((mut stream, mut buf)) = wsclient::connect(&url, source).await else {
                live.failed.fetch_add(1, Relaxed);
                return;
            };
            let wait = Duration::from_secs(10);
            if herald
                && !(centrifugo_connect(&mut stream, &mut buf, hello.as_ref(), wait).await
                    && subscribe(&mut stream, &mut buf, names, wait, protocol).await)
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
        target: s.target.name().into(),
        settings: serde_json::to_value(s)?,
        seconds,
        connections: completed.load(Relaxed),
        connect_errors: live.failed.load(Relaxed),
        latency: latency.summary(),
        latency_pairs: latency.to_pairs(),
        ..Report::default()
    })
}
