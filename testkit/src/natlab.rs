//! The NAT lab (`scripts/natlab`) for tests: built when a test starts, torn down when it ends, pass or fail.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One lab: its namespaces are `PREFIX-HOST`.
pub struct Lab {
    prefix: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/natlab")
}

impl Lab {
    /// Builds a lab of its own (the prefix is unique to this process and call). Needs root, iproute2 and
    /// nftables: `.ci/run` installs them; elsewhere, run these tests as root.
    pub fn build() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("nl{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(script()).args(["up", &prefix]).output().expect("cannot run scripts/natlab");
        assert!(
            out.status.success(),
            "could not build the NAT lab (root, iproute2 and nftables are needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { prefix }
    }

    /// The namespace of a lab host (`broker`, `a1`, `b1`, `c1`, `d1`, ...).
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// A TCP listener on `addr` inside a lab host, owned by this process: what its accept loop then
    /// connects to is reached from the machine itself (a socket stays in the namespace it was made in).
    /// This is how a host of the lab reaches the machine's PostgreSQL, through a [`crate::TcpCut`].
    #[allow(unsafe_code)] // setns(2) has no safe wrapper in std
    pub fn listen_in(&self, host: &str, addr: SocketAddr) -> TcpListener {
        let path = format!("/run/netns/{}", self.ns(host));
        // A thread of its own enters the namespace and ends there, leaving every other thread where it was.
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns(2) on a valid open descriptor; it changes only this thread's network namespace.
            let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path}: {}", std::io::Error::last_os_error());
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("listen on {addr} in {path}: {e}"))
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Runs `args` on a lab host and waits for it; panics, with its output, if it fails.
    pub fn run(&self, host: &str, args: &[&str]) {
        let out = self.on(host, args).output().unwrap();
        assert!(out.status.success(), "{args:?} on {host}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `args` as a command on a lab host.
    fn on(&self, host: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).args(args);
        c
    }

    /// Runs `args` on a lab host: whether it succeeded.
    pub fn succeeds(&self, host: &str, args: &[&str]) -> bool {
        self.on(host, args).output().unwrap().status.success()
    }

    /// Starts `args` on a lab host in the background, until the handle is dropped.
    pub fn spawn(&self, host: &str, args: &[&str]) -> Running {
        let child = self
            .on(host, args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Running(child)
    }

    /// Drops every packet between lab host `host` and address `other`, both ways, until
    /// [`Lab::reconnect`]: a partition nobody is told of.
    pub fn partition(&self, host: &str, other: IpAddr) {
        let (o, table) = (other.to_string(), "partition");
        self.run(host, &["nft", "add", "table", "inet", table]);
        for (hook, dir) in [("input", "saddr"), ("output", "daddr")] {
            let chain = format!("{{ type filter hook {hook} priority -10; }}");
            self.run(host, &["nft", "add", "chain", "inet", table, hook, &chain]);
            self.run(host, &["nft", "add", "rule", "inet", table, hook, "ip", dir, &o, "drop"]);
        }
    }

    /// Drops every packet leaving lab host `host` that matches an nftables expression (for example
    /// `udp dport 7878 @ih,0,8 0`: the relay's channel datagrams), for the rest of the lab's life.
    pub fn drop_outgoing(&self, host: &str, expr: &[&str]) {
        let table = "dropping";
        self.run(host, &["nft", "add", "table", "inet", table]);
        self.run(host, &["nft", "add", "chain", "inet", table, "output", "{ type filter hook output priority -10; }"]);
        self.run(host, &[&["nft", "add", "rule", "inet", table, "output"], expr, &["counter", "drop"]].concat());
    }

    /// How many packets [`Lab::drop_outgoing`] has dropped on `host` so far.
    pub fn dropped(&self, host: &str) -> u64 {
        let out = self.on(host, &["nft", "list", "table", "inet", "dropping"]).output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = listing.split_whitespace().collect();
        words.windows(3).find(|w| w[0] == "counter" && w[1] == "packets").and_then(|w| w[2].parse().ok()).unwrap_or(0)
    }

    /// Ends what [`Lab::drop_outgoing`] did on `host`.
    pub fn stop_dropping(&self, host: &str) {
        self.run(host, &["nft", "delete", "table", "inet", "dropping"]);
    }

    /// Ends what [`Lab::partition`] did on `host`.
    pub fn reconnect(&self, host: &str) {
        self.run(host, &["nft", "delete", "table", "inet", "partition"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", &self.prefix]).status();
    }
}

/// A process started on a lab host ([`Lab::spawn`]): killed and reaped when dropped.
pub struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tmpfs of a few MiB mounted on a fresh directory, for filling up: what a full disk does to the agent.
/// Needs root (`.ci/run` runs as root); it is unmounted when dropped, pass or fail.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "could not mount a small tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk is full; returns its path (delete it to free the space).
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // Whatever is left below one block too.
        while f.write_all(&[0u8; 512]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
