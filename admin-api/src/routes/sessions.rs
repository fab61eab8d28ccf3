//! `POST /v1/disconnect`, `POST /v1/revoke` and `GET /v1/stats`: the routes
//! that reach the gateway nodes (through the broker's cluster view) rather
//! than topics.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use herald_core::http::ApiError;
use herald_core::{Broker, NodeStats, Revocation};
use herald_protocol::{ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{given, parse_json, read_body};
use crate::AdminState;

/// Whose sessions to close.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    /// The token `sub`.
    #[serde(default, deserialize_with = "given")]
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
    // An audit line; the request's span names the route and the key.
    info!(sub, disconnected, "user disconnected");
    Ok(Json(DisconnectResponse { disconnected }))
}

/// Which tokens to revoke: one `jti`, or every token of `sub` issued
/// before `issued_before`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// A token id (`jti` claim). Alone.
    #[serde(default, deserialize_with = "given")]
    #[schema(example = "2b9c1f7e")]
    jti: Option<String>,
    /// A user (`sub` claim), with `issued_before`.
    #[serde(default, deserialize_with = "given")]
    #[schema(example = "alice")]
    sub: Option<String>,
    /// Unix seconds: tokens of `sub` whose `iat` is earlier (or missing)
    /// are revoked.
    #[serde(default, deserialize_with = "unix_seconds")]
    #[schema(example = 1767225600)]
    issued_before: Option<u64>,
    /// Unix seconds when the revocation may be forgotten: the expiry of the
    /// latest token it covers. Kept at least `jwt.max_lifetime` (7 days by
    /// default) from now whatever it says, so it outlives every token it
    /// covers (none may live longer); kept at most a year.
    #[serde(default, deserialize_with = "unix_seconds")]
    expire_at: Option<u64>,
}

/// Done.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RevokeResponse {
    revoked: bool,
    /// Sessions closed with 4003 on the nodes that answered within 2 s.
    disconnected: usize,
}

/// A time in Unix seconds: a JSON integer from 0 to 2^53 − 1 (the range
/// every JSON reader holds exactly, as the document says), written as an
/// integer, with a fraction of zeros (`5.0`) or with an exponent (`5e3`):
/// JSON Schema's "integer" is any number whose value is whole.
fn unix_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let raw = <&serde_json::value::RawValue>::deserialize(d)?;
    whole_seconds(raw.get()).map(Some).ok_or_else(|| {
        D::Error::custom(format!(
            "{} is not a time in whole seconds from 0 to {MAX_SECONDS}",
            raw.get()
        ))
    })
}

/// The largest time accepted: 2^53 − 1.
const MAX_SECONDS: u64 = (1 << 53) - 1;

/// The whole number a JSON number's text is, read exactly (serde_json's
/// own float reading may be a unit off in the last place, which refused
/// `2251799813685247.0`).
fn whole_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(v) = text.parse::<u64>() {
        return (v <= MAX_SECONDS).then_some(v);
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    if !text.contains(['e', 'E']) {
        // A fraction of zeros only: the integer part is the value.
        let (int, frac) = mantissa.split_once('.')?;
        if frac.is_empty() || !frac.bytes().all(|b| b == b'0') {
            return None;
        }
        return int.parse::<u64>().ok().filter(|v| *v <= MAX_SECONDS);
    }
    // With an exponent: Rust's reading is correctly rounded, and within
    // 2^53 every whole value is exact.
    let f: f64 = text.parse().ok()?;
    (f.is_finite() && (0.0..=MAX_SECONDS as f64).contains(&f) && f.fract() == 0.0)
        .then_some(f as u64)
}

/// When a revocation made at `now` may be forgotten: at least
/// `max_lifetime` from now (every token it covers has expired by then),
/// later with a later `expire_at`, but at most a year (or `max_lifetime`
/// if that is longer).
fn kept_until(now: u64, expire_at: Option<u64>, max_lifetime: u64) -> u64 {
    let floor = now + max_lifetime;
    expire_at
        .unwrap_or(0)
        .max(floor)
        .min(floor.max(now + MAX_REVOCATION))
}

/// The longest `expire_at` accepted, from now.
pub const MAX_REVOCATION: u64 = 366 * 24 * 3600;
/// Longest `jti` or `sub` accepted, in characters.
const MAX_ID: usize = 256;

