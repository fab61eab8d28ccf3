//! Integration tests of the gateway: real WebSocket and HTTP clients against
//! gateways on port-0 listeners (in process), and the binary itself.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod admin;
mod centrifugo;
mod cluster;
mod common;
mod compound;
mod compression;
mod docs;
mod frames;
mod ha;
mod handshake;
mod hooks;
mod jwks;
mod limits;
mod presence;
mod process;
mod protocol2;
mod recovery;
mod security;
mod timing;
mod tls;
mod webhooks;
