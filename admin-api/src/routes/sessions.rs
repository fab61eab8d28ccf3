//! `POST /v1/disconnect` and `GET /v1/stats`: the routes that reach the
//! gateway nodes (through the broker's cluster view) rather than topics.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use herald_core::http::ApiError;
use herald_core::{Broker, NodeStats};
use herald_protocol::{ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};

use super::{parse_json, read_body};
use crate::AdminState;

/// Whose sessions to close.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    /// The token `sub`.
    #[schema(example = "alice")]
    sub: Option<String>,
}

/// Sessions closed on the nodes that answered in time.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DisconnectResponse {
    disconnected: usize,
}

/// Close every session of a user, on every node, with 4003.
#[utoipa::path(
    post, path = "/v1/disconnect", tag = "sessions",
    request_body = DisconnectRequest,
    responses(
        (status = 200, description = "Closed", body = DisconnectResponse),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the key lacks this route's scope", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn disconnect(
    State(state): State<AdminState>,
    body: Body,
) -> Result<Json<DisconnectResponse>, ApiError> {
    let bytes = read_body(body, 16 * 1024).await?;
    let req: DisconnectRequest = parse_json(&bytes)?;
    let sub = req
        .sub
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "missing 'sub'"))?;
    let disconnected = state.broker.disconnect(&sub).await?;
    Ok(Json(DisconnectResponse { disconnected }))
}

/// One gateway node's counts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeStatsDoc {
    node: String,
    connections: u64,
    /// Session–topic pairs.
    subscriptions: u64,
    /// Distinct topics with a local session.
    topics: u64,
}

/// Counts of every live gateway node.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsResponse {
    #[schema(value_type = Vec<NodeStatsDoc>)]
    nodes: Vec<NodeStats>,
    /// Sum over the nodes.
    connections: u64,
}

/// Connection and subscription counts of every live gateway node.
#[utoipa::path(
    get, path = "/v1/stats", tag = "sessions",
    responses(
        (status = 200, description = "Counts", body = StatsResponse),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the key lacks this route's scope", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn stats(
    State(state): State<AdminState>,
) -> Result<Json<StatsResponse>, ApiError> {
    let mut nodes = state.broker.stats().await?;
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let connections = nodes.iter().map(|n| n.connections).sum();
    Ok(Json(StatsResponse { nodes, connections }))
}
