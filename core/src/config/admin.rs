//! `[admin]`: who may use the admin API. Plain keys (`admin.api_keys`, every
//! scope) and named keys with scopes (`[[admin.keys]]`, a list of tables in
//! the file and a JSON array in flags and the environment).

use serde::{Deserialize, Deserializer};

use super::value::{list, text};
use super::{Check, ConfigError, Secret, Section};

fn secrets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    list(d).map(|l| l.into_iter().map(Secret::new).collect())
}

fn patterns<'de, D: Deserializer<'de>>(d: D) -> Result<herald_protocol::Permissions, D::Error> {
    super::sections::patterns(d)
}

/// What an admin key may do: one scope per group of routes (contract §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `POST /v1/publish`, `POST /v1/publish/batch` (optionally limited to
    /// topic patterns).
    Publish,
    /// `GET /v1/topics/{topic}/history`.
    History,
    /// `GET /v1/topics/{topic}/presence`.
    Presence,
    /// `GET /v1/stats`.
    Stats,
    /// `POST /v1/disconnect`.
    Disconnect,
    /// `POST /v1/revoke`.
    Revoke,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 6] = [
        Scope::Publish,
        Scope::History,
        Scope::Presence,
        Scope::Stats,
        Scope::Disconnect,
        Scope::Revoke,
    ];

    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::History => "history",
            Scope::Presence => "presence",
            Scope::Stats => "stats",
            Scope::Disconnect => "disconnect",
            Scope::Revoke => "revoke",
        }
    }
}

/// One `[[admin.keys]]` entry: a named key and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedKey {
    /// Shown in logs and metrics instead of the key.
    pub name: String,
    /// The bearer credential.
    #[serde(deserialize_with = "secret_text")]
    pub key: Secret,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// With `publish`: the topics it may publish to (empty: any).
    #[serde(default, deserialize_with = "patterns")]
    pub topics: herald_protocol::Permissions,
}

fn secret_text<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    text(d).map(Secret::new)
}

/// `admin.keys`: a list of tables from the file, or the same as a JSON
/// array (flags, environment); empty text is no keys. A visitor rather than
/// an untagged enum, so a bad entry is reported as itself.
fn scoped_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ScopedKey>, D::Error> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<ScopedKey>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of {name, key, scopes, topics} tables, or the same as JSON text")
        }
        fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<Self::Value, E> {
            if t.trim().is_empty() {
                return Ok(Vec::new());
            }
            serde_json::from_str(t).map_err(|e| {
                E::custom(format!(
                    "not a JSON array of {{\"name\",\"key\",\"scopes\",\"topics\"}} objects: {e}"
                ))
            })
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = seq.next_element()? {
                keys.push(k);
            }
            Ok(keys)
        }
    }
    d.deserialize_any(Keys)
}

/// `[admin]`: who may use the admin API.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AdminConfig {
    /// Accepted bearer keys, each with every scope.
    #[serde(default, deserialize_with = "secrets")]
    pub api_keys: Vec<Secret>,
    /// Named keys with scopes.
    #[serde(default, deserialize_with = "scoped_keys")]
    pub keys: Vec<ScopedKey>,
}

impl Section for AdminConfig {
    const PATH: Option<&'static str> = Some("admin");

    fn check(&mut self, c: &Check<'_>) -> Result<(), ConfigError> {
        if self.api_keys.iter().any(|k| k.expose().is_empty()) {
            return Err(c.invalid("admin.api_keys", "keys must not be empty"));
        }
        let mut names = std::collections::HashSet::new();
        for k in &self.keys {
            let bad =
                |why: String| Err(c.invalid("admin.keys", format!("key '{}': {why}", k.name)));
            if k.name.trim().is_empty() {
                return Err(c.invalid("admin.keys", "every key needs a non-empty 'name'"));
            }
            if !names.insert(k.name.as_str()) {
                return bad("two keys have this name".to_owned());
            }
            if k.key.expose().is_empty() {
                return bad("'key' must not be empty".to_owned());
            }
            if k.scopes.is_empty() {
                return bad("'scopes' must not be empty".to_owned());
            }
            if !k.topics.patterns().is_empty() && !k.scopes.contains(&Scope::Publish) {
                return bad(
                    "'topics' limits publishing, but the key has no 'publish' scope".to_owned(),
                );
            }
        }
        Ok(())
    }
}

impl AdminConfig {
    /// Checks that the admin API can authenticate anyone.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] naming `admin.api_keys` and `admin.keys`.
    pub fn require_keys(&self) -> Result<(), ConfigError> {
        if self.api_keys.is_empty() && self.keys.is_empty() {
            return Err(ConfigError::Missing(
                "no admin API key: set admin.api_keys or admin.keys (herald-gateway also accepts --dev)"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}
