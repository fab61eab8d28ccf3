//! Heartbeats for every session of the node from one task: a timer wheel
//! that writes the pings and closes silent connections with 4002, so an
//! idle session has no timer of its own and is woken only by its client's
//! pong.
//!
//! **Why.** With a timer per session, each ping cost an idle connection two
//! task wake-ups (the timer, then the pong) and a write of its own; at a
//! million connections the heartbeat alone was more than a core
//! (docs/benchmarks.md, issue 27). Here the wheel's task turns every
//! [`tick`](Beat::tick) (at most 250 ms), takes the sessions due in that
//! slot, and writes their pings as one batch of inline writes
//! ([`InlineWrites::control`]: one `io_uring` submission per 64 sockets), the
//! way a fan-out writes an event. A connection that is not plain TCP (TLS),
//! or whose socket holds unwritten frames, gets its ping queued and its task
//! woken, as for an event.
//!
//! **Timing (contract §5).** A ping is written `heartbeat.interval` after
//! the last one (the first after the connection opened), up to one tick
//! late. A session is closed with 4002 when nothing came from its client for
//! `heartbeat.timeout`: never earlier (the session stores the real time of
//! its client's last frame in [`Outbox::seen`], and the wheel compares it
//! with the real time of the turn), and at most one tick later, plus
//! whatever delays the task's turn. Token expiry (`token_expiring`, 4001)
//! stays with the session's own timer, which fires once per token.
//!
//! **Invariants.**
//! - Each registered session is in exactly one slot until the wheel finds
//!   it closed or gone. The wheel keeps a [`Weak`] reference, so a closed
//!   connection's socket and buffers are freed at once; only its
//!   allocation waits for the wheel's next visit (at most one interval).
//! - An entry is placed in the slot of its due tick, never of a tick the
//!   wheel has already taken (the cursor moves under the slot's lock, and
//!   [`Beat::place`] checks it under the same lock). An entry due more
//!   than one turn of the wheel ahead is visited early and placed again.
//! - No lock is held across an await; the task holds one slot's lock only
//!   to take or add entries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_core::Metrics;
use herald_core::metrics::DropReason;
use herald_protocol::CloseCode;
use herald_protocol::centrifugo::{self as compat, Wire};
use tracing::Instrument;

use super::inline::InlineWrites;
use super::lock;
use crate::outbox::Outbox;
use crate::wire::codec::{self, Encoding};

/// Longest tick: the 4002 close is at most this late (contract: within 1 s).
const MAX_TICK: Duration = Duration::from_millis(250);

/// One session's place in the wheel.
struct Entry {
    outbox: Weak<Outbox>,
    /// When its next ping is due, in milliseconds of the wheel's clock.
    next_ping: u64,
}

/// The node's heartbeat wheel.
pub struct Beat {
    epoch: Instant,
    tick_ms: u64,
    interval_ms: u64,
    timeout_ms: u64,
    slots: Box<[Mutex<Vec<Entry>>]>,
    /// The next tick to take: entries are placed at this tick or later.
    cursor: AtomicU64,
    /// The ping of each encoding: a WebSocket Ping, or the Centrifugo
    /// protocol's empty reply (sent uncompressed: too short to compress).
    pings: [Bytes; 3],
    metrics: Arc<Metrics>,
}

impl Beat {
    /// A wheel for `interval` and `timeout` (`heartbeat.*`); its task is
    /// started by [`Beat::start`].
    pub fn new(interval: Duration, timeout: Duration, metrics: Arc<Metrics>) -> Beat {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let (interval_ms, timeout_ms) = (ms(interval), ms(timeout));
        // A quarter of the shorter period: a test's 100 ms heartbeat gets a
        // 25 ms tick, the default 25 s one gets MAX_TICK.
        let tick_ms = (interval_ms.min(timeout_ms) / 4).clamp(1, ms(MAX_TICK));
        // One turn covers the longer period, so a placed entry is normally
        // visited exactly when due.
        let slots = interval_ms
            .max(timeout_ms)
            .div_ceil(tick_ms)
            .saturating_add(2);
        let slots = usize::try_from(slots).unwrap_or(usize::MAX).min(1 << 16);
        let centrifugo = |wire| Encoding::Centrifugo(wire).frame(&compat::ping(wire), None);
        Beat {
            epoch: Instant::now(),
            tick_ms,
            interval_ms,
            timeout_ms,
            slots: (0..slots).map(|_| Mutex::new(Vec::new())).collect(),
            cursor: AtomicU64::new(0),
            pings: [
                codec::ping_frame(&[]),
                centrifugo(Wire::Json),
                centrifugo(Wire::Protobuf),
            ],
            metrics,
        }
    }

