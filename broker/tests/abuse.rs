//! What strangers can do to the broker before authenticating: guess passwords (lockout that does not lock the
//! real user out, and that concurrency cannot bypass), and make it hold memory (oversized usernames, floods
//! of handshakes that never finish). Memory is read from /proc: these run on Linux.

use certs::Identity;
use certs::verify::ServerPin;
use shared::proto::{BROKER_ALPN, ErrorCode, Response};
use std::sync::Arc;
use testkit::{Backend, Broker, Client, PASSWORD};

fn code(r: &Response) -> Option<&ErrorCode> {
    match r {
        Response::Error(e) => Some(&e.code),
        _ => None,
    }
}

/// A stranger's flood of wrong passwords locks the stranger out, not bob's own device; and 30 guesses fired
/// at once are no more than the few the limit allows one at a time.
#[tokio::test(flavor = "multi_thread")]
async fn lockout_spares_known_devices_and_counts_attempts_in_flight() {
    let broker = Broker::start(&Backend::Sqlite);
    let bob_device = Client::connect(&broker).await;
    bob_device.register("bob").await;
    // Bob logs in from this device once: it is known from now on.
    assert!(matches!(bob_device.login("bob", PASSWORD).await, Response::Token { .. }));

    let stranger = Arc::new(Client::connect(&broker).await);
    let guesses: Vec<_> = (0..30)
        .map(|i| {
            let s = stranger.clone();
            tokio::spawn(async move { s.login("bob", &format!("wrong password {i}")).await })
        })
        .collect();
    let mut checked = 0;
    for g in guesses {
        match code(&g.await.unwrap()) {
            Some(ErrorCode::BadCredentials) => checked += 1,
            Some(ErrorCode::RateLimited { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(checked <= 6, "{checked} of 30 concurrent guesses were checked");
    assert!(matches!(code(&stranger.login("bob", PASSWORD).await), Some(ErrorCode::RateLimited { .. })));

    // Bob's known device still gets in with the right password, while the stranger stays locked out.
    assert!(matches!(bob_device.login("bob", PASSWORD).await, Response::Token { .. }));
    let newcomer = Client::connect(&broker).await;
    assert!(
        matches!(newcomer.login("bob", PASSWORD).await, Response::Token { .. }),
        "a new device at a known address is not locked out either"
    );
}

/// Oversized usernames are refused before anything is keyed on them, and a flood of handshakes that never
/// finish costs no lasting memory: past a few in progress, clients must answer a stateless Retry first.
#[tokio::test(flavor = "multi_thread")]
async fn strangers_cannot_make_the_broker_hold_memory() {
    let broker = Broker::start(&Backend::Sqlite);
    let c = Arc::new(Client::connect(&broker).await);
    c.register("alice").await;
    let base = broker.rss_kib();

    let mut tasks = Vec::new();
    for worker in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..250 {
                let name = format!("{worker}-{i}-{}", "x".repeat(60 * 1000));
                let r = c.login(&name, "wrong password").await;
                assert!(matches!(code(&r), Some(ErrorCode::BadCredentials)), "{r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let after_logins = broker.rss_kib();

    flood_handshakes(&broker, 15_000);
    let after_flood = broker.rss_kib();
    // The endpoint still serves real clients (who answer the Retry without noticing).
    let fresh = Client::connect(&broker).await;
    assert!(matches!(fresh.login("alice", PASSWORD).await, Response::Token { .. }));
    eprintln!(
        "broker RSS: {base} KiB at start, {after_logins} after 2,000 60 KB logins, {after_flood} after the flood"
    );
    assert!(after_logins < base + 20 * 1024, "{base} -> {after_logins} KiB after the oversized logins");
    assert!(after_flood < base + 60 * 1024, "{base} -> {after_flood} KiB after 15,000 unfinished handshakes");
}

/// Sends the first flight (a QUIC Initial with a TLS ClientHello) of `n` connections from one socket and
/// never answers: each would be a half-open handshake on a broker that keeps state for all of them.
fn flood_handshakes(broker: &Broker, n: usize) {
    let identity = Identity::generate("flood").unwrap();
    let pin = ServerPin::Exact(broker.fingerprint.parse().unwrap());
    let tls = certs::config::client(&identity, pin, &[BROKER_ALPN]).unwrap();
    let cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    let mut ep = quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let now = std::time::Instant::now();
    let mut buf = Vec::with_capacity(1500);
    for _ in 0..n {
        let (_, mut conn) = ep.connect(now, cfg.clone(), broker.addr, "broker").unwrap();
        buf.clear();
        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            let _ = sock.send_to(&buf[..t.size], broker.addr);
        }
    }
}
