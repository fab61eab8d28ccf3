//! The `/v1` routes, their request and response types, and the OpenAPI
//! document generated from them.
//!
//! Bodies are read with an explicit size limit and parsed here rather than by
//! axum's `Json` extractor, so every refusal (malformed JSON, a missing field,
//! an oversized body) gets the contract's error body and code.

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_core::{NodeStats, Publication};
use herald_protocol::{ErrorCode, Topic};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::atomic::Ordering::Relaxed;
use utoipa::OpenApi;

use crate::{AdminState, ApiError, ErrorBody, key_accepted};

/// Most messages in one batch.
pub const MAX_BATCH: usize = 1000;
/// Most messages one history read returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// Longest `event` name.
pub const MAX_EVENT_LEN: usize = 255;

/// Every route of the router, as (method, OpenAPI path); the tests check the
/// OpenAPI document lists each.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/publish"),
    ("post", "/v1/publish/batch"),
    ("get", "/v1/topics/{topic}/history"),
    ("post", "/v1/disconnect"),
    ("get", "/v1/stats"),
    ("get", "/v1/openapi.json"),
];

/// The OpenAPI document of the admin API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald admin API",
        description = "Publish events to topics, read topic history, disconnect users and read cluster stats. Every route except this document needs `Authorization: Bearer <admin key>`."
    ),
    paths(publish, publish_batch, history, disconnect, stats, openapi_json),
    components(schemas(
        PublishRequest, PublishResponse, PublishResult, BatchRequest, BatchMessage,
        HistoryResponse, DisconnectRequest, DisconnectResponse, StatsResponse, NodeStatsDoc, ErrorBody
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Builds the `/v1` router.
pub fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/publish/batch", post(publish_batch))
        .route("/v1/topics/{topic}/history", get(history))
        .route("/v1/disconnect", post(disconnect))
        .route("/v1/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/v1/openapi.json", get(openapi_json))
        .merge(protected)
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::BadRequest, "method not allowed on this route")
        })
        .with_state(state)
}

async fn require_key(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = crate::bearer(request.headers());
    match presented {
        Some(key) if key_accepted(&state.keys, key) => next.run(request).await,
        Some(_) => ApiError::new(ErrorCode::Unauthorized, "invalid admin API key").into_response(),
        None => ApiError::new(
            ErrorCode::Unauthorized,
            "missing 'Authorization: Bearer <admin key>'",
        )
        .into_response(),
    }
}

async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("request body is larger than {limit} bytes"),
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::BadRequest,
            "could not read the request body",
        )),
    }
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fn topic(name: &str) -> Result<Topic, ApiError> {
    Topic::new(name).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidTopic,
            format!("invalid topic '{name}': {e}"),
        )
    })
}

fn check_event(event: Option<String>) -> Result<Option<String>, ApiError> {
    match event {
        Some(e) if e.is_empty() || e.len() > MAX_EVENT_LEN => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("'event' must be 1 to {MAX_EVENT_LEN} bytes"),
        )),
        other => Ok(other),
    }
}

fn check_data(
    data: Option<Box<RawValue>>,
    max: usize,
    what: &str,
) -> Result<Box<RawValue>, ApiError> {
    let data =
        data.ok_or_else(|| ApiError::new(ErrorCode::BadRequest, format!("{what}missing 'data'")))?;
    if data.get().len() > max {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "{what}'data' is {} bytes, more than limits.max_message_size ({max})",
                data.get().len()
            ),
        ));
    }
    Ok(data)
}

/// One event to one topic, or to several (`topics`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The topic; give this or `topics`.
    #[schema(example = "news")]
    topic: Option<String>,
    /// Several topics, all validated before any is published.
    topics: Option<Vec<String>>,
    /// Any JSON value, delivered as sent.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object)]
    data: Option<Box<RawValue>>,
    /// Optional event name, 1–255 bytes, delivered as `event`.
    #[schema(example = "headline")]
    event: Option<String>,
}

/// The id each topic's event got.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PublishResult {
    topic: String,
    /// Opaque, increasing per topic.
    id: String,
}

/// Results in request order.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PublishResponse {
    results: Vec<PublishResult>,
}

async fn run_publish(
    state: &AdminState,
    batch: Vec<Publication>,
) -> Result<Json<PublishResponse>, ApiError> {
    let topics: Vec<String> = batch.iter().map(|p| p.topic.as_str().to_owned()).collect();
    let positions = state.backend.publish(batch).await?;
    state
        .metrics
        .published
        .fetch_add(positions.len() as u64, Relaxed);
    let results = topics
        .into_iter()
        .zip(positions)
        .map(|(topic, p)| PublishResult {
            topic,
            id: p.to_string(),
        })
        .collect();
    Ok(Json(PublishResponse { results }))
}

