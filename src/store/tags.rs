//! Jobs by tag: cancelling or moving every job of a tag in one call, and
//! so in one transaction. The jobs of a tag are found through `job_tags`
//! (schema version 6) with one seek, so the cost is the number of jobs with
//! that tag, however large the queue.

use super::StoreError;
use super::chain;
use super::deferral::{self, Report, settle};
use super::quarantine::{DUE_COLUMNS, quarantine, read_due};
use crate::job::{LATEST, State};
use crate::time::{self, Millis};
use crate::window::Calendar;
use rusqlite::{Connection, params};

/// What moving a tag's jobs did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Jobs moved (due now when the move took them into the past).
    pub rescheduled: u64,
    /// Jobs whose new time was at or after their expiry: now `expired`.
    pub expired: u64,
}

/// Cancels every `scheduled`, `held` and `waiting` job with `tag`, then
/// the waiting followers of each (see [`super::chain`]); how many of each.
pub fn cancel(
    conn: &Connection,
    calendar: &Calendar,
    tag: &str,
    now: Millis,
) -> Result<(u64, u64), StoreError> {
    let ids: Vec<i64> = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'cancelled', updated_at = ?2
             WHERE id IN (SELECT job_id FROM job_tags WHERE tag = ?1)
               AND state IN ('scheduled', 'held', 'waiting')
             RETURNING id",
        )
        .and_then(|mut s| s.query_map(params![tag, now], |r| r.get(0))?.collect())
        .map_err(StoreError::sqlite("cancelling jobs by tag"))?;
    let mut children = 0;
    for id in &ids {
        children += chain::parent_ended(conn, calendar, *id, State::Cancelled, now, now)?;
    }
    Ok((ids.len() as u64, children))
}

/// Moves every `scheduled` job with `tag` by `by_ms` (signed). A job moved
/// into the past is due now; one moved to or past its expiry is expired.
/// Each moved job's due time is settled against its window. A row that
/// cannot be read is quarantined. A move that would take a job past the
/// last instant a job may name (9999-12-31) moves none: it is refused
/// with the first such job's id.
pub fn reschedule(
    conn: &Connection,
    calendar: &Calendar,
    tag: &str,
    by_ms: i64,
    now: Millis,
) -> Result<Result<Moved, i64>, StoreError> {
    let err = || StoreError::sqlite("rescheduling jobs by tag");
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {DUE_COLUMNS} FROM job_tags t CROSS JOIN jobs j ON j.id = t.job_id
             WHERE t.tag = ?1 AND j.state = 'scheduled'"
        ))
        .and_then(|mut s| {
            s.query_map([tag], read_due)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(err())?;
    let past_latest = rows.iter().flatten().find(|job| {
        job.scheduled_at
            .checked_add(by_ms)
            .is_none_or(|at| at > LATEST)
    });
    if let Some(job) = past_latest {
        return Ok(Err(job.id));
    }
    let mut moved = Moved::default();
    for row in rows {
        let mut job = match row {
            Ok(job) => job,
            Err((id, why)) => {
                quarantine(conn, id, &why, now)?;
                continue;
            }
        };
        // Checked above: at most LATEST; into the past, due now.
        let at = job.scheduled_at.saturating_add(by_ms).max(now);
        if let Some(expiry) = job.expires_at.filter(|e| at >= *e) {
            let reason = format!(
                "expired: moved by tag to {}, at or after its expiry {}",
                time::format(at),
                time::format(expiry)
            );
            deferral::expire(conn, job.id, &reason, now)?;
            moved.expired += 1;
            continue;
        }
        conn.prepare_cached("UPDATE jobs SET scheduled_at = ?2, updated_at = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![job.id, at, now]))
            .map_err(err())?;
        job.scheduled_at = at;
        settle(conn, calendar, &job.timing(), now, Report::Each)?;
        moved.rescheduled += 1;
    }
    Ok(Ok(moved))
}
