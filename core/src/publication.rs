//! What makes a publication acceptable, checked in one place for every way in:
//! the admin API (`/v1/publish`, `/v1/publish/batch`) and a client's `publish`
//! frame.
//!
//! The checks, in the order their errors win (contract §5, §8): the topic's
//! syntax (`invalid_topic`), then — for clients, between the two — the
//! token's permission (`forbidden`, checked by the session), then the size of
//! `data` (`too_large`), its nesting depth (`bad_request`) and the event name
//! (`bad_request`). Nothing here allocates for a refused publication, and
//! the depth is measured by one pass over the bytes with no recursion, so a
//! hostile payload costs its length and nothing more.

use herald_protocol::{ErrorCode, Payload, Topic, TopicError};

/// Longest `event` name, in characters (what JSON Schema counts, so the
/// OpenAPI document can state the limit exactly).
pub const MAX_EVENT_LEN: usize = 255;
/// Longest `idempotency_key`, in characters (see [`MAX_EVENT_LEN`]).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 64;

/// Why a publication was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The topic breaks the grammar of contract §3.
    #[error("invalid topic '{name}': {reason}")]
    InvalidTopic {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: TopicError,
    },
    /// `data` (or the decoded bytes of `data_b64`) is larger than
    /// `limits.max_message_size`.
    #[error("'data' is {size} bytes, more than limits.max_message_size ({max})")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// `data` nests arrays and objects deeper than `limits.max_json_depth`.
    #[error("'data' nests arrays and objects deeper than limits.max_json_depth ({max})")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// `event` is empty or longer than [`MAX_EVENT_LEN`].
    #[error("'event' must be 1 to {MAX_EVENT_LEN} characters")]
    BadEvent,
    /// `idempotency_key` is empty or longer than [`MAX_IDEMPOTENCY_KEY_LEN`].
    #[error("'idempotency_key' must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters")]
    BadIdempotencyKey,
}

impl PublishError {
    /// The contract code.
    pub fn code(&self) -> ErrorCode {
        match self {
            PublishError::InvalidTopic { .. } => ErrorCode::InvalidTopic,
            PublishError::TooLarge { .. } => ErrorCode::TooLarge,
            PublishError::TooDeep { .. }
            | PublishError::BadEvent
            | PublishError::BadIdempotencyKey => ErrorCode::BadRequest,
        }
    }
}

/// The limits a publication is held to (`limits.max_message_size`,
/// `limits.max_json_depth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicationRules {
    /// Largest `data`, in bytes of JSON text.
    pub max_data: usize,
    /// Deepest nesting of arrays and objects in `data`.
    pub max_depth: usize,
}

impl PublicationRules {
    /// Parses a topic name.
    ///
    /// # Errors
    /// [`PublishError::InvalidTopic`].
    pub fn topic(&self, name: &str) -> Result<Topic, PublishError> {
        topic(name)
    }

    /// Checks `data`, `event` and `idempotency_key`. Bytes are never
    /// inspected: only their decoded size counts (contract §10.2).
    ///
    /// # Errors
    /// The first rule broken, in the module's order.
    pub fn check(
        &self,
        data: &Payload<'_>,
        event: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<(), PublishError> {
        if data.size() > self.max_data {
            return Err(PublishError::TooLarge {
                size: data.size(),
                max: self.max_data,
            });
        }
        if let Some(json) = data.json() {
            if json_depth_exceeds(json.get().as_bytes(), self.max_depth) {
                return Err(PublishError::TooDeep {
                    max: self.max_depth,
                });
            }
        }
        if event.is_some_and(|e| e.is_empty() || e.chars().count() > MAX_EVENT_LEN) {
            return Err(PublishError::BadEvent);
        }
        if idempotency_key
            .is_some_and(|k| k.is_empty() || k.chars().count() > MAX_IDEMPOTENCY_KEY_LEN)
        {
            return Err(PublishError::BadIdempotencyKey);
        }
        Ok(())
    }
}

/// Parses a topic name (for a publication, a subscription or a route), with
/// the message every refusal of it carries.
///
/// # Errors
/// [`PublishError::InvalidTopic`].
pub fn topic(name: &str) -> Result<Topic, PublishError> {
    Topic::new(name).map_err(|reason| PublishError::InvalidTopic {
        name: name.to_owned(),
        reason,
    })
}

/// Whether valid JSON `text` nests arrays and objects more than `max` deep
/// (a scalar is depth 0, `[]` depth 1). One pass, no recursion: brackets
/// inside strings are skipped by tracking quotes and escapes.
pub fn json_depth_exceeds(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(s: &str) -> Payload<'static> {
        Payload::Json(std::borrow::Cow::Owned(
            serde_json::value::RawValue::from_string(s.to_owned()).unwrap(),
        ))
    }

    fn depth_of(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
            serde_json::Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
            _ => 0,
        }
    }

    #[test]
    fn rules_in_order() {
        let rules = PublicationRules {
            max_data: 16,
            max_depth: 2,
        };
        assert_eq!(
            rules.topic("a..b").unwrap_err().code(),
            ErrorCode::InvalidTopic
        );
        assert!(rules.topic("chat.room-1").is_ok());
        assert!(
            rules
                .check(&raw(r#"{"a":[1]}"#), Some("e"), Some("k1"))
                .is_ok()
        );
        assert_eq!(
            rules.check(&raw(r#""0123456789abcdef""#), None, None),
            Err(PublishError::TooLarge { size: 18, max: 16 })
        );
        assert_eq!(
            rules.check(&raw("[[[1]]]"), None, None),
            Err(PublishError::TooDeep { max: 2 })
        );
        // Bytes: their decoded size counts; they are never inspected.
        let bytes = |n: usize| Payload::Bytes(std::borrow::Cow::Owned(vec![b'['; n]));
        assert!(rules.check(&bytes(16), None, None).is_ok());
        assert_eq!(
            rules.check(&bytes(17), None, None),
            Err(PublishError::TooLarge { size: 17, max: 16 })
        );
        assert_eq!(
            rules.check(&raw("1"), Some(""), None),
            Err(PublishError::BadEvent)
        );
        assert_eq!(
            rules.check(&raw("1"), None, Some(&"k".repeat(65))),
            Err(PublishError::BadIdempotencyKey)
        );
        assert_eq!(
            rules.check(&raw("1"), None, Some("")),
            Err(PublishError::BadIdempotencyKey)
        );
        assert_eq!(PublishError::BadEvent.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        assert!(!json_depth_exceeds(
            br#"["[[[[", "\"[[[", {"k]": "}}}"}]"#,
            2
        ));
        assert!(json_depth_exceeds(br#"[{"a":[1]}]"#, 2));
        assert!(!json_depth_exceeds(br#"[{"a":[1]}]"#, 3));
        // Deep nesting is measured without recursion.
        let deep = "[".repeat(20_000) + &"]".repeat(20_000);
        assert!(json_depth_exceeds(deep.as_bytes(), 32));
    }

    fn json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i32>().prop_map(serde_json::Value::from),
            "[\\[\\]{}\"\\\\a-z]{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(depth, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[\\[\\]{}\"a-z]{0,4}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn depth_scan_agrees_with_a_parser(v in json(8), max in 0usize..10) {
            let text = serde_json::to_string(&v).unwrap();
            prop_assert_eq!(json_depth_exceeds(text.as_bytes(), max), depth_of(&v) > max);
        }
    }
}
