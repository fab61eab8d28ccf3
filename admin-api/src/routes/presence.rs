//! `GET /v1/topics/{topic}/presence`: who is subscribed to a topic tracked
//! for presence, across every node, a page at a time (contract §10.5).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use herald_core::broker::presence::{DEFAULT_PAGE, MAX_PAGE, page_within};
use herald_core::http::ApiError;
use herald_core::{Member, MemberPage};
use herald_protocol::{ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};

use super::history::whole_number;
use crate::AdminState;

/// The query of a presence read.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct PresenceQuery {
    /// 1–1000, default 100: most members in the reply.
    limit: Option<String>,
    /// Where to go on: a previous reply's `next_cursor`.
    cursor: Option<String>,
}

/// A page of a topic's members.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PresenceResponse<'a> {
    /// At most `limit` of the subscribed sessions (one entry each).
    members: &'a [Member],
    /// Every member of the topic, across all pages.
    count: u64,
    /// Distinct `sub`s among them.
    users: u64,
    /// Present when more members remain: pass it as `cursor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<&'a str>,
}

impl PresenceResponse<'_> {
    fn body(page: &MemberPage) -> Vec<u8> {
        // Strings and numbers only: serializing cannot fail.
        serde_json::to_vec(&PresenceResponse {
            members: &page.members,
            count: page.count,
            users: page.users,
            next_cursor: page.next_cursor.as_deref(),
        })
        .unwrap_or_default()
    }
}

/// The members of a topic in `presence.topics`, paged with `cursor`.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/presence", tag = "presence",
    params(("topic" = String, Path, description = "The topic"), PresenceQuery),
    responses(
        (status = 200, description = "A page of the topic's members", body = PresenceResponse),
        (status = 400, description = "bad_request (the topic is not tracked for presence, limit, cursor) or invalid_topic", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the key lacks this route's scope", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn presence(
    State(state): State<AdminState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
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
    let limit = match q.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(s) => match whole_number(s) {
            Some(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("'limit' must be a number from 1 to {MAX_PAGE}"),
                ));
            }
        },
    };
    let body = page_within(
        &*state.broker,
        &topic,
        q.cursor.as_deref(),
        limit,
        state.rules.max_data,
        PresenceResponse::body,
    )
    .await?;
    Ok(([(http::header::CONTENT_TYPE, "application/json")], body).into_response())
}
