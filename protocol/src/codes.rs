//! Error codes and close codes (contract §4–§6, §8), in one place.
//!
//! Every refusal the gateway or the admin API makes is named by an
//! [`ErrorCode`]; the code alone decides the wire string and the HTTP status, so
//! a handshake refusal, an error frame and an admin error can never disagree.

use std::fmt;

/// A contract error code, as sent in `{"type":"error","code":…}` frames and in
/// `{"error":{"code":…}}` HTTP bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, no or unknown `type`, a missing or mistyped field, a bad query.
    BadRequest,
    /// A topic that breaks the grammar of §3.
    InvalidTopic,
    /// The token does not permit this topic, or a refreshed token changed `sub`.
    Forbidden,
    /// The connection would hold more than `limits.max_subscriptions` topics.
    TooManySubscriptions,
    /// A message or published `data` larger than `limits.max_message_size`.
    TooLarge,
    /// The client's token bucket is empty.
    RateLimited,
    /// The broker did not accept the operation, or the node cannot serve.
    Unavailable,
    /// No token or key, or a bad one.
    Unauthorized,
    /// A token outside its `nbf`..`exp` window.
    TokenExpired,
    /// A handshake `Origin` not in `allowed_origins`.
    ForbiddenOrigin,
    /// The user already holds `limits.max_connections_per_user` sessions.
    TooManyConnections,
    /// An admin route that does not exist.
    NotFound,
    /// A method the admin route does not serve (answered with `Allow`).
    MethodNotAllowed,
    /// A bug or an unexpected failure; details are logged, never sent.
    Internal,
}

impl ErrorCode {
    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::ForbiddenOrigin => "forbidden_origin",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status used when this code refuses a handshake or an admin call.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidTopic => 400,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => 401,
            ErrorCode::Forbidden | ErrorCode::ForbiddenOrigin => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::TooLarge => 413,
            ErrorCode::TooManySubscriptions
            | ErrorCode::RateLimited
            | ErrorCode::TooManyConnections => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl ErrorCode {
    /// Every code, for lookups by wire string.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidTopic,
        ErrorCode::Forbidden,
        ErrorCode::TooManySubscriptions,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::ForbiddenOrigin,
        ErrorCode::TooManyConnections,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Internal,
    ];

    /// The code with wire string `s`, if any.
    pub fn from_wire(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl<'de> serde::Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        ErrorCode::from_wire(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code '{s}'")))
    }
}

/// A WebSocket close code the server sends (contract §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal close.
    Normal = 1000,
    /// The peer broke RFC 6455 framing (bad opcode, unmasked frame, …).
    ProtocolError = 1002,
    /// A frame of the wrong kind for the negotiated protocol (contract
    /// §10.1): text on MessagePack, binary on JSON protocol 2.
    UnsupportedData = 1003,
    /// Invalid UTF-8 in a text frame, or a MessagePack frame that is not
    /// one valid map.
    InvalidPayload = 1007,
    /// Rate limit exceeded repeatedly, or a binary frame.
    PolicyViolation = 1008,
    /// A message larger than `limits.max_message_size`.
    TooBig = 1009,
    /// Internal error.
    InternalError = 1011,
    /// The node is draining: reconnect now, with `since`.
    Restart = 1012,
    /// Token expired and not refreshed.
    TokenExpired = 4001,
    /// No frame from the client within `heartbeat.timeout`.
    HeartbeatTimeout = 4002,
    /// Disconnected by the admin API: do not reconnect automatically.
    Disconnected = 4003,
    /// Slow consumer: the client's queue overflowed.
    SlowConsumer = 4004,
    /// Refused at `connect` (the token in the first frame, contract §10.4);
    /// the close reason is the refusal's error code.
    ConnectRefused = 4005,
}

impl CloseCode {
    /// Every code, for metrics that are labelled by code.
    pub const ALL: [CloseCode; 13] = [
        CloseCode::Normal,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::PolicyViolation,
        CloseCode::TooBig,
        CloseCode::InternalError,
        CloseCode::Restart,
        CloseCode::TokenExpired,
        CloseCode::HeartbeatTimeout,
        CloseCode::Disconnected,
        CloseCode::SlowConsumer,
        CloseCode::ConnectRefused,
    ];

    /// The numeric code.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// The reason text sent in the Close frame.
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::UnsupportedData => "wrong frame kind for the protocol",
            CloseCode::InvalidPayload => "invalid payload",
            CloseCode::PolicyViolation => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::InternalError => "internal error",
            CloseCode::Restart => "reconnect now, with since",
            CloseCode::TokenExpired => "token expired",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::Disconnected => "disconnected",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::ConnectRefused => "unauthorized",
        }
    }

    /// Position in [`CloseCode::ALL`], for metric arrays.
    pub fn index(self) -> usize {
        CloseCode::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_round_trips_its_wire_string() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(ErrorCode::from_wire("nope"), None);
        assert_eq!(ErrorCode::MethodNotAllowed.http_status(), 405);
    }
}
