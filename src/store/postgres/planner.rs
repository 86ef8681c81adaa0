//! Keeping the planner's idea of the busy tables near the truth.
//!
//! Statements are prepared once per connection (see [`super::pool`]), and
//! a prepared statement keeps its plan until its tables' statistics
//! change. A plan made while a table was nearly empty (a new database, or
//! just before an import or a burst of enqueues) can read every entry of
//! an index for what should be one seek: `min(due_at)` over a table of
//! 50,000 jobs was seen taking 25 ms instead of 0.05. Autovacuum analyzes
//! a table a minute after it changes at the soonest, so each node's upkeep
//! does it sooner: a table that has grown past twice the pages its
//! statistics saw is analyzed, which also makes every connection plan its
//! statements anew. Reading a table's size is free; one node at a time
//! analyzes ([`ANALYZE_LOCK`]).

use super::queue::Queue;
use super::{StoreError, pg_error};

/// The advisory lock key an analyze holds: "Coax" in ASCII, then 6.
const ANALYZE_LOCK: i64 = 0x436f_6178_0000_0006;

/// The tables whose plans matter, each the target of a statement run per
/// claim, send or enqueue.
const WATCHED: [&str; 2] = ["jobs", "attempts"];

/// Pages a table may grow by, beyond twice what was seen, before it is
/// analyzed again: small tables are planned well enough whatever the
/// statistics say.
const SLACK_PAGES: i64 = 64;

impl Queue {
    /// Analyzes each watched table that has outgrown its statistics, of
    /// those this role may analyze (only the owner may: another role's
    /// ANALYZE warns and does nothing, and would be tried each beat).
    pub(super) async fn analyze_grown(&self) -> Result<(), StoreError> {
        let during = "refreshing the planner's statistics";
        let mut client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT c.relname::text
                 FROM pg_class c
                 WHERE c.oid IN (SELECT to_regclass(t) FROM unnest($2::text[]) AS t)
                   AND pg_has_role(c.relowner, 'USAGE')
                   AND pg_relation_size(c.oid) / current_setting('block_size')::bigint
                       > 2 * greatest(c.relpages, 0)::bigint + $1::bigint",
                &[&SLACK_PAGES, &WATCHED.as_slice()],
            )
            .await
            .map_err(pg_error(during))?;
        for row in rows {
            let table: String = row.try_get(0).map_err(pg_error(during))?;
            // Only the names above can come back: the name is not a value.
            let Some(table) = WATCHED.iter().find(|t| **t == table) else {
                continue;
            };
            let tx = client.begin().await.map_err(pg_error(during))?;
            let took: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&ANALYZE_LOCK])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(pg_error(during))?;
            if took {
                tx.batch_execute(&format!("ANALYZE {table}"))
                    .await
                    .map_err(pg_error(during))?;
                tracing::debug!(table, "analyzed a table that outgrew its statistics");
            }
            tx.commit().await.map_err(pg_error(during))?;
        }
        Ok(())
    }
}
