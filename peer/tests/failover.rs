//! Brokers that serve the same users (one database, one identity): an agent whose broker dies moves to the
//! next one it knows (`--broker A,B`) and carries on; nothing acknowledged is lost.
#![allow(clippy::disallowed_macros)] // test output, read by people debugging a test

use testkit::{Backend, Broker, Peer, backends, texts, wait_until};

#[test]
fn agents_move_to_another_broker_when_theirs_dies() {
    // Two broker processes on one SQLite file would work too, but a shared server database is how this is
    // run for real.
    let shared: Vec<Backend> = backends().into_iter().filter(|b| b.name() != "sqlite").collect();
    assert!(!shared.is_empty(), "needs PostgreSQL or MariaDB (TEST_POSTGRES_URL / TEST_MYSQL_URL)");
    for backend in shared {
        eprintln!("backend: {}", backend.name());
        failover(&backend);
    }
}

fn failover(backend: &Backend) {
    let mut brokers = Broker::start_sharing(backend, 2);
    assert_eq!(brokers[0].fingerprint, brokers[1].fingerprint, "one identity for both");
    let both = format!("{},{}", brokers[0].address(), brokers[1].address());
    let peer = |name: &str| {
        let mut p = Peer::new(&brokers[0]);
        p.broker = both.clone();
        p.register(name, name);
        p
    };
    let (alice, bob) = (peer("alice"), peer("bob"));
    let _a = alice.up();
    let _b = bob.up();
    alice.befriend(&bob);
    assert!(alice.ok(&["send", "bob", "before"]).contains("delivered"));
    let group = alice.ok(&["groups", "create", "g"]).split_whitespace().find_map(|w| w.parse::<i64>().ok()).unwrap();
    alice.ok(&["groups", "invite", &group.to_string(), "bob"]);
    bob.ok(&["groups", "join", &group.to_string()]);
    alice.ok(&["send", "--group", &group.to_string(), "group before"]);

    brokers[0].kill();
    // Each agent notices at its idle timeout, tries the dead broker once more (it may have restarted), then
    // the next one: its session there is logged in a span that names the broker.
    let second = format!("broker={}", brokers[1].addr);
    wait_until("both agents are online on the second broker", || {
        [&alice, &bob].iter().all(|p| p.agent_log().lines().any(|l| l.contains(&second) && l.contains("online")))
    });
    assert!(alice.ok(&["send", "bob", "after"]).contains("delivered"));
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["before", "after"]);
    alice.ok(&["send", "--group", &group.to_string(), "group after"]);
    wait_until("bob has the group's whole log", || {
        texts(&bob.json(&["history", "--group", &group.to_string(), "--json"])).ends_with(&["group after".to_string()])
    });
    let log = texts(&bob.json(&["history", "--group", &group.to_string(), "--json"]));
    let said: Vec<&String> = log.iter().filter(|t| t.starts_with("group")).collect();
    assert_eq!(said, ["group before", "group after"], "{log:?}");
}
