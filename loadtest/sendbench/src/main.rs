//! What one 100-byte send to a loopback TCP socket costs the sending
//! thread (CPU time, `CLOCK_THREAD_CPUTIME_ID`), and how long the median
//! and the 99th-percentile socket of a round wait for their byte at the
//! reader: as one `send(2)` per socket, as the same sends split over two
//! threads, and as sends submitted together through `io_uring`. The
//! measured reason for `gateway/src/wire/uring.rs`, and the floor a gateway's
//! fan-out latency is compared with (docs/benchmarks.md).
//!
//!     cargo run --release --manifest-path loadtest/sendbench/Cargo.toml -- [sockets] [rounds] [batch]
//!
//! Opens `sockets` connected pairs (default 5,000; twice as many
//! descriptors), a reader thread draining the receiving ends through epoll
//! and timing each arrival from its round's start, then for each way of
//! sending `rounds` rounds (default 40, 100 ms apart) of one send to every
//! socket; `io_uring` in submissions of `batch` (default 64). Loopback
//! only; stops by itself.
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

const MSG: [u8; 100] = [b'x'; 100];
const FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

fn send_each(fds: &[i32]) {
    for &fd in fds {
        // SAFETY: `MSG` is a static buffer of `MSG.len()` bytes; `fd` is an
        // open socket owned by the caller's `TcpStream`s for the whole run.
        let r = unsafe { libc::send(fd, MSG.as_ptr().cast(), MSG.len(), FLAGS) };
        assert_eq!(r, 100);
    }
}

/// Arrival times (µs after their round's start) seen by the reader.
struct Clock {
    base: Instant,
    round_start_ns: AtomicU64,
    arrivals: Mutex<Vec<u64>>,
}

impl Clock {
    fn start_round(&self) {
        self.round_start_ns
            .store(self.base.elapsed().as_nanos() as u64, SeqCst);
    }
    /// p50 and p99 of the arrivals since the last call, in ms.
    fn take(&self) -> (f64, f64) {
        let mut v = std::mem::take(&mut *self.arrivals.lock().unwrap());
        v.sort_unstable();
        let q = |q: f64| v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        (q(0.5), q(0.99))
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(5000, |s| s.parse().unwrap());
    let rounds: usize = std::env::args().nth(2).map_or(40, |s| s.parse().unwrap());
    let batch: u32 = std::env::args().nth(3).map_or(64, |s| s.parse().unwrap());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..n {
        let s = TcpStream::connect(addr).unwrap();
        let (r, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        r.set_nonblocking(true).unwrap();
        senders.push(s);
        receivers.push(r);
    }
    let clock = Arc::new(Clock {
        base: Instant::now(),
        round_start_ns: AtomicU64::new(0),
        arrivals: Mutex::new(Vec::new()),
    });
    // Reader: epoll over all receivers, drain, time each arrival.
    let reader_clock = clock.clone();
    std::thread::spawn(move || {
        let clock = reader_clock;
        // SAFETY: no pointers; the returned descriptor is checked by its use.
        let ep = unsafe { libc::epoll_create1(0) };
        for (i, r) in receivers.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: `ev` is a valid epoll_event for the call; `r` outlives
            // the thread (it owns the receivers).
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut ev) };
        }
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = [0u8; 4096];
        let mut seen = Vec::with_capacity(1024);
        loop {
            // SAFETY: `evs` holds 1024 writable events, the count passed.
            let k = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 1024, -1) };
            for e in &evs[..k.max(0) as usize] {
                let mut r = &receivers[e.u64 as usize];
                while let Ok(m) = r.read(&mut buf) {
                    if m == 0 {
                        break;
                    }
                    let now = clock.base.elapsed().as_nanos() as u64;
                    seen.push(now.saturating_sub(clock.round_start_ns.load(SeqCst)) / 1000);
                }
            }
            clock.arrivals.lock().unwrap().append(&mut seen);
        }
    });
    let fds: Vec<i32> = senders.iter().map(|s| s.as_raw_fd()).collect();
    let pause = Duration::from_millis(100);
    let per = (rounds * n) as f64;
    let report = |what: &str, cpu: Duration| {
        std::thread::sleep(pause); // the last round's arrivals
        let (p50, p99) = clock.take();
        println!(
            "{what}: cpu {:.3} us/send; arrival p50 {p50:.2} ms, p99 {p99:.2} ms",
            cpu.as_secs_f64() * 1e6 / per
        );
    };

    // send(2), one thread.
    let mut cpu = Duration::ZERO;
    for _ in 0..rounds {
        std::thread::sleep(pause);
        clock.start_round();
        let c0 = thread_cpu();
        send_each(&fds);
        cpu += thread_cpu() - c0;
    }
    report("send(2), 1 thread", cpu);

    // send(2), the sockets split over two threads (CPU: both threads').
    let (a, b) = fds.split_at(n / 2);
    let (go, done) = (Barrier::new(2), Barrier::new(2));
    let helper_cpu = std::thread::scope(|s| {
        let helper = s.spawn(|| {
            let mut cpu = Duration::ZERO;
            for _ in 0..rounds {
                go.wait();
                let c0 = thread_cpu();
                send_each(b);
                cpu += thread_cpu() - c0;
                done.wait();
            }
            cpu
        });
        let mut cpu = Duration::ZERO;
        for _ in 0..rounds {
            std::thread::sleep(pause);
            clock.start_round();
            go.wait();
            let c0 = thread_cpu();
            send_each(a);
            cpu += thread_cpu() - c0;
            done.wait();
        }
        cpu + helper.join().unwrap()
    });
    report("send(2), 2 threads", helper_cpu);

    // io_uring, `batch` sends per submission.
    let mut ring = io_uring::IoUring::new(batch.max(8)).unwrap();
    let mut cpu = Duration::ZERO;
    for _ in 0..rounds {
        std::thread::sleep(pause);
        clock.start_round();
        let c0 = thread_cpu();
        for chunk in fds.chunks(batch as usize) {
            {
                let mut sq = ring.submission();
                for &fd in chunk {
                    let e = io_uring::opcode::Send::new(io_uring::types::Fd(fd), MSG.as_ptr(), 100)
                        .flags(FLAGS)
                        .build();
                    // SAFETY: the entry points at the static `MSG` and at a
                    // socket kept open by `senders`; `submit_and_wait` below
                    // waits for every entry of the chunk before the next.
                    unsafe { sq.push(&e).unwrap() };
                }
            }
            ring.submit_and_wait(chunk.len()).unwrap();
            for c in ring.completion() {
                assert_eq!(c.result(), 100);
            }
        }
        cpu += thread_cpu() - c0;
    }
    report(&format!("io_uring, batch {batch}"), cpu);
}
