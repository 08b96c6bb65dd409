//! Authorisation decisions stay atomic with the changes they depend on, under concurrency: each race is run
//! many times over so that its window is hit, and the invariant is checked on every run.

use shared::proto::{ErrorCode, Event, Request, Response};
use testkit::{Backend, Broker, Client};

const ROUNDS: usize = 30;

/// A removal racing a lookup: once bob's session has been told `FriendRemoved{alice}`, it must never be
/// told to expect alice's key again (`PeerIncoming`), or his agent would accept her once more.
#[tokio::test(flavor = "multi_thread")]
async fn no_peer_incoming_after_the_removal_it_raced() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = std::sync::Arc::new(Client::session(&broker, "alice", true).await);
    let mut bob = Client::session(&broker, "bob", true).await;
    alice.drain_events();
    let add = Request::FriendAdd { username: "bob".into(), message: String::new() };
    let mut late = 0;
    // Whether bob's session was told of the last removal; each round's request marks the end of what the
    // previous round's race could push to him.
    let mut removed = false;
    for round in 0..=ROUNDS {
        assert_eq!(alice.call(&add).await, Response::FriendAdded { now_friends: false });
        loop {
            match bob.next_event().await {
                Event::FriendRemoved { username } if username == "alice" => removed = true,
                Event::PeerIncoming { username, .. } if username == "alice" && removed => late += 1,
                Event::FriendRequest { from, .. } if from.username == "alice" => break,
                _ => {}
            }
        }
        assert!(round == 0 || removed, "round {round}: bob was told of the removal");
        if round == ROUNDS {
            break;
        }
        bob.ok(Request::FriendAccept { username: "alice".into() }).await;
        removed = false;
        let lookups = {
            let alice = alice.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    alice.call(&Request::Lookup { username: "bob".into() }).await;
                }
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(round as u64 % 5)).await;
        bob.ok(Request::FriendRemove { username: "alice".into() }).await;
        lookups.await.unwrap();
    }
    assert_eq!(late, 0, "PeerIncoming pushed after FriendRemoved in {late} of {ROUNDS} rounds");
}

