//! The real binaries as child processes.

use crate::PASSWORD;
use crate::db::{Backend, TestDb};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Generous bound for anything a test waits for; a liveness limit, not a performance assertion.
pub const WAIT: Duration = Duration::from_secs(40);

/// Path of a workspace binary (`broker`, `peer`), built by `cargo test` at the workspace root.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is not built: run the tests with `cargo test --workspace`", path.display());
    path
}

/// A child's output, line by line as it comes, through `parse` (lines it turns into `None` are skipped).
fn lines_of<T: Send + 'static>(
    out: std::process::ChildStdout,
    parse: impl Fn(String) -> Option<T> + Send + 'static,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(v) = parse(line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Kills a child process (if still there) and reaps it.
fn kill(child: Option<Child>) {
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Optionally signals `child`, then waits up to [`WAIT`] for it to exit; `None` if it had to be killed.
fn wait_for_exit(mut c: Child, sig: Option<&str>) -> Option<bool> {
    if let Some(sig) = sig {
        signal(&c, sig);
    }
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(status) = c.try_wait().unwrap() {
            return Some(status.success());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Some(c));
    None
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status();
}

/// Where [`Broker::start_cluster_in`] puts one node.
pub struct Node {
    /// The NAT lab host (network namespace) it runs on, if any.
    pub netns: Option<String>,
    pub listen: SocketAddr,
    /// Where it reaches the database server instead of the server's own address (a forwarder).
    pub db: Option<SocketAddr>,
}

/// A running broker with its own data directory and database.
pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub fingerprint: String,
    pub data: TempDir,
    pub db: TestDb,
    pub backend: &'static str,
}

impl Broker {
    /// Starts a broker on `127.0.0.1:0` over a fresh database on `backend`.
    pub fn start(backend: &Backend) -> Self {
        let data = tempfile::tempdir().unwrap();
        let db = TestDb::create(backend, data.path());
        let (child, addr, fingerprint) = spawn_broker(data.path(), &db.url, "127.0.0.1:0".parse().unwrap(), &[]);
        Self { child: Some(child), addr, fingerprint, data, db, backend: backend.name() }
    }

    /// Starts a broker with extra flags.
    pub fn start_with(backend: &Backend, extra: &[&str]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let db = TestDb::create(backend, data.path());
        let (child, addr, fingerprint) = spawn_broker(data.path(), &db.url, "127.0.0.1:0".parse().unwrap(), extra);
        Self { child: Some(child), addr, fingerprint, data, db, backend: backend.name() }
    }

    /// Starts a broker listening on `listen` (an IPv6 address: `[::1]:0`, or `[::]:0` for both families).
    pub fn start_on(backend: &Backend, listen: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let db = TestDb::create(backend, data.path());
        let (child, addr, fingerprint) = spawn_broker(data.path(), &db.url, listen.parse().unwrap(), &[]);
        Self { child: Some(child), addr, fingerprint, data, db, backend: backend.name() }
    }

