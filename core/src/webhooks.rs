//! Lifecycle webhooks (contract §10.6): the event types, what each one
//! carries, and the queue entry a broker keeps until the backend took it.
//!
//! An event is recorded where the change it reports is decided: by the
//! session's node when a session opens or closes, by the presence store
//! when a member joins or leaves, by the sweeper when a node died (its
//! sessions' `session.disconnected` with reason `node_lost`). It then waits
//! in its broker's queue (in memory, or a Redis stream) until the sender
//! (the gateway's `webhooks` module, run by one node at a time) has had a
//! 2xx for it or has given up after `webhooks.retry_for`.
//!
//! Invariants: an entry's `id` and `ts` are fixed when it is queued and its
//! body is rendered from them alone, so every retry sends the same bytes
//! and a receiver deduplicates by `id`; queues are bounded by
//! `webhooks.max_queue` (the oldest entries are dropped and counted).

use std::fmt::Write as _;

use serde_json::value::RawValue;

/// A webhook event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `session.connected`.
    Connected,
    /// `session.disconnected`.
    Disconnected,
    /// `presence.join`.
    Join,
    /// `presence.leave`.
    Leave,
    /// `topic.occupied`.
    Occupied,
    /// `topic.vacated`.
    Vacated,
}

impl Kind {
    /// Every type, in label order.
    pub const ALL: [Kind; 6] = [
        Kind::Connected,
        Kind::Disconnected,
        Kind::Join,
        Kind::Leave,
        Kind::Occupied,
        Kind::Vacated,
    ];

    /// The `type` of its body, and its metric label.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Connected => "session.connected",
            Kind::Disconnected => "session.disconnected",
            Kind::Join => "presence.join",
            Kind::Leave => "presence.leave",
            Kind::Occupied => "topic.occupied",
            Kind::Vacated => "topic.vacated",
        }
    }

    /// The type named `name`, as `webhooks.events` and queues write it.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name.trim())
    }

    /// Position in [`Kind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A set of types: those `webhooks.events` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Events(u8);

impl Events {
    /// No webhooks.
    pub const NONE: Events = Events(0);
    /// Every type.
    pub const ALL: Events = Events(0b11_1111);

    /// This set and `kind`.
    #[must_use]
    pub fn with(self, kind: Kind) -> Events {
        Events(self.0 | 1 << kind.index())
    }

    /// Whether `kind` is selected.
    pub fn has(self, kind: Kind) -> bool {
        self.0 & 1 << kind.index() != 0
    }

    /// Whether any type is: whether anything is recorded at all.
    pub fn any(self) -> bool {
        self.0 != 0
    }

    /// Whether a session must be recorded when it opens: its
    /// `session.connected`, or its `session.disconnected` (which needs the
    /// record when its node dies).
    pub fn sessions(self) -> bool {
        self.has(Kind::Connected) || self.has(Kind::Disconnected)
    }

    /// Whether topics held by nodes must be recorded (`topic.occupied` or
    /// `topic.vacated`).
    pub fn topics(self) -> bool {
        self.has(Kind::Occupied) || self.has(Kind::Vacated)
    }
}

/// What brokers are built with (from `[webhooks]`).
#[derive(Debug, Clone, Copy)]
pub struct WebhookSettings {
    /// The types recorded.
    pub events: Events,
    /// Most entries a queue holds (`webhooks.max_queue`).
    pub max_queue: usize,
    /// How long a topic stays empty before `topic.vacated`.
    pub vacated_delay: std::time::Duration,
}

impl Default for WebhookSettings {
    fn default() -> WebhookSettings {
        WebhookSettings {
            events: Events::NONE,
            max_queue: 100_000,
            vacated_delay: std::time::Duration::from_secs(5),
        }
    }
}

/// One event waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Unique, assigned when queued; the body's `id`.
    pub id: String,
    /// Its type.
    pub kind: Kind,
    /// Unix milliseconds when it was queued; the body's `ts`.
    pub ts: u64,
    /// The body's `data`: a JSON object.
    pub data: String,
    /// The session it is about, if any: events of one session are sent in
    /// queue order.
    pub session: Option<String>,
    /// The topic it is about, if any: likewise per topic.
    pub topic: Option<String>,
}

