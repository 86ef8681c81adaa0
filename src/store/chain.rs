//! Follow-ups: a job enqueued with `after` is `waiting` until its parent
//! ends, then `scheduled` (the parent was `sent`) or `cancelled` (it ended
//! any other way), and so on down a chain.
//!
//! [`parent_ended`] is the one place that moves children on. Every change
//! that ends a job calls it in the same store call, so in the same
//! transaction: a parent and its children are never seen, nor left by a
//! crash, out of step. Releasing a child touches only that child (its own
//! children wait for it), and cancelling walks the descendants with a list
//! rather than recursion, so a chain of any depth costs no stack.

use super::StoreError;
use super::deferral::{Report, settle};
use super::quarantine::{DUE_COLUMNS, quarantine, read_due};
use crate::job::{After, LATEST, NewJob, State};
use crate::protocol::Lookup;
use crate::time::Millis;
use crate::window::Calendar;
use rusqlite::{Connection, OptionalExtension, params};

/// The most follow-ups one job may have. A parent's end moves all its
/// waiting children in one transaction, so this bounds how long that store
/// call holds the others (a thousand children take milliseconds).
pub const MAX_CHILDREN: i64 = 1_000;

/// A job of an enqueue whose `after` names no job, or a job that has
/// [`MAX_CHILDREN`] follow-ups already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownParent {
    /// Its place in the batch (0 for a single job).
    pub index: usize,
    pub parent: Lookup,
    /// The parent exists but has as many follow-ups as it may.
    pub full: bool,
}

impl std::fmt::Display for UnknownParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let named = match &self.parent {
            Lookup::Id(id) => format!("id {id}"),
            Lookup::Key(key) => format!("key {}", crate::protocol::quoted(key)),
        };
        if self.full {
            return write!(
                f,
                "after: the job with {named} already has {MAX_CHILDREN} follow-ups, as many as a job may have"
            );
        }
        match &self.parent {
            Lookup::Id(_) => write!(f, "after: no job with {named}"),
            Lookup::Key(_) => write!(
                f,
                "after: no job with {named} (in a batch, only a job earlier in the batch can be named)"
            ),
        }
    }
}

/// The first job of `jobs` whose parent is neither stored nor, by key, a
/// job earlier in the same batch. Checked before anything is written, so
/// a refused batch leaves nothing behind.
pub(super) fn unknown_parent(
    conn: &Connection,
    jobs: &[NewJob],
) -> Result<Option<UnknownParent>, StoreError> {
    for (index, job) in jobs.iter().enumerate() {
        let Some(after) = &job.after else {
            continue;
        };
        let earlier = |key: &str| jobs[..index].iter().any(|j| j.key.as_deref() == Some(key));
        let refused = |full| UnknownParent {
            index,
            parent: after.parent.clone(),
            full,
        };
        let stored = match &after.parent {
            Lookup::Key(key) if earlier(key) => None,
            parent => match find(conn, parent)? {
                Some(id) => Some(id),
                None => return Ok(Some(refused(false))),
            },
        };
        // Stored children, and those earlier in this batch, that name the
        // same parent the same way.
        let siblings = jobs[..index]
            .iter()
            .filter(|j| j.after.as_ref().is_some_and(|a| a.parent == after.parent))
            .count() as i64;
        if siblings + stored.map_or(Ok(0), |id| children(conn, id))? >= MAX_CHILDREN {
            return Ok(Some(refused(true)));
        }
    }
    Ok(None)
}

/// How many follow-ups job `id` has, waiting or not.
fn children(conn: &Connection, id: i64) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT count(*) FROM jobs INDEXED BY jobs_by_parent WHERE parent_id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)))
        .map_err(StoreError::sqlite("counting a parent's follow-ups"))
}

/// The id of the job `lookup` names.
fn find(conn: &Connection, lookup: &Lookup) -> Result<Option<i64>, StoreError> {
    match lookup {
        Lookup::Id(id) => conn
            .prepare_cached("SELECT id FROM jobs WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional()),
        Lookup::Key(key) => conn
            .prepare_cached("SELECT id FROM jobs WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional()),
    }
    .map_err(StoreError::sqlite("finding a follow-up's parent"))
}

/// Makes job `id`, just stored, follow the job `after` names: `waiting`,
/// or at once what its parent's end implies when the parent has already
/// ended. Returns its state then.
pub(super) fn attach(
    conn: &Connection,
    calendar: &Calendar,
    id: i64,
    after: &After,
    now: Millis,
) -> Result<State, StoreError> {
    let err = || StoreError::sqlite("enqueueing a follow-up");
    let Some(parent) = find(conn, &after.parent)? else {
        // Only a caller that skipped [`unknown_parent`] gets here.
        return Err(StoreError::Sqlite {
            during: "enqueueing a follow-up",
            detail: format!("job {id}'s parent is not stored"),
        });
    };
    conn.prepare_cached(
        "UPDATE jobs SET state = 'waiting', parent_id = ?2, after_delay_ms = ?3,
                after_ttl_ms = ?4
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, parent, after.delay_ms, after.ttl_ms]))
    .map_err(err())?;
    let ended = super::changes::current_state(conn, parent, now)?;
    if let Some(state) = ended {
        let at = match state {
            State::Sent => sent_at(conn, parent)?,
            _ => now,
        };
        // The parent has no other waiting child once it has ended, so
        // this moves the new one alone.
        parent_ended(conn, calendar, parent, state, at, now)?;
    }
    Ok(super::changes::current_state(conn, id, now)?.unwrap_or(State::Waiting))
}