    /// Starts two brokers at the same moment on one fresh database (each with its own data directory and
    /// port): both run the migrations' start-up at once.
    pub fn start_pair(backend: &Backend) -> (Self, Self) {
        let data = tempfile::tempdir().unwrap();
        let db = TestDb::create(backend, data.path());
        let data2 = tempfile::tempdir().unwrap();
        let url = db.url.clone();
        let (d1, d2) = (data.path().to_path_buf(), data2.path().to_path_buf());
        let any = "127.0.0.1:0".parse().unwrap();
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| spawn_broker(&d1, &url, any, &[]));
            let b = s.spawn(|| spawn_broker(&d2, &url, any, &[]));
            (a.join(), b.join())
        });
        // If one did not start, the other is stopped before the test fails (no handle owns it yet).
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                for mut started in [a.ok(), b.ok()].into_iter().flatten().map(|(c, _, _)| c) {
                    let _ = started.kill();
                    let _ = started.wait();
                }
                panic!("one of the two brokers did not start; see the panic above");
            }
        };
        let second_db = db.shared();
        (
            Self { child: Some(a.0), addr: a.1, fingerprint: a.2, data, db, backend: backend.name() },
            Self { child: Some(b.0), addr: b.1, fingerprint: b.2, data: data2, db: second_db, backend: backend.name() },
        )
    }

    /// Starts `n` brokers over one fresh database, presenting one identity (the first's key file, given
    /// to the others with `--identity`), each with its own data directory and port: brokers that serve the
    /// same users, for failover.
    pub fn start_sharing(backend: &Backend, n: usize) -> Vec<Self> {
        Self::start_nodes(backend, n, |_| Vec::new())
    }

    /// Starts a cluster of `n` brokers (`--cluster`, node ids 1..=n) over one fresh database and the NATS
    /// server of the run (`TEST_NATS_URL`, default `nats://127.0.0.1:4222`), presenting one identity.
    pub fn start_cluster(backend: &Backend, n: usize) -> Vec<Self> {
        Self::start_cluster_on(backend, n, &nats_url())
    }

    /// As [`Broker::start_cluster`], on the NATS server at `nats`.
    pub fn start_cluster_on(backend: &Backend, n: usize, nats: &str) -> Vec<Self> {
        Self::start_nodes(backend, n, |i| node_args(nats, i))
    }

    /// As [`Broker::start_cluster`], node `i` reaching NATS at `nats[i]` (a test can put a [`crate::TcpCut`]
    /// in one node's way).
    pub fn start_cluster_via(backend: &Backend, nats: &[String]) -> Vec<Self> {
        Self::start_nodes(backend, nats.len(), |i| node_args(&nats[i], i))
    }

    /// As [`Broker::start_cluster`], every node reaching the database through `db` (a [`crate::TcpCut`] in
    /// front of the database server, which a test cuts to stand for the database going down).
    pub fn start_cluster_db_through(backend: &Backend, n: usize, db: &crate::TcpCut) -> Vec<Self> {
        let nats = nats_url();
        let any = "127.0.0.1:0".parse().unwrap();
        let nodes: Vec<Node> = (0..n).map(|_| Node { netns: None, listen: any, db: Some(db.addr()) }).collect();
        Self::start_nodes_with(backend, &nodes, |i| node_args(&nats, i))
    }

    /// As [`Broker::start_cluster`], on NATS at `nats`, each node where `nodes` puts it: on a NAT lab host,
    /// reaching the database through a forwarder of the test's.
    pub fn start_cluster_in(backend: &Backend, nodes: &[Node], nats: &str) -> Vec<Self> {
        Self::start_nodes_with(backend, nodes, |i| node_args(nats, i))
    }

    fn start_nodes(backend: &Backend, n: usize, extra: impl Fn(usize) -> Vec<String>) -> Vec<Self> {
        let any = "127.0.0.1:0".parse().unwrap();
        let nodes: Vec<Node> = (0..n).map(|_| Node { netns: None, listen: any, db: None }).collect();
        Self::start_nodes_with(backend, &nodes, extra)
    }

    fn start_nodes_with(backend: &Backend, nodes: &[Node], extra: impl Fn(usize) -> Vec<String>) -> Vec<Self> {
        let data = tempfile::tempdir().unwrap();
        let db = TestDb::create(backend, data.path());
        let key = data.path().join("broker.key");
        let key = key.to_str().unwrap().to_string();
        let mut out = Vec::new();
        let mut first = Some(data);
        for (i, node) in nodes.iter().enumerate() {
            let url = node.db.map_or_else(|| db.url.clone(), |through| crate::db::url_through(&db.url, through));
            // The first node makes the identity; the others present it.
            let d = first.take().unwrap_or_else(|| tempfile::tempdir().unwrap());
            let args = [vec!["--identity".to_string(), key.clone()], extra(i)].concat();
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let (c, a, f) = spawn_broker_in(node.netns.as_deref(), d.path(), &url, node.listen, &refs);
            out.push(Self {
                child: Some(c),
                addr: a,
                fingerprint: f,
                data: d,
                db: db.shared(),
                backend: backend.name(),
            });
        }
        // The first node owns the database (dropping it drops the database).
        out[0].db = db;
        out
    }

    /// Starts a broker inside network namespace `netns` (a NAT lab host), listening on `listen`.
    pub fn start_in(netns: &str, listen: SocketAddr, extra: &[&str]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let db = TestDb::create(&Backend::Sqlite, data.path());
        let (child, addr, fingerprint) = spawn_broker_in(Some(netns), data.path(), &db.url, listen, extra);
        Self { child: Some(child), addr, fingerprint, data, db, backend: "sqlite" }
    }

    /// The broker process's resident memory now, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("broker running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// `127.0.0.1:PORT`, as peers are told.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the broker (SIGKILL) and starts it again on the same port, data and database.
    pub fn restart(&mut self) {
        self.kill();
        let (child, addr, fingerprint) = spawn_broker(self.data.path(), &self.db.url, self.addr, &[]);
        assert_eq!(fingerprint, self.fingerprint, "identity must survive a restart");
        self.child = Some(child);
        self.addr = addr;
    }

    /// Restarts the broker with a brand-new TLS identity (as if its data were replaced): pinned peers must
    /// refuse it. Returns the new fingerprint.
    pub fn replace_identity(&mut self) -> String {
        self.kill();
        std::fs::remove_file(self.data.path().join("broker.key")).unwrap();
        std::fs::remove_file(self.data.path().join("broker.crt")).unwrap();
        let (child, addr, fingerprint) = spawn_broker(self.data.path(), &self.db.url, self.addr, &[]);
        assert_ne!(fingerprint, self.fingerprint);
        self.child = Some(child);
        self.addr = addr;
        self.fingerprint = fingerprint.clone();
        fingerprint
    }

    pub fn kill(&mut self) {
        kill(self.child.take());
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        self.child.take().and_then(|c| wait_for_exit(c, Some("TERM"))).unwrap_or(false)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A NATS server of a test's own (`nats-server` on a free loopback port), for faults no other test
/// should feel: stopped and started again on the same port.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
}

