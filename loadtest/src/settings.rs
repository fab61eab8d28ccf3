//! Command-line settings shared by every scenario, parsed with clap.
//!
//! The settings are also written into every report (secrets skipped), so a
//! report says exactly how it was produced.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::wsclient::WsUrl;

/// The scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open --connections at --rate per second and hold them idle for
    /// --duration seconds; report gateway RSS and CPU per connection (needs
    /// --pid) and handshake latency.
    Connect,
    /// --connections subscribers over --topics topics; publish --rate
    /// events/s (0 = as fast as possible) of --payload bytes for --duration
    /// seconds; report deliveries/s, publish→deliver latency percentiles and
    /// lost, duplicated and out-of-order counts.
    Fanout,
    /// Connect, subscribe, linger --linger-ms, close, at --rate per second
    /// for --duration seconds (reconnect storms).
    Churn,
}

impl Scenario {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Fanout => "fanout",
            Scenario::Churn => "churn",
        }
    }
}

/// What is being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A Herald gateway: tokens, subscribe frames, `message` frames.
    Herald,
    /// Any broadcast server: every text frame a client sends goes to all.
    Raw,
}

impl Target {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Herald => "herald",
            Target::Raw => "raw",
        }
    }
}

/// The protocol Herald subscribers speak (contract §10.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Protocol 1: JSON text frames.
    Json,
    /// Protocol 2, `herald.v2.msgpack`: MessagePack binary frames.
    Msgpack,
    /// Centrifugo's client protocol in JSON, on `/connection/websocket`
    /// (`compat.centrifugo`): the token in the `connect` command.
    CentrifugoJson,
    /// The same in Protobuf (`centrifuge-protobuf`).
    CentrifugoProtobuf,
}

impl Protocol {
    /// Its name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Msgpack => "msgpack",
            Protocol::CentrifugoJson => "centrifugo-json",
            Protocol::CentrifugoProtobuf => "centrifugo-protobuf",
        }
    }

    /// The Centrifugo encoding, for the Centrifugo protocols.
    pub fn centrifugo(self) -> Option<herald_protocol::centrifugo::Wire> {
        use herald_protocol::centrifugo::Wire;
        match self {
            Protocol::CentrifugoJson => Some(Wire::Json),
            Protocol::CentrifugoProtobuf => Some(Wire::Protobuf),
            Protocol::Json | Protocol::Msgpack => None,
        }
    }
}

/// How events are published to Herald.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `POST /v1/publish/batch`.
    Admin,
    /// Client `publish` frames on a WebSocket.
    Client,
}

