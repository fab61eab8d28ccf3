//! Worker processes: how a scenario's connections are spread over several
//! processes (a process here may hold at most 20,000 files).
//!
//! Protocol (stdout/stdin lines): a worker opens its share of the
//! connections and prints `READY <n>`; the parent, once every worker is
//! ready, measures and (for fanout) publishes, then writes `STOP <json>`
//! (fanout: the per-topic published counts); the worker finishes, prints its
//! report as one JSON line and exits. The parent merges the reports.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::Live;
use super::connect::connect_worker;
use super::fanout::fanout_worker;
use crate::report::Report;
use crate::settings::{Scenario, Settings};

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

    pub(super) async fn wait_ready(&mut self, live: &Live) -> Result<()> {
        match tokio::time::timeout(Duration::from_secs(300), self.lines.next_line()).await {
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

pub(super) async fn read_stop() -> Result<String> {
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
    let report = match s.scenario {
        Scenario::Connect => connect_worker(s, live).await?,
        Scenario::Fanout => fanout_worker(s, live).await?,
        Scenario::Churn => bail!("churn does not run in workers"),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