    /// Starts the wheel's task; it ends when the wheel is dropped.
    /// Must be called inside a Tokio runtime.
    pub fn start(beat: &Arc<Beat>) {
        let weak = Arc::downgrade(beat);
        let tick = beat.tick();
        tokio::spawn(
            async move {
                let mut timer = tokio::time::interval(tick);
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut due = Vec::new();
                loop {
                    timer.tick().await;
                    let Some(beat) = weak.upgrade() else { return };
                    beat.turn(Instant::now(), &mut due);
                }
            }
            .instrument(tracing::info_span!("heartbeat")),
        );
    }

    /// How often the wheel turns.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Milliseconds of the wheel's clock at `at`.
    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Records that `outbox`'s client sent a frame at `at`.
    pub fn seen(&self, outbox: &Outbox, at: Instant) {
        outbox.seen.store(self.ms(at), Ordering::Relaxed);
    }

    /// Registers a new session: its first ping is due one interval from
    /// now, its silence counted from now.
    pub fn add(&self, outbox: &Arc<Outbox>) {
        let now = self.ms(Instant::now());
        outbox.seen.store(now, Ordering::Relaxed);
        let next_ping = now.saturating_add(self.interval_ms);
        self.place(
            Entry {
                outbox: Arc::downgrade(outbox),
                next_ping,
            },
            next_ping,
        );
    }

    /// Puts `entry` in the slot of the tick at or after `due_ms` (never one
    /// already taken).
    fn place(&self, entry: Entry, due_ms: u64) {
        let wanted = due_ms.div_ceil(self.tick_ms);
        loop {
            let tick = wanted.max(self.cursor.load(Ordering::Acquire));
            let mut slot = lock(&self.slots[self.slot_of(tick)]);
            // The cursor moves under the lock of the slot it takes: checked
            // here, under the same lock, the tick is not taken yet.
            if self.cursor.load(Ordering::Acquire) <= tick {
                slot.push(entry);
                return;
            }
        }
    }

    fn slot_of(&self, tick: u64) -> usize {
        // The remainder is below the slot count, a usize.
        (tick % self.slots.len() as u64) as usize
    }

    /// Takes every tick up to `now`: closes the silent sessions, pings the
    /// due ones, and places each live one again. `due` is scratch space,
    /// kept by the caller so a turn does not allocate.
    pub fn turn(&self, now: Instant, due: &mut Vec<Arc<Outbox>>) {
        let now_ms = self.ms(now);
        let last = now_ms / self.tick_ms;
        loop {
            let tick = self.cursor.load(Ordering::Acquire);
            if tick > last {
                break;
            }
            let entries = {
                let mut slot = lock(&self.slots[self.slot_of(tick)]);
                self.cursor.store(tick + 1, Ordering::Release);
                std::mem::take(&mut *slot)
            };
            for mut entry in entries {
                let Some(outbox) = entry.outbox.upgrade() else {
                    continue;
                };
                if outbox.close_requested().is_some() {
                    continue;
                }
                let silent_until = outbox
                    .seen
                    .load(Ordering::Relaxed)
                    .saturating_add(self.timeout_ms);
                if now_ms >= silent_until {
                    outbox.close(CloseCode::HeartbeatTimeout);
                    continue;
                }
                if now_ms >= entry.next_ping {
                    entry.next_ping = now_ms.saturating_add(self.interval_ms);
                    due.push(outbox);
                }
                let next = entry.next_ping.min(silent_until);
                self.place(entry, next);
            }
        }
        self.ping(due);
    }

