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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::Bytes;
use herald_protocol::CloseCode;

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
}

/// What happened to a pushed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// The queue overflowed: this many events were discarded and the
    /// connection is being closed with 4004.
    Overflow(usize),
    /// The connection is closing; the event was not queued.
    Closed,
}

/// A connection's outbound queue, shared by the hub and the connection task.
#[derive(Debug)]
pub struct Outbox {
    /// Node-local session number; the hub's key.
    pub id: u64,
    /// The token's `sub`, for disconnects by user.
    pub sub: Arc<str>,
    /// permessage-deflate, when the connection negotiated it.
    pub deflate: Option<crate::ws::deflate::Deflate>,
    /// The session's current token, for revocations.
    pub token: crate::revocations::TokenStamp,
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
            token: crate::revocations::TokenStamp::new(None, None),
            limit,
            state: Mutex::new(State::default()),
        }
    }

    /// Marks the connection as compressing (set before the outbox is shared).
    pub fn with_deflate(mut self, deflate: Option<crate::ws::deflate::Deflate>) -> Outbox {
        self.deflate = deflate;
        self
    }

    /// The frame of a text message for this connection.
    pub fn text_frame(&self, payload: &[u8]) -> bytes::Bytes {
        crate::ws::codec::text_frame_for(payload, self.deflate)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock
        // (a panic elsewhere) is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an event frame, enforcing the slow-consumer bound.
    pub fn push_event(&self, frame: &Bytes, received: Instant) -> Pushed {
        let waker;
        let result;
        {
            let mut s = self.lock();
            if s.close.is_some() {
                return Pushed::Closed;
            }
            if s.events >= self.limit {
                let dropped = s.events + 1;
                s.queue = VecDeque::new();
                s.events = 0;
                s.close = Some(CloseCode::SlowConsumer);
                result = Pushed::Overflow(dropped);
            } else {
                s.queue.push_back(Item {
                    frame: frame.clone(),
                    received: Some(received),
                });
                s.events += 1;
                result = Pushed::Queued;
            }
            waker = s.waker.take();
        }
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
            let dropped = s.events;
            s.queue = VecDeque::new();
            s.events = 0;
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

    /// The pending close request, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.lock().close
    }

    /// Moves every queued frame into `into` (which should be empty), or
    /// registers the task to be woken by the next push when there is none.
    /// Returns a close request if one is pending, without moving frames.
    pub fn take(&self, into: &mut VecDeque<Item>, cx: &mut Context<'_>) -> Option<CloseCode> {
        let mut s = self.lock();
        if s.close.is_some() {
            return s.close;
        }
        if s.queue.is_empty() {
            if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                s.waker = Some(cx.waker().clone());
            }
        } else {
            std::mem::swap(&mut s.queue, into);
            s.events = 0;
        }
        None
    }

    /// Empties the queue: returns the replies in it and how many events were
    /// discarded. Used when closing, even after a close was requested.
    pub fn drain_replies(&self) -> (Vec<Item>, usize) {
        let mut s = self.lock();
        let queue = std::mem::take(&mut s.queue);
        let events = std::mem::take(&mut s.events);
        let replies = queue.into_iter().filter(|i| i.received.is_none()).collect();
        (replies, events)
    }

    /// Discards whatever is queued, returning how many events that was.
    pub fn discard(&self) -> usize {
        self.drain_replies().1
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
        let o = Outbox::new(1, Arc::from("a"), 3);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(o.push_event(&frame(), now), Pushed::Queued);
        }
        o.push_reply(frame()); // replies do not count
        assert_eq!(o.push_event(&frame(), now), Pushed::Overflow(4));
        assert_eq!(o.close_requested(), Some(CloseCode::SlowConsumer));
        assert_eq!(o.push_event(&frame(), now), Pushed::Closed);
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
        let o = Outbox::new(1, Arc::from("a"), 10);
        let mut into = VecDeque::new();
        assert_eq!(o.take(&mut into, &mut cx), None);
        assert!(into.is_empty());
        o.push_event(&frame(), Instant::now());
        o.push_event(&frame(), Instant::now());
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "one wake per registration"
        );
        o.take(&mut into, &mut cx);
        assert_eq!(into.len(), 2);
        assert!(o.close(CloseCode::Disconnected));
        assert!(!o.close(CloseCode::Restart), "first close wins");
        assert_eq!(
            o.take(&mut VecDeque::new(), &mut cx),
            Some(CloseCode::Disconnected)
        );
    }
}
