//! JWT verification for handshakes and `auth` refreshes (contract §4), and
//! token minting for the `token` command and `--dev`.
//!
//! Keys from files are loaded once at start-up; a `jwt.jwks_url` set is
//! kept fresh by [`crate::jwks`] (see [`crate::keys`]). A token is only ever
//! checked with a key of the algorithm its header names *and* that the
//! configuration provides,
//! so `alg: none` and algorithm confusion (an HS256 token "signed" with an RSA
//! public key) have nothing to verify against and are refused.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_core::config::JwtConfig;
use herald_protocol::{ErrorCode, Permissions};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub use crate::keys::KeyError;
use crate::keys::{RemoteKeys, VerifyKey, jwks_keys, pem_public_key};

/// Longest a handshake waits for the `jwt.jwks_url` set to be fetched again
/// when its token names an unknown `kid`.
pub const REFETCH_WAIT: Duration = Duration::from_secs(3);

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Missing, malformed, badly signed, wrong alg/iss/aud, bad claims.
    #[error("{0}")]
    Unauthorized(String),
    /// Outside its `nbf`..`exp` window (with leeway).
    #[error("token expired or not yet valid")]
    Expired,
    /// Its `kid` names no key of the `jwt.jwks_url` set (a refetch has
    /// been asked for).
    #[error("no key with the token's kid")]
    UnknownKey,
}

impl AuthError {
    /// The contract code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Unauthorized(_) | AuthError::UnknownKey => ErrorCode::Unauthorized,
            AuthError::Expired => ErrorCode::TokenExpired,
        }
    }
}

/// The verified claims a session runs with.
#[derive(Debug, Clone)]
pub struct Claims {
    /// The user.
    pub sub: Arc<str>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Patterns the session may subscribe to.
    pub topics: Permissions,
    /// Patterns the session may publish to.
    pub publish: Permissions,
    /// Patterns of presence topics the session may see members of.
    pub presence: Permissions,
    /// What the connect hook attached to the session (contract §10.6),
    /// handed to the other hooks; `None` for a JWT.
    pub info: Option<Arc<serde_json::value::RawValue>>,
}

/// What identifies a token for revocation (contract §8): kept out of
/// [`Claims`], which a session holds for its whole life, and recorded in the
/// session's outbox as a [`crate::revocations::TokenStamp`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenId {
    /// The `jti` claim.
    pub jti: Option<String>,
    /// The `iat` claim, Unix seconds.
    pub iat: Option<u64>,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    topics: Vec<String>,
    /// Centrifugo's connection-token claim, read as more `topics`
    /// (contract §10.7), so its tokens need no rewriting.
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    presence: Vec<String>,
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    /// The `jwt.jwks_url` set, when configured.
    remote: Option<Arc<RemoteKeys>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    max_lifetime: Duration,
}

fn read(path: &Path, setting: &'static str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError {
        setting,
        message: format!("cannot read {}: {e}", path.display()),
    })
}