impl Nats {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut n = Self { child: None, port };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian package nats-server; scripts/test installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it and starts it again on the same port.
    pub fn restart(&mut self) {
        kill(self.child.take());
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        kill(self.child.take());
    }
}

/// The NATS server cluster tests use.
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "nats://127.0.0.1:4222".into())
}

/// The flags that make the broker node `i` (id `i + 1`) of a cluster on NATS at `nats`.
fn node_args(nats: &str, i: usize) -> Vec<String> {
    vec!["--cluster".into(), nats.to_string(), "--node-id".into(), (i + 1).to_string()]
}

fn spawn_broker(data: &Path, db_url: &str, listen: SocketAddr, extra: &[&str]) -> (Child, SocketAddr, String) {
    spawn_broker_in(None, data, db_url, listen, extra)
}

/// A command for a workspace binary, inside network namespace `netns` when given (`ip netns exec` execs
/// the binary in place, so the child's pid is the binary's).
fn command_in(netns: Option<&str>, name: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin(name));
            c
        }
        None => Command::new(bin(name)),
    }
}

fn spawn_broker_in(
    netns: Option<&str>,
    data: &Path,
    db_url: &str,
    listen: SocketAddr,
    extra: &[&str],
) -> (Child, SocketAddr, String) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(data.join("broker.log")).unwrap();
    let mut child = command_in(netns, "broker")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--data")
        .arg(data)
        .arg("--database")
        .arg(db_url)
        .args(extra)
        .env("BROKER_ARGON2_MEMORY_KIB", "1024")
        .env("BROKER_ARGON2_ITERATIONS", "1")
        .env("BROKER_LOG", "info,broker=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let rx = lines_of(child.stdout.take().unwrap(), Some);
    let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
        // No handle will own it: stop it here, or a failing test leaves it running.
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(data.join("broker.log")).unwrap_or_default();
        panic!("broker did not become ready; log:\n{log}")
    });
    // "broker listening on 127.0.0.1:PORT fingerprint HEX"
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "on").unwrap();
    let addr = words[at + 1].parse().unwrap();
    let fingerprint = words[words.iter().position(|w| *w == "fingerprint").unwrap() + 1].to_string();
    (child, addr, fingerprint)
}

/// One device: a home directory and the CLI run against it.
pub struct Peer {
    pub home: TempDir,
    pub broker: String,
    pub username: String,
    /// The NAT lab host (network namespace) the device runs on, if any.
    pub netns: Option<String>,
}

impl Peer {
    /// A device with an empty home, pointed at `broker`.
    pub fn new(broker: &Broker) -> Self {
        Self { home: tempfile::tempdir().unwrap(), broker: broker.address(), username: String::new(), netns: None }
    }

    /// A device with an empty home in `home` (on a disk of the test's choosing), pointed at `broker`.
    pub fn with_home(broker: &Broker, home: TempDir) -> Self {
        Self { home, broker: broker.address(), username: String::new(), netns: None }
    }

    /// A device registered as `username` on NAT lab host `netns`.
    pub fn registered_in(broker: &Broker, username: &str, netns: &str) -> Self {
        let mut p = Self::new(broker);
        p.netns = Some(netns.to_string());
        p.register(username, username);
        p
    }

