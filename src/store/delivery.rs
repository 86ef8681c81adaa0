//! The SQL of delivery: claiming due jobs, recording how each attempt
//! ended, and recovering sends a crash interrupted. Runs on the store thread
//! like [`super::queries`].

use super::deferral::{Report, Settled, Timing, settle};
use super::quarantine::{DUE_COLUMNS, quarantine, read_due};
use super::view;
use super::{Recovered, StoreError};
use crate::config::OnAmbiguous;
use crate::job::{Kind, State};
use crate::policy::Decision;
use crate::time::Millis;
use crate::window::Calendar;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

/// Jobs just moved to `sending`, and when the next one after them is due.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub jobs: Vec<ClaimedJob>,
    /// Due jobs found past their expiry and moved to `expired` instead.
    pub expired: Vec<ClaimedJob>,
    pub next_due: Option<Millis>,
}

/// A job in `sending`, with what the dispatcher needs to send it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: i64,
    pub key: Option<String>,
    pub kind: Kind,
    pub channel: String,
    pub enquiry_id: Option<String>,
    pub scheduled_at: Millis,
    pub payload: Map<String, Value>,
    /// Tries counted against the retry limit, this one included.
    pub attempt: u32,
    /// This try's number in the history, counting every try.
    pub seq: u32,
    pub expires_at: Option<Millis>,
    /// When the daemon was to try it: `scheduled_at`, or its window's
    /// opening after that.
    pub due_at: Millis,
    /// The zone and window the job named; `None` for the config's default.
    pub timezone: Option<String>,
    pub window: Option<String>,
}

impl ClaimedJob {
    pub(super) fn timing(&self) -> Timing<'_> {
        Timing {
            id: self.id,
            kind: self.kind,
            timezone: self.timezone.as_deref(),
            window: self.window.as_deref(),
            scheduled_at: self.scheduled_at,
            expires_at: self.expires_at,
            due_at: self.due_at,
        }
    }
}

/// The state a decision moves its job to.
pub(super) fn state_after(decision: &Decision) -> State {
    match decision {
        Decision::Sent => State::Sent,
        Decision::Skipped { .. } => State::Skipped,
        Decision::Failed { .. } => State::Failed,
        Decision::Retry { .. } | Decision::PauseForKey => State::Scheduled,
        Decision::Hold { .. } => State::Held,
        Decision::Expired { .. } => State::Expired,
    }
}

/// The reason recorded with a decision, in words a person reads.
pub(super) fn reason_for(decision: &Decision, status: Option<u16>) -> Option<String> {
    match decision {
        Decision::PauseForKey => Some(format!(
            "Coax rejected the API key (HTTP {}); not counted as an attempt",
            status.unwrap_or(0)
        )),
        other => other.reason().map(str::to_owned),
    }
}

/// The record of one finished attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub id: i64,
    pub seq: u32,
    pub finished_at: Millis,
    pub status: Option<u16>,
    /// The transport error, or the reason for the decision.
    pub error: Option<String>,
    pub ambiguous: bool,
    pub latency_ms: u64,
    /// `{"status":…,"message":…,"body":…}` when Coax answered.
    pub result: Option<Value>,
    /// What happens to the job next.
    pub decision: Decision,
}

/// The most due jobs [`overdue`] counts: counting a million index entries
/// takes about 90 ms, longer than any one store call may hold the others.
pub const MAX_OVERDUE_COUNT: u64 = 100_000;

/// Scheduled jobs already due at `now` (by `due_at`): how many (at most
/// [`MAX_OVERDUE_COUNT`]), and the oldest due time.
pub fn overdue(conn: &Connection, now: Millis) -> Result<(u64, Option<Millis>), StoreError> {
    let err = || StoreError::sqlite("counting due jobs");
    let due: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM jobs
             WHERE state = 'scheduled' AND due_at <= ?1 LIMIT ?2)",
        )
        .and_then(|mut s| s.query_row(params![now, MAX_OVERDUE_COUNT as i64], |r| r.get(0)))
        .map_err(err())?;
    let oldest: Option<Millis> = conn
        .prepare_cached("SELECT min(due_at) FROM jobs WHERE state = 'scheduled' AND due_at <= ?1")
        .and_then(|mut s| s.query_row([now], |r| r.get(0)))
        .map_err(err())?;
    Ok((u64::try_from(due).unwrap_or(0), oldest))
}

/// The earliest `due_at` among scheduled jobs. SQLite sorts integers
/// before text, so a time that is not an integer (a hand edit, which the
/// sweep quarantines) is the minimum only when no other job is scheduled;
/// it is then no due time.
pub fn next_due(conn: &Connection) -> Result<Option<Millis>, StoreError> {
    conn.prepare_cached("SELECT min(due_at) FROM jobs WHERE state = 'scheduled'")
        .and_then(|mut s| s.query_row([], |r| Ok(r.get_ref(0)?.as_i64().ok())))
        .map_err(StoreError::sqlite("finding the next due job"))
}

