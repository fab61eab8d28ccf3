//! Command-line settings shared by every scenario.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::wsclient::WsUrl;

/// What is being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A Herald gateway: tokens, subscribe frames, `message` frames.
    Herald,
    /// Any broadcast server: every text frame a client sends goes to all.
    Raw,
}

/// How events are published to Herald.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `POST /v1/publish/batch`.
    Admin,
    /// Client `publish` frames on a WebSocket.
    Client,
}

/// Every knob; see `herald-loadtest --help`.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `connect`, `fanout` or `churn`.
    pub scenario: String,
    /// Server kind.
    pub target: Target,
    /// WebSocket URLs, used round-robin.
    #[serde(skip)]
    pub urls: Vec<WsUrl>,
    /// The URLs as given.
    pub url_text: Vec<String>,
    /// Admin API base URLs, round-robin.
    pub admin: Vec<String>,
    /// Admin API key.
    #[serde(skip)]
    pub admin_key: String,
    /// HS256 secret for minting tokens.
    #[serde(skip)]
    pub secret: String,
    /// Gateway pids to read `/proc` of.
    pub pids: Vec<u32>,
    /// Connections (subscribers for fanout).
    pub connections: u64,
    /// Connections per second (connect, churn) or events per second (fanout, 0 = unbounded).
    pub rate: u64,
    /// Topics (fanout, churn).
    pub topics: u64,
    /// Padding bytes per event (fanout).
    pub payload: usize,
    /// Seconds of publishing (fanout), of churn, or of holding (connect).
    pub duration: f64,
    /// Events per admin batch.
    pub batch: usize,
    /// Concurrent publishers.
    pub publishers: usize,
    /// Publish path.
    pub via: Via,
    /// Source addresses 127.0.0.2 … 127.0.0.(1+sources).
    pub sources: u8,
    /// Worker processes for the connections.
    pub processes: usize,
    /// Churn: milliseconds a connection stays before it closes.
    pub linger_ms: u64,
    /// Also measure, per event, the latency of its last recipient.
    pub last_recipient: bool,
    /// Where reports go.
    pub out: Option<String>,
    /// No progress display.
    pub quiet: bool,
    /// Internal: `i/n` when this process is worker `i` of `n`.
    #[serde(skip)]
    pub worker: Option<(usize, usize)>,
}

impl Settings {
    fn defaults(scenario: &str) -> Settings {
        Settings {
            scenario: scenario.to_owned(),
            target: Target::Herald,
            urls: Vec::new(),
            url_text: Vec::new(),
            admin: Vec::new(),
            admin_key: String::new(),
            secret: String::new(),
            pids: Vec::new(),
            connections: 100,
            rate: match scenario {
                "connect" => 2000,
                "churn" => 200,
                _ => 1000,
            },
            topics: 1,
            payload: 100,
            duration: 10.0,
            batch: 100,
            publishers: 2,
            via: Via::Admin,
            sources: 1,
            processes: 1,
            linger_ms: 100,
            last_recipient: false,
            out: None,
            quiet: false,
            worker: None,
        }
    }

    /// The source address for connection `i`.
    pub fn source(&self, i: u64) -> Option<IpAddr> {
        (self.sources > 1).then(|| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                2 + (i % u64::from(self.sources)) as u8,
            ))
        })
    }

    /// The URL for connection `i`.
    pub fn url(&self, i: u64) -> &WsUrl {
        &self.urls[(i % self.urls.len() as u64) as usize]
    }

    /// The arguments that recreate these settings in a worker process.
    pub fn worker_args(&self, index: usize, of: usize) -> Vec<String> {
        let mut a = vec![
            self.scenario.clone(),
            "--target".into(),
            match self.target {
                Target::Herald => "herald".into(),
                Target::Raw => "raw".into(),
            },
            "--url".into(),
            self.url_text.join(","),
            "--secret".into(),
            self.secret.clone(),
            "--connections".into(),
            self.connections.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--topics".into(),
            self.topics.to_string(),
            "--duration".into(),
            self.duration.to_string(),
            "--sources".into(),
            self.sources.to_string(),
            "--quiet".into(),
            "--worker".into(),
            format!("{index}/{of}"),
        ];
        if !self.admin.is_empty() {
            a.extend([
                "--admin".into(),
                self.admin.join(","),
                "--admin-key".into(),
                self.admin_key.clone(),
            ]);
        }
        a
    }

    /// This process's share of `total` items: `(first, count)`.
    pub fn share(&self, total: u64) -> (u64, u64) {
        match self.worker {
            None => (0, total),
            Some((i, n)) => {
                let (i, n) = (i as u64, n as u64);
                let first = total * i / n;
                (first, total * (i + 1) / n - first)
            }
        }
    }
}

/// The `--help` text.
pub const USAGE: &str = "herald-loadtest — load generator and benchmark reporter

Usage: herald-loadtest <connect|fanout|churn> [options]

Scenarios:
  connect   open --connections at --rate per second, hold them idle for
            --duration seconds; report gateway RSS and CPU per connection
            (needs --pid) and handshake latency
  fanout    --connections subscribers over --topics topics; publish --rate
            events/s (0 = as fast as possible) of --payload bytes for
            --duration seconds; report deliveries/s, publish→deliver latency
            percentiles, lost/duplicated/out-of-order counts
  churn     connect, subscribe, linger --linger-ms, close, at --rate per
            second for --duration seconds (reconnect storms)

