//! Trust that does not rest on the broker, end to end: account keys certify devices, friends pin keys and
//! hold messages when one changes, safety numbers, linking a device (with its history), revocation, key
//! backups and resets, and a broker whose database was tampered with.
#![allow(clippy::disallowed_macros)] // test output, read by people debugging a test

use serde_json::Value;
use testkit::{Backend, Broker, Friends, PASSWORD, Peer, backends, texts, wait_until};

fn fingerprint(p: &Peer) -> String {
    p.json(&["status", "--json"])["device_fingerprint"].as_str().unwrap().to_string()
}

fn history(p: &Peer, with: &str) -> Vec<String> {
    texts(&p.json(&["history", with, "--json", "--limit", "1000"]))
}

fn friend<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|f| f["username"] == name).unwrap()
}

/// Bob links a second device: it gets the history and later messages; a third device that only knows the
/// password is logged in but is not one of bob's devices to anyone: it receives nothing direct.
#[test]
fn a_linked_device_gets_the_history_and_a_password_alone_gets_nothing() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    for i in 0..30 {
        assert!(alice.ok(&["send", "bob", &format!("before {i}")]).contains("delivered"));
    }
    assert!(bob.ok(&["send", "alice", "bob's own words"]).contains("delivered"));

    let mut laptop = Peer::new(&broker);
    let out = laptop.link_from(&bob);
    assert!(out.contains("linked"), "{out}");
    assert_eq!(history(&laptop, "alice"), history(&bob, "alice"), "the whole history, in order");
    let _l = laptop.up();
    let devices = bob.json(&["devices", "--json"]);
    let list = devices["devices"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{devices}");
    assert!(list.iter().any(|d| d["this_device"] == true));
    let laptop_fp = fingerprint(&laptop);
    bob.ok(&["devices", "rename", &laptop_fp[..8], "work laptop"]);
    let renamed = bob.json(&["devices", "--json"]);
    let entry = renamed["devices"].as_array().unwrap().iter().find(|d| d["id"] == laptop_fp.as_str()).unwrap();
    assert_eq!(entry["name"], "work laptop", "{renamed}");
    assert!(bob.fails(&["devices", "rename", "nonexistent", "x"]).contains("no device"));

    let mut thief = Peer::new(&broker);
    assert!(thief.login("bob", PASSWORD).status.success());
    thief.username = "bob".into();
    let _t = thief.up();
    let listed = thief.ok(&["devices"]);
    assert!(listed.contains("this device is not linked"), "{listed}");
    let thief_watch = thief.watch();
    let laptop_watch = laptop.watch();
    assert!(alice.ok(&["send", "bob", "after the link"]).contains("delivered"));
    laptop_watch.expect_event("message_received", "alice");
    // Everything alice's agent does for one send is done by the time `send` answers "delivered".
    assert!(thief_watch.drain().iter().all(|e| e["type"] != "message_received"));
    assert!(history(&thief, "alice").is_empty(), "the password-only device got nothing");
    assert!(alice.agent_log().contains("no record signed by the account key"), "{}", alice.agent_log());
}

