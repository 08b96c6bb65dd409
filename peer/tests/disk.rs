//! A full disk never turns "queued" into loss: a send that could not be stored fails (non-zero exit, a clear
//! message), every send reported queued is delivered once the friend is back, and the agent carries on once
//! space returns. The sender's home is on a small tmpfs (root needed: CI runs as root; elsewhere this test
//! fails saying so rather than pass without having run).

use testkit::{Backend, Broker, Peer, SmallDisk, texts, wait_until};

#[test]
fn a_full_disk_refuses_sends_and_loses_nothing_it_accepted() {
    // No mailbox: everything this test sends waits in the sender's outbox (on the small disk).
    let broker = Broker::start_with(&Backend::Sqlite, &["--no-mailbox"]);
    let disk = SmallDisk::mount("6m");
    let mut alice = Peer::with_home(&broker, tempfile::tempdir_in(disk.path()).unwrap());
    alice.register("alice", "alice");
    let bob = Peer::registered(&broker, "bob");
    let _a = alice.up();
    let mut b = bob.up();
    alice.befriend(&bob);
    b.kill9();
    wait_until("bob is offline", || alice.json(&["friends", "--json"])[0]["online"] == false);
    assert!(alice.ok(&["send", "bob", "before the disk filled"]).contains("queued"));

    let filler = disk.fill();
    let mut queued = vec!["before the disk filled".to_string()];
    let mut refused = 0;
    for i in 0..40 {
        // Large enough that SQLite's write-ahead log cannot absorb them all in space it already holds.
        let text = format!("{i} {}", "x".repeat(12 * 1024));
        let out = alice.run(&["send", "bob", &text]);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            assert!(stdout.contains("queued"), "{stdout}");
            queued.push(text);
        } else {
            assert!(stderr.contains("could not store the message"), "a clear reason: {stderr}");
            assert!(stderr.contains("nothing was queued"), "{stderr}");
            assert!(!stdout.contains("queued"), "{stdout}");
            refused += 1;
        }
    }

    // Space is back: the agent carries on, and everything it said it queued reaches bob, in order.
    std::fs::remove_file(filler).unwrap();
    assert!(alice.ok(&["send", "bob", "after space came back"]).contains("queued"));
    queued.push("after space came back".into());
    let _b = bob.up();
    wait_until("bob has everything alice queued", || texts(&bob.json(&["history", "alice", "--json"])) == queued);
    wait_until("alice sees them delivered", || {
        let h = alice.json(&["history", "bob", "--json"]);
        h.as_array().unwrap().iter().all(|m| m["status"] == "delivered") && texts(&h) == queued
    });
    assert!(refused > 0, "the disk never filled up: the test did not test anything");
}
