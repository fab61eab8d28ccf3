//! Listeners, HTTP connections and graceful drain.
//!
//! [`run`] binds nothing itself: it is handed two bound listeners, so tests
//! give it port-0 sockets and read the ports back. Each accepted TCP
//! connection gets its own task serving HTTP/1.1 (with upgrades); a WebSocket
//! upgrade then continues in a session task of its own.
//!
//! Drain (contract §7): when `shutdown` resolves, the node stops accepting
//! sessions at once (handshakes and `/readyz` answer 503) but keeps answering
//! HTTP, closes sessions with 1012 spread over a third of `drain_timeout`
//! (so clients do not all reconnect to the next node in the same instant),
//! lets in-flight admin requests finish, and returns within `drain_timeout`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use herald_admin_api::ops::{self, Readiness};
use herald_admin_api::{AdminState, router as admin_router};
use herald_core::Broker;
use herald_protocol::CloseCode;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// Longest a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

use crate::node::Node;

/// The two bound listeners of a node.
pub struct Listeners {
    /// `/ws`, health, demo page.
    pub public: TcpListener,
    /// `/v1`, `/metrics`, health.
    pub admin: TcpListener,
}

/// Routes of the public listener.
pub fn public_router(node: &Arc<Node>) -> Router {
    let ready = readiness(node);
    let mut router = Router::new()
        .route("/ws", get(crate::ws::upgrade))
        .with_state(node.clone())
        .merge(ops::health_routes(ready));
    if node.config.test_echo_endpoint {
        router = router.merge(
            Router::new()
                .route("/echo", get(crate::ws::echo))
                .with_state(node.clone()),
        );
    }
    if node.dev_signer.is_some() {
        router = router.merge(crate::dev::routes(node.clone()));
    }
    router.fallback(ops::not_found)
}

/// Routes of the admin listener.
pub fn admin_routes(node: &Arc<Node>) -> Router {
    let state = AdminState::new(
        node.broker.clone(),
        &node.config.admin.api_keys,
        node.config.limits.max_message_size,
        node.metrics.clone(),
    );
    admin_router(state)
        .merge(ops::health_routes(readiness(node)))
        .merge(ops::metrics_route(node.metrics.clone(), {
            let node = node.clone();
            Arc::new(move || node.broker.is_up())
        }))
        .fallback(ops::not_found)
}

fn readiness(node: &Arc<Node>) -> Readiness {
    let node = node.clone();
    Arc::new(move || node.ready())
}

/// Serves both listeners until `shutdown` resolves, then drains.
///
/// # Errors
/// Never at present; accept errors are logged and retried.
pub async fn run(
    node: Arc<Node>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let public = tokio::spawn(accept_loop(
        listeners.public,
        public_router(&node),
        node.tls.clone(),
        stop_rx.clone(),
        done_tx.clone(),
    ));
    let admin = tokio::spawn(accept_loop(
        listeners.admin,
        admin_routes(&node),
        None,
        stop_rx,
        done_tx,
    ));

    shutdown.await;
    let budget = node.config.drain_timeout;
    let started = tokio::time::Instant::now();
    info!(
        sessions = node.open_connections(),
        budget_ms = budget.as_millis() as u64,
        "draining"
    );
    node.start_draining();
    close_sessions_spread(&node, budget / 3).await;
    // Sessions wait up to a few seconds for their clients' Close frames.
    if tokio::time::timeout_at(started + budget.mul_f64(0.9), node.all_closed())
        .await
        .is_err()
    {
        warn!(
            left = node.open_connections(),
            "sessions still open at the end of the drain budget"
        );
    }
    let _ = stop_tx.send(true);
    let _ = public.await;
    let _ = admin.await;
    // Every HTTP connection task holds a `done_tx`; all gone = all finished.
    let deadline = started + budget;
    if tokio::time::timeout_at(deadline, done_rx.recv())
        .await
        .is_err()
    {
        warn!("in-flight HTTP requests still running at the end of the drain budget");
    }
    info!("drained");
    Ok(())
}

async fn close_sessions_spread(node: &Node, spread: Duration) {
    let sessions = node.hub.all_sessions();
    if sessions.is_empty() {
        return;
    }
    let step = Duration::from_millis(50);
    let rounds = (spread.as_millis() / step.as_millis()).max(1) as usize;
    let per_round = sessions.len().div_ceil(rounds).max(1);
    let mut tick = tokio::time::interval(step);
    for chunk in sessions.chunks(per_round) {
        tick.tick().await;
        for outbox in chunk {
            outbox.close(CloseCode::Restart);
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                debug!(%peer, "accepted");
                let (app, stop, done) = (app.clone(), stop.clone(), done.clone());
                match tls.clone() {
                    None => {
                        tokio::spawn(serve_connection(stream, app, stop, done));
                    }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            match tokio::time::timeout(
                                TLS_HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(tls)) => serve_connection(tls, app, stop, done).await,
                                Ok(Err(e)) => debug!(%peer, error = %e, "tls handshake failed"),
                                Err(_) => debug!(%peer, "tls handshake timed out"),
                            }
                        });
                    }
                }
            }
            Err(e) => {
                // Typically EMFILE: back off briefly rather than spin.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    app: Router,
    mut stop: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "http connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
