//! One-to-one chat over direct QUIC connections, end to end.

use std::sync::Arc;
use testkit::{Backend, Broker, Friends, Peer, RelayedPair, alice_and_bob, texts, wait_until};

#[test]
fn direct_delivery_both_ways_with_history_and_search() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    let bob_watch = bob.watch();
    let alice_watch = alice.watch();

    assert!(alice.ok(&["send", "bob", "你好,世界 👋"]).contains("delivered"));
    let ev = bob_watch.expect_event("message_received", "alice");
    assert_eq!(ev["text"], "你好,世界 👋");
    alice_watch.expect_event("message_delivered", "bob");
    assert!(bob.ok(&["send", "alice", "hi back 🙂"]).contains("delivered"));
    alice_watch.expect_event("message_received", "bob");
    let long = "长".repeat(16 * 1024 / 3);
    assert!(alice.ok(&["send", "bob", &long]).contains("delivered"));

    // The live connection is visible, as a direct path to bob's agent.
    let peers = alice.json(&["status", "--json"])["peers"].clone();
    assert_eq!(peers[0]["username"], "bob");
    assert_eq!(peers[0]["path"], "direct");
    let bob_addr = bob.json(&["status", "--json"])["observed_addr"].clone();
    assert_eq!(peers[0]["remote_addr"], bob_addr);
    assert_eq!(alice.json(&["friends", "--json"])[0]["connections"][0]["path"], "direct");

    // Both sides hold the same conversation, in the same order.
    let on_alice = alice.json(&["history", "bob", "--json"]);
    let on_bob = bob.json(&["history", "alice", "--json"]);
    assert_eq!(texts(&on_alice), ["你好,世界 👋", "hi back 🙂", long.as_str()]);
    assert_eq!(texts(&on_alice), texts(&on_bob));
    assert_eq!(on_alice[0]["from"], "alice");
    assert_eq!(on_alice[0]["status"], "delivered");
    assert_eq!(on_bob[0]["direction"], "in");
    assert_eq!(on_alice[0]["id"], on_bob[0]["id"], "one id on both sides");

    // Paging and search.
    let last = alice.json(&["history", "bob", "--limit", "1", "--json"]);
    assert_eq!(texts(&last), [long.as_str()]);
    let before = last[0]["local_id"].as_i64().unwrap().to_string();
    assert_eq!(texts(&alice.json(&["history", "bob", "--before", &before, "--json"])).len(), 2);
    assert_eq!(texts(&bob.json(&["history", "--search", "世界", "--json"])), ["你好,世界 👋"]);
    assert!(alice.ok(&["history", "bob"]).contains("alice: 你好,世界 👋"));

    // `peer chat`: what is typed is sent; /quit leaves.
    let out = alice.run_with_stdin(&["chat", "bob"], "typed in chat\n/history\n/quit\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("chat with bob"));
    bob_watch.expect("the chat line", |v| v["type"] == "message_received" && v["text"] == "typed in chat");
    alice.ok(&["send", "bob", "after chat"]);
    bob_watch.expect("the next message", |v| v["type"] == "message_received" && v["text"] == "after chat");

    // Bad input: typed errors, nothing stored.
    assert!(alice.fails(&["send", "bob", &"x".repeat(16 * 1024 + 1)]).contains("limit"));
    assert!(alice.fails(&["send", "bob", ""]).contains("empty"));
    assert_eq!(texts(&alice.json(&["history", "bob", "--json"])).len(), 5);

    // The broker carried none of it.
    assert!(!broker.log().contains("世界"));
}

/// On a broker without a mailbox (`--no-mailbox`; with one, see `mailbox.rs`), messages to an offline friend
/// wait on the sender's device, in order, across restarts of either side.
#[test]
fn offline_messages_queue_in_order_and_survive_restarts() {
    let broker = Broker::start_with(&Backend::Sqlite, &["--no-mailbox"]);
    let (alice, bob) = alice_and_bob(&broker);
    let mut a = alice.up();
    {
        let _b = bob.up();
        alice.befriend(&bob);
    }
    // Bob's agent was killed: wait until the broker knows he is offline.
    wait_until("bob is offline", || alice.json(&["friends", "--json"])[0]["online"] == false);
    for text in ["one", "two", "three"] {
        let out = alice.ok(&["send", "bob", text]);
        assert!(out.contains("queued") && out.contains("no mailbox"), "{out}");
    }
    assert_eq!(alice.json(&["history", "bob", "--json"])[0]["status"], "queued");
    // The sender restarts too: the queue is in its database.
    assert!(a.stop());
    let _a = alice.up();
    let _b = bob.up();
    let watch = bob.watch();
    wait_until("the queued messages arrive", || texts(&bob.json(&["history", "alice", "--json"])).len() >= 3);
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["one", "two", "three"]);
    drop(watch);
    wait_until("every status is delivered", || {
        alice.json(&["history", "bob", "--json"]).as_array().unwrap().iter().all(|m| m["status"] == "delivered")
    });
    // A later message goes after them, not before.
    assert!(alice.ok(&["send", "bob", "four"]).contains("delivered"));
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["one", "two", "three", "four"]);
}

