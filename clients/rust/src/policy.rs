//! When and how soon a subscriber reconnects: the close-code table of the
//! gateway's docs/protocol.md (with 4005's refusal reasons) and refused
//! handshakes. Pure functions, so the table is tested entry by entry; the
//! client only acts on what they answer.

/// What a close (or a refused handshake) asks of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// End for good.
    Stop,
    /// Reconnect at once.
    Now,
    /// Reconnect after a backoff.
    Backoff,
    /// Reconnect with a fresh token.
    Refresh,
    /// Reconnect after a backoff, at most `max_faults` times in a row.
    Fault,
}

/// The close-code table of docs/protocol.md (with 4005's refusal reasons).
pub fn close_action(code: u16, reason: &str) -> Action {
    match code {
        4005 => match reason {
            "unauthorized" | "token_expired" => Action::Refresh,
            "too_many_connections" | "unavailable" => Action::Backoff,
            _ => Action::Stop,
        },
        1000 | 4003 => Action::Stop,
        1012 => Action::Now,
        4001 => Action::Refresh,
        1002 | 1003 | 1007 | 1008 | 1009 => Action::Fault,
        _ => Action::Backoff,
    }
}

/// What a refused handshake (its HTTP status) asks of the client.
pub fn handshake_action(status: u16) -> Action {
    match status {
        401 => Action::Refresh,
        403 => Action::Stop,
        400 | 426 => Action::Fault,
        _ => Action::Backoff,
    }
}
