//! The socket side of a session: reading and decoding frames, writing queued
//! frames, and the close handshake, all in the session's one task.
//!
//! Memory per idle connection is what this file is about:
//! - reads go into a per-thread buffer; only the bytes of an unfinished frame
//!   are copied into the connection (and freed once the frame completes);
//! - writes take the outbox's whole queue and hand it to the kernel with one
//!   vectored write, straight from the shared event bytes (no copy); on
//!   plain TCP the hub also writes a quiet connection's events itself
//!   ([`crate::outbox`], inline writes), and a frame it started is taken
//!   back with its offset;
//! - one task per connection, polled by a single `poll_step`, so there is no
//!   reader/writer task pair and no channel between them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use herald_core::Metrics;
use herald_core::metrics::DropReason;
use herald_protocol::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use crate::outbox::{Item, Outbox};
use crate::wire::codec::{Decoder, Message, close_frame};

/// Bytes read per `read` call, into the per-thread buffer.
const READ_CHUNK: usize = 16 * 1024;
/// Frames handed to one vectored write.
const MAX_IOVECS: usize = 64;

thread_local! {
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// What woke the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Complete messages are waiting in the inbox.
    Messages,
    /// The session timer fired.
    Timer,
    /// Close the connection with this code (requested, or a protocol error).
    Close(CloseCode),
    /// The peer went away or the socket failed.
    Gone,
}

enum ReadOutcome {
    Decoded,
    Partial,
    Eof,
    Failed(CloseCode),
}

/// A WebSocket connection's I/O state.
pub struct Conn<S> {
    io: S,
    decoder: Decoder,
    /// Bytes of an unfinished frame; empty (and unallocated) when idle.
    pending: BytesMut,
    /// Decoded messages not yet handled.
    pub inbox: VecDeque<Message>,
    writing: VecDeque<Item>,
    /// Bytes of `writing[0]` already written.
    offset: usize,
    /// A protocol error met after valid messages: reported once those are
    /// handled, so a client's last good message is still processed.
    failed: Option<CloseCode>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps `io`; `initial` holds bytes read past the HTTP upgrade, if any.
    pub fn new(io: S, decoder: Decoder, initial: &[u8]) -> Conn<S> {
        Conn {
            io,
            decoder,
            pending: BytesMut::from(initial),
            inbox: VecDeque::new(),
            writing: VecDeque::new(),
            offset: 0,
            failed: None,
        }
    }

    /// Frees the inbox and the write queue when they are empty: what a
    /// message and the last write left allocated (a pong allocates
    /// nothing: the decoder only notes it).
    pub fn release_idle(&mut self) {
        self.inbox = VecDeque::new();
        if self.writing.is_empty() {
            self.writing = VecDeque::new();
        }
    }

