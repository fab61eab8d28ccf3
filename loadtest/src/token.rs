//! HS256 tokens for generated clients, minted locally with the gateway's
//! secret so the generator needs nothing from the gateway but its port.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A token for `sub` that may subscribe and publish anywhere, valid two hours.
pub fn mint(secret: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + 7200, "topics": [">"], "publish": [">"]});
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{claims}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn three_parts() {
        let t = super::mint("s", "u");
        assert_eq!(t.split('.').count(), 3);
    }
}
