//! Keeps the `jwt.jwks_url` key set fresh (contract §10.9), so keys rotate
//! without a restart: fetched at start-up (retried with backoff until it
//! succeeds; the node is not ready, and refuses handshakes with 503, until
//! then), again every `jwt.jwks_refresh`, and at once when a token names an
//! unknown `kid` (which [`RemoteKeys::want_refetch`] allows at most once per
//! [`REFETCH_MIN`](crate::keys::REFETCH_MIN)).
//!
//! A fetch is one HTTP/1.1 GET (hyper's client connection over a TCP or
//! rustls stream, the system's roots or `SSL_CERT_FILE`), bounded by
//! [`FETCH_TIMEOUT`] and [`MAX_DOCUMENT`]; anything but a 200 with a JWKS
//! document that has a usable key is a failure, logged, and the keys
//! already fetched stay in use.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn};

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
pub async fn keep_fresh(remote: Weak<RemoteKeys>) {
    let mut backoff =
        herald_core::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let Some(remote) = remote.upgrade() else {
            return;
        };
        if fetch_into(&remote).await {
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
        fetch_into(&remote).await;
        last = Instant::now();
    }
}

/// One fetch; installs the keys it found. Returns whether it succeeded.
async fn fetch_into(remote: &RemoteKeys) -> bool {
    let fetched = match tokio::time::timeout(FETCH_TIMEOUT, fetch(&remote.url)).await {
        Ok(Ok(body)) => jwks_keys(&body, "jwt.jwks_url", &remote.url).map_err(|e| e.message),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
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

/// GETs `url` (http or https) and returns the body of a 200.
async fn fetch(url: &str) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let tls = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if tls {
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|e| format!("bad server name {host}: {e}"))?;
        let config = herald_core::tls::client_config()?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        get(stream, &uri).await
    } else {
        get(tcp, &uri).await
    }
}

async fn get<S>(stream: S, uri: &http::Uri) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // Ends when the response is read and `sender` is dropped.
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or("", |a| a.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    Limited::new(response.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|e| format!("body: {e}"))
}
