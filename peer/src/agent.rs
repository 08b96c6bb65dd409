//! `peer up`: the long-running agent. It keeps one broker session alive (reconnecting with backoff), relays
//! broker events to watchers, and serves the CLI over the control channel.

use crate::control::{self, Duplex};
use crate::direct::Direct;
use crate::home::{Account, Home};
use crate::net;
use anyhow::{Result, anyhow};
use certs::Identity;
use certs::verify::ServerPin;
use shared::backoff::Backoff;
use shared::control::{AgentEvent, AgentStatus, ControlRequest, ControlResponse};
use shared::io::{read_frame, write_frame};
use shared::proto::{DeviceEndpoint, ErrorCode, Event, Request, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, broadcast};

/// Events buffered for a slow `peer watch` before it starts missing some.
const WATCH_BUFFER: usize = 1024;

/// How a broker session ended.
enum SessionEnd {
    /// It was up and then dropped: reconnect promptly.
    Lost(String),
    /// It never came up: reconnect with growing delays.
    Failed(String),
    /// Reconnecting cannot help (token refused or revoked).
    Fatal(anyhow::Error),
}

/// The running agent.
pub(crate) struct Agent {
    pub(crate) home: Home,
    pub(crate) account: Account,
    identity: Identity,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) direct: Direct,
    /// One delivery at a time per friend, so that messages arrive in the order they were sent.
    pub(crate) outbox_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Friends' devices from the last lookup, reused while their connections work; forgotten on any
    /// presence change, removal or failure, so a lookup (and the broker's vouching) happens again.
    pub(crate) devices: Mutex<HashMap<String, Vec<shared::proto::DeviceEndpoint>>>,
    pub(crate) outboxes: Mutex<HashMap<String, crate::chat::FriendOutbox>>,
    broker_addr: SocketAddr,
    status: Mutex<AgentStatus>,
    conn: crate::direct::BrokerLink,
    events: broadcast::Sender<AgentEvent>,
    /// Last known presence of each friend in this session: the broker may say "online" twice when two
    /// friends log in at the same moment (snapshot and announcement cross), watchers hear it once.
    presence: Mutex<HashMap<String, bool>>,
    stop: Notify,
    /// Transfers whose bytes are moving now.
    pub(crate) files: crate::files::Live,
    pub(crate) policy: crate::files::FilePolicy,
    /// Relay links on the broker connection, beside the UDP socket.
    relays: Arc<crate::relay::Relays>,
    /// How friends arriving through the relay are served (large packets).
    pub(crate) relay_server: Arc<quinn::ServerConfig>,
}

/// Why a friend's devices are not at hand.
pub(crate) enum Reach {
    /// Not (or no longer) friends: retrying will not help.
    NotFriends(String),
    /// Offline, or the broker is out of reach: try again later.
    Unreachable(String),
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A fresh random id (messages, transfers): 16 bytes from the system's secure generator.
pub(crate) fn random_id() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    f64::from(b[0]) / 256.0
}

