//! The floor of a WebSocket heartbeat on this machine: what the least a
//! server can do — write a 2-byte Ping to every idle connection once per
//! interval and read its client's 6-byte Pong — costs the server process,
//! in CPU per connection per second. No WebSocket library, no runtime, no
//! session: one thread, one epoll, pings sent in `io_uring` batches of 64
//! on a 250 ms tick (as `gateway/src/hub/beat.rs` does). Any gateway
//! holding idle connections with this heartbeat pays at least this; the
//! idle row of `loadtest/bench.sh` is compared with it (docs/benchmarks.md).
//!
//!     cargo run --release --manifest-path loadtest/sendbench/Cargo.toml \
//!       --bin heartbeat -- [connections] [interval_s] [hold_s] [drain]
//!
//! Defaults: 19,000 connections, 25 s, 50 s. `drain` reads each readable
//! socket until `EAGAIN` (as an edge-triggered runtime such as Tokio
//! does: two reads per pong) instead of once. The clients are a second
//! process (this binary with `client`), answering each Ping with a masked
//! Pong, so their CPU is not the server's. Loopback only; stops by itself.
//!
//! **The same clients against a real server.** On loopback the server's
//! CPU includes the kernel's delivery of each Ping into the client's socket
//! and the wake-up of the client's thread, so the floor is only comparable
//! with a server driven by the same clients:
//!
//!     heartbeat herald <host:port> <path?token=…> <server pid> [connections] [hold_s]
//!
//! opens the connections with a WebSocket handshake on `path`, answers the
//! server's Pings the same way, and reports the CPU of `server pid` (from
//! `/proc`) over the hold (`loadtest/bench.sh`'s idle row runs both).
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PING: [u8; 2] = [0x89, 0x00];
const PONG: [u8; 6] = [0x8a, 0x80, 1, 2, 3, 4];
const TICK: Duration = Duration::from_millis(250);

/// This process's CPU time (user + system), as `/proc/<pid>/stat` counts it.
fn process_cpu() -> Duration {
    // SAFETY: `rusage` is plain integers, for which all zeroes is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the call's duration.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The CPU time (user + system) of process `pid`, from `/proc/<pid>/stat`.
fn cpu_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .expect("the server's /proc/<pid>/stat");
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the whole line, in clock ticks.
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // SAFETY: no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// `heartbeat herald <host:port> <path> <pid> [connections] [hold_s]`: the
/// same clients against a running server (its own heartbeat), measuring
/// that server's process.
fn against(args: &[String]) {
    let (addr, path, pid) = (&args[0], &args[1], &args[2]);
    let n: usize = args.get(3).map_or(19_000, |s| s.parse().unwrap());
    let hold = Duration::from_secs(args.get(4).map_or(50, |s| s.parse().unwrap()));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["client", addr, &n.to_string(), path])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    child.stdout.take().unwrap().read_exact(&mut line).unwrap();
    // Let the connections' first pings (due one interval after each opened)
    // spread as they will; measure whole seconds of the steady state.
    let start = Instant::now();
    let cpu0 = cpu_of(pid);
    std::thread::sleep(hold);
    let cpu = cpu_of(pid) - cpu0;
    let secs = start.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{n} connections to {addr}, {secs:.0} s: server CPU {:.3} s = {:.3} us per connection per second",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / secs / n as f64,
    );
}

fn epoll_add(ep: i32, fd: i32, key: u64) {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: key,
    };
    // SAFETY: `ev` is a valid epoll_event for the call; `fd` is open.
    let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert_eq!(r, 0, "epoll_ctl");
}

/// Opens a WebSocket on `path` over `s` (blocking): the request, then
/// everything up to the end of the answer's head, which must be a 101.
fn upgrade(mut s: &TcpStream, host: &str, path: &str) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: aGVhcnRiZWF0LWZsb29yIQ==\r\n\r\n"
    );
    s.write_all(request.as_bytes()).expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("handshake answer");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

/// How many Pings `bytes` holds: whole server frames (unmasked), skipping
/// any other (the server's welcome message).
fn pings_in(mut bytes: &[u8]) -> usize {
    let mut pings = 0;
    while bytes.len() >= 2 {
        let (len, head) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(l) as usize, 10)
            }
            126 | 127 => break,
            l => (l as usize, 2),
        };
        if bytes[0] & 0x0f == 0x9 {
            pings += 1;
        }
        bytes = &bytes[(head + len).min(bytes.len())..];
    }
    pings
}

