//! Through real NATs, in the NAT lab (`scripts/natlab`: network namespaces, veth pairs, nftables): which
//! pairs connect directly, which go through the broker's relay, and that a chat message and a file get
//! through either way. The lab needs root, iproute2 and nftables (`scripts/test` installs them; CI runs as
//! root): without them these tests fail, saying so, rather than pass without having run.

use std::net::SocketAddr;
use testkit::{Broker, Lab, Peer, wait_until};

/// Two friends on lab hosts `x` and `y`: alice on `x` messages and sends a file to bob on `y`, bob answers;
/// both see the path `expect` (`direct` or `relayed`) in `peer friends --json`. `searched`: the pair starts
/// on the relay and a search for a direct path (`core::search`) moves it to a direct one, which then
/// carries the rest.
fn pair_through(x: &str, y: &str, expect: &str) {
    pair_through_with(x, y, expect, &[]);
}

/// [`pair_through`] with extra `peer up` options for both agents.
fn pair_through_with(x: &str, y: &str, expect: &str, up: &[&str]) {
    let log = pair_in(&Lab::build(), x, y, expect, up);
    if expect == "relayed" {
        // Through the NATs on the broker connection's own mapping: the fast path works wherever it does.
        assert!(log.contains("relay channel in use"), "the relay's channel carried the packets:\n{log}");
    }
}

/// [`pair_through_with`] in a lab already built; the broker's log.
fn pair_in(lab: &Lab, x: &str, y: &str, expect: &str, up: &[&str]) -> String {
    let listen: SocketAddr = "203.0.113.1:7878".parse().unwrap();
    let broker = Broker::start_in(&lab.ns("broker"), listen, &[]);
    let alice = Peer::registered_in(&broker, "alice", &lab.ns(x));
    let bob = Peer::registered_in(&broker, "bob", &lab.ns(y));
    let inbox = tempfile::tempdir().unwrap();
    let _a = alice.up_with(up);
    let _b = bob.up_with(&[&["--auto-accept-files", inbox.path().to_str().unwrap()], up].concat());
    alice.befriend(&bob);

    let out = alice.ok(&["send", "bob", &format!("hello from {x} to {y}")]);
    assert!(out.contains("delivered"), "{x}->{y}: {out}\nalice's log:\n{}", alice.agent_log());
    let history = bob.json(&["history", "alice", "--json"]);
    assert_eq!(history[0]["text"], format!("hello from {x} to {y}"));
    let searched = expect == "searched";
    if searched {
        wait_for_direct(&alice, &bob);
        let logs = alice.agent_log() + &bob.agent_log();
        assert!(logs.contains("the search found a direct path"), "{logs}");
    }
    let expect = if searched { "direct" } else { expect };
    assert!(bob.ok(&["send", "alice", "and back"]).contains("delivered"));
    if searched {
        // Each once, in order, across the move.
        assert_eq!(texts(&alice, "bob"), [format!("hello from {x} to {y}"), "and back".to_string()]);
        let conn = alice.json(&["friends", "--json"])[0]["connections"][0].clone();
        assert!(conn["upgrades"].as_u64().unwrap() >= 1, "{conn}");
    }

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
    } else if !searched {
        assert!(!broker.log().contains("relay open"), "nothing was relayed:\n{}", broker.log());
    }
    broker.log()
}

#[test]
fn public_to_public_is_direct() {
    pair_through("a1", "a2", "direct");
}

/// Agents on dual-stack sockets (what an agent binds when its broker has an IPv6 address) behind IPv4
/// NATs: every address reaches quinn IPv4-mapped, and the punch, the NAT opening before it (its hop limit
/// set on an IPv6 socket) and the path shown work as on IPv4 sockets.
#[test]
fn dual_stack_agents_behind_port_preserving_nats_are_direct() {
    pair_through_with("b1", "b2", "direct", &["--bind", "[::]:0"]);
}

