//! HS256 tokens for generated clients, minted locally with the gateway's
//! secret (with `jsonwebtoken`, as the gateway verifies them), so the
//! generator needs nothing from the gateway but its port.

use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    topics: [&'a str; 1],
    publish: [&'a str; 1],
}

/// A token for `sub` that may subscribe and publish anywhere, valid two hours.
///
/// # Errors
/// Never for HS256 with any secret; kept for the encoder's signature.
pub fn mint(secret: &str, sub: &str) -> Result<String, jsonwebtoken::errors::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub,
        iat: now,
        exp: now + 7200,
        topics: [">"],
        publish: [">"],
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn verifies_with_the_secret() {
        let t = super::mint("s", "u").unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s"),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "u");
        assert_eq!(data.claims["topics"][0], ">");
    }
}