/// A broker whose database says one of bob's records belongs to another device (the password-only one):
/// alice's agent checks the record against bob's key and refuses that device; nothing reaches it, on every
/// database. A broker that swaps bob's account key is caught as a key change: everything is held.
#[test]
fn a_tampered_broker_gets_no_message() {
    for backend in backends() {
        eprintln!("backend: {}", backend.name());
        let broker = Broker::start(&backend);
        let Friends { alice, bob, agents: (_a, mut bob_agent) } = Friends::start(&broker, &[], &[]);
        assert!(alice.ok(&["send", "bob", "first contact pins bob's key"]).contains("delivered"));
        let mut mallory = Peer::new(&broker);
        assert!(mallory.login("bob", PASSWORD).status.success());
        mallory.username = "bob".into();
        let _m = mallory.up();
        let (bob_fp, mallory_fp) = (fingerprint(&bob), fingerprint(&mallory));
        broker.db.execute(&format!(
            "INSERT INTO devices (username, fingerprint, record, created_at) \
             SELECT username, '{mallory_fp}', record, created_at FROM devices WHERE fingerprint = '{bob_fp}'"
        ));
        // Bob's own device offline: the broker offers only mallory's, with bob's record. The message goes
        // sealed to bob's real device's mailbox, never to mallory's (which has no certified mailbox keys).
        assert!(bob_agent.stop());
        let out = alice.ok(&["send", "bob", "for bob's eyes only"]);
        assert!(out.contains("sent"), "{out}");
        assert!(history(&mallory, "alice").is_empty(), "the vouched-for device got nothing");
        wait_until("alice's agent says why", || alice.agent_log().contains("another device's key"));

        // Now the broker hands out a key of its own for bob, with a record it made for mallory's device.
        broker.db.execute(&format!("UPDATE users SET account_key = '{}' WHERE username = 'bob'", "ab".repeat(32)));
        let alice_watch = alice.watch();
        let out = alice.ok(&["send", "bob", "still for bob only"]);
        assert!(out.contains("queued") && out.contains("key changed"), "{out}");
        alice_watch.expect_event("key_changed", "bob");
        assert_eq!(friend(&alice.json(&["friends", "--json"]), "bob")["key_changed"], true);
        // Even accepting the broker's key gets it nothing: no record verifies under it.
        alice.ok(&["verify", "bob", "--accept-new-key"]);
        assert!(alice.ok(&["send", "bob", "and this"]).contains("queued"));
        assert!(history(&mallory, "alice").is_empty());
    }
}

/// Bob loses every device and resets his key with the password: alice's agent notices the change, holds
/// her messages, and sends them once she accepts the new key. Safety numbers agree on both sides and change
/// with the key.
#[test]
fn a_changed_key_holds_messages_until_accepted_and_safety_numbers_match() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    assert!(alice.ok(&["send", "bob", "hello"]).contains("delivered"));
    let number = |p: &Peer, f: &str| p.json(&["verify", f, "--json"])["safety_number"].as_str().unwrap().to_string();
    let (on_alice, on_bob) = (number(&alice, "bob"), number(&bob, "alice"));
    assert_eq!(on_alice, on_bob, "the same number on both sides");
    assert_eq!(on_alice.split(' ').count(), 12);
    assert_eq!(friend(&alice.json(&["friends", "--json"]), "bob")["verified"], false);
    alice.ok(&["verify", "bob", "--confirm"]);
    assert_eq!(friend(&alice.json(&["friends", "--json"]), "bob")["verified"], true);
    let shown = alice.ok(&["verify", "bob"]);
    assert!(shown.contains("bob is verified"), "{shown}");

    let alice_watch = alice.watch();
    let out = bob.run_with_stdin(&["account", "reset-key", "--password-stdin"], &format!("{PASSWORD}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    alice_watch.expect_event("friend_key_reset", "bob");
    alice_watch.expect_event("key_changed", "bob");
    let out = alice.ok(&["send", "bob", "held until accepted"]);
    assert!(out.contains("queued") && out.contains("held"), "{out}");
    assert!(!history(&bob, "alice").contains(&"held until accepted".to_string()));
    let listed = alice.ok(&["friends"]);
    assert!(listed.contains("KEY CHANGED"), "{listed}");
    let shown = alice.ok(&["verify", "bob"]);
    assert!(shown.contains("CHANGED"), "{shown}");

    alice.ok(&["verify", "bob", "--accept-new-key"]);
    wait_until("the held message is delivered", || history(&bob, "alice").contains(&"held until accepted".into()));
    let new_number = number(&alice, "bob");
    assert_ne!(new_number, on_alice, "another key, another number");
    assert_eq!(new_number, number(&bob, "alice"));
    assert_eq!(friend(&alice.json(&["friends", "--json"]), "bob")["verified"], false, "a new key is unverified");
}

/// Revoking a device: its session ends, friends' agents drop its key at once (pushed), and it is not one
/// of the account's devices again by logging in.
#[test]
fn a_revoked_device_is_dropped_by_friends_and_cannot_come_back() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    let mut phone = Peer::new(&broker);
    phone.link_from(&bob);
    let mut p = phone.up();
    let phone_fp = fingerprint(&phone);
    assert!(alice.ok(&["send", "bob", "to both"]).contains("delivered"));
    let links = || alice.json(&["status", "--json"])["peers"].to_string();
    wait_until("alice is connected to the phone", || links().contains(&phone_fp));

    let alice_watch = alice.watch();
    let out = bob.ok(&["devices", "revoke", &phone_fp[..12]]);
    assert!(out.contains("revoked"), "{out}");
    alice_watch.expect_event("device_revoked", "bob");
    wait_until("alice's link to the revoked phone is closed", || !links().contains(&phone_fp));
    assert!(!p.wait_exit(), "the revoked device's agent stops");
    assert_eq!(bob.json(&["devices", "--json"])["devices"].as_array().unwrap().len(), 1);

    // It logs in again with the password: a session, but not a device friends accept.
    assert!(phone.login("bob", PASSWORD).status.success());
    let _p = phone.up();
    wait_until("the phone was refused", || phone.agent_log().contains("link it again"));
    let phone_watch = phone.watch();
    assert!(alice.ok(&["send", "bob", "not to the phone"]).contains("delivered"));
    assert!(phone_watch.drain().iter().all(|e| e["type"] != "message_received"));
    assert!(!history(&phone, "alice").contains(&"not to the phone".to_string()));
}

