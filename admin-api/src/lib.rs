//! The admin REST API (contract §8): one router, mounted by every gateway on
//! its admin listener and served alone by `herald-admin` in cluster mode, so
//! both answer the same routes with the same auth and the same errors.
//!
//! The routes only talk to a [`Backend`] (any [`Broker`]); they know nothing
//! about sessions or sockets. Every error is an [`ApiError`] with a contract
//! code and never carries internal details. The OpenAPI document is generated
//! from the handler annotations and request/response types below, and a test
//! checks that every routed path is in it.

pub mod ops;
mod routes;
pub mod serve;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::response::{IntoResponse, Response};
use herald_core::{Broker, BrokerError, HistoryPage, Metrics, NodeStats, Position, Publication};
use herald_protocol::{ErrorCode, Topic};
use serde::Serialize;

pub use routes::{ApiDoc, ROUTES, router};

/// A boxed future, so [`Backend`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the admin routes need from a broker, as an object-safe trait.
pub trait Backend: Send + Sync + 'static {
    /// See [`Broker::publish`].
    fn publish(&self, batch: Vec<Publication>)
    -> BoxFuture<'_, Result<Vec<Position>, BrokerError>>;
    /// See [`Broker::history`].
    fn history<'a>(
        &'a self,
        topic: &'a Topic,
        since: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>>;
    /// See [`Broker::stats`].
    fn stats(&self) -> BoxFuture<'_, Result<Vec<NodeStats>, BrokerError>>;
    /// See [`Broker::disconnect`].
    fn disconnect<'a>(&'a self, sub: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>>;
}

impl<B: Broker> Backend for B {
    fn publish(
        &self,
        batch: Vec<Publication>,
    ) -> BoxFuture<'_, Result<Vec<Position>, BrokerError>> {
        Box::pin(Broker::publish(self, batch))
    }
    fn history<'a>(
        &'a self,
        topic: &'a Topic,
        since: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<HistoryPage, BrokerError>> {
        Box::pin(Broker::history(self, topic, since, limit))
    }
    fn stats(&self) -> BoxFuture<'_, Result<Vec<NodeStats>, BrokerError>> {
        Box::pin(Broker::stats(self))
    }
    fn disconnect<'a>(&'a self, sub: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(Broker::disconnect(self, sub))
    }
}

/// Everything the admin routes share.
#[derive(Clone)]
pub struct AdminState {
    /// Where events go.
    pub backend: Arc<dyn Backend>,
    /// SHA-256 digests of the accepted API keys.
    pub keys: Arc<[ApiKey]>,
    /// `limits.max_message_size`: the largest `data` accepted.
    pub max_message_size: usize,
    /// Where publishes are counted.
    pub metrics: Arc<Metrics>,
}

impl AdminState {
    /// State for `backend`, accepting `keys`.
    pub fn new(
        backend: Arc<dyn Backend>,
        keys: &[herald_core::Secret],
        max_message_size: usize,
        metrics: Arc<Metrics>,
    ) -> AdminState {
        AdminState {
            backend,
            keys: keys.iter().map(|k| ApiKey::new(k.expose())).collect(),
            max_message_size,
            metrics,
        }
    }
}

/// An accepted API key, kept only as its digest.
///
/// Comparing fixed-size digests in constant time means neither the key's
/// content nor its length leaks through response timing.
#[derive(Clone)]
pub struct ApiKey([u8; 32]);

impl ApiKey {
    /// The digest of `key`.
    pub fn new(key: &str) -> ApiKey {
        let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        ApiKey(out)
    }

    fn matches(&self, other: &ApiKey) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// The credential of an `Authorization: Bearer <credential>` header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether `presented` is one of `keys`; every key is compared, always.
pub fn key_accepted(keys: &[ApiKey], presented: &str) -> bool {
    let presented = ApiKey::new(presented);
    keys.iter()
        .fold(false, |found, k| found | k.matches(&presented))
}

/// An admin API error: a contract code and a message for the caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Decides the HTTP status.
    pub code: ErrorCode,
    /// Safe to show: never internal details.
    pub message: String,
}

impl ApiError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> ApiError {
        let message = match &e {
            BrokerError::Unavailable(_) => "the broker is unavailable; retry later",
            BrokerError::Internal(_) => "internal error",
        };
        tracing::warn!(error = %e, "admin request failed in the broker");
        ApiError::new(e.code(), message)
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct ErrorDetail {
    /// Contract error code.
    code: &'static str,
    /// Human-readable detail.
    message: String,
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// A JSON error response with `code`'s status; shared by the admin routes and
/// the gateway's handshake refusals.
pub fn error_response(code: ErrorCode, message: impl Into<String>) -> Response {
    let status = http::StatusCode::from_u16(code.http_status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_str(),
            message: message.into(),
        },
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = error_response(self.code, self.message);
        if self.code == ErrorCode::Unauthorized {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_digest() {
        let keys = [ApiKey::new("k1"), ApiKey::new("k2")];
        assert!(key_accepted(&keys, "k1"));
        assert!(key_accepted(&keys, "k2"));
        assert!(!key_accepted(&keys, "k3"));
        assert!(!key_accepted(&keys, ""));
        assert!(!key_accepted(&[], "k1"));
    }
}
