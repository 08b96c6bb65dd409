//! The first slice end to end: real `broker` and `peer` binaries on loopback.

use testkit::{Backend, Broker, PASSWORD, Peer};

#[test]
fn quick_start_two_users_online_then_sigkill_goes_offline() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let bob = Peer::registered(&broker, "bob");
    let mut alice_agent = alice.up();
    let _bob_agent = bob.up();

    let s = alice.json(&["status", "--json"]);
    assert_eq!(s["username"], "alice");
    assert_eq!(s["online"], true);
    assert_eq!(s["broker_fingerprint"], broker.fingerprint.as_str());
    let observed: std::net::SocketAddr = s["observed_addr"].as_str().unwrap().parse().unwrap();
    assert!(observed.ip().is_loopback());
    assert_eq!(s["local_addrs"][0].as_str().unwrap(), observed.to_string(), "one socket for everything");
    assert_eq!(bob.json(&["status", "--json"])["online"], true);

    alice.befriend(&bob);
    let watch = bob.watch();
    alice_agent.kill9();
    // The broker notices the silent connection through its idle timeout (at most 15 s) and tells friends.
    watch.expect_event("friend_offline", "alice");
    let friends = bob.json(&["friends", "--json"]);
    assert_eq!(friends[0]["online"], false);
    assert!(broker.log().contains("offline"), "connection table row removed");
}

#[test]
fn agent_reconnects_by_itself_after_broker_restart() {
    let mut broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let bob = Peer::registered(&broker, "bob");
    let _a = alice.up();
    let _b = bob.up();
    alice.befriend(&bob);
    let watch = alice.watch();

    broker.restart();
    watch.expect("disconnected", |v| v["type"] == "disconnected");
    watch.expect("reconnected", |v| v["type"] == "connected");
    bob.wait_status(|s| s["online"] == true, "bob back online");
    // The session is real again: friends and presence work after the restart.
    watch.expect_event("friend_online", "bob");
    let f = alice.json(&["friends", "--json"]);
    assert_eq!(f[0]["username"], "bob");
    assert_eq!(f[0]["online"], true);
}

#[test]
fn cli_errors_are_clear() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");

    // Duplicate username.
    let mut other = Peer::new(&broker);
    let out = other.run_with_stdin(
        &["register", "alice", "--broker", &broker.address(), "--password-stdin"],
        "another password\n",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken"));
    // Wrong password and unknown user read the same.
    let wrong = other.login("alice", "not my password");
    let unknown = other.login("nobody", "not my password");
    assert!(!wrong.status.success() && !unknown.status.success());
    assert_eq!(String::from_utf8_lossy(&wrong.stderr), String::from_utf8_lossy(&unknown.stderr));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unknown user or wrong password"));
    // Bad input is caught before it leaves the machine.
    assert!(
        other.fails(&["register", "No Caps", "--broker", &broker.address(), "--password-stdin"]).contains("username")
    );
    // No password source without a terminal.
    let err = other.fails(&["login", "alice", "--broker", &broker.address()]);
    assert!(err.contains("--password-stdin"), "{err}");
    // Commands that need the agent say how to start it.
    let err = alice.fails(&["status"]);
    assert!(err.contains("no agent is running") && err.contains("up"), "{err}");
    // An agent without an account says how to get one.
    let err = other.fails(&["up"]);
    assert!(err.contains("peer register") || err.contains("peer login"), "{err}");
    // A folder with other files in it is not taken over (and not made private) as a home.
    let docs = tempfile::tempdir().unwrap();
    std::fs::write(docs.path().join("notes.txt"), "mine").unwrap();
    let mode =
        |p: &std::path::Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
    let before = mode(docs.path());
    let out = std::process::Command::new(testkit::bin("peer"))
        .arg("--home")
        .arg(docs.path())
        .args(["register", "carol", "--broker", &broker.address(), "--password-stdin"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a p2pim home"), "{out:?}");
    assert_eq!(mode(docs.path()), before, "permissions untouched");
    // Logging in on a second device works, and both devices are separate identities.
    other.username = "alice".into();
    assert!(other.login("alice", PASSWORD).status.success());
}

#[test]
fn changed_broker_identity_is_refused_loudly() {
    let mut broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let mut agent = alice.up();
    let new_fp = broker.replace_identity();
    assert!(!agent.wait_exit(), "the agent must stop rather than talk to an impostor");
    assert!(alice.agent_log().contains("BROKER IDENTITY CHANGED"), "{}", alice.agent_log());
    let out = alice.login("alice", PASSWORD);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BROKER IDENTITY CHANGED"));
    // Pinning the new fingerprint explicitly is the way forward.
    let out = alice.run_with_stdin(
        &["login", "alice", "--broker", &broker.address(), "--broker-fingerprint", &new_fp, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn logout_revokes_the_token_and_stops_the_agent() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let mut agent = alice.up();
    assert!(alice.ok(&["logout"]).contains("logged out"));
    assert!(agent.wait_exit(), "agent exits cleanly after logout");
    let err = alice.fails(&["up"]);
    assert!(err.contains("logged out") && err.contains("peer login"), "{err}");
    assert!(alice.login("alice", PASSWORD).status.success());
    let _agent = alice.up();
}

#[test]
fn secrets_are_private_and_never_logged() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let mut agent = alice.up();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let sock = alice.home.path().join("agent.sock");
        assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600, "control socket");
    }
    assert!(agent.stop(), "clean stop on SIGTERM");
    assert!(!alice.home.path().join("agent.sock").exists(), "socket removed on stop");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(alice.home.path()), 0o700);
        assert_eq!(mode(&alice.home.path().join("identity.key")), 0o600);
        assert_eq!(mode(&alice.home.path().join("peer.db")), 0o600);
        assert_eq!(mode(&broker.data.path().join("broker.key")), 0o600);
        assert_eq!(mode(&broker.data.path().join("broker.db")), 0o600);
        assert_eq!(mode(broker.data.path()), 0o700);
    }
    for log in [broker.log(), alice.agent_log()] {
        assert!(!log.is_empty());
        assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log}");
        assert!(!log.contains(PASSWORD), "password in a log");
    }
}

#[test]
fn one_agent_per_home_and_a_hostile_control_client_changes_nothing() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let _agent = alice.up();
    let err = alice.fails(&["up"]);
    assert!(err.contains("already running"), "{err}");
    #[cfg(unix)]
    {
        use std::io::{Read, Write};
        let sock = alice.home.path().join("agent.sock");
        // An oversized length prefix, then garbage: the agent drops that client and carries on.
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
        let _ = s.read_to_end(&mut buf);
    }
    assert_eq!(alice.json(&["status", "--json"])["online"], true);
}
