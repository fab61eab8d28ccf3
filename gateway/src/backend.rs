//! The HTTP client a node calls the application's backend with: the
//! connect, subscribe and publish hooks (`crate::proxy`) and the
//! `jwt.jwks_url` fetch (`crate::jwks`).
//!
//! One pooled client per node (hyper-util's, with hyper-rustls for
//! `https://` on the shared TLS configuration: the system's roots or
//! `SSL_CERT_FILE`): keep-alive connections are reused, so a hook costs a
//! request, not a TCP and TLS handshake.
//!
//! Invariants: every call is bounded, by its caller's timeout and by a cap
//! on the response body; a call never holds a lock across an await (the
//! pool is the library's).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::warn;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per backend host.
const POOL_PER_HOST: usize = 64;

/// Why a call brought no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Nothing within the caller's timeout.
    Timeout,
    /// No connection, a broken response, or a body over the limit.
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => f.write_str("no answer in time"),
            CallError::Failed(why) => f.write_str(why),
        }
    }
}

/// The node's client for its backend. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Backend {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Backend {
    /// A client with an empty pool. Without trusted roots, `https://`
    /// calls fail (said once, here) and `http://` calls work.
    ///
    /// # Errors
    /// When no TLS configuration can be built at all (it can with the ring
    /// provider's defaults).
    pub fn new() -> Result<Backend, String> {
        let tls = match herald_core::tls::client_config() {
            Ok(config) => (*config).clone(),
            Err(e) => {
                warn!(error = %e, "https backend calls will fail");
                herald_core::tls::client_config_with(rustls::RootCertStore::empty())?
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_PER_HOST)
            .build(connector);
        Ok(Backend { client })
    }

    /// GETs `url`: its status and at most `limit` bytes of body, within
    /// `timeout`.
    ///
    /// # Errors
    /// [`CallError`].
    pub async fn get(
        &self,
        url: &Uri,
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        self.call(Method::GET, url, Bytes::new(), None, limit, timeout)
            .await
    }

    /// POSTs the JSON `body` to `url`: the status and at most `limit`
    /// bytes of the answer, within `timeout`.
    ///
    /// # Errors
    /// [`CallError`].
    pub async fn post_json(
        &self,
        url: &Uri,
        body: Bytes,
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        self.call(Method::POST, url, body, None, limit, timeout)
            .await
    }

    /// [`Backend::post_json`] with one more header (a webhook's
    /// `Herald-Signature`).
    ///
    /// # Errors
    /// [`CallError`].
    pub async fn post_json_with(
        &self,
        url: &Uri,
        body: Bytes,
        header: (&str, &str),
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        self.call(Method::POST, url, body, Some(header), limit, timeout)
            .await
    }

    async fn call(
        &self,
        method: Method,
        url: &Uri,
        body: Bytes,
        extra: Option<(&str, &str)>,
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(url.clone())
            .header(header::ACCEPT, "application/json");
        if method == Method::POST {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| CallError::Failed(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| CallError::Failed(format!("HTTP: {e}")))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| CallError::Failed(format!("body: {e}")))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout)?
    }
}
