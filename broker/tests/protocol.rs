//! The broker's wire behaviour, driven by a raw QUIC client: accounts and tokens on every database backend,
//! and hostile input (garbage, oversized, truncated, unknown frames) that must never hurt anyone else.

use certs::Identity;
use certs::verify::ServerPin;
use shared::frame;
use shared::io::{read_frame, write_frame};
use shared::proto::{BROKER_ALPN, ErrorCode, Request, Response};
use std::sync::Arc;
use testkit::{Broker, Client, PASSWORD, backends};

fn error_code(r: &Response) -> &ErrorCode {
    match r {
        Response::Error(e) => &e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_and_tokens_on_every_backend() {
    for backend in backends() {
        eprintln!("backend: {}", backend.name());
        let mut broker = Broker::start(&backend);
        let c = Client::connect(&broker).await;

        // Register: token issued; duplicate refused; bad names and passwords typed.
        let token = c.register("zhang_san").await;
        let dup = c
            .call(&Request::Register {
                username: "zhang_san".into(),
                display_name: "张三".into(),
                password: PASSWORD.into(),
            })
            .await;
        assert_eq!(error_code(&dup), &ErrorCode::UsernameTaken);
        let bad = c
            .call(&Request::Register {
                username: "Bad Name".into(),
                display_name: "x".into(),
                password: PASSWORD.into(),
            })
            .await;
        assert_eq!(error_code(&bad), &ErrorCode::InvalidUsername);
        let short = c
            .call(&Request::Register {
                username: "shorty".into(),
                display_name: "x".into(),
                password: "1234567".into(),
            })
            .await;
        assert_eq!(error_code(&short), &ErrorCode::InvalidPassword);
        let dn = c
            .call(&Request::Register {
                username: "li_si".into(),
                display_name: "李".repeat(65),
                password: PASSWORD.into(),
            })
            .await;
        assert_eq!(error_code(&dn), &ErrorCode::InvalidDisplayName);

        // Login: wrong password and unknown user are the same error.
        assert!(matches!(c.login("zhang_san", PASSWORD).await, Response::Token { .. }));
        let wrong = c.login("zhang_san", "not the password").await;
        let unknown = c.login("nobody_here", "not the password").await;
        assert_eq!(wrong, unknown, "unknown user and wrong password must be indistinguishable");
        assert_eq!(error_code(&wrong), &ErrorCode::BadCredentials);

        // Friend requests before a session: refused.
        assert_eq!(error_code(&c.call(&Request::Friends).await), &ErrorCode::NotLoggedIn);

        // Session: hello works once per connection; logout revokes the token for good.
        let welcome = c.hello(&token).await;
        let Response::Welcome { user, .. } = &welcome else { panic!("{welcome:?}") };
        assert_eq!(user.username, "zhang_san");
        assert_eq!(error_code(&c.hello(&token).await), &ErrorCode::AlreadyInSession);
        assert_eq!(c.call(&Request::Logout).await, Response::Ok);
        c.close().await;
        let c2 = Client::connect(&broker).await;
        assert_eq!(error_code(&c2.hello(&token).await), &ErrorCode::InvalidToken, "token reused after logout");
        assert_eq!(error_code(&c2.hello("not-a-token").await), &ErrorCode::InvalidToken);

        // Accounts and tokens survive a restart; sessions do not.
        let Response::Token { token: t2, .. } = c2.login("zhang_san", PASSWORD).await else { panic!() };
        let device = c2.identity.clone();
        c2.close().await;
        broker.restart();
        // A token is worth nothing on another device than the one it was issued to.
        let stranger = Client::connect(&broker).await;
        assert_eq!(error_code(&stranger.hello(&t2).await), &ErrorCode::InvalidToken, "token on another device");
        stranger.close().await;
        let c3 = Client::connect_as(&broker, device).await;
        assert!(matches!(c3.hello(&t2).await, Response::Welcome { .. }), "token must survive a broker restart");
        assert!(matches!(c3.login("zhang_san", PASSWORD).await, Response::Error(_)), "already in a session");
        c3.close().await;
        assert!(broker.terminate(), "clean exit on SIGTERM");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_are_slowed_down() {
    let broker = Broker::start(&testkit::Backend::Sqlite);
    let c = Client::connect(&broker).await;
    c.register("victim").await;
    let mut limited = None;
    for _ in 0..10 {
        if let Response::Error(e) = c.login("victim", "wrong password").await
            && let ErrorCode::RateLimited { retry_after_secs } = e.code
        {
            assert!(e.message.contains("try again in"), "{}", e.message);
            limited = Some(retry_after_secs);
            break;
        }
    }
    let secs = limited.expect("repeated failures must be rate limited");
    assert!(secs >= 1);
    // While limited, even the right password is refused: guessing gains nothing.
    assert!(matches!(error_code(&c.login("victim", PASSWORD).await), ErrorCode::RateLimited { .. }));
    // Another account from another client address is not affected by the account limit... but this
    // client's address is limited too: a fresh client on the same address is refused for any account.
    let other = Client::connect(&broker).await;
    other.register("bystander").await;
    assert!(matches!(error_code(&other.login("bystander", PASSWORD).await), ErrorCode::RateLimited { .. }));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_frames_get_errors_and_hurt_nobody() {
    let broker = Broker::start(&testkit::Backend::Sqlite);
    let bystander = Client::connect(&broker).await;
    let token = bystander.register("bystander").await;
    assert!(matches!(bystander.hello(&token).await, Response::Welcome { .. }));

    let attacker = Client::connect(&broker).await;
    // Garbage body.
    let mut garbage = 6u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff]);
    let r = attacker.raw(&garbage).await.expect("garbage gets an answer");
    assert!(matches!(error_code(&r), ErrorCode::Malformed(_)));
    // Oversized length prefix: refused before any body is read.
    let r = attacker.raw(&u32::MAX.to_be_bytes()).await.expect("oversized gets an answer");
    assert!(matches!(error_code(&r), ErrorCode::Malformed(m) if m.contains("exceeds")));
    // Truncated: the header promises more than comes.
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[1, 2, 3]);
    let r = attacker.raw(&truncated).await.expect("truncated gets an answer");
    assert!(matches!(error_code(&r), ErrorCode::Malformed(m) if m.contains("ended")));
    // Unknown variant (a future protocol's request).
    let mut unknown = 1u32.to_be_bytes().to_vec();
    unknown.push(250);
    let r = attacker.raw(&unknown).await.expect("unknown gets an answer");
    assert!(matches!(error_code(&r), ErrorCode::Malformed(_)));
    // A valid frame with trailing junk.
    let mut trailing = frame::encode(&Request::Ping).unwrap();
    trailing.push(0);
    trailing[3] += 1;
    let r = attacker.raw(&trailing).await.expect("trailing gets an answer");
    assert!(matches!(error_code(&r), ErrorCode::Malformed(_)));
    // The attacker's own connection still works, and so does everybody else's.
    assert_eq!(attacker.call(&Request::Ping).await, Response::Pong);
    assert_eq!(bystander.call(&Request::Friends).await, Response::Friends(vec![]));

    // A client that skips TLS client authentication cannot even connect.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(certs::config::provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(certs::verify::PinnedServer::new(ServerPin::Exact(
            broker.fingerprint.parse().unwrap(),
        )))
        .with_no_client_auth();
    let mut tls = tls;
    tls.alpn_protocols = vec![BROKER_ALPN.to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let anon = ep.connect_with(cfg, broker.addr, "broker").unwrap().await;
    if let Ok(conn) = anon {
        // TLS 1.3 may finish the client side before the server rejects the certificate; any use then fails.
        if let Ok((mut s, mut r)) = conn.open_bi().await {
            let _ = write_frame(&mut s, &Request::Ping).await;
            let _ = s.finish();
            let answer = read_frame::<Response, _>(&mut r).await;
            assert!(answer.is_err(), "a connection without a client certificate must not be served: {answer:?}");
        }
    }

    // A wrong pin is refused by the client.
    let identity = Identity::generate("x").unwrap();
    let tls =
        certs::config::client(&identity, ServerPin::Exact(certs::Fingerprint::of(b"someone else")), &[BROKER_ALPN])
            .unwrap();
    let cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
    assert!(
        ep.connect_with(cfg, broker.addr, "broker").unwrap().await.is_err(),
        "pinned fingerprint mismatch must fail"
    );

    assert_eq!(bystander.call(&Request::Ping).await, Response::Pong);
    assert_eq!(bystander.call(&Request::Ping).await, Response::Pong, "bystander unaffected");
}

#[tokio::test(flavor = "multi_thread")]
async fn account_creation_is_capped_per_address() {
    let broker = Broker::start_with(&testkit::Backend::Sqlite, &["--registrations-per-ip-hour", "2"]);
    let c = Client::connect(&broker).await;
    c.register("first").await;
    c.register("second").await;
    let third = c
        .call(&Request::Register { username: "third".into(), display_name: "third".into(), password: PASSWORD.into() })
        .await;
    assert!(matches!(error_code(&third), ErrorCode::RateLimited { retry_after_secs } if *retry_after_secs > 0));
    // Existing accounts still log in.
    assert!(matches!(c.login("first", PASSWORD).await, Response::Token { .. }));
}
