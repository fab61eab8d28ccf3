//! Keeps the `jwt.jwks_url` key set fresh (contract §10.9), so keys rotate
//! without a restart: fetched at start-up (retried with backoff until it
//! succeeds; the node is not ready, and refuses handshakes with 503, until
//! then), again every `jwt.jwks_refresh`, and at once when a token names an
//! unknown `kid` (which [`RemoteKeys::want_refetch`] allows at most once per
//! [`REFETCH_MIN`](crate::keys::REFETCH_MIN)).
//!
//! A fetch is one GET through the node's [`Backend`] client (the system's
//! roots or `SSL_CERT_FILE` for `https://`), bounded by [`FETCH_TIMEOUT`]
//! and [`MAX_DOCUMENT`]; anything but a 200 with a JWKS document that has a
//! usable key is a failure, logged, and the keys already fetched stay in
//! use.

use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::backend::{Backend, CallError};
use crate::keys::{RemoteKeys, jwks_keys};

/// Longest one fetch may take, connection and body included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
pub const MAX_DOCUMENT: usize = 1024 * 1024;

/// Runs for the life of the node: the first fetch (retried until it
/// succeeds), then a fetch per `refresh` or per wake-up, whichever comes
/// first.
/// Ends once the set is dropped (its node is gone), within a refresh
/// period.
pub async fn keep_fresh(remote: Weak<RemoteKeys>, backend: Backend) {
    let mut backoff =
        herald_core::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let Some(remote) = remote.upgrade() else {
            return;
        };
        if fetch_into(&remote, &backend).await {
            break;
        }
        drop(remote);
        tokio::time::sleep(backoff.next_delay()).await;
    }
    let mut last = Instant::now();
    loop {
        let Some(remote) = remote.upgrade() else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep_until(last + remote.refresh) => {}
            () = remote.wanted() => {}
        }
        fetch_into(&remote, &backend).await;
        last = Instant::now();
    }
}

/// One fetch; installs the keys it found. Returns whether it succeeded.
async fn fetch_into(remote: &RemoteKeys, backend: &Backend) -> bool {
    let fetched = match remote.url.parse::<http::Uri>() {
        Err(e) => Err(format!("bad URL: {e}")),
        Ok(uri) => match backend.get(&uri, MAX_DOCUMENT, FETCH_TIMEOUT).await {
            Ok((http::StatusCode::OK, body)) => {
                jwks_keys(&body, "jwt.jwks_url", &remote.url).map_err(|e| e.message)
            }
            Ok((status, _)) => Err(format!("status {status}")),
            Err(CallError::Timeout) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
            Err(CallError::Failed(why)) => Err(why),
        },
    };
    match fetched {
        Ok(keys) => {
            info!(url = %remote.url, keys = keys.len(), "jwks fetched");
            remote.install(keys);
            true
        }
        Err(error) => {
            warn!(url = %remote.url, %error, "jwks fetch failed; keeping the keys already fetched");
            remote.failed();
            false
        }
    }
}
