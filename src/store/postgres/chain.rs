//! Follow-ups on PostgreSQL: what happens to a job's waiting followers
//! when it ends, as [`super::super::chain`] on SQLite.
//!
//! Several nodes change jobs at once, so the parent's row is the lock
//! between a follower being attached and its parent ending: [`attach`]
//! reads the parent `FOR SHARE`, and every change that ends a job holds
//! it `FOR UPDATE`. Whichever commits second sees the other's work, so a
//! follower is never left waiting on a parent that has ended.

use super::deferral::{DUE_COLUMNS, read_due, set_aside, settle};
use super::jobs::LOCK_KEYS;
use super::pg_error;
use super::pool::Tx;
use crate::job::{After, LATEST, NewJob, State};
use crate::protocol::Lookup;
use crate::store::StoreError;
use crate::store::chain::{MAX_CHILDREN, UnknownParent};
use crate::store::deferral::Report;
use crate::time::Millis;
use crate::window::Calendar;

/// The first job of `jobs` whose parent is neither stored nor, by key, a
/// job earlier in the same batch (or whose parent has [`MAX_CHILDREN`]
/// follow-ups already), as SQLite's `chain::unknown_parent`. Checked
/// before anything is written, so a refused batch leaves nothing behind.
pub(super) async fn unknown_parent(
    tx: &Tx<'_>,
    jobs: &[NewJob],
) -> Result<Option<UnknownParent>, StoreError> {
    let mut parents = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        let Some(after) = &job.after else {
            parents.push(None);
            continue;
        };
        let earlier = |key: &str| jobs[..index].iter().any(|j| j.key.as_deref() == Some(key));
        parents.push(match &after.parent {
            Lookup::Key(key) if earlier(key) => None,
            parent => match find(tx, parent).await? {
                Some(id) => Some(id),
                None => {
                    return Ok(Some(UnknownParent {
                        index,
                        parent: after.parent.clone(),
                        full: false,
                    }));
                }
            },
        });
    }
    // The children are counted under a lock on each parent, taken in one
    // order, so that two nodes attaching to one parent at once cannot
    // both find room for the last follow-up.
    let stored: Vec<String> = parents.iter().flatten().map(i64::to_string).collect();
    if !stored.is_empty() {
        tx.execute(LOCK_KEYS, &[&stored, &PARENT_LOCK_CLASS])
            .await
            .map_err(pg_error("locking follow-ups' parents"))?;
    }
    for (index, (job, stored)) in jobs.iter().zip(parents).enumerate() {
        let Some(after) = &job.after else {
            continue;
        };
        // Stored children, and those earlier in this batch, that name the
        // same parent the same way.
        let siblings = jobs[..index]
            .iter()
            .filter(|j| j.after.as_ref().is_some_and(|a| a.parent == after.parent))
            .count() as i64;
        let stored_children = match stored {
            Some(id) => children(tx, id).await?,
            None => 0,
        };
        if siblings + stored_children >= MAX_CHILDREN {
            return Ok(Some(UnknownParent {
                index,
                parent: after.parent.clone(),
                full: true,
            }));
        }
    }
    Ok(None)
}

/// The advisory lock class of parents being counted for a new follow-up
/// ("Coaz" in ASCII, beside the class of idempotency keys), by the id's
/// text, as [`LOCK_KEYS`] takes keys.
const PARENT_LOCK_CLASS: i32 = 0x436f_617a;

/// How many follow-ups job `id` has, waiting or not.
async fn children(tx: &Tx<'_>, id: i64) -> Result<i64, StoreError> {
    let during = "counting a parent's follow-ups";
    tx.query_one("SELECT count(*) FROM jobs WHERE parent_id = $1", &[&id])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(pg_error(during))
}

/// The id of the job `lookup` names.
async fn find(tx: &Tx<'_>, lookup: &Lookup) -> Result<Option<i64>, StoreError> {
    let during = "finding a follow-up's parent";
    let row = match lookup {
        Lookup::Id(id) => {
            tx.query_opt("SELECT id FROM jobs WHERE id = $1", &[id])
                .await
        }
        Lookup::Key(key) => {
            tx.query_opt("SELECT id FROM jobs WHERE key = $1", &[key])
                .await
        }
    }
    .map_err(pg_error(during))?;
    row.map(|r| r.try_get(0))
        .transpose()
        .map_err(pg_error(during))
}

