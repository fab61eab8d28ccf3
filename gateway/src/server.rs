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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use herald_admin_api::{AdminState, router as admin_router};
use herald_core::Broker;
use herald_core::http::ops::{self, Readiness};
use herald_core::http::serve::{Admission, Server, Shed};
use herald_protocol::CloseCode;
use tokio::net::TcpListener;
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

/// Routes of the public listener. `admin` is where the admin listener is
/// bound: the demo page of `--dev` shows it in its `curl` example.
pub fn public_router(node: &Arc<Node>, admin: SocketAddr) -> Router {
    let ready = readiness(node);
    let mut router = Router::new()
        .route("/ws", get(crate::ws::upgrade))
        .with_state(node.clone())
        .merge(ops::health_routes(ready));
    if node.config.compat.centrifugo {
        router = router.merge(
            Router::new()
                .route("/connection/websocket", get(crate::ws::upgrade_centrifugo))
                .with_state(node.clone()),
        );
    }
    if node.config.listeners.test_echo_endpoint {
        router = router.merge(
            Router::new()
                .route("/echo", get(crate::ws::echo))
                .with_state(node.clone()),
        );
    }
    if node.dev_signer.is_some() {
        router = router.merge(crate::dev::routes(node.clone(), admin));
    }
    router
        .method_not_allowed_fallback(herald_core::http::method_not_allowed)
        .fallback(ops::not_found)
}

/// Routes of the admin listener.
pub fn admin_routes(node: &Arc<Node>) -> Router {
    let state = AdminState::new(
        node.broker.clone(),
        &node.config.admin,
        node.config.limits.publication_rules(),
        node.metrics.clone(),
    )
    .with_presence(node.config.presence.topics.clone())
    .with_max_lifetime(node.config.jwt.max_lifetime);
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
/// When the admin listener's address cannot be read; accept errors are
/// logged and retried.
pub async fn run(
    node: Arc<Node>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut server = Server::default();
    let admin = listeners.admin.local_addr()?;
    let admission = Some(Admission::new(
        node.config.limits.max_pending_handshakes,
        node.metrics.clone(),
    ));
    match node.tls.clone() {
        None => server.serve_with(
            listeners.public,
            public_router(&node, admin),
            admission,
            Shed::Respond,
            |stream| async move { Some(stream) },
        ),
        Some(acceptor) => server.serve_with(
            listeners.public,
            public_router(&node, admin),
            admission,
            Shed::Close,
            move |stream| {
                let acceptor = acceptor.clone();
                async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => Some(tls),
                        Ok(Err(e)) => {
                            debug!(error = %e, "tls handshake failed");
                            None
                        }
                        Err(_) => {
                            debug!("tls handshake timed out");
                            None
                        }
                    }
                }
            },
        ),
    }
    server.serve(listeners.admin, admin_routes(&node));

    shutdown.await;
    let budget = node.config.node.drain_timeout;
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
    if !server.shutdown(started + budget).await {
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