/// Moves up to `limit` jobs due at `now` to `sending`, in order of
/// `due_at`. A due job past its expiry is expired instead; one whose
/// window is shut at `now` (a backlog released at night, or a reload that
/// narrowed its window) is settled to its next opening and not claimed.
pub fn claim(
    conn: &Connection,
    calendar: &Calendar,
    node: &str,
    now: Millis,
    limit: usize,
) -> Result<Claimed, StoreError> {
    let err = || StoreError::sqlite("claiming due jobs");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut due = conn
        .prepare_cached(&format!(
            "SELECT {DUE_COLUMNS}
             FROM jobs WHERE state = 'scheduled' AND due_at <= ?1
             ORDER BY due_at, id LIMIT ?2"
        ))
        .map_err(err())?;
    let rows = due
        .query_map(params![now, limit], read_due)
        .map_err(err())?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(err())?;
    drop(due);
    // A row that cannot be read must not stop the rows beside it.
    let mut readable = Vec::with_capacity(rows.len());
    for row in rows {
        match row {
            Ok(job) => readable.push(job),
            Err((id, reason)) => quarantine(conn, id, &reason, now)?,
        }
    }
    let rows = readable;

    let mut mark = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'sending', attempts = attempts + 1, updated_at = ?2 WHERE id = ?1",
        )
        .map_err(err())?;
    let mut open = conn
        .prepare_cached(
            "INSERT INTO attempts (job_id, seq, started_at, node)
             VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM attempts WHERE job_id = ?1), ?2, ?3)
             RETURNING seq",
        )
        .map_err(err())?;
    let (expired, jobs): (Vec<ClaimedJob>, Vec<ClaimedJob>) = rows
        .into_iter()
        .partition(|job| job.expires_at.is_some_and(|at| at <= now));
    for job in &expired {
        super::deferral::expire(conn, job.id, "expired before it could be sent", now)?;
    }
    // The window is judged now, not when the due time was settled: the
    // job may have waited out a pause, or the calendar may have changed.
    let mut sendable = Vec::with_capacity(jobs.len());
    for job in jobs {
        let open_now = calendar
            .rule(job.timezone.as_deref(), job.window.as_deref(), job.kind)
            .is_ok_and(|rule| rule.is_open(now));
        if open_now {
            sendable.push(job);
        } else {
            // Shut at `now`, and `scheduled_at <= due_at <= now`: settling
            // moves it to an opening after now, expires it or holds it.
            settle(conn, calendar, &job.timing(), now, Report::Each)?;
        }
    }
    let mut jobs = sendable;
    for job in &mut jobs {
        mark.execute(params![job.id, now]).map_err(err())?;
        job.seq = open
            .query_row(params![job.id, now, node], |r| r.get(0))
            .map_err(err())?;
    }
    Ok(Claimed {
        jobs,
        expired,
        next_due: next_due(conn)?,
    })
}

/// Records attempt `f` and moves its job on. A retry's time, and a job
/// given back by a key pause, is settled against the job's window at once
/// (see [`super::deferral`]).
pub fn finish(conn: &Connection, calendar: &Calendar, f: &Finish) -> Result<(), StoreError> {
    let err = || StoreError::sqlite("recording an attempt");
    // Coax's words are stored bounded, so no answer can grow a row (and
    // the views of it) without limit, however often the job is requeued.
    let bound = |text: &str| view::bounded(text.to_owned(), view::MAX_TEXT_BYTES);
    let reason = reason_for(&f.decision, f.status).map(|r| bound(&r));
    let error = f.error.as_deref().map(bound);
    conn.prepare_cached(
        "UPDATE attempts SET finished_at = ?3, status = ?4, error = ?5, decision = ?6,
                ambiguous = ?7, latency_ms = ?8
         WHERE job_id = ?1 AND seq = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            f.id,
            f.seq,
            f.finished_at,
            f.status,
            error.as_deref().or(reason.as_deref()),
            f.decision.label(),
            f.ambiguous,
            i64::try_from(f.latency_ms).unwrap_or(i64::MAX),
        ])
    })
    .map_err(err())?;

    let retry_at = match &f.decision {
        Decision::Retry { at, .. } => Some(*at),
        _ => None,
    };
    // A rejected key is not the job's fault: the attempt is given back.
    let give_back = f.decision == Decision::PauseForKey;
    let result = f.result.as_ref().map(|r| view::bounded_json(r.to_string()));
    let state = state_after(&f.decision);
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET state = ?2, scheduled_at = coalesce(?3, scheduled_at),
                attempts = attempts - ?4, last_error = coalesce(?5, last_error),
                result = coalesce(?6, result), updated_at = ?7
         WHERE id = ?1 AND state = 'sending'",
        )
        .and_then(|mut s| {
            s.execute(params![
                f.id,
                state.as_str(),
                retry_at,
                i64::from(give_back),
                reason,
                result,
                f.finished_at,
            ])
        })
        .map_err(err())?;
    // A job given back by a key pause is scheduled again too, and may
    // have come back after its window shut.
    if retry_at.is_some() || give_back {
        settle_row(conn, calendar, f.id, retry_at, f.finished_at)?;
    }
    // Its followers move on in this same transaction; a send's time is
    // the end of the attempt that sent it.
    if changed > 0 {
        let at = f.finished_at;
        super::chain::parent_ended(conn, calendar, f.id, state, at, at)?;
    }
    Ok(())
}

