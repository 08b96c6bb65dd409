//! The NAT lab (`scripts/natlab`) for tests: built when a test starts, torn down when it ends, pass or fail.

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
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", &self.prefix]).status();
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