impl Verifier {
    /// Loads every configured key.
    ///
    /// # Errors
    /// A [`KeyError`] naming the setting whose key is unusable.
    pub fn new(config: &JwtConfig) -> Result<Verifier, KeyError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            keys.push(VerifyKey {
                alg: Algorithm::HS256,
                kid: None,
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
            });
        }
        if let Some(path) = &config.public_key_file {
            let pem = read(path, "jwt.public_key_file")?;
            let (alg, key) = pem_public_key(&pem).ok_or_else(|| KeyError {
                setting: "jwt.public_key_file",
                message: format!(
                    "{} is not a PEM RSA, P-256 or Ed25519 public key",
                    path.display()
                ),
            })?;
            keys.push(VerifyKey {
                alg,
                kid: None,
                key,
            });
        }
        if let Some(path) = &config.jwks_file {
            let text = read(path, "jwt.jwks_file")?;
            let origin = path.display().to_string();
            keys.extend(jwks_keys(&text, "jwt.jwks_file", &origin)?);
        }
        let remote = config
            .jwks_url
            .as_deref()
            .map(|url| RemoteKeys::new(url, config.jwks_refresh));
        Ok(Verifier {
            keys,
            remote,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            max_lifetime: config.max_lifetime,
        })
    }

    /// The `jwt.jwks_url` set, for the task that keeps it fresh.
    pub fn remote(&self) -> Option<&Arc<RemoteKeys>> {
        self.remote.as_ref()
    }

    /// Whether every configured key is loaded (a `jwt.jwks_url` set is
    /// not until its first fetch succeeds).
    pub fn keys_loaded(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.is_loaded())
    }

    /// As [`Verifier::verify_token`], but a token whose `kid` no key has
    /// waits (at most [`REFETCH_WAIT`]) for the refetch of the
    /// `jwt.jwks_url` set it asked for, if one is under way, and is checked
    /// once more: the first token signed with a rotated-in key is accepted.
    ///
    /// # Errors
    /// As [`Verifier::verify_token`].
    pub async fn verify_token_fresh(&self, token: &str) -> Result<(Claims, TokenId), AuthError> {
        let Some(remote) = &self.remote else {
            return self.verify_token(token);
        };
        let mut attempts = remote.attempts();
        match self.verify_token(token) {
            Err(AuthError::UnknownKey) if remote.want_refetch() => {
                let _ = tokio::time::timeout(REFETCH_WAIT, attempts.changed()).await;
                self.verify_token(token)
            }
            other => other,
        }
    }

    /// The configured clock-skew allowance.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        v.validate_nbf = true;
        // A configured issuer or audience must be present, not merely
        // correct when present: the library only compares claims it finds.
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// Verifies `token` and returns its claims.
    ///
    /// # Errors
    /// As [`Verifier::verify_token`].
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_token(token).map(|(claims, _)| claims)
    }

    /// Verifies `token` and returns its claims and its identity.
    ///
    /// # Errors
    /// [`AuthError::Expired`] outside the validity window (checked only after
    /// the signature), [`AuthError::Unauthorized`] for everything else.
    pub fn verify_token(&self, token: &str) -> Result<(Claims, TokenId), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Unauthorized("malformed token".to_owned()))?;
        let remote = self.remote.as_ref().map(|r| r.snapshot());
        let all = self.keys.iter().chain(remote.iter().flat_map(|r| r.iter()));
        let matches = |k: &&VerifyKey| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        };
        if let (Some(remote), Some(_)) = (&self.remote, &header.kid)
            && !all.clone().any(|k| matches(&k))
        {
            // Perhaps a key rotated in since the last fetch.
            let _ = remote.want_refetch();
            return Err(AuthError::UnknownKey);
        }
        let candidates = all.filter(matches);
        let mut tried = false;
        for key in candidates {
            tried = true;
            match jsonwebtoken::decode::<RawClaims>(token, &key.key, &self.validation(key.alg)) {
                Ok(data) => return claims(data.claims, self.max_lifetime),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    match e.kind() {
                        ErrorKind::InvalidSignature => continue,
                        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                            return Err(AuthError::Expired);
                        }
                        ErrorKind::InvalidIssuer => return Err(unauthorized("wrong issuer")),
                        ErrorKind::InvalidAudience => return Err(unauthorized("wrong audience")),
                        ErrorKind::MissingRequiredClaim(c) => {
                            return Err(unauthorized(&format!("token has no '{c}' claim")));
                        }
                        _ => return Err(unauthorized("invalid token")),
                    }
                }
            }
        }
        Err(if tried {
            unauthorized("bad signature")
        } else {
            unauthorized("no key for the token's algorithm")
        })
    }
}

fn unauthorized(message: &str) -> AuthError {
    AuthError::Unauthorized(message.to_owned())
}