/// The same with the search for a direct path, whose own sockets are IPv4.
#[test]
fn dual_stack_agents_search_past_a_symmetric_nat() {
    pair_through_with("b1", "c1", "searched", &["--bind", "[::]:0"]);
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

/// A symmetric NAT facing one that keeps ports but filters by address and port: c1's port towards b1
/// cannot be known, so the plain punch fails and the pair starts on the relay; then c1 opens many ports
/// towards b1 and b1 probes c1's public address until one is found, and the pair goes direct.
#[test]
fn port_preserving_to_symmetric_is_direct_after_a_search() {
    pair_through("b1", "c1", "searched");
}

/// Home routers without a WAN firewall, two hops apart: an unsolicited packet that reaches a router leaves
/// a conntrack entry that makes it renumber its host's own packets to that sender, so whoever's first packet
/// arrives before the other side has sent breaks the punch. Each side first opens its own NAT with packets
/// too short-lived to reach the other router; then both dial.
#[test]
fn routers_without_a_firewall_end_direct() {
    pair_through("e1", "e2", "direct");
}

#[test]
fn symmetric_to_symmetric_is_relayed() {
    pair_through("c1", "c2", "relayed");
}

/// f1's NAT keeps one mapping per socket but not its port (the broker's view of f1's address is what a
/// friend must dial, not the agent's own port).
/// A network that drops the relay's channel datagrams (a middlebox that passes QUIC and nothing else it
/// does not know): the relay carries everything on its stream instead, as it did before channels.
#[test]
fn a_relay_whose_channel_is_blocked_carries_on_over_its_stream() {
    let lab = Lab::build();
    for host in ["c1", "c2"] {
        lab.drop_outgoing(host, &["udp", "dport", "7878", "@ih,0,8", "0"]);
    }
    let log = pair_in(&lab, "c1", "c2", "relayed", &[]);
    assert!(!log.contains("relay channel in use"), "no datagram got through, and nothing was lost:\n{log}");
}

/// A relay whose channel's first probes were all lost (its datagrams dropped for a while) moves to the
/// channel once they get through: a link probes again now and then.
#[test]
fn a_relay_moves_to_its_channel_once_its_datagrams_get_through() {
    let lab = Lab::build();
    let channel_datagrams = ["udp", "dport", "7878", "@ih,0,8", "0"];
    for host in ["c1", "c2"] {
        lab.drop_outgoing(host, &channel_datagrams);
    }
    let broker = Broker::start_in(&lab.ns("broker"), "203.0.113.1:7878".parse().unwrap(), &[]);
    let alice = Peer::registered_in(&broker, "alice", &lab.ns("c1"));
    let bob = Peer::registered_in(&broker, "bob", &lab.ns("c2"));
    let (_a, _b) = (alice.up(), bob.up());
    alice.befriend(&bob);
    assert!(alice.ok(&["send", "bob", "over the stream"]).contains("delivered"), "{}", alice.agent_log());
    assert!(!broker.log().contains("relay channel in use"), "the datagrams were dropped:\n{}", broker.log());
    let relay_of = |p: &Peer| p.json(&["friends", "--json"])[0]["connections"][0]["relay"].clone();
    assert_eq!(relay_of(&alice), "stream", "the user sees the relay ride its stream");
    // Every one of the first, close-together probes lost (six per link), and only then the way cleared:
    // what finds the channel now is a later probe.
    wait_until("each agent's first probes are all lost", || ["c1", "c2"].iter().all(|h| lab.dropped(h) >= 6));
    for host in ["c1", "c2"] {
        lab.stop_dropping(host);
    }
    wait_until("both links probe again and find their channel", || {
        alice.agent_log().contains("relay channel works") && bob.agent_log().contains("relay channel works")
    });
    assert_eq!(relay_of(&alice), "channel", "and then its channel");
    let status = bob.ok(&["status"]);
    assert!(status.contains("via relayed (channel) path"), "{status}");
    assert!(alice.ok(&["send", "bob", "over the channel"]).contains("delivered"));
    assert!(bob.ok(&["send", "alice", "and back"]).contains("delivered"));
    wait_until("the channel carries the packets both ways", || {
        broker.log().matches("relay channel in use").count() == 2
    });
    let history = bob.json(&["history", "alice", "--json"]);
    let texts: Vec<&str> = history.as_array().unwrap().iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, ["over the stream", "over the channel", "and back"], "each once, in order");
}

