//! Text a remote party wrote never drives the reader's terminal: escape sequences, NUL, C1 controls and bidi
//! overrides from a friend, and from a group member who is not a friend, are shown visibly escaped by every
//! command that prints them, and stored intact.

use std::process::Stdio;
use testkit::{Backend, Broker, Friends, Peer, texts, wait_until};

/// What an attacker would send: set the window title, clear the screen, a NUL, a C1 CSI, a bidi override.
const HOSTILE: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J\0zap\u{9b}31m\u{202e}gnp.exe";

/// Bytes that must never reach a terminal from someone else's text.
fn assert_tame(what: &str, out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    for bad in ["\u{1b}", "\u{7}", "\0", "\u{9b}", "\u{202e}", "\u{2067}"] {
        assert!(!text.contains(bad), "{what} printed {bad:?} raw:\n{text}");
    }
}

#[test]
fn hostile_text_is_escaped_by_every_printing_command() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    // Carol shares a group with bob but is not his friend; her display name carries an isolate.
    let mut carol = Peer::new(&broker);
    carol.register("carol", "car\u{2067}ol");
    let _c = carol.up();
    alice.befriend(&carol);

    // Bob watches in plain text, as a person would.
    let watch_out = bob.home.path().join("watch.out");
    let mut watch = bob
        .command(&["watch"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&watch_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("watch subscribed", || std::fs::read_to_string(&watch_out).unwrap_or_default().contains("watching"));

    let g = alice.ok(&["groups", "create", "fam\u{202e}ily"]).trim().to_string();
    for who in [&bob, &carol] {
        alice.ok(&["groups", "invite", &g, &who.username]);
        who.ok(&["groups", "join", &g]);
    }

    // A friend's direct message and a non-friend's group post, typed into line-mode chat (NUL included:
    // it cannot be passed as an argument).
    let line = format!("{HOSTILE}\n/quit\n");
    assert!(alice.run_with_stdin(&["chat", "bob"], &line).status.success());
    assert!(carol.run_with_stdin(&["chat", "--group", &g], &line).status.success());
    wait_until("bob stored the direct message", || texts(&bob.json(&["history", "alice", "--json"])) == [HOSTILE]);
    let group_texts = || texts(&bob.json(&["history", "--group", &g, "--json"]));
    wait_until("bob stored the group post", || group_texts().contains(&HOSTILE.to_string()));

    // A friend request with a bidi override in its message, and a file whose name hides its extension.
    let dave = Peer::registered(&broker, "dave");
    let _d = dave.up();
    dave.ok(&["friends", "add", "bob", "--message", "hi \u{202e}moc.live"]);
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil\u{202e}txt.exe");
    std::fs::write(&evil, b"not really").unwrap();
    alice.ok(&["send-file", "bob", evil.to_str().unwrap(), "--no-wait"]);
    wait_until("bob was offered the file", || bob.json(&["files", "--json"]).as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(bob.json(&["files", "--json"])[0]["name"], "eviltxt.exe", "bidi controls dropped from file names");

    // Every command that shows them.
    let visible = "\\x1b]0;pwned\\x07\\x1b[2J\\x00zap\\x9b31m\\u{202e}gnp.exe";
    for args in [
        vec!["history", "alice"],
        vec!["history", "--group", &g],
        vec!["history", "--search", "zap"],
        vec!["friends", "requests"],
        vec!["groups"],
        vec!["groups", "members", &g],
        vec!["files"],
    ] {
        let out = bob.run(&args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_tame(&format!("peer {}", args.join(" ")), &out.stdout);
        assert_tame(&format!("peer {} (stderr)", args.join(" ")), &out.stderr);
    }
    assert!(bob.ok(&["history", "alice"]).contains(visible), "shown visibly, not dropped");
    assert!(bob.ok(&["history", "--group", &g]).contains(visible));
    assert!(bob.ok(&["groups"]).contains("fam\\u{202e}ily"));
    assert!(bob.ok(&["friends", "requests"]).contains("\\u{202e}moc.live"));
    for args in [vec!["chat", "alice"], vec!["chat", "--group", &g]] {
        let out = bob.run_with_stdin(&args, "/history\n/quit\n");
        assert!(out.status.success());
        assert_tame(&format!("peer {}", args.join(" ")), &out.stdout);
        assert!(String::from_utf8_lossy(&out.stdout).contains(visible));
    }

    let _ = watch.kill();
    let _ = watch.wait();
    let watched = std::fs::read(&watch_out).unwrap();
    assert_tame("peer watch", &watched);
    let watched = String::from_utf8_lossy(&watched);
    assert_eq!(watched.matches(visible).count(), 2, "both messages seen live, escaped:\n{watched}");

    // The stored text is intact: --json carries it exactly (JSON escapes control characters itself).
    let json = bob.ok(&["history", "alice", "--json"]);
    assert_tame("history --json", json.as_bytes());
    assert_eq!(texts(&serde_json::from_str(&json).unwrap()), [HOSTILE]);
}
