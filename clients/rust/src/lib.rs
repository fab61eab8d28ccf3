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
//! The load generator (`herald-loadtest`) keeps its own lean client, for a
//! measured reason. 1,000 subscribers of one topic at 100 events/s receive
//! every delivery on either client: 99,818 and 100,036 deliveries/s, none
//! lost. The generator's client costs far less per subscriber: 5.2 s of CPU
//! and 17 MB against this crate's 17.9 s and 163 MB. It scans each frame
//! for the numbers it put there, where this crate decodes every frame and
//! runs a task, a socket buffer and a queue per `Client`. The command and
//! both rounds are in docs/benchmarks.md. For ordinary use (a service
//! holding a few subscribers) the rates are the same.

mod client;
mod error;
mod frames;
mod policy;
mod publisher;
mod random;
mod token;

pub use client::{Client, ClientBuilder, Message, Protocol, Token};
pub use error::Error;
pub use policy::{Action, close_action, handshake_action};
pub use publisher::{Data, Publication, Publisher, RetryPolicy, Revoke};
pub use token::TokenBuilder;