    /// A device registered as `username` (display name = username).
    pub fn registered(broker: &Broker, username: &str) -> Self {
        let mut p = Self::new(broker);
        p.register(username, username);
        p
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = command_in(self.netns.as_deref(), "peer");
        c.arg("--home").arg(self.home.path()).args(args).env("PEER_LOG", "warn").env_remove("PEER_PASSWORD");
        c
    }

    /// Runs the CLI with `stdin` as its standard input.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child =
            self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`peer {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "`peer {}` should have failed but printed {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Runs a `--json` command and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    pub fn register(&mut self, username: &str, display_name: &str) {
        let out = self.run_with_stdin(
            &["register", username, "--broker", &self.broker, "--display-name", display_name, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        );
        assert!(out.status.success(), "register {username}: {}", String::from_utf8_lossy(&out.stderr));
        self.username = username.to_string();
    }

    /// `peer login` with a password; returns the output.
    pub fn login(&self, username: &str, password: &str) -> Output {
        self.run_with_stdin(
            &["login", username, "--broker", &self.broker, "--password-stdin"],
            &format!("{password}\n"),
        )
    }

    /// Links this (fresh) device to `existing`'s account: `peer devices link` there (its agent must run),
    /// answering "yes" to the words, and `peer link CODE` here. Returns this side's output.
    pub fn link_from(&mut self, existing: &Peer) -> String {
        self.link_answering(existing, "y")
    }

    /// As [`Peer::link_from`], answering `answer` on the existing device; returns this side's output (stdout
    /// and stderr), whether it succeeded or not.
    pub fn link_answering(&mut self, existing: &Peer, answer: &str) -> String {
        use std::io::BufRead;
        let mut offer = existing
            .command(&["devices", "link"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        offer.stdin.take().unwrap().write_all(format!("{answer}\n").as_bytes()).unwrap();
        let mut lines = std::io::BufReader::new(offer.stdout.take().unwrap()).lines();
        let code = loop {
            let line = lines.next().expect("`peer devices link` printed no code").unwrap();
            if let Some(rest) = line.trim().strip_prefix("peer link ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        let out = self.run(&["link", &code, "--broker", &self.broker.clone()]);
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let offered = offer.wait_with_output().unwrap();
        let text = format!(
            "{}{}\n[existing device]\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            rest.join("\n"),
            String::from_utf8_lossy(&offered.stderr)
        );
        if out.status.success() {
            assert!(offered.status.success(), "`peer devices link` failed: {text}");
            self.username = existing.username.clone();
        }
        text
    }

    /// Starts the agent and waits until it is online.
    pub fn up(&self) -> Agent {
        self.up_with(&[])
    }

    /// Starts the agent with extra `peer up` options and waits until it is online.
    pub fn up_with(&self, extra: &[&str]) -> Agent {
        let agent = self.start_agent_with(extra);
        self.wait_status(|s| s["online"] == Value::Bool(true), "agent online");
        agent
    }

    /// Starts the agent without waiting for it.
    pub fn start_agent(&self) -> Agent {
        self.start_agent_with(&[])
    }

    /// Starts the agent with extra `peer up` options, without waiting for it.
    pub fn start_agent_with(&self, extra: &[&str]) -> Agent {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.home.path().join("agent.log")).unwrap();
        // In a lab host, every interface: the agent reports its LAN address as a candidate itself.
        let bind = if self.netns.is_some() { "0.0.0.0:0" } else { "127.0.0.1:0" };
        let mut args = vec!["up"];
        if !extra.contains(&"--bind") {
            args.extend(["--bind", bind]);
        }
        args.extend_from_slice(extra);
        let child = self
            .command(&args)
            .env("PEER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent { child: Some(child) }
    }

    /// Polls `peer status --json` until `pred` holds.
    pub fn wait_status(&self, pred: impl Fn(&Value) -> bool, what: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.run(&["status", "--json"]);
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                if pred(&v) {
                    return v;
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; agent log:\n{}", self.agent_log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `peer watch --json` and waits until it is subscribed.
    pub fn watch(&self) -> Watch {
        let mut child = self
            .command(&["watch", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rx = lines_of(child.stdout.take().unwrap(), |line| serde_json::from_str::<Value>(&line).ok());
        let w = Watch { child, rx, seen: Default::default() };
        w.expect("watch subscribed", |v| v["type"] == "watching");
        w
    }

    /// Makes this peer and `other` friends (both agents must be running).
    pub fn befriend(&self, other: &Peer) {
        self.ok(&["friends", "add", &other.username]);
        other.ok(&["friends", "accept", &self.username]);
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("agent.log")).unwrap_or_default()
    }
}

/// An agent started in the background (`peer up --detach`, or by the app): it is no child of the test's,
/// so this kills it when the test ends, pass or fail.
pub struct DetachedAgent<'a>(pub &'a Peer);

impl Drop for DetachedAgent<'_> {
    fn drop(&mut self) {
        if let Ok(out) = self.0.command(&["status", "--json"]).output()
            && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
            && let Some(pid) = v["agent_pid"].as_u64()
        {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

/// Two devices registered as `alice` and `bob` (agents not started).
pub fn alice_and_bob(broker: &Broker) -> (Peer, Peer) {
    (Peer::registered(broker, "alice"), Peer::registered(broker, "bob"))
}

/// Friends alice and bob with both agents running.
pub struct Friends {
    pub alice: Peer,
    pub bob: Peer,
    pub agents: (Agent, Agent),
}

impl Friends {
    /// Registers both, starts their agents (with extra `peer up` options each) and befriends them.
    pub fn start(broker: &Broker, alice_up: &[&str], bob_up: &[&str]) -> Self {
        let (alice, bob) = alice_and_bob(broker);
        let agents = (alice.up_with(alice_up), bob.up_with(bob_up));
        alice.befriend(&bob);
        Self { alice, bob, agents }
    }
}

/// Friends alice and bob, both agents running with `--relay-only`, bob accepting every file into a temp
/// directory: everything between them goes through the broker's relay.
pub struct RelayedPair {
    pub alice: Peer,
    pub bob: Peer,
    pub inbox: TempDir,
    pub agents: (Agent, Agent),
}

impl RelayedPair {
    pub fn start(broker: &Broker) -> Self {
        Self::start_with(broker, &[])
    }

    /// As [`RelayedPair::start`], with extra `peer up` options for both.
    pub fn start_with(broker: &Broker, extra: &[&str]) -> Self {
        let inbox = tempfile::tempdir().unwrap();
        let alice_up = [&["--relay-only"], extra].concat();
        let bob_up = [&["--relay-only", "--auto-accept-files", inbox.path().to_str().unwrap()], extra].concat();
        let Friends { alice, bob, agents } = Friends::start(broker, &alice_up, &bob_up);
        Self { alice, bob, inbox, agents }
    }
}

/// The `text` of every message in a `peer history --json` listing, in order.
pub fn texts(history: &Value) -> Vec<String> {
    history.as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_string()).collect()
}

/// Polls `cond` until it holds; panics with `what` after [`WAIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running `peer up`.
pub struct Agent {
    child: Option<Child>,
}

impl Agent {
    /// SIGKILL: the agent vanishes without a goodbye, as on a crash or power loss.
    pub fn kill9(&mut self) {
        kill(self.child.take());
    }

