//! Minting the JWTs clients connect with: the claims Herald reads (contract
//! §4), signed with any algorithm the gateway verifies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::Error;

/// A token's claims, built step by step, then signed.
///
/// ```
/// let token = herald_client::TokenBuilder::new("alice")
///     .topics(["news", "chat.*"])
///     .expires_in(std::time::Duration::from_secs(3600))
///     .sign_hs256("a-secret-of-32-characters-or-more")?;
/// # Ok::<(), herald_client::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TokenBuilder {
    claims: Map<String, Value>,
    ttl: Duration,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenBuilder {
    /// A token for the user `sub`, valid for an hour unless told otherwise.
    pub fn new(sub: &str) -> TokenBuilder {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(sub));
        TokenBuilder {
            claims,
            ttl: Duration::from_secs(3600),
        }
    }

    fn list<I, S>(mut self, claim: &str, items: I) -> TokenBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let items: Vec<Value> = items.into_iter().map(|s| Value::String(s.into())).collect();
        self.claims.insert(claim.into(), Value::Array(items));
        self
    }

    /// Patterns of topics the client may subscribe to.
    pub fn topics<I: IntoIterator<Item = S>, S: Into<String>>(self, patterns: I) -> TokenBuilder {
        self.list("topics", patterns)
    }

    /// Patterns of topics the client may publish to.
    pub fn publish<I: IntoIterator<Item = S>, S: Into<String>>(self, patterns: I) -> TokenBuilder {
        self.list("publish", patterns)
    }

    /// Patterns of topics whose presence the client may see.
    pub fn presence<I: IntoIterator<Item = S>, S: Into<String>>(self, patterns: I) -> TokenBuilder {
        self.list("presence", patterns)
    }

    /// How long the token is valid from now (its `exp`).
    pub fn expires_in(mut self, ttl: Duration) -> TokenBuilder {
        self.ttl = ttl;
        self
    }

    /// The token's id, for revoking this one token later.
    pub fn jti(mut self, jti: &str) -> TokenBuilder {
        self.claims.insert("jti".into(), json!(jti));
        self
    }

    /// Any other claim (`iss`, `aud`, …).
    pub fn claim(mut self, name: &str, value: Value) -> TokenBuilder {
        self.claims.insert(name.into(), value);
        self
    }

    fn payload(&self) -> Map<String, Value> {
        let mut claims = self.claims.clone();
        let iat = now();
        claims.insert("iat".into(), json!(iat));
        claims.insert("exp".into(), json!(iat + self.ttl.as_secs()));
        claims
    }

    /// Signs with HS256 and the shared secret (`jwt.hs256_secret`).
    ///
    /// # Errors
    /// Never in practice (HMAC signing cannot fail).
    pub fn sign_hs256(&self, secret: &str) -> Result<String, Error> {
        let key = EncodingKey::from_secret(secret.as_bytes());
        self.sign_with(Algorithm::HS256, &key, None)
    }

    /// Signs with a PEM private key: `"RS256"`, `"ES256"` or `"EdDSA"`
    /// (the gateway verifies with the public key, `jwt.public_key_file`,
    /// or a JWKS naming `kid`).
    ///
    /// # Errors
    /// `invalid_key` when the algorithm is unknown or the key is not a PEM
    /// key of its kind.
    pub fn sign(
        &self,
        algorithm: &str,
        private_pem: &[u8],
        kid: Option<&str>,
    ) -> Result<String, Error> {
        let bad = |e: jsonwebtoken::errors::Error| Error::new("invalid_key", e.to_string());
        let (alg, key) = match algorithm {
            "RS256" => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(private_pem).map_err(bad)?,
            ),
            "ES256" => (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(private_pem).map_err(bad)?,
            ),
            "EdDSA" => (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(private_pem).map_err(bad)?,
            ),
            other => {
                return Err(Error::new(
                    "invalid_key",
                    format!("unknown algorithm {other}: RS256, ES256 or EdDSA"),
                ));
            }
        };
        self.sign_with(alg, &key, kid)
    }

    fn sign_with(
        &self,
        alg: Algorithm,
        key: &EncodingKey,
        kid: Option<&str>,
    ) -> Result<String, Error> {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &self.payload(), key)
            .map_err(|e| Error::new("invalid_key", e.to_string()))
    }
}
