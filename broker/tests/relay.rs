//! The broker's relay, driven by raw protocol clients: who may relay to whom, and that bytes pass through
//! unchanged in both directions.

use shared::io::{read_frame, write_frame};
use shared::proto::{ErrorCode, Request, Response};
use shared::relay::RelayHello;
use std::time::Duration;
use testkit::{Backend, Broker, Client};

/// Asks for a relay on a stream of its own; the answer and the stream.
async fn relay(c: &Client, to: &str, fingerprint: [u8; 32]) -> (Response, quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = c.conn.open_bi().await.unwrap();
    write_frame(&mut send, &Request::Relay { username: to.into(), fingerprint }).await.unwrap();
    let resp = read_frame::<Response, _>(&mut recv).await.unwrap().expect("an answer");
    (resp, send, recv)
}

fn code(r: &Response) -> ErrorCode {
    match r {
        Response::Error(e) => e.code.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_is_for_friends_online_devices_and_passes_bytes_unchanged() {
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Client::session(&broker, "alice", true).await;
    let bob = Client::session(&broker, "bob", true).await;
    let anonymous = Client::connect(&broker).await;

    assert_eq!(code(&relay(&anonymous, "bob", [0; 32]).await.0), ErrorCode::NotLoggedIn);
    assert_eq!(code(&relay(&alice, "bob", [0; 32]).await.0), ErrorCode::NotFriends, "strangers get no relay");

    alice.call(&Request::FriendAdd { username: "bob".into(), message: String::new() }).await;
    bob.ok(Request::FriendAccept { username: "alice".into() }).await;
    let Response::Endpoints(devices) = alice.call(&Request::Lookup { username: "bob".into() }).await else {
        panic!("lookup")
    };
    let bob_device = devices[0].fingerprint;
    let err = relay(&alice, "bob", [7; 32]).await.0;
    assert!(matches!(code(&err), ErrorCode::RelayUnavailable(m) if m.contains("not online")), "{err:?}");

    let (resp, mut a_send, mut a_recv) = relay(&alice, "bob", bob_device).await;
    assert_eq!(resp, Response::Ok);
    let (mut b_send, mut b_recv) = bob.conn.accept_bi().await.unwrap();
    let hello = read_frame::<RelayHello, _>(&mut b_recv).await.unwrap().unwrap();
    assert_eq!(hello.username, "alice");
    let Response::Endpoints(mine) = bob.call(&Request::Lookup { username: "alice".into() }).await else {
        panic!("lookup")
    };
    assert_eq!(hello.fingerprint, mine[0].fingerprint, "the broker vouches for alice's device key");

    // Opaque bytes, both ways, unchanged (the broker neither parses nor alters them).
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 256) as u8).collect();
    a_send.write_all(&blob).await.unwrap();
    let mut got = vec![0u8; blob.len()];
    b_recv.read_exact(&mut got).await.unwrap();
    assert_eq!(got, blob);
    b_send.write_all(b"and back").await.unwrap();
    b_send.finish().unwrap();
    assert_eq!(a_recv.read_to_end(1024).await.unwrap(), b"and back");
    // One side ending ends the other.
    a_send.finish().unwrap();
    assert!(b_recv.read_to_end(1024).await.unwrap().is_empty());
    assert!(broker.log().contains("relay closed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_does_not_relay_says_so() {
    let broker = Broker::start_with(&Backend::Sqlite, &["--no-relay"]);
    let alice = Client::session(&broker, "alice", true).await;
    let bob = Client::session(&broker, "bob", true).await;
    alice.call(&Request::FriendAdd { username: "bob".into(), message: String::new() }).await;
    bob.ok(Request::FriendAccept { username: "alice".into() }).await;
    let err = relay(&alice, "bob", [0; 32]).await.0;
    assert!(matches!(code(&err), ErrorCode::RelayUnavailable(m) if m.contains("does not relay")), "{err:?}");
}

/// Nodes of a cluster relay for each other over connections authenticated by the identity they share: a
/// device that asks to be a node (the node ALPN) without that identity is turned away before it can open
/// a relay to anyone.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_clusters_own_identity_may_connect_as_a_node() {
    use std::sync::Arc;
    let backend = testkit::backends().into_iter().find(|b| b.name() != "sqlite").expect("needs PostgreSQL or MariaDB");
    let nodes = Broker::start_cluster(&backend, 1);
    let stranger = certs::Identity::generate("not-a-node").unwrap();
    let pin = certs::verify::ServerPin::Exact(nodes[0].fingerprint.parse().unwrap());
    let tls = certs::config::client(&stranger, pin, &[b"p2pim-node/1"]).unwrap();
    let cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint.connect_with(cfg, nodes[0].addr, "broker").unwrap().await.unwrap();
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(&c.reason[..], b"not a node of this cluster"),
        other => panic!("expected the node to close the connection, got {other:?}"),
    }
    assert!(nodes[0].log().contains("without the cluster's identity"), "{}", nodes[0].log());
}

