//! Herald from Rust services: publish over the admin API, subscribe over
//! WebSocket with recovery, and mint the tokens clients connect with.
//!
//! - [`Publisher`]: publish (JSON or bytes), batches, history, presence,
//!   disconnect, revoke, stats. Every publish carries an `idempotency_key`,
//!   so the retries it makes on 503 and lost requests, after the server's
//!   `Retry-After`, deliver an event once. Errors are [`Error`] with the
//!   gateway's code.
//! - [`Client`]: a subscriber that yields every event of its topics once and
//!   in order across reconnects, node loss and token expiry (protocol 2,
//!   JSON or MessagePack), with the close-code table of the gateway's
//!   `docs/protocol.md`.
//! - [`TokenBuilder`]: the claims Herald reads, signed with HS256, RS256,
//!   ES256 or EdDSA.
//!
//! The load generator (`herald-loadtest`) keeps its own lean client: it
//! must cost far less per delivery than the server it measures, so it reads
//! only the numbers it put into each event with a byte scan, where this
//! crate decodes every frame in full.

mod client;
mod error;
mod publisher;
mod random;
mod token;

pub use client::{
    Action, Client, ClientBuilder, Message, Protocol, Token, close_action, handshake_action,
};
pub use error::Error;
pub use publisher::{Data, Publication, Publisher, RetryPolicy, Revoke};
pub use token::TokenBuilder;
