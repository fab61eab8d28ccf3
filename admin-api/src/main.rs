//! `herald-admin`: the admin API as its own stateless service, for cluster
//! mode. It publishes through Redis and reads the cluster view from it; any
//! number can run behind a load balancer. On SIGTERM/SIGINT it answers
//! `/readyz` with 503 while still serving for min(`drain_timeout` / 3, 5 s),
//! then stops accepting and finishes in-flight requests within
//! `drain_timeout`. It serves plain HTTP on
//! `admin_listen`: keep it internal, like a gateway's admin listener.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::Command;
use herald_admin_api::{AdminState, router};
use herald_core::Secret;
use herald_core::broker::redis::RedisBroker;
use herald_core::cli;
use herald_core::config::{self, AdminServiceConfig, Sources};
use herald_core::http::ops::{self, Readiness};
use herald_core::http::serve::Server;
use herald_core::{AnyBroker, Backend, Broker, BrokerSettings, Metrics, NoSink};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tracing::info;

const ABOUT: &str = "herald-admin — the Herald admin API as a standalone service (cluster mode)

It reads the same configuration as herald-gateway and uses admin_listen,
node_id, redis_url, redis_cluster, admin.*, limits.max_message_size,
limits.max_json_depth, history.*, drain_timeout, log_level and log_format;
other keys are accepted and ignored.";

fn command() -> Command {
    Command::new("herald-admin")
        .about(ABOUT)
        .override_usage(
            "herald-admin [serve] --redis-url redis://HOST:PORT --admin-api-keys KEY [options]",
        )
        .args(cli::config_args())
        .subcommand(
            Command::new("serve")
                .about("run the service (the default)")
                .args(cli::config_args()),
        )
        .subcommand(
            Command::new("check-config")
                .about("validate the configuration and print the effective values (secrets masked)")
                .args(cli::config_args()),
        )
}

fn main() -> ExitCode {
    let matches = match cli::parse(command(), std::env::args_os()) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let mut parts = vec![&matches];
    let mut check = false;
    if let Some((name, sub)) = matches.subcommand() {
        parts.push(sub);
        check = name == "check-config";
    }
    let mut sources = cli::sources(&parts);
    sources.env = std::env::vars()
        .filter(|(k, _)| k.starts_with("HERALD_"))
        .collect();
    let result = if check {
        check_config(&sources)
    } else {
        run(&sources)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-admin: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The configuration, checked: what `serve` and `check-config` both
/// require (a Redis URL and an admin key), with the Redis URL.
fn load(sources: &Sources) -> Result<(AdminServiceConfig, Secret)> {
    let config = config::load_admin_service(sources)?;
    let url = config.redis.url.clone().ok_or_else(|| {
        anyhow!("redis_url is not set: herald-admin publishes through Redis (set --redis-url, HERALD_REDIS_URL or redis_url in the config file)")
    })?;
    config.admin.require_keys()?;
    Ok((config, url))
}

/// Prints every key with its value and source, then checks what `serve`
/// would (it does not connect to Redis).
fn check_config(sources: &Sources) -> Result<()> {
    let (file, description) = config::describe(sources)?;
    if let Some(file) = file {
        println!("# file: {}", file.display());
    }
    print!("{description}");
    load(sources)?;
    eprintln!("configuration OK");
    Ok(())
}

fn run(sources: &Sources) -> Result<()> {
    let (config, url) = load(sources)?;
    herald_core::logging::init(&config.log.level, config.log.json()).map_err(|e| anyhow!(e))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot bind admin_listen = {}", config.listen))?;
        let metrics = Metrics::new(&config.node.id);
        let settings = BrokerSettings {
            history: config.history,
            publish: config.publish,
            presence_timeout: config.presence.timeout,
            webhooks: config.webhooks.settings(),
        };
        let redis = RedisBroker::new(
            url.expose(),
            config.redis.cluster,
            settings,
            Arc::new(NoSink),
            metrics.clone(),
        )
        .map_err(|e| anyhow!("redis_url: {e}"))?;
        let broker = Arc::new(AnyBroker::new(Backend::Redis(redis), metrics.clone()));
        let draining = Arc::new(AtomicBool::new(false));
        let ready: Readiness = {
            let (broker, draining) = (broker.clone(), draining.clone());
            Arc::new(move || {
                if draining.load(Ordering::Acquire) {
                    Err("draining")
                } else if broker.is_up() {
                    Ok(())
                } else {
                    Err("redis is unreachable")
                }
            })
        };
        let broker_for_metrics = broker.clone();
        let state = AdminState::new(
            broker,
            &config.admin,
            config.payload.publication_rules(),
            metrics.clone(),
        )
        .with_presence(config.presence.topics.clone())
        .with_max_lifetime(config.max_lifetime);
        let app = router(state)
            .merge(ops::health_routes(ready))
            .merge(ops::metrics_route(metrics, {
                let broker = broker_for_metrics;
                Arc::new(move || broker.is_up())
            }))
            .fallback(ops::not_found);
        info!(node = %config.node.id, admin = %listener.local_addr()?, version = %cli::VERSION, "herald-admin listening");
        let mut server = Server::default();
        server.serve(listener, app);
        shutdown_signal().await;
        // Out of the load balancer first (still answering, /readyz 503, for a
        // moment so health checks notice), then finish what is in flight.
        draining.store(true, Ordering::Release);
        info!("draining");
        let budget = config.node.drain_timeout;
        tokio::time::sleep((budget / 3).min(std::time::Duration::from_secs(5))).await;
        if !server.shutdown(tokio::time::Instant::now() + budget).await {
            tracing::warn!("in-flight requests still running at the end of drain_timeout");
        }
        info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
