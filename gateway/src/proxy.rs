//! Backend hooks (contract §10.6): the application's backend admits
//! connections that bring no JWT (`proxy.connect_url`), vetoes subscribes
//! (`proxy.subscribe_url`) and vets or rewrites client publishes
//! (`proxy.publish_url`) on the topics it names. Each hook is one JSON POST
//! through the node's pooled [`Backend`] client.
//!
//! Answers map to the contract's codes: 200 goes ahead, 401 refuses a
//! connection `unauthorized`, 403 refuses `forbidden`; no answer within
//! `proxy.timeout`, any other status or a malformed body is `unavailable`
//! (503 with `Retry-After` at the handshake).
//!
//! Invariants, so that a slow or dead backend costs clients a fast,
//! retryable refusal rather than a pile of waiting handshakes:
//! - at most [`MAX_IN_FLIGHT`] hook calls per node at once; a call beyond
//!   that is not made and refused `unavailable` at once;
//! - per hook, a breaker: after [`TRIP_AFTER`] failures in a row (errors,
//!   timeouts), calls are not made for [`OPEN_FOR`]; then calls go through
//!   again, and one more failure opens it again;
//! - no lock is held across a call (the breaker is atomics and a mutex
//!   taken only to read or set a time).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::Metrics;
use herald_core::config::ProxyConfig;
use herald_core::metrics::{ProxyHook, ProxyResult};
use herald_protocol::{ErrorCode, Payload, Permissions, Topic};
use http::{StatusCode, Uri};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::auth::{Claims, TokenId};
use crate::backend::{Backend, CallError};

/// Most hook calls a node has in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// Failures in a row that open a hook's breaker.
pub const TRIP_AFTER: u32 = 5;
/// How long an open breaker refuses calls without making them.
pub const OPEN_FOR: Duration = Duration::from_secs(5);
/// Largest answer read from a hook.
const MAX_ANSWER: usize = 64 * 1024;
/// Largest `info` a connect hook may attach to a session (it is kept for
/// the session's life).
pub const MAX_INFO: usize = 4 * 1024;

/// Why a hook did not let a request through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// 401 from the connect hook.
    Unauthorized(String),
    /// 403.
    Forbidden(String),
    /// The connect hook's `expire_at` is past.
    Expired,
    /// No usable answer: try again later.
    Unavailable(String),
}

impl Refused {
    /// The contract code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refused::Unauthorized(_) => ErrorCode::Unauthorized,
            Refused::Forbidden(_) => ErrorCode::Forbidden,
            Refused::Expired => ErrorCode::TokenExpired,
            Refused::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    /// For the client's developer.
    pub fn message(&self) -> &str {
        match self {
            Refused::Unauthorized(m) | Refused::Forbidden(m) | Refused::Unavailable(m) => m,
            Refused::Expired => "the backend's expire_at is past",
        }
    }
}

/// What the connect hook is told about a connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectRequest {
    /// The peer's address (the load balancer's, behind one: see the
    /// forwarded headers).
    pub remote_addr: Option<String>,
    /// The handshake headers named in `proxy.headers`, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// The handshake's query parameters.
    pub query: BTreeMap<String, String>,
    /// The `connect` frame's token when it is not a JWT, else null.
    pub token: Option<String>,
}

impl ConnectRequest {
    /// The parts of a handshake the connect hook is told about.
    pub fn of(
        headers: &http::HeaderMap,
        uri: &Uri,
        names: &[http::HeaderName],
        peer: Option<std::net::SocketAddr>,
    ) -> ConnectRequest {
        let forwarded = names
            .iter()
            .filter_map(|name| {
                let values: Vec<&str> = headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                (!values.is_empty()).then(|| (name.as_str().to_owned(), values.join(", ")))
            })
            .collect();
        let query = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (!k.is_empty())
                    .then(|| (crate::ws::percent_decode(k), crate::ws::percent_decode(v)))
            })
            .collect();
        ConnectRequest {
            remote_addr: peer.map(|p| p.to_string()),
            headers: forwarded,
            query,
            token: None,
        }
    }
}

