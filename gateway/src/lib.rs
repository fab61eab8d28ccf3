//! The Herald gateway node: WebSocket sessions authenticated by JWT, topic
//! subscriptions, the admin API and metrics, in one process.
//!
//! The data path, one module per step: [`server`] accepts connections,
//! [`ws`] performs the handshake and frames the socket, [`session`] speaks
//! the protocol of one client, [`hub`] maps topics to local sessions and
//! fans events out through each session's [`outbox`]; the broker
//! ([`herald_core::AnyBroker`]) carries events between publishers and nodes. [`node`] holds what they share;
//! [`revocations`] the tokens it refuses.

#![recursion_limit = "256"]

pub mod auth;
pub mod dev;
pub mod hub;
pub mod node;
pub mod outbox;
pub mod revocations;
pub mod server;
pub mod session;
pub mod tls;
pub mod ws;

pub use node::Node;
pub use server::{Listeners, run};