/// The clients: `n` connections to `addr`, each answering a Ping with a
/// Pong; with `path`, each opened as a WebSocket on it first.
fn client(addr: &str, n: usize, path: Option<&str>) {
    let mut socks = Vec::with_capacity(n);
    // SAFETY: no pointers; the descriptor is checked by its use.
    let ep = unsafe { libc::epoll_create1(0) };
    for i in 0..n {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).unwrap();
        if let Some(path) = path {
            upgrade(&s, addr, path);
        }
        s.set_nonblocking(true).unwrap();
        epoll_add(ep, s.as_raw_fd(), i as u64);
        socks.push(s);
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: `evs` holds 1024 writable events, the count passed.
        let k = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 1024, -1) };
        for e in &evs[..k.max(0) as usize] {
            let mut s = &socks[e.u64 as usize];
            match s.read(&mut buf) {
                Ok(0) => return, // the server is done
                Ok(m) if path.is_some() => {
                    for _ in 0..pings_in(&buf[..m]) {
                        let _ = s.write(&PONG);
                    }
                }
                Ok(m) => {
                    for _ in 0..m / PING.len() {
                        let _ = s.write(&PONG);
                    }
                }
                Err(_) => {}
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("client") => {
            return client(
                &args[2],
                args[3].parse().unwrap(),
                args.get(4).map(String::as_str),
            );
        }
        Some("herald") => return against(&args[2..]),
        _ => {}
    }
    let arg = |i: usize, d: u64| args.get(i).map_or(d, |s| s.parse().unwrap());
    let n = arg(1, 19_000) as usize;
    let interval = Duration::from_secs(arg(2, 25));
    let hold = Duration::from_secs(arg(3, 50));
    let drain = args.get(4).is_some_and(|s| s == "drain");

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["client", &addr, &n.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // SAFETY: no pointers; the descriptor is checked by its use.
    let ep = unsafe { libc::epoll_create1(0) };
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let (s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        epoll_add(ep, s.as_raw_fd(), i as u64);
        socks.push(s);
    }
    let mut line = [0u8; 6];
    child.stdout.take().unwrap().read_exact(&mut line).unwrap();
    let fds: Vec<i32> = socks.iter().map(|s| s.as_raw_fd()).collect();

    // Each connection's ping is due once per interval, at its own tick.
    let ticks = (interval.as_millis() / TICK.as_millis()).max(1) as usize;
    let per_tick = n.div_ceil(ticks);
    let mut ring = io_uring::IoUring::new(64).unwrap();
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = [0u8; 256];
    let (mut pings, mut pongs) = (0u64, 0u64);
    let start = Instant::now();
    let cpu0 = process_cpu();
    let mut next = start;
    let mut tick = 0usize;
    while start.elapsed() < hold {
        let now = Instant::now();
        if now >= next {
            let from = (tick % ticks) * per_tick;
            for chunk in fds[from.min(n)..(from + per_tick).min(n)].chunks(64) {
                {
                    let mut sq = ring.submission();
                    for &fd in chunk {
                        let e =
                            io_uring::opcode::Send::new(io_uring::types::Fd(fd), PING.as_ptr(), 2)
                                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                                .build();
                        // SAFETY: the entry points at the static `PING` and
                        // at a socket kept open by `socks`; the wait below
                        // collects every entry of the chunk before the next.
                        unsafe { sq.push(&e).unwrap() };
                    }
                }
                ring.submit_and_wait(chunk.len()).unwrap();
                pings += ring.completion().filter(|c| c.result() == 2).count() as u64;
            }
            tick += 1;
            next += TICK;
            continue;
        }
        let wait = (next - now).as_millis().max(1) as i32;
        // SAFETY: `evs` holds 1024 writable events, the count passed.
        let k = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 1024, wait) };
        for e in &evs[..k.max(0) as usize] {
            let mut s = &socks[e.u64 as usize];
            while let Ok(m) = s.read(&mut buf) {
                pongs += (m / PONG.len()) as u64;
                if m == 0 || !drain {
                    break;
                }
            }
        }
    }
    let cpu = process_cpu() - cpu0;
    let secs = start.elapsed().as_secs_f64();
    drop(socks);
    let _ = child.wait();
    println!(
        "{n} connections, {}s heartbeat, {secs:.0} s{}: {pings} pings, {pongs} pongs; server CPU {:.3} s = {:.3} us per connection per second ({:.2} us per ping and pong)",
        interval.as_secs(),
        if drain { ", reading to EAGAIN" } else { "" },
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / secs / n as f64,
        cpu.as_secs_f64() * 1e6 / pings.max(1) as f64,
    );
}
