//! Whether the database answers. When a request finds it unreachable (restarting, a network cut), that is
//! logged once, requests that need it are answered "busy, try again shortly" instead of an internal error
//! each, and a watcher asks the database every second until it answers, then logs its return, once, with
//! how long it was away. The pool reconnects by itself; nothing here holds requests back.

use crate::store::{Db, DbError};
use std::time::{Duration, Instant};

/// How often the watcher asks a database that went away whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The decision, apart from the clock and the logging: when an outage starts and when it ends.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<Instant>,
}

impl Outage {
    /// A request could not reach the database: whether this starts an outage (to be logged).
    pub fn failed(&mut self, now: Instant) -> bool {
        let starts = self.since.is_none();
        self.since.get_or_insert(now);
        starts
    }

    /// The database answered: how long it was away, if it was.
    pub fn answered(&mut self, now: Instant) -> Option<Duration> {
        self.since.take().map(|s| now.saturating_duration_since(s))
    }
}

/// The broker's view of its database's health, shared by every connection.
#[derive(Default)]
pub struct DbHealth {
    outage: parking_lot::Mutex<Outage>,
    wake: tokio::sync::Notify,
}

impl DbHealth {
    /// A request failed for want of the database.
    pub fn failed(&self, error: &DbError) {
        if self.outage.lock().failed(Instant::now()) {
            tracing::warn!(
                %error,
                "the database is unreachable; requests that need it are answered 'busy, try again shortly' \
                 until it is back (sessions, direct chat and relays go on)"
            );
            self.wake.notify_one();
        } else {
            tracing::debug!(%error, "the database is still unreachable");
        }
    }

    /// Runs until the broker stops: after each outage starts, asks the database until it answers.
    pub async fn watch(&self, db: Db) {
        loop {
            self.wake.notified().await;
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if db.ping().await.is_ok() {
                    if let Some(away) = self.outage.lock().answered(Instant::now()) {
                        tracing::info!(away_ms = away.as_millis() as u64, "the database is reachable again");
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_reported_once_and_its_end_once() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.answered(t0), None, "nothing to end");
        assert!(o.failed(t0));
        assert!(!o.failed(t0 + Duration::from_secs(1)), "the same outage");
        assert_eq!(o.answered(t0 + Duration::from_secs(3)), Some(Duration::from_secs(3)));
        assert_eq!(o.answered(t0 + Duration::from_secs(4)), None, "once");
        assert!(o.failed(t0 + Duration::from_secs(5)), "a new outage");
    }
}
