//! `POST /v1/publish` and `POST /v1/publish/batch`.
//!
//! Every publication of a request is validated (topic, then `data` and
//! `event` by [`PublicationRules`](herald_core::PublicationRules)) before any
//! is handed to the broker: a request is published whole or not at all.

use std::collections::HashSet;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use herald_core::http::ApiError;
use herald_core::{Broker, Publication, PublishError};
use herald_protocol::{ErrorBody, ErrorCode, Payload, Topic};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Caller, given, parse_json, present, read_body};
use crate::AdminState;

/// Most messages in one batch.
pub const MAX_BATCH: usize = 1000;

/// One event to one topic, or to several (`topics`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The topic; give this or `topics`.
    #[serde(default, deserialize_with = "given")]
    #[schema(example = "news")]
    topic: Option<String>,
    /// Several topics, all validated before any is published.
    #[serde(default, deserialize_with = "given")]
    topics: Option<Vec<String>>,
    /// Any JSON value, delivered as sent; give this or `data_b64`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object)]
    data: Option<Box<RawValue>>,
    /// Bytes, as standard base64; give this or `data`. Stored and delivered
    /// as bytes (`data_b64` to JSON clients, a `bin` to MessagePack ones).
    #[serde(default, deserialize_with = "given")]
    data_b64: Option<String>,
    /// Optional event name, 1–255 characters, delivered as `event`.
    #[serde(default, deserialize_with = "given")]
    #[schema(example = "headline")]
    event: Option<String>,
    /// Optional, 1–64 characters: a repeat with the same key (per topic)
    /// within `publish.idempotency_window` publishes nothing and answers the
    /// first call's ids.
    #[serde(default, deserialize_with = "given")]
    #[schema(example = "order-7781")]
    idempotency_key: Option<String>,
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

/// One message of a batch.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchMessage {
    #[serde(default, deserialize_with = "given")]
    #[schema(example = "stocks.AAPL")]
    topic: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object)]
    data: Option<Box<RawValue>>,
    /// See the single publish.
    #[serde(default, deserialize_with = "given")]
    data_b64: Option<String>,
    #[serde(default, deserialize_with = "given")]
    event: Option<String>,
    /// See the single publish.
    #[serde(default, deserialize_with = "given")]
    idempotency_key: Option<String>,
}

/// 1–1000 messages, validated all-or-nothing, published in order.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    #[serde(default, deserialize_with = "given")]
    messages: Option<Vec<BatchMessage>>,
}

/// A refused publication as an API error, prefixed with where it was.
fn refused(e: &PublishError, what: &str) -> ApiError {
    ApiError::new(e.code(), format!("{what}{e}"))
}

/// One message's payload, `event` and `idempotency_key`, checked.
struct Checked {
    data: Payload<'static>,
    event: Option<String>,
    idempotency_key: Option<String>,
}

impl Checked {
    fn new(
        state: &AdminState,
        (data, data_b64): (Option<Box<RawValue>>, Option<String>),
        event: Option<String>,
        idempotency_key: Option<String>,
        what: &str,
    ) -> Result<Checked, ApiError> {
        let data = herald_protocol::payload(data.as_deref(), data_b64)
            .map_err(|why| ApiError::new(ErrorCode::BadRequest, format!("{what}{why}")))?
            .into_owned();
        state
            .rules
            .check(&data, event.as_deref(), idempotency_key.as_deref())
            .map_err(|e| refused(&e, what))?;
        Ok(Checked {
            data,
            event,
            idempotency_key,
        })
    }

    fn publication(&self, topic: Topic) -> Publication {
        Publication {
            topic,
            event: self.event.clone(),
            data: self.data.clone(),
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

async fn run_publish(
    state: &AdminState,
    batch: Vec<Publication>,
) -> Result<Json<PublishResponse>, ApiError> {
    let topics: Vec<String> = batch.iter().map(|p| p.topic.as_str().to_owned()).collect();
    let positions = state.broker.publish(batch).await?;
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
        (status = 403, description = "forbidden: the key lacks the publish scope, or may not publish to a topic", body = ErrorBody),
        (status = 413, description = "too_large", body = ErrorBody),
        (status = 503, description = "unavailable: the broker did not accept it", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn publish(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Json<PublishResponse>, ApiError> {
    let bytes = read_body(body, state.rules.max_data + 256 * 1024).await?;
    let req: PublishRequest = parse_json(&bytes)?;
    let names = match (req.topic, req.topics) {
        (Some(t), None) => vec![t],
        (None, Some(list)) if !list.is_empty() && list.len() <= MAX_BATCH => list,
        (None, Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("'topics' holds 1 to {MAX_BATCH} topics"),
            ));
        }
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
        let t = state.rules.topic(name).map_err(|e| refused(&e, ""))?;
        caller.check_publish(&t, "")?;
        if seen.insert(t.clone()) {
            topics.push(t);
        }
    }
    let checked = Checked::new(
        &state,
        (req.data, req.data_b64),
        req.event,
        req.idempotency_key,
        "",
    )?;
    let batch = topics
        .into_iter()
        .map(|topic| checked.publication(topic))
        .collect();
    run_publish(&state, batch).await
}

/// Publish up to 1000 events in one call.
#[utoipa::path(
    post, path = "/v1/publish/batch", tag = "publish",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "All accepted; results in request order", body = PublishResponse),
        (status = 400, description = "bad_request (including batch size) or invalid_topic", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the key lacks the publish scope, or may not publish to a topic", body = ErrorBody),
        (status = 413, description = "too_large", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn publish_batch(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Json<PublishResponse>, ApiError> {
    let limit = (MAX_BATCH * (state.rules.max_data + 1024)).min(256 << 20);
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
        let topic = state.rules.topic(&name).map_err(|e| refused(&e, &what))?;
        caller.check_publish(&topic, &what)?;
        let checked = Checked::new(
            &state,
            (m.data, m.data_b64),
            m.event,
            m.idempotency_key,
            &what,
        )?;
        batch.push(checked.publication(topic));
    }
    run_publish(&state, batch).await
}
