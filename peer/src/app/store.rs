//! What the app reads from the device's database: history a page at a time (never a whole conversation),
//! unread counts, and how far a conversation goes. The history works without the agent; read marks are
//! written by the agent (`ControlRequest::MarkRead`).

use super::{ConvKey, Line, PAGE};
use crate::history::Status;
use crate::home::Home;
use crate::reads;
use anyhow::Result;
use shared::control::MessageStatus;
use shared::proto::Millis;
use std::path::Path;

/// The app's handle on the device's database.
#[derive(Clone)]
pub struct Store {
    pub(crate) home: Home,
    pub me: String,
}

impl Store {
    /// Opens the home directory's database (as every command does).
    pub async fn open(dir: &Path) -> Result<Self> {
        let home = Home::open(dir).await?;
        let me = home.get("username").await?.unwrap_or_default();
        Ok(Self { home, me })
    }

    /// The page of history before `before` (the newest page without it), oldest first.
    pub async fn history(&self, key: &ConvKey, before: Option<i64>) -> Result<Vec<Line>> {
        Ok(match key {
            ConvKey::Friend(u) => crate::history::conversation(&self.home.db, u, PAGE, before)
                .await?
                .into_iter()
                .map(|m| Line {
                    id: Some(m.id),
                    pos: m.local_id,
                    at: m.sent_at,
                    sender: if m.outgoing { self.me.clone() } else { m.peer },
                    text: m.text,
                    own: m.outgoing,
                    state: (m.outgoing && m.status != Status::Out(MessageStatus::Delivered))
                        .then(|| m.status.as_str().to_string()),
                    notice: false,
                    token: 0,
                })
                .collect(),
            ConvKey::Group(g) => crate::history::group_conversation(&self.home.db, *g, PAGE, before)
                .await?
                .into_iter()
                .map(|m| Line {
                    id: None,
                    pos: m.seq,
                    at: m.at,
                    own: m.sender == self.me && !m.system,
                    sender: m.sender,
                    text: m.text,
                    state: None,
                    notice: m.system,
                    token: 0,
                })
                .collect(),
        })
    }

    /// Unread messages and last activity per conversation.
    pub async fn unread(&self) -> Result<Vec<(ConvKey, i64, Millis)>> {
        Ok(reads::all(&self.home.db, &self.me)
            .await?
            .into_iter()
            .map(|u| (u.conversation, u.unread, u.last_at))
            .collect())
    }

    /// The newest position in a conversation (what "read up to here" means now).
    pub async fn newest(&self, key: &ConvKey) -> Result<i64> {
        reads::newest(&self.home.db, key).await
    }

    /// For `bench tui`: `n` messages with `friend` (every tenth one ours), in one transaction.
    #[doc(hidden)]
    pub async fn fill_for_bench(&self, friend: &str, n: usize, start: Millis) -> Result<()> {
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let text = format!("message {i}: 你好, the quick brown fox jumps over the lazy dog {}", "·".repeat(i % 40));
            rows.push((format!("{i:032x}"), text, start + i as i64 * 1000));
        }
        for chunk in rows.chunks(5_000) {
            crate::history::insert_incoming(&self.home.db, friend, chunk, start).await?;
        }
        Ok(())
    }
}
