//! The WebSocket wire: RFC 6455 framing ([`codec`]), permessage-deflate
//! ([`deflate`]) and batched sends over `io_uring` ([`uring`]).
//!
//! The lowest layer of the gateway: it knows bytes and frames, not
//! sessions, topics or HTTP. Everything above (the outbox, the hub, the
//! session, the HTTP upgrade in [`crate::ws`]) imports from here; nothing
//! here imports from them.

pub mod codec;
pub mod deflate;
pub mod uring;