Options:
  --target herald|raw      raw: any broadcast WebSocket server; every text frame
                           it sends counts, the publisher is a WebSocket client
  --url URL[,URL…]         ws://ip:port/path, used round-robin (default ws://127.0.0.1:8080/ws)
  --admin URL[,URL…]       admin API base URLs for publishing (default http://127.0.0.1:8081)
  --admin-key KEY          admin API key
  --secret SECRET          HS256 secret to mint client tokens
  --pid PID[,PID…]         gateway processes to read /proc of
  --connections N          (default 100)
  --rate R                 connections/s, or events/s for fanout (0 = unbounded)
  --topics T               (default 1)
  --payload BYTES          padding per event (default 100)
  --duration SECONDS       (default 10)
  --batch N                events per admin batch (default 100)
  --publishers N           concurrent publishers (default 2)
  --via admin|client       Herald publish path (default admin)
  --sources K              spread sockets over 127.0.0.2 … 127.0.0.(1+K) (default 1)
  --processes P            spread connections over P worker processes (default 1)
  --linger-ms MS           churn: how long each connection stays (default 100)
  --last-recipient         fanout: also report, per event, its last recipient's latency
                           (keeps every sample in memory: use with modest event counts)
  --out DIR                write report.json, report.md and report.svg there
  --quiet                  no progress display
";

/// Parses the command line (without the program name).
///
/// # Errors
/// Unknown flags and bad values, named.
pub fn parse(args: &[String]) -> Result<Settings> {
    let scenario = args
        .first()
        .ok_or_else(|| anyhow!("missing scenario\n\n{USAGE}"))?;
    if !matches!(scenario.as_str(), "connect" | "fanout" | "churn") {
        bail!("unknown scenario '{scenario}'\n\n{USAGE}");
    }
    let mut s = Settings::defaults(scenario);
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("{flag} needs a value"))
        };
        let list = |v: String| {
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        match flag.as_str() {
            "--target" => {
                s.target = match value()?.as_str() {
                    "herald" => Target::Herald,
                    "raw" => Target::Raw,
                    other => bail!("--target herald|raw, not {other}"),
                }
            }
            "--url" => s.url_text = list(value()?),
            "--admin" => s.admin = list(value()?),
            "--admin-key" => s.admin_key = value()?,
            "--secret" => s.secret = value()?,
            "--pid" => {
                s.pids = list(value()?)
                    .iter()
                    .map(|p| p.parse().context("--pid"))
                    .collect::<Result<_>>()?
            }
            "--connections" => s.connections = value()?.parse().context("--connections")?,
            "--rate" => s.rate = value()?.parse().context("--rate")?,
            "--topics" => s.topics = value()?.parse::<u64>().context("--topics")?.max(1),
            "--payload" => s.payload = value()?.parse().context("--payload")?,
            "--duration" => s.duration = value()?.parse().context("--duration")?,
            "--batch" => s.batch = value()?.parse::<usize>().context("--batch")?.clamp(1, 1000),
            "--publishers" => {
                s.publishers = value()?.parse::<usize>().context("--publishers")?.max(1)
            }
            "--via" => {
                s.via = match value()?.as_str() {
                    "admin" => Via::Admin,
                    "client" => Via::Client,
                    other => bail!("--via admin|client, not {other}"),
                }
            }
            "--sources" => s.sources = value()?.parse::<u8>().context("--sources")?.clamp(1, 250),
            "--processes" => s.processes = value()?.parse::<usize>().context("--processes")?.max(1),
            "--linger-ms" => s.linger_ms = value()?.parse().context("--linger-ms")?,
            "--out" => s.out = Some(value()?),
            "--last-recipient" => s.last_recipient = true,
            "--quiet" => s.quiet = true,
            "--worker" => {
                let v = value()?;
                let (i, n) = v.split_once('/').ok_or_else(|| anyhow!("--worker i/n"))?;
                s.worker = Some((i.parse()?, n.parse()?));
            }
            "--help" | "-h" => bail!("{USAGE}"),
            other => bail!("unknown flag {other}\n\n{USAGE}"),
        }
    }
    if s.url_text.is_empty() {
        s.url_text = vec!["ws://127.0.0.1:8080/ws".into()];
    }
    if s.admin.is_empty() && s.target == Target::Herald {
        s.admin = vec!["http://127.0.0.1:8081".into()];
    }
    s.urls = s
        .url_text
        .iter()
        .map(|u| WsUrl::parse(u))
        .collect::<Result<_>>()?;
    if s.target == Target::Herald && s.secret.is_empty() {
        bail!("--secret is needed to mint tokens for Herald");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_and_shares() {
        let s = parse(&args("fanout --secret x --connections 10 --topics 3 --url ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws --sources 4")).unwrap();
        assert_eq!((s.connections, s.topics, s.urls.len()), (10, 3, 2));
        assert_eq!(s.url(3).addr.port(), 2);
        assert_eq!(s.source(5), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))));
        let mut w = s.clone();
        w.worker = Some((1, 3));
        assert_eq!(w.share(10), (3, 3));
        w.worker = Some((2, 3));
        assert_eq!(w.share(10), (6, 4));
        assert!(parse(&args("fanout")).is_err(), "herald needs a secret");
        assert!(parse(&args("dance")).is_err());
        let raw = parse(&args("fanout --target raw")).unwrap();
        assert!(raw.admin.is_empty());
    }
}