#[test]
fn every_device_of_the_friend_gets_it() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    let mut phone = Peer::new(&broker);
    phone.link_from(&bob);
    let _p = phone.up();
    let w1 = bob.watch();
    let w2 = phone.watch();
    assert!(alice.ok(&["send", "bob", "to all of you"]).contains("delivered"));
    assert_eq!(w1.expect_event("message_received", "alice")["text"], "to all of you");
    assert_eq!(w2.expect_event("message_received", "alice")["text"], "to all of you");
}

#[test]
fn non_friends_and_unknown_keys_are_refused() {
    let broker = Broker::start(&Backend::Sqlite);
    let (alice, bob) = alice_and_bob(&broker);
    let mallory = Peer::registered(&broker, "mallory");
    let _a = alice.up();
    let _b = bob.up();
    let _m = mallory.up();
    alice.befriend(&bob);

    // Not a friend: the broker will not say where alice is.
    let err = mallory.fails(&["send", "alice", "let me in"]);
    assert!(err.contains("not friends"), "{err}");
    assert!(alice.json(&["history", "--search", "let me in", "--json"]).as_array().unwrap().is_empty());

    // A device the broker never vouched for cannot even finish a handshake with alice's agent.
    let addr: std::net::SocketAddr =
        alice.json(&["status", "--json"])["observed_addr"].as_str().unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let stranger = certs::Identity::generate("stranger").unwrap();
        // Trust whatever alice presents: only alice's side of the check is under test.
        let seen = Arc::new(std::sync::Mutex::new(None));
        let tls =
            certs::config::client(&stranger, certs::verify::ServerPin::FirstUse(seen), &[shared::proto::PEER_ALPN])
                .unwrap();
        let cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let refused = match ep.connect_with(cfg, addr, "p2pim-peer").unwrap().await {
            Err(_) => true,
            Ok(conn) => match conn.open_bi().await {
                Err(_) => true,
                Ok((mut s, mut r)) => {
                    let frame = shared::peer::PeerFrame::Chat(shared::peer::Chat {
                        id: shared::id::MessageId([9; 16]),
                        sent_at: 0,
                        text: "forged".into(),
                    });
                    let _ = shared::io::write_frame(&mut s, &frame).await;
                    let _ = s.finish();
                    shared::io::read_frame::<shared::peer::PeerAck, _>(&mut r).await.is_err()
                }
            },
        };
        assert!(refused, "an unknown device must be refused");
    });
    assert!(alice.json(&["history", "--search", "forged", "--json"]).as_array().unwrap().is_empty());

    // After unfriending, nothing more goes through, in either direction.
    alice.ok(&["friends", "remove", "bob"]);
    assert!(bob.fails(&["send", "alice", "still there?"]).contains("not friends"));
    assert!(alice.fails(&["send", "bob", "bye"]).contains("not friends"));
}

#[test]
fn a_friend_that_vanishes_leaves_messages_queued_then_delivered_once() {
    let broker = Broker::start_with(&Backend::Sqlite, &["--no-mailbox"]);
    let (alice, bob) = alice_and_bob(&broker);
    let _a = alice.up();
    let mut b = bob.up();
    alice.befriend(&bob);
    // A live, cached connection first.
    assert!(alice.ok(&["send", "bob", "before"]).contains("delivered"));
    // Bob's agent dies without a word; alice's agent still holds the old connection and device list.
    b.kill9();
    let out = alice.ok(&["send", "bob", "into the void"]);
    assert!(out.contains("queued"), "{out}");
    alice.ok(&["send", "bob", "and another"]);
    let _b = bob.up();
    wait_until("both queued messages arrive", || texts(&bob.json(&["history", "alice", "--json"])).len() >= 3);
    wait_until("alice sees them delivered", || {
        alice.json(&["history", "bob", "--json"]).as_array().unwrap().iter().all(|m| m["status"] == "delivered")
    });
    assert_eq!(
        texts(&bob.json(&["history", "alice", "--json"])),
        ["before", "into the void", "and another"],
        "no loss, no duplicate"
    );
}