/// The connect hook's admission (an absent `sub` is refused as empty).
#[derive(Deserialize, Default)]
#[serde(default)]
struct ConnectAnswer {
    sub: String,
    topics: Vec<String>,
    publish: Vec<String>,
    presence: Vec<String>,
    expire_at: Option<u64>,
    info: Option<Box<RawValue>>,
}

/// The publish hook's answer: `{}` publishes as sent, `{"data":…}` the
/// replacement.
#[derive(Deserialize)]
struct PublishAnswer {
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// A hook's breaker (see the module documentation).
#[derive(Default)]
struct Breaker {
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
}

impl Breaker {
    fn open(&self) -> bool {
        let until = *self.open_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    fn failure(&self) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= TRIP_AFTER {
            *self.open_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Instant::now() + OPEN_FOR);
        }
    }
}

/// One configured hook.
struct Hook {
    kind: ProxyHook,
    url: Uri,
    topics: Permissions,
    breaker: Breaker,
}

/// A node's hooks.
pub struct Proxy {
    backend: Backend,
    connect: Option<Hook>,
    subscribe: Option<Hook>,
    publish: Option<Hook>,
    /// `proxy.headers`.
    pub headers: Vec<http::HeaderName>,
    timeout: Duration,
    max_lifetime: Duration,
    in_flight: Semaphore,
    metrics: Arc<Metrics>,
}

fn hook(kind: ProxyHook, url: Option<&str>, topics: &Permissions) -> Result<Option<Hook>, String> {
    url.map(|u| {
        Ok(Hook {
            kind,
            url: u.parse().map_err(|e| format!("{u}: {e}"))?,
            topics: topics.clone(),
            breaker: Breaker::default(),
        })
    })
    .transpose()
}

