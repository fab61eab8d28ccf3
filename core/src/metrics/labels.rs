//! The label values of the `herald_*` families: closed enums, so a label
//! never carries a user id, a topic or any other value from a request.
//! Each knows its label text and its index among its siblings (the
//! position of its pre-registered series in [`super::Metrics`]).

/// Outcome of a handshake, the `result` label of `herald_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// Upgraded.
    Accepted,
    /// 401 unauthorized.
    Unauthorized,
    /// 401 token_expired.
    TokenExpired,
    /// 403 forbidden_origin.
    ForbiddenOrigin,
    /// 429 too_many_connections (`limits.max_connections_per_user`).
    TooManyConnections,
    /// 503: at `max_connections` or draining.
    Unavailable,
    /// 400/426: not a WebSocket upgrade.
    BadRequest,
}

impl HandshakeResult {
    pub(super) const ALL: [HandshakeResult; 7] = [
        HandshakeResult::Accepted,
        HandshakeResult::Unauthorized,
        HandshakeResult::TokenExpired,
        HandshakeResult::ForbiddenOrigin,
        HandshakeResult::TooManyConnections,
        HandshakeResult::Unavailable,
        HandshakeResult::BadRequest,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeResult::Accepted => "accepted",
            HandshakeResult::Unauthorized => "unauthorized",
            HandshakeResult::TokenExpired => "token_expired",
            HandshakeResult::ForbiddenOrigin => "forbidden_origin",
            HandshakeResult::TooManyConnections => "too_many_connections",
            HandshakeResult::Unavailable => "unavailable",
            HandshakeResult::BadRequest => "bad_request",
        }
    }

    pub(super) fn index(self) -> usize {
        HandshakeResult::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// Why queued messages were thrown away, the `reason` label of
/// `herald_messages_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The client's queue overflowed (it is then closed with 4004).
    SlowConsumer,
    /// The session was closing and could not take them.
    Closed,
}

impl DropReason {
    pub(super) const ALL: [DropReason; 2] = [DropReason::SlowConsumer, DropReason::Closed];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::Closed => "closed",
        }
    }

    pub(super) fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Which backend hook was called, the `hook` label of the
/// `herald_proxy_*` families (contract §10.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHook {
    /// `proxy.connect_url`.
    Connect,
    /// `proxy.subscribe_url`.
    Subscribe,
    /// `proxy.publish_url`.
    Publish,
}

impl ProxyHook {
    pub(super) const ALL: [ProxyHook; 3] =
        [ProxyHook::Connect, ProxyHook::Subscribe, ProxyHook::Publish];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ProxyHook::Connect => "connect",
            ProxyHook::Subscribe => "subscribe",
            ProxyHook::Publish => "publish",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// How a hook call ended, the `result` label of
/// `herald_proxy_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyResult {
    /// A 2xx the node used.
    Ok,
    /// 401: the backend refused the connection.
    Unauthorized,
    /// 403: the backend refused.
    Forbidden,
    /// Any other status, a malformed reply, or no connection.
    Error,
    /// No answer within `proxy.timeout`.
    Timeout,
    /// Not called: the backend is failing (the breaker is open) or too
    /// many calls are in flight.
    Shed,
}

impl ProxyResult {
    pub(super) const ALL: [ProxyResult; 6] = [
        ProxyResult::Ok,
        ProxyResult::Unauthorized,
        ProxyResult::Forbidden,
        ProxyResult::Error,
        ProxyResult::Timeout,
        ProxyResult::Shed,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ProxyResult::Ok => "ok",
            ProxyResult::Unauthorized => "unauthorized",
            ProxyResult::Forbidden => "forbidden",
            ProxyResult::Error => "error",
            ProxyResult::Timeout => "timeout",
            ProxyResult::Shed => "shed",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// How a webhook delivery attempt ended, the `result` label of
/// `herald_webhooks_total` (contract §10.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// The backend answered 2xx: the event left the queue.
    Ok,
    /// An attempt failed (non-2xx, timeout, no connection); retried.
    Retry,
    /// Given up after `webhooks.retry_for`: removed unsent.
    Expired,
    /// Removed unsent to keep the queue within `webhooks.max_queue`.
    Dropped,
}

impl WebhookResult {
    pub(super) const ALL: [WebhookResult; 4] = [
        WebhookResult::Ok,
        WebhookResult::Retry,
        WebhookResult::Expired,
        WebhookResult::Dropped,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            WebhookResult::Ok => "ok",
            WebhookResult::Retry => "retry",
            WebhookResult::Expired => "expired",
            WebhookResult::Dropped => "dropped",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}
