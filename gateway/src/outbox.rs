//! The bounded queue between the hub and one connection, and the connection's
//! mailbox for close requests.
//!
//! The hub pushes already-encoded frames (the same `Bytes` for every
//! subscriber of an event) while holding its shard lock, so a push is a few
//! instructions under a short mutex and never waits. The connection task takes
//! the whole queue at once and writes it with one vectored write.
//!
//! **Slow consumers.** Events are bounded by `limits.client_queue`. The push
//! that would exceed it discards the queue at once (its memory is freed, not
//! kept for later), marks the outbox closed with 4004 and wakes the
//! connection, which writes the Close behind whatever is already in the socket.
//! Nothing is ever pushed to a closed outbox, so a stuck client costs the node
//! no more than one full queue, once.
//!
//! Replies to the client's own requests are not counted against the bound:
//! they are limited by the client's rate limit instead.
//!
//! **Inline writes.** A plain TCP connection's socket is kept here (the
//! session task reaches it through [`crate::session::tcp::SharedTcp`]). When an
//! event is pushed while nothing is queued and the task is not writing, and
//! the hub's pace allows it (`crate::hub` pace: only while the node is not
//! busy, where the queue's batching is worth more), the
//! pusher writes the frame to the socket itself, under the outbox lock,
//! with one non-blocking `write` (a fan-out sends to a batch of sockets at
//! once, each outbox held by a [`Claim`] until its send has completed: see
//! `crate::hub`'s inline writes): a quiet topic's event reaches the client
//! without a task wake-up and a scheduling round per subscriber. Whatever
//! the socket does not take at once (a full send buffer, a partial write,
//! an error) is queued as before and the task is woken, so a slow client
//! still costs the pusher one failed `write` and is bounded by the queue.
//! Order holds because an inline write happens only when the queue is empty
//! and the task holds nothing unwritten (`busy` is false), both checked and
//! acted on under the lock. A partially written frame stays at the head of
//! the queue with its offset (`started`) and is never discarded, so the
//! stream is never cut mid-frame.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::Bytes;
use herald_core::Metrics;
use herald_protocol::CloseCode;
use tokio::net::TcpStream;

/// One encoded frame waiting for the socket.
#[derive(Debug, Clone)]
pub struct Item {
    /// The complete WebSocket frame.
    pub frame: Bytes,
    /// For events: when the node received it from the broker (for the latency
    /// histogram and the delivered counter). `None` for replies.
    pub received: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Item>,
    /// Events in `queue` (replies excluded).
    events: usize,
    close: Option<CloseCode>,
    waker: Option<Waker>,
    /// The task took frames and may not have written them all yet.
    busy: bool,
    /// Bytes of `queue[0]` already written by an inline write (0: none).
    started: u32,
}

impl State {
    /// Whether an event can go straight to the socket: nothing queued, and
    /// the task holds nothing it took and has not written.
    fn writable_inline(&self) -> bool {
        !self.busy && self.queue.is_empty()
    }

    /// Discards the queue (its memory too), except a frame already started,
    /// which must be finished before anything else is written; returns how
    /// many events were discarded.
    fn discard(&mut self) -> usize {
        let head = if self.started > 0 {
            self.queue.pop_front()
        } else {
            None
        };
        let mut events = self.events;
        self.queue = VecDeque::new();
        self.events = 0;
        if let Some(head) = head {
            if head.received.is_some() {
                events = events.saturating_sub(1);
                self.events = 1;
            }
            self.queue.push_back(head);
        }
        events
    }
}

/// What happened to a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written to the socket at once (and counted as delivered).
    Written,
    /// Queued.
    Queued,
    /// The queue overflowed: this many events were discarded and the
    /// connection is being closed with 4004.
    Overflow(usize),
    /// The connection is closing; the event was not queued.
    Closed,
}

/// What [`Outbox::try_claim`] did.
#[derive(Debug)]
pub enum Claimed<'a> {
    /// Locked, nothing ahead of the event: write it, then [`Claim::finish`].
    Inline(Claim<'a>),
    /// Settled at once (queued, overflowed, or the connection closing).
    Done(Pushed),
    /// Another thread holds the lock.
    Contended,
}

/// An outbox locked for an inline write: nothing queued, the task not
/// writing, the connection open. The lock is held until [`Claim::finish`],
/// so nothing else writes to the socket meanwhile.
#[derive(Debug)]
pub struct Claim<'a> {
    outbox: &'a Outbox,
    socket: &'a TcpStream,
    state: MutexGuard<'a, State>,
}

