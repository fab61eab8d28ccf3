//! Log set-up shared by every binary: human-readable or JSON lines on stderr,
//! filtered by `log_level`. Secrets (tokens, API keys, the HS256 secret) are
//! never passed to a log macro anywhere in Herald; the configuration wraps
//! them in [`Secret`](crate::Secret), whose `Debug` is masked.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Checks a `log_level` filter without installing anything.
///
/// # Errors
/// When `level` is not a valid filter.
pub fn check(level: &str) -> Result<(), String> {
    Targets::from_str(level)
        .map(|_| ())
        .map_err(|e| format!("invalid log_level '{level}': {e}"))
}

/// Installs the global subscriber.
///
/// # Errors
/// When `level` is not a valid filter.
pub fn init(level: &str, json: bool) -> Result<(), String> {
    let filter =
        Targets::from_str(level).map_err(|e| format!("invalid log_level '{level}': {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    result.map_err(|e| e.to_string())
}
