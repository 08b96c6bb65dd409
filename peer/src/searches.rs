//! Agreeing on a search for a direct path with a friend's device that the plain punch left on the relay
//! (the rules are in [`crate::core::search`], the probing in `direct::search`). The two agents agree over
//! the relayed connection itself, so the search needs nothing new from the broker: the side with the
//! smaller device fingerprint leads (both notice the relayed link, one search is enough), says whether its
//! NAT kept its port and gives the probes' token; the other answers with its own side and both start.
//! Each takes the other's public address from the broker, never from the friend: a friend cannot turn a
//! search into probes at someone else.

use crate::agent::{Agent, random_id};
use crate::core::search;
use certs::Fingerprint;
use shared::io::{read_frame, write_frame};
use shared::peer::{PeerAck, PeerFrame, Search};
use shared::proto::DeviceEndpoint;
use std::sync::Arc;
use std::time::Duration;

/// How long the friend's agent may take to answer a request to search.
const ANSWER_WITHIN: Duration = Duration::from_secs(4);

impl Agent {
    /// Leads a search with a friend's device that is still reached only through the relay, if this side
    /// leads and the pacing allows. Returns once the friend agreed (or did not); the search itself runs on
    /// as a task of the session.
    pub(crate) async fn lead_search(self: &Arc<Self>, friend: &str, fp: Fingerprint, device: &DeviceEndpoint) {
        if !self.may_lead_search(&fp) {
            return;
        }
        let Some(conn) = self.direct.live(&fp) else { return };
        let Some(mine) = self.port_kept() else { return };
        let Some(slot) = self.direct.search_slot() else { return };
        let ask = Search { token: random_id(), port_kept: mine };
        let theirs = match tokio::time::timeout(ANSWER_WITHIN, ask_to_search(&conn, ask)).await {
            Ok(Ok(PeerAck::Search(theirs))) if theirs.token == ask.token => theirs,
            Ok(Ok(PeerAck::Refused(why))) => {
                tracing::debug!(friend, why, "the friend's agent would not search for a direct path now");
                return;
            }
            Ok(Ok(other)) => {
                tracing::debug!(friend, answer = ?other, "unexpected answer to a search request");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(friend, error = %e, "could not ask the friend's agent to search");
                return;
            }
            Err(_) => return,
        };
        self.start_search(friend, fp, device.observed, ask.token, search::roles(mine, theirs.port_kept), slot);
    }

    /// Whether this side would lead a search with the device now: it is reached only through the relay, this
    /// side's fingerprint is the smaller, and the pacing allows.
    pub(crate) fn may_lead_search(&self, fp: &Fingerprint) -> bool {
        !self.direct.relay_only()
            && self.device_fingerprint() < *fp
            && self.direct.is_relayed(fp)
            && self.direct.may_search(fp, false)
    }

    /// Answers a friend's device asking to search: joins (and says how our NAT maps) or says why not.
    pub(crate) async fn join_search(self: &Arc<Self>, friend: &str, fp: Fingerprint, ask: Search) -> PeerAck {
        if self.direct.relay_only() {
            return PeerAck::Refused("this agent takes friends through the relay only".into());
        }
        if !self.direct.is_relayed(&fp) {
            return PeerAck::Refused("this device is not reached through the relay".into());
        }
        if !self.direct.may_search(&fp, true) {
            return PeerAck::Refused("searched with this device too recently".into());
        }
        let Some(mine) = self.port_kept() else {
            return PeerAck::Refused("not connected to the broker".into());
        };
        let Some(roles) = search::roles(mine, ask.port_kept) else {
            return PeerAck::Refused("both NATs keep their ports: a search would find nothing new".into());
        };
        let Some(slot) = self.direct.search_slot() else {
            return PeerAck::Refused("searching with other devices already; ask again later".into());
        };
        let device = match self.devices_of(friend).await {
            Ok(devices) => devices.into_iter().find(|d| d.fingerprint == fp.0),
            Err(_) => None,
        };
        let Some(device) = device else {
            return PeerAck::Refused("the broker does not know where this device is".into());
        };
        self.start_search(friend, fp, device.observed, ask.token, Some(roles), slot);
        PeerAck::Search(Search { token: ask.token, port_kept: mine })
    }

    fn start_search(
        self: &Arc<Self>,
        friend: &str,
        fp: Fingerprint,
        at: std::net::SocketAddr,
        token: [u8; 16],
        roles: Option<search::Roles>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Some(roles) = roles else { return };
        let (agent, friend) = (self.clone(), friend.to_string());
        let plan = crate::direct::Plan { friend, fp, at, token, roles };
        self.session_tasks.spawn_once(format!("search {fp}"), async move { agent.direct.search(plan, slot).await });
    }

    /// Whether our NAT kept our port towards the broker (`None` while there is no session to tell).
    fn port_kept(&self) -> Option<bool> {
        let observed = self.broker.status().observed_addr?;
        let bound = self.endpoint.local_addr().ok()?;
        Some(observed.port() == bound.port())
    }
}

/// Asks on one stream of the relayed connection, and reads the answer.
async fn ask_to_search(conn: &quinn::Connection, ask: Search) -> anyhow::Result<PeerAck> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &PeerFrame::Search(ask)).await?;
    let _ = send.finish();
    read_frame::<PeerAck, _>(&mut recv).await?.ok_or_else(|| anyhow::anyhow!("no answer"))
}