/// Every knob; see `herald-loadtest --help`.
#[derive(Debug, Clone, Serialize, Parser)]
#[command(
    name = "herald-loadtest",
    about = "herald-loadtest — load generator and benchmark reporter",
    disable_help_subcommand = true
)]
pub struct Settings {
    /// The scenario.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// raw: any broadcast WebSocket server; every text frame it sends
    /// counts, and the publisher is a WebSocket client.
    #[arg(long, value_enum, default_value = "herald")]
    pub target: Target,
    /// The protocol subscribers speak (herald target): json (protocol 1),
    /// msgpack (herald.v2.msgpack), or Centrifugo's (centrifugo-json,
    /// centrifugo-protobuf; give a /connection/websocket URL).
    #[arg(long, value_enum, default_value = "json")]
    pub protocol: Protocol,
    /// ws://ip:port/path, used round-robin.
    #[arg(
        long = "url",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub url_text: Vec<String>,
    /// The URLs, parsed.
    #[arg(skip)]
    #[serde(skip)]
    pub urls: Vec<WsUrl>,
    /// Admin API base URLs for publishing, round-robin [default: http://127.0.0.1:8081].
    #[arg(long, value_delimiter = ',')]
    pub admin: Vec<String>,
    /// Admin API key.
    #[arg(long, default_value = "")]
    #[serde(skip)]
    pub admin_key: String,
    /// HS256 secret to mint client tokens.
    #[arg(long, default_value = "")]
    #[serde(skip)]
    pub secret: String,
    /// Gateway processes to read /proc of.
    #[arg(long = "pid", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Connections (subscribers for fanout).
    #[arg(long, default_value_t = 100)]
    pub connections: u64,
    /// Connections per second (connect, churn) or events per second
    /// (fanout; 0 = unbounded) [default: connect 2000, churn 200, fanout 1000].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Connections opened per second, over all processes (fanout; connect
    /// and churn use `--rate`); 0 = as fast as possible [default: 5000].
    #[arg(long)]
    pub connect_rate: Option<u64>,
    /// Retries of a refused or failed handshake, after the server's
    /// `Retry-After` (or a jittered backoff), as the SDK does.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// Topics (fanout, churn).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub topics: u64,
    /// PEM file of the CA that signed a `wss://` server's certificate (the
    /// generator trusts only it: loopback test certificates).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Per-user topics: connection `i` subscribes to its own topic `lt.<i>`
    /// (connect: and holds it; fanout: `--topics` becomes `--connections`,
    /// so each event reaches one user).
    #[arg(long)]
    pub per_user: bool,
    /// With Herald's protocols: every connection also subscribes to the
    /// one topic `lt.shared` (which nothing is published to).
    #[arg(long)]
    pub shared_topic: bool,
    /// Padding bytes per event (fanout).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Seconds of publishing (fanout), of churn, or of holding (connect).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Events per admin batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch: u16,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub publishers: u16,
    /// Herald publish path.
    #[arg(long, value_enum, default_value = "admin")]
    pub via: Via,
    /// Spread sockets over 127.0.0.2 … 127.0.0.(1+K).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub sources: u8,
    /// With `--sources`: the first source port (connection `i` uses
    /// `port_base + i / sources`, or a kernel-chosen one past 65535).
    #[arg(long, default_value_t = 10000)]
    pub port_base: u16,
    /// Spread connections over P worker processes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub processes: u16,
    /// Churn: milliseconds a connection stays before it closes.
    #[arg(long, default_value_t = 100)]
    pub linger_ms: u64,
    /// Fanout: also report, per event, its last recipient's latency (keeps
    /// every sample in memory: use with modest event counts).
    #[arg(long)]
    pub last_recipient: bool,
    /// Fanout: once every subscriber is connected, wait this many seconds
    /// before publishing and report the servers' (`--pid`) CPU per
    /// connection over that idle window.
    #[arg(long, default_value_t = 0.0)]
    pub idle_before: f64,
    /// Fanout: once publishing has ended, how long a subscriber still
    /// waits for the events it has not received before it counts them
    /// lost (a machine holding a million connections needs more than the
    /// default).
    #[arg(long, default_value_t = 10.0)]
    pub grace: f64,
    /// Write report.json, report.md and report.svg there.
    #[arg(long)]
    pub out: Option<String>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
    /// Internal: `i/n` when this process is worker `i` of `n`.
    #[arg(long, hide = true, value_parser = parse_worker)]
    #[serde(skip)]
    pub worker: Option<(usize, usize)>,
}

