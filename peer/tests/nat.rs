//! Through real NATs, in the NAT lab (`scripts/natlab`: network namespaces, veth pairs, nftables): which
//! pairs connect directly, which go through the broker's relay, and that a chat message and a file get
//! through either way. The lab needs root, iproute2 and nftables (`scripts/test` installs them; CI runs as
//! root): without them these tests fail, saying so, rather than pass without having run.

use std::net::SocketAddr;
use testkit::{Broker, Lab, Peer};

/// Two friends on lab hosts `x` and `y`: alice on `x` messages and sends a file to bob on `y`, bob answers;
/// both see the path `expect` (`direct` or `relayed`) in `peer friends --json`.
fn pair_through(x: &str, y: &str, expect: &str) {
    let lab = Lab::build();
    let listen: SocketAddr = "203.0.113.1:7878".parse().unwrap();
    let broker = Broker::start_in(&lab.ns("broker"), listen, &[]);
    let alice = Peer::registered_in(&broker, "alice", &lab.ns(x));
    let bob = Peer::registered_in(&broker, "bob", &lab.ns(y));
    let inbox = tempfile::tempdir().unwrap();
    let _a = alice.up();
    let _b = bob.up_with(&["--auto-accept-files", inbox.path().to_str().unwrap()]);
    alice.befriend(&bob);

    let out = alice.ok(&["send", "bob", &format!("hello from {x} to {y}")]);
    assert!(out.contains("delivered"), "{x}->{y}: {out}\nalice's log:\n{}", alice.agent_log());
    let history = bob.json(&["history", "alice", "--json"]);
    assert_eq!(history[0]["text"], format!("hello from {x} to {y}"));
    assert!(bob.ok(&["send", "alice", "and back"]).contains("delivered"));

    for (who, other) in [(&alice, "bob"), (&bob, "alice")] {
        let friends = who.json(&["friends", "--json"]);
        let conns = friends[0]["connections"].as_array().unwrap();
        assert_eq!(friends[0]["username"], other);
        assert!(!conns.is_empty(), "{x}-{y}: no live connection: {friends:#}");
        assert_eq!(conns[0]["path"], expect, "{x}-{y} seen by {}: {friends:#}", who.username);
        if expect == "relayed" {
            assert_eq!(conns[0]["remote_addr"], "203.0.113.1:7878");
        } else {
            assert_ne!(conns[0]["remote_addr"], "203.0.113.1:7878");
        }
    }

    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("across.bin");
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let out = alice.ok(&["send-file", "bob", file.to_str().unwrap()]);
    assert!(out.contains("verified"), "{out}");
    assert_eq!(std::fs::read(inbox.path().join("across.bin")).unwrap(), data);
    if expect == "relayed" {
        assert!(broker.log().contains("relay open"), "the broker relayed");
    } else {
        assert!(!broker.log().contains("relay open"), "nothing was relayed:\n{}", broker.log());
    }
}

#[test]
fn public_to_public_is_direct() {
    pair_through("a1", "a2", "direct");
}

#[test]
fn public_to_port_preserving_nat_is_direct() {
    pair_through("a1", "b1", "direct");
}

#[test]
fn public_to_symmetric_nat_is_direct() {
    pair_through("a1", "c1", "direct");
}

#[test]
fn both_behind_port_preserving_nats_is_direct() {
    pair_through("b1", "b2", "direct");
}

#[test]
fn behind_the_same_nat_is_direct_over_the_lan() {
    pair_through("d1", "d2", "direct");
}

#[test]
fn port_preserving_to_symmetric_is_relayed() {
    pair_through("b1", "c1", "relayed");
}

#[test]
fn symmetric_to_symmetric_is_relayed() {
    pair_through("c1", "c2", "relayed");
}
