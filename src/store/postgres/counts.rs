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
//!
//! A hand edit can still make the rows lie (an edit of `job_counts`, a
//! `TRUNCATE`, a trigger disabled); each node's start-up recounts, as
//! SQLite's does ([`Queue::reconcile_counts`]).

use super::pg_error;
use super::queue::Queue;
use crate::job::State;
use crate::store::{Recount, StoreError};
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
        let tx = client.begin().await.map_err(pg_error(during))?;
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

    /// Counts the jobs per state and, where `job_counts` adds up to
    /// something else, rewrites it; returns each state whose count was
    /// wrong, and the deferred jobs (kept, counted) if they were. Runs at
    /// start-up, as on SQLite.
    pub(super) async fn reconcile_counts(
        &self,
    ) -> Result<(Vec<Recount>, Option<(i64, i64)>), StoreError> {
        let during = "recounting jobs";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        // Every change of a job's state appends here, so other nodes'
        // changes wait (and none is half counted) until the recount commits.
        tx.batch_execute("LOCK TABLE job_counts IN EXCLUSIVE MODE")
            .await
            .map_err(pg_error(during))?;
        let kept = read(tx.inner()).await?;
        let rows = tx
            .query(
                "SELECT state, state = 'scheduled' AND due_at > scheduled_at, count(*)
                 FROM jobs GROUP BY 1, 2",
                &[],
            )
            .await
            .map_err(pg_error(during))?;
        let mut counted: BTreeMap<String, i64> = BTreeMap::new();
        let mut deferred = 0;
        for row in &rows {
            let state: String = row.try_get(0).map_err(pg_error(during))?;
            let is_deferred: bool = row.try_get(1).map_err(pg_error(during))?;
            let n: i64 = row.try_get(2).map_err(pg_error(during))?;
            if is_deferred {
                deferred += n;
            }
            *counted.entry(state).or_default() += n;
        }
        let mut states: Vec<&String> = kept.per_state.keys().chain(counted.keys()).collect();
        states.sort();
        states.dedup();
        let recounted: Vec<Recount> = states
            .into_iter()
            .filter_map(|state| {
                let kept = kept.per_state.get(state).copied().unwrap_or(0);
                let counted = counted.get(state).copied().unwrap_or(0);
                (kept != counted).then(|| Recount {
                    state: state.clone(),
                    kept,
                    counted,
                })
            })
            .collect();
        let deferred = (kept.deferred != deferred).then_some((kept.deferred, deferred));
        if recounted.is_empty() && deferred.is_none() {
            return Ok((recounted, deferred));
        }
        tx.batch_execute(
            "DELETE FROM job_counts;
             INSERT INTO job_counts (state, deferred, n)
                 SELECT state, state = 'scheduled' AND due_at > scheduled_at, count(*)
                 FROM jobs GROUP BY 1, 2;",
        )
        .await
        .map_err(pg_error(during))?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok((recounted, deferred))
    }
}