fn parse_worker(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{s}' is not i/n");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

impl Settings {
    /// Parses the command line (with the program name) and fills in what
    /// depends on other settings.
    ///
    /// # Errors
    /// Usage errors (clap's, with their exit status) and inconsistent
    /// settings.
    pub fn parse_from_args<I, T>(args: I) -> Result<Settings, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut s = Settings::try_parse_from(args)?;
        s.complete().map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
        })?;
        Ok(s)
    }

    fn complete(&mut self) -> Result<()> {
        if self.per_user && self.scenario == Scenario::Fanout {
            self.topics = self.connections.max(1);
        }
        if self.shared_topic && self.protocol.centrifugo().is_some() {
            bail!("--shared-topic: Centrifugo subscribes one channel per command; not supported");
        }
        if self.rate.is_none() {
            self.rate = Some(match self.scenario {
                Scenario::Connect => 2000,
                Scenario::Churn => 200,
                Scenario::Fanout => 1000,
            });
        }
        if self.admin.is_empty() && self.target == Target::Herald {
            self.admin = vec!["http://127.0.0.1:8081".into()];
        }
        let protocol = match (self.target, self.protocol) {
            (Target::Herald, Protocol::Msgpack) => Some("herald.v2.msgpack"),
            (Target::Herald, Protocol::CentrifugoProtobuf) => {
                Some(herald_protocol::centrifugo::PROTOBUF_SUBPROTOCOL)
            }
            _ => None,
        };
        self.urls = self
            .url_text
            .iter()
            .map(|u| WsUrl::parse(u).map(|u| WsUrl { protocol, ..u }))
            .collect::<Result<_>>()?;
        if self.target == Target::Herald && self.secret.is_empty() {
            bail!("--secret is needed to mint tokens for Herald");
        }
        Ok(())
    }

    /// Connections per second (connect, churn) or events per second (fanout).
    pub fn rate(&self) -> u64 {
        self.rate.unwrap_or(0)
    }

    /// Connections per second while opening them, over all processes
    /// (0 = as fast as possible).
    pub fn connect_rate(&self) -> u64 {
        match self.scenario {
            Scenario::Fanout => self.connect_rate.unwrap_or(5000),
            Scenario::Connect | Scenario::Churn => self.rate(),
        }
    }

    /// Worker processes (in a worker: how many there are in all, so rates
    /// split over them add up to what was asked).
    pub fn processes(&self) -> usize {
        match self.worker {
            Some((_, n)) => n,
            None => usize::from(self.processes),
        }
    }

    /// The source address (and port) of connection `i`: with `--sources K`,
    /// 127.0.0.(2 + i mod K) and a port of the generator's own choosing
    /// (`--port-base` + i / K). Choosing the port matters: left to the
    /// kernel, every connect() searches the ports of its address for a free
    /// 4-tuple, which at 100,000+ connections costs more CPU than the
    /// gateways themselves; a bind to port 0 picks ports without the
    /// destination and runs out.
    pub fn source(&self, i: u64) -> Option<SocketAddr> {
        (self.sources > 1).then(|| {
            let k = u64::from(self.sources);
            let port = u64::from(self.port_base) + i / k;
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % k) as u8)),
                u16::try_from(port).unwrap_or(0),
            )
        })
    }

    /// The URL for connection `i`.
    pub fn url(&self, i: u64) -> &WsUrl {
        &self.urls[(i % self.urls.len() as u64) as usize]
    }

    /// The arguments that recreate these settings in a worker process.
    pub fn worker_args(&self, index: usize, of: usize) -> Vec<String> {
        let mut a = vec![
            self.scenario.name().to_owned(),
            "--target".into(),
            self.target.name().into(),
            "--protocol".into(),
            self.protocol.name().into(),
            "--url".into(),
            self.url_text.join(","),
            "--secret".into(),
            self.secret.clone(),
            "--connections".into(),
            self.connections.to_string(),
            "--rate".into(),
            self.rate().to_string(),
            "--topics".into(),
            self.topics.to_string(),
            "--duration".into(),
            self.duration.to_string(),
            "--sources".into(),
            self.sources.to_string(),
            "--retries".into(),
            self.retries.to_string(),
            "--port-base".into(),
            self.port_base.to_string(),
            "--connect-rate".into(),
            self.connect_rate().to_string(),
            "--quiet".into(),
            "--worker".into(),
            format!("{index}/{of}"),
        ];
        if self.last_recipient {
            a.push("--last-recipient".into());
        }
        if self.per_user {
            a.push("--per-user".into());
        }
        a.push("--grace".into());
        a.push(self.grace.to_string());
        if let Some(ca) = &self.tls_ca {
            a.push("--tls-ca".into());
            a.push(ca.display().to_string());
        }
        if self.shared_topic {
            a.push("--shared-topic".into());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Settings, clap::Error> {
        Settings::parse_from_args(std::iter::once("herald-loadtest").chain(s.split_whitespace()))
    }

    #[test]
    fn parses_and_shares() {
        let s = parse("fanout --secret x --admin-key k --connections 10 --topics 3 --url ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws --sources 4").unwrap();
        assert_eq!((s.connections, s.topics, s.urls.len()), (10, 3, 2));
        assert_eq!(s.rate(), 1000, "fanout's default rate");
        assert_eq!(s.url(3).addr.port(), 2);
        assert_eq!(
            s.source(5),
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
                10001
            ))
        );
        let mut w = s.clone();
        w.worker = Some((1, 3));
        assert_eq!(w.share(10), (3, 3));
        w.worker = Some((2, 3));
        assert_eq!(w.share(10), (6, 4));
        assert!(parse("fanout").is_err(), "herald needs a secret");
        assert!(parse("dance").is_err());
        assert!(parse("fanout --secret x --batch 0").is_err());
        let raw = parse("fanout --target raw").unwrap();
        assert!(raw.admin.is_empty());
        let w = parse(&s.worker_args(1, 2).join(" ")).unwrap();
        assert_eq!((w.worker, w.topics, w.rate()), (Some((1, 2)), 3, 1000));
        assert_eq!(w.processes(), 2, "a worker paces its share of the rate");
    }
}
