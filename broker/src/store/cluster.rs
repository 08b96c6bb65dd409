//! The nodes of a cluster as the database sees them: when each last heard NATS (see `crate::cluster`).

use super::{Db, DbError};

impl Db {
    /// Records that `node` heard NATS at `at`.
    pub(crate) async fn node_heard_nats(&self, node: u64, at: i64) -> Result<(), DbError> {
        self.run(async |c| {
            let node = i64::try_from(node).unwrap_or(i64::MAX);
            // Each node writes only its own row, so update-then-insert cannot race with another writer.
            let updated = sqlx::query(self.sql(sql!("UPDATE cluster_nodes SET nats_seen = ? WHERE node = ?")))
                .bind(at)
                .bind(node)
                .execute(&mut *c)
                .await?
                .rows_affected();
            if updated == 0 {
                sqlx::query(self.sql(sql!("INSERT INTO cluster_nodes (node, nats_seen) VALUES (?, ?)")))
                    .bind(node)
                    .bind(at)
                    .execute(&mut *c)
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// How many nodes other than `node` heard NATS after `since`.
    pub(crate) async fn nodes_hearing_nats(&self, node: u64, since: i64) -> Result<i64, DbError> {
        self.run(async |c| {
            let node = i64::try_from(node).unwrap_or(i64::MAX);
            Ok(sqlx::query_scalar(
                self.sql(sql!("SELECT COUNT(*) FROM cluster_nodes WHERE node <> ? AND nats_seen > ?")),
            )
            .bind(node)
            .bind(since)
            .fetch_one(&mut *c)
            .await?)
        })
        .await
    }
}