    /// Writes a ping to each of `due`, in batches, and empties it.
    fn ping(&self, due: &mut Vec<Arc<Outbox>>) {
        if due.is_empty() {
            return;
        }
        let mut writes = InlineWrites::control(&self.metrics);
        for outbox in due.iter() {
            let ping = match outbox.encoding {
                Encoding::Json | Encoding::Msgpack => &self.pings[0],
                Encoding::Centrifugo(Wire::Json) => &self.pings[1],
                Encoding::Centrifugo(Wire::Protobuf) => &self.pings[2],
            };
            writes.push(outbox, ping);
        }
        // A ping that overflows a stuck client's queue closes it with 4004,
        // discarding its queued events: counted like the fan-out's.
        let overflowed = writes.finish();
        if overflowed > 0 {
            self.metrics.dropped(DropReason::SlowConsumer, overflowed);
        }
        due.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// An outbox holding the server end of a loopback connection, and the
    /// client end.
    async fn connected() -> (Arc<Outbox>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let outbox = Outbox::new(1, "alice".into(), 8).with_socket(server);
        (Arc::new(outbox), client)
    }

    fn beat(interval_ms: u64, timeout_ms: u64) -> Beat {
        Beat::new(
            Duration::from_millis(interval_ms),
            Duration::from_millis(timeout_ms),
            Metrics::new("test"),
        )
    }

    #[tokio::test]
    async fn pings_each_interval_inline_and_closes_after_the_timeout() {
        let beat = beat(1_000, 3_000);
        assert_eq!(beat.tick(), Duration::from_millis(250));
        let (outbox, mut client) = connected().await;
        beat.add(&outbox);
        let start = beat.epoch;
        let mut due = Vec::new();
        let at = |ms: u64| start + Duration::from_millis(ms);

        beat.turn(at(900), &mut due);
        let mut buf = [0u8; 16];
        assert!(
            client.try_read(&mut buf).is_err(),
            "no ping before the interval"
        );
        beat.turn(at(1_250), &mut due);
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &[0x89, 0x00], "a Ping, written by the wheel");
        assert_eq!(outbox.close_requested(), None);

        // The client answers at 2.5 s: silence is counted from there.
        beat.seen(&outbox, at(2_500));
        beat.turn(at(5_400), &mut due);
        assert_eq!(outbox.close_requested(), None, "not before seen + timeout");
        beat.turn(at(5_500), &mut due);
        assert_eq!(
            outbox.close_requested(),
            Some(CloseCode::HeartbeatTimeout),
            "closed at seen + timeout"
        );
        // A closed session leaves the wheel.
        beat.turn(at(20_000), &mut due);
        let held: usize = beat.slots.iter().map(|s| lock(s).len()).sum();
        assert_eq!(held, 0);
    }

    #[tokio::test]
    async fn a_dropped_session_is_forgotten_and_its_socket_closed() {
        let beat = beat(1_000, 3_000);
        let (outbox, mut client) = connected().await;
        beat.add(&outbox);
        drop(outbox);
        // The wheel's weak reference does not keep the socket open.
        let mut buf = [0u8; 4];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "end of stream");
        beat.turn(beat.epoch + Duration::from_secs(2), &mut Vec::new());
        let held: usize = beat.slots.iter().map(|s| lock(s).len()).sum();
        assert_eq!(held, 0);
    }

    #[tokio::test]
    async fn a_socket_that_cannot_take_the_ping_gets_it_queued() {
        let beat = beat(1_000, 3_000);
        // No socket (as for TLS): the ping is queued for the task.
        let outbox = Arc::new(Outbox::new(1, "alice".into(), 8));
        beat.add(&outbox);
        beat.turn(beat.epoch + Duration::from_millis(1_250), &mut Vec::new());
        let drained = outbox.drain_replies();
        assert_eq!(drained.replies.len(), 1);
        assert_eq!(&drained.replies[0].frame[..], &[0x89, 0x00]);
        assert_eq!(drained.events, 0, "a ping is not an event");
    }

    #[test]
    fn an_entry_is_never_placed_behind_the_cursor() {
        let beat = beat(1_000, 3_000);
        beat.cursor.store(100, Ordering::Release);
        let outbox = Arc::new(Outbox::new(1, "alice".into(), 8));
        beat.place(
            Entry {
                outbox: Arc::downgrade(&outbox),
                next_ping: 0,
            },
            0,
        );
        assert_eq!(lock(&beat.slots[beat.slot_of(100)]).len(), 1);
    }
}
