//! The full-screen app, end to end: the real `peer` binary in a real pseudo-terminal (tmux), two real agents
//! and a broker. Keys go in with `send-keys`, the screen comes back with `capture-pane`. Needs tmux
//! (`scripts/test` installs it); without it this test fails, saying so.

use std::process::Command;
use std::time::{Duration, Instant};
use testkit::{Backend, Broker, DetachedAgent, Peer, WAIT, texts, wait_until};

/// A tmux server of the test's own, with one window running the app; killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(peer: &Peer, width: u16, height: u16) -> Self {
        Self::start_with_env(peer, width, height, &[])
    }

    fn start_with_env(peer: &Peer, width: u16, height: u16, env: &[(&str, &str)]) -> Self {
        let socket = format!("p2pim-test-{}-{}", std::process::id(), peer.username);
        let vars: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let cmd = format!("env {vars}{} --home {}", testkit::bin("peer").display(), peer.home.path().display());
        let ok = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d", "-s", "app"])
            .args(["-x", &width.to_string(), "-y", &height.to_string(), &cmd])
            .env_remove("TMUX")
            .status()
            .expect("tmux is needed for this test (scripts/test installs it)");
        assert!(ok.success(), "tmux could not start the app");
        Self { socket }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", "app"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Types `text` literally, then presses `keys` (tmux key names, e.g. "Enter").
    fn keys(&self, text: &str, keys: &[&str]) {
        if !text.is_empty() {
            let ok =
                Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", "app", "-l", text]).status().unwrap();
            assert!(ok.success());
        }
        for k in keys {
            let ok = Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", "app", k]).status().unwrap();
            assert!(ok.success());
        }
    }

    /// Waits until the screen shows `what`; panics with the screen after [`WAIT`].
    fn expect(&self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(Instant::now() < deadline, "the screen never showed {what:?}:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        Command::new("tmux").args(["-L", &self.socket, "has-session", "-t", "app"]).status().is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

#[test]
fn alice_chats_from_the_app_through_an_agent_restart() {
    let broker = Broker::start(&Backend::Sqlite);
    let (alice, bob) = testkit::alice_and_bob(&broker);
    let _b = bob.up();
    {
        let _a = alice.up();
        alice.befriend(&bob);
    }
    // No agent runs for alice: the app starts one (and leaves it running when it quits).
    let _agent = DetachedAgent(&alice);
    let app = Tmux::start(&alice, 100, 30);
    app.expect("started the agent");
    app.expect("● bob");

    // A message while bob's conversation is not open: an unread count in the sidebar.
    wait_until("bob reaches alice's new agent", || bob.ok(&["send", "alice", "hello from bob"]).contains("delivered"));
    app.expect("bob 1");
    app.keys("/open bob", &["Enter"]);
    app.expect("bob: hello from bob");
    // Real editing: cursor keys move within the line instead of typing escape codes.
    app.keys("hi bob, from the ap", &["Left", "Left"]);
    app.keys("X", &["BSpace", "End"]);
    app.keys("p", &["Enter"]);
    wait_until("bob has alice's reply", || {
        texts(&bob.json(&["history", "alice", "--json"])).contains(&"hi bob, from the app".to_string())
    });
    app.expect("alice: hi bob, from the app");

    // Hostile text from a friend is shown escaped.
    let out = bob.run_with_stdin(&["chat", "alice"], "\u{1b}]0;pwned\u{7}\u{1b}[2Jgotcha\n/quit\n");
    assert!(out.status.success());
    app.expect("\\x1b]0;pwned\\x07\\x1b[2Jgotcha");

    // The agent restarts under the app: it says so, comes back, and messages still show.
    alice.ok(&["down"]);
    app.expect("agent stopped");
    alice.ok(&["up", "--detach"]);
    app.expect("the agent is back");
    wait_until("bob reaches alice again", || bob.ok(&["send", "alice", "after the restart"]).contains("delivered"));
    app.expect("bob: after the restart");

    // Quitting leaves the agent running, so friends can still reach alice.
    app.keys("", &["C-c"]);
    wait_until("the app quit", || !app.alive());
    assert_eq!(alice.json(&["status", "--json"])["online"], true);
}

#[test]
fn a_new_user_signs_up_and_makes_friends_without_a_subcommand() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let _a = alice.up();
    let mut carol = Peer::new(&broker);
    carol.username = "carol".into();
    let _agent = DetachedAgent(&carol);
    let app = Tmux::start_with_env(&carol, 100, 30, &[("PEER_BROKER", &broker.address())]);
    app.expect("register a new account");
    app.keys("carol", &["Enter", "Enter"]);
    app.keys("Carol C.", &["Enter"]);
    app.keys(testkit::PASSWORD, &["Enter"]);
    // The broker's identity, pinned on first use, shown whole for the user to compare.
    app.expect(&broker.fingerprint[..32]);
    app.keys("", &["Enter"]);
    app.expect("welcome, carol");
    app.expect("no friends yet");
    app.keys("/add alice hello from the app", &["Enter"]);
    app.expect("friend request sent to alice");
    let requests = alice.json(&["friends", "requests", "--json"]);
    assert_eq!(requests[0]["username"], "carol");
    assert_eq!(requests[0]["message"], "hello from the app");
    alice.ok(&["friends", "accept", "carol"]);
    app.expect("● alice");
}
