//! The Herald wire protocol, shared by the gateway, the admin API and the load
//! generator, so that the three can never disagree on a frame, a topic rule or
//! a code.
//!
//! Nothing here does I/O. The types follow `shared/spec/CONTRACT.md` §3–§6;
//! a change here is a protocol change and bumps [`PROTOCOL_VERSION`].

pub mod centrifugo;
mod codes;
mod error_body;
mod frame;
pub mod msgpack;
mod presence;
pub mod record;
mod topic;

pub use codes::{CloseCode, ErrorCode};
pub use error_body::{ErrorBody, ErrorDetail};
pub use frame::{
    ClientFrame, FrameError, PROTOCOL_VERSION, ServerFrame, ServerFrameHead, parse_client_frame,
    payload,
};
pub use presence::{Info, Member, PublicMember};
pub use record::{MessageFrame, Payload};
pub use topic::{MAX_TOPIC_LEN, Permissions, Topic, TopicError, TopicPattern};
