//! The config file: its keys set what flags set, the environment beats it and a flag beats both, and a bad
//! file stops the start with a message that names the file and the key.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// Starts the broker with `args` and `env`, waits for its ready line, stops it. `Err(stderr)` if it exits
/// instead.
fn start(args: &[&str], env: &[(&str, &Path)]) -> Result<(), String> {
    let mut cmd = Command::new(testkit::bin("broker"));
    cmd.args(args).env_remove("BROKER_DATA").env_remove("BROKER_LISTEN").env("BROKER_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    if line.starts_with("broker listening on") {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(());
    }
    let out = child.wait_with_output().unwrap();
    Err(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_file_sets_flags_and_the_environment_and_flags_beat_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let file = d("broker.toml");
    std::fs::write(
        &file,
        format!(
            "# A comment.\nlisten = \"127.0.0.1:0\"\ndata = \"{}\"\ngroup-retention-days = 30\nno_relay = true\n",
            d("from-file").display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    start(&["--config", file], &[]).unwrap();
    assert!(d("from-file").join("broker.key").exists(), "the file's data directory was used");

    start(&["--config", file], &[("BROKER_DATA", &d("from-env"))]).unwrap();
    assert!(d("from-env").join("broker.key").exists(), "the environment beats the file");

    let flag = d("from-flag");
    start(&["--config", file, "--data", flag.to_str().unwrap()], &[("BROKER_DATA", &d("from-env-2"))]).unwrap();
    assert!(flag.join("broker.key").exists(), "a flag beats both");
    assert!(!d("from-env-2").exists());

    // The file's path can come from the environment too.
    std::fs::remove_dir_all(d("from-file")).unwrap();
    start(&[], &[("BROKER_CONFIG", Path::new(file))]).unwrap();
    assert!(d("from-file").join("broker.key").exists());
}

#[test]
fn a_bad_file_stops_the_start_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needles) in [
        ("lissten = \"127.0.0.1:0\"", &["unknown key `lissten`", "known keys: listen"][..]),
        ("listen = \"nowhere\"", &["key `listen`", "invalid socket address"][..]),
        ("relay_user_rate = \"lots\"", &["key `relay_user_rate`", "not a size"][..]),
        ("no_relay = \"yes\"", &["key `no_relay`", "true or false"][..]),
        ("listen = ", &["not valid TOML"][..]),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let data = dir.path().join("data");
        let err = start(&["--config", file.to_str().unwrap(), "--data", data.to_str().unwrap()], &[])
            .expect_err(&format!("started with {text:?}"));
        assert!(err.contains(file.to_str().unwrap()), "{text:?}: the file is named: {err}");
        for n in needles {
            assert!(err.contains(n), "{text:?}: {err}");
        }
        assert!(!err.contains("Stack backtrace"), "a message, not a dump: {err}");
    }
    let missing = dir.path().join("missing.toml");
    let err = start(&["--config", missing.to_str().unwrap()], &[]).unwrap_err();
    assert!(err.contains("cannot read the config file") && err.contains("missing.toml"), "{err}");
}
