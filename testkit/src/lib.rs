//! Real components for tests: `redis-server` processes (a single instance or
//! a 3-master cluster) on free loopback ports, and Herald binaries run as
//! child processes, all killed when dropped.
//!
//! Nothing here is mocked: a test that kills Redis kills a real process with
//! SIGKILL, and a restarted Redis comes back empty on the same port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ha;

pub use ha::{MASTER_NAME, Relay, StaleSentinel, TestReplicated, TestSentinels};

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound on every wait in this crate.
pub const WAIT: Duration = Duration::from_secs(20);

/// A port nobody listens on right now (and, for cluster nodes, whose bus
/// port, +10000, is free too).
pub fn free_port(with_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if !with_bus {
            return port;
        }
        if port < 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `redis-cli -p port args…` and returns its output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    redis_cli_tls(port, None, args)
}

/// Runs `redis-cli` against a server that speaks TLS when `ca` is given,
/// trusting that CA, and returns its output.
pub fn redis_cli_tls(port: u16, ca: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.arg("-p").arg(port.to_string());
    if let Some(ca) = ca {
        cmd.arg("--tls").arg("--cacert").arg(ca);
    }
    let out = cmd.args(args).output().expect("redis-cli is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `redis-server` process.
pub struct TestRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// The CA to trust when the server speaks TLS only.
    tls_ca: Option<PathBuf>,
}

impl TestRedis {
    /// Starts a plain Redis on a free port, with persistence off.
    pub fn start() -> TestRedis {
        Self::start_with(free_port(false), &[])
    }

    /// Starts a plain Redis that keeps every write in its append-only file
    /// (`appendfsync always`), so [`TestRedis::restart`] brings its data
    /// back: a Redis restart that durability is meant to survive.
    pub fn start_persistent() -> TestRedis {
        Self::start_with(
            free_port(false),
            &["--appendonly", "yes", "--appendfsync", "always"],
        )
    }

    fn start_with(port: u16, extra: &[&str]) -> TestRedis {
        Self::start_full(port, extra, None)
    }

    /// Starts a Redis that speaks TLS only, with `cert` and `key` (PEM),
    /// trusted through `ca`; clients are not asked for certificates.
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> TestRedis {
        Self::start_full(free_port(false), &[], Some((cert, key, ca)))
    }

    fn start_full(port: u16, extra: &[&str], tls: Option<(&Path, &Path, &Path)>) -> TestRedis {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some((cert, key, ca)) = tls {
            args.extend(["--tls-port".to_owned(), port.to_string()]);
            for (flag, path) in [
                ("--tls-cert-file", cert),
                ("--tls-key-file", key),
                ("--tls-ca-cert-file", ca),
            ] {
                args.extend([flag.to_owned(), path.to_string_lossy().into_owned()]);
            }
            args.extend(["--tls-auth-clients".to_owned(), "no".to_owned()]);
            if extra.contains(&"--cluster-enabled") {
                args.extend(["--tls-cluster".to_owned(), "yes".to_owned()]);
            }
        }
        let mut r = TestRedis {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra: args,
            tls_ca: tls.map(|(_, _, ca)| ca.to_owned()),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        // A TLS server listens on its `--tls-port` only.
        let plain_port = if self.tls_ca.is_some() { 0 } else { self.port };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &plain_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        wait_until("redis to answer PING", || {
            self.cli(&["PING"]).trim() == "PONG"
        });
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Runs a command through `redis-cli`.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli_tls(self.port, self.tls_ca.as_deref(), args)
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port: empty, unless it was started
    /// persistent.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters, without replicas or with one each.
pub struct TestCluster {
    /// The nodes: masters, then (with replicas) their replicas.
    pub nodes: Vec<TestRedis>,
}

impl TestCluster {
    /// Starts three cluster-enabled servers and joins them with
    /// `redis-cli --cluster create`.
    pub fn start() -> TestCluster {
        Self::start_full(None, 0)
    }

    /// Three masters with a replica each (a master that dies is failed over
    /// within a few seconds: `cluster-node-timeout` is 2 s).
    pub fn start_with_replicas() -> TestCluster {
        Self::start_full(None, 1)
    }

    /// Like [`TestCluster::start`], with every node (and the cluster bus)
    /// speaking TLS only; see [`TestRedis::start_tls`].
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> TestCluster {
        Self::start_full(Some((cert, key, ca)), 0)
    }

    fn start_full(tls: Option<(&Path, &Path, &Path)>, replicas: usize) -> TestCluster {
        let cluster_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            // A replica may take over however long it was cut off (tests
            // kill masters seconds after the cluster formed).
            "--cluster-replica-validity-factor",
            "0",
        ];
        let nodes: Vec<TestRedis> = (0..3 * (1 + replicas))
            .map(|_| TestRedis::start_full(free_port(true), &cluster_args, tls))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some((_, _, ca)) = tls {
            create.arg("--tls").arg("--cacert").arg(ca);
        }
        create.arg("--cluster").arg("create").args(&addrs).args([
            "--cluster-replicas",
            &replicas.to_string(),
            "--cluster-yes",
        ]);
        // `--cluster create` waits for the join without a bound of its own.
        let mut child = create
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli is installed");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("redis-cli runs") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.is_some_and(|s| s.success()),
            "redis-cli --cluster create failed or did not finish within {WAIT:?}"
        );
        for n in &nodes {
            wait_until("cluster_state:ok", || {
                n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
            wait_until("every replica in sync", || {
                let info = n.cli(&["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            });
        }
        TestCluster { nodes }
    }

    /// Every node's URL, comma-separated, as `redis_url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(TestRedis::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master serving `key`'s slot now.
    pub fn owner_of(&self, key: &str) -> &TestRedis {
        let owner = self.owner_port(key).unwrap();
        self.nodes.iter().find(|n| n.port == owner).unwrap()
    }

    /// The port of the master serving `key`'s slot, as any live node sees it.
    pub fn owner_port(&self, key: &str) -> Option<u16> {
        let live: Vec<&TestRedis> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        let probe = live.first()?;
        let slot: u16 = probe
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .ok()?;
        let nodes = probe.cli(&["CLUSTER", "NODES"]);
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find(|l| l.split_whitespace().skip(8).any(|r| slot_in(r, slot)))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|addr| addr.split('@').next())
            .and_then(|addr| addr.rsplit(':').next())
            .and_then(|port| port.parse::<u16>().ok())
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut TestRedis {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }
}

fn slot_in(range: &str, slot: u16) -> bool {
    match range.split_once('-') {
        Some((a, b)) => {
            a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b)
        }
        None => range.parse::<u16>().is_ok_and(|s| s == slot),
    }
}

/// The directory Cargo put the workspace binaries in.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test> → target/debug
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// A Herald binary of the workspace.
pub fn bin(name: &str) -> Command {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` first",
        path.display()
    );
    let mut cmd = Command::new(path);
    cmd.current_dir(std::env::temp_dir());
    cmd
}

/// A child process whose stderr lines are collected, killed when dropped.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    pub seen: Vec<String>,
}

impl Proc {
    /// Starts `cmd` with stderr captured.
    pub fn start(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line containing `needle`.
    pub fn line_with(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with '{needle}' within {WAIT:?}; seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every stderr line seen so far and until the stream ends (after the
    /// process exited), at most [`WAIT`] from now.
    pub fn drain_lines(&mut self) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => return self.seen.clone(),
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, …).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address after `marker` in a log line (`public=127.0.0.1:1234`).
pub fn addr_after(line: &str, marker: &str) -> SocketAddr {
    let rest = &line[line
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in {line}"))
        + marker.len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse()
        .unwrap_or_else(|_| panic!("no address in {line}"))
}
