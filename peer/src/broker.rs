//! The agent's side of its broker: the session's connection while there is one, what `peer status` says
//! about it, and requests forwarded on it. The session's life (connect, hello, events, loss) is driven by
//! `agent` with the rules of `core::session`; this holds what that life changes.

use crate::direct::BrokerLink;
use crate::net;
use parking_lot::Mutex;
use shared::control::{AgentStatus, ControlErrorCode as Code, ControlResponse};
use shared::proto::Request;
use std::net::SocketAddr;

/// How long a request made while the agent is connecting waits for the session before it is refused. A
/// user who signs up and adds a friend at once, or who runs `peer up --detach && peer friends add`, should
/// not be told "not connected" because the first session is still being set up; a broker that is known to
/// be unreachable (the agent is waiting to retry) refuses at once.
const CONNECTING_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The broker session's state, shared by everything that asks the broker something.
pub(crate) struct BrokerSession {
    /// The connection while a session is open (the relay opens streams on it too).
    link: BrokerLink,
    status: Mutex<AgentStatus>,
    /// Whether an attempt to open a session is under way.
    connecting: tokio::sync::watch::Sender<bool>,
}

impl BrokerSession {
    pub(crate) fn new(link: BrokerLink, status: AgentStatus) -> Self {
        Self { link, status: Mutex::new(status), connecting: tokio::sync::watch::Sender::new(true) }
    }

    /// An attempt to open a session starts (`true`) or has ended, opened or not (`false`).
    pub(crate) fn connecting(&self, yes: bool) {
        self.connecting.send_replace(yes);
    }

    /// What `peer status` shows (without the live peer connections, which `Direct` knows).
    pub(crate) fn status(&self) -> AgentStatus {
        self.status.lock().clone()
    }

    /// The addresses announced in `Hello`.
    pub(crate) fn local_addrs(&self) -> Vec<SocketAddr> {
        self.status.lock().local_addrs.clone()
    }

    /// A session opened on `conn`.
    pub(crate) fn opened(&self, conn: quinn::Connection, welcome: &crate::core::session::Welcome, at: i64) {
        {
            let mut s = self.status.lock();
            s.online = true;
            s.session_id = Some(welcome.session_id);
            s.observed_addr = Some(welcome.observed_addr);
            s.display_name = Some(welcome.user.display_name.clone());
            s.since = Some(at);
        }
        *self.link.lock() = Some(conn);
        self.connecting(false);
    }

    /// The session ended.
    pub(crate) fn closed(&self, at: i64) {
        *self.link.lock() = None;
        let mut s = self.status.lock();
        s.online = false;
        s.session_id = None;
        s.since = Some(at);
    }

    /// Closes the connection (the agent is stopping).
    pub(crate) fn close(&self) {
        if let Some(conn) = self.link.lock().take() {
            conn.close(quinn::VarInt::from_u32(0), b"agent stopping");
        }
    }

    /// Sends `req` on the session and returns the broker's answer, or why there is none (typed, for the
    /// CLI's `--json`).
    pub(crate) async fn forward(&self, req: &Request) -> ControlResponse {
        let mut conn = self.link.lock().clone();
        if conn.is_none() {
            let mut connecting = self.connecting.subscribe();
            let _ = tokio::time::timeout(CONNECTING_GRACE, connecting.wait_for(|c| !c)).await;
            conn = self.link.lock().clone();
        }
        let Some(conn) = conn else {
            return ControlResponse::failed(
                Code::Offline,
                "the agent is not connected to the broker right now; it keeps retrying (see `peer status`)",
            );
        };
        match net::request(&conn, req).await {
            Ok(resp) => ControlResponse::Broker(resp),
            Err(e) if conn.close_reason().is_some() => ControlResponse::failed(
                Code::Offline,
                format!("lost the broker connection ({e}); the agent is reconnecting, try again in a moment"),
            ),
            Err(e) => ControlResponse::failed(Code::Other, e.to_string()),
        }
    }
}
