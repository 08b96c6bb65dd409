//! Friends and live presence, end to end: consent, removal, remarks, privacy, persistence.
#![allow(clippy::disallowed_macros)] // test output, read by people debugging a test

use serde_json::Value;
use testkit::{Backend, Broker, Friends, PASSWORD, Peer, backends, texts, wait_until};

fn usernames(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|v| v["username"].as_str().unwrap().to_string()).collect()
}

#[test]
fn full_friend_cycle_on_every_backend() {
    for backend in backends() {
        eprintln!("backend: {}", backend.name());
        full_cycle(&backend);
    }
}

fn full_cycle(backend: &Backend) {
    let mut broker = Broker::start(backend);
    let mut alice = Peer::new(&broker);
    alice.register("alice", "张三");
    let mut bob = Peer::new(&broker);
    bob.register("bob", "李四 🎉");
    let carol = Peer::registered(&broker, "carol");
    let _a = alice.up();
    let _b = bob.up();
    let _c = carol.up();
    let bob_watch = bob.watch();
    let alice_watch = alice.watch();

    // Find: by display name (Unicode, case-insensitive) and username; never yourself; no presence or address.
    let found = alice.json(&["users", "search", "李", "--json"]);
    assert_eq!(usernames(&found), ["bob"]);
    assert_eq!(found[0].as_object().unwrap().len(), 2, "only username and display name: {found}");
    assert_eq!(usernames(&alice.json(&["users", "search", "BO", "--json"])), ["bob"]);
    assert!(alice.json(&["users", "search", "alice", "--json"]).as_array().unwrap().is_empty());
    assert_eq!(usernames(&carol.json(&["users", "search", "张", "--json"])), ["alice"]);

    // Request with consent; the other side sees it live and in the list.
    alice.ok(&["friends", "add", "bob", "--message", "你好, it's Alice"]);
    let ev = bob_watch.expect_event("friend_request", "alice");
    assert_eq!(ev["message"], "你好, it's Alice");
    assert_eq!(ev["display_name"], "张三");
    let reqs = bob.json(&["friends", "requests", "--json"]);
    assert_eq!(reqs[0]["direction"], "incoming");
    assert_eq!(reqs[0]["username"], "alice");
    assert_eq!(alice.json(&["friends", "requests", "--json"])[0]["direction"], "outgoing");

    // Bad requests: typed errors, nothing stored.
    assert!(alice.fails(&["friends", "add", "bob"]).contains("already pending"));
    assert!(alice.fails(&["friends", "add", "alice"]).contains("yourself"));
    assert!(alice.fails(&["friends", "add", "nobody_at_all"]).contains("no such user"));
    assert!(alice.fails(&["friends", "add", "carol", "--message", &"x".repeat(257)]).contains("256"));
    assert!(alice.fails(&["friends", "remark", "carol", "nope"]).contains("not friends"));
    assert!(alice.fails(&["friends", "accept", "carol"]).contains("no pending"));

    // Accept: both sides hear it, with presence.
    bob.ok(&["friends", "accept", "alice"]);
    alice_watch.expect_event("friend_accepted", "bob");
    alice_watch.expect_event("friend_online", "bob");
    bob_watch.expect_event("friend_online", "alice");
    assert!(alice.fails(&["friends", "add", "bob"]).contains("already friends"));
    let list = alice.json(&["friends", "--json"]);
    assert_eq!(usernames(&list), ["bob"]);
    assert_eq!(list[0]["display_name"], "李四 🎉");
    assert_eq!(list[0]["online"], true);
    assert!(list[0]["since"].is_i64());
    assert!(bob.json(&["friends", "requests", "--json"]).as_array().unwrap().is_empty());

    // Remark (private to the one who sets it) and profile changes.
    alice.ok(&["friends", "remark", "bob", "Bobby"]);
    assert_eq!(alice.json(&["friends", "--json"])[0]["remark"], "Bobby");
    assert_eq!(bob.json(&["friends", "--json"])[0]["remark"], Value::Null);
    assert!(alice.fails(&["friends", "remark", "bob", &"x".repeat(65)]).contains("64"));
    bob.ok(&["profile", "set", "--display-name", "老李"]);
    assert_eq!(alice_watch.expect_event("friend_profile", "bob")["display_name"], "老李");

    // Decline: the request is gone; carol is told nothing.
    carol.ok(&["friends", "add", "alice"]);
    alice.ok(&["friends", "decline", "carol"]);
    assert!(carol.json(&["friends", "requests", "--json"]).as_array().unwrap().is_empty());

    // Mutual requests make friends without an accept.
    carol.ok(&["friends", "add", "bob"]);
    assert!(bob.ok(&["friends", "add", "carol"]).contains("friends now"));
    assert_eq!(usernames(&carol.json(&["friends", "--json"])), ["bob"]);

    // Offline delivery and persistence: a request to someone offline waits for them, and friends,
    // remarks and pending requests survive a broker restart.
    let dave = Peer::registered(&broker, "dave");
    alice.ok(&["friends", "add", "dave", "--message", "see you later"]);
    let before = (alice.json(&["status", "--json"])["since"].clone(), bob.json(&["status", "--json"])["since"].clone());
    broker.restart();
    alice.wait_status(|s| s["online"] == true && s["since"] != before.0, "alice back after restart");
    bob.wait_status(|s| s["online"] == true && s["since"] != before.1, "bob back after restart");
    let list = alice.json(&["friends", "--json"]);
    assert_eq!(usernames(&list), ["bob"]);
    assert_eq!(list[0]["remark"], "Bobby");
    assert_eq!(list[0]["display_name"], "老李");
    let _d = dave.up();
    let reqs = dave.json(&["friends", "requests", "--json"]);
    assert_eq!(usernames(&reqs), ["alice"]);
    assert_eq!(reqs[0]["message"], "see you later");

    // Remove: both sides at once; presence stops.
    alice.ok(&["friends", "remove", "bob"]);
    bob_watch.expect_event("friend_removed", "alice");
    assert!(usernames(&alice.json(&["friends", "--json"])).is_empty());
    assert!(!usernames(&bob.json(&["friends", "--json"])).contains(&"alice".to_string()));
    assert!(alice.fails(&["friends", "remove", "bob"]).contains("not friends"));
}

