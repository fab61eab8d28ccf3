//! Worker processes: how a scenario's connections are spread over several
//! processes (a process here may hold at most 20,000 files).
//!
//! Protocol (stdout/stdin lines): a worker opens its share of the
//! connections and prints `READY <n>`; the parent, once every worker is
//! ready, measures and (for fanout) publishes, then writes `STOP <json>`
//! (fanout: the per-topic published counts); the worker finishes, prints its
//! report as one JSON line and exits. The parent merges the reports.
//!
//! Every scenario that spreads connections runs the same skeleton: the
//! parent opens with [`Share::open`] (here, or in workers) and ends with
//! [`Share::stop`]; a worker runs [`hold_share`]. Which scenario a worker
//! runs is decided above this file (`scenarios::worker`).

use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Live, now_us, settle};
use crate::report::Report;
use crate::settings::Settings;

/// Where a scenario's connections are: in this process (`L`, whatever the
/// scenario keeps of them), or in worker processes.
pub(super) enum Share<L> {
    Here(L),
    Workers(Vec<Worker>),
}

impl<L> Share<L> {
    /// Opens the scenario's `s.connections`: over worker processes when
    /// there are several (each opens its share and says `READY`), else here
    /// with `open`, then waits until each has opened or failed (at most
    /// `settle_for`).
    pub(super) async fn open<F: Future<Output = L>>(
        s: &Settings,
        live: &Live,
        settle_for: Duration,
        open: impl FnOnce() -> F,
    ) -> Result<Share<L>> {
        if s.processes() <= 1 {
            let here = open().await;
            settle(live, s.connections, settle_for).await;
            return Ok(Share::Here(here));
        }
        let mut workers = Vec::with_capacity(s.processes());
        for i in 0..s.processes() {
            workers.push(Worker::spawn(s, i)?);
        }
        let deadline = tokio::time::Instant::now() + ready_within(s);
        for w in &mut workers {
            w.wait_ready(live, deadline).await?;
        }
        Ok(Share::Workers(workers))
    }

    /// Stops the workers, handing each `published`, and returns what was
    /// kept here (if the connections were here) and the workers' reports.
    pub(super) async fn stop(
        self,
        published: Option<&Arc<Vec<u64>>>,
    ) -> Result<(Option<L>, Vec<Report>)> {
        match self {
            Share::Here(here) => Ok((Some(here), Vec::new())),
            Share::Workers(workers) => {
                let mut reports = Vec::with_capacity(workers.len());
                for w in workers {
                    reports.push(w.stop(published).await?);
                }
                Ok((None, reports))
            }
        }
    }
}

/// A worker's side of the skeleton: opens its share with `open`, waits
/// until each connection opened or failed (at most `settle_for`), says
/// `READY <open connections>`, and waits for `STOP`. Returns the share,
/// when `READY` was said (µs since the Unix epoch: the parent starts
/// publishing then) and what `STOP` carried.
pub(super) async fn hold_share<L>(
    s: &Settings,
    live: &Live,
    settle_for: Duration,
    open: impl Future<Output = L>,
) -> Result<(L, u64, String)> {
    let here = open.await;
    let (_, count) = s.share(s.connections);
    settle(live, count, settle_for).await;
    println!("READY {}", live.connected.load(Relaxed));
    let ready_us = now_us();
    let stop = read_stop().await?;
    Ok((here, ready_us, stop))
}

pub(super) struct Worker {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    pub(super) fn spawn(s: &Settings, index: usize) -> Result<Worker> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args(s.worker_args(index, s.processes()))
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

    pub(super) async fn wait_ready(
        &mut self,
        live: &Live,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
            Ok(Ok(Some(line))) if line.starts_with("READY") => {
                let n: u64 = line.trim_start_matches("READY").trim().parse().unwrap_or(0);
                live.connected.fetch_add(n, Relaxed);
                Ok(())
            }
            other => bail!("worker did not get ready: {other:?}"),
        }
    }

    pub(super) async fn stop(mut self, published: Option<&Arc<Vec<u64>>>) -> Result<Report> {
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

/// How long the workers may take to open their shares: the time the
/// connect rate needs for all the connections, half again for a busy
/// machine, plus five minutes (a million connections at 2,000/s take
/// 500 s to open: a fixed deadline cut such a run short).
fn ready_within(s: &Settings) -> Duration {
    let rate = match s.scenario {
        crate::settings::Scenario::Fanout => s.connect_rate(),
        _ => s.rate(),
    };
    let opening = if rate == 0 {
        0.0
    } else {
        s.connections as f64 / rate as f64
    };
    Duration::from_secs_f64(opening * 1.5) + Duration::from_secs(300)
}
