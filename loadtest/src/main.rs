//! `herald-loadtest`; see `herald-loadtest --help` and `docs/benchmarks.md`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Result;
use herald_loadtest::report::{Report, svg};
use herald_loadtest::scenarios::{self, Live};
use herald_loadtest::settings::Scenario;
use herald_loadtest::{procstat, settings};

fn main() -> std::process::ExitCode {
    let s = match settings::Settings::parse_from_args(std::env::args_os()) {
        Ok(s) => s,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return std::process::ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-loadtest: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(s)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-loadtest: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(s: settings::Settings) -> Result<()> {
    let limit = procstat::raise_nofile();
    if let Some(ca) = &s.tls_ca {
        herald_loadtest::wsclient::trust(ca)?;
    }
    if s.worker.is_some() {
        return scenarios::worker(&s).await;
    }
    let per_process = s.connections / u64::from(s.processes);
    if per_process + 64 > limit {
        eprintln!(
            "warning: {per_process} connections per process but only {limit} open files allowed; use --processes"
        );
    }
    let live = Arc::new(Live::default());
    let progress = progress(&s, live.clone());
    let report = match s.scenario {
        Scenario::Connect => scenarios::connect(&s, live.clone()).await?,
        Scenario::Fanout => scenarios::fanout(&s, live.clone()).await?,
        Scenario::Churn => scenarios::churn(&s, live.clone()).await?,
    };
    progress.abort();
    finish(&s, report, &live)
}

/// A spinner with live counters, and a one-second throughput series.
fn progress(s: &settings::Settings, live: Arc<Live>) -> tokio::task::JoinHandle<()> {
    let quiet = s.quiet;
    tokio::spawn(async move {
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            n += 1;
            let delivered = live.delivered.load(Relaxed);
            if n % 4 == 0 {
                let rate = delivered - last;
                last = delivered;
                live.series
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(rate as f64);
            }
            bar.set_message(format!(
                "connected {} (failed {}) | published {} | delivered {}",
                live.connected.load(Relaxed),
                live.failed.load(Relaxed),
                live.published.load(Relaxed),
                delivered
            ));
            bar.tick();
        }
    })
}

fn finish(s: &settings::Settings, mut report: Report, live: &Live) -> Result<()> {
    if report.throughput_series.is_empty() {
        let series = live
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Trim the idle seconds before the first and after the last delivery.
        let first = series.iter().position(|v| *v > 0.0).unwrap_or(0);
        let last = series.iter().rposition(|v| *v > 0.0).map_or(0, |i| i + 1);
        report.throughput_series = series
            .get(first..last.max(first))
            .map(<[f64]>::to_vec)
            .unwrap_or_default();
    }
    let md = report.markdown();
    println!("{md}");
    if let Some(dir) = &s.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            format!("{dir}/report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(format!("{dir}/report.md"), md)?;
        std::fs::write(format!("{dir}/report.svg"), svg(&report))?;
    }
    Ok(())
}
