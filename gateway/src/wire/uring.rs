//! One buffer to each of many sockets in one system call: the hub's inline
//! writes of a fan-out, sent as an `io_uring` submission where the kernel
//! offers it, one non-blocking `send` per socket where it does not.
//!
//! **Why by hand.** On the reference machine a loopback `send(2)` of a
//! 100-byte frame costs about 8 µs of the sender's CPU, and a batch of 64
//! such sends submitted at once about 6 µs each: a quarter of a quiet
//! topic's fan-out is system-call entry and exit (measured with a
//! standalone program, 5,000 sockets with a reader draining them; see
//! docs/benchmarks.md). No crate offers "send these buffers to these
//! sockets, now, without blocking" over `io_uring` without bringing its own
//! runtime (`tokio-uring`, `glommio`), so this module drives the
//! `io-uring` crate's rings directly. It is the only module of the
//! workspace with `unsafe` code, and it is kept small for it.
//!
//! **Invariants.**
//! - [`write_each`] returns only when every operation it submitted has
//!   completed: the buffers and sockets it was lent are never used after
//!   the call. If the kernel refuses to complete them (an `io_uring_enter`
//!   error other than an interruption), the process aborts rather than
//!   return with the kernel still holding pointers into its caller's memory.
//! - It never blocks on a socket: every send carries `MSG_DONTWAIT`, which
//!   the kernel completes with `EAGAIN` instead of waiting for room. A ring
//!   is used on a thread only after a probe proved that on this kernel (a
//!   send to a full socket completing at once); otherwise, or when
//!   `io_uring` is unavailable (an old kernel, a seccomp profile that
//!   forbids it) or switched off (`io_uring = false`), the thread uses
//!   Tokio's `try_write`, the portable path.
//! - A result is how many bytes the socket took (0 on an error or a full
//!   buffer): the caller queues the rest, and the session's own writes
//!   meet any error, exactly as after a `try_write`.
//!
//! One ring of [`BATCH`] entries per thread that fans out, made at its
//! first fan-out: a few kilobytes per thread, nothing per connection.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use tokio::net::TcpStream;

/// Most sends submitted at once (the ring's size).
pub const BATCH: usize = 64;

/// The `io_uring` configuration key, applied before the first fan-out.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Switches the `io_uring` path on or off for threads that have not used it
/// yet (the node sets it from its configuration at start).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Relaxed);
}

/// Writes `sends[i].1` to `sends[i].0` without blocking and sets
/// `written[i]` to how many bytes the socket took. At most [`BATCH`] sends;
/// `written` at least as long as `sends`.
pub fn write_each(sends: &[(&TcpStream, &[u8])], written: &mut [usize]) {
    let written = &mut written[..sends.len()];
    #[cfg(target_os = "linux")]
    if ring::write_each(sends, written) {
        return;
    }
    for ((socket, buf), n) in sends.iter().zip(written.iter_mut()) {
        *n = socket.try_write(buf).unwrap_or(0);
    }
}