/// The state of job `id`, read with `lock` (`FOR UPDATE`, `FOR SHARE` or
/// nothing); a state that is not a state is set aside on the spot, as
/// SQLite's quarantine does, so the job is then `failed`.
pub(super) async fn current_state(
    tx: &Tx<'_>,
    id: i64,
    lock: &str,
    now: Millis,
) -> Result<Option<State>, StoreError> {
    let during = "reading a job";
    let row = tx
        .query_opt(
            &format!("SELECT state FROM jobs WHERE id = $1 {lock}"),
            &[&id],
        )
        .await
        .map_err(pg_error(during))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored: String = row.try_get(0).map_err(pg_error(during))?;
    match State::parse(&stored) {
        Some(state) => Ok(Some(state)),
        None => {
            set_aside(tx, id, &format!("state {stored:?} is not a job state"), now).await?;
            Ok(Some(State::Failed))
        }
    }
}

/// Makes job `id`, just stored, follow the job `after` names: `waiting`,
/// or at once what its parent's end implies when the parent has already
/// ended. Returns its state then.
pub(super) async fn attach(
    tx: &Tx<'_>,
    calendar: &Calendar,
    id: i64,
    after: &After,
    now: Millis,
) -> Result<State, StoreError> {
    let during = "enqueueing a follow-up";
    let Some(parent) = find(tx, &after.parent).await? else {
        // Only a caller that skipped [`unknown_parent`] gets here.
        return Err(StoreError::Postgres {
            during,
            detail: format!("job {id}'s parent is not stored"),
        });
    };
    tx.execute(
        "UPDATE jobs SET state = 'waiting', parent_id = $2, after_delay_ms = $3,
                after_ttl_ms = $4
         WHERE id = $1",
        &[&id, &parent, &after.delay_ms, &after.ttl_ms],
    )
    .await
    .map_err(pg_error(during))?;
    // Shared: another node ending the parent waits for this commit, and
    // then releases or cancels this follower with the others.
    let ended = current_state(tx, parent, "FOR SHARE", now).await?;
    if let Some(state) = ended {
        let at = match state {
            State::Sent => sent_at(tx, parent).await?,
            _ => now,
        };
        // The parent has no other waiting child once it has ended, so
        // this moves the new one alone.
        parent_ended(tx, calendar, parent, state, at, now).await?;
    }
    Ok(current_state(tx, id, "", now)
        .await?
        .unwrap_or(State::Waiting))
}

/// When job `id` was sent: the end of its `sent` attempt (its last update
/// if its history has none, after a hand edit).
async fn sent_at(tx: &Tx<'_>, id: i64) -> Result<Millis, StoreError> {
    let during = "reading when a parent was sent";
    let row = tx
        .query_one(
            "SELECT coalesce(
                 (SELECT max(finished_at) FROM attempts WHERE job_id = $1 AND decision = 'sent'),
                 (SELECT updated_at FROM jobs WHERE id = $1))",
            &[&id],
        )
        .await
        .map_err(pg_error(during))?;
    let at: Option<i64> = row.try_get(0).map_err(pg_error(during))?;
    Ok(at.unwrap_or(0))
}

/// Moves on the children of job `parent`, which has just become `state`
/// (at `at`, its send time when `sent`); how many jobs it cancelled. As
/// SQLite's `chain::parent_ended`: `sent` schedules each waiting child its
/// delay after `at` and settles it against its window; `skipped`,
/// `failed`, `expired` and `cancelled` cancel every waiting descendant;
/// any other state leaves them waiting.
pub(super) async fn parent_ended(
    tx: &Tx<'_>,
    calendar: &Calendar,
    parent: i64,
    state: State,
    at: Millis,
    now: Millis,
) -> Result<u64, StoreError> {
    match state {
        State::Sent => {
            release(tx, calendar, parent, at, now).await?;
            Ok(0)
        }
        State::Skipped | State::Failed | State::Expired | State::Cancelled => {
            cancel_descendants(tx, parent, state, now).await
        }
        State::Scheduled | State::Sending | State::Held | State::Waiting => Ok(0),
    }
}