/// A broker host with two addresses, listening on all of them and reached at its second: the relay's
/// datagrams must leave from the address each agent's connection came in on, or the agents' NATs (which
/// know only that one) drop them and the channel never works.
#[test]
fn a_broker_reached_at_its_second_address_relays_through_its_channel() {
    let lab = Lab::build();
    lab.run("broker", &["ip", "addr", "add", "203.0.113.5/25", "dev", "wan"]);
    let broker = Broker::start_in(&lab.ns("broker"), "0.0.0.0:7878".parse().unwrap(), &[]);
    let on = |name: &str, host: &str| {
        let mut p = Peer::new(&broker);
        p.broker = "203.0.113.5:7878".to_string();
        p.netns = Some(lab.ns(host));
        p.register(name, name);
        p
    };
    let (alice, bob) = (on("alice", "c1"), on("bob", "c2"));
    let (_a, _b) = (alice.up(), bob.up());
    alice.befriend(&bob);
    let out = alice.ok(&["send", "bob", "through the second address"]);
    assert!(out.contains("delivered"), "{out}\nalice's log:\n{}", alice.agent_log());
    assert!(bob.ok(&["send", "alice", "and back"]).contains("delivered"));
    let friends = alice.json(&["friends", "--json"]);
    assert_eq!(friends[0]["connections"][0]["path"], "relayed", "{friends:#}");
    let log = broker.log();
    assert_eq!(log.matches("relay channel in use").count(), 2, "both ways, through the channel:\n{log}");
}

#[test]
fn public_to_port_shifting_nat_is_direct() {
    pair_through("a1", "f1", "direct");
}

#[test]
fn port_shifting_to_port_preserving_is_direct() {
    pair_through("f1", "b1", "direct");
}

/// Endpoint-independent mapping on one side facing a symmetric NAT, with filtering by address and port: f1
/// cannot know which port c1's NAT will use towards it, so the plain punch fails; neither keeps its port, so
/// each side both listens and probes, and f1's probes find one of c1's ports.
#[test]
fn port_shifting_to_symmetric_is_direct_after_a_search() {
    pair_through("f1", "c1", "searched");
}

/// The search through two NATs deep on the probing side (a home router behind a carrier-grade NAT).
#[test]
fn symmetric_to_carrier_grade_nat_is_direct_after_a_search() {
    pair_through("c1", "g1", "searched");
}

/// The search towards a router without a WAN firewall, two hops away: the listening side's opening packets
/// die before they reach it, so they cannot make it renumber the probes.
#[test]
fn symmetric_to_a_router_without_a_firewall_is_direct_after_a_search() {
    pair_through("c1", "e1", "searched");
}

/// Two NATs deep (a home router behind a carrier-grade NAT), both endpoint-independent: still direct.
#[test]
fn behind_a_carrier_grade_nat_is_direct() {
    pair_through("g1", "b1", "direct");
}

#[test]
fn carrier_grade_nat_to_port_shifting_nat_is_direct() {
    pair_through("g1", "f1", "direct");
}

/// Two customers of one carrier: their only path to each other would be the carrier turning packets for
/// its own public address back inside (hairpinning), which it does not; they are relayed, and it works.
#[test]
fn two_customers_of_a_carrier_without_hairpinning_are_relayed() {
    pair_through("g1", "g2", "relayed");
}