/// Two users asking each other at the same moment become friends (neither request stays pending), and two
/// devices of one user accepting at once get one success and one clear answer, never an internal error.
#[tokio::test(flavor = "multi_thread")]
async fn crossing_requests_and_double_accepts_settle_cleanly() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = std::sync::Arc::new(Client::session(&broker, "alice", true).await);
    let carol = std::sync::Arc::new(Client::session(&broker, "carol", true).await);
    let carol2 = std::sync::Arc::new(Client::session(&broker, "carol", false).await);
    for c in [&alice, &carol, &carol2] {
        c.drain_events();
    }
    let asks = |who: &str| Request::FriendAdd { username: who.into(), message: String::new() };
    let friends_of = |c: std::sync::Arc<Client>| async move {
        match c.call(&Request::Friends).await {
            Response::Friends(list) => list.into_iter().map(|f| f.user.username).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    for round in 0..ROUNDS {
        let (a, c) = (alice.clone(), carol.clone());
        let (to_carol, to_alice) = (asks("carol"), asks("alice"));
        let (ra, rc) = tokio::join!(a.call(&to_carol), c.call(&to_alice));
        let answers = [ra, rc];
        assert!(
            answers.contains(&Response::FriendAdded { now_friends: true }),
            "round {round}: one of two crossing requests makes them friends: {answers:?}"
        );
        assert_eq!(friends_of(alice.clone()).await, ["carol"], "round {round}");
        assert_eq!(friends_of(carol.clone()).await, ["alice"], "round {round}");
        match alice.call(&Request::FriendRequests).await {
            Response::FriendRequests { incoming, outgoing } => {
                assert!(incoming.is_empty() && outgoing.is_empty(), "round {round}: nothing left pending")
            }
            other => panic!("{other:?}"),
        }
        alice.ok(Request::FriendRemove { username: "carol".into() }).await;

        // Two of carol's devices accept alice's request at once.
        assert_eq!(alice.call(&asks("carol")).await, Response::FriendAdded { now_friends: false });
        let accept = Request::FriendAccept { username: "alice".into() };
        let (c1, c2) = (carol.clone(), carol2.clone());
        let (r1, r2) = tokio::join!(c1.call(&accept), c2.call(&accept));
        let mut rs = [r1, r2];
        rs.sort_by_key(|r| *r != Response::Ok);
        assert_eq!(rs[0], Response::Ok, "round {round}: {rs:?}");
        match &rs[1] {
            Response::Ok => {}
            Response::Error(e) => assert_eq!(e.code, ErrorCode::NoSuchRequest, "round {round}: {rs:?}"),
            other => panic!("round {round}: {other:?}"),
        }
        assert_eq!(friends_of(carol.clone()).await, ["alice"], "round {round}");
        alice.ok(Request::FriendRemove { username: "carol".into() }).await;
    }
}

/// A removal racing a member's posts: once the removal is done, the removed member can neither post nor
/// receive the group's messages (the member list cache is never refilled with the old list), and a member
/// who joins later reads the group from their join on, not what was said before.
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_member_gets_nothing_more_and_a_new_one_nothing_older() {
    let broker = Broker::start_with(&Backend::Sqlite, &["--group-posts-per-second", "10000"]);
    let alice = std::sync::Arc::new(Client::session(&broker, "alice", true).await);
    let bob = std::sync::Arc::new(Client::session(&broker, "bob", true).await);
    let mut bob_events = Client::session(&broker, "bob", false).await;
    alice.drain_events();
    bob.drain_events();
    let add = |who: &str| Request::FriendAdd { username: who.into(), message: String::new() };
    assert_eq!(alice.call(&add("bob")).await, Response::FriendAdded { now_friends: false });
    bob.ok(Request::FriendAccept { username: "alice".into() }).await;
    let Response::GroupCreated { group_id } = alice.call(&Request::GroupCreate { name: "g".into() }).await else {
        panic!("create")
    };
    let (mut late_posts, mut late_pushes) = (0, 0);
    for round in 0..ROUNDS {
        alice.ok(Request::GroupInvite { group_id, username: "bob".into() }).await;
        bob.ok(Request::GroupJoin { group_id }).await;
        let posts = {
            let bob = bob.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..20 {
                    let post = Request::GroupPost { group_id, text: format!("{round}.{i}") };
                    if let Response::GroupPosted { seq } = bob.call(&post).await {
                        seqs.push(seq);
                    }
                }
                seqs
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(round as u64 % 4)).await;
        alice.ok(Request::GroupRemove { group_id, username: "bob".into() }).await;
        let after = match alice.call(&Request::GroupPost { group_id, text: format!("after {round}") }).await {
            Response::GroupPosted { seq } => seq,
            other => panic!("{other:?}"),
        };
        let Response::GroupMessages(log) =
            alice.call(&Request::GroupSync { group_id, after_seq: after - 60, limit: 500 }).await
        else {
            panic!("sync")
        };
        let removed = log.iter().rev().find(|m| m.text == "bob was removed by alice").expect("notice").seq;
        // Bob's posts that were accepted must have been numbered before his removal.
        late_posts += posts.await.unwrap().iter().filter(|&&s| s > removed).count();
        let late = Request::GroupPost { group_id, text: "too late".into() };
        let answer = bob.call(&late).await;
        assert!(matches!(&answer, Response::Error(e) if e.code == ErrorCode::NotMember), "{answer:?}");
        // Everything the group pushed to bob's other device before the friend request that follows.
        alice.ok(Request::FriendRemove { username: "bob".into() }).await;
        assert_eq!(alice.call(&add("bob")).await, Response::FriendAdded { now_friends: false });
        loop {
            match bob_events.next_event().await {
                Event::GroupMessage(m) if m.seq > removed => late_pushes += 1,
                Event::FriendRequest { .. } => break,
                _ => {}
            }
        }
        bob.ok(Request::FriendAccept { username: "alice".into() }).await;
    }
    assert_eq!((late_posts, late_pushes), (0, 0), "(posts accepted, messages pushed) after the removal");

    // Carol joins now: her catch-up starts at her own join notice.
    let carol = Client::session(&broker, "carol", true).await;
    carol.drain_events();
    assert_eq!(alice.call(&add("carol")).await, Response::FriendAdded { now_friends: false });
    carol.ok(Request::FriendAccept { username: "alice".into() }).await;
    alice.ok(Request::GroupInvite { group_id, username: "carol".into() }).await;
    carol.ok(Request::GroupJoin { group_id }).await;
    let Response::GroupMessages(seen) = carol.call(&Request::GroupSync { group_id, after_seq: 0, limit: 500 }).await
    else {
        panic!("sync")
    };
    assert_eq!(seen.first().map(|m| m.text.as_str()), Some("carol joined"), "{seen:?}");
}
