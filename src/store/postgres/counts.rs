//! Counts per state on PostgreSQL, without a counter row that every node
//! would update.
//!
//! A row trigger on `jobs` (schema version 2) appends to `job_counts` a `-1`
//! for the (state, deferred) a row leaves and a `+1` for the one it enters,
//! so concurrent claims and enqueues never wait for one another on a
//! count. `stats` sums the rows; [`Queue::fold_counts`] now and then
//! replaces them by one row per (state, deferred), so the sum stays short.
//! A job is deferred while it is `scheduled` with `due_at > scheduled_at`
//! (waiting for its window), as SQLite's count of deferred jobs.

use super::pg_error;
use super::queue::Queue;
use crate::job::State;
use crate::store::StoreError;
use std::collections::BTreeMap;
use tokio_postgres::GenericClient;

/// The advisory lock key held while folding: "Coax" in ASCII, then 4. Two
/// folds at once would delete each other's rows in different orders.
pub(super) const FOLD_LOCK: i64 = 0x436f_6178_0000_0004;

/// How many rows of `job_counts` a summary lets build up before it folds
/// them.
pub(super) const FOLD_AFTER: i64 = 1_000;

/// What the rows of `job_counts` add up to.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Per state, as stored (a hand edit can store a state that is not one).
    pub per_state: BTreeMap<String, i64>,
    pub deferred: i64,
    /// How many rows were summed.
    pub rows: i64,
}

/// Sums `job_counts`.
pub(super) async fn read(client: &impl GenericClient) -> Result<Counts, StoreError> {
    let rows = client
        .query(
            "SELECT state, deferred, sum(n)::bigint, count(*) FROM job_counts
             GROUP BY state, deferred",
            &[],
        )
        .await
        .map_err(pg_error("counting jobs"))?;
    let mut counts = Counts::default();
    for row in rows {
        let (state, deferred, n, rows): (String, bool, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        *counts.per_state.entry(state.clone()).or_default() += n;
        if deferred && state == State::Scheduled.as_str() {
            counts.deferred += n;
        }
        counts.rows += rows;
    }
    Ok(counts)
}

impl Queue {
    /// Folds the rows of `job_counts` into one per (state, deferred), so
    /// that summing them stays cheap; how many rows it folded (0 when
    /// another node is folding). The upkeep may call it now and then;
    /// `stats` calls it once the rows pass [`FOLD_AFTER`].
    pub async fn fold_counts(&self) -> Result<u64, StoreError> {
        let during = "folding the counts per state";
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(pg_error(during))?;
        let ours: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&FOLD_LOCK])
            .await
            .map_err(pg_error(during))?
            .get(0);
        if !ours {
            return Ok(0);
        }
        // Rows appended while this runs are not in its snapshot, so they
        // stay, and are counted once.
        let folded = tx
            .query_one(
                "WITH gone AS (DELETE FROM job_counts RETURNING *),
                      kept AS (INSERT INTO job_counts (state, deferred, n)
                               SELECT state, deferred, sum(n) FROM gone
                               GROUP BY state, deferred HAVING sum(n) <> 0)
                 SELECT count(*) FROM gone",
                &[],
            )
            .await
            .map_err(pg_error(during))?
            .get::<_, i64>(0);
        tx.commit().await.map_err(pg_error(during))?;
        Ok(u64::try_from(folded).unwrap_or(0))
    }
}
