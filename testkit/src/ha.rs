//! Redis high availability for tests, all real processes: replicas, three
//! sentinels (`redis-server <conf> --sentinel`), a Redis Cluster with a
//! replica per master, and a TCP relay the test controls (a managed
//! endpoint whose address moves, or a path that silently stops
//! delivering).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{TestRedis, WAIT, free_port, redis_cli, wait_until};

impl TestRedis {
    /// Starts a replica of the server on `primary_port` and waits until its
    /// link is up.
    pub fn start_replica_of(primary_port: u16) -> TestRedis {
        let r = TestRedis::start_with(
            free_port(false),
            &["--replicaof", "127.0.0.1", &primary_port.to_string()],
        );
        wait_until("the replica link to come up", || {
            r.cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        r
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGSTOPs the server: it keeps its sockets and answers nothing.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONTs a paused server.
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Whether `INFO replication` says it is a primary.
    pub fn is_primary(&self) -> bool {
        self.cli(&["INFO", "replication"]).contains("role:master")
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// One primary and its replicas.
pub struct TestReplicated {
    /// The primary first, then the replicas.
    pub servers: Vec<TestRedis>,
}

impl TestReplicated {
    /// A primary with `replicas` replicas, every link up.
    pub fn start(replicas: usize) -> TestReplicated {
        let primary = TestRedis::start();
        let mut servers = vec![primary];
        for _ in 0..replicas {
            let port = servers[0].port;
            servers.push(TestRedis::start_replica_of(port));
        }
        TestReplicated { servers }
    }

    /// The server on `port`.
    pub fn on_port(&mut self, port: u16) -> &mut TestRedis {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a server of this group")
    }
}

/// Three sentinels watching master group `herald` (quorum 2, down after
/// one second).
pub struct TestSentinels {
    /// Their ports.
    pub ports: Vec<u16>,
    children: Vec<Child>,
    _dirs: Vec<tempfile::TempDir>,
}

/// The master group name the sentinels watch.
pub const MASTER_NAME: &str = "herald";

impl TestSentinels {
    /// Starts three sentinels monitoring the primary on `primary_port`, and
    /// waits until each sees the primary and its replicas.
    pub fn start(primary_port: u16, replicas: usize) -> TestSentinels {
        let mut ports = Vec::new();
        let mut children = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..3 {
            let port = free_port(false);
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\nsentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 5000\nsentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            wait_until("a sentinel to answer PING", || {
                redis_cli(port, &["PING"]).trim() == "PONG"
            });
            ports.push(port);
            children.push(child);
            dirs.push(dir);
        }
        let s = TestSentinels {
            ports,
            children,
            _dirs: dirs,
        };
        for &port in &s.ports {
            wait_until("a sentinel to see every replica and the others", || {
                let info = redis_cli(port, &["SENTINEL", "MASTER", MASTER_NAME]);
                let field = |name: &str| {
                    let lines: Vec<&str> = info.lines().collect();
                    lines
                        .iter()
                        .position(|l| l.trim() == name)
                        .and_then(|i| lines.get(i + 1))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0)
                };
                field("num-slaves") >= replicas && field("num-other-sentinels") >= 2
            });
        }
        s
    }

    /// `redis+sentinel://…/herald`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The port of the primary the sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        self.ports.iter().find_map(|p| {
            let out = redis_cli(*p, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME]);
            out.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// Waits until the sentinels name a primary other than `old_port`.
    pub fn await_failover(&self, old_port: u16) -> u16 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(p) = self.primary_port().filter(|p| *p != old_port) {
                return p;
            }
            assert!(Instant::now() < deadline, "no failover within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestSentinels {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP relay on a free loopback port, forwarding to a target port the
/// test can change, and able to stop delivering without closing anything.
pub struct Relay {
    /// Where clients connect.
    pub port: u16,
    target: Arc<AtomicU16>,
    blackhole: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    /// A relay to `target_port`.
    pub fn start(target_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let relay = Relay {
            port,
            target: Arc::new(AtomicU16::new(target_port)),
            blackhole: Arc::new(AtomicBool::new(false)),
            stopped: Arc::new(AtomicBool::new(false)),
            streams: Arc::default(),
        };
        let (target, blackhole, stopped, streams) = (
            relay.target.clone(),
            relay.blackhole.clone(),
            relay.stopped.clone(),
            relay.streams.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target.load(Ordering::Acquire)))
                else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                // A subscriber connection is told apart by its first words.
                let pubsub = Arc::new(AtomicBool::new(false));
                for (from, to, up) in [
                    (client.try_clone(), server.try_clone(), true),
                    (server.try_clone(), client.try_clone(), false),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let (blackhole, pubsub) = (blackhole.clone(), pubsub.clone());
                    std::thread::spawn(move || pump(from, to, up, &blackhole, &pubsub));
                }
                let mut all = streams.lock().unwrap();
                all.push(client);
                all.push(server);
            }
        });
        relay
    }

    /// `redis://127.0.0.1:<relay port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// New connections go to `port` from now on.
    pub fn set_target(&self, port: u16) {
        self.target.store(port, Ordering::Release);
    }

    /// While on, nothing Redis sends reaches a subscriber connection (one
    /// that sent SUBSCRIBE or SSUBSCRIBE); every socket stays open and
    /// commands pass: a pub/sub path that silently stopped delivering. A
    /// connection that lost bytes this way stays dead after it is turned
    /// off, as a broken TCP path would (a stream cannot lose bytes and then
    /// resume); connections made afterwards work.
    pub fn blackhole_pubsub(&self, on: bool) {
        self.blackhole.store(on, Ordering::Release);
    }

    /// Closes every relayed connection (both sides).
    pub fn cut(&self) {
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    up: bool,
    blackhole: &AtomicBool,
    pubsub: &AtomicBool,
) {
    let mut buf = [0u8; 16 * 1024];
    let mut dead = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if up {
            let text = String::from_utf8_lossy(&buf[..n]).to_ascii_uppercase();
            if text.contains("SUBSCRIBE") {
                pubsub.store(true, Ordering::Release);
            }
        } else if dead || (pubsub.load(Ordering::Acquire) && blackhole.load(Ordering::Acquire)) {
            dead = true;
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A sentinel cut off from the others: it answers like a sentinel but
/// still names the primary it last knew, whatever happened since. Stands in
/// for a partitioned `redis-sentinel` (which cannot be made stale on
/// purpose and deterministically on one machine).
pub struct StaleSentinel {
    /// Where it listens.
    pub port: u16,
    stopped: Arc<AtomicBool>,
}

impl StaleSentinel {
    /// A sentinel naming `127.0.0.1:<primary_port>` as the primary of
    /// [`MASTER_NAME`] forever.
    pub fn start(primary_port: u16) -> StaleSentinel {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stopped = Arc::new(AtomicBool::new(false));
        let stop = stopped.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                std::thread::spawn(move || answer_as_sentinel(client, primary_port));
            }
        });
        StaleSentinel { port, stopped }
    }

    /// `127.0.0.1:<port>`, for a sentinel URL.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for StaleSentinel {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads RESP commands (arrays of bulk strings) and answers the few a
/// client of sentinels sends.
fn answer_as_sentinel(mut client: TcpStream, primary_port: u16) {
    let mut reader = std::io::BufReader::new(client.try_clone().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
            return;
        }
        let Some(n) = line
            .trim()
            .strip_prefix('*')
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return;
        };
        let mut args = Vec::with_capacity(n);
        for _ in 0..n {
            line.clear();
            if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                return;
            }
            let len: usize = line.trim().trim_start_matches('$').parse().unwrap_or(0);
            let mut arg = vec![0u8; len + 2];
            if reader.read_exact(&mut arg).is_err() {
                return;
            }
            arg.truncate(len);
            args.push(String::from_utf8_lossy(&arg).to_ascii_uppercase());
        }
        let reply = match args.first().map(String::as_str) {
            Some("SENTINEL") => {
                let port = primary_port.to_string();
                format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{port}\r\n", port.len())
            }
            Some("SUBSCRIBE") => {
                let ch = args
                    .get(1)
                    .cloned()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                format!("*3\r\n$9\r\nsubscribe\r\n${}\r\n{ch}\r\n:1\r\n", ch.len())
            }
            Some("PING") => "+PONG\r\n".to_owned(),
            _ => "-ERR unknown command\r\n".to_owned(),
        };
        if client.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