/// Revoke tokens: matching sessions on every node are closed with 4003 and
/// matching tokens are refused at the handshake and in `auth` until
/// `expire_at`.
#[utoipa::path(
    post, path = "/v1/revoke", tag = "sessions",
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "Revoked", body = RevokeResponse),
        (status = 400, description = "bad_request", body = ErrorBody),
        (status = 401, description = "unauthorized", body = ErrorBody),
        (status = 403, description = "forbidden: the key lacks this route's scope", body = ErrorBody),
        (status = 413, description = "too_large", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn revoke(
    State(state): State<AdminState>,
    body: Body,
) -> Result<Json<RevokeResponse>, ApiError> {
    let bytes = read_body(body, 16 * 1024).await?;
    let req: RevokeRequest = parse_json(&bytes)?;
    let bad = |m: &str| ApiError::new(ErrorCode::BadRequest, m);
    let id_ok = |s: &str| !s.is_empty() && s.chars().count() <= MAX_ID;
    let now = herald_core::now_ms() / 1000;
    // Kept at least jwt.max_lifetime, so it outlives every token it covers
    // (contract §10.9); longer with a later `expire_at`, at most a year (or
    // max_lifetime, if that is longer).
    let until = kept_until(now, req.expire_at, state.max_lifetime.as_secs());
    let revocation = match (req.jti, req.sub, req.issued_before) {
        (Some(jti), None, None) if id_ok(&jti) => Revocation {
            jti: Some(jti),
            sub: None,
            issued_before: None,
            until,
        },
        (None, Some(sub), Some(before)) if id_ok(&sub) => Revocation {
            jti: None,
            sub: Some(sub),
            issued_before: Some(before),
            until,
        },
        _ => {
            return Err(bad(
                "give 'jti' alone, or 'sub' with 'issued_before' (ids of 1 to 256 bytes)",
            ));
        }
    };
    let disconnected = state.broker.revoke(&revocation).await?;
    // An audit line; the request's span names the route and the key.
    info!(
        jti = revocation.jti,
        sub = revocation.sub,
        issued_before = revocation.issued_before,
        until = revocation.until,
        disconnected,
        "tokens revoked"
    );
    Ok(Json(RevokeResponse {
        revoked: true,
        disconnected,
    }))
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

#[cfg(test)]
mod tests {
    use super::whole_seconds;

    /// Contract §10.9: a revocation outlives every token it covers.
    #[test]
    fn revocations_are_kept_at_least_max_lifetime() {
        use super::{MAX_REVOCATION, kept_until};
        let (now, week) = (1_000_000, 7 * 86_400);
        assert_eq!(kept_until(now, None, week), now + week);
        assert_eq!(
            kept_until(now, Some(now + 60), week),
            now + week,
            "an earlier expire_at"
        );
        assert_eq!(
            kept_until(now, Some(now - 60), week),
            now + week,
            "one already past"
        );
        assert_eq!(
            kept_until(now, Some(now + week + 1), week),
            now + week + 1,
            "later"
        );
        assert_eq!(
            kept_until(now, Some(u64::MAX / 2), week),
            now + MAX_REVOCATION,
            "a year at most"
        );
        let long = 2 * MAX_REVOCATION;
        assert_eq!(kept_until(now, None, long), now + long, "or max_lifetime");
    }

    #[test]
    fn whole_seconds_are_read_exactly() {
        assert_eq!(whole_seconds("5"), Some(5));
        assert_eq!(whole_seconds("5.0"), Some(5));
        assert_eq!(whole_seconds("5.000"), Some(5));
        assert_eq!(
            whole_seconds("2251799813685247.0"),
            Some(2_251_799_813_685_247)
        );
        assert_eq!(
            whole_seconds("9007199254740991"),
            Some(9_007_199_254_740_991)
        );
        assert_eq!(whole_seconds("5e3"), Some(5000));
        assert_eq!(whole_seconds("1.5e1"), Some(15));
        for bad in [
            "5.5",
            "-1",
            "9007199254740992",
            "9007199254740992.0",
            "1e300",
            "0.5e0",
            "5.",
            "x",
        ] {
            assert_eq!(whole_seconds(bad), None, "{bad}");
        }
    }
}