impl<'a> Claim<'a> {
    /// The socket to write the event to.
    pub fn socket(&self) -> &'a TcpStream {
        self.socket
    }

    /// Ends the push after the socket took `written` bytes of `frame`: see
    /// [`Outbox::push_event`].
    pub fn finish(
        self,
        frame: &Bytes,
        received: Option<Instant>,
        written: usize,
        metrics: &Metrics,
    ) -> Pushed {
        self.outbox
            .settle(self.state, frame, received, written, metrics)
    }
}

/// What [`Outbox::drain_replies`] leaves to write before a Close.
#[derive(Debug)]
pub struct Drained {
    /// The frame already started (if `started` > 0), then the replies.
    pub replies: Vec<Item>,
    /// Bytes of `replies[0]` already written.
    pub started: usize,
    /// Events discarded.
    pub events: usize,
}

/// A connection's outbound queue, shared by the hub and the connection task.
#[derive(Debug)]
pub struct Outbox {
    /// Node-local session number; the hub's key.
    pub id: u64,
    /// The token's `sub`, for disconnects by user.
    pub sub: Arc<str>,
    /// permessage-deflate, when the connection negotiated it.
    pub deflate: Option<crate::wire::deflate::Deflate>,
    /// JSON text or MessagePack frames (the protocol it negotiated).
    pub encoding: crate::wire::codec::Encoding,
    /// The session's current token, for revocations.
    pub token: crate::revocations::TokenStamp,
    /// The connect hook's `info`, for its presence entries (boxed: a thin
    /// pointer, 8 bytes for the sessions that have none).
    pub info: Option<Box<herald_protocol::Info>>,
    /// The socket of a plain TCP connection, for inline writes.
    socket: Option<TcpStream>,
    /// When the client last sent a frame, in milliseconds of the node's
    /// heartbeat clock ([`crate::hub::beat`]): the session stores it, the
    /// heartbeat task reads it.
    pub seen: AtomicU64,
    limit: usize,
    state: Mutex<State>,
}

impl Outbox {
    /// An empty outbox holding at most `limit` events.
    pub fn new(id: u64, sub: Arc<str>, limit: usize) -> Outbox {
        Outbox {
            id,
            sub,
            deflate: None,
            encoding: crate::wire::codec::Encoding::Json,
            token: crate::revocations::TokenStamp::new(None, None),
            info: None,
            socket: None,
            seen: AtomicU64::new(0),
            limit,
            state: Mutex::new(State::default()),
        }
    }

    /// Marks the connection as compressing (set before the outbox is shared).
    pub fn with_deflate(mut self, deflate: Option<crate::wire::deflate::Deflate>) -> Outbox {
        self.deflate = deflate;
        self
    }

    /// Attaches the connect hook's `info` (before the outbox is shared).
    pub fn with_info(mut self, info: Option<herald_protocol::Info>) -> Outbox {
        self.info = info.map(Box::new);
        self
    }

    /// Sets the connection's encoding (before the outbox is shared).
    pub fn with_encoding(mut self, encoding: crate::wire::codec::Encoding) -> Outbox {
        self.encoding = encoding;
        self
    }

    /// Keeps the connection's socket here, so events can be written inline
    /// (set before the outbox is shared).
    pub fn with_socket(mut self, socket: TcpStream) -> Outbox {
        self.socket = Some(socket);
        self
    }

    /// The connection's socket, when it is plain TCP.
    pub fn socket(&self) -> Option<&TcpStream> {
        self.socket.as_ref()
    }

    /// The frame of a server message for this connection, from its JSON
    /// text (replies: events go through [`Outbox::event_frame`] or the
    /// hub's shared frames).
    pub fn reply_frame(&self, json: &[u8]) -> bytes::Bytes {
        self.encoding.reply_frame(json, self.deflate)
    }