impl Proxy {
    /// The hooks `config` names, or `None` when it names none.
    ///
    /// # Errors
    /// A URL or header name that does not parse (the configuration check
    /// catches the URLs first).
    pub fn new(
        config: &ProxyConfig,
        max_lifetime: Duration,
        backend: Backend,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Proxy>, String> {
        if !config.any() {
            return Ok(None);
        }
        let none = Permissions::default();
        let headers = config
            .headers
            .iter()
            .map(|h| {
                http::HeaderName::from_bytes(h.trim().as_bytes())
                    .map_err(|e| format!("proxy.headers: '{h}': {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Proxy {
            backend,
            connect: hook(ProxyHook::Connect, config.connect_url.as_deref(), &none)?,
            subscribe: hook(
                ProxyHook::Subscribe,
                config.subscribe_url.as_deref(),
                &config.subscribe_topics,
            )?,
            publish: hook(
                ProxyHook::Publish,
                config.publish_url.as_deref(),
                &config.publish_topics,
            )?,
            headers,
            timeout: config.timeout,
            max_lifetime,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            metrics,
        }))
    }

    /// Whether connections without a JWT ask the backend.
    pub fn has_connect(&self) -> bool {
        self.connect.is_some()
    }

    /// Whether subscribing to `topic` asks the backend.
    pub fn asks_subscribe(&self, topic: &Topic) -> bool {
        self.subscribe
            .as_ref()
            .is_some_and(|h| h.topics.allows(topic))
    }

    /// Whether a client publish to `topic` goes through the backend.
    pub fn asks_publish(&self, topic: &Topic) -> bool {
        self.publish
            .as_ref()
            .is_some_and(|h| h.topics.allows(topic))
    }

    /// One call: the body of a 200, or why not.
    async fn call(&self, hook: &Hook, body: Bytes) -> Result<Bytes, Refused> {
        let shed = |why: &str| {
            self.metrics
                .proxy(hook.kind, ProxyResult::Shed, Duration::ZERO);
            Refused::Unavailable(format!("the backend is not answering ({why}); retry later"))
        };
        if hook.breaker.open() {
            return Err(shed("it failed repeatedly"));
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(shed("too many calls in flight"));
        };
        let started = Instant::now();
        let answer = self
            .backend
            .post_json(&hook.url, body, MAX_ANSWER, self.timeout)
            .await;
        let took = started.elapsed();
        let (result, outcome) = match answer {
            Ok((StatusCode::OK, body)) => (ProxyResult::Ok, Ok(body)),
            Ok((StatusCode::UNAUTHORIZED, _)) if hook.kind == ProxyHook::Connect => (
                ProxyResult::Unauthorized,
                Err(Refused::Unauthorized(
                    "the backend refused the connection".into(),
                )),
            ),
            Ok((StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _)) => (
                ProxyResult::Forbidden,
                Err(Refused::Forbidden("the backend refused".into())),
            ),
            Ok((status, _)) => (
                ProxyResult::Error,
                Err(Refused::Unavailable(format!(
                    "the backend answered {status}; retry later"
                ))),
            ),
            Err(CallError::Timeout) => (
                ProxyResult::Timeout,
                Err(Refused::Unavailable(
                    "the backend did not answer in time; retry later".into(),
                )),
            ),
            Err(CallError::Failed(why)) => {
                debug!(hook = hook.kind.label(), error = %why, "backend hook failed");
                (
                    ProxyResult::Error,
                    Err(Refused::Unavailable(
                        "the backend could not be reached; retry later".into(),
                    )),
                )
            }
        };
        match result {
            ProxyResult::Error | ProxyResult::Timeout => hook.breaker.failure(),
            _ => hook.breaker.success(),
        }
        self.metrics.proxy(hook.kind, result, took);
        outcome
    }

    /// A 200 whose body is not what the hook should answer: counted as an
    /// error of the backend's.
    fn malformed(&self, hook: &Hook, why: &str) -> Refused {
        hook.breaker.failure();
        debug!(
            hook = hook.kind.label(),
            why, "backend hook answered something unusable"
        );
        Refused::Unavailable(format!("the backend's answer is unusable: {why}"))
    }

    /// Asks the connect hook to admit a connection.
    ///
    /// # Errors
    /// [`Refused`]; `Unavailable` too when no connect hook is configured.
    pub async fn connect(&self, request: &ConnectRequest) -> Result<(Claims, TokenId), Refused> {
        let Some(hook) = &self.connect else {
            return Err(Refused::Unavailable("no connect hook".into()));
        };
        let body = serde_json::to_vec(request).map_err(|e| Refused::Unavailable(e.to_string()))?;
        let answer = self.call(hook, body.into()).await?;
        let answer: ConnectAnswer =
            serde_json::from_slice(&answer).map_err(|e| self.malformed(hook, &e.to_string()))?;
        if answer.sub.is_empty() || answer.sub.len() > 256 {
            return Err(self.malformed(hook, "'sub' must be 1 to 256 bytes"));
        }
        if answer
            .info
            .as_ref()
            .is_some_and(|i| i.get().len() > MAX_INFO)
        {
            return Err(self.malformed(hook, "'info' is over 4 KiB"));
        }
        let parse = |field: &str, list: &[String]| {
            Permissions::parse(list.iter().map(String::as_str)).map_err(|(p, e)| {
                self.malformed(hook, &format!("{field}: '{p}' is not a topic pattern: {e}"))
            })
        };
        let now = herald_core::now_ms() / 1000;
        let longest = now + self.max_lifetime.as_secs();
        let exp = match answer.expire_at {
            Some(t) if t <= now => return Err(Refused::Expired),
            Some(t) if t > longest => {
                return Err(Refused::Unauthorized(
                    "the backend's expire_at is further away than jwt.max_lifetime".into(),
                ));
            }
            Some(t) => t,
            None => longest,
        };
        let claims = Claims {
            sub: Arc::from(answer.sub),
            exp,
            topics: parse("topics", &answer.topics)?,
            publish: parse("publish", &answer.publish)?,
            presence: parse("presence", &answer.presence)?,
            info: answer.info.map(Arc::from),
        };
        // Revocations by `sub` and `issued_before` cover the session.
        Ok((
            claims,
            TokenId {
                jti: None,
                iat: Some(now),
            },
        ))
    }

    /// Asks the subscribe hook about `topic`.
    ///
    /// # Errors
    /// [`Refused`].
    pub async fn subscribe(
        &self,
        claims: &Claims,
        session: &str,
        topic: &Topic,
    ) -> Result<(), Refused> {
        let Some(hook) = &self.subscribe else {
            return Ok(());
        };
        #[derive(Serialize)]
        struct Ask<'a> {
            sub: &'a str,
            session: &'a str,
            topic: &'a str,
            info: Option<&'a RawValue>,
        }
        let body = serde_json::to_vec(&Ask {
            sub: &claims.sub,
            session,
            topic: topic.as_str(),
            info: claims.info.as_deref(),
        })
        .map_err(|e| Refused::Unavailable(e.to_string()))?;
        self.call(hook, body.into()).await.map(|_| ())
    }

    /// Sends a client publish to the publish hook: `None` publishes it as
    /// sent, `Some` the backend's replacement `data`.
    ///
    /// # Errors
    /// [`Refused`].
    pub async fn publish(
        &self,
        claims: &Claims,
        session: &str,
        topic: &Topic,
        data: &Payload<'_>,
    ) -> Result<Option<Box<RawValue>>, Refused> {
        let Some(hook) = &self.publish else {
            return Ok(None);
        };
        #[derive(Serialize)]
        struct Ask<'a> {
            sub: &'a str,
            session: &'a str,
            topic: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<&'a RawValue>,
            #[serde(skip_serializing_if = "Option::is_none")]
            data_b64: Option<String>,
            info: Option<&'a RawValue>,
        }
        let (json, b64) = match data {
            Payload::Json(raw) => (Some(&**raw), None),
            Payload::Bytes(bytes) => {
                use base64::Engine;
                (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                )
            }
        };
        let body = serde_json::to_vec(&Ask {
            sub: &claims.sub,
            session,
            topic: topic.as_str(),
            data: json,
            data_b64: b64,
            info: claims.info.as_deref(),
        })
        .map_err(|e| Refused::Unavailable(e.to_string()))?;
        let answer = self.call(hook, body.into()).await?;
        let answer: PublishAnswer =
            serde_json::from_slice(&answer).map_err(|e| self.malformed(hook, &e.to_string()))?;
        Ok(answer.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breaker_opens_after_failures_in_a_row_and_a_success_resets_it() {
        let b = Breaker::default();
        for _ in 0..TRIP_AFTER - 1 {
            b.failure();
        }
        assert!(!b.open());
        b.success();
        for _ in 0..TRIP_AFTER - 1 {
            b.failure();
        }
        assert!(!b.open(), "the count started over");
        b.failure();
        assert!(b.open());
        *b.open_until.lock().unwrap() = Some(Instant::now());
        assert!(!b.open(), "closed again after OPEN_FOR");
        b.failure();
        assert!(b.open(), "one more failure opens it again");
    }

    #[test]
    fn connect_requests_carry_the_named_headers_and_the_query() {
        let request = http::Request::get("/ws?room=a%20b&x")
            .header("cookie", "sid=1")
            .header("x-other", "no")
            .body(())
            .unwrap();
        let names = [http::header::COOKIE, http::header::AUTHORIZATION];
        let peer = Some("127.0.0.1:5".parse().unwrap());
        let c = ConnectRequest::of(request.headers(), request.uri(), &names, peer);
        assert_eq!(c.headers.get("cookie").map(String::as_str), Some("sid=1"));
        assert_eq!(c.headers.len(), 1);
        assert_eq!(c.query.get("room").map(String::as_str), Some("a b"));
        assert_eq!(c.query.get("x").map(String::as_str), Some(""));
        assert_eq!(c.remote_addr.as_deref(), Some("127.0.0.1:5"));
    }
}