    /// SIGTERM, then wait: a clean stop.
    pub fn stop(&mut self) -> bool {
        self.child.take().and_then(|c| wait_for_exit(c, Some("TERM"))).unwrap_or(false)
    }

    /// Waits for the agent to exit by itself; returns its success.
    pub fn wait_exit(&mut self) -> bool {
        let c = self.child.take().expect("agent already stopped");
        wait_for_exit(c, None).expect("agent did not exit")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `peer watch --json`, its events read as they come.
pub struct Watch {
    child: Child,
    rx: mpsc::Receiver<Value>,
    seen: std::cell::RefCell<Vec<Value>>,
}

impl Watch {
    /// Waits for an event matching `pred` (earlier non-matching events are kept for `none`); panics after
    /// [`WAIT`] with everything seen.
    pub fn expect(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(v) => self.seen.borrow_mut().push(v),
                Err(_) => panic!("no event {what}; saw {:#?}", self.seen.borrow()),
            }
        }
    }

    /// Waits for an event of `kind` about `username`.
    pub fn expect_event(&self, kind: &str, username: &str) -> Value {
        self.expect(&format!("{kind} {username}"), |v| v["type"] == kind && v["username"] == username)
    }

    /// Everything received so far that no `expect` consumed, after draining what is queued now.
    pub fn drain(&self) -> Vec<Value> {
        while let Ok(v) = self.rx.try_recv() {
            self.seen.borrow_mut().push(v);
        }
        self.seen.borrow().clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