/// Whether this thread writes through `io_uring` (known after its first
/// [`write_each`]), for tests.
pub fn in_use() -> bool {
    #[cfg(target_os = "linux")]
    return ring::in_use();
    #[cfg(not(target_os = "linux"))]
    false
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod ring {
    use std::cell::RefCell;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use io_uring::{IoUring, opcode, types};
    use tracing::{error, info};

    use super::{BATCH, ENABLED, Relaxed, TcpStream, io};

    enum Ring {
        Untried,
        Off,
        On(Box<IoUring>),
    }

    thread_local! {
        static RING: RefCell<Ring> = const { RefCell::new(Ring::Untried) };
    }

    const FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

    pub(super) fn in_use() -> bool {
        RING.with(|r| matches!(*r.borrow(), Ring::On(_)))
    }

    /// The batch through this thread's ring; false when there is none.
    pub(super) fn write_each(sends: &[(&TcpStream, &[u8])], written: &mut [usize]) -> bool {
        RING.with(|cell| {
            let Ok(mut ring) = cell.try_borrow_mut() else {
                return false;
            };
            if matches!(*ring, Ring::Untried) {
                *ring = open();
            }
            let Ring::On(ring) = &mut *ring else {
                return false;
            };
            send_all(ring, sends, written)
        })
    }

    fn open() -> Ring {
        if !ENABLED.load(Relaxed) {
            return Ring::Off;
        }
        let mut ring = match IoUring::builder().build(BATCH as u32) {
            Ok(r) => r,
            Err(e) => {
                info!(error = %e, "io_uring unavailable: fan-outs write with one send per socket");
                return Ring::Off;
            }
        };
        match probe(&mut ring) {
            Ok(()) => Ring::On(Box::new(ring)),
            Err(e) => {
                info!(error = %e, "io_uring may wait on a full socket here: fan-outs write with one send per socket");
                Ring::Off
            }
        }
    }

    /// Proves that a `MSG_DONTWAIT` send to a full socket completes at once
    /// with `EAGAIN` instead of waiting for room (waiting at most a second
    /// for the proof).
    fn probe(ring: &mut IoUring) -> io::Result<()> {
        static BYTE: [u8; 1] = [0];
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::other("no IORING_FEAT_EXT_ARG (Linux < 5.11)"));
        }
        let (mut full, _peer) = UnixStream::pair()?;
        full.set_nonblocking(true)?;
        let chunk = [0u8; 4096];
        loop {
            match full.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let sqe = opcode::Send::new(types::Fd(full.as_raw_fd()), BYTE.as_ptr(), 1)
            .flags(FLAGS)
            .build();
        // SAFETY: the buffer is static and the descriptor open. Should the
        // send still be pending when this returns, the kernel holds its own
        // reference to the socket, and the caller drops the ring, which
        // cancels it.
        unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("ring full"))?;
        let timeout = types::Timespec::from(Duration::from_secs(1));
        let args = types::SubmitArgs::new().timespec(&timeout);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => return Err(e),
        }
        match ring.completion().next().map(|c| c.result()) {
            Some(r) if r == -libc::EAGAIN => Ok(()),
            Some(r) => Err(io::Error::other(format!("the probe's send gave {r}"))),
            None => Err(io::Error::other("the probe's send waited for room")),
        }
    }

    /// Submits one send per `(socket, buffer)` and waits for them all.
    fn send_all(ring: &mut IoUring, sends: &[(&TcpStream, &[u8])], written: &mut [usize]) -> bool {
        let n = sends.len();
        {
            let mut sq = ring.submission();
            if sq.capacity() - sq.len() < n {
                return false;
            }
            for (i, (socket, buf)) in sends.iter().enumerate() {
                let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                let sqe = opcode::Send::new(types::Fd(socket.as_raw_fd()), buf.as_ptr(), len)
                    .flags(FLAGS)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the buffer and the socket are borrowed by the
                // caller for this call, and this function returns only once
                // every operation it pushed has completed (below), or
                // aborts the process. The room was checked above.
                if unsafe { sq.push(&sqe) }.is_err() {
                    abort("io_uring submission queue full after a room check");
                }
            }
        }
        written.fill(0);
        let mut done = 0;
        let mut retries = 0;
        while done < n {
            match ring.submit_and_wait(n - done) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) && retries < 10_000 =>
                {
                    retries += 1;
                }
                Err(e) => abort(&format!("io_uring_enter failed with sends in flight: {e}")),
            }
            for cqe in ring.completion() {
                done += 1;
                if let Some(w) = usize::try_from(cqe.user_data())
                    .ok()
                    .and_then(|i| written.get_mut(i))
                {
                    *w = usize::try_from(cqe.result()).unwrap_or(0);
                }
            }
        }
        true
    }

    fn abort(why: &str) -> ! {
        error!(
            why,
            "aborting rather than let the kernel write from freed memory"
        );
        std::process::abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        server.writable().await.unwrap();
        (server, client)
    }

    /// `io_uring = false` (or no io_uring): the same results through
    /// Tokio's `try_write`. Each test runs in its own process under
    /// nextest, so the switch reaches no other test.
    #[tokio::test(flavor = "current_thread")]
    async fn switched_off_the_portable_path_writes_the_same() {
        set_enabled(false);
        let (a, mut ra) = pair().await;
        let mut written = [0; 1];
        write_each(&[(&a, b"plain")], &mut written);
        assert_eq!(written, [5]);
        assert!(!in_use(), "no ring on this thread");
        let mut got = [0; 5];
        ra.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"plain");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_socket_gets_its_buffer_and_a_full_one_takes_what_it_can_without_blocking() {
        let (a, mut ra) = pair().await;
        let (b, _rb) = pair().await;
        let mut written = [0; 2];
        write_each(&[(&a, b"hello"), (&b, b"world!")], &mut written);
        assert_eq!(written, [5, 6]);
        #[cfg(target_os = "linux")]
        assert!(in_use(), "this kernel offers io_uring: the ring path ran");
        let mut got = [0; 5];
        ra.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");

        // `b`'s reader never reads: fill its buffers, then one more send
        // must come back at once with nothing written.
        let big = vec![7u8; 1 << 20];
        let mut total = 0;
        loop {
            write_each(&[(&b, &big)], &mut written);
            if written[0] == 0 {
                break;
            }
            total += written[0];
            assert!(total < 512 << 20, "a socket never reading takes no more");
        }
        write_each(&[(&a, b"still"), (&b, b"x")], &mut written);
        assert_eq!(written, [5, 0], "the full socket holds nobody up");
        ra.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"still");
    }
}
