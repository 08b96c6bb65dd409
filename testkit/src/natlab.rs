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