impl Queued {
    /// The POST body: `{"id","type","ts","data"}`.
    pub fn body(&self) -> String {
        let mut out = String::with_capacity(self.data.len() + 80);
        out.push_str("{\"id\":");
        push_str(&mut out, &self.id);
        let _ = write!(
            out,
            ",\"type\":\"{}\",\"ts\":{},\"data\":{}}}",
            self.kind.name(),
            self.ts,
            self.data
        );
        out
    }
}

/// A session as its node records it when it opens (see
/// [`crate::Broker::session_opened`]).
#[derive(Debug, Clone)]
pub struct SessionOpen {
    /// Its id, as in `welcome`.
    pub session: String,
    /// `session.connected`'s data, or `None` when that type is not sent.
    pub connected: Option<String>,
    /// The `session.disconnected` data to send should its node die
    /// (reason `node_lost`); empty when that type is not sent.
    pub lost: String,
}

impl SessionOpen {
    /// The record of a session of `sub` opening on `node`, with the
    /// backend's `info` (contract §10.6).
    pub fn new(
        events: Events,
        sub: &str,
        session: &str,
        node: &str,
        info: Option<&RawValue>,
    ) -> SessionOpen {
        let connected = events.has(Kind::Connected).then(|| {
            let mut data = session_fields(sub, session, node);
            data.push_str(",\"info\":");
            data.push_str(info.map_or("null", RawValue::get));
            data.push('}');
            data
        });
        SessionOpen {
            session: session.to_owned(),
            connected,
            lost: if events.has(Kind::Disconnected) {
                disconnected_data(sub, session, node, 1006, "node_lost")
            } else {
                String::new()
            },
        }
    }
}

/// `session.disconnected`'s data.
pub fn disconnected_data(sub: &str, session: &str, node: &str, code: u16, reason: &str) -> String {
    let mut data = session_fields(sub, session, node);
    let _ = write!(data, ",\"code\":{code},\"reason\":");
    push_str(&mut data, reason);
    data.push('}');
    data
}

/// `presence.join` / `presence.leave` data.
pub fn member_data(topic: &str, sub: &str, session: &str) -> String {
    let mut data = String::from("{\"topic\":");
    push_str(&mut data, topic);
    data.push_str(",\"sub\":");
    push_str(&mut data, sub);
    data.push_str(",\"session\":");
    push_str(&mut data, session);
    data.push('}');
    data
}

/// `topic.occupied` / `topic.vacated` data.
pub fn topic_data(topic: &str) -> String {
    let mut data = String::from("{\"topic\":");
    push_str(&mut data, topic);
    data.push('}');
    data
}

/// `{"sub":…,"session":…,"node":…` (unclosed).
fn session_fields(sub: &str, session: &str, node: &str) -> String {
    let mut data = String::from("{\"sub\":");
    push_str(&mut data, sub);
    data.push_str(",\"session\":");
    push_str(&mut data, session);
    data.push_str(",\"node\":");
    push_str(&mut data, node);
    data
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut String, s: &str) {
    // Serialising a str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_with_the_fixed_fields() {
        let info = RawValue::from_string(r#"{"plan":"pro"}"#.to_owned()).unwrap();
        let open = SessionOpen::new(Events::ALL, "ann\"", "s1", "n1", Some(&info));
        let q = Queued {
            id: "7-0".to_owned(),
            kind: Kind::Connected,
            ts: 12,
            data: open.connected.unwrap(),
            session: Some("s1".to_owned()),
            topic: None,
        };
        let v: serde_json::Value = serde_json::from_str(&q.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"7-0","type":"session.connected","ts":12,
                "data":{"sub":"ann\"","session":"s1","node":"n1","info":{"plan":"pro"}}})
        );
        let lost: serde_json::Value = serde_json::from_str(&open.lost).unwrap();
        assert_eq!(lost["reason"], "node_lost");
        assert_eq!(lost["code"], 1006);
        let m: serde_json::Value = serde_json::from_str(&member_data("t", "u", "s")).unwrap();
        assert_eq!(m, serde_json::json!({"topic":"t","sub":"u","session":"s"}));
    }

    #[test]
    fn event_sets_and_names() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
            assert!(Events::ALL.has(k));
            assert!(!Events::NONE.has(k));
        }
        let only = Events::NONE.with(Kind::Leave);
        assert!(only.has(Kind::Leave) && !only.has(Kind::Join) && !only.sessions());
        assert!(Events::NONE.with(Kind::Disconnected).sessions());
        assert_eq!(Kind::parse("session.nope"), None);
    }
}
