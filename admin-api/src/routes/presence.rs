//! `GET /v1/topics/{topic}/presence`: who is subscribed to a topic tracked
//! for presence, across every node.

use axum::Json;
use axum::extract::{Path, State};
use herald_core::http::ApiError;
use herald_core::{Broker, Member};
use herald_protocol::{ErrorBody, ErrorCode};
use serde::Serialize;

use crate::AdminState;

/// A topic's members.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PresenceResponse {
    /// One entry per subscribed session, oldest first.
    members: Vec<Member>,
    /// How many members.
    count: usize,
}

/// The members of a topic in `presence.topics`.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/presence", tag = "presence",
    params(("topic" = String, Path, description = "The topic")),
    responses(
        (status = 200, description = "The topic's members", body = PresenceResponse),
        (status = 400, description = "bad_request (the topic is not tracked for presence) or invalid_topic", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the key lacks this route's scope", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn presence(
    State(state): State<AdminState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<PresenceResponse>, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let topic = state
        .rules
        .topic(&name)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    if !state.presence.allows(&topic) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("{topic} is not tracked for presence (presence.topics)"),
        ));
    }
    let members = state.broker.members(&topic).await?;
    Ok(Json(PresenceResponse {
        count: members.len(),
        members,
    }))
}
