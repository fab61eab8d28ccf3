//! The Herald gateway node: WebSocket sessions authenticated by JWT, topic
//! subscriptions, the admin API and metrics, in one process.
//!
//! The data path, one module per step: [`server`] accepts connections,
//! [`ws`] performs the HTTP side of the upgrade, [`session`] runs one
//! client's socket and speaks its protocol, [`hub`] maps topics to local
//! sessions and fans events out through each session's [`outbox`], and
//! [`wire`] frames bytes (codec, compression, batched sends); the broker
//! ([`herald_core::AnyBroker`]) carries events between publishers and
//! nodes. [`node`] holds what they share; [`revocations`] the tokens it
//! refuses; [`auth`] checks tokens with the [`keys`] of the configuration,
//! which [`jwks`] keeps fresh when they come from a URL; [`proxy`] asks the
//! application's backend (through [`backend`]) where the configuration says
//! so, and [`webhooks`] sends it the lifecycle events the broker queued.
//! Layers import downwards only: `ws` → `session` → `hub` → `outbox` →
//! `wire`.

#![recursion_limit = "256"]

pub mod auth;
pub mod backend;
pub mod dev;
pub mod hub;
pub mod jwks;
pub mod keys;
pub mod node;
pub mod outbox;
pub mod proxy;
pub mod revocations;
pub mod server;
pub mod session;
pub mod tls;
pub mod webhooks;
pub mod wire;
pub mod ws;

pub use node::Node;
pub use server::{Listeners, run};