/// When job `id` was sent: the end of its `sent` attempt (its last update
/// if its history has none, after a hand edit).
fn sent_at(conn: &Connection, id: i64) -> Result<Millis, StoreError> {
    conn.prepare_cached(
        "SELECT coalesce(
             (SELECT max(finished_at) FROM attempts WHERE job_id = ?1 AND decision = 'sent'),
             (SELECT updated_at FROM jobs WHERE id = ?1))",
    )
    .and_then(|mut s| s.query_row([id], |r| Ok(r.get_ref(0)?.as_i64().unwrap_or(0))))
    .map_err(StoreError::sqlite("reading when a parent was sent"))
}

/// Moves on the children of job `parent`, which has just become `state`
/// (at `at`, its send time when `sent`): `sent` schedules each waiting
/// child its delay after `at` and settles it against its window; `skipped`,
/// `failed`, `expired` and `cancelled` cancel every waiting descendant.
/// Any other state (`held`, say) leaves them waiting. Returns how many
/// jobs it cancelled.
pub(super) fn parent_ended(
    conn: &Connection,
    calendar: &Calendar,
    parent: i64,
    state: State,
    at: Millis,
    now: Millis,
) -> Result<u64, StoreError> {
    match state {
        State::Sent => {
            release(conn, calendar, parent, at, now)?;
            Ok(0)
        }
        State::Skipped | State::Failed | State::Expired | State::Cancelled => {
            cancel_descendants(conn, parent, state, now)
        }
        State::Scheduled | State::Sending | State::Held | State::Waiting => Ok(0),
    }
}

/// Cancels the waiting descendants of job `parent`, which ended `how`,
/// each with a `last_error` naming the job it followed and how that one
/// ended; how many. Also what a parent's end comes to where no calendar
/// is at hand (a quarantine), since cancelling needs none.
pub(super) fn cancel_descendants(
    conn: &Connection,
    parent: i64,
    how: State,
    now: Millis,
) -> Result<u64, StoreError> {
    cancel_waiting(conn, parent, how, now)
        .map_err(StoreError::sqlite("cancelling a job's follow-ups"))
}

/// [`cancel_descendants`] in SQLite's terms, for the quarantine.
pub(super) fn cancel_waiting(
    conn: &Connection,
    parent: i64,
    how: State,
    now: Millis,
) -> rusqlite::Result<u64> {
    let mut cancel = conn.prepare_cached(
        // By the parent's index: SQLite would otherwise take the state
        // index for `state = 'waiting'` and read every waiting job at each
        // level of a chain.
        "UPDATE jobs INDEXED BY jobs_by_parent
         SET state = 'cancelled', last_error = ?2, updated_at = ?3
         WHERE parent_id = ?1 AND state = 'waiting'
         RETURNING id",
    )?;
    let mut ended = vec![(parent, how)];
    let mut cancelled = 0;
    while let Some((parent, how)) = ended.pop() {
        let reason = format!("cancelled: job {parent}, which it follows, ended {how}");
        let ids: Vec<i64> = cancel
            .query_map(params![parent, reason, now], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        cancelled += ids.len() as u64;
        ended.extend(ids.into_iter().map(|id| (id, State::Cancelled)));
    }
    Ok(cancelled)
}

/// Schedules each waiting child of job `parent`, sent at `sent_at`: due
/// its delay after that, expiring its ttl after that when it gave one, and
/// settled against its window (which may expire or hold it at once). A
/// row that cannot be read is quarantined.
fn release(
    conn: &Connection,
    calendar: &Calendar,
    parent: i64,
    sent_at: Millis,
    now: Millis,
) -> Result<(), StoreError> {
    let err = || StoreError::sqlite("scheduling a job's follow-ups");
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {DUE_COLUMNS}, after_delay_ms, after_ttl_ms FROM jobs INDEXED BY jobs_by_parent
             WHERE parent_id = ?1 AND state = 'waiting'"
        ))
        .and_then(|mut s| {
            s.query_map([parent], |r| {
                Ok((
                    read_due(r)?,
                    r.get_ref(14)?.as_i64().unwrap_or(0),
                    r.get_ref(15)?.as_i64().ok(),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(err())?;
    for (row, delay_ms, ttl_ms) in rows {
        let mut job = match row {
            Ok(job) => job,
            Err((id, why)) => {
                quarantine(conn, id, &why, now)?;
                continue;
            }
        };
        let at = sent_at.saturating_add(delay_ms.max(0)).min(LATEST);
        let expires_at = job
            .expires_at
            .or_else(|| ttl_ms.map(|ttl| at.saturating_add(ttl)));
        conn.prepare_cached(
            "UPDATE jobs SET state = 'scheduled', scheduled_at = ?2, due_at = ?2,
                    expires_at = ?3, updated_at = ?4
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![job.id, at, expires_at, now]))
        .map_err(err())?;
        tracing::info!(
            job_id = job.id,
            parent,
            scheduled_at = %crate::time::format(at),
            "the job it follows was sent; scheduled"
        );
        (job.scheduled_at, job.due_at, job.expires_at) = (at, at, expires_at);
        settle(conn, calendar, &job.timing(), now, Report::Each)?;
    }
    Ok(())
}