#[test]
fn presence_follows_login_logout_crash_and_devices() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let bob = Peer::registered(&broker, "bob");
    let mut bob_agent = bob.up();
    {
        let _a = alice.up();
        alice.ok(&["friends", "add", "bob"]);
        bob.ok(&["friends", "accept", "alice"]);
    }
    // Dropping the agent handle killed it; wait until the broker has noticed, then start watching.
    let friends = || bob.json(&["friends", "--json"]);
    wait_until("alice is offline", || friends()[0]["online"] == false);
    let watch = bob.watch();

    // Clean start and stop.
    let mut a1 = alice.start_agent();
    watch.expect_event("friend_online", "alice");
    assert!(a1.stop());
    watch.expect_event("friend_offline", "alice");
    assert_eq!(friends()[0]["online"], false);
    assert!(friends()[0]["since"].is_i64(), "last seen");

    // Two devices: online while either is; offline only when the last goes (a second login by password is
    // a device of the account for presence, linked or not).
    let phone = Peer::new(&broker);
    assert!(phone.login("alice", PASSWORD).status.success());
    let _a1 = alice.up();
    watch.expect_event("friend_online", "alice");
    let mut a2 = phone.up();
    a2.kill9();
    let _ = bob.ok(&["friends"]);
    // Crash of the remaining device: noticed within the idle timeout.
    drop(_a1);
    let off = watch.expect_event("friend_offline", "alice");
    assert!(off["changed_at"].is_i64());
    let seen = watch.drain();
    let offline_events = seen.iter().filter(|v| v["type"] == "friend_offline").count();
    assert_eq!(offline_events, 0, "only one offline event for two devices: {seen:?}");
    assert!(bob_agent.stop());
}

#[test]
fn non_friends_learn_nothing() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let bob = Peer::registered(&broker, "bob");
    let mallory = Peer::registered(&broker, "mallory");
    let _m = mallory.up();
    let _b = bob.up();
    mallory.ok(&["friends", "add", "bob"]);
    bob.ok(&["friends", "accept", "mallory"]);
    let watch = mallory.watch();
    // Alice comes and goes; then bob (mallory's friend) goes. Events reach mallory in order, so once bob's
    // offline arrives, anything about alice would have arrived first.
    let mut a = alice.up();
    assert!(a.stop());
    let mut b = _b;
    assert!(b.stop());
    watch.expect_event("friend_offline", "bob");
    let seen = watch.drain();
    assert!(seen.iter().all(|v| v["username"] != "alice"), "mallory learned about alice: {seen:?}");
    // Search shows names only.
    let found = mallory.json(&["users", "search", "alice", "--json"]);
    assert_eq!(found[0].as_object().unwrap().keys().collect::<Vec<_>>(), ["display_name", "username"]);
    assert!(mallory.fails(&["friends", "remark", "alice", "x"]).contains("not friends"));
    assert!(mallory.fails(&["friends", "remove", "alice"]).contains("not friends"));
}

