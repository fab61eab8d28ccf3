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
use axum::routing::{MethodRouter, get, post};
use herald_core::http::{ApiError, bearer};
use herald_protocol::ErrorCode;
use http_body_util::BodyExt;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use std::sync::{Arc, Mutex};

use axum::extract::MatchedPath;
use herald_core::Metrics;
use herald_core::config::Scope;
use tracing::{Instrument, debug, warn};

use crate::{AdminState, ApiKey, find_key};

pub(crate) use history::{__path_history, HistoryResponse};
pub(crate) use presence::{__path_presence, PresenceResponse};
pub(crate) use publish::{
    __path_publish, __path_publish_batch, BatchMessage, BatchRequest, PublishRequest,
    PublishResponse, PublishResult,
};
pub(crate) use sessions::{
    __path_disconnect, __path_revoke, __path_stats, DisconnectRequest, DisconnectResponse,
    NodeStatsDoc, RevokeRequest, RevokeResponse, StatsResponse,
};

/// A route of the router: its method, its OpenAPI path, and the scope a key
/// needs for it (`None`: no key needed).
pub struct Route {
    /// `get`, `post`.
    pub method: &'static str,
    /// As in the OpenAPI document.
    pub path: &'static str,
    /// What an admin key must be allowed.
    pub scope: Option<Scope>,
}

const fn route(method: &'static str, path: &'static str, scope: Option<Scope>) -> Route {
    Route {
        method,
        path,
        scope,
    }
}

/// Every route of the router; the tests check the OpenAPI document lists
/// each, and the key check reads each route's scope here.
pub const ROUTES: &[Route] = &[
    route("post", "/v1/publish", Some(Scope::Publish)),
    route("post", "/v1/publish/batch", Some(Scope::Publish)),
    route("get", "/v1/topics/{topic}/history", Some(Scope::History)),
    route("get", "/v1/topics/{topic}/presence", Some(Scope::Presence)),
    route("post", "/v1/disconnect", Some(Scope::Disconnect)),
    route("post", "/v1/revoke", Some(Scope::Revoke)),
    route("get", "/v1/stats", Some(Scope::Stats)),
    route("get", "/v1/openapi.json", None),
];

/// The key a request was made with, for handlers that check more than the
/// route's scope (publish topics).
#[derive(Clone)]
pub struct Caller(pub ApiKey);

impl Caller {
    /// Refuses (403) a topic outside the key's publish patterns; `what`
    /// prefixes the message (`messages[3]: `).
    pub fn check_publish(
        &self,
        topic: &herald_protocol::Topic,
        what: &str,
    ) -> Result<(), ApiError> {
        if self.0.may_publish(topic) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("{what}the key '{}' may not publish to {topic}", self.0.name),
        ))
    }
}

