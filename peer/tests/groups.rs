//! Group chat end to end: three users, one order, catch-up after being offline.

use testkit::{Backend, Broker, Peer, texts, wait_until};

#[test]
fn three_users_share_one_order_and_the_offline_one_catches_up() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let bob = Peer::registered(&broker, "bob");
    let carol = Peer::registered(&broker, "carol");
    let mallory = Peer::registered(&broker, "mallory");
    let _a = alice.up();
    let _b = bob.up();
    let mut c = carol.up();
    let _m = mallory.up();
    alice.befriend(&bob);
    alice.befriend(&carol);

    let g = alice.ok(&["groups", "create", "家人群"]).trim().to_string();
    assert!(g.parse::<i64>().is_ok(), "prints the group's number: {g}");
    let bob_watch = bob.watch();
    alice.ok(&["groups", "invite", &g, "bob"]);
    alice.ok(&["groups", "invite", &g, "carol"]);
    assert_eq!(bob_watch.expect_event("group_invitation", "alice")["name"], "家人群");
    assert_eq!(bob.json(&["groups", "invitations", "--json"])[0]["name"], "家人群");
    assert!(alice.fails(&["groups", "invite", &g, "mallory"]).contains("not friends"));
    bob.ok(&["groups", "join", &g]);
    carol.ok(&["groups", "join", &g]);
    let members = alice.json(&["groups", "members", &g, "--json"]);
    assert_eq!(members.as_array().unwrap().len(), 3);
    assert!(mallory.fails(&["groups", "members", &g]).contains("not a member"));
    assert!(mallory.fails(&["send", "--group", &g, "let me in"]).contains("not a member"));

    alice.ok(&["send", "--group", &g, "早上好 ☀️"]);
    bob.ok(&["send", "--group", &g, "hi all"]);
    assert_eq!(
        bob_watch.expect("alice's post", |v| v["type"] == "group_message" && v["username"] == "alice")["text"],
        "早上好 ☀️"
    );

    // Carol goes offline (her fellow members are told); the others keep talking; carol comes back and gets
    // exactly what she missed.
    let members_watch = bob.watch();
    let everyone = |p: &Peer| p.json(&["history", "--group", &g, "--json"]);
    wait_until("carol has the first posts", || texts(&everyone(&carol)).contains(&"hi all".to_string()));
    assert!(c.stop());
    let off = members_watch
        .expect("carol's offline notice", |v| v["type"] == "group_member_offline" && v["username"] == "carol");
    assert_eq!(off["group_id"].to_string(), g);
    for i in 0..5 {
        alice.ok(&["send", "--group", &g, &format!("while carol is away {i}")]);
    }
    bob.ok(&["send", "--group", &g, "last one"]);
    let _c = carol.up();
    wait_until("carol caught up", || texts(&everyone(&carol)).last().is_some_and(|t| t == "last one"));
    wait_until("alice has everything", || texts(&everyone(&alice)).last().is_some_and(|t| t == "last one"));
    wait_until("bob has everything", || texts(&everyone(&bob)).last().is_some_and(|t| t == "last one"));
    let (a, b, cc) = (everyone(&alice), everyone(&bob), everyone(&carol));
    assert_eq!(texts(&a), texts(&b), "same order for everyone");
    // Carol joined after bob: her log starts at her own join notice (what was said before is not hers).
    let from_join: Vec<String> = texts(&a).into_iter().skip_while(|t| t != "carol joined").collect();
    assert_eq!(texts(&cc), from_join, "no gaps, no duplicates after catch-up, nothing from before she joined");
    let seqs: Vec<i64> = cc.as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (seqs[0]..seqs[0] + seqs.len() as i64).collect::<Vec<_>>());
    assert!(texts(&a).iter().any(|t| t == "carol joined"), "joins are shown as notices");

    // `peer chat --group`: typed lines are posted.
    let out = carol.run_with_stdin(&["chat", "--group", &g], "from the chat prompt\n/quit\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the chat line reaches alice", || {
        texts(&everyone(&alice)).last().is_some_and(|t| t == "from the chat prompt")
    });

    // Leaving stops delivery.
    bob.ok(&["groups", "leave", &g]);
    assert!(bob.fails(&["send", "--group", &g, "still here?"]).contains("not a member"));
    assert_eq!(alice.json(&["groups", "--json"])[0]["members"], 2);
}

#[test]
fn the_owner_manages_the_group() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Peer::registered(&broker, "alice");
    let bob = Peer::registered(&broker, "bob");
    let carol = Peer::registered(&broker, "carol");
    let _a = alice.up();
    let _b = bob.up();
    let _c = carol.up();
    alice.befriend(&bob);
    alice.befriend(&carol);
    let g = alice.ok(&["groups", "create", "team"]).trim().to_string();
    for (p, name) in [(&bob, "bob"), (&carol, "carol")] {
        alice.ok(&["groups", "invite", &g, name]);
        p.ok(&["groups", "join", &g]);
    }
    let log = |p: &Peer| texts(&p.json(&["history", "--group", &g, "--json"]));

    // Only the owner.
    assert!(bob.fails(&["groups", "rename", &g, "mine now"]).contains("owner"));
    assert!(bob.fails(&["groups", "remove", &g, "carol"]).contains("owner"));
    assert!(bob.fails(&["groups", "disband", &g]).contains("owner"));

    alice.ok(&["groups", "rename", &g, "家人群"]);
    assert_eq!(bob.json(&["groups", "--json"])[0]["name"], "家人群");
    alice.ok(&["groups", "remove", &g, "carol"]);
    wait_until("carol is told she was removed", || log(&carol).last().is_some_and(|t| t.contains("carol was removed")));
    assert!(carol.fails(&["send", "--group", &g, "hello?"]).contains("not a member"));
    alice.ok(&["send", "--group", &g, "just us"]);
    wait_until("bob gets the next post", || log(&bob).last().is_some_and(|t| t == "just us"));
    assert!(!log(&carol).contains(&"just us".to_string()), "a removed member gets nothing more");

    alice.ok(&["groups", "transfer", &g, "bob"]);
    let members = bob.json(&["groups", "members", &g, "--json"]);
    assert!(members.as_array().unwrap().iter().any(|m| m["username"] == "bob" && m["owner"] == true));
    assert!(alice.fails(&["groups", "rename", &g, "back"]).contains("owner"));
    bob.ok(&["groups", "disband", &g]);
    wait_until("alice sees the group disbanded", || log(&alice).last().is_some_and(|t| t.contains("disbanded")));
    assert!(alice.json(&["groups", "--json"]).as_array().unwrap().is_empty());
}
