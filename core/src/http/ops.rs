//! Operational endpoints every Herald process serves: `/healthz`, `/readyz`
//! (contract §7) and `/metrics` (§9). None needs a key; keep the admin
//! listener internal.

use std::sync::Arc;

use crate::Metrics;
use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_protocol::ErrorCode;

/// Answers whether the process can serve; `Err` carries the reason for 503.
pub type Readiness = Arc<dyn Fn() -> Result<(), &'static str> + Send + Sync>;

/// `/healthz` (200 while the process runs) and `/readyz` (200 when `ready`).
pub fn health_routes(ready: Readiness) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async {
                (
                    [(http::header::CONTENT_TYPE, "application/json")],
                    "{\"status\":\"ok\"}",
                )
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move { readyz(&ready) }
            }),
        )
        .method_not_allowed_fallback(super::method_not_allowed)
}

fn readyz(ready: &Readiness) -> Response {
    match ready() {
        Ok(()) => (
            [(http::header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"ready\"}",
        )
            .into_response(),
        Err(reason) => super::error_response(ErrorCode::Unavailable, reason),
    }
}

/// `/metrics` in the Prometheus text format; `broker_up` is asked at each
/// scrape, so the gauge never lags the broker's real state.
pub fn metrics_route(
    metrics: Arc<Metrics>,
    broker_up: Arc<dyn Fn() -> bool + Send + Sync>,
) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                let broker_up = broker_up.clone();
                async move {
                    metrics.broker_up.set(f64::from(u8::from(broker_up())));
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .method_not_allowed_fallback(super::method_not_allowed)
}

/// A JSON 404 for paths nobody routes.
pub async fn not_found() -> Response {
    super::error_response(ErrorCode::NotFound, "no such route")
}
