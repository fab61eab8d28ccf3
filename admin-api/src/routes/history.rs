//! `GET /v1/topics/{topic}/history`: a topic's kept events, paged forward
//! with `since`.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use herald_core::Broker;
use herald_core::http::ApiError;
use herald_protocol::{ErrorBody, ErrorCode};
use serde::Deserialize;

use crate::AdminState;

/// `s` as a whole number, written `7` or `7.0` (an integer to JSON Schema).
pub(super) fn whole_number(s: &str) -> Option<usize> {
    s.parse::<usize>().ok().or_else(|| {
        let f: f64 = s.parse().ok()?;
        (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= 1e9).then_some(f as usize)
    })
}

/// Most messages one history read returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// The query of a history read.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct HistoryQuery {
    /// Return messages after this id; without it, from the oldest kept.
    since: Option<String>,
    /// 1–1000, default 100.
    limit: Option<String>,
}

/// A page of a topic's history. Only describes the body, which the handler
/// writes directly.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct HistoryResponse {
    /// `message` objects, oldest first, exactly as delivered to clients.
    #[schema(value_type = Vec<Object>)]
    messages: Vec<()>,
    /// `false` when `since` could not be matched (unknown, malformed, too old
    /// or from another history epoch); `messages` then start at the oldest kept.
    recovered: bool,
}

/// Read a topic's history, paging forward with `since`.
#[utoipa::path(
    get, path = "/v1/topics/{topic}/history", tag = "history",
    params(("topic" = String, Path, description = "The topic"), HistoryQuery),
    responses(
        (status = 200, description = "The oldest `limit` messages after `since`", body = HistoryResponse),
        (status = 400, description = "bad_request (limit) or invalid_topic", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the key lacks this route's scope", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn history(
    State(state): State<AdminState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let topic = state
        .rules
        .topic(&name)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(s) => match whole_number(s) {
            Some(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("'limit' must be a number from 1 to {MAX_HISTORY_LIMIT}"),
                ));
            }
        },
    };
    let page = state
        .broker
        .history(&topic, q.since.as_deref(), limit)
        .await?;
    // The messages are already JSON (a byte payload's with `data_b64`):
    // splice them rather than re-serialize.
    let mut body = Vec::with_capacity(
        page.events
            .iter()
            .map(|e| e.record.len() + 1)
            .sum::<usize>()
            + 40,
    );
    body.extend_from_slice(b"{\"messages\":[");
    for (i, frame) in page
        .events
        .iter()
        .filter_map(|e| e.json_frame())
        .enumerate()
    {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&frame);
    }
    body.extend_from_slice(format!("],\"recovered\":{}}}", page.recovered).as_bytes());
    Ok(([(http::header::CONTENT_TYPE, "application/json")], body).into_response())
}
