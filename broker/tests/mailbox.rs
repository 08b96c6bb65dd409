//! The mailbox's rules at the broker, driven by raw protocol clients: who may read whose mailbox keys, who
//! may leave letters for whom, oversized and misaddressed letters, pickup of one's own letters only,
//! acknowledgement, the push that tells a device, and a broker that keeps no mailbox.

use certs::account::AccountKeyPair;
use shared::mailbox::MailboxKeys;
use shared::proto::{ErrorCode, Event, Request, Response};
use shared::trust::DeviceRecord;
use testkit::{Backend, Broker, Client};

fn error_code(r: &Response) -> ErrorCode {
    match r {
        Response::Error(e) => e.code.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Certifies the client's device under a fresh account key and publishes its mailbox keys.
async fn certify(c: &Client, user: &str) -> AccountKeyPair {
    let key = AccountKeyPair::generate().unwrap();
    let fp = c.identity.fingerprint().0;
    let record = key.sign(DeviceRecord { username: user.into(), fingerprint: fp, name: "d".into(), created_at: 1 });
    c.ok(Request::Certify { account_key: key.public(), record }).await;
    let keys = key.sign(MailboxKeys {
        username: user.into(),
        fingerprint: fp,
        seal_key: [3; 32],
        verify_key: [4; 32],
        created_at: 1,
    });
    c.ok(Request::PublishMailbox { keys }).await;
    key
}

async fn befriend(a: &Client, b: &Client, b_name: &str, a_name: &str) {
    a.call(&Request::FriendAdd { username: b_name.into(), message: String::new() }).await;
    b.ok(Request::FriendAccept { username: a_name.into() }).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn letters_go_only_between_friends_and_to_their_own_device() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Client::session(&broker, "alice", true).await;
    let mut bob = Client::session(&broker, "bob", true).await;
    let mallory = Client::session(&broker, "mallory", true).await;
    alice.drain_events();
    mallory.drain_events();
    befriend(&alice, &bob, "bob", "alice").await;
    let bob_key = certify(&bob, "bob").await;
    let bob_fp = bob.identity.fingerprint().0;

    // Keys signed by another key, or naming another device, are refused.
    let other = AccountKeyPair::generate().unwrap();
    let forged = other.sign(MailboxKeys {
        username: "bob".into(),
        fingerprint: bob_fp,
        seal_key: [5; 32],
        verify_key: [6; 32],
        created_at: 2,
    });
    let r = bob.call(&Request::PublishMailbox { keys: forged }).await;
    assert!(matches!(error_code(&r), ErrorCode::BadSignature(_)), "{r:?}");
    let elsewhere = bob_key.sign(MailboxKeys {
        username: "bob".into(),
        fingerprint: [7; 32],
        seal_key: [5; 32],
        verify_key: [6; 32],
        created_at: 2,
    });
    assert!(matches!(
        error_code(&bob.call(&Request::PublishMailbox { keys: elsewhere }).await),
        ErrorCode::BadSignature(_)
    ));

    // Friends (and bob himself) see bob's mailbox keys; strangers do not.
    match alice.call(&Request::Mailboxes { username: "bob".into() }).await {
        Response::Mailboxes { account_key, devices } => {
            assert_eq!(account_key, Some(bob_key.public()));
            assert_eq!(devices.len(), 1);
            assert_eq!(devices[0].body.seal_key, [3; 32], "the first keys, not the refused ones");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error_code(&mallory.call(&Request::Mailboxes { username: "bob".into() }).await), ErrorCode::NotFriends);

    // Letters: not from strangers, not too big, not to a device bob does not have.
    let deposit = |device, blob| Request::Deposit { username: "bob".into(), device, blob };
    assert_eq!(error_code(&mallory.call(&deposit(bob_fp, vec![1])).await), ErrorCode::NotFriends);
    let big = vec![0; shared::mailbox::MAX_LETTER + 1];
    assert!(matches!(error_code(&alice.call(&deposit(bob_fp, big)).await), ErrorCode::Malformed(_)));
    assert_eq!(error_code(&alice.call(&deposit([9; 32], vec![1])).await), ErrorCode::UnknownDevice);
    alice.ok(deposit(bob_fp, vec![1, 2, 3])).await;
    loop {
        if bob.next_event().await == Event::MailWaiting {
            break;
        }
    }

    // Only the device it is for picks it up; acknowledged, it is gone.
    assert_eq!(mallory.call(&Request::Pickup { after: 0, limit: 10 }).await, Response::Deposits(vec![]));
    let letters = match bob.call(&Request::Pickup { after: 0, limit: 10 }).await {
        Response::Deposits(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].from.as_str(), letters[0].blob.as_slice()), ("alice", &[1u8, 2, 3][..]));
    mallory.ok(Request::MailboxAck { ids: vec![letters[0].id] }).await;
    assert_eq!(
        bob.call(&Request::Pickup { after: 0, limit: 10 }).await,
        Response::Deposits(letters.clone()),
        "another device's acknowledgement deletes nothing"
    );
    bob.ok(Request::MailboxAck { ids: vec![letters[0].id] }).await;
    assert_eq!(bob.call(&Request::Pickup { after: 0, limit: 10 }).await, Response::Deposits(vec![]));

    // After the friendship ends, no more letters.
    alice.ok(Request::FriendRemove { username: "bob".into() }).await;
    assert_eq!(error_code(&alice.call(&deposit(bob_fp, vec![1])).await), ErrorCode::NotFriends);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_without_a_mailbox_says_so() {
    let broker = Broker::start_with(&Backend::Sqlite, &["--no-mailbox", "--mailbox-deposits-per-minute", "1"]);
    let alice = Client::session(&broker, "alice", true).await;
    let r = alice.call(&Request::Deposit { username: "alice".into(), device: [1; 32], blob: vec![1] }).await;
    assert_eq!(error_code(&r), ErrorCode::MailboxOff);
    assert_eq!(error_code(&alice.call(&Request::Mailboxes { username: "alice".into() }).await), ErrorCode::MailboxOff);
}

#[tokio::test(flavor = "multi_thread")]
async fn deposits_are_rate_limited_per_sender() {
    let broker = Broker::start_with(&Backend::Sqlite, &["--mailbox-deposits-per-minute", "2"]);
    let alice = Client::session(&broker, "alice", true).await;
    alice.drain_events();
    certify(&alice, "alice").await;
    let me = alice.identity.fingerprint().0;
    let deposit = Request::Deposit { username: "alice".into(), device: me, blob: vec![1] };
    alice.ok(deposit.clone()).await;
    alice.ok(deposit.clone()).await;
    assert!(matches!(error_code(&alice.call(&deposit).await), ErrorCode::RateLimited { .. }));
}