/// A relay between two agents that speak channels gets one: each side's first record is its channel id,
/// datagrams with it go to the friend (their id rewritten to the friend's), probes come back to their
/// sender. An id is good only from its owner's address: a stranger who learns one can neither inject
/// through it nor get a probe answered. The channel ends with the relay's streams.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_channel_carries_datagrams_between_its_two_owners_only() {
    use shared::relay::{HEADER, PROBE, channel_of, decode_channel, set_channel};
    let broker = Broker::start(&Backend::Sqlite);
    let (alice, mut alice_tap) = Client::session_with_channels(&broker, "alice").await;
    let (bob, mut bob_tap) = Client::session_with_channels(&broker, "bob").await;
    alice.call(&Request::FriendAdd { username: "bob".into(), message: String::new() }).await;
    bob.ok(Request::FriendAccept { username: "alice".into() }).await;
    let Response::Endpoints(devices) = alice.call(&Request::Lookup { username: "bob".into() }).await else {
        panic!("lookup")
    };

    let (resp, mut a_send, mut a_recv) = relay(&alice, "bob", devices[0].fingerprint).await;
    assert_eq!(resp, Response::Ok);
    let mut record = [0u8; 10];
    a_recv.read_exact(&mut record).await.unwrap();
    let a_id = decode_channel(&record).expect("alice's channel");
    let (mut b_send, mut b_recv) = bob.conn.accept_bi().await.unwrap();
    read_frame::<RelayHello, _>(&mut b_recv).await.unwrap().unwrap();
    b_recv.read_exact(&mut record).await.unwrap();
    let b_id = decode_channel(&record).expect("bob's channel");
    assert_ne!(a_id, b_id);

    let datagram = |id: u64, payload: &[u8]| {
        let mut d = PROBE.to_vec();
        set_channel(&mut d, id);
        d.extend_from_slice(payload);
        d
    };
    // A stranger with alice's id, from another address: nothing comes of it (sent first, so that anything
    // it caused would arrive before what follows).
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(&datagram(a_id, b""), broker.addr).await.unwrap();
    stranger.send_to(&datagram(a_id, b"injected"), broker.addr).await.unwrap();
    // Bob's own id used by alice: not hers.
    alice_tap.send(&datagram(b_id, b"not mine")).await;

    alice_tap.send(&datagram(a_id, b"")).await;
    assert_eq!(alice_tap.next().await, datagram(a_id, b""), "a probe comes back to its sender");
    alice_tap.send(&datagram(a_id, b"hello bob")).await;
    let got = bob_tap.next().await;
    assert_eq!((channel_of(&got), &got[HEADER..]), (Some(b_id), &b"hello bob"[..]), "with bob's id");
    bob_tap.send(&datagram(b_id, b"hello alice")).await;
    assert_eq!(alice_tap.next().await, datagram(a_id, b"hello alice"));
    assert_eq!(bob_tap.try_next(), None, "nothing else reached bob: not the stranger's, not the wrong id's");
    let mut buf = [0u8; 64];
    assert!(stranger.try_recv_from(&mut buf).is_err(), "the stranger's probe was not answered");

    // The streams end: so does the channel, with what went through it counted.
    a_send.finish().unwrap();
    b_send.finish().unwrap();
    assert!(b_recv.read_to_end(1024).await.unwrap().is_empty());
    assert!(a_recv.read_to_end(1024).await.unwrap().is_empty());
    tokio::task::block_in_place(|| {
        testkit::wait_until("the channel's end is logged", || broker.log().contains("relay channel closed"))
    });
    let log = broker.log();
    assert!(log.contains("sent=9 received=11"), "{log}");
    alice_tap.send(&datagram(a_id, b"after the end")).await;
    bob_tap.send(&datagram(b_id, b"")).await;
    alice.call(&Request::Ping).await;
    bob.call(&Request::Ping).await;
    assert_eq!((alice_tap.try_next(), bob_tap.try_next()), (None, None), "an ended channel carries nothing");
}

/// A relay holds its stream for as long as it stands, and the broker gives the agent one more stream for
/// each: a device with many relays open still gets its requests answered (they no longer wait for a stream
/// that never ends). Past the per-device limit a relay is refused with the reason, and one ending frees
/// its place.
#[tokio::test(flavor = "multi_thread")]
async fn relays_do_not_use_up_a_devices_request_streams_and_their_limit_is_said() {
    const LIMIT: usize = 64;
    let broker = Broker::start(&Backend::Sqlite);
    let alice = Client::session(&broker, "alice", true).await;
    let bob = Client::session(&broker, "bob", true).await;
    alice.call(&Request::FriendAdd { username: "bob".into(), message: String::new() }).await;
    bob.ok(Request::FriendAccept { username: "alice".into() }).await;
    let Response::Endpoints(devices) = alice.call(&Request::Lookup { username: "bob".into() }).await else {
        panic!("lookup")
    };
    let bob_device = devices[0].fingerprint;

    let mut held = Vec::new();
    for i in 0..LIMIT {
        let (resp, send, recv) = tokio::time::timeout(Duration::from_secs(10), relay(&alice, "bob", bob_device))
            .await
            .unwrap_or_else(|_| panic!("a stream for relay {i}"));
        assert_eq!(resp, Response::Ok, "relay {i}");
        held.push((send, recv));
    }
    // Every relay's stream is still open, and requests are answered beside them.
    for _ in 0..20 {
        let answer = tokio::time::timeout(Duration::from_secs(10), alice.call(&Request::Friends))
            .await
            .expect("an answer beside the relays");
        assert!(matches!(answer, Response::Friends(_)), "{answer:?}");
    }
    let refused = relay(&alice, "bob", bob_device).await.0;
    assert!(matches!(code(&refused), ErrorCode::RelayUnavailable(m) if m.contains("64 relays")), "{refused:?}");

    // One relay ends: alice lets go of both halves while bob stays quiet on his. The broker ends the
    // splice (her side stopped reading), and a new relay fits again.
    drop(held.pop());
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (resp, send, recv) = relay(&alice, "bob", bob_device).await;
            if resp == Response::Ok {
                break (send, recv);
            }
            // The broker lets the relay go just after its streams end.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a relay once one ended");
    held.push(again);
    assert!(matches!(alice.call(&Request::Friends).await, Response::Friends(_)));
}