    /// Decodes bytes that arrived with the upgrade request.
    ///
    /// # Errors
    /// The close code for a protocol error.
    pub fn decode_initial(&mut self) -> Result<(), CloseCode> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let used = self.decoder.decode(&self.pending, &mut self.inbox)?;
        self.pending.advance(used);
        if self.pending.is_empty() {
            self.pending = BytesMut::new();
        }
        Ok(())
    }

    /// Polls for the next thing the session must act on, writing queued frames
    /// as the socket accepts them meanwhile.
    pub fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &Outbox,
        sleep: Pin<&mut Sleep>,
        metrics: &Metrics,
    ) -> Poll<Step> {
        if !self.inbox.is_empty() {
            return Poll::Ready(Step::Messages);
        }
        if let Some(code) = self.failed.take() {
            return Poll::Ready(Step::Close(code));
        }
        if let Some(code) = outbox.close_requested() {
            return Poll::Ready(Step::Close(code));
        }
        loop {
            if self.writing.is_empty() {
                if let Some(code) = outbox.take(&mut self.writing, &mut self.offset, cx) {
                    return Poll::Ready(Step::Close(code));
                }
                if self.writing.is_empty() {
                    // A TLS stream may hold ciphertext its socket did not
                    // take yet: pushed out now that nothing else is queued
                    // (plain TCP has none: ready at once).
                    if let Poll::Ready(Err(_)) = Pin::new(&mut self.io).poll_flush(cx) {
                        return Poll::Ready(Step::Gone);
                    }
                    break;
                }
            }
            match self.poll_write_some(cx, metrics) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Step::Gone),
                Poll::Pending => break,
            }
        }
        loop {
            match self.poll_read(cx) {
                Poll::Ready(ReadOutcome::Decoded) => return Poll::Ready(Step::Messages),
                Poll::Ready(ReadOutcome::Partial) => {}
                Poll::Ready(ReadOutcome::Eof) => return Poll::Ready(Step::Gone),
                Poll::Ready(ReadOutcome::Failed(code)) => return Poll::Ready(Step::Close(code)),
                Poll::Pending => break,
            }
        }
        if sleep.poll(cx).is_ready() {
            return Poll::Ready(Step::Timer);
        }
        Poll::Pending
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<ReadOutcome> {
        READ_BUF.with_borrow_mut(|buf| {
            let mut rb = ReadBuf::new(buf);
            if ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb)).is_err() {
                return Poll::Ready(ReadOutcome::Eof);
            }
            let filled = rb.filled();
            if filled.is_empty() {
                return Poll::Ready(ReadOutcome::Eof);
            }
            let before = self.inbox.len();
            let result = if self.pending.is_empty() {
                self.decoder.decode(filled, &mut self.inbox).map(|used| {
                    if used < filled.len() {
                        self.pending.extend_from_slice(&filled[used..]);
                    }
                })
            } else {
                self.pending.extend_from_slice(filled);
                self.decoder
                    .decode(&self.pending, &mut self.inbox)
                    .map(|used| {
                        self.pending.advance(used);
                        if self.pending.is_empty() {
                            self.pending = BytesMut::new();
                        }
                    })
            };
            Poll::Ready(match result {
                Err(code) if self.inbox.len() > before => {
                    self.failed = Some(code);
                    ReadOutcome::Decoded
                }
                Err(code) => ReadOutcome::Failed(code),
                Ok(()) if self.inbox.len() > before => ReadOutcome::Decoded,
                // A pong alone: the client was seen, the inbox stays empty.
                Ok(()) if self.decoder.take_pong() => ReadOutcome::Decoded,
                Ok(()) => ReadOutcome::Partial,
            })
        })
    }

    /// One vectored write of the queued frames.
    fn poll_write_some(
        &mut self,
        cx: &mut Context<'_>,
        metrics: &Metrics,
    ) -> Poll<std::io::Result<()>> {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut count = 0;
        for (i, item) in self.writing.iter().take(MAX_IOVECS).enumerate() {
            let bytes = if i == 0 {
                &item.frame[self.offset..]
            } else {
                &item.frame[..]
            };
            slices[i] = IoSlice::new(bytes);
            count += 1;
        }
        let mut written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
        if written == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        let now = Instant::now();
        while let Some(front) = self.writing.front() {
            let left = front.frame.len() - self.offset;
            if written < left {
                self.offset += written;
                break;
            }
            written -= left;
            self.offset = 0;
            if let Some(received) = front.received {
                metrics.delivered(now.saturating_duration_since(received));
            }
            self.writing.pop_front();
        }
        if self.writing.is_empty() && self.writing.capacity() > 64 {
            self.writing = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Sends a Close with `code` behind what is already in the socket (queued
    /// events not yet started are discarded; queued replies are kept), waits for the client's Close or
    /// for `deadline`, then shuts the socket down.
    pub async fn close(
        &mut self,
        code: Option<u16>,
        reason: &str,
        outbox: &Outbox,
        metrics: &Metrics,
        deadline: Instant,
    ) {
        self.finish(close_frame(code, reason), true, outbox, metrics, deadline)
            .await;
    }

    /// Answers the client's Close (after the replies already queued) and
    /// shuts the socket down.
    pub async fn answer_close(
        &mut self,
        code: Option<u16>,
        outbox: &Outbox,
        metrics: &Metrics,
        deadline: Instant,
    ) {
        self.finish(close_frame(code, ""), false, outbox, metrics, deadline)
            .await;
    }

    /// Writes `close` behind the frame already started and the queued
    /// replies (an error the client should see before the close), discarding
    /// queued events; then, when `await_peer`, waits for the client's Close;
    /// then shuts the socket down; all by `deadline`.
    async fn finish(
        &mut self,
        close: Bytes,
        await_peer: bool,
        outbox: &Outbox,
        metrics: &Metrics,
        deadline: Instant,
    ) {
        let drained = outbox.drain_replies();
        // A frame the hub started writing inline is left only when nothing
        // was taken since (the task writes nothing while it holds frames).
        let started = if self.writing.is_empty() {
            drained.started
        } else {
            0
        };
        let dropped = self.keep_replies(drained.replies) + drained.events;
        if started > 0 {
            self.offset = started;
        }
        if dropped > 0 {
            metrics.dropped(DropReason::Closed, dropped as u64);
        }
        self.writing.push_back(Item {
            frame: close,
            received: None,
        });
        let deadline = tokio::time::Instant::from_std(deadline);
        let _ = tokio::time::timeout_at(deadline, self.flush(metrics)).await;
        if await_peer {
            let _ = tokio::time::timeout_at(deadline, self.await_peer_close()).await;
        }
        let _ = tokio::time::timeout_at(deadline, self.io.shutdown()).await;
    }

    /// Keeps the frame already started and every reply (in order, then
    /// `more`); drops the events. Returns how many events were dropped.
    fn keep_replies(&mut self, more: Vec<Item>) -> usize {
        let partial = if self.offset > 0 {
            self.writing.pop_front()
        } else {
            None
        };
        let before = self.writing.len() + more.len();
        self.writing.retain(|i| i.received.is_none());
        self.writing.extend(more);
        let dropped = before - self.writing.len();
        if let Some(p) = partial {
            self.writing.push_front(p);
        }
        dropped
    }

    async fn flush(&mut self, metrics: &Metrics) -> std::io::Result<()> {
        while !self.writing.is_empty() {
            std::future::poll_fn(|cx| self.poll_write_some(cx, metrics)).await?;
        }
        self.io.flush().await
    }

    /// Reads and discards until the client's Close frame or end of stream.
    async fn await_peer_close(&mut self) {
        loop {
            if self.inbox.iter().any(|m| matches!(m, Message::Close(_))) {
                return;
            }
            self.inbox.clear();
            let outcome = std::future::poll_fn(|cx| self.poll_read(cx)).await;
            if matches!(outcome, ReadOutcome::Eof | ReadOutcome::Failed(_)) {
                return;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// The next thing to act on: messages, the timer, a close, or the end.
    pub fn next_step<'a>(
        &'a mut self,
        outbox: &'a Outbox,
        sleep: Pin<&'a mut Sleep>,
        metrics: &'a Metrics,
    ) -> NextStep<'a, S> {
        NextStep {
            conn: self,
            outbox,
            sleep,
            metrics,
        }
    }
}

/// Polls `conn` for its next step; a named future so the session loop can
/// borrow the connection, the outbox and the timer together.
pub struct NextStep<'a, S> {
    /// The connection.
    pub conn: &'a mut Conn<S>,
    /// Its outbox.
    pub outbox: &'a Outbox,
    /// The session timer.
    pub sleep: Pin<&'a mut Sleep>,
    /// Where deliveries are counted.
    pub metrics: &'a Metrics,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for NextStep<'_, S> {
    type Output = Step;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Step> {
        let this = self.get_mut();
        this.conn
            .poll_step(cx, this.outbox, this.sleep.as_mut(), this.metrics)
    }
}
