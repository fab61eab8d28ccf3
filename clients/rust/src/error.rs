//! One error type for every part of the crate, typed by the gateway's
//! error code so callers can match on what went wrong.

use std::fmt;
use std::time::Duration;

/// A request the gateway refused, one that never got an answer, or a
/// subscriber the gateway ended.
///
/// `code` is the contract's error code (`unauthorized`, `forbidden`,
/// `bad_request`, `too_large`, `unavailable`, …), or one of this crate's:
/// `unreachable` (no answer), `disconnected` (the gateway ended the
/// session for good), `protocol_fault` (refused repeatedly), `invalid_key`
/// (a signing key that cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The error code.
    pub code: String,
    /// For the developer.
    pub message: String,
    /// The HTTP status (0 when there was none).
    pub status: u16,
    /// How long the server asked to wait, if it did.
    pub retry_after: Option<Duration>,
}

impl Error {
    pub(crate) fn new(code: &str, message: impl Into<String>) -> Error {
        Error {
            code: code.to_owned(),
            message: message.into(),
            status: 0,
            retry_after: None,
        }
    }

    /// Whether the same request may succeed later (503, or no answer).
    pub fn is_retryable(&self) -> bool {
        self.status == 503 || matches!(self.code.as_str(), "unavailable" | "unreachable")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(&self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Error {}
