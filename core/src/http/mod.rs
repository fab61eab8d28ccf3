//! The HTTP pieces every Herald process serves with: the contract's error
//! body as a response, the bearer credential of a request, the operational
//! routes (`/healthz`, `/readyz`, `/metrics`, JSON 404s) and the server with
//! its header timeout and graceful stop.
//!
//! `herald-gateway` (handshake refusals, its two listeners) and the admin API
//! (`herald-admin`, and the routes a gateway mounts) both build on this, so a
//! refusal looks the same whichever process answers it.
//!
//! Invariants: every error response carries [`ErrorBody`] with the status of
//! its code; every 503 carries `Retry-After` (spread over a few seconds, so
//! refused clients do not come back together); every 401 carries
//! `WWW-Authenticate: Bearer`.

pub mod ops;
pub mod serve;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::response::{IntoResponse, Response};
use herald_protocol::{ErrorBody, ErrorCode};

use crate::BrokerError;

/// Shortest and longest `Retry-After` a 503 carries, in seconds.
pub const RETRY_AFTER_SECS: (u64, u64) = (1, 5);

/// A `Retry-After` value spread uniformly over [`RETRY_AFTER_SECS`].
pub fn retry_after() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (lo, hi) = RETRY_AFTER_SECS;
    lo + std::hash::RandomState::new().hash_one(n) % (hi - lo + 1)
}

/// A JSON error response with `code`'s status and the headers its status
/// calls for.
pub fn error_response(code: ErrorCode, message: impl Into<String>) -> Response {
    let status = http::StatusCode::from_u16(code.http_status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(ErrorBody::new(code, message))).into_response();
    let headers = response.headers_mut();
    match code {
        ErrorCode::Unavailable => {
            headers.insert(http::header::RETRY_AFTER, retry_after().into());
        }
        ErrorCode::Unauthorized => {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        // The body may not have been read to its end: the connection
        // cannot carry another request.
        ErrorCode::TooLarge => {
            headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        _ => {}
    }
    response
}

/// The answer to a method a route does not serve: 405 `method_not_allowed`
/// (axum adds the route's `Allow` header). For `method_not_allowed_fallback`.
pub async fn method_not_allowed() -> Response {
    error_response(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
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

/// A refusal with a contract code and a message safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Decides the HTTP status.
    pub code: ErrorCode,
    /// Never internal details.
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
            // Says what was wrong with the request; nothing internal.
            BrokerError::Invalid(why) => return ApiError::new(e.code(), why.clone()),
            BrokerError::Internal(_) => "internal error",
        };
        tracing::warn!(error = %e, "request failed in the broker");
        ApiError::new(e.code(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_headers_follow_the_code() {
        let r = error_response(ErrorCode::Unavailable, "x");
        assert_eq!(r.status(), 503);
        let after: u64 = r.headers()[http::header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((RETRY_AFTER_SECS.0..=RETRY_AFTER_SECS.1).contains(&after));
        let r = error_response(ErrorCode::Unauthorized, "x");
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[http::header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(error_response(ErrorCode::TooLarge, "x").status(), 413);
    }

    #[test]
    fn retry_after_is_spread() {
        let seen: std::collections::HashSet<u64> = (0..200).map(|_| retry_after()).collect();
        assert!(seen.len() >= 3, "{seen:?}");
    }

    #[test]
    fn bearer_credentials() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer  k1 ".parse().unwrap());
        assert_eq!(bearer(&h), Some("k1"));
        h.insert(http::header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
