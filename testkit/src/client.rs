//! A bare protocol client for broker tests: one QUIC connection with its own device identity, one stream per
//! request, and the pushed event stream on demand.

use crate::{Broker, PASSWORD, WAIT};
use certs::Identity;
use certs::verify::ServerPin;
use shared::io::{read_frame, write_frame};
use shared::proto::{BROKER_ALPN, BROKER_ALPN_CHANNELS, Event, GroupMessage, Request, Response};
use std::sync::Arc;

pub struct Client {
    /// This device's key: tokens are bound to it.
    pub identity: Identity,
    endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    events: Option<quinn::RecvStream>,
}

impl Client {
    /// Connects (pinned to the broker's fingerprint), with keep-alives so that slow tests stay connected.
    pub async fn connect(broker: &Broker) -> Self {
        Self::connect_as(broker, Identity::generate("test-device").unwrap()).await
    }

    /// Connects as the device `identity` (the same device again, after a restart).
    pub async fn connect_as(broker: &Broker, identity: Identity) -> Self {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        Self::connect_on(broker, identity, endpoint, BROKER_ALPN).await
    }

    async fn connect_on(broker: &Broker, identity: Identity, endpoint: quinn::Endpoint, alpn: &[u8]) -> Self {
        let pin = ServerPin::Exact(broker.fingerprint.parse().unwrap());
        let tls = certs::config::client(&identity, pin, &[alpn]).unwrap();
        let mut cfg =
            quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap()));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(std::time::Duration::from_secs(3)));
        cfg.transport_config(Arc::new(transport));
        let conn = endpoint.connect_with(cfg, broker.addr, "broker").unwrap().await.unwrap();
        Self { identity, endpoint, conn, events: None }
    }

    /// A connection with an open session: registers `user` (or logs in) and says hello.
    pub async fn session(broker: &Broker, user: &str, register: bool) -> Self {
        let c = Self::connect(broker).await;
        Self::open_session(c, user, register).await
    }

    async fn open_session(c: Self, user: &str, register: bool) -> Self {
        let token = if register { c.register(user).await } else { c.token(user).await };
        assert!(matches!(c.hello(&token).await, Response::Welcome { .. }), "hello as {user}");
        c
    }

    /// A session (a new user) that speaks relay channels ([`shared::proto::BROKER_ALPN_CHANNELS`]), and its
    /// socket's [`Tap`]: the channel datagrams that reach it, and a way to send them from the same address.
    pub async fn session_with_channels(broker: &Broker, user: &str) -> (Self, Tap) {
        let runtime = quinn::default_runtime().unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = runtime.wrap_udp_socket(socket).unwrap();
        let tap = Tap { inner: inner.clone(), broker: broker.addr, got: rx };
        let socket = Arc::new(TapSocket { inner, tx });
        let mut config = quinn::EndpointConfig::default();
        config.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(config, None, socket, runtime).unwrap();
        let c = Self::connect_on(broker, Identity::generate("test-device").unwrap(), endpoint, BROKER_ALPN_CHANNELS);
        (Self::open_session(c.await, user, true).await, tap)
    }

    pub async fn call(&self, req: &Request) -> Response {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        write_frame(&mut send, req).await.unwrap();
        send.finish().unwrap();
        read_frame(&mut recv).await.unwrap().expect("one response per request")
    }

    /// A request that must answer `Ok`.
    pub async fn ok(&self, req: Request) {
        let r = self.call(&req).await;
        assert_eq!(r, Response::Ok, "{req:?}");
    }

    /// Sends raw bytes as a request stream; returns the broker's answer, if it gave one.
    pub async fn raw(&self, bytes: &[u8]) -> Option<Response> {
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        read_frame(&mut recv).await.ok().flatten()
    }

    pub async fn register(&self, user: &str) -> String {
        let req = Request::Register { username: user.into(), display_name: user.into(), password: PASSWORD.into() };
        match self.call(&req).await {
            Response::Token { token, .. } => token,
            other => panic!("register {user}: {other:?}"),
        }
    }

    async fn token(&self, user: &str) -> String {
        match self.login(user, PASSWORD).await {
            Response::Token { token, .. } => token,
            other => panic!("login {user}: {other:?}"),
        }
    }

    pub async fn login(&self, user: &str, password: &str) -> Response {
        self.call(&Request::Login { username: user.into(), password: password.into() }).await
    }

    pub async fn hello(&self, token: &str) -> Response {
        self.call(&Request::Hello { token: token.into(), local_addrs: vec![] }).await
    }

    /// The next group message pushed to this session (other events skipped).
    pub async fn next_group_message(&mut self) -> GroupMessage {
        loop {
            if let Event::GroupMessage(m) = self.next_event().await {
                return m;
            }
        }
    }

    /// The next event pushed to this session.
    pub async fn next_event(&mut self) -> Event {
        if self.events.is_none() {
            self.events = Some(self.conn.accept_uni().await.unwrap());
        }
        let stream = self.events.as_mut().unwrap();
        tokio::time::timeout(WAIT, read_frame(stream)).await.expect("no event in time").unwrap().unwrap()
    }

    /// Reads and discards this session's events in the background, like a healthy agent.
    pub fn drain_events(&self) {
        let conn = self.conn.clone();
        tokio::spawn(async move {
            let Ok(mut events) = conn.accept_uni().await else { return };
            while let Ok(Some(_)) = read_frame::<Event, _>(&mut events).await {}
        });
    }

    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}

/// A test client's socket seen from beside its endpoint: relay channel datagrams (first byte
/// [`shared::relay::TAG`]) are taken out of what it receives, and may be sent from its address.
pub struct Tap {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    broker: std::net::SocketAddr,
    got: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Tap {
    /// Sends one datagram to the broker from the client's own address.
    pub async fn send(&self, datagram: &[u8]) {
        let t = quinn::udp::Transmit {
            destination: self.broker,
            ecn: None,
            contents: datagram,
            segment_size: None,
            src_ip: None,
        };
        let mut poller = self.inner.clone().create_io_poller();
        loop {
            match self.inner.try_send(&t) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await.unwrap();
                }
                other => return other.unwrap(),
            }
        }
    }

    /// The next channel datagram that reached the client (within [`WAIT`]).
    pub async fn next(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, self.got.recv()).await.expect("a channel datagram").expect("the socket is open")
    }

    /// A channel datagram already here, if any.
    pub fn try_next(&mut self) -> Option<Vec<u8>> {
        self.got.try_recv().ok()
    }
}

#[derive(Debug)]
struct TapSocket {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
}

impl quinn::AsyncUdpSocket for TapSocket {
    shared::pass_through_udp_socket!();

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = std::task::ready!(self.inner.poll_recv(cx, bufs, meta))?;
        for (buf, m) in bufs.iter().zip(meta.iter_mut()).take(n) {
            if buf[..m.len].first() == Some(&shared::relay::TAG) {
                for d in buf[..m.len].chunks(m.stride.max(1)) {
                    let _ = self.tx.send(d.to_vec());
                }
                m.len = 0;
            }
        }
        std::task::Poll::Ready(Ok(n))
    }
}