/// Runs the agent in the foreground until it is stopped (signal, `peer logout`) or its token is refused.
pub(crate) async fn run(
    home: Home,
    bind: SocketAddr,
    policy: crate::files::FilePolicy,
    relay_only: bool,
) -> Result<()> {
    let account = home.account().await?;
    let checkpointer = home.checkpoint_in_background().await?;
    let listener = control::Listener::bind(&home.dir).await?;
    let identity = home.identity()?;
    let allowed = net::Allowed::default();
    let relays = Arc::new(crate::relay::Relays::default());
    let net::Bound { endpoint, relay_server } = net::endpoint(&identity, bind, allowed.clone(), relays.clone())?;
    let broker_link = crate::direct::BrokerLink::default();
    let (opened_tx, opened_rx) = tokio::sync::mpsc::unbounded_channel();
    let direct = Direct::new(crate::direct::DirectParts {
        endpoint: endpoint.clone(),
        identity: identity.clone(),
        allowed,
        opened: opened_tx,
        relays: relays.clone(),
        broker: broker_link.clone(),
        relay_only,
    });
    let broker_addr = net::resolve(&account.broker).await?;
    let status = AgentStatus {
        username: account.username.clone(),
        display_name: None,
        broker: account.broker.clone(),
        broker_fingerprint: account.broker_fingerprint.to_string(),
        device_fingerprint: identity.fingerprint().to_string(),
        online: false,
        session_id: None,
        observed_addr: None,
        local_addrs: net::local_candidates(&endpoint, broker_addr),
        since: None,
        agent_pid: std::process::id(),
        peers: Vec::new(),
    };
    let (events, _) = broadcast::channel(WATCH_BUFFER);
    let agent = Arc::new(Agent {
        home,
        account,
        identity,
        endpoint,
        direct,
        outbox_locks: Mutex::default(),
        devices: Mutex::default(),
        outboxes: Mutex::default(),
        broker_addr,
        status: Mutex::new(status),
        conn: broker_link,
        relays,
        relay_server,
        events,
        presence: Mutex::default(),
        stop: Notify::new(),
        files: crate::files::Live::default(),
        policy,
    });
    tracing::info!(user = agent.account.username, broker = agent.account.broker, udp = ?agent.endpoint.local_addr().ok(), "agent starting");
    let server = tokio::spawn(agent.clone().serve_control(listener));
    let peers = tokio::spawn(agent.clone().accept_peers(opened_rx));
    let reaper = tokio::spawn({
        let agent = agent.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                agent.direct.reap();
            }
        }
    });
    let retry = tokio::spawn({
        let agent = agent.clone();
        async move {
            loop {
                tokio::time::sleep(crate::chat::RETRY_EVERY).await;
                agent.clone().deliver_all().await;
                agent.clone().resume_files(None).await;
            }
        }
    });
    let result = tokio::select! {
        r = agent.broker_loop() => r,
        () = shared::io::shutdown_signal() => Ok(()),
        () = agent.stop.notified() => Ok(()),
    };
    server.abort();
    peers.abort();
    retry.abort();
    checkpointer.abort();
    reaper.abort();
    if let Some(conn) = lock(&agent.conn).take() {
        conn.close(quinn::VarInt::from_u32(0), b"agent stopping");
    }
    agent.endpoint.close(quinn::VarInt::from_u32(0), b"agent stopping");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), agent.endpoint.wait_idle()).await;
    control::Listener::cleanup(&agent.home.dir);
    tracing::info!("agent stopped");
    result
}

impl Agent {
    pub(crate) fn emit(&self, event: AgentEvent) {
        let _ = self.events.send(event);
    }

    async fn broker_loop(self: &Arc<Self>) -> Result<()> {
        let mut backoff = Backoff::default();
        loop {
            match self.session().await {
                SessionEnd::Lost(reason) => {
                    tracing::warn!(reason, "broker session lost; reconnecting");
                    backoff.reset();
                }
                SessionEnd::Failed(reason) => {
                    tracing::warn!(reason, "cannot reach the broker; will retry")
                }
                SessionEnd::Fatal(e) => return Err(e),
            }
            tokio::time::sleep(backoff.next_delay(jitter())).await;
        }
    }

