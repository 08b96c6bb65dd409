//! File transfers between friends' agents, end to end: offers, verification, resume, and everything that
//! can go wrong on the way.

use serde_json::Value;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};
use testkit::{Backend, Broker, Friends, Peer, RelayedPair, alice_and_bob, wait_until};

/// How long a large transfer may take on a slow debug build before the test gives up.
const LARGE: Duration = Duration::from_secs(600);

/// A file of `size` bytes: sparse, with a few distinct bytes scattered through it so that every part of
/// it counts for the hash.
fn make_file(path: &Path, size: u64, seed: u8) -> PathBuf {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    if size > 0 {
        for i in 0..16u64 {
            f.seek(SeekFrom::Start(size / 16 * i)).unwrap();
            f.write_all(&[seed, i as u8, 0xa5]).unwrap();
        }
    }
    path.to_path_buf()
}

fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// One transfer from `peer files --json`, by id.
fn transfer(peer: &Peer, id: &str) -> Value {
    let list = peer.json(&["files", "--json"]);
    list.as_array().unwrap().iter().find(|t| t["id"].as_str().unwrap().starts_with(id)).cloned().unwrap_or_default()
}

/// Polls a transfer until `pred` holds.
fn wait_transfer(peer: &Peer, id: &str, within: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let t = transfer(peer, id);
        if pred(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {t:#}\nagent log:\n{}", peer.agent_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `peer send-file` following the transfer to its end.
fn spawn_send(peer: &Peer, args: &[&str]) -> Child {
    let mut all = vec!["send-file"];
    all.extend_from_slice(args);
    peer.command(&all).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn finish(mut child: Child, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("send-file did not finish: {:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn no_partials(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".part"))
}

#[test]
fn offer_accept_verify_never_overwrite_and_tame_names() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    let bob_watch = bob.watch();
    let src = tempfile::tempdir().unwrap();
    let dl = tempfile::tempdir().unwrap();
    let file = src.path().join("notes 笔记.txt");
    std::fs::write(&file, "hello files, 你好 📁\n".repeat(1000)).unwrap();
    std::fs::write(dl.path().join("notes 笔记.txt"), "already here").unwrap();

    let sender = spawn_send(&alice, &["bob", file.to_str().unwrap()]);
    let offer = bob_watch.expect("the offer", |v| v["type"] == "file_offered");
    assert_eq!(offer["peer"], "alice");
    assert_eq!(offer["name"], "notes 笔记.txt");
    let id = offer["id"].as_str().unwrap().to_string();
    assert_eq!(transfer(&bob, &id)["state"], "offered");
    assert!(bob.ok(&["files"]).contains("from alice"));

    bob.ok(&["files", "accept", &id[..8], "--to", dl.path().to_str().unwrap()]);
    let out = finish(sender, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "send-file: {}\nalice's agent:\n{}\nbob's agent:\n{}",
        String::from_utf8_lossy(&out.stderr),
        alice.agent_log(),
        bob.agent_log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified"));

    // The existing file is untouched; the new one got a free name; nothing partial is left.
    assert_eq!(std::fs::read_to_string(dl.path().join("notes 笔记.txt")).unwrap(), "already here");
    let saved = dl.path().join("notes 笔记 (1).txt");
    assert!(same_contents(&file, &saved));
    assert!(no_partials(dl.path()));
    let on_bob = transfer(&bob, &id);
    assert_eq!(on_bob["state"], "done");
    assert_eq!(on_bob["path"], saved.to_str().unwrap());
    let on_alice = transfer(&alice, &id);
    assert_eq!(on_alice["state"], "done");
    assert_eq!(on_alice["hash"], on_bob["hash"]);
    assert_eq!(on_alice["direction"], "out");

    // Sending the same file again is the same, finished transfer.
    let again = alice.ok(&["send-file", "bob", file.to_str().unwrap()]);
    assert!(again.contains("already has"), "{again}");

    // An empty file.
    let empty = make_file(&src.path().join("empty.bin"), 0, 0);
    let id = alice.ok(&["send-file", "bob", empty.to_str().unwrap(), "--no-wait"]).trim().to_string();
    bob.ok(&["files", "accept", &id, "--to", dl.path().to_str().unwrap()]);
    wait_transfer(&bob, &id, Duration::from_secs(40), "the empty file", |t| t["state"] == "done");
    assert_eq!(std::fs::metadata(dl.path().join("empty.bin")).unwrap().len(), 0);

    // Hostile names arrive tamed, and land inside the chosen directory.
    for (given, tamed) in [("../../escape.txt", "escape.txt"), ("/etc/passwd", "passwd"), ("CON.txt", "_CON.txt")] {
        let id = alice.ok(&["send-file", "bob", file.to_str().unwrap(), "--name", given, "--no-wait"]);
        let id = id.trim();
        let offer = bob_watch.expect("a hostile offer", |v| v["type"] == "file_offered" && v["id"] == id);
        assert_eq!(offer["name"], tamed);
        bob.ok(&["files", "accept", id, "--to", dl.path().to_str().unwrap()]);
        wait_transfer(&bob, id, Duration::from_secs(40), "the tamed file", |t| t["state"] == "done");
        assert!(dl.path().join(tamed).exists(), "{tamed} saved in the directory");
    }
    assert!(!dl.path().parent().unwrap().join("escape.txt").exists());
    for bad in ["..", "", "/"] {
        let err = alice.fails(&["send-file", "bob", file.to_str().unwrap(), "--name", bad]);
        assert!(err.contains("file name is empty"), "{bad:?}: {err}");
    }
    let err = alice.fails(&["send-file", "bob", file.to_str().unwrap(), "--name", &"x".repeat(300)]);
    assert!(err.contains("the limit is 255"), "{err}");

    // Typed errors for what cannot work.
    assert!(alice.fails(&["send-file", "bob", "/no/such/file"]).contains("cannot open"));
    assert!(alice.fails(&["send-file", "alice", file.to_str().unwrap()]).contains("yourself"));
    assert!(alice.fails(&["files", "accept", "zz"]).contains("not a transfer id"));
    assert!(alice.fails(&["files", "accept", "0123456789"]).contains("no transfer"));
    assert!(alice.fails(&["files", "accept", &id[..8]]).contains("you are sending"));
    let carol = Peer::registered(&broker, "carol");
    let _c = carol.up();
    let err = alice.fails(&["send-file", "carol", file.to_str().unwrap()]);
    assert!(err.contains("not friends") || err.contains("friend"), "{err}");
}

#[test]
fn auto_accept_and_size_limit() {
    let broker = Broker::start(&Backend::Sqlite);
    let (alice, bob) = alice_and_bob(&broker);
    let inbox = tempfile::tempdir().unwrap();
    let _a = alice.up();
    let _b = bob.up_with(&["--auto-accept-files", inbox.path().to_str().unwrap(), "--max-file-size", "1M"]);
    alice.befriend(&bob);
    let src = tempfile::tempdir().unwrap();

    // Accepted without asking.
    let small = make_file(&src.path().join("small.bin"), 300 * 1024, 7);
    let out = alice.ok(&["send-file", "bob", small.to_str().unwrap()]);
    assert!(out.contains("verified"), "{out}");
    assert!(same_contents(&small, &inbox.path().join("small.bin")));

    // Over the receiver's limit: refused with the limit named.
    let big = make_file(&src.path().join("big.bin"), 2 << 20, 8);
    let err = alice.fails(&["send-file", "bob", big.to_str().unwrap()]);
    assert!(err.contains("accepts files up to 1.0 MiB"), "{err}");

    assert!(no_partials(inbox.path()));
}

#[test]
fn decline_and_cancel_from_either_side() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    let src = tempfile::tempdir().unwrap();
    let dl = tempfile::tempdir().unwrap();
    let file = make_file(&src.path().join("doc.bin"), 64 * 1024, 3);

    // Declined: the waiting sender is told and exits non-zero.
    let sender = spawn_send(&alice, &["bob", file.to_str().unwrap()]);
    let id = wait_until_offered(&bob);
    bob.ok(&["files", "decline", &id]);
    let out = finish(sender, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("declined"), "{out:?}");
    wait_transfer(&alice, &id, Duration::from_secs(40), "declined on alice", |t| t["state"] == "declined");
    assert!(bob.fails(&["files", "accept", &id]).contains("declined"));

    // Cancelled by the sender before an answer: the receiver's offer goes away.
    let id = alice.ok(&["send-file", "bob", file.to_str().unwrap(), "--no-wait"]).trim().to_string();
    wait_transfer(&bob, &id, Duration::from_secs(40), "the offer", |t| t["state"] == "offered");
    alice.ok(&["files", "cancel", &id]);
    wait_transfer(&bob, &id, Duration::from_secs(40), "cancelled on bob", |t| t["state"] == "cancelled");
    assert!(bob.fails(&["files", "accept", &id, "--to", dl.path().to_str().unwrap()]).contains("cancelled"));

    // Cancelled by the receiver part way: the partial data is deleted and the sender stops.
    let large = make_file(&src.path().join("large.bin"), 1 << 30, 4);
    let sender = spawn_send(&alice, &["bob", large.to_str().unwrap()]);
    let id = wait_until_offered(&bob);
    bob.ok(&["files", "accept", &id, "--to", dl.path().to_str().unwrap()]);
    wait_transfer(&bob, &id, LARGE, "bytes arriving", |t| t["bytes"].as_u64().unwrap_or(0) > 0);
    bob.ok(&["files", "cancel", &id]);
    let out = finish(sender, Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled"), "{out:?}");
    wait_transfer(&alice, &id, Duration::from_secs(40), "cancelled on alice", |t| t["state"] == "cancelled");
    assert!(no_partials(dl.path()));
    assert_eq!(std::fs::read_dir(dl.path()).unwrap().count(), 0);
    assert!(bob.fails(&["files", "cancel", &id]).contains("already cancelled"));

    // The file changes between the offer (hashed) and the fetch: the receiver's hash check catches it, on
    // both sides, and nothing is kept.
    let changing = make_file(&src.path().join("changing.bin"), 512 * 1024, 1);
    let id = alice.ok(&["send-file", "bob", changing.to_str().unwrap(), "--no-wait"]).trim().to_string();
    make_file(&changing, 512 * 1024, 2);
    wait_transfer(&bob, &id, Duration::from_secs(40), "the offer", |t| t["state"] == "offered");
    bob.ok(&["files", "accept", &id, "--to", dl.path().to_str().unwrap()]);
    let failed = wait_transfer(&bob, &id, Duration::from_secs(40), "the mismatch", |t| t["state"] == "failed");
    assert!(failed["error"].as_str().unwrap().contains("does not match"), "{failed:#}");
    let on_alice = wait_transfer(&alice, &id, Duration::from_secs(40), "failed on alice", |t| t["state"] == "failed");
    assert!(on_alice["error"].as_str().unwrap().contains("could not verify"), "{on_alice:#}");
    assert!(no_partials(dl.path()));
    assert!(!dl.path().join("changing.bin").exists());
}

fn wait_until_offered(bob: &Peer) -> String {
    let mut id = String::new();
    wait_until("an offer on bob's side", || {
        let list = bob.json(&["files", "--json"]);
        match list.as_array().unwrap().iter().find(|t| t["state"] == "offered") {
            Some(t) => {
                id = t["id"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    });
    id
}

/// The "done when": the receiving agent is killed half way and restarted, and the transfer finishes
/// from where it stopped with a verified hash; then the same with the sending agent.
#[test]
fn resume_after_either_agent_dies_mid_transfer() {
    let broker = Broker::start(&Backend::Sqlite);
    let (alice, bob) = alice_and_bob(&broker);
    let mut a = alice.up();
    let mut b = bob.up();
    alice.befriend(&bob);
    let src = tempfile::tempdir().unwrap();
    let dl = tempfile::tempdir().unwrap();
    let size: u64 = 1 << 30;
    let file = make_file(&src.path().join("movie.mkv"), size, 9);

    let sender = spawn_send(&alice, &["bob", file.to_str().unwrap()]);
    let id = wait_until_offered(&bob);
    bob.ok(&["files", "accept", &id, "--to", dl.path().to_str().unwrap()]);
    let at_kill = wait_transfer(&bob, &id, LARGE, "a tenth received", |t| t["bytes"].as_u64().unwrap_or(0) > size / 10);
    b.kill9();
    assert_ne!(at_kill["state"], "done");
    let _b = bob.up();
    let done = wait_transfer(&bob, &id, LARGE, "the resumed transfer", |t| t["state"] == "done");
    assert!(done["resumed_from"].as_u64().unwrap() > 0, "resumed, not restarted: {done:#}");
    let out = finish(sender, LARGE);
    assert!(out.status.success(), "send-file: {}", String::from_utf8_lossy(&out.stderr));
    assert!(same_contents(&file, &dl.path().join("movie.mkv")));
    assert!(no_partials(dl.path()));

    // Now the sender dies part way; the receiving agent resumes by itself once it is back.
    let second = make_file(&src.path().join("backup.tar"), size, 10);
    let dl2 = tempfile::tempdir().unwrap();
    let id = alice.ok(&["send-file", "bob", second.to_str().unwrap(), "--no-wait"]).trim().to_string();
    bob.ok(&["files", "accept", &id, "--to", dl2.path().to_str().unwrap()]);
    wait_transfer(&bob, &id, LARGE, "a tenth received", |t| t["bytes"].as_u64().unwrap_or(0) > size / 10);
    a.kill9();
    let _a = alice.up();
    let done = wait_transfer(&bob, &id, LARGE, "the resumed transfer", |t| t["state"] == "done");
    assert!(done["resumed_from"].as_u64().unwrap() > 0, "resumed, not restarted: {done:#}");
    wait_transfer(&alice, &id, Duration::from_secs(60), "done on alice", |t| t["state"] == "done");
    assert!(same_contents(&second, &dl2.path().join("backup.tar")));
}

#[test]
fn transfers_both_ways_at_once_while_chat_flows() {
    let broker = Broker::start(&Backend::Sqlite);
    let (alice, bob) = alice_and_bob(&broker);
    let (in_a, in_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _a = alice.up_with(&["--auto-accept-files", in_a.path().to_str().unwrap()]);
    let _b = bob.up_with(&["--auto-accept-files", in_b.path().to_str().unwrap()]);
    alice.befriend(&bob);
    let src = tempfile::tempdir().unwrap();
    let to_bob = make_file(&src.path().join("to-bob.bin"), 512 << 20, 11);
    let to_alice = make_file(&src.path().join("to-alice.bin"), 512 << 20, 12);
    let s1 = spawn_send(&alice, &["bob", to_bob.to_str().unwrap()]);
    let s2 = spawn_send(&bob, &["alice", to_alice.to_str().unwrap()]);
    wait_until("both transfers moving", || {
        let moving = |p: &Peer| {
            p.json(&["files", "--json"])
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["direction"] == "in" && t["bytes"].as_u64().unwrap_or(0) > 0)
        };
        moving(&alice) && moving(&bob)
    });
    // Chat is not held up behind the files on the same connection.
    for i in 0..5 {
        assert!(alice.ok(&["send", "bob", &format!("ping {i}")]).contains("delivered"));
        assert!(bob.ok(&["send", "alice", &format!("pong {i}")]).contains("delivered"));
    }
    for s in [s1, s2] {
        let out = finish(s, LARGE);
        assert!(out.status.success(), "send-file: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(same_contents(&to_bob, &in_b.path().join("to-bob.bin")));
    assert!(same_contents(&to_alice, &in_a.path().join("to-alice.bin")));
    assert_eq!(alice.json(&["history", "bob", "--json"]).as_array().unwrap().len(), 10);
}

/// A relayed transfer survives the broker restarting under it: the agents reconnect, the relay opens again
/// and the receiver resumes from what it has.
#[test]
fn relayed_transfer_resumes_after_a_broker_restart() {
    let mut broker = Broker::start(&Backend::Sqlite);
    let RelayedPair { alice, bob, inbox, agents: _agents } = RelayedPair::start(&broker);
    let src = tempfile::tempdir().unwrap();
    let size: u64 = 256 << 20;
    let file = make_file(&src.path().join("through-restart.bin"), size, 21);
    let id = alice.ok(&["send-file", "bob", file.to_str().unwrap(), "--no-wait"]).trim().to_string();
    wait_transfer(&bob, &id, LARGE, "bytes arriving", |t| t["bytes"].as_u64().unwrap_or(0) > 0);
    broker.restart();
    let done = wait_transfer(&bob, &id, LARGE, "the transfer after the restart", |t| t["state"] == "done");
    assert!(done["resumed_from"].as_u64().unwrap() > 0, "resumed, not restarted: {done:#}");
    wait_transfer(&alice, &id, Duration::from_secs(60), "done on alice", |t| t["state"] == "done");
    assert!(same_contents(&file, &inbox.path().join("through-restart.bin")));
}
