//! IPv6, on loopback (`::1`): a broker on IPv6, friends who talk directly over it, a relay used by agents
//! on dual-stack sockets (where quinn knows every IPv4 address, the relay's stand-ins included, in their
//! IPv4-mapped form), and a dual-stack broker serving an IPv6 agent and an IPv4 one, which sees each
//! at the address it really has.
#![allow(clippy::disallowed_macros)] // test output, read by people debugging a test

use testkit::{Broker, Peer, RelayedPair, backends, texts};

fn sqlite() -> testkit::Backend {
    backends().into_iter().find(|b| b.name() == "sqlite").unwrap()
}

fn a_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("over-ipv6.bin");
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    (dir, file, data)
}

#[test]
fn friends_on_ipv6_talk_directly_and_send_files() {
    let broker = Broker::start_on(&sqlite(), "[::1]:0");
    assert!(broker.address().starts_with("[::1]:"), "{}", broker.address());
    let (alice, bob) = testkit::alice_and_bob(&broker);
    let inbox = tempfile::tempdir().unwrap();
    let _a = alice.up_with(&["--bind", "[::1]:0"]);
    let _b = bob.up_with(&["--bind", "[::1]:0", "--auto-accept-files", inbox.path().to_str().unwrap()]);
    alice.befriend(&bob);
    assert!(alice.ok(&["send", "bob", "over IPv6"]).contains("delivered"), "{}", alice.agent_log());
    assert!(bob.ok(&["send", "alice", "and back"]).contains("delivered"));
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["over IPv6", "and back"]);
    for who in [&alice, &bob] {
        let conn = who.json(&["friends", "--json"])[0]["connections"][0].clone();
        assert_eq!(conn["path"], "direct", "{conn}");
        assert!(conn["remote_addr"].as_str().unwrap().starts_with("[::1]:"), "{conn}");
    }
    let (_src, file, data) = a_file();
    assert!(alice.ok(&["send-file", "bob", file.to_str().unwrap()]).contains("verified"));
    assert_eq!(std::fs::read(inbox.path().join("over-ipv6.bin")).unwrap(), data);
    assert!(!broker.log().contains("relay open"), "nothing relayed:\n{}", broker.log());
}

/// Both agents on dual-stack sockets (`[::]`), relayed: the stand-in addresses reach quinn IPv4-mapped,
/// and the relay must recognise them so and hand packets back in that form.
#[test]
fn agents_on_dual_stack_sockets_are_relayed() {
    let broker = Broker::start_on(&sqlite(), "[::1]:0");
    let pair = RelayedPair::start_with(&broker, &["--bind", "[::]:0"]);
    let RelayedPair { alice, bob, inbox, agents: _agents } = pair;
    assert!(alice.ok(&["send", "bob", "through the relay"]).contains("delivered"), "{}", alice.agent_log());
    assert!(bob.ok(&["send", "alice", "and back"]).contains("delivered"));
    for who in [&alice, &bob] {
        let conn = who.json(&["friends", "--json"])[0]["connections"][0].clone();
        assert_eq!(conn["path"], "relayed", "{conn}");
        assert_eq!(conn["remote_addr"], broker.address(), "{conn}");
    }
    let (_src, file, data) = a_file();
    assert!(alice.ok(&["send-file", "bob", file.to_str().unwrap()]).contains("verified"));
    assert_eq!(std::fs::read(inbox.path().join("over-ipv6.bin")).unwrap(), data);
    let log = broker.log();
    assert!(log.contains("relay open") && log.contains("relay channel in use"), "{log}");
}

/// A broker on `[::]` serves both families on one socket: an agent on IPv6 and one on IPv4 (which cannot
/// reach each other directly on loopback, so they are relayed), each seen at its real address, the IPv4
/// one as IPv4 and not in the mapped form the socket reports.
#[test]
fn a_dual_stack_broker_serves_ipv6_and_ipv4_agents() {
    let broker = Broker::start_on(&sqlite(), "[::]:0");
    let port = broker.addr.port();
    let on = |name: &str, at: String| {
        let mut p = Peer::new(&broker);
        p.broker = at;
        p.register(name, name);
        p
    };
    let alice = on("alice", format!("[::1]:{port}"));
    let bob = on("bob", format!("127.0.0.1:{port}"));
    let _a = alice.up_with(&["--bind", "[::1]:0"]);
    let _b = bob.up();
    alice.befriend(&bob);
    let observed = |p: &Peer| p.json(&["status", "--json"])["observed_addr"].as_str().unwrap_or_default().to_string();
    assert!(observed(&alice).starts_with("[::1]:"), "{}", observed(&alice));
    assert!(observed(&bob).starts_with("127.0.0.1:"), "{}", observed(&bob));
    assert!(alice.ok(&["send", "bob", "from IPv6"]).contains("delivered"), "{}", alice.agent_log());
    assert!(bob.ok(&["send", "alice", "from IPv4"]).contains("delivered"), "{}", bob.agent_log());
    assert_eq!(texts(&alice.json(&["history", "bob", "--json"])), ["from IPv6", "from IPv4"]);
    // The relay's channel across the families: the broker sends to the IPv4 agent in the mapped form its
    // socket knows it by.
    let log = broker.log();
    assert_eq!(log.matches("relay channel in use").count(), 2, "both ways:\n{log}");
}
