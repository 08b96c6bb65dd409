//! Schema migrations: brokers starting together on one database migrate once between them, and a MySQL
//! migration cut short half-way (its DDL commits statement by statement) is resumed at the next start.

use testkit::{Backend, Broker, Client, backends};

#[tokio::test(flavor = "multi_thread")]
async fn brokers_starting_together_migrate_once() {
    for backend in backends() {
        eprintln!("backend: {}", backend.name());
        let (a, b) = Broker::start_pair(&backend);
        let applied = a.log().matches("applied database migration").count()
            + b.log().matches("applied database migration").count();
        assert_eq!(applied, versions(), "each version applied by exactly one broker:\n{}\n{}", a.log(), b.log());
        // Both serve, over the same data.
        let c = Client::connect(&a).await;
        c.register("alice").await;
        let d = Client::connect(&b).await;
        assert!(matches!(d.login("alice", testkit::PASSWORD).await, shared::proto::Response::Token { .. }));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_applied_mysql_migration_is_resumed() {
    let Some(backend) = backends().into_iter().find(|b| matches!(b, Backend::MySql(_))) else {
        panic!("MariaDB is needed for this test (TEST_MYSQL_URL; scripts/test starts it)")
    };
    let mut broker = Broker::start(&backend);
    broker.kill();
    // Roll the schema back to version 1 with version 2's first table already created, as a crash between
    // that DDL (committed on its own) and its record would leave it.
    broker.db.execute(
        "DROP TABLE blocks; DROP TABLE group_messages; DROP TABLE group_invites; DROP TABLE group_members; \
         DELETE FROM schema_version WHERE version >= 2",
    );
    broker.restart();
    assert!(broker.log().contains("had run before its record was written"), "{}", broker.log());
    let c = Client::connect(&broker).await;
    let token = c.register("alice").await;
    assert!(matches!(c.hello(&token).await, shared::proto::Response::Welcome { .. }));
    assert!(matches!(
        c.call(&shared::proto::Request::GroupCreate { name: "g".into() }).await,
        shared::proto::Response::GroupCreated { .. }
    ));
}

/// A database from the release before checksums were kept, with data in it: the new broker serves the
/// same data, records each applied script's checksum, and refuses to start on a database whose applied
/// script was changed since (naming the version), instead of running against a schema it does not know.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_database_is_upgraded_with_its_data_and_an_edited_migration_is_refused() {
    use shared::proto::{Request, Response};
    for backend in backends() {
        eprintln!("backend: {}", backend.name());
        let mut broker = Broker::start(&backend);
        let (alice, bob) = (Client::connect(&broker).await, Client::connect(&broker).await);
        let token = alice.register("alice").await;
        bob.register("bob").await;
        alice.hello(&token).await;
        alice.call(&Request::FriendAdd { username: "bob".into(), message: "hi".into() }).await;
        let Response::GroupCreated { group_id } = alice.call(&Request::GroupCreate { name: "g".into() }).await else {
            panic!("no group")
        };
        alice.call(&Request::GroupPost { group_id, text: "kept across the upgrade".into() }).await;
        let device = alice.identity.clone();
        drop((alice, bob));
        broker.kill();
        // What the previous release leaves: the same schema, no checksums.
        broker.db.execute("DROP TABLE schema_checksums");
        broker.restart();
        let alice = Client::connect_as(&broker, device).await;
        assert!(matches!(alice.hello(&token).await, Response::Welcome { .. }), "the token survived");
        let Response::GroupMessages(log) = alice.call(&Request::GroupSync { group_id, after_seq: 0, limit: 10 }).await
        else {
            panic!("no log")
        };
        assert!(log.iter().any(|m| m.text == "kept across the upgrade"), "{log:?}");
        let Response::FriendRequests { outgoing, .. } = alice.call(&Request::FriendRequests).await else {
            panic!("no requests")
        };
        assert_eq!(outgoing.len(), 1);
        drop(alice);
        broker.kill();

        // An applied script that changed since (here: its recorded checksum no longer matches).
        broker.db.execute("UPDATE schema_checksums SET sha256 = 'edited' WHERE version = 2");
        let out = std::process::Command::new(testkit::bin("broker"))
            .args(["--listen", "127.0.0.1:0", "--database", &broker.db.url, "--data"])
            .arg(broker.data.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started on an edited schema: {stderr}");
        assert!(stderr.contains("migration 2 was changed"), "{stderr}");
    }
}

/// How many schema versions there are (one file per version and backend).
fn versions() -> usize {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql")))
        .count()
}