    /// One broker session, from connect to loss.
    async fn session(self: &Arc<Self>) -> SessionEnd {
        let pin = ServerPin::Exact(self.account.broker_fingerprint);
        let conn = match net::connect_broker(&self.endpoint, &self.identity, self.broker_addr, pin).await {
            Ok(c) => c,
            Err(e) if e.downcast_ref::<net::BrokerIdentityChanged>().is_some() => {
                return SessionEnd::Fatal(e);
            }
            Err(e) => return SessionEnd::Failed(e.to_string()),
        };
        let local_addrs = lock(&self.status).local_addrs.clone();
        let hello = Request::Hello { token: self.account.token.clone(), local_addrs };
        let welcome = match net::request(&conn, &hello).await {
            Ok(Response::Welcome { session_id, user, observed_addr }) => (session_id, user, observed_addr),
            Ok(Response::Error(e)) if e.code == ErrorCode::InvalidToken => {
                return SessionEnd::Fatal(anyhow!("{}", e.message));
            }
            Ok(other) => {
                return SessionEnd::Failed(format!("unexpected answer to hello: {other:?}"));
            }
            Err(e) => return SessionEnd::Failed(e.to_string()),
        };
        let (session_id, user, observed_addr) = welcome;
        let at = now_ms();
        {
            let mut s = lock(&self.status);
            s.online = true;
            s.session_id = Some(session_id);
            s.observed_addr = Some(observed_addr);
            s.display_name = Some(user.display_name);
            s.since = Some(at);
        }
        *lock(&self.conn) = Some(conn.clone());
        tracing::info!(session = session_id, %observed_addr, "online");
        self.emit(AgentEvent::Connected { observed_addr, at });
        tokio::spawn(self.clone().deliver_all());
        tokio::spawn(self.clone().catch_up_all());
        tokio::spawn(self.clone().refresh_friends());
        tokio::spawn(self.clone().resume_files(None));
        tokio::spawn(self.clone().accept_relays(conn.clone()));
        let end = self.read_events(&conn).await;
        *lock(&self.conn) = None;
        self.direct.drop_relayed();
        lock(&self.presence).clear();
        let at = now_ms();
        {
            let mut s = lock(&self.status);
            s.online = false;
            s.session_id = None;
            s.since = Some(at);
        }
        let reason = match &end {
            SessionEnd::Lost(r) | SessionEnd::Failed(r) => r.clone(),
            SessionEnd::Fatal(e) => e.to_string(),
        };
        self.emit(AgentEvent::Disconnected { reason, at });
        end
    }

    /// Re-reads the friend list from the broker, so that a friend removed while this agent was away from
    /// the broker (no `FriendRemoved` reached it) is no longer accepted.
    async fn refresh_friends(self: Arc<Self>) {
        for _ in 0..5 {
            let epoch = self.direct.friends_epoch();
            let list = match self.forward(&Request::Friends).await {
                ControlResponse::Broker(Response::Friends(list)) => list,
                other => {
                    tracing::warn!(answer = ?other, "could not re-read the friend list");
                    return;
                }
            };
            if self.direct.set_friends(list.into_iter().map(|f| f.user.username).collect(), epoch) {
                return;
            }
        }
    }

