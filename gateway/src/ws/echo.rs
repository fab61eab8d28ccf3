//! The echo endpoint behind `test_echo_endpoint`: Herald's own WebSocket
//! stack (listener, handshake, codec, compression, close handshake) with the
//! protocol layer replaced by "send every message back", so an outside
//! conformance suite (Autobahn, via kosoku) can test exactly the code that
//! serves `/ws`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::node::{Node, Permit};
use crate::outbox::Outbox;
use crate::session::conn::{Conn, Step};
use crate::wire::codec::{self, Decoder, Message};
use crate::wire::deflate::Deflate;

/// An echo connection waiting for its socket.
pub(crate) struct EchoJob {
    pub node: Arc<Node>,
    pub deflate: Option<Deflate>,
    pub permit: Permit,
}

impl super::Job for EchoJob {
    fn run<S>(self, io: S, initial: Bytes) -> impl Future<Output = ()> + Send
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        run(io, initial, self.node, self.deflate, self.permit)
    }

    fn abandon(self) {}
}

async fn run<S>(io: S, initial: Bytes, node: Arc<Node>, deflate: Option<Deflate>, permit: Permit)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let decoder =
        Decoder::new(node.config.limits.max_message_size, true).with_deflate(deflate.is_some());
    let mut conn = Conn::new(io, decoder, &initial);
    let outbox = Outbox::new(0, Arc::from("echo"), usize::MAX).with_deflate(deflate);
    let sleep = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(sleep);
    let close = match conn.decode_initial() {
        Err(code) => Some(Some(code.as_u16())),
        Ok(()) => loop {
            let step = conn.next_step(&outbox, sleep.as_mut(), &node.metrics).await;
            match step {
                Step::Messages => {
                    let mut closed = None;
                    while let Some(message) = conn.inbox.pop_front() {
                        match message {
                            Message::Text(t) => {
                                let _ = outbox.push_reply(outbox.reply_frame(&t));
                            }
                            Message::Binary(b) => {
                                let _ = outbox.push_reply(codec::frame_for(
                                    codec::OP_BINARY,
                                    &b,
                                    deflate,
                                ));
                            }
                            Message::Ping(p) => {
                                let _ = outbox.push_reply(codec::pong_frame(&p));
                            }
                            Message::Close(code) => {
                                closed = Some(code);
                                break;
                            }
                        }
                    }
                    if let Some(code) = closed {
                        conn.answer_close(
                            code,
                            &outbox,
                            &node.metrics,
                            Instant::now() + Duration::from_secs(5),
                        )
                        .await;
                        break None;
                    }
                }
                Step::Timer => {
                    // Test-only endpoint, but it still leaves when the node drains.
                    if node.is_draining() {
                        break Some(Some(herald_protocol::CloseCode::Restart.as_u16()));
                    }
                    sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                Step::Close(code) => break Some(Some(code.as_u16())),
                Step::Gone => break None,
            }
        },
    };
    if let Some(code) = close {
        let reason = herald_protocol::CloseCode::ALL
            .iter()
            .find(|c| Some(c.as_u16()) == code)
            .map_or("", |c| c.reason());
        conn.close(
            code,
            reason,
            &outbox,
            &node.metrics,
            Instant::now() + Duration::from_secs(5),
        )
        .await;
    }
    drop(permit);
}