/// Waits until both see a direct path to each other.
fn wait_for_direct(alice: &Peer, bob: &Peer) {
    let deadline = std::time::Instant::now() + testkit::WAIT;
    while !(first_path(alice) == "direct" && first_path(bob) == "direct") {
        assert!(
            std::time::Instant::now() < deadline,
            "no direct path: alice sees {}, bob {}\nalice's log:\n{}\nbob's log:\n{}",
            alice.json(&["friends", "--json"]),
            bob.json(&["friends", "--json"]),
            alice.agent_log(),
            bob.agent_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The path of `who`'s first live connection to its one friend (`direct` or `relayed`).
fn first_path(who: &Peer) -> serde_json::Value {
    who.json(&["friends", "--json"])[0]["connections"][0]["path"].clone()
}

/// The texts of `who`'s conversation with `friend`, oldest first.
fn texts(who: &Peer, friend: &str) -> Vec<String> {
    who.json(&["history", friend, "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

/// Runs an nftables script on a lab host.
fn nft(lab: &Lab, host: &str, script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns(host), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft: {script}");
}

/// On a1: a host firewall that drops every packet to and from a2 (the direct path), not the broker.
const BLOCK_A2: &str = "table inet block {
    chain out {
        type filter hook output priority 0;
        ip daddr 203.0.113.11 drop
    }
    chain in {
        type filter hook input priority 0;
        ip saddr 203.0.113.11 drop
    }
}";

/// A direct path that dies (here a firewall starts dropping it) falls back to the relay within the same
/// `peer send`, instead of leaving the message queued until the connection's idle timeout and a retry.
#[test]
fn a_direct_pair_whose_path_dies_falls_back_to_the_relay() {
    let lab = Lab::build();
    let listen: SocketAddr = "203.0.113.1:7878".parse().unwrap();
    let broker = Broker::start_in(&lab.ns("broker"), listen, &[]);
    let alice = Peer::registered_in(&broker, "alice", &lab.ns("a1"));
    let bob = Peer::registered_in(&broker, "bob", &lab.ns("a2"));
    let _a = alice.up();
    let _b = bob.up();
    alice.befriend(&bob);
    let path = first_path;
    assert!(alice.ok(&["send", "bob", "one, direct"]).contains("delivered"));
    assert_eq!(path(&alice), "direct");

    nft(&lab, "a1", BLOCK_A2);
    let out = alice.ok(&["send", "bob", "two, after the path died"]);
    assert!(out.contains("delivered"), "{out}\nalice's log:\n{}", alice.agent_log());
    assert_eq!(path(&alice), "relayed");
    let peers = alice.json(&["status", "--json"])["peers"].clone();
    assert!(peers[0]["fallbacks"].as_u64().unwrap() >= 1, "{peers}");
    assert_eq!(texts(&bob, "alice"), ["one, direct", "two, after the path died"], "each once, in order");
}

/// A pair that had to take the relay (here a host firewall blocks the two hosts' direct packets) moves to
/// a direct path on its own once one opens, without losing or repeating a message, and a file still
/// arrives whole.
#[test]
fn a_relayed_pair_becomes_direct_when_a_path_opens() {
    let lab = Lab::build();
    let listen: SocketAddr = "203.0.113.1:7878".parse().unwrap();
    let broker = Broker::start_in(&lab.ns("broker"), listen, &[]);
    let alice = Peer::registered_in(&broker, "alice", &lab.ns("a1"));
    let bob = Peer::registered_in(&broker, "bob", &lab.ns("a2"));
    let nft = |script: &str| nft(&lab, "a1", script);
    nft(BLOCK_A2);
    let inbox = tempfile::tempdir().unwrap();
    let _a = alice.up();
    let _b = bob.up_with(&["--auto-accept-files", inbox.path().to_str().unwrap()]);
    alice.befriend(&bob);
    let path = first_path;

    assert!(alice.ok(&["send", "bob", "one, through the relay"]).contains("delivered"));
    assert_eq!(path(&alice), "relayed", "the firewall leaves only the relay");
    nft("delete table inet block");
    wait_for_direct(&alice, &bob);
    let conn = alice.json(&["friends", "--json"])[0]["connections"][0].clone();
    assert!(conn["upgrades"].as_u64().unwrap() >= 1 && conn["path_since"].is_i64(), "{conn}");
    assert!(alice.ok(&["send", "bob", "two, direct"]).contains("delivered"));
    assert!(bob.ok(&["send", "alice", "three, back"]).contains("delivered"));
    assert_eq!(texts(&bob, "alice"), ["one, through the relay", "two, direct", "three, back"], "each once, in order");

    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("after.bin");
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    assert!(alice.ok(&["send-file", "bob", file.to_str().unwrap()]).contains("verified"));
    assert_eq!(std::fs::read(inbox.path().join("after.bin")).unwrap(), data);
    assert!(alice.agent_log().contains("is direct now") || bob.agent_log().contains("is direct now"));
}

/// A transfer running on the relay when a direct path opens (the firewall goes away in the middle of it):
/// the link moves to the direct path, and the transfer carries on from where it was rather than starting
/// again (bob's agent resumes at a non-zero offset, and the broker relayed only part of the file); the file
/// arrives whole and verified.
#[test]
fn a_transfer_on_the_relay_moves_to_a_direct_path_that_opens_and_carries_on() {
    let lab = Lab::build();
    let listen: SocketAddr = "203.0.113.1:7878".parse().unwrap();
    // A slow relay, so that the transfer is still running when the direct path opens.
    let broker = Broker::start_in(&lab.ns("broker"), listen, &["--relay-user-rate", "256K"]);
    let alice = Peer::registered_in(&broker, "alice", &lab.ns("a1"));
    let bob = Peer::registered_in(&broker, "bob", &lab.ns("a2"));
    nft(&lab, "a1", BLOCK_A2);
    let inbox = tempfile::tempdir().unwrap();
    let _a = alice.up();
    let _b = bob.up_with(&["--auto-accept-files", inbox.path().to_str().unwrap()]);
    alice.befriend(&bob);
    assert!(alice.ok(&["send", "bob", "one, through the relay"]).contains("delivered"));
    assert_eq!(first_path(&alice), "relayed");

    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("moving.bin");
    let data: Vec<u8> = (0..16_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let sending = alice
        .command(&["send-file", "bob", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    testkit::wait_until("bob has received part of the file through the relay", || {
        bob.json(&["files", "--json"])
            .as_array()
            .is_some_and(|l| l.iter().any(|t| t["bytes"].as_u64().is_some_and(|b| b > 0)))
    });
    nft(&lab, "a1", "delete table inet block");
    let out = sending.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("verified"), "{said}\nalice's log:\n{}", alice.agent_log());
    assert_eq!(std::fs::read(inbox.path().join("moving.bin")).unwrap(), data);
    assert_eq!(first_path(&alice), "direct");
    // Bob's agent logs `offset=N` each time it starts receiving: once at 0, then again past it.
    let offsets: Vec<u64> = bob
        .agent_log()
        .lines()
        .filter_map(|l| l.split("offset=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    let resumed = offsets.len() >= 2 && offsets[0] == 0 && offsets[1..].iter().any(|&o| o > 0);
    assert!(resumed, "bob's agent carried on from an offset ({offsets:?}):\n{}", bob.agent_log());
    // It moved when the direct path stood, not when the relayed link was closed under it.
    let log = bob.agent_log();
    assert!(log.contains("the link is direct now; the transfer goes on over it"), "no move:\n{log}");
    assert!(!log.contains("transfer interrupted"), "the transfer was cut, not moved:\n{log}");
    assert!(alice.ok(&["send", "bob", "two, direct"]).contains("delivered"));
    assert_eq!(texts(&bob, "alice"), ["one, through the relay", "two, direct"]);
}