/// Settles the `due_at` of scheduled job `id` (with its `scheduled_at`
/// taken as `at` when given), reading the row as the claim does; a row
/// that cannot be read is quarantined. Returns `None` when the job is
/// gone or not scheduled.
pub(super) fn settle_row(
    conn: &Connection,
    calendar: &Calendar,
    id: i64,
    at: Option<Millis>,
    now: Millis,
) -> Result<Option<Settled>, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {DUE_COLUMNS} FROM jobs WHERE id = ?1 AND state = 'scheduled'"
        ))
        .and_then(|mut s| s.query_row([id], read_due).optional())
        .map_err(StoreError::sqlite("reading a job's window"))?;
    match row {
        None => Ok(None),
        Some(Err((id, why))) => {
            quarantine(conn, id, &why, now)?;
            Ok(None)
        }
        Some(Ok(mut job)) => {
            if let Some(at) = at {
                job.scheduled_at = at;
            }
            settle(conn, calendar, &job.timing(), now, Report::Each).map(Some)
        }
    }
}

/// Puts jobs left in `sending` by a crash back in line, marking their open
/// attempts as ambiguous: the request may have reached Coax.
///
/// Each row is read as the claim reads it, and one that cannot be read is
/// quarantined rather than stopping start-up. Under `retry`, a job that
/// has used up its `max_attempts` goes to `failed` instead: sending it
/// again would be one try more than allowed. Under `hold` every job is
/// held, since only an operator's `requeue` sends it again.
pub fn recover(
    conn: &Connection,
    calendar: &Calendar,
    now: Millis,
    policy: OnAmbiguous,
    max_attempts: u32,
) -> Result<Vec<Recovered>, StoreError> {
    let (state, decision) = match policy {
        OnAmbiguous::Retry => (State::Scheduled, "retry"),
        OnAmbiguous::Hold => (State::Held, "held"),
    };
    let reason = "interrupted: the daemon stopped before Coax answered, so it may have been sent";
    let used_up = "interrupted: the daemon stopped before Coax answered, so it may have been sent; \
                   no attempts left";
    let during = "recovering interrupted sends";
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(StoreError::sqlite(during))?;
    let work = || -> Result<Vec<Recovered>, StoreError> {
        let rows = conn
            .prepare(&format!(
                "SELECT {DUE_COLUMNS} FROM jobs WHERE state = 'sending'"
            ))
            .and_then(|mut s| {
                s.query_map([], read_due)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(StoreError::sqlite(during))?;
        let mut put_back = conn
            .prepare("UPDATE jobs SET state = ?2, last_error = ?3, updated_at = ?4 WHERE id = ?1")
            .map_err(StoreError::sqlite(during))?;
        let mut recovered = Vec::with_capacity(rows.len());
        for row in rows {
            let job = match row {
                Ok(job) => job,
                Err((id, why)) => {
                    quarantine(conn, id, &why, now)?;
                    continue;
                }
            };
            // `attempt` counts this try too; the row holds the tries made.
            let tries = job.attempt.saturating_sub(1);
            let failed = policy == OnAmbiguous::Retry && tries >= max_attempts;
            let (to, why) = if failed {
                (State::Failed, used_up)
            } else {
                (state, reason)
            };
            put_back
                .execute(params![job.id, to.as_str(), why, now])
                .map_err(StoreError::sqlite(during))?;
            if to == State::Scheduled {
                settle(conn, calendar, &job.timing(), now, Report::Each)?;
            }
            super::chain::parent_ended(conn, calendar, job.id, to, now, now)?;
            recovered.push(Recovered {
                id: job.id,
                key: job.key,
                attempt: tries,
                held: to == State::Held,
                failed,
            });
        }
        conn.execute(
            "UPDATE attempts SET finished_at = ?1, error = ?2, decision = ?3, ambiguous = 1
             WHERE finished_at IS NULL",
            params![now, reason, decision],
        )
        .map_err(StoreError::sqlite(during))?;
        Ok(recovered)
    };
    match work() {
        Ok(recovered) => {
            conn.execute_batch("COMMIT")
                .map_err(StoreError::sqlite(during))?;
            Ok(recovered)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}