fn claims(raw: RawClaims, max_lifetime: Duration) -> Result<(Claims, TokenId), AuthError> {
    if raw.sub.is_empty() {
        return Err(unauthorized("'sub' is empty"));
    }
    // Contract §10.9: a token may not outlive the revocations that could
    // cover it (kept jwt.max_lifetime at least).
    let start = raw.iat.unwrap_or_else(|| herald_core::now_ms() / 1000);
    if raw.exp.saturating_sub(start) > max_lifetime.as_secs() {
        return Err(unauthorized(&format!(
            "the token lives longer than jwt.max_lifetime ({}s)",
            max_lifetime.as_secs()
        )));
    }
    let parse = |name: &str, list: &[String]| {
        Permissions::parse(list.iter().map(String::as_str))
            .map_err(|(p, e)| unauthorized(&format!("invalid pattern '{p}' in '{name}': {e}")))
    };
    let mut topics = raw.topics;
    topics.extend(raw.channels);
    let claims = Claims {
        topics: parse("topics", &topics)?,
        publish: parse("publish", &raw.publish)?,
        presence: parse("presence", &raw.presence)?,
        sub: Arc::from(raw.sub),
        exp: raw.exp,
        info: None,
    };
    Ok((
        claims,
        TokenId {
            jti: raw.jti,
            iat: raw.iat,
        },
    ))
}

/// A key to sign tokens with.
pub struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
    max_lifetime: Duration,
}

/// What to put in a minted token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The user.
    pub sub: String,
    /// Subscribe patterns.
    pub topics: Vec<String>,
    /// Publish patterns.
    pub publish: Vec<String>,
    /// Presence patterns.
    pub presence: Vec<String>,
    /// Lifetime.
    pub ttl: Duration,
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    topics: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    publish: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    presence: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

impl Signer {
    /// Signs with the configured HS256 secret.
    ///
    /// # Errors
    /// When no `jwt.hs256_secret` is set.
    pub fn hs256(config: &JwtConfig) -> Result<Signer, KeyError> {
        let secret = config.hs256_secret.as_ref().ok_or_else(|| KeyError {
            setting: "jwt.hs256_secret",
            message: "signing needs jwt.hs256_secret, or --private-key with a PEM private key"
                .to_owned(),
        })?;
        Ok(Signer {
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(secret.expose().as_bytes()),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            max_lifetime: config.max_lifetime,
        })
    }

    /// Signs with a PEM private key (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA).
    ///
    /// # Errors
    /// When the file cannot be read or holds no such key.
    pub fn from_pem_file(path: &Path, config: &JwtConfig) -> Result<Signer, KeyError> {
        let pem = read(path, "--private-key")?;
        let (alg, key) = if let Ok(k) = EncodingKey::from_rsa_pem(&pem) {
            (Algorithm::RS256, k)
        } else if let Ok(k) = EncodingKey::from_ec_pem(&pem) {
            (Algorithm::ES256, k)
        } else if let Ok(k) = EncodingKey::from_ed_pem(&pem) {
            (Algorithm::EdDSA, k)
        } else {
            return Err(KeyError {
                setting: "--private-key",
                message: format!(
                    "{} is not a PEM RSA, P-256 or Ed25519 private key",
                    path.display()
                ),
            });
        };
        Ok(Signer {
            alg,
            key,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            max_lifetime: config.max_lifetime,
        })
    }

