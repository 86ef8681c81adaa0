//! Pruning finished jobs in bounded steps. Runs on the store thread like
//! [`super::queries`].

use super::StoreError;
use super::walk;
use crate::job::State;
use crate::time::Millis;
use rusqlite::Connection;

/// What a prune removed, or would remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub attempts: u64,
}

/// One step of a prune: what it removed, and where the next step starts
/// (`None` once every finished state has been walked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneStep {
    pub pruned: Pruned,
    pub next: Option<walk::Cursor>,
}

/// The states a prune may delete, in the order it walks them.
pub(super) const FINISHED_STATES: [State; 5] = [
    State::Sent,
    State::Skipped,
    State::Failed,
    State::Expired,
    State::Cancelled,
];

/// What a prune step reads of each job: its position, and whether it was
/// last updated before ?5.
pub(super) const PRUNE_COLUMNS: &str = "id, due_at, updated_at < ?5";

/// Examines up to `limit` finished jobs from `from` on, through the
/// `jobs_by_state_due` index, and deletes those last updated before
/// `before`, with their attempts (or, on a dry run, only counts them). Each
/// step costs at most `limit` index entries and row lookups however the
/// queue is made up, and a whole prune reads each finished job once;
/// scheduled jobs are never read.
pub fn prune_step(
    conn: &Connection,
    before: Millis,
    from: walk::Cursor,
    limit: usize,
    dry_run: bool,
) -> Result<PruneStep, StoreError> {
    let err = || StoreError::sqlite("pruning finished jobs");
    let states = FINISHED_STATES.map(State::as_str);
    let (examined, next) = walk::step(conn, &states, from, limit, PRUNE_COLUMNS, &[&before], |r| {
        Ok((r.get(1)?, r.get::<_, bool>(2)?))
    })
    .map_err(err())?;
    let old = examined.iter().filter(|seen| seen.row).map(|seen| seen.id);
    let mut pruned = Pruned::default();
    if dry_run {
        let mut attempts = conn
            .prepare_cached("SELECT count(*) FROM attempts WHERE job_id = ?1")
            .map_err(err())?;
        for id in old {
            let n: i64 = attempts.query_row([id], |r| r.get(0)).map_err(err())?;
            pruned.attempts += u64::try_from(n).unwrap_or(0);
            pruned.jobs += 1;
        }
    } else {
        let mut attempts = conn
            .prepare_cached("DELETE FROM attempts WHERE job_id = ?1")
            .map_err(err())?;
        let mut jobs = conn
            .prepare_cached("DELETE FROM jobs WHERE id = ?1")
            .map_err(err())?;
        // By (tag, job_id), from the job's own list: one seek per tag. A
        // list that is not JSON (a hand edit) leaves its rows, which point
        // at no job and are passed over wherever they are met.
        let mut tags = conn
            .prepare_cached(
                "DELETE FROM job_tags WHERE job_id = ?1 AND tag IN (
                     SELECT value FROM json_each((
                         SELECT CASE WHEN json_valid(tags) THEN tags ELSE '[]' END
                         FROM jobs WHERE id = ?1)))",
            )
            .map_err(err())?;
        for id in old {
            tags.execute([id]).map_err(err())?;
            pruned.attempts += attempts.execute([id]).map_err(err())? as u64;
            pruned.jobs += jobs.execute([id]).map_err(err())? as u64;
        }
    }
    Ok(PruneStep { pruned, next })
}
