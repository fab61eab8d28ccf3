//! `herald-loadtest`: the load generator and benchmark reporter.
//!
//! It opens real WebSocket connections (spread over source addresses and,
//! when needed, several processes, because a process here may hold at most
//! 20,000 files), publishes through the admin API or client frames, and
//! measures what every subscriber receives: deliveries per second,
//! publish→deliver latency percentiles from an HDR histogram, and lost,
//! duplicated and out-of-order events. With `--target raw` the same generator
//! measures any plain broadcast WebSocket server, so Herald can be compared
//! with a baseline in the same run.

pub mod admin;
pub mod procstat;
pub mod report;
pub mod scenarios;
pub mod settings;
pub mod token;
pub mod wsclient;