    /// Mints a token.
    ///
    /// # Errors
    /// When `req.ttl` exceeds `jwt.max_lifetime` (the token would be
    /// refused), or signing fails (a key of the wrong kind).
    pub fn mint(&self, req: &TokenRequest) -> Result<String, KeyError> {
        if req.ttl > self.max_lifetime {
            return Err(KeyError {
                setting: "jwt.max_lifetime",
                message: format!(
                    "a token living {}s would be refused: jwt.max_lifetime is {}s",
                    req.ttl.as_secs(),
                    self.max_lifetime.as_secs()
                ),
            });
        }
        let now = herald_core::now_ms() / 1000;
        let claims = MintedClaims {
            sub: &req.sub,
            iat: now,
            exp: now + req.ttl.as_secs(),
            topics: &req.topics,
            publish: &req.publish,
            presence: &req.presence,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key).map_err(|e| KeyError {
            setting: "jwt",
            message: format!("cannot sign: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Secret;

    fn config() -> JwtConfig {
        JwtConfig {
            hs256_secret: Some(Secret::new("0123456789abcdef0123456789abcdef")),
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(0),
            max_lifetime: Duration::from_secs(7 * 86_400),
        }
    }

    fn request(ttl: u64) -> TokenRequest {
        TokenRequest {
            sub: "alice".into(),
            topics: vec!["news".into(), "stocks.*".into()],
            publish: vec!["chat.>".into()],
            presence: vec!["chat.*".into()],
            ttl: Duration::from_secs(ttl),
        }
    }

    /// Contract §10.9: a token may live at most `jwt.max_lifetime`, from
    /// its `iat` (from now without one); both edges.
    #[test]
    fn a_token_may_not_outlive_max_lifetime() {
        let c = config();
        let verifier = Verifier::new(&c).unwrap();
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let now = herald_core::now_ms() / 1000;
        let week = 7 * 86_400;
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let at_edge =
            sign(serde_json::json!({"sub": "a", "iat": now - 10, "exp": now - 10 + week}));
        assert!(verifier.verify(&at_edge).is_ok(), "exactly max_lifetime");
        let over =
            sign(serde_json::json!({"sub": "a", "iat": now - 10, "exp": now - 10 + week + 1}));
        assert!(
            matches!(verifier.verify(&over), Err(AuthError::Unauthorized(ref m)) if m.contains("max_lifetime")),
            "one second more"
        );
        let no_iat = sign(serde_json::json!({"sub": "a", "exp": now + week + 60}));
        assert!(verifier.verify(&no_iat).is_err(), "without iat: from now");
        let no_iat_ok = sign(serde_json::json!({"sub": "a", "exp": now + week - 60}));
        assert!(verifier.verify(&no_iat_ok).is_ok());
        let signer = Signer::hs256(&c).unwrap();
        assert!(signer.mint(&request(week)).is_ok());
        assert!(
            signer.mint(&request(week + 1)).is_err(),
            "refused before signing"
        );
    }

    #[test]
    fn minted_tokens_verify() {
        let c = config();
        let token = Signer::hs256(&c).unwrap().mint(&request(60)).unwrap();
        let claims = Verifier::new(&c).unwrap().verify(&token).unwrap();
        assert_eq!(&*claims.sub, "alice");
        assert_eq!(claims.topics.patterns().len(), 2);
        assert!(
            claims
                .publish
                .allows(&herald_protocol::Topic::new("chat.a.b").unwrap())
        );
        assert!(
            claims
                .presence
                .allows(&herald_protocol::Topic::new("chat.a").unwrap())
        );
    }

    /// Contract §10.7: Centrifugo's `channels` claim adds to `topics`.
    #[test]
    fn a_channels_claim_adds_topics() {
        let c = config();
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let now = herald_core::now_ms() / 1000;
        let claims = serde_json::json!({"sub": "a", "exp": now + 60, "topics": ["news"], "channels": ["chat.room1"]});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        let verified = Verifier::new(&c).unwrap().verify(&token).unwrap();
        for t in ["news", "chat.room1"] {
            assert!(
                verified
                    .topics
                    .allows(&herald_protocol::Topic::new(t).unwrap()),
                "{t}"
            );
        }
        let bad = serde_json::json!({"sub": "a", "exp": now + 60, "channels": ["bad topic"]});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &bad, &key).unwrap();
        assert!(Verifier::new(&c).unwrap().verify(&token).is_err());
    }

    #[test]
    fn wrong_secret_alg_none_and_garbage_are_unauthorized() {
        let c = config();
        let mut other = config();
        other.hs256_secret = Some(Secret::new("another-secret-that-is-long"));
        let token = Signer::hs256(&other).unwrap().mint(&request(60)).unwrap();
        let v = Verifier::new(&c).unwrap();
        assert_eq!(
            v.verify(&token).unwrap_err().code(),
            ErrorCode::Unauthorized
        );
        // {"alg":"none"} . {"sub":"a","exp":9999999999} . (empty)
        let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(v.verify(none).unwrap_err().code(), ErrorCode::Unauthorized);
        assert_eq!(
            v.verify("garbage").unwrap_err().code(),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn expired_is_token_expired() {
        let c = config();
        let signer = Signer::hs256(&c).unwrap();
        let now = herald_core::now_ms() / 1000;
        let claims = serde_json::json!({"sub": "a", "exp": now - 100});
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &signer.key).unwrap();
        assert_eq!(
            Verifier::new(&c).unwrap().verify(&token).unwrap_err(),
            AuthError::Expired
        );
    }
}