/// Publish one event.
#[utoipa::path(
    post, path = "/v1/publish", tag = "publish",
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Accepted by the broker", body = PublishResponse),
        (status = 400, description = "bad_request or invalid_topic", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 413, description = "too_large", body = ErrorBody),
        (status = 503, description = "unavailable: the broker did not accept it", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn publish(
    State(state): State<AdminState>,
    body: Body,
) -> Result<Json<PublishResponse>, ApiError> {
    let bytes = read_body(body, state.max_message_size + 256 * 1024).await?;
    let req: PublishRequest = parse_json(&bytes)?;
    let names = match (req.topic, req.topics) {
        (Some(t), None) => vec![t],
        (None, Some(list)) if !list.is_empty() => list,
        (None, Some(_)) => return Err(ApiError::new(ErrorCode::BadRequest, "'topics' is empty")),
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "give 'topic' or 'topics', not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "missing 'topic' or 'topics'",
            ));
        }
    };
    let mut seen = HashSet::new();
    let mut topics = Vec::with_capacity(names.len());
    for name in &names {
        let t = topic(name)?;
        if seen.insert(t.clone()) {
            topics.push(t);
        }
    }
    let data = check_data(req.data, state.max_message_size, "")?;
    let event = check_event(req.event)?;
    let batch = topics
        .into_iter()
        .map(|topic| Publication {
            topic,
            event: event.clone(),
            data: data.clone(),
        })
        .collect();
    run_publish(&state, batch).await
}

/// One message of a batch.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchMessage {
    #[schema(example = "stocks.AAPL")]
    topic: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object)]
    data: Option<Box<RawValue>>,
    event: Option<String>,
}

/// 1–1000 messages, validated all-or-nothing, published in order.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    messages: Option<Vec<BatchMessage>>,
}

/// Publish up to 1000 events in one call.
#[utoipa::path(
    post, path = "/v1/publish/batch", tag = "publish",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "All accepted; results in request order", body = PublishResponse),
        (status = 400, description = "bad_request (including batch size) or invalid_topic", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 413, description = "too_large", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn publish_batch(
    State(state): State<AdminState>,
    body: Body,
) -> Result<Json<PublishResponse>, ApiError> {
    let limit = (MAX_BATCH * (state.max_message_size + 1024)).min(256 << 20);
    let bytes = read_body(body, limit).await?;
    let req: BatchRequest = parse_json(&bytes)?;
    let messages = req
        .messages
        .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "missing 'messages'"))?;
    if messages.is_empty() || messages.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "a batch holds 1 to {MAX_BATCH} messages, not {}",
                messages.len()
            ),
        ));
    }
    let mut batch = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let what = format!("messages[{i}]: ");
        let name = m.topic.ok_or_else(|| {
            ApiError::new(ErrorCode::BadRequest, format!("{what}missing 'topic'"))
        })?;
        batch.push(Publication {
            topic: topic(&name)?,
            data: check_data(m.data, state.max_message_size, &what)?,
            event: check_event(m.event)?,
        });
    }
    run_publish(&state, batch).await
}

#[derive(Deserialize, utoipa::IntoParams)]
struct HistoryQuery {
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
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn history(
    State(state): State<AdminState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))?;
    let topic = topic(&name)?;
    let limit = match q.limit.as_deref() {
        None => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("'limit' must be a number from 1 to {MAX_HISTORY_LIMIT}"),
                ));
            }
        },
    };
    let page = state
        .backend
        .history(&topic, q.since.as_deref(), limit)
        .await?;
    // The messages are already JSON; splice them rather than re-serialize.
    let mut body =
        Vec::with_capacity(page.events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 40);
    body.extend_from_slice(b"{\"messages\":[");
    for (i, e) in page.events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.json);
    }
    body.extend_from_slice(format!("],\"recovered\":{}}}", page.recovered).as_bytes());
    Ok(([(http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

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
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn disconnect(
    State(state): State<AdminState>,
    body: Body,
) -> Result<Json<DisconnectResponse>, ApiError> {
    let bytes = read_body(body, 16 * 1024).await?;
    let req: DisconnectRequest = parse_json(&bytes)?;
    let sub = req
        .sub
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "missing 'sub'"))?;
    let disconnected = state.backend.disconnect(&sub).await?;
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
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn stats(State(state): State<AdminState>) -> Result<Json<StatsResponse>, ApiError> {
    let mut nodes = state.backend.stats().await?;
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let connections = nodes.iter().map(|n| n.connections).sum();
    Ok(Json(StatsResponse { nodes, connections }))
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3 document")))]
async fn openapi_json() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(json) => ([(http::header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(_) => {
            ApiError::new(ErrorCode::Internal, "cannot render the OpenAPI document").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_every_route() {
        let doc = ApiDoc::openapi();
        for (method, path) in ROUTES {
            let item = doc
                .paths
                .paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} missing"));
            let json = serde_json::to_value(item).unwrap();
            assert!(json.get(*method).is_some(), "{method} {path} missing");
        }
        assert_eq!(
            doc.paths.paths.len(),
            ROUTES.len(),
            "a documented path is not routed"
        );
    }
}
