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

/// How many schema versions there are (one file per version and backend).
fn versions() -> usize {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql")))
        .count()
}