/// The `/v1` routes but the document's own: `doc` is the handler of
/// `GET /v1/openapi.json` (the document is built from these routes, so it
/// is handed in rather than imported).
pub fn router(state: AdminState, doc: MethodRouter<AdminState>) -> Router {
    let protected = Router::new()
        .route("/v1/publish", post(publish::publish))
        .route("/v1/publish/batch", post(publish::publish_batch))
        .route("/v1/topics/{topic}/history", get(history::history))
        .route("/v1/topics/{topic}/presence", get(presence::presence))
        .route("/v1/disconnect", post(sessions::disconnect))
        .route("/v1/revoke", post(sessions::revoke))
        .route("/v1/stats", get(sessions::stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/v1/openapi.json", doc)
        .merge(protected)
        .method_not_allowed_fallback(herald_core::http::method_not_allowed)
        .with_state(state)
}

/// The `key` label of a request without a valid key.
const NO_KEY: &str = "unauthenticated";

/// Checks the bearer key and the route's scope, runs the handler in a span
/// naming the route and the key, and counts and times the request.
async fn require_key(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    // The route is found by its path alone: each path has one scope, so
    // every method the router serves on it (HEAD, which axum answers with
    // the GET handler, included) is held to that scope (contract §10.8).
    let spec = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| ROUTES.iter().find(|r| r.path == p.as_str()));
    let route = spec.map_or("other", |r| r.path);
    let (name, response) = match bearer(request.headers()).map(|k| find_key(&state.keys, k)) {
        None => (
            None,
            ApiError::new(
                ErrorCode::Unauthorized,
                "missing 'Authorization: Bearer <admin key>'",
            )
            .into_response(),
        ),
        Some(None) => (
            None,
            ApiError::new(ErrorCode::Unauthorized, "invalid admin API key").into_response(),
        ),
        Some(Some(key)) => match spec.and_then(|r| r.scope) {
            Some(scope) if !key.may(scope) => {
                warn!(key = %key.name, route, scope = scope.name(), "admin key used outside its scopes");
                (
                    Some(key.name.clone()),
                    ApiError::new(
                        ErrorCode::Forbidden,
                        format!("the key '{}' lacks the '{}' scope", key.name, scope.name()),
                    )
                    .into_response(),
                )
            }
            _ => {
                let name = key.name.clone();
                request.extensions_mut().insert(Caller(key.clone()));
                // Whatever the handler logs names the route and the key.
                let span = tracing::info_span!("admin", route, key = %name);
                (Some(name), next.run(request).instrument(span).await)
            }
        },
    };
    let status = response.status().as_u16();
    debug!(
        key = name.as_deref().unwrap_or(NO_KEY),
        route, status, "admin request"
    );
    state.requests.count(
        name.as_deref().unwrap_or(NO_KEY),
        route,
        status,
        started.elapsed(),
    );
    response
}

/// `herald_admin_requests_total{key,route,status}`: requests by the name
/// of the key they were made with, route template and status. Label values
/// come from the configuration (key names) and the router (routes), never
/// from requests; the counters are kept so a request costs a map lookup.
pub struct RequestCounters {
    metrics: Arc<Metrics>,
    /// Few entries (keys × routes × statuses seen): a list, searched in place.
    counters: Mutex<Vec<(Series, metrics::Counter)>>,
    /// `herald_admin_request_seconds{route,status}`, likewise.
    durations: Mutex<Vec<((&'static str, u16), metrics::Histogram)>>,
}

const REQUESTS: &str = "herald_admin_requests_total";

/// One series' labels: key name, route, status.
type Series = (Arc<str>, &'static str, u16);
static REQUESTS_METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new("herald", metrics::Level::INFO, None);

impl RequestCounters {
    /// Describes the family and registers, at zero, every key's successful
    /// requests on every route it may use, so it is exported from start-up.
    pub fn new(metrics: &Arc<Metrics>, keys: &[ApiKey]) -> RequestCounters {
        use metrics::Recorder;
        metrics.recorder().describe_counter(
            REQUESTS.into(),
            None,
            "Admin API requests by key name, route and status.".into(),
        );
        let counters = RequestCounters {
            metrics: metrics.clone(),
            counters: Mutex::new(Vec::new()),
            durations: Mutex::new(Vec::new()),
        };
        for key in keys {
            for r in ROUTES
                .iter()
                .filter(|r| r.scope.is_some_and(|s| key.may(s)))
            {
                let _ = counters.counter(&key.name, r.path, 200);
            }
        }
        counters
    }

    fn counter(&self, key: &str, route: &'static str, status: u16) -> metrics::Counter {
        use metrics::Recorder;
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = map
            .iter()
            .find(|((k, r, s), _)| &**k == key && *r == route && *s == status)
        {
            return c.clone();
        }
        let labels = vec![
            metrics::Label::new("key", key.to_owned()),
            metrics::Label::new("route", route),
            metrics::Label::new("status", status.to_string()),
        ];
        let c = self.metrics.recorder().register_counter(
            &metrics::Key::from_parts(REQUESTS, labels),
            &REQUESTS_METADATA,
        );
        map.push(((Arc::from(key), route, status), c.clone()));
        c
    }

    fn duration(&self, route: &'static str, status: u16) -> metrics::Histogram {
        use metrics::Recorder;
        let mut list = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, h)) = list.iter().find(|(series, _)| *series == (route, status)) {
            return h.clone();
        }
        let labels = vec![
            metrics::Label::new("route", route),
            metrics::Label::new("status", status.to_string()),
        ];
        let h = self.metrics.recorder().register_histogram(
            &metrics::Key::from_parts(herald_core::metrics::ADMIN_REQUEST_SECONDS, labels),
            &REQUESTS_METADATA,
        );
        list.push(((route, status), h.clone()));
        h
    }

    fn count(&self, key: &str, route: &'static str, status: u16, took: std::time::Duration) {
        self.counter(key, route, status).increment(1);
        self.duration(route, status).record(took.as_secs_f64());
    }
}

/// Most bytes of an oversized body read (and thrown away, never stored)
/// before the 413 is sent, and for how long: a server that stops reading
/// makes the client's send fail (a reset) before it can read the answer, so
/// a body somewhat over the limit is drained to let the 413 arrive. Beyond
/// these, the answer is sent anyway and the connection closed.
const DRAIN_MAX: usize = 64 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads at most `limit` bytes of body; a larger body is 413 `too_large`.
async fn read_body(mut body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    let mut kept = bytes::BytesMut::new();
    let mut over = declared.is_some_and(|n| n > limit as u64);
    let mut drained = 0usize;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let frame = if over {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => return Err(too_large()),
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else { break };
        let frame = match frame {
            Ok(frame) => frame,
            Err(_) if over => return Err(too_large()),
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "could not read the request body",
                ));
            }
        };
        // Trailers carry no body bytes.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if over {
            drained += data.len();
            if drained > DRAIN_MAX {
                return Err(too_large());
            }
        } else if kept.len() + data.len() > limit {
            over = true;
            drained = kept.len() + data.len();
            kept = bytes::BytesMut::new();
        } else {
            kept.extend_from_slice(&data);
        }
    }
    if over {
        return Err(too_large());
    }
    Ok(kept.freeze())
}

/// Every request body is a JSON object: serde would also read a struct
/// from an array of its fields, which the document does not allow.
fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "invalid JSON body: expected an object",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

/// Treats a present `null` as present: only a missing field is missing.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// An optional field that, when present, must hold a value of its type:
/// `null` is refused (the document does not allow it), and only a missing
/// field is `None`. Use with `#[serde(default)]`.
fn given<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}
