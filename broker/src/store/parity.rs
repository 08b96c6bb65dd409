//! Every store function, run on every backend with the same expectations: SQLite, PostgreSQL and MariaDB
//! must agree on what is stored, found, ordered and refused (`TEST_REQUIRE_ALL_DBS=1`, as CI sets it, makes
//! a missing database a failure rather than a skip).

use super::Db;
use super::accounts::NewUser;
use super::friends::Direction;
use super::groups::NewMessage;
use shared::proto::UserInfo;
use testkit::{TestDb, backends};

fn user(name: &str, display: &str) -> UserInfo {
    UserInfo { username: name.into(), display_name: display.into() }
}

async fn add_user(db: &Db, name: &str, display: &str) -> bool {
    let key = crate::accounts::search_key(name, display);
    let new = NewUser { username: name, display_name: display, search_key: &key, password_hash: "h", created_at: 1 };
    db.insert_user(&new).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_store_function_agrees_on_every_backend() {
    for backend in backends() {
        eprintln!("backend: {}", backend.name());
        let dir = tempfile::tempdir().unwrap();
        let test_db = TestDb::create(&backend, dir.path());
        let db = Db::open(&test_db.url).await.unwrap();
        accounts(&db).await;
        friends(&db).await;
        groups(&db).await;
        devices(&db).await;
        mailbox(&db).await;
        db.pool.close().await;
    }
}

async fn accounts(db: &Db) {
    assert!(add_user(db, "alice", "Alice").await);
    assert!(!add_user(db, "alice", "Other").await, "a taken username is reported, not an error");
    assert!(add_user(db, "bob", "Bob 张三").await);
    assert!(add_user(db, "carol", "Carol").await);
    assert!(add_user(db, "a_b", "Under Score").await);
    assert_eq!(db.user("alice").await.unwrap(), Some(user("alice", "Alice")));
    assert_eq!(db.user("nobody").await.unwrap(), None);
    assert_eq!(db.password_hash("alice").await.unwrap().as_deref(), Some("h"));

    db.insert_token("t1", "alice", "d1", 1, 100).await.unwrap();
    db.insert_token("t2", "alice", "d2", 1, 200).await.unwrap();
    let t = db.token("t2").await.unwrap().unwrap();
    assert_eq!(t.expires_at, 200);
    assert_eq!(t.device.as_deref(), Some("d2"));
    assert_eq!(t.user(), user("alice", "Alice"));
    db.set_password("alice", "h2", "t2").await.unwrap();
    assert_eq!(db.password_hash("alice").await.unwrap().as_deref(), Some("h2"));
    assert!(db.token("t1").await.unwrap().is_none(), "other tokens go with a password change");
    assert!(db.token("t2").await.unwrap().is_some(), "the kept one stays");
    db.delete_token("t2").await.unwrap();
    assert!(db.token("t2").await.unwrap().is_none());

    db.set_display_name("carol", "Caroline", &crate::accounts::search_key("carol", "Caroline")).await.unwrap();
    assert_eq!(db.user("carol").await.unwrap(), Some(user("carol", "Caroline")));
    // Case-insensitive on the display name, never the searcher, `_` matched literally (escaped).
    let found = db.search_users(&shared::validate::like_contains("caro"), "alice", 50, 0).await.unwrap();
    assert_eq!(found, vec![user("carol", "Caroline")]);
    let found = db.search_users(&shared::validate::like_contains("张三"), "alice", 50, 0).await.unwrap();
    assert_eq!(found, vec![user("bob", "Bob 张三")]);
    let found = db.search_users(&shared::validate::like_contains("_"), "alice", 50, 0).await.unwrap();
    assert_eq!(found, vec![user("a_b", "Under Score")]);
    let page: Vec<String> = db
        .search_users(&shared::validate::like_contains(""), "alice", 2, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(page, ["bob", "carol"], "ordered by username, paged");
}

async fn friends(db: &Db) {
    assert!(db.insert_request("alice", "bob", "hi", 5).await.unwrap());
    assert!(!db.insert_request("alice", "bob", "again", 6).await.unwrap(), "one pending request per pair");
    assert!(db.request_pending("alice", "bob").await.unwrap());
    assert!(!db.request_pending("bob", "alice").await.unwrap());
    let incoming = db.requests("bob", Direction::Incoming).await.unwrap();
    assert_eq!(incoming.len(), 1);
    assert_eq!((incoming[0].user.username.as_str(), incoming[0].message.as_str()), ("alice", "hi"));
    assert_eq!(incoming[0].created_at, 5);
    let outgoing = db.requests("alice", Direction::Outgoing).await.unwrap();
    assert_eq!(outgoing[0].user, user("bob", "Bob 张三"));

    db.befriend("alice", "bob", 7).await.unwrap();
    assert!(!db.request_pending("alice", "bob").await.unwrap(), "befriending drops the requests");
    assert!(db.are_friends("alice", "bob").await.unwrap() && db.are_friends("bob", "alice").await.unwrap());
    db.set_remark("alice", "bob", Some("Bobby")).await.unwrap();
    let list = db.friends("alice").await.unwrap();
    assert_eq!((list[0].user(), list[0].remark.as_deref()), (user("bob", "Bob 张三"), Some("Bobby")));
    db.set_remark("alice", "bob", None).await.unwrap();
    assert_eq!(db.friends("alice").await.unwrap()[0].remark, None);
    assert_eq!(db.friend_names("bob").await.unwrap(), ["alice"]);

    assert!(db.unfriend("bob", "alice").await.unwrap());
    assert!(!db.unfriend("bob", "alice").await.unwrap());
    assert!(!db.are_friends("alice", "bob").await.unwrap());

    db.befriend("alice", "carol", 8).await.unwrap();
    db.insert_request("carol", "alice", "still here", 9).await.unwrap();
    assert!(db.block("alice", "carol", 10).await.unwrap(), "a block ends a friendship");
    assert!(!db.are_friends("carol", "alice").await.unwrap());
    assert!(!db.request_pending("carol", "alice").await.unwrap());
    assert!(db.blocks("alice", "carol").await.unwrap() && !db.blocks("carol", "alice").await.unwrap());
    assert!(!db.block("alice", "carol", 11).await.unwrap(), "blocking twice is one block");
    assert_eq!(db.blocked("alice").await.unwrap(), vec![user("carol", "Caroline")]);
    assert!(db.unblock("alice", "carol").await.unwrap());
    assert!(!db.unblock("alice", "carol").await.unwrap());
    assert!(db.delete_request("alice", "bob").await.is_ok_and(|gone| !gone));
}

async fn groups(db: &Db) {
    let g = db.create_group("team", "alice", 100).await.unwrap().unwrap();
    let h = db.create_group("other", "bob", 100).await.unwrap().unwrap();
    assert_ne!(g, h);
    assert_eq!(db.group_owner(g).await.unwrap().as_deref(), Some("alice"));
    assert_eq!(db.group_name_for(g, "alice").await.unwrap().as_deref(), Some("team"));
    assert_eq!(db.group_name_for(g, "bob").await.unwrap(), None, "not a member");

    assert!(db.insert_invite(g, "bob", "alice", 101).await.unwrap());
    assert!(!db.insert_invite(g, "bob", "alice", 102).await.unwrap(), "one pending invitation");
    let inv = db.invitations("bob").await.unwrap();
    assert_eq!((inv[0].group_id, inv[0].name.as_str(), &inv[0].inviter), (g, "team", &user("alice", "Alice")));
    assert!(db.accept_invite(g, "bob", 103).await.unwrap());
    assert!(!db.accept_invite(g, "bob", 104).await.unwrap(), "the invitation is used up");
    assert!(db.insert_invite(g, "carol", "alice", 105).await.unwrap());
    assert!(db.delete_invite(g, "carol").await.unwrap());
    assert!(!db.delete_invite(g, "carol").await.unwrap());

    let members = db.members(g).await.unwrap();
    let names: Vec<(String, bool)> = members
        .into_iter()
        .map(|m| {
            let owner = m.is_owner();
            (m.user().username, owner)
        })
        .collect();
    assert_eq!(names, [("alice".to_string(), true), ("bob".to_string(), false)], "joining order");
    let mut member_names = db.member_names(g).await.unwrap();
    member_names.sort();
    assert_eq!(member_names, ["alice", "bob"]);
    let mine = db.groups_of("bob").await.unwrap();
    assert_eq!(mine.iter().map(|i| (i.group_id, i.members)).collect::<Vec<_>>(), [(g, 2), (h, 1)]);
    let mut fellows = db.fellow_members("bob").await.unwrap();
    fellows.sort();
    assert_eq!(fellows, [(g, "alice".to_string())]);

    // Numbering, the joined-at horizon, trimming to `keep`, and pruning by age.
    let post = |at: i64, text: &'static str, keep: i64| NewMessage {
        group_id: g,
        sender: "alice",
        system: false,
        text,
        at,
        keep,
        post_id: None,
    };
    for (at, text) in [(102, "before bob"), (110, "one"), (111, "two"), (112, "three")] {
        db.append_message(&post(at, text, 10)).await.unwrap();
    }
    let texts = |v: Vec<shared::proto::GroupMessage>| v.into_iter().map(|m| (m.seq, m.text)).collect::<Vec<_>>();
    assert_eq!(
        texts(db.messages_since(g, "bob", 0, 10).await.unwrap()),
        [(2, "one".into()), (3, "two".into()), (4, "three".into())],
        "nothing from before bob joined"
    );
    assert_eq!(db.messages_since(g, "alice", 0, 10).await.unwrap().len(), 4);
    assert_eq!(db.messages_since(g, "bob", 3, 10).await.unwrap().len(), 1);
    assert_eq!(db.messages_since(g, "alice", 0, 1).await.unwrap()[0].seq, 1, "limited, oldest first");
    let four = db.append_message(&NewMessage { post_id: Some("00ff"), ..post(113, "four", 3) }).await.unwrap();
    assert_eq!(four, Some(super::groups::Appended { seq: 5, at: 113, new: true }));
    let again = db.append_message(&NewMessage { post_id: Some("00ff"), ..post(120, "four", 3) }).await.unwrap();
    assert_eq!(again, Some(super::groups::Appended { seq: 5, at: 113, new: false }), "the same post id: stored once");
    assert_eq!(
        texts(db.messages_since(g, "alice", 0, 10).await.unwrap()),
        [(3, "two".into()), (4, "three".into()), (5, "four".into())],
        "the log is trimmed to the newest `keep`"
    );
    assert_eq!(db.append_message(&NewMessage { group_id: 999_999, ..post(114, "x", 3) }).await.unwrap(), None);
    assert_eq!(db.groups_of("alice").await.unwrap()[0].last_seq, 5);
    assert_eq!(db.prune_messages(112).await.unwrap(), 1);

    db.rename_group(g, "crew").await.unwrap();
    db.set_group_owner(g, "bob").await.unwrap();
    assert_eq!(db.group_owner(g).await.unwrap().as_deref(), Some("bob"));
    assert_eq!(db.leave_group(g, "bob").await.unwrap().as_deref(), Some("alice"), "the role passes on");
    assert_eq!(db.group_owner(g).await.unwrap().as_deref(), Some("alice"));
    assert_eq!(db.leave_group(g, "alice").await.unwrap(), None, "the last one out");
    assert_eq!(db.group_owner(g).await.unwrap(), None, "deletes the group");
    db.delete_member(h, "bob").await.unwrap();
    db.delete_group(h).await.unwrap();
    assert!(db.groups_of("bob").await.unwrap().is_empty());
}

async fn devices(db: &Db) {
    use super::devices::Certified;
    assert!(add_user(db, "dave", "Dave").await);
    assert_eq!(db.account_key("dave").await.unwrap(), None);
    assert_eq!(
        db.certify("dave", "k1", "f1", "r1", 5).await.unwrap(),
        Certified::Stored { first_key: true, changed: true }
    );
    assert_eq!(db.account_key("dave").await.unwrap().as_deref(), Some("k1"));
    assert_eq!(db.certify("dave", "k2", "f2", "r2", 6).await.unwrap(), Certified::OtherKey, "first key wins");
    assert_eq!(
        db.certify("dave", "k1", "f2", "r2", 6).await.unwrap(),
        Certified::Stored { first_key: false, changed: true }
    );
    // The same record again (every session start): stored, unchanged.
    assert_eq!(
        db.certify("dave", "k1", "f2", "r2", 7).await.unwrap(),
        Certified::Stored { first_key: false, changed: false }
    );
    assert_eq!(db.key_and_record("dave", "f2").await.unwrap(), (Some("k1".into()), Some("r2".into())));
    assert_eq!(db.key_and_record("dave", "f9").await.unwrap(), (Some("k1".into()), None));
    assert_eq!(db.key_and_record("nobody", "f2").await.unwrap(), (None, None));
    assert_eq!(db.certify("dave", "k2", "f2", "r2", 7).await.unwrap(), Certified::OtherKey, "not with another key");
    // A rename replaces the record and keeps when it was made.
    assert_eq!(
        db.certify("dave", "k1", "f1", "r1b", 9).await.unwrap(),
        Certified::Stored { first_key: false, changed: true }
    );
    let (key, rows) = db.devices("dave").await.unwrap();
    assert_eq!(key.as_deref(), Some("k1"));
    let listed: Vec<_> = rows.iter().map(|r| (r.fingerprint.as_str(), r.record.as_str(), r.last_seen)).collect();
    assert_eq!(listed, vec![("f1", "r1b", None), ("f2", "r2", None)]);
    db.device_seen("dave", "f2", 42).await.unwrap();
    assert_eq!(db.devices("dave").await.unwrap().1[1].last_seen, Some(42));

    db.insert_token("dt1", "dave", "f1", 1, i64::MAX).await.unwrap();
    db.insert_token("dt2", "dave", "f2", 1, i64::MAX).await.unwrap();
    assert!(db.revoke_device("dave", "f2", "rev", 10).await.unwrap());
    assert!(!db.revoke_device("dave", "f2", "rev", 11).await.unwrap(), "nothing left to revoke");
    assert!(db.token("dt2").await.unwrap().is_none(), "the revoked device's token goes with it");
    assert!(db.token("dt1").await.unwrap().is_some());
    assert_eq!(db.devices("dave").await.unwrap().1.len(), 1);
    assert_eq!(db.certify("dave", "k1", "f2", "r2", 12).await.unwrap(), Certified::Revoked);

    db.insert_token("dt3", "dave", "f3", 1, i64::MAX).await.unwrap();
    db.reset_account_key("dave", "k9", "f3", "r3", 13).await.unwrap();
    assert_eq!(db.account_key("dave").await.unwrap().as_deref(), Some("k9"));
    let (_, rows) = db.devices("dave").await.unwrap();
    assert_eq!(rows.iter().map(|r| r.fingerprint.as_str()).collect::<Vec<_>>(), vec!["f3"]);
    assert!(db.token("dt1").await.unwrap().is_none(), "other devices' tokens go with a key reset");
    assert!(db.token("dt3").await.unwrap().is_some());
    assert_eq!(db.certify("dave", "k1", "f1", "r1", 14).await.unwrap(), Certified::OtherKey);
    assert_eq!(db.certify("dave", "k9", "f2", "r2", 14).await.unwrap(), Certified::Revoked, "still revoked");
}

async fn mailbox(db: &Db) {
    use super::mailbox::{Deposited, Room};
    assert!(add_user(db, "erin", "Erin").await);
    db.certify("erin", "ek", "e1", "r1", 1).await.unwrap();
    db.certify("erin", "ek", "e2", "r2", 2).await.unwrap();
    assert!(db.publish_mailbox("erin", "e1", "m1").await.unwrap());
    assert!(!db.publish_mailbox("erin", "e1", "m1").await.unwrap(), "the same keys again: no write");
    assert!(db.publish_mailbox("erin", "e1", "m1b").await.unwrap());
    assert!(db.publish_mailbox("erin", "e2", "m2").await.unwrap());
    assert!(db.publish_mailbox("erin", "e9", "m9").await.unwrap(), "stored, but served only with a record");
    assert_eq!(db.mailboxes("erin").await.unwrap(), (Some("ek".into()), vec!["m1b".into(), "m2".into()]));

    let room = Room { count: 3, bytes: 10 };
    // Every byte value survives the round trip (a sealed letter is random bytes).
    let letter: Vec<u8> = (0..=255).collect();
    let big = Room { count: 3, bytes: 1 << 20 };
    assert_eq!(db.deposit("erin", "e1", "alice", &letter, big, 5).await.unwrap(), Deposited::Stored);
    assert_eq!(db.deposit("erin", "e1", "bob", b"abcd", big, 6).await.unwrap(), Deposited::Stored);
    assert_eq!(db.deposit("erin", "e2", "bob", b"xyz", room, 6).await.unwrap(), Deposited::Stored);
    assert_eq!(db.deposit("erin", "e9", "bob", b"x", room, 6).await.unwrap(), Deposited::NoDevice);
    assert_eq!(
        db.deposit("erin", "e2", "bob", b"12345678", room, 7).await.unwrap(),
        Deposited::Full { count: 1, bytes: 3 },
        "over the bytes"
    );
    assert_eq!(
        db.deposit("erin", "e1", "bob", b"z", Room { count: 2, bytes: 1 << 20 }, 7).await.unwrap(),
        Deposited::Full { count: 2, bytes: 260 }
    );
    let got = db.pickup("e1", 0, 10).await.unwrap();
    assert_eq!(got.iter().map(|r| (r.sender.as_str(), r.at)).collect::<Vec<_>>(), vec![("alice", 5), ("bob", 6)]);
    assert_eq!(got[0].letter, letter);
    assert_eq!(db.pickup("e1", got[0].id, 10).await.unwrap().len(), 1, "after an id");
    assert_eq!(db.pickup("e1", 0, 1).await.unwrap().len(), 1, "limited");
    assert_eq!(db.ack("e2", &[got[0].id]).await.unwrap(), 0, "another device's letter is not acknowledged");
    assert_eq!(db.ack("e1", &[got[0].id]).await.unwrap(), 1);
    assert_eq!(db.pickup("e1", 0, 10).await.unwrap().len(), 1);
    assert_eq!(db.mailbox_usage().await.unwrap(), (2, 7));
    assert_eq!(db.prune_deposits(6).await.unwrap(), 0);
    assert_eq!(db.prune_deposits(7).await.unwrap(), 2);

    // A revoked device's letters go with it; a key reset takes every other device's.
    db.deposit("erin", "e2", "bob", b"1", big, 8).await.unwrap();
    db.deposit("erin", "e1", "bob", b"2", big, 8).await.unwrap();
    assert!(db.revoke_device("erin", "e2", "rev", 9).await.unwrap());
    assert!(db.pickup("e2", 0, 10).await.unwrap().is_empty());
    assert_eq!(db.mailboxes("erin").await.unwrap().1, vec!["m1b".to_string()]);
    db.certify("erin", "ek", "e3", "r3", 10).await.unwrap();
    db.deposit("erin", "e3", "bob", b"3", big, 10).await.unwrap();
    db.reset_account_key("erin", "ek2", "e1", "r1c", 11).await.unwrap();
    assert!(db.pickup("e3", 0, 10).await.unwrap().is_empty());
    assert_eq!(db.pickup("e1", 0, 10).await.unwrap().len(), 1, "the resetting device keeps its letters");
}
