//! The admin API client: publish, history, presence, disconnect, revoke and
//! stats, each one request retried the same way.
//!
//! Retries: a 503, or a request that got no answer (no connection, a reset,
//! the timeout), is sent again unchanged, after the server's `Retry-After`
//! or a full-jitter exponential backoff, at most `RetryPolicy::attempts`
//! times in all. Every publish carries an `idempotency_key` (one is made
//! when the caller gives none), so a publish retried after its answer was
//! lost is delivered once. Any other refusal is returned at once.
//!
//! HTTP: one pooled hyper client with rustls (ring) and the system's roots,
//! the stack the gateway itself uses for its backend calls.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};

use crate::Error;
use crate::random::{jitter, random_hex};

/// How often and how long to retry a request the gateway could not take.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first backoff's ceiling.
    pub base: Duration,
    /// The longest wait, `Retry-After` included.
    pub cap: Duration,
    /// Per attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(wait) => wait.min(self.cap),
            None => jitter(self.base.saturating_mul(1 << attempt.min(16)).min(self.cap)),
        }
    }
}

/// An event's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// JSON (`data`).
    Json(Value),
    /// Bytes (`data_b64` on the wire; contract §10.2).
    Bytes(Vec<u8>),
}

/// One event to publish, with its options.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub data: Data,
    /// An event name clients can dispatch on.
    pub event: Option<String>,
    /// The key that makes a retried publish deliver once (made when `None`).
    pub idempotency_key: Option<String>,
}

impl Publication {
    /// A JSON event for `topic`.
    pub fn json(topic: &str, data: impl Serialize) -> Publication {
        Publication {
            topic: topic.to_owned(),
            data: Data::Json(serde_json::to_value(data).unwrap_or(Value::Null)),
            event: None,
            idempotency_key: None,
        }
    }

    /// A byte event for `topic`.
    pub fn bytes(topic: &str, data: impl Into<Vec<u8>>) -> Publication {
        Publication {
            topic: topic.to_owned(),
            data: Data::Bytes(data.into()),
            event: None,
            idempotency_key: None,
        }
    }

    /// With an event name.
    pub fn event(mut self, name: &str) -> Publication {
        self.event = Some(name.to_owned());
        self
    }

    /// With your own idempotency key (an order id, a message id…).
    pub fn idempotency_key(mut self, key: &str) -> Publication {
        self.idempotency_key = Some(key.to_owned());
        self
    }

    /// The request body, with a key made now if none was given (so every
    /// retry of this request carries the same one).
    fn body(&self) -> Value {
        let mut body = json!({ "topic": self.topic });
        match &self.data {
            Data::Json(v) => body["data"] = v.clone(),
            Data::Bytes(b) => {
                body["data_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(b));
            }
        }
        if let Some(e) = &self.event {
            body["event"] = json!(e);
        }
        let key = self
            .idempotency_key
            .clone()
            .unwrap_or_else(|| random_hex(16));
        body["idempotency_key"] = json!(key);
        body
    }
}

/// What `revoke` revokes: one token (`jti`), or every token of `sub`
/// issued before a time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Revoke {
    /// One token's `jti`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// A user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// With `sub`: tokens issued before this Unix time (default: now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<u64>,
}

/// The admin API of a gateway (or of `herald-admin`). Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    base: String,
    key: String,
    retry: RetryPolicy,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// The rustls configuration: ring, and the system's trusted roots.
