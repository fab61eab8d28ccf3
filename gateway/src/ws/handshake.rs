//! The HTTP side of the WebSocket opening handshake (RFC 6455 §4.2).
//!
//! Only checks headers and computes the accept key; whether the client may
//! connect at all (capacity, origin, token) is decided by the caller, before
//! anything is upgraded.

use base64::Engine;
use http::{HeaderMap, Method, header};

/// Why a request is not a WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotUpgrade {
    /// Missing or wrong `Upgrade`/`Connection`/`Sec-WebSocket-Key`, or not GET: 400.
    BadRequest(&'static str),
    /// `Sec-WebSocket-Version` is not 13: 426 with `Sec-WebSocket-Version: 13`.
    Version,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks the upgrade headers and returns the `Sec-WebSocket-Accept` value.
///
/// # Errors
/// What is wrong with the request, as [`NotUpgrade`].
pub fn accept_key(method: &Method, headers: &HeaderMap) -> Result<String, NotUpgrade> {
    if method != Method::GET {
        return Err(NotUpgrade::BadRequest("a WebSocket upgrade must be a GET"));
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(NotUpgrade::BadRequest("missing 'Upgrade: websocket'"));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(NotUpgrade::BadRequest("missing 'Connection: Upgrade'"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(NotUpgrade::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or(NotUpgrade::BadRequest("missing 'Sec-WebSocket-Key'"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| NotUpgrade::BadRequest("'Sec-WebSocket-Key' is not base64"))?;
    if decoded.len() != 16 {
        return Err(NotUpgrade::BadRequest(
            "'Sec-WebSocket-Key' must be 16 bytes",
        ));
    }
    Ok(derive_accept(key))
}

/// `base64(SHA-1(key + GUID))`.
pub fn derive_accept(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const GOOD: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(
            derive_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            accept_key(&Method::GET, &headers(&GOOD)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            accept_key(&Method::POST, &headers(&GOOD)),
            Err(NotUpgrade::BadRequest(_))
        ));
        assert!(matches!(
            accept_key(&Method::GET, &headers(&GOOD[1..])),
            Err(NotUpgrade::BadRequest(_))
        ));
        let mut v12 = GOOD;
        v12[2] = ("sec-websocket-version", "12");
        assert_eq!(
            accept_key(&Method::GET, &headers(&v12)),
            Err(NotUpgrade::Version)
        );
        let mut bad_key = GOOD;
        bad_key[3] = ("sec-websocket-key", "short");
        assert!(matches!(
            accept_key(&Method::GET, &headers(&bad_key)),
            Err(NotUpgrade::BadRequest(_))
        ));
    }
}
