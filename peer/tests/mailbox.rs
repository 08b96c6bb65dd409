//! The sealed mailbox, end to end with the real binaries: two people whose machines are never on at the
//! same time hold a conversation, every device of an account ends with the same history, the broker keeps
//! only ciphertext (and keeps it across a restart, on every database), and its limits, its absence and
//! tampered letters are handled as the sender and the recipient would want.
#![allow(clippy::disallowed_macros)] // test output, read by people debugging a test

use serde_json::Value;
use testkit::{Backend, Broker, Friends, Peer, backends, texts, wait_until};

fn history(p: &Peer, with: &str) -> Value {
    p.json(&["history", with, "--json", "--limit", "1000"])
}

fn statuses(p: &Peer, with: &str) -> Vec<String> {
    history(p, with).as_array().unwrap().iter().map(|m| m["status"].as_str().unwrap().to_string()).collect()
}

fn offline(p: &Peer, friend: &str) -> bool {
    p.json(&["friends", "--json"]).as_array().unwrap().iter().any(|f| f["username"] == friend && f["online"] == false)
}

/// Every byte the SQLite broker keeps (database and write-ahead log).
fn broker_bytes(broker: &Broker) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["broker.db", "broker.db-wal"] {
        if let Ok(b) = std::fs::read(broker.data.path().join(name)) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Alice writes while bob is away, then goes away herself; bob comes back (after a broker restart, on
/// every database), reads, answers and leaves; alice comes back to his answer and her messages delivered.
#[test]
fn two_people_never_online_together_hold_a_conversation() {
    for backend in backends() {
        eprintln!("backend: {}", backend.name());
        let mut broker = Broker::start(&backend);
        let Friends { alice, bob, agents: (mut a, mut b) } = Friends::start(&broker, &[], &[]);
        assert!(b.stop());
        wait_until("bob is offline", || offline(&alice, "bob"));
        for text in ["one 一", "two", "three"] {
            let out = alice.ok(&["send", "bob", text]);
            assert!(out.contains("sent") && out.contains("mailbox"), "{out}");
        }
        assert_eq!(statuses(&alice, "bob"), ["sent", "sent", "sent"]);
        assert!(a.stop());
        if backend.name() == "sqlite" {
            let kept = broker_bytes(&broker);
            assert!(!kept.is_empty());
            assert!(!contains(&kept, "one 一") && !contains(&kept, "three"), "the broker keeps no message text");
        }
        broker.restart();

        let b = bob.up();
        // The agent counts as online as soon as its session opens; the pickup follows.
        wait_until("bob picks up his letters", || texts(&history(&bob, "alice")).len() >= 3);
        assert_eq!(texts(&history(&bob, "alice")), ["one 一", "two", "three"], "all three, in order");
        let out = bob.ok(&["send", "alice", "got them"]);
        assert!(out.contains("sent"), "{out}");
        drop(b);

        let _a = alice.up();
        wait_until("bob's answer arrives", || texts(&history(&alice, "bob")).contains(&"got them".to_string()));
        wait_until("alice's messages show delivered", || {
            statuses(&alice, "bob").iter().filter(|s| *s == "delivered").count() == 3
        });
        assert_eq!(texts(&history(&alice, "bob")), ["one 一", "two", "three", "got them"]);
        let _b = bob.up();
        wait_until("bob's answer shows delivered", || statuses(&bob, "alice").last().unwrap() == "delivered");
    }
}

/// Alice and bob each have two devices. Bob's second device is off while alice writes and bob answers from
/// his first; alice's second is off too. Each comes back to the same history as its sibling.
#[test]
fn every_device_ends_with_the_same_history() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    let mut laptop = Peer::new(&broker);
    assert!(laptop.link_from(&bob).contains("linked"));
    let mut tablet = Peer::new(&broker);
    assert!(tablet.link_from(&alice).contains("linked"));
    // Both linked devices start once (publishing their mailbox keys), then go away.
    drop(laptop.up());
    drop(tablet.up());

    assert!(alice.ok(&["send", "bob", "to every device of bob's"]).contains("delivered"));
    assert!(bob.ok(&["send", "alice", "answered from the phone"]).contains("delivered"));
    assert!(alice.ok(&["send", "bob", "and once more"]).contains("delivered"));
    let want = texts(&history(&bob, "alice"));
    assert_eq!(want.len(), 3);

    let _l = laptop.up();
    wait_until("the laptop has what the phone has", || texts(&history(&laptop, "alice")) == want);
    let copied = history(&laptop, "alice");
    let own = copied.as_array().unwrap().iter().find(|m| m["text"] == "answered from the phone").unwrap();
    assert_eq!(own["direction"], "out", "the phone's message is the laptop's own: {own}");
    assert_eq!(own["status"], "delivered");

    let _t = tablet.up();
    wait_until("alice's tablet has what alice's first device has", || {
        texts(&history(&tablet, "bob")) == texts(&history(&alice, "bob"))
    });
}

/// The operator's limits are clear errors to the sender and nothing is lost; a letter the broker tampered
/// with is dropped by the recipient (and says so in its log), never shown as a message.
#[test]
fn limits_and_tampered_letters() {
    let broker = Broker::start_with(&Backend::Sqlite, &["--mailbox-letters-per-device", "2"]);
    let Friends { alice, bob, agents: (_a, mut b) } = Friends::start(&broker, &[], &[]);
    assert!(b.stop());
    wait_until("bob is offline", || offline(&alice, "bob"));
    assert!(alice.ok(&["send", "bob", "first"]).contains("sent"));
    assert!(alice.ok(&["send", "bob", "second"]).contains("sent"));
    let out = alice.ok(&["send", "bob", "third"]);
    assert!(out.contains("queued") && out.contains("mailbox is full"), "{out}");
    assert_eq!(statuses(&alice, "bob"), ["sent", "sent", "queued"]);

    // The broker flips a byte in the first letter.
    broker.db.execute(
        "UPDATE deposits SET letter = CAST(X'00' || substr(letter, 2) AS BLOB) WHERE id = (SELECT MIN(id) FROM deposits)",
    );
    let _b = bob.up();
    wait_until("the untouched letter and the queued message arrive", || {
        texts(&history(&bob, "alice")) == ["second", "third"]
    });
    assert!(bob.agent_log().contains("a letter was dropped"), "{}", bob.agent_log());
    wait_until("alice sees what arrived delivered", || statuses(&alice, "bob") == ["sent", "delivered", "delivered"]);
}

/// A broker that keeps no mailbox says so, and the message waits on the sender's device as before.
#[test]
fn without_a_mailbox_messages_wait_on_the_sender() {
    let broker = Broker::start_with(&Backend::Sqlite, &["--no-mailbox"]);
    let Friends { alice, bob, agents: (_a, mut b) } = Friends::start(&broker, &[], &[]);
    assert!(b.stop());
    wait_until("bob is offline", || offline(&alice, "bob"));
    let out = alice.ok(&["send", "bob", "kept here"]);
    assert!(out.contains("queued") && out.contains("no mailbox"), "{out}");
    let _b = bob.up();
    wait_until("delivered once both are online", || statuses(&alice, "bob") == ["delivered"]);
}

/// A file offered while the friend is offline: the offer waits in their mailbox (the file never does), they
/// accept it while the sender is away, and the bytes go once both are online.
#[test]
fn a_file_offer_waits_in_the_mailbox_and_the_file_follows() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: (mut a, mut b) } = Friends::start(&broker, &[], &[]);
    assert!(b.stop());
    wait_until("bob is offline", || offline(&alice, "bob"));
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("photo.jpg");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let out = alice.run(&["send-file", "bob", file.to_str().unwrap(), "--no-wait"]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("mailbox"), "{said}");
    assert!(!contains(&broker_bytes(&broker), "photo.jpg"), "the broker cannot read the offer either");
    assert!(a.stop());

    let _b = bob.up();
    let offered = || bob.json(&["files", "--json"]).as_array().unwrap().iter().any(|t| t["state"] == "offered");
    wait_until("bob sees the offer", offered);
    let dl = tempfile::tempdir().unwrap();
    let id = bob.json(&["files", "--json"])[0]["id"].as_str().unwrap().to_string();
    bob.ok(&["files", "accept", &id[..8], "--to", dl.path().to_str().unwrap()]);
    let _a = alice.up();
    wait_until("the file arrives once both are online", || {
        std::fs::read(dl.path().join("photo.jpg")).is_ok_and(|got| got == data)
    });
}