/// With `--relay-only` on both agents, chat and files go through the broker's relay: the same pinned,
/// end-to-end encrypted peer connection, carried by the broker; `friends --json` says so.
#[test]
fn relay_carries_chat_and_files_end_to_end() {
    let broker = Broker::start(&Backend::Sqlite);
    let RelayedPair { alice, bob, inbox, agents: _agents } = RelayedPair::start(&broker);
    let bob_watch = bob.watch();
    assert!(alice.ok(&["send", "bob", "through the relay 中继"]).contains("delivered"));
    bob_watch
        .expect("the relayed message", |v| v["type"] == "message_received" && v["text"] == "through the relay 中继");
    assert!(bob.ok(&["send", "alice", "and back"]).contains("delivered"));

    let friends = alice.json(&["friends", "--json"]);
    let conn = &friends[0]["connections"][0];
    assert_eq!(conn["path"], "relayed", "{friends:#}");
    assert_eq!(conn["remote_addr"], broker.address().as_str(), "the packets go to the broker");
    assert_eq!(bob.json(&["status", "--json"])["peers"][0]["path"], "relayed");

    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("relayed.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let out = alice.ok(&["send-file", "bob", file.to_str().unwrap()]);
    assert!(out.contains("verified"), "{out}");
    assert_eq!(std::fs::read(inbox.path().join("relayed.bin")).unwrap(), data);
    let log = broker.log();
    assert!(log.contains("relay open"), "{log}");
    // The packets took the fast path, datagrams beside the relay stream, not the stream alone.
    assert!(log.contains("relay channel in use"), "{log}\n{}\n{}", alice.agent_log(), bob.agent_log());
    // And the users can see which: `friends --json` and `status` name the channel.
    wait_until("alice's agent reports the channel", || {
        alice.json(&["friends", "--json"])[0]["connections"][0]["relay"] == "channel"
    });
    wait_until("bob's status names the channel", || bob.ok(&["status"]).contains("alice via relayed (channel) path"));
}

/// A broker that does not relay says so; the message waits in the queue instead of vanishing.
#[test]
fn relay_switched_off_is_a_clear_error() {
    let broker = Broker::start_with(&Backend::Sqlite, &["--no-relay", "--no-mailbox"]);
    let (alice, bob) = alice_and_bob(&broker);
    let _a = alice.up_with(&["--relay-only"]);
    let _b = bob.up_with(&["--relay-only"]);
    alice.befriend(&bob);
    let out = alice.ok(&["send", "bob", "no way through"]);
    assert!(out.contains("queued") && out.contains("does not relay"), "{out}");
}

/// Datagrams that are not QUIC from a friend (garbage, forged long headers, a stranger's handshake with a
/// key the broker never vouched for) change nothing: no connection, no crash, chat carries on.
#[test]
fn forged_packets_and_strangers_get_nowhere() {
    let broker = Broker::start(&Backend::Sqlite);
    let Friends { alice, bob, agents: _agents } = Friends::start(&broker, &[], &[]);
    assert!(alice.ok(&["send", "bob", "before"]).contains("delivered"));
    let status = bob.json(&["status", "--json"]);
    let bob_addr: std::net::SocketAddr = status["observed_addr"].as_str().unwrap().parse().unwrap();
    let bob_fp: certs::Fingerprint = status["device_fingerprint"].as_str().unwrap().parse().unwrap();

    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..300usize {
        let mut d: Vec<u8> = (0..(i * 7 % 1400 + 1)).map(|j| (i * 13 + j * 7) as u8).collect();
        if i % 3 == 0 {
            d[0] = 0xc3; // a long-header Initial's first byte, followed by nonsense
        }
        sock.send_to(&d, bob_addr).unwrap();
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let stranger = certs::Identity::generate("stranger").unwrap();
        let tls =
            certs::config::client(&stranger, certs::verify::ServerPin::Exact(bob_fp), &[b"p2pim-peer/1"]).unwrap();
        let cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        match endpoint.connect_with(cfg, bob_addr, "p2pim-peer").unwrap().await {
            // TLS 1.3 lets a client finish before the server has judged its certificate: the refusal is the
            // connection closing instead of carrying anything.
            Ok(conn) => match conn.open_bi().await {
                Ok((mut s, mut r)) => {
                    let _ = s.write_all(b"hello?").await;
                    let _ = s.finish();
                    r.read_to_end(1024).await.is_err()
                }
                Err(_) => true,
            },
            Err(_) => true,
        }
    });
    assert!(refused, "a stranger's connection must not be served");

    assert!(alice.ok(&["send", "bob", "after"]).contains("delivered"));
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["before", "after"]);
    let peers = bob.json(&["status", "--json"])["peers"].clone();
    assert!(peers.as_array().unwrap().iter().all(|p| p["username"] == "alice"), "{peers:#}");
}

/// Over the broker's per-user relay rate, a transfer is paced, not refused: it still completes, verified.
#[test]
fn relay_over_its_rate_slows_down_but_delivers() {
    let broker = Broker::start_with(&Backend::Sqlite, &["--relay-user-rate", "512K", "--relay-total-rate", "1M"]);
    let RelayedPair { alice, inbox, agents: _agents, .. } = RelayedPair::start(&broker);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("paced.bin");
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i * 11 % 241) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    assert!(alice.ok(&["send-file", "bob", file.to_str().unwrap()]).contains("verified"));
    assert_eq!(std::fs::read(inbox.path().join("paced.bin")).unwrap(), data);
    assert!(alice.ok(&["send", "bob", "still chatting"]).contains("delivered"));
}
