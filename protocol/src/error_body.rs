//! The JSON body of every HTTP refusal (contract §4 handshake refusals, §8
//! admin errors): `{"error":{"code":"…","message":"…"}}`.
//!
//! It lives beside [`ErrorCode`] so that the gateway, the admin API, the load
//! generator and the tests share one definition; the status that goes with a
//! body is always [`ErrorCode::http_status`] of its code.

use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;

/// The code and the human-readable message of a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Contract error code.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "bad_request"))]
    pub code: ErrorCode,
    /// Human-readable detail; never internal state.
    pub message: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

impl ErrorBody {
    /// A body for `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }

    /// The body as JSON text.
    pub fn to_json(&self) -> String {
        // A code and a string: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_contract() {
        let body = ErrorBody::new(ErrorCode::TooLarge, "big");
        assert_eq!(
            body.to_json(),
            r#"{"error":{"code":"too_large","message":"big"}}"#
        );
        let back: ErrorBody = serde_json::from_str(&body.to_json()).unwrap();
        assert_eq!(back, body);
    }
}
