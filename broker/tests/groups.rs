//! Group chat at the protocol level, on every database backend: membership rules, one order for everyone
//! under concurrent posters, catch-up from a sequence number, persistence across a restart.

use shared::io::{read_frame, write_frame};
use shared::proto::{ErrorCode, Request, Response};
use testkit::{Broker, Client, backends};

fn code(r: &Response) -> ErrorCode {
    match r {
        Response::Error(e) => e.code.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn befriend(a: &Client, a_name: &str, b: &Client, b_name: &str) {
    a.call(&Request::FriendAdd { username: b_name.into(), message: String::new() }).await;
    b.ok(Request::FriendAccept { username: a_name.into() }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_on_every_backend() {
    for backend in backends() {
        eprintln!("backend: {}", backend.name());
        let mut broker = Broker::start(&backend);
        let mut alice = Client::session(&broker, "alice", true).await;
        let mut bob = Client::session(&broker, "bob", true).await;
        let carol = Client::session(&broker, "carol", true).await;
        let mallory = Client::session(&broker, "mallory", true).await;
        befriend(&alice, "alice", &bob, "bob").await;
        befriend(&alice, "alice", &carol, "carol").await;

        let Response::GroupCreated { group_id: g } = alice.call(&Request::GroupCreate { name: "家人群".into() }).await
        else {
            panic!()
        };
        // Invitations: friends only, by members only.
        assert_eq!(
            code(&alice.call(&Request::GroupInvite { group_id: g, username: "mallory".into() }).await),
            ErrorCode::NotFriends
        );
        assert_eq!(
            code(&mallory.call(&Request::GroupInvite { group_id: g, username: "alice".into() }).await),
            ErrorCode::NotMember
        );
        alice.ok(Request::GroupInvite { group_id: g, username: "bob".into() }).await;
        alice.ok(Request::GroupInvite { group_id: g, username: "carol".into() }).await;
        let Response::GroupInvitations(inv) = bob.call(&Request::GroupInvitations).await else { panic!() };
        assert_eq!(inv[0].name, "家人群");
        assert_eq!(code(&mallory.call(&Request::GroupJoin { group_id: g }).await), ErrorCode::NotInvited);
        bob.ok(Request::GroupJoin { group_id: g }).await;
        carol.ok(Request::GroupJoin { group_id: g }).await;

        // Non-members see nothing.
        assert_eq!(code(&mallory.call(&Request::GroupMembers { group_id: g }).await), ErrorCode::NotMember);
        assert_eq!(
            code(&mallory.call(&Request::GroupPost { group_id: g, text: "hi".into() }).await),
            ErrorCode::NotMember
        );
        assert_eq!(
            code(&mallory.call(&Request::GroupSync { group_id: g, after_seq: 0, limit: 10 }).await),
            ErrorCode::NotMember
        );
        let Response::GroupMembers(members) = bob.call(&Request::GroupMembers { group_id: g }).await else { panic!() };
        let names: Vec<_> = members.iter().map(|m| m.user.username.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert!(members[0].owner && members.iter().all(|m| m.online));

        // Concurrent posters: every member sees one order, with no gaps.
        let posts = 10;
        let (a, b) = (&alice, &bob);
        let post = |s: &Client, who: &'static str, i: usize| {
            let req = Request::GroupPost { group_id: g, text: format!("{who} {i}") };
            let conn = s.conn.clone();
            async move {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                write_frame(&mut send, &req).await.unwrap();
                send.finish().unwrap();
                let r: Response = read_frame(&mut recv).await.unwrap().unwrap();
                assert!(matches!(r, Response::GroupPosted { .. }), "{r:?}");
            }
        };
        let mut tasks = Vec::new();
        for i in 0..posts {
            tasks.push(tokio::spawn(post(a, "alice", i)));
            tasks.push(tokio::spawn(post(b, "bob", i)));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut seen_a = Vec::new();
        let mut seen_b = Vec::new();
        while seen_a.len() < 2 * posts + 2 {
            seen_a.push(alice.next_group_message().await);
        }
        while seen_b.len() < 2 * posts + 2 {
            seen_b.push(bob.next_group_message().await);
        }
        assert_eq!(seen_a, seen_b, "everyone sees the same order");
        let seqs: Vec<i64> = seen_a.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=(2 * posts as i64 + 2)).collect::<Vec<_>>(), "no gaps, no duplicates");
        assert!(seen_a[0].system && seen_a[0].text.contains("bob joined"));

        // Catch-up from a sequence number: exactly what came after it.
        let Response::GroupMessages(after) =
            carol.call(&Request::GroupSync { group_id: g, after_seq: 5, limit: 100 }).await
        else {
            panic!()
        };
        assert_eq!(after.first().map(|m| m.seq), Some(6));
        assert_eq!(after, seen_a[5..].to_vec());

        // Leaving: notice to the rest, and nothing more for the one who left.
        carol.ok(Request::GroupLeave { group_id: g }).await;
        assert!(alice.next_group_message().await.text.contains("carol left"));
        assert_eq!(
            code(&carol.call(&Request::GroupSync { group_id: g, after_seq: 0, limit: 10 }).await),
            ErrorCode::NotMember
        );
        assert_eq!(
            code(&carol.call(&Request::GroupPost { group_id: g, text: "x".into() }).await),
            ErrorCode::NotMember
        );
        let too_long = "x".repeat(16 * 1024 + 1);
        assert!(matches!(
            code(&bob.call(&Request::GroupPost { group_id: g, text: too_long }).await),
            ErrorCode::InvalidText(_)
        ));

        // Stored messages survive a restart.
        drop((alice, bob, carol, mallory));
        broker.restart();
        let bob = Client::session(&broker, "bob", false).await;
        let Response::GroupMessages(all) =
            bob.call(&Request::GroupSync { group_id: g, after_seq: 0, limit: 500 }).await
        else {
            panic!()
        };
        assert_eq!(all.len(), 2 * posts + 3);
        let Response::Groups(list) = bob.call(&Request::Groups).await else { panic!() };
        assert_eq!(
            (list[0].group_id, list[0].name.as_str(), list[0].members, list[0].last_seq),
            (g, "家人群", 2, all.len() as i64)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn posting_faster_than_the_limit_is_refused() {
    let broker = Broker::start_with(&testkit::Backend::Sqlite, &["--group-posts-per-second", "3"]);
    let alice = Client::session(&broker, "alice", true).await;
    let created = alice.call(&Request::GroupCreate { name: "fast".into() }).await;
    let Response::GroupCreated { group_id } = created else { panic!("{created:?}") };
    let mut limited = false;
    for i in 0..20 {
        if let Response::Error(e) = alice.call(&Request::GroupPost { group_id, text: format!("{i}") }).await {
            assert!(matches!(e.code, ErrorCode::RateLimited { .. }));
            limited = true;
            break;
        }
    }
    assert!(limited, "20 posts in a row must hit a limit of 3 per second");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_member_is_cut_off_and_nobody_waits_for_it() {
    let broker = Broker::start_with(&testkit::Backend::Sqlite, &["--group-posts-per-second", "100000"]);
    let alice = Client::session(&broker, "alice", true).await;
    let mut bob = Client::session(&broker, "bob", true).await;
    let stalled = Client::session(&broker, "stalled", true).await;
    befriend(&alice, "alice", &bob, "bob").await;
    befriend(&alice, "alice", &stalled, "stalled").await;
    let Response::GroupCreated { group_id: g } = alice.call(&Request::GroupCreate { name: "big".into() }).await else {
        panic!()
    };
    for (s, name) in [(&bob, "bob"), (&stalled, "stalled")] {
        alice.ok(Request::GroupInvite { group_id: g, username: name.into() }).await;
        s.ok(Request::GroupJoin { group_id: g }).await;
    }
    // Alice and bob read everything as it comes; the stalled member never reads its event stream.
    alice.drain_events();
    let posts = 500;
    let reader = tokio::spawn(async move {
        let mut last = 0;
        while last < posts as i64 + 2 {
            last = bob.next_group_message().await.seq;
        }
        last
    });
    let big = "大".repeat(5000);
    for _ in 0..posts {
        assert!(matches!(
            alice.call(&Request::GroupPost { group_id: g, text: big.clone() }).await,
            Response::GroupPosted { .. }
        ));
    }
    assert_eq!(reader.await.unwrap(), posts as i64 + 2, "bob got every message");
    // The broker disconnected the stalled session instead of buffering without bound.
    let closed = tokio::time::timeout(testkit::WAIT, stalled.conn.closed()).await.expect("stalled member disconnected");
    assert!(closed.to_string().contains("event queue overflow"), "{closed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_messages() {
    let broker = Broker::start_with(&testkit::Backend::Sqlite, &["--group-retention-messages", "3"]);
    let alice = Client::session(&broker, "alice", true).await;
    let Response::GroupCreated { group_id } = alice.call(&Request::GroupCreate { name: "short".into() }).await else {
        panic!()
    };
    for i in 1..=5 {
        alice.call(&Request::GroupPost { group_id, text: format!("m{i}") }).await;
    }
    let Response::GroupMessages(kept) = alice.call(&Request::GroupSync { group_id, after_seq: 0, limit: 100 }).await
    else {
        panic!()
    };
    let seqs: Vec<i64> = kept.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
}

/// A post sent again with its id (its answer was lost: the broker busy past its deadline, the connection
/// cut) is answered with the number it already has and stored once, even when the copies race each other
/// on two nodes of a cluster; the same id from another member, or another id, is a post of its own. No
/// number is skipped by a repeat.
#[tokio::test(flavor = "multi_thread")]
async fn a_post_sent_again_with_its_id_is_stored_once() {
    for backend in backends() {
        eprintln!("backend: {}", backend.name());
        // Two nodes where the backend can be shared (the copies race across them), else one broker.
        let nodes =
            if backend.name() == "sqlite" { vec![Broker::start(&backend)] } else { Broker::start_cluster(&backend, 2) };
        let alice = Client::session(&nodes[0], "alice", true).await;
        let bob = Client::session(&nodes[0], "bob", true).await;
        befriend(&alice, "alice", &bob, "bob").await;
        let Response::GroupCreated { group_id: g } = alice.call(&Request::GroupCreate { name: "once".into() }).await
        else {
            panic!()
        };
        alice.ok(Request::GroupInvite { group_id: g, username: "bob".into() }).await;
        bob.ok(Request::GroupJoin { group_id: g }).await;
        let alice_elsewhere = Client::session(nodes.last().unwrap(), "alice", false).await;

        let post = |c: &Client, text: &str, id: u8| {
            let req = Request::GroupPostOnce { group_id: g, text: text.into(), post_id: [id; 16] };
            let conn = c.conn.clone();
            async move {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                write_frame(&mut send, &req).await.unwrap();
                send.finish().unwrap();
                match read_frame::<Response, _>(&mut recv).await.unwrap().unwrap() {
                    Response::GroupPosted { seq } => seq,
                    other => panic!("{other:?}"),
                }
            }
        };
        // The copies race each other (spawned at once, half of them through the other node).
        let tasks: Vec<_> = [&alice, &alice_elsewhere, &alice, &alice_elsewhere]
            .into_iter()
            .map(|c| tokio::spawn(post(c, "hello", 1)))
            .collect();
        let mut copies = Vec::new();
        for t in tasks {
            copies.push(t.await.unwrap());
        }
        assert!(copies.iter().all(|&s| s == copies[0]), "one number for every copy: {copies:?}");
        let bobs = post(&bob, "hello", 1).await;
        let other = post(&alice, "hello", 2).await;
        assert_eq!(
            (bobs, other),
            (copies[0] + 1, copies[0] + 2),
            "the same id from bob, another id: posts of their own"
        );
        assert_eq!(post(&alice_elsewhere, "hello", 1).await, copies[0], "still the same, later");

        let Response::GroupMessages(all) =
            bob.call(&Request::GroupSync { group_id: g, after_seq: 0, limit: 100 }).await
        else {
            panic!()
        };
        let texts: Vec<(i64, &str)> = all.iter().map(|m| (m.seq, m.text.as_str())).collect();
        assert_eq!(texts, [(1, "bob joined"), (2, "hello"), (3, "hello"), (4, "hello")], "stored once each");
        let Response::Groups(list) = bob.call(&Request::Groups).await else { panic!() };
        assert_eq!(list[0].last_seq, 4, "no number skipped by a repeat");
    }
}
