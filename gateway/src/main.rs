//! `herald-gateway`: run a node (`serve`), mint a token (`token`), or check
//! a configuration (`check-config`). See `docs/configuration.md`.

use std::process::ExitCode;
use std::time::Duration;
use tracing::Instrument;

use anyhow::{Context, Result, anyhow};
use clap::{Arg, ArgAction, ArgMatches, Command};
use herald_core::cli;
use herald_core::config::{self, Sources, parse_duration};
use herald_core::{Config, Secret};
use herald_gateway::auth::{Signer, TokenRequest, Verifier};
use herald_gateway::{Listeners, Node};
use tokio::net::TcpListener;
use tracing::info;

const ABOUT: &str = "herald-gateway — a Herald push gateway node";

fn dev_arg() -> Arg {
    Arg::new("dev")
        .long("dev")
        .action(ArgAction::SetTrue)
        .help("development mode: generated keys, demo page and feed (never in production)")
}

fn command() -> Command {
    let token = Command::new("token")
        .about("print a JWT signed with the configured key (for development and scripts)")
        .arg(
            Arg::new("sub")
                .long("sub")
                .value_name("NAME")
                .required(true)
                .help("the user (sub claim)"),
        )
        .arg(
            Arg::new("topics")
                .long("topics")
                .value_name("PATTERNS")
                .help("comma-separated subscribe patterns"),
        )
        .arg(
            Arg::new("publish")
                .long("publish")
                .value_name("PATTERNS")
                .help("comma-separated publish patterns"),
        )
        .arg(
            Arg::new("presence")
                .long("presence")
                .value_name("PATTERNS")
                .help("comma-separated patterns of topics whose members the token may see"),
        )
        .arg(
            Arg::new("ttl")
                .long("ttl")
                .value_name("DURATION")
                .help("lifetime, e.g. 1h [default: 1h]"),
        )
        .arg(
            Arg::new("private-key")
                .long("private-key")
                .value_name("PATH")
                .help("sign with this PEM private key instead of jwt.hs256_secret"),
        )
        .args(cli::config_args());
    Command::new("herald-gateway")
        .about(ABOUT)
        .after_help("With no command, `serve` is meant.")
        .arg(dev_arg())
        .args(cli::config_args())
        .subcommand(
            Command::new("serve")
                .about("run a node (the default)")
                .arg(dev_arg())
                .args(cli::config_args()),
        )
        .subcommand(token)
        .subcommand(
            Command::new("check-config")
                .about("validate the configuration and print the effective values (secrets masked)")
                .arg(dev_arg())
                .args(cli::config_args()),
        )
}