    /// The frame of an event's record for this connection alone (a replay).
    pub fn event_frame(&self, record: &[u8]) -> bytes::Bytes {
        crate::wire::codec::FrameCache::new(record)
            .for_connection(self.encoding, self.deflate)
            .clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock
        // (a panic elsewhere) is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers an event frame: when `inline` (the hub's pace allows it),
    /// written to the socket at once if nothing is ahead of it; queued
    /// otherwise, enforcing the slow-consumer bound.
    pub fn push_event(
        &self,
        frame: &Bytes,
        received: Instant,
        metrics: &Metrics,
        inline: bool,
    ) -> Pushed {
        let s = self.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        let mut written = 0;
        if inline
            && let Some(socket) = &self.socket
            && s.writable_inline()
        {
            // An error or a full buffer: the task meets it again.
            written = socket.try_write(frame).unwrap_or(0);
        }
        self.settle(s, frame, Some(received), written, metrics)
    }

    /// Queues a control frame the session task did not make (a heartbeat
    /// ping from [`crate::hub::beat`]) and wakes the task to write it.
    /// Bounded like a reply, by the hard limit.
    pub fn push_control(&self, frame: &Bytes, metrics: &Metrics) -> Pushed {
        let s = self.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        self.settle(s, frame, None, 0, metrics)
    }

    /// Locks the outbox for an inline write as part of a batch, without
    /// waiting: [`Claimed::Contended`] when another thread holds the lock
    /// (the caller must then release every claim it holds before it
    /// [`push_event`](Outbox::push_event)s, so no two threads ever wait on
    /// each other); the event queued (or refused) at once when it cannot be
    /// written inline.
    /// `received` is `None` for a control frame (see
    /// [`push_control`](Outbox::push_control)).
    pub fn try_claim(
        &self,
        frame: &Bytes,
        received: Option<Instant>,
        metrics: &Metrics,
    ) -> Claimed<'_> {
        let s = match self.state.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Claimed::Contended,
        };
        if s.close.is_some() {
            return Claimed::Done(Pushed::Closed);
        }
        match &self.socket {
            Some(socket) if s.writable_inline() => Claimed::Inline(Claim {
                outbox: self,
                socket,
                state: s,
            }),
            _ => Claimed::Done(self.settle(s, frame, received, 0, metrics)),
        }
    }

    /// Ends a push under the lock: counts the event delivered when the
    /// socket took all of `frame`, queues it otherwise (cut after `written`
    /// bytes, if any), enforcing the slow-consumer bound, and wakes the
    /// task.
    fn settle(
        &self,
        mut s: MutexGuard<'_, State>,
        frame: &Bytes,
        received: Option<Instant>,
        written: usize,
        metrics: &Metrics,
    ) -> Pushed {
        if written > 0 && written >= frame.len() {
            drop(s);
            if let Some(received) = received {
                metrics.delivered(received.elapsed());
            }
            return Pushed::Written;
        }
        let started = u32::try_from(written).unwrap_or(0);
        // Events are bounded by the queue's limit; a control frame (a
        // heartbeat ping) only by the hard limit, like a reply.
        let full = match received {
            Some(_) => s.events >= self.limit,
            None => s.queue.len() >= self.hard_limit(),
        };
        let result = if full && started == 0 {
            let dropped = s.discard() + usize::from(received.is_some());
            s.close = Some(CloseCode::SlowConsumer);
            Pushed::Overflow(dropped)
        } else {
            s.queue.push_back(Item {
                frame: frame.clone(),
                received,
            });
            s.events += usize::from(received.is_some());
            if started > 0 {
                // The new head, cut by the socket.
                s.started = started;
            }
            Pushed::Queued
        };
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        result
    }

    /// Queues a reply or control frame for the connection's own client. The
    /// connection task calls this itself, so nobody needs waking.
    ///
    /// Replies do not count against `limits.client_queue` (the rate limit
    /// bounds them), only against the hard limit.
    pub fn push_reply(&self, frame: Bytes) -> Pushed {
        self.push_unbounded(Item {
            frame,
            received: None,
        })
    }

    /// Queues a replayed event (recovery from `since`). Replays are bounded by
    /// `history.size` per topic, not by the event limit, so a client catching
    /// up is not mistaken for a slow one; see [`Outbox::room`].
    pub fn push_replay(&self, frame: bytes::Bytes, received: Instant) -> Pushed {
        self.push_unbounded(Item {
            frame,
            received: Some(received),
        })
    }

    /// Most frames of any kind queued at once: beyond it, a client that is
    /// not reading what it asks for (pongs, replies, replays) is a slow
    /// consumer too, so no client can make the node buffer without bound.
    fn hard_limit(&self) -> usize {
        self.limit
            .saturating_mul(4)
            .max(self.limit.saturating_add(256))
    }

    /// Frames that can still be queued before the hard limit.
    pub fn room(&self) -> usize {
        self.hard_limit().saturating_sub(self.lock().queue.len())
    }

    fn push_unbounded(&self, item: Item) -> Pushed {
        let mut s = self.lock();
        if s.close.is_some() {
            return Pushed::Closed;
        }
        if s.queue.len() >= self.hard_limit() {
            let dropped = s.discard();
            s.close = Some(CloseCode::SlowConsumer);
            return Pushed::Overflow(dropped);
        }
        s.queue.push_back(item);
        Pushed::Queued
    }

    /// Asks the connection to close with `code` (first request wins); queued
    /// frames are discarded. Returns whether this call closed it.
    pub fn close(&self, code: CloseCode) -> bool {
        let waker = {
            let mut s = self.lock();
            if s.close.is_some() {
                return false;
            }
            s.close = Some(code);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Frees the queue's memory when nothing is queued, so an idle
    /// connection keeps none (the session calls it after its client's
    /// messages, at least once per heartbeat; never on the delivery path).
    pub fn trim(&self) {
        let mut s = self.lock();
        if s.queue.is_empty() && s.queue.capacity() > 0 {
            s.queue = VecDeque::new();
        }
    }

    /// The pending close request, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.lock().close
    }

    /// Moves every queued frame into `into` (which should be empty, and
    /// everything taken before written), setting `offset` to the bytes of
    /// its first frame already written; or, when there is none, registers
    /// the task to be woken by the next push and allows inline writes again.
    /// Returns a close request if one is pending, without moving frames.
    pub fn take(
        &self,
        into: &mut VecDeque<Item>,
        offset: &mut usize,
        cx: &mut Context<'_>,
    ) -> Option<CloseCode> {
        let mut s = self.lock();
        if s.close.is_some() {
            return s.close;
        }
        if s.queue.is_empty() {
            s.busy = false;
            if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.waker = Some(cx.waker().clone());
            }
        } else {
            std::mem::swap(&mut s.queue, into);
            s.events = 0;
            s.busy = true;
            *offset = std::mem::take(&mut s.started) as usize;
        }
        None
    }

    /// Empties the queue: returns the replies in it (a frame already
    /// started first, with its offset) and how many events were
    /// discarded. Used when closing, even after a close was requested.
    pub fn drain_replies(&self) -> Drained {
        let mut s = self.lock();
        let started = std::mem::take(&mut s.started) as usize;
        let mut queue = std::mem::take(&mut s.queue);
        let mut events = std::mem::take(&mut s.events);
        let head = if started > 0 { queue.pop_front() } else { None };
        if head.as_ref().is_some_and(|h| h.received.is_some()) {
            events = events.saturating_sub(1);
        }
        let replies = head
            .into_iter()
            .chain(queue.into_iter().filter(|i| i.received.is_none()))
            .collect();
        Drained {
            replies,
            started,
            events,
        }
    }

    /// Discards whatever is queued, returning how many events that was.
    pub fn discard(&self) -> usize {
        self.drain_replies().events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn frame() -> Bytes {
        Bytes::from_static(b"x")
    }

    #[test]
    fn overflow_discards_and_closes_with_4004() {
        let m = Metrics::new("n");
        let o = Outbox::new(1, Arc::from("a"), 3);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(o.push_event(&frame(), now, &m, true), Pushed::Queued);
        }
        o.push_reply(frame()); // replies do not count
        assert_eq!(o.push_event(&frame(), now, &m, true), Pushed::Overflow(4));
        assert_eq!(o.close_requested(), Some(CloseCode::SlowConsumer));
        assert_eq!(o.push_event(&frame(), now, &m, true), Pushed::Closed);
        assert_eq!(o.discard(), 0, "the queue was freed at overflow");
    }

    #[test]
    fn a_client_that_never_reads_cannot_grow_the_queue_forever() {
        let o = Outbox::new(1, Arc::from("a"), 10);
        let mut pushed = 0;
        while o.push_reply(frame()) == Pushed::Queued {
            pushed += 1;
            assert!(pushed <= 266, "the hard limit holds");
        }
        assert_eq!(pushed, 266);
        assert_eq!(o.close_requested(), Some(CloseCode::SlowConsumer));
        assert_eq!(o.push_replay(frame(), Instant::now()), Pushed::Closed);
    }

    #[test]
    fn take_registers_a_waker_only_when_empty() {
        let counter = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let m = Metrics::new("n");
        let o = Outbox::new(1, Arc::from("a"), 10);
        let mut into = VecDeque::new();
        assert_eq!(o.take(&mut into, &mut 0, &mut cx), None);
        assert!(into.is_empty());
        o.push_event(&frame(), Instant::now(), &m, true);
        o.push_event(&frame(), Instant::now(), &m, true);
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "one wake per registration"
        );
        o.take(&mut into, &mut 0, &mut cx);
        assert_eq!(into.len(), 2);
        assert!(o.close(CloseCode::Disconnected));
        assert!(!o.close(CloseCode::Restart), "first close wins");
        assert_eq!(
            o.take(&mut VecDeque::new(), &mut 0, &mut cx),
            Some(CloseCode::Disconnected)
        );
    }

    /// A connected pair: the server side in an outbox, the client side
    /// returned to read from.
    async fn socket_outbox(limit: usize) -> (Outbox, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Readiness is learnt from the reactor: wait for it once.
        server.writable().await.unwrap();
        let o = Outbox::new(1, Arc::from("a"), limit).with_socket(server);
        (o, client)
    }

    async fn read_exactly(client: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0; n];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.read_exact(&mut got),
        )
        .await
        .expect("the bytes arrive within 10 s")
        .unwrap();
        got
    }

    #[tokio::test]
    async fn a_quiet_connection_gets_events_written_inline_in_order() {
        let m = Metrics::new("n");
        let (o, mut client) = socket_outbox(10).await;
        let now = Instant::now();
        let (a, b) = (Bytes::from_static(b"first"), Bytes::from_static(b"second"));
        assert_eq!(o.push_event(&a, now, &m, true), Pushed::Written);
        assert_eq!(o.push_event(&b, now, &m, true), Pushed::Written);
        assert_eq!(read_exactly(&mut client, 11).await, b"firstsecond");
        // A reply queued by the task goes first: the next event waits behind it.
        o.push_reply(Bytes::from_static(b"reply"));
        assert_eq!(o.push_event(&a, now, &m, true), Pushed::Queued);
        // While the task holds frames it took, nothing is written inline.
        let counter = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(counter);
        let mut cx = Context::from_waker(&waker);
        let (mut into, mut offset) = (VecDeque::new(), 0);
        o.take(&mut into, &mut offset, &mut cx);
        assert_eq!((into.len(), offset), (2, 0));
        assert_eq!(o.push_event(&b, now, &m, true), Pushed::Queued);
        // Once everything taken was written and the queue is empty again,
        // inline writes resume.
        o.take(&mut VecDeque::new(), &mut offset, &mut cx);
        o.take(&mut VecDeque::new(), &mut offset, &mut cx);
        assert_eq!(o.push_event(&a, now, &m, true), Pushed::Written);
    }

    #[tokio::test]
    async fn a_frame_cut_by_a_full_socket_is_finished_whole_and_never_discarded() {
        let m = Metrics::new("n");
        let (o, mut client) = socket_outbox(3).await;
        let now = Instant::now();
        // Frames larger than the socket buffers: the first is cut.
        let frames: Vec<Bytes> = (0..4u8)
            .map(|i| Bytes::from(vec![b'a' + i; 8 << 20]))
            .collect();
        assert_eq!(o.push_event(&frames[0], now, &m, true), Pushed::Queued);
        let started = o.lock().started as usize;
        assert!(started > 0, "the socket took part of the first frame");
        assert_eq!(o.push_event(&frames[1], now, &m, true), Pushed::Queued);
        assert_eq!(o.push_event(&frames[2], now, &m, true), Pushed::Queued);
        // The overflow discards the queue but keeps the frame already started.
        assert_eq!(o.push_event(&frames[3], now, &m, true), Pushed::Overflow(3));
        let drained = o.drain_replies();
        assert_eq!(drained.started, started);
        assert_eq!(drained.replies.len(), 1);
        // The rest of the cut frame follows the bytes already sent: the
        // client sees one whole frame.
        let rest = drained.replies[0].frame.slice(started..);
        let reader = tokio::spawn(async move { read_exactly(&mut client, 8 << 20).await });
        let socket = o.socket().unwrap();
        let mut at = 0;
        while at < rest.len() {
            socket.writable().await.unwrap();
            match socket.try_write(&rest[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        let got = reader.await.unwrap();
        assert!(got.iter().all(|b| *b == b'a'), "one frame, whole, alone");
    }
}
