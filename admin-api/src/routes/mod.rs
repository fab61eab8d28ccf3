//! The `/v1` routes: the router, key checking, and the body helpers every
//! handler reads requests with.
//!
//! Bodies are read with an explicit size limit and parsed here rather than by
//! axum's `Json` extractor, so every refusal (malformed JSON, a missing field,
//! an oversized body) gets the contract's error body and code.

mod history;
mod presence;
mod publish;
mod sessions;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use herald_core::http::{ApiError, bearer};
use herald_protocol::ErrorCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::{AdminState, key_accepted};

pub(crate) use history::{__path_history, HistoryResponse};
pub(crate) use presence::{__path_presence, PresenceResponse};
pub(crate) use publish::{
    __path_publish, __path_publish_batch, BatchMessage, BatchRequest, PublishRequest,
    PublishResponse, PublishResult,
};
pub(crate) use sessions::{
    __path_disconnect, __path_stats, DisconnectRequest, DisconnectResponse, NodeStatsDoc,
    StatsResponse,
};

/// Every route of the router, as (method, OpenAPI path); the tests check the
/// OpenAPI document lists each.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/publish"),
    ("post", "/v1/publish/batch"),
    ("get", "/v1/topics/{topic}/history"),
    ("get", "/v1/topics/{topic}/presence"),
    ("post", "/v1/disconnect"),
    ("get", "/v1/stats"),
    ("get", "/v1/openapi.json"),
];

/// Builds the `/v1` router.
pub fn router(state: AdminState) -> Router {
    let protected = Router::new()
        .route("/v1/publish", post(publish::publish))
        .route("/v1/publish/batch", post(publish::publish_batch))
        .route("/v1/topics/{topic}/history", get(history::history))
        .route("/v1/topics/{topic}/presence", get(presence::presence))
        .route("/v1/disconnect", post(sessions::disconnect))
        .route("/v1/stats", get(sessions::stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/v1/openapi.json", get(crate::doc::openapi_json))
        .merge(protected)
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::BadRequest, "method not allowed on this route")
        })
        .with_state(state)
}

async fn require_key(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    match bearer(request.headers()) {
        Some(key) if key_accepted(&state.keys, key) => next.run(request).await,
        Some(_) => ApiError::new(ErrorCode::Unauthorized, "invalid admin API key").into_response(),
        None => ApiError::new(
            ErrorCode::Unauthorized,
            "missing 'Authorization: Bearer <admin key>'",
        )
        .into_response(),
    }
}

/// Reads at most `limit` bytes of body.
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

/// Treats a present `null` as present: only a missing field is missing.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}