fn main() -> ExitCode {
    let matches = match cli::parse(command(), std::env::args_os()) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let (name, sub) = match matches.subcommand() {
        Some((name, sub)) => (name, sub),
        None => ("serve", &matches),
    };
    let mut sources = cli::sources(&[&matches, sub]);
    sources.env = std::env::vars()
        .filter(|(k, _)| k.starts_with("HERALD_"))
        .collect();
    let dev = cli::switch(&matches, "dev") || cli::switch(sub, "dev");
    let result = match name {
        "token" => token(&sources, sub),
        "check-config" => check_config(&sources, dev),
        _ => serve(&sources, dev),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-gateway: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn list(m: &ArgMatches, id: &str) -> Vec<String> {
    cli::given(m, id)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn token(sources: &Sources, m: &ArgMatches) -> Result<()> {
    let config = config::load(sources)?.config;
    let sub = cli::given(m, "sub").ok_or_else(|| anyhow!("token needs --sub NAME"))?;
    let ttl = match cli::given(m, "ttl") {
        Some(t) => parse_duration(&t).map_err(|e| anyhow!("--ttl: {e}"))?,
        None => Duration::from_secs(3600),
    };
    let signer = match cli::given(m, "private-key") {
        Some(path) => Signer::from_pem_file(path.as_ref(), &config.jwt)?,
        None => Signer::hs256(&config.jwt)?,
    };
    let request = TokenRequest {
        sub,
        topics: list(m, "topics"),
        publish: list(m, "publish"),
        presence: list(m, "presence"),
        ttl,
    };
    for pattern in request
        .topics
        .iter()
        .chain(&request.publish)
        .chain(&request.presence)
    {
        herald_protocol::TopicPattern::new(pattern)
            .map_err(|e| anyhow!("invalid pattern '{pattern}': {e}"))?;
    }
    println!("{}", signer.mint(&request)?);
    Ok(())
}

fn check_config(sources: &Sources, dev: bool) -> Result<()> {
    let loaded = config::load(sources)?;
    if let Some(file) = loaded.file() {
        println!("# file: {}", file.display());
    }
    print!("{}", loaded.describe());
    if !dev {
        loaded.config.require_keys()?;
    }
    if let (Some(cert), Some(key)) = (&loaded.config.tls.cert_file, &loaded.config.tls.key_file) {
        herald_gateway::tls::acceptor(cert, key)?;
    }
    Verifier::new(&loaded.config.jwt)?;
    eprintln!("configuration OK");
    Ok(())
}

/// Fills in generated keys (and presence for the demo chat) for `--dev`
/// and returns what to print.
fn dev_keys(config: &mut Config) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    if !config.jwt.has_key() {
        let secret = herald_core::random_secret(32).context("no randomness for the dev secret")?;
        notes.push(format!(
            "jwt.hs256_secret = {secret}   (generated for --dev)"
        ));
        config.jwt.hs256_secret = Some(Secret::new(secret));
    } else if config.jwt.hs256_secret.is_none() {
        return Err(anyhow!(
            "--dev needs an HS256 secret to mint demo tokens: unset the public key settings or set jwt.hs256_secret"
        ));
    }
    if config.admin.api_keys.is_empty() && config.admin.keys.is_empty() {
        let key = herald_core::random_secret(16).context("no randomness for the dev admin key")?;
        notes.push(format!("admin key        = {key}   (generated for --dev)"));
        config.admin.api_keys = vec![Secret::new(key)];
    }
    if config.presence.topics.patterns().is_empty() {
        // The demo page's chat shows who is in the room.
        config.presence.topics = herald_protocol::Permissions::parse(["chat.>"])
            .map_err(|(p, e)| anyhow!("invalid pattern '{p}': {e}"))?;
        notes.push("presence.topics  = chat.>   (for the demo chat, in --dev)".to_owned());
    }
    Ok(notes)
}

/// A listener on `addr` whose kernel accept queue holds `backlog`
/// connections (the kernel caps it at `net.core.somaxconn`): a reconnect
/// storm waits in it instead of being dropped.
fn bind_with_backlog(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

fn serve(sources: &Sources, dev: bool) -> Result<()> {
    let mut config = config::load(sources)?.config;
    let notes = if dev {
        dev_keys(&mut config)?
    } else {
        Vec::new()
    };
    config.require_keys()?;
    herald_core::logging::init(&config.log.level, config.log.json()).map_err(|e| anyhow!(e))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let public = bind_with_backlog(config.listeners.listen, config.listeners.backlog())
            .with_context(|| format!("cannot bind listen = {}", config.listeners.listen))?;
        let admin = TcpListener::bind(config.listeners.admin_listen)
            .await
            .with_context(|| format!("cannot bind admin_listen = {}", config.listeners.admin_listen))?;
        let public_addr = public.local_addr()?;
        let admin_addr = admin.local_addr()?;
        let node = Node::new(config, dev)?;
        info!(node = %node.config.node.id, public = %public_addr, admin = %admin_addr, version = %cli::VERSION, "herald-gateway listening");
        if dev {
            print_dev_banner(&notes, public_addr, admin_addr, &node);
            tokio::spawn(herald_gateway::dev::feed(node.clone()).instrument(tracing::info_span!("demo_feed")));
        }
        herald_gateway::run(node, Listeners { public, admin }, shutdown_signal()).await?;
        Ok::<(), anyhow::Error>(())
    })
}

fn print_dev_banner(
    notes: &[String],
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    node: &Node,
) {
    let host = |a: std::net::SocketAddr| {
        if a.ip().is_unspecified() {
            format!("127.0.0.1:{}", a.port())
        } else {
            a.to_string()
        }
    };
    // Only a key generated for this run is echoed; a configured one is not.
    let generated = notes.iter().any(|n| n.starts_with("admin key"));
    let key = match node.config.admin.api_keys.first() {
        Some(k) if generated => k.expose(),
        _ => "<your admin key>",
    };
    eprintln!("\n  Herald dev mode (never use --dev in production)\n");
    for n in notes {
        eprintln!("  {n}");
    }
    let scheme = if node.tls.is_some() { "https" } else { "http" };
    eprintln!("\n  demo page:   {scheme}://{}/", host(public));
    eprintln!(
        "  try:         curl -H 'Authorization: Bearer {key}' -d '{{\"topic\":\"news\",\"data\":{{\"title\":\"hello\"}}}}' http://{}/v1/publish\n",
        host(admin)
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    info!("shutdown signal received");
}
