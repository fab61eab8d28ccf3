//! What one 100-byte send to a loopback TCP socket costs the sending
//! thread (CPU time, `CLOCK_THREAD_CPUTIME_ID`), as one `send(2)` per
//! socket and as sends submitted together through `io_uring`: the measured
//! reason for `gateway/src/ws/uring.rs` (docs/benchmarks.md).
//!
//!     cargo run --release --manifest-path loadtest/sendbench/Cargo.toml -- [sockets] [rounds] [batch]
//!
//! Opens `sockets` connected pairs (default 5,000; twice as many
//! descriptors), a reader thread draining the receiving ends through epoll,
//! then `rounds` rounds (default 40, 100 ms apart) of one send to every
//! socket, first with `send(2)`, then with `io_uring` in submissions of
//! `batch` (default 64). Loopback only; stops by itself.
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(5000, |s| s.parse().unwrap());
    let rounds: usize = std::env::args().nth(2).map_or(40, |s| s.parse().unwrap());
    let batch: u32 = std::env::args().nth(3).map_or(1024, |s| s.parse().unwrap());
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
    // Reader: epoll over all receivers, drain.
    std::thread::spawn(move || {
        let ep = unsafe { libc::epoll_create1(0) };
        for (i, r) in receivers.iter().enumerate() {
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut ev) };
        }
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = [0u8; 4096];
        loop {
            let k = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 1024, -1) };
            for e in &evs[..k.max(0) as usize] {
                let mut r = &receivers[e.u64 as usize];
                while let Ok(m) = r.read(&mut buf) {
                    if m == 0 { break; }
                }
            }
        }
    });
    let msg = [b'x'; 100];
    let fds: Vec<i32> = senders.iter().map(|s| s.as_raw_fd()).collect();
    let pause = Duration::from_millis(100);
    // write(2)
    let mut cpu = Duration::ZERO;
    let mut wall = Duration::ZERO;
    for _ in 0..rounds {
        std::thread::sleep(pause);
        let (c0, w0) = (thread_cpu(), Instant::now());
        for &fd in &fds {
            let r = unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            assert_eq!(r, 100);
        }
        cpu += thread_cpu() - c0;
        wall += w0.elapsed();
    }
    let per = (rounds * n) as f64;
    println!("send(2):  cpu {:.3} us/send, wall {:.3} us/send", cpu.as_secs_f64() * 1e6 / per, wall.as_secs_f64() * 1e6 / per);
    // io_uring
    let mut ring = io_uring::IoUring::new(batch.max(8)).unwrap();
    let mut cpu = Duration::ZERO;
    let mut wall = Duration::ZERO;
    for _ in 0..rounds {
        std::thread::sleep(pause);
        let (c0, w0) = (thread_cpu(), Instant::now());
        for chunk in fds.chunks(batch as usize) {
            {
                let mut sq = ring.submission();
                for &fd in chunk {
                    let e = io_uring::opcode::Send::new(io_uring::types::Fd(fd), msg.as_ptr(), msg.len() as u32)
                        .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                        .build();
                    unsafe { sq.push(&e).unwrap() };
                }
            }
            ring.submit_and_wait(chunk.len()).unwrap();
            for c in ring.completion() {
                assert_eq!(c.result(), 100);
            }
        }
        cpu += thread_cpu() - c0;
        wall += w0.elapsed();
    }
    println!("io_uring: cpu {:.3} us/send, wall {:.3} us/send (batch {batch})", cpu.as_secs_f64() * 1e6 / per, wall.as_secs_f64() * 1e6 / per);
}