/// Cancels the waiting descendants of job `parent`, which ended `how`,
/// each with a `last_error` naming the job it followed and how that one
/// ended; how many. As SQLite's `chain::cancel_descendants`: a list, not
/// recursion, so a chain of any depth costs no stack.
pub(super) async fn cancel_descendants(
    tx: &Tx<'_>,
    parent: i64,
    how: State,
    now: Millis,
) -> Result<u64, StoreError> {
    cancel_descendants_of(tx, vec![parent], how, now).await
}

/// [`cancel_descendants`] of every job of `parents`, which all ended
/// `how`: one statement per generation, however many parents (a cancel
/// by tag of 20,000 jobs would otherwise make 20,000 round trips).
pub(super) async fn cancel_descendants_of(
    tx: &Tx<'_>,
    parents: Vec<i64>,
    how: State,
    now: Millis,
) -> Result<u64, StoreError> {
    let during = "cancelling a job's follow-ups";
    let mut generation = parents;
    let mut how = how;
    let mut cancelled = 0;
    while !generation.is_empty() {
        let rows = tx
            .query(
                "UPDATE jobs SET state = 'cancelled', updated_at = $3,
                        last_error = 'cancelled: job ' || parent_id || ', which it follows, ended ' || $2
                 WHERE parent_id = ANY($1) AND state = 'waiting'
                 RETURNING id",
                &[&generation, &how.as_str(), &now],
            )
            .await
            .map_err(pg_error(during))?;
        cancelled += rows.len() as u64;
        generation = rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(pg_error(during))?;
        how = State::Cancelled;
    }
    Ok(cancelled)
}

/// Schedules each waiting child of job `parent`, sent at `sent_at`: due
/// its delay after that, expiring its ttl after that when it gave one, and
/// settled against its window (which may expire or hold it at once). A
/// row that cannot be read is set aside. Wakes the nodes when one is
/// scheduled.
async fn release(
    tx: &Tx<'_>,
    calendar: &Calendar,
    parent: i64,
    sent_at: Millis,
    now: Millis,
) -> Result<(), StoreError> {
    let during = "scheduling a job's follow-ups";
    let rows = tx
        .query(
            &format!(
                "SELECT {DUE_COLUMNS}, j.after_delay_ms, j.after_ttl_ms FROM jobs j
                 WHERE j.parent_id = $1 AND j.state = 'waiting' ORDER BY j.id FOR UPDATE"
            ),
            &[&parent],
        )
        .await
        .map_err(pg_error(during))?;
    let mut scheduled = false;
    for r in rows {
        let (row, delay_ms, ttl_ms) = (|| {
            let delay: Option<i64> = r.try_get(11)?;
            let ttl: Option<i64> = r.try_get(12)?;
            Ok((read_due(&r)?, delay.unwrap_or(0), ttl))
        })()
        .map_err(pg_error(during))?;
        let mut job = match row {
            Ok(job) => job,
            Err((id, why)) => {
                set_aside(tx, id, &why, now).await?;
                continue;
            }
        };
        let at = sent_at.saturating_add(delay_ms.max(0)).min(LATEST);
        let expires_at = job
            .expires_at
            .or_else(|| ttl_ms.map(|ttl| at.saturating_add(ttl)));
        tx.execute(
            "UPDATE jobs SET state = 'scheduled', scheduled_at = $2, due_at = $2,
                    expires_at = $3, updated_at = $4
             WHERE id = $1",
            &[&job.id, &at, &expires_at, &now],
        )
        .await
        .map_err(pg_error(during))?;
        tracing::info!(
            job_id = job.id,
            parent,
            scheduled_at = %crate::time::format(at),
            "the job it follows was sent; scheduled"
        );
        (job.scheduled_at, job.due_at, job.expires_at) = (at, at, expires_at);
        settle(tx, calendar, &job.timing(), now, Report::Each).await?;
        scheduled = true;
    }
    if scheduled {
        super::queue::notify_due(tx).await?;
    }
    Ok(())
}
