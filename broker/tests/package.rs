//! The Debian package (`scripts/deb`): what it installs where, and that the config file it ships starts
//! the broker it ships (flags still override it, as a systemd drop-in or an operator would).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_deb_holds_the_broker_its_unit_and_a_config_that_starts_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = tempfile::tempdir().unwrap();
    let binary = testkit::bin("broker");
    let deb = run(Command::new(root.join("scripts/deb"))
        .args(["--binary"])
        .arg(&binary)
        .arg("--out")
        .arg(out.path())
        .args(["--compress", "none"]));
    let deb = Path::new(deb.trim());
    assert!(deb.file_name().unwrap().to_str().unwrap().starts_with("p2pim-broker_"), "{}", deb.display());

    let info = run(Command::new("dpkg-deb").arg("--info").arg(deb));
    for needle in ["Package: p2pim-broker", "Version: ", "Architecture: ", "conffiles", "postinst"] {
        assert!(info.contains(needle), "{needle}: {info}");
    }
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    for path in [
        "./usr/bin/broker",
        "./lib/systemd/system/p2pim-broker.service",
        "./etc/p2pim-broker/broker.toml",
        "./usr/share/doc/p2pim-broker/README.md",
    ] {
        assert!(contents.contains(path), "{path}: {contents}");
    }
    let package = run(Command::new("dpkg-deb").args(["--field"]).arg(deb).arg("Package"));
    assert_eq!(package.trim(), "p2pim-broker");

    let tree = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(tree.path()));
    let unit = std::fs::read_to_string(tree.path().join("lib/systemd/system/p2pim-broker.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/broker --config /etc/p2pim-broker/broker.toml"), "{unit}");
    assert!(unit.contains("DynamicUser=yes") && unit.contains("StateDirectory=p2pim-broker"), "{unit}");

    // The shipped config starts the shipped binary; flags override its address and data directory.
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(tree.path().join("usr/bin/broker"))
        .arg("--config")
        .arg(tree.path().join("etc/p2pim-broker/broker.toml"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env("BROKER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(line.starts_with("broker listening on 127.0.0.1:"), "{line}{}", String::from_utf8_lossy(&out.stderr));
    assert!(data.path().join("broker.key").exists());
}