    /// Serves relay streams the broker opens to us: a friend whose packets cannot reach us directly. Each
    /// is read on its own task, so one slow to name its friend holds up no other.
    async fn accept_relays(self: Arc<Self>, conn: quinn::Connection) {
        while let Ok((send, mut recv)) = conn.accept_bi().await {
            let agent = self.clone();
            tokio::spawn(async move {
                let hello = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    read_frame::<shared::relay::RelayHello, _>(&mut recv),
                )
                .await;
                let Ok(Ok(Some(hello))) = hello else { return };
                let fp = certs::Fingerprint(hello.fingerprint);
                // The broker vouches for the friend's key, as with a lookup.
                if !agent.direct.expect(&hello.username, fp) {
                    return;
                }
                let addr = agent.relays.attach(fp, send, recv);
                tracing::info!(friend = hello.username, %addr, "relay from a friend");
            });
        }
    }

    /// Relays broker events until the connection ends.
    async fn read_events(self: &Arc<Self>, conn: &quinn::Connection) -> SessionEnd {
        let mut stream = match conn.accept_uni().await {
            Ok(s) => s,
            Err(e) => return SessionEnd::Lost(e.to_string()),
        };
        loop {
            match read_frame::<Event, _>(&mut stream).await {
                Ok(Some(Event::SessionRevoked)) => {
                    return SessionEnd::Fatal(anyhow!(
                        "this session was revoked (password changed on another device): run `peer login {}`",
                        self.account.username
                    ));
                }
                Ok(Some(event)) => {
                    if let Event::Presence { username, online, .. } = &event {
                        // Any device change: look the friend up afresh, and retry what is queued for them.
                        lock(&self.devices).remove(username);
                        if *online {
                            let (agent, friend) = (self.clone(), username.clone());
                            tokio::spawn(async move { agent.deliver_to(&friend).await });
                            self.files.kick(username);
                            tokio::spawn(self.clone().resume_files(Some(username.clone())));
                        }
                        if lock(&self.presence).insert(username.clone(), *online) == Some(*online) {
                            continue;
                        }
                        tracing::info!(friend = username, online, "presence");
                    }
                    match &event {
                        Event::FriendRemoved { username } => {
                            lock(&self.presence).remove(username);
                            lock(&self.devices).remove(username);
                            self.direct.forget(username);
                        }
                        Event::FriendAccepted { friend } => self.direct.befriended(&friend.username),
                        Event::FriendDevices { username, fingerprints } => {
                            let keep: Vec<_> = fingerprints.iter().map(|f| certs::Fingerprint(*f)).collect();
                            tracing::info!(
                                friend = username,
                                devices = keep.len(),
                                "a friend's other devices were cut off"
                            );
                            lock(&self.devices).remove(username);
                            self.direct.keep_only(username, &keep);
                        }
                        Event::PeerIncoming { username, device } => {
                            if !self.direct.expect(username, certs::Fingerprint(device.fingerprint)) {
                                continue;
                            }
                            // Simultaneous open: our packets towards them open our NAT for theirs.
                            let (agent, username, device) = (self.clone(), username.clone(), device.clone());
                            tokio::spawn(async move { agent.direct.punch(&username, &device).await });
                            continue;
                        }
                        Event::GroupMessage(m) => {
                            // Stored first, shown once, in order (gaps are fetched): handled here, inline.
                            if let Err(e) = self.on_group_message(m.clone()).await {
                                tracing::warn!(group = m.group_id, error = %e, "could not store a group message");
                            }
                            continue;
                        }
                        _ => {}
                    }
                    self.emit(AgentEvent::Broker { event, at: now_ms() });
                }
                Ok(None) => {
                    return SessionEnd::Lost(
                        conn.close_reason().map(|r| r.to_string()).unwrap_or("event stream ended".into()),
                    );
                }
                Err(e) => {
                    let reason = conn.close_reason().map(|r| r.to_string()).unwrap_or_else(|| e.to_string());
                    return SessionEnd::Lost(reason);
                }
            }
        }
    }

    async fn serve_control(self: Arc<Self>, listener: control::Listener) {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let agent = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = agent.control(stream).await {
                            tracing::debug!(error = %e, "control connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serves one control connection: requests answered in turn until the client closes it (the CLI sends
    /// one; a script may keep the connection and send many), or a watch that streams until either side leaves.
    async fn control(self: &Arc<Self>, mut stream: Box<dyn Duplex>) -> Result<()> {
        while let Some(req) = read_frame::<ControlRequest, _>(&mut stream).await? {
            let stop_after = matches!(req, ControlRequest::Logout | ControlRequest::Stop);
            let resp = match req {
                ControlRequest::Status => {
                    let mut status = lock(&self.status).clone();
                    status.peers = self.direct.links();
                    ControlResponse::Status(status)
                }
                ControlRequest::Watch => return self.watch(stream).await,
                ControlRequest::Broker(req) => self.forward(&req).await,
                ControlRequest::Logout => self.logout().await,
                ControlRequest::Send { to, text } => self.send_message(&to, &text).await,
                ControlRequest::SendFile { to, path, name, size, hash } => {
                    self.send_file(&to, &path, &name, size, hash).await
                }
                ControlRequest::Files => self.list_files().await,
                ControlRequest::FileAccept { id, dir } => self.accept_file(&id, &dir).await,
                ControlRequest::FileDecline { id } => self.decline_file(&id).await,
                ControlRequest::FileCancel { id } => self.cancel_file(&id, "cancelled by the user").await,
                ControlRequest::Stop => {
                    tracing::info!("asked to stop");
                    ControlResponse::Ok
                }
                ControlRequest::MarkRead { conversation, up_to } => self.mark_read(&conversation, up_to).await,
            };
            let written = write_frame(&mut stream, &resp).await;
            if stop_after {
                // Only once the CLI has its answer (or is gone).
                self.stop.notify_one();
                return Ok(written?);
            }
            written?;
        }
        Ok(())
    }

    /// A friend's online devices: from the last lookup while its connections work, else asked of the broker
    /// (which also tells the friend's agent to expect us).
    pub(crate) async fn devices_of(&self, friend: &str) -> Result<Vec<DeviceEndpoint>, Reach> {
        if let Some(d) = lock(&self.devices).get(friend).cloned() {
            return Ok(d);
        }
        match self.forward(&Request::Lookup { username: friend.to_string() }).await {
            ControlResponse::Broker(Response::Endpoints(d)) => Ok(d),
            ControlResponse::Broker(Response::Error(e)) if matches!(e.code, ErrorCode::NotFriends) => {
                Err(Reach::NotFriends(e.message))
            }
            ControlResponse::Broker(Response::Error(e)) => Err(Reach::Unreachable(e.message)),
            ControlResponse::Error(e) => Err(Reach::Unreachable(e)),
            other => Err(Reach::Unreachable(format!("unexpected answer: {other:?}"))),
        }
    }

    pub(crate) async fn forward(&self, req: &Request) -> ControlResponse {
        let conn = lock(&self.conn).clone();
        let Some(conn) = conn else {
            return ControlResponse::Error(
                "the agent is not connected to the broker right now; it keeps retrying (see `peer status`)".into(),
            );
        };
        match net::request(&conn, req).await {
            Ok(resp) => ControlResponse::Broker(resp),
            Err(e) if conn.close_reason().is_some() => ControlResponse::Error(format!(
                "lost the broker connection ({e}); the agent is reconnecting, try again in a moment"
            )),
            Err(e) => ControlResponse::Error(e.to_string()),
        }
    }

    async fn mark_read(&self, conversation: &str, up_to: i64) -> ControlResponse {
        let conv = match conversation.parse::<crate::reads::Conversation>() {
            Ok(c) => c,
            Err(e) => return ControlResponse::Error(e.to_string()),
        };
        if let Err(e) = crate::reads::mark(&self.home.db, &conv, up_to).await {
            return ControlResponse::Error(format!("could not record the read mark: {e}"));
        }
        self.emit(AgentEvent::Read { conversation: conv.to_string(), up_to, at: now_ms() });
        ControlResponse::Ok
    }

    async fn logout(&self) -> ControlResponse {
        let revoked = match self.forward(&Request::Logout).await {
            ControlResponse::Broker(Response::Ok) => Ok(()),
            ControlResponse::Broker(Response::Error(e)) => Err(e.message),
            ControlResponse::Error(e) => Err(e),
            other => Err(format!("unexpected answer: {other:?}")),
        };
        if let Err(e) = self.home.delete("token").await {
            return ControlResponse::Error(format!("could not forget the token: {e}"));
        }
        match revoked {
            Ok(()) => ControlResponse::Ok,
            Err(e) => ControlResponse::Error(format!(
                "the token was forgotten here but the broker could not revoke it ({e}); it expires by itself"
            )),
        }
    }

    async fn watch(&self, mut stream: Box<dyn Duplex>) -> Result<()> {
        let mut rx = self.events.subscribe();
        // Tells the watcher it is subscribed: nothing from here on is missed.
        let status = lock(&self.status).clone();
        write_frame(&mut stream, &ControlResponse::Status(status)).await?;
        loop {
            let event = match rx.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    write_frame(&mut stream, &ControlResponse::Error(format!("watch fell behind; {n} events skipped")))
                        .await?;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            };
            write_frame(&mut stream, &ControlResponse::Event(event)).await?;
        }
    }
}