pub(crate) fn tls_config() -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new("tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Publisher {
    /// A client of the admin API at `base_url` (`http://host:8081`) with
    /// `api_key` (a key of `admin.api_keys` or `admin.keys`).
    ///
    /// # Errors
    /// `tls` when no TLS configuration can be built.
    pub fn new(base_url: &str, api_key: &str) -> Result<Publisher, Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config()?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Publisher {
            base: base_url.trim_end_matches('/').to_owned(),
            key: api_key.to_owned(),
            retry: RetryPolicy::default(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// With another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Publisher {
        self.retry = retry;
        self
    }

    /// Publishes JSON `data` to `topic`; returns the event's id.
    ///
    /// # Errors
    /// The gateway's refusal, or `unreachable` once the retries ran out.
    pub async fn publish(&self, topic: &str, data: impl Serialize) -> Result<String, Error> {
        self.publish_one(&Publication::json(topic, data)).await
    }

    /// Publishes one event with its options; returns its id.
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish_one(&self, publication: &Publication) -> Result<String, Error> {
        let answer = self
            .call(Method::POST, "/v1/publish", Some(publication.body()))
            .await?;
        Ok(first_id(&answer))
    }

    /// Publishes several events in one request; returns their ids in order.
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish_batch(&self, publications: &[Publication]) -> Result<Vec<String>, Error> {
        let messages: Vec<Value> = publications.iter().map(Publication::body).collect();
        let answer = self
            .call(
                Method::POST,
                "/v1/publish/batch",
                Some(json!({ "messages": messages })),
            )
            .await?;
        Ok(ids(&answer))
    }

    /// A topic's history: `{"messages": [...], ...}` as the admin API
    /// answers it (contract §7).
    ///
    /// # Errors
    /// The gateway's refusal.
    pub async fn history(
        &self,
        topic: &str,
        since: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Value, Error> {
        let mut query = Vec::new();
        if let Some(s) = since {
            query.push(format!("since={s}"));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        let path = with_query(&format!("/v1/topics/{topic}/history"), &query);
        self.call(Method::GET, &path, None).await
    }

    /// A page of a topic's presence (contract §10.5).
    ///
    /// # Errors
    /// The gateway's refusal.
    pub async fn presence(
        &self,
        topic: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Value, Error> {
        let mut query = Vec::new();
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if let Some(c) = cursor {
            query.push(format!("cursor={c}"));
        }
        let path = with_query(&format!("/v1/topics/{topic}/presence"), &query);
        self.call(Method::GET, &path, None).await
    }

    /// Closes every session of `sub` (4003); returns how many there were.
    ///
    /// # Errors
    /// The gateway's refusal.
    pub async fn disconnect(&self, sub: &str) -> Result<u64, Error> {
        let answer = self
            .call(Method::POST, "/v1/disconnect", Some(json!({ "sub": sub })))
            .await?;
        Ok(answer["disconnected"].as_u64().unwrap_or(0))
    }

    /// Revokes tokens (contract §8); their sessions are closed.
    ///
    /// # Errors
    /// The gateway's refusal.
    pub async fn revoke(&self, revoke: &Revoke) -> Result<Value, Error> {
        let body = serde_json::to_value(revoke).unwrap_or(Value::Null);
        self.call(Method::POST, "/v1/revoke", Some(body)).await
    }

    /// The cluster's counts (`GET /v1/stats`).
    ///
    /// # Errors
    /// The gateway's refusal.
    pub async fn stats(&self) -> Result<Value, Error> {
        self.call(Method::GET, "/v1/stats", None).await
    }

    /// One request, retried as the module says.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let body = Bytes::from(body.map(|b| b.to_string()).unwrap_or_default());
        let mut attempt = 0;
        loop {
            let result = self.once(method.clone(), path, body.clone()).await;
            match result {
                Err(e) if e.is_retryable() && attempt + 1 < self.retry.attempts => {
                    tokio::time::sleep(self.retry.delay(attempt, e.retry_after)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn once(&self, method: Method, path: &str, body: Bytes) -> Result<Value, Error> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| Error::new("bad_request", e.to_string()))?;
        let unreachable = |why: String| Error::new("unreachable", why);
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, Error>((parts, bytes))
        };
        let (parts, bytes) = tokio::time::timeout(self.retry.timeout, exchange)
            .await
            .map_err(|_| unreachable("no answer in time".to_owned()))??;
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if parts.status.is_success() {
            return Ok(json);
        }
        let retry_after = parts
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let error = &json["error"];
        Err(Error {
            code: error["code"]
                .as_str()
                .map_or_else(|| format!("http_{}", parts.status.as_u16()), str::to_owned),
            message: error["message"]
                .as_str()
                .map_or_else(|| reason(parts.status), str::to_owned),
            status: parts.status.as_u16(),
            retry_after,
        })
    }
}

fn reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("").to_owned()
}

fn with_query(path: &str, query: &[String]) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

fn ids(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn first_id(answer: &Value) -> String {
    ids(answer).into_iter().next().unwrap_or_default()
}
