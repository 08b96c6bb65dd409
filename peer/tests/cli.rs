//! The command line as a newcomer meets it: what it refuses, what it says, and where things end up.

use testkit::{Backend, Broker, Client, DetachedAgent, Friends, PASSWORD, Peer, texts, wait_until};

#[test]
fn a_home_is_not_taken_over_by_another_account() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents } = Friends::start(&broker, &[], &[]);
    assert!(alice.ok(&["send", "bob", "hello", "world"]).contains("delivered"), "the words are joined");
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["hello world"]);
    drop(agents);

    // Registering carol into alice's home: refused, saying what is there and what to do.
    let mut carol = Peer::registered(&broker, "carol");
    let register = |p: &Peer, extra: &[&str]| {
        let mut args = vec!["register", "dave", "--broker", &p.broker, "--password-stdin"];
        args.extend_from_slice(extra);
        p.run_with_stdin(&args, &format!("{PASSWORD}\n"))
    };
    let out = register(&alice, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("holds alice's account") && err.contains("1 messages") && err.contains("--force"), "{err}");
    assert_eq!(alice.json(&["history", "bob", "--json"]).as_array().unwrap().len(), 1, "nothing was touched");
    // With --force, alice's data here goes and dave's account takes the home.
    let out = register(&alice, &["--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("deleted alice's data"));
    assert_eq!(alice.json(&["history", "bob", "--json"]).as_array().unwrap().len(), 0);
    // Logging in again as the same user needs no --force.
    carol.username = "carol".into();
    assert!(carol.login("carol", PASSWORD).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_logout_without_an_agent_say_what_to_do() {
    let broker = Broker::start(&Backend::Sqlite);
    let fresh = Peer::new(&broker);
    let err = fresh.fails(&["status"]);
    assert!(err.contains("no account on this device yet") && err.contains("peer register"), "{err}");

    let alice = Peer::registered(&broker, "alice");
    let token = setting(&alice, "token").await;
    // No agent running: logout goes straight to the broker, which revokes the token.
    let out = alice.ok(&["logout"]);
    assert!(out.contains("revoked at the broker"), "{out}");
    let c = Client::connect(&broker).await;
    let r = c.hello(&token).await;
    assert!(
        matches!(&r, shared::proto::Response::Error(e) if e.code == shared::proto::ErrorCode::InvalidToken),
        "{r:?}"
    );
    let err = alice.fails(&["status"]);
    assert!(err.contains("alice is logged out on this device") && err.contains("peer login alice"), "{err}");
    let err = alice.fails(&["watch"]);
    assert!(err.contains("logged out"), "{err}");
}

#[test]
fn small_things_read_right() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, agents: _agents, .. } = Friends::start(&broker, &[], &[]);
    assert!(alice.fails(&["users", "search", ""]).contains("give some text to search for"));
    let err = alice.fails(&["chat", "ghost"]);
    assert!(err.contains("ghost is not your friend"), "{err}");
    let friends = alice.ok(&["friends"]);
    assert!(friends.contains("bob ") && !friends.contains("bob (bob)"), "{friends}");
    // Columns line up with a CJK name in them (张三 takes four columns, not two).
    let mut zhang = Peer::new(&broker);
    zhang.register("zhang", "张三");
    let _z = zhang.up();
    alice.befriend(&zhang);
    let listing = alice.ok(&["friends"]);
    let columns: Vec<usize> = listing
        .lines()
        .map(|l| unicode_width::UnicodeWidthStr::width(&l[..l.find("online").expect("presence column")]))
        .collect();
    assert!(columns.len() == 2 && columns[0] == columns[1], "{listing}");
    alice.ok(&["groups", "create", "solo"]);
    let groups = alice.ok(&["groups"]);
    assert!(groups.contains("1 member") && !groups.contains("1 members"), "{groups}");
}

#[test]
fn accepted_files_go_to_downloads_by_default() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.txt");
    std::fs::write(&file, b"quarterly numbers").unwrap();
    let id = alice.ok(&["send-file", "bob", file.to_str().unwrap(), "--no-wait"]).trim().to_string();
    wait_until("bob has the offer", || bob.ok(&["files"]).contains("report.txt"));
    // A user's home with no Downloads folder yet, and no desktop naming one.
    let user_home = tempfile::tempdir().unwrap();
    let out = bob
        .command(&["files", "accept", &id[..8]])
        .env("HOME", user_home.path())
        .env_remove("XDG_DOWNLOAD_DIR")
        .env("XDG_CONFIG_HOME", user_home.path().join(".config"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved = user_home.path().join("Downloads/report.txt");
    wait_until("the file is in ~/Downloads", || saved.exists());
    assert_eq!(std::fs::read(saved).unwrap(), b"quarterly numbers");
}

/// A setting from a device's home database, read behind the CLI's back.
async fn setting(p: &Peer, key: &str) -> String {
    use sqlx::{Connection, Row};
    let url = format!("sqlite:{}", p.home.path().join("peer.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT value FROM settings WHERE key = ?").bind(key).fetch_one(&mut c).await.unwrap().get(0)
}

#[test]
fn a_detached_agent_comes_and_goes_and_watchers_follow_it() {
    let broker = Broker::start(&Backend::Sqlite);
    let (alice, bob) = testkit::alice_and_bob(&broker);
    let _b = bob.up();
    let out = alice.ok(&["up", "--detach", "--bind", "127.0.0.1:0"]);
    let _guard = DetachedAgent(&alice);
    assert!(out.contains("runs in the background"), "{out}");
    alice.wait_status(|s| s["online"] == true, "the detached agent is online");
    assert!(alice.fails(&["up", "--detach"]).contains("already running"));
    alice.befriend(&bob);

    // A watcher and a line-mode chat stay with the agent through a restart.
    let watch = alice.watch();
    let chat_out = alice.home.path().join("chat.out");
    let mut chat = alice
        .command(&["chat", "bob"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&chat_out).unwrap())
        .spawn()
        .unwrap();
    wait_until("the chat is open", || std::fs::read_to_string(&chat_out).unwrap_or_default().contains("chat with bob"));
    assert!(alice.ok(&["down"]).contains("stopped"));
    assert!(alice.fails(&["status"]).contains("no agent is running"));
    watch.expect("the watcher saw the agent go", |v| v["type"] == "agent_stopped");
    wait_until("the chat says so", || std::fs::read_to_string(&chat_out).unwrap_or_default().contains("agent stopped"));
    alice.ok(&["up", "--detach", "--bind", "127.0.0.1:0"]);
    alice.wait_status(|s| s["online"] == true, "online again");
    watch.expect("the watcher is back", |v| v["type"] == "watching");
    wait_until("the chat is back", || std::fs::read_to_string(&chat_out).unwrap_or_default().contains("agent is back"));
    assert!(bob.ok(&["send", "alice", "after the restart"]).contains("delivered"));
    assert_eq!(watch.expect_event("message_received", "bob")["text"], "after the restart");
    wait_until("the chat shows it", || {
        std::fs::read_to_string(&chat_out).unwrap_or_default().contains("bob: after the restart")
    });
    let _ = chat.kill();
    let _ = chat.wait();
    alice.ok(&["down"]);
}

#[test]
fn unread_counts_agree_everywhere_and_survive_restarts() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: (mut a, _b) } = Friends::start(&broker, &[], &[]);
    let g = alice.ok(&["groups", "create", "g"]).trim().to_string();
    alice.ok(&["groups", "invite", &g, "bob"]);
    bob.ok(&["groups", "join", &g]);
    bob.ok(&["send", "alice", "one"]);
    bob.ok(&["send", "alice", "two"]);
    bob.ok(&["send", "--group", &g, "to the group"]);
    alice.ok(&["send", "--group", &g, "my own post is never unread"]);
    // (Not through `peer history`: reading a conversation marks it read.)
    wait_until("alice has bob's group post", || alice.ok(&["unread", "--json"]).contains("group"));

    let unread = alice.json(&["unread", "--json"]);
    let by = |kind: &str| {
        unread.as_array().unwrap().iter().find(|u| u["kind"] == kind).cloned().unwrap_or_else(|| panic!("{unread}"))
    };
    assert_eq!(by("friend")["username"], "bob");
    assert_eq!(by("friend")["unread"], 2);
    assert_eq!(by("group")["unread"], 1);
    assert_eq!(alice.json(&["friends", "--json"])[0]["unread"], 2);
    assert_eq!(alice.json(&["groups", "--json"])[0]["unread"], 1);
    assert!(alice.ok(&["friends"]).contains("2 unread"));

    // Reading the conversation marks it read; the mark survives the agent's restart.
    alice.ok(&["history", "bob"]);
    assert_eq!(alice.json(&["friends", "--json"])[0]["unread"], 0);
    a.kill9();
    let _a = alice.up();
    assert_eq!(alice.json(&["friends", "--json"])[0]["unread"], 0);
    assert_eq!(alice.json(&["groups", "--json"])[0]["unread"], 1);
    alice.ok(&["history", "--group", &g]);
    assert!(alice.ok(&["unread"]).contains("nothing unread"));
    bob.ok(&["send", "alice", "three"]);
    wait_until("the new message is unread", || alice.json(&["unread", "--json"])[0]["unread"] == 1);
    assert_eq!(alice.json(&["unread", "--json"]).as_array().unwrap().len(), 1, "only what came after the mark");
}

/// With `--json`, a failed command prints one JSON object on stdout with a code a script can branch on:
/// the agent's own (`offline` here) or the broker's refusal with the broker's code.
#[test]
fn json_errors_carry_a_code() {
    let mut broker = Broker::start(&Backend::Sqlite);
    let (alice, _bob) = testkit::alice_and_bob(&broker);
    let _a = alice.up();
    let error = |args: &[&str]| -> serde_json::Value {
        let out = alice.run(args);
        assert!(!out.status.success(), "`peer {}` should have failed", args.join(" "));
        let stdout = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))["error"].clone()
    };

    let refused = error(&["groups", "members", "999", "--json"]);
    assert_eq!(refused["code"], "broker", "{refused}");
    assert_eq!(refused["broker_code"], "NotMember", "{refused}");

    broker.kill();
    alice.wait_status(|s| s["online"] == false, "the agent noticed the broker is gone");
    let offline = error(&["friends", "--json"]);
    assert_eq!(offline["code"], "offline", "{offline}");
    // People still read a sentence on stderr.
    assert!(alice.fails(&["friends"]).contains("not connected to the broker"));
}