#[test]
fn password_change_logs_out_other_devices() {
    let broker = Broker::start(&Backend::Sqlite);
    let laptop = Peer::registered(&broker, "alice");
    let mut phone = Peer::new(&broker);
    let _l = laptop.up();
    phone.link_from(&laptop);
    let mut p = phone.up();
    // Bob, a friend, has a live connection to each of alice's devices.
    let bob = Peer::registered(&broker, "bob");
    let _b = bob.up();
    laptop.befriend(&bob);
    assert!(bob.ok(&["send", "alice", "to both devices"]).contains("delivered"));
    let phone_key = phone.json(&["status", "--json"])["device_fingerprint"].as_str().unwrap().to_string();
    let bob_links = || bob.json(&["status", "--json"])["peers"].to_string();
    wait_until("bob is connected to the phone", || bob_links().contains(&phone_key));
    let bob_watch = bob.watch();

    let out = laptop.run_with_stdin(&["passwd", "--password-stdin"], &format!("{PASSWORD}\nnew password 123\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!p.wait_exit(), "the other device's agent stops with an error");
    assert!(
        phone.agent_log().contains("session was revoked (password changed on another device)"),
        "the phone is told why: {}",
        phone.agent_log()
    );
    // Bob's agent drops the phone's key and connection at once, not at its next restart.
    bob_watch.expect_event("friend_devices", "alice");
    wait_until("bob's link to the cut-off phone is closed", || !bob_links().contains(&phone_key));
    assert!(!phone.login("alice", PASSWORD).status.success(), "old password refused");
    assert!(phone.login("alice", "new password 123").status.success());
    // The device that changed it stays logged in.
    assert_eq!(laptop.json(&["status", "--json"])["online"], true);
    let out = laptop.run_with_stdin(&["passwd", "--password-stdin"], "wrong old password\nanother one 456\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong password"));
}

/// An agent that was away from the broker when the friendship ended (no `FriendRemoved` reached it) re-reads
/// its friend list when it reconnects and stops accepting the former friend's key: nothing the former friend
/// sends afterwards is stored, even over a connection that was open before.
#[test]
fn an_agent_that_missed_the_removal_drops_the_key_when_it_reconnects() {
    let mut broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    assert!(alice.ok(&["send", "bob", "while friends"]).contains("delivered"));
    // The friendship ends while neither agent can hear of it.
    broker.kill();
    broker.db.execute("DELETE FROM friends");
    broker.restart();
    wait_until("bob dropped alice's key", || bob.agent_log().contains("no longer a friend"));
    let out = alice.run(&["send", "bob", "after the removal"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("delivered"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["while friends"]);
}

#[test]
fn a_blocked_user_cannot_bother_and_is_not_told() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    let alice_watch = alice.watch();
    assert!(bob.ok(&["friends", "block", "alice"]).contains("blocked alice"));
    alice_watch.expect_event("friend_removed", "bob");
    assert_eq!(alice.json(&["friends", "--json"]).as_array().unwrap().len(), 0);
    // Alice asks again: it looks sent to her, and bob never hears of it.
    assert!(alice.ok(&["friends", "add", "bob", "--message", "please"]).contains("friend request sent"));
    assert_eq!(bob.json(&["friends", "requests", "--json"]).as_array().unwrap().len(), 0);
    assert_eq!(usernames(&bob.json(&["friends", "blocked", "--json"])), ["alice"]);
    assert!(bob.fails(&["friends", "add", "alice"]).contains("you blocked alice"));
    assert!(alice.fails(&["friends", "unblock", "bob"]).contains("not blocked"));
    // Lifted: requests reach bob again.
    bob.ok(&["friends", "unblock", "alice"]);
    alice.ok(&["friends", "add", "bob"]);
    assert_eq!(bob.json(&["friends", "requests", "--json"])[0]["username"], "alice");
}