/// The account key survives the loss of every device through a passphrase-sealed backup; an account made
/// before keys existed gets its key from the first device that comes online.
#[test]
fn a_key_backup_restores_the_account_and_old_accounts_get_a_key() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: (_a, mut bob_agent) } = Friends::start(&broker, &[], &[]);
    assert!(alice.ok(&["send", "bob", "before the loss"]).contains("delivered"));
    let backup = bob.home.path().join("bob.key.backup");
    let backup = backup.to_str().unwrap();
    let out = bob.run_with_stdin(&["account", "export-key", backup, "--passphrase-stdin"], "a long passphrase\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sealed = std::fs::read_to_string(backup).unwrap();
    assert!(sealed.starts_with("p2pim account key backup v1"));
    assert!(bob_agent.stop());

    let mut new_phone = Peer::new(&broker);
    let out = new_phone.run_with_stdin(
        &["link", "--from-backup", backup, "--broker", &broker.address(), "--password-stdin"],
        "wrong passphrase\n",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    let out = new_phone.run_with_stdin(
        &["link", "--from-backup", backup, "--broker", &broker.address(), "--password-stdin"],
        &format!("a long passphrase\n{PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    new_phone.username = "bob".into();
    let _n = new_phone.up();
    assert!(alice.ok(&["send", "bob", "after the restore"]).contains("delivered"), "no key change for alice");

    // An account registered straight through the protocol has no key until a device of it comes online.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = testkit::Client::connect(&broker).await;
        c.register("olduser").await;
    });
    let old = Peer::new(&broker);
    assert!(old.login("olduser", PASSWORD).status.success());
    let _o = old.up();
    wait_until("the first device made the account's key", || {
        old.json(&["devices", "--json"])["devices"].as_array().is_some_and(|d| d.len() == 1)
    });
    assert!(old.json(&["devices", "--json"])["account_key"].is_string());
}

/// A wrong answer on the existing device: nothing is linked, and the code cannot be used again.
#[test]
fn linking_refused_on_the_existing_device_links_nothing() {
    let broker = Broker::start(&Backend::Sqlite);
    let bob = Peer::registered(&broker, "bob");
    let _b = bob.up();
    let mut laptop = Peer::new(&broker);
    let out = laptop.link_answering(&bob, "n");
    assert!(out.contains("refused"), "{out}");
    assert!(laptop.fails(&["status"]).contains("no account on this device"));
    assert_eq!(bob.json(&["devices", "--json"])["devices"].as_array().unwrap().len(), 1);
    let out = laptop.run(&["link", "0000-0000-0000-0000", "--broker", &broker.address()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such link code"));
}
