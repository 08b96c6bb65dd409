//! The agent's side of group chat: it keeps a local copy of each group's log, in the broker's order, and
//! fills any gap (after being offline, or a dropped event) from the last sequence number it has.

use crate::agent::{Agent, now_ms};
use crate::core::grouplog::{self, Step};
use crate::history;
use anyhow::{Result, anyhow};
use shared::control::{AgentEvent, ControlResponse};
use shared::proto::{Event, GroupMessage, Request, Response};
use std::sync::Arc;

impl Agent {
    /// A live group message: stored and shown if it is the next one; otherwise the gap is fetched first.
    pub(crate) async fn on_group_message(&self, m: GroupMessage) -> Result<()> {
        let last = history::last_group_seq(&self.home.db, m.group_id).await?;
        match grouplog::on_live(last, m.seq) {
            Step::Ignore => Ok(()),
            Step::Store => self.store_group(&[m]).await,
            Step::CatchUp { .. } => self.catch_up(m.group_id).await,
        }
    }

    /// Fetches and stores everything after the last message this agent has, for every group it is in.
    pub(crate) async fn catch_up_all(self: Arc<Self>) {
        let groups = match self.broker.forward(&Request::Groups).await {
            ControlResponse::Broker(Response::Groups(g)) => g,
            _ => return,
        };
        for g in groups {
            if let Err(e) = self.catch_up(g.group_id).await {
                tracing::warn!(group = g.group_id, error = %e, "group catch-up failed");
            }
        }
    }

    async fn catch_up(&self, group_id: i64) -> Result<()> {
        loop {
            let after_seq = history::last_group_seq(&self.home.db, group_id).await?;
            let batch = match self.broker.forward(&Request::GroupSync { group_id, after_seq, limit: 500 }).await {
                ControlResponse::Broker(Response::GroupMessages(b)) => b,
                ControlResponse::Broker(Response::Error(e)) => return Err(anyhow!("{}", e.message)),
                ControlResponse::Failed(e) => return Err(anyhow!("{e}")),
                other => return Err(anyhow!("unexpected answer: {other:?}")),
            };
            if batch.is_empty() {
                return Ok(());
            }
            self.store_group(&batch).await?;
        }
    }

    async fn store_group(&self, msgs: &[GroupMessage]) -> Result<()> {
        let at = now_ms();
        for m in history::insert_group(&self.home.db, msgs, at).await? {
            self.emit(AgentEvent::Broker { event: Event::GroupMessage(m), at });
        }
        Ok(())
    }
}
