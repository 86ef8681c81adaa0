//! Send windows in the store: where a job's `due_at` comes from.
//!
//! `scheduled_at` is when a job is due by its own rules: the client's time,
//! or a retry's. `due_at` is when the daemon will try it: the same instant
//! when the job's window is open then, else the window's next opening
//! (spread over its first minutes, see [`crate::window`]). Every change that
//! makes a job `scheduled` settles its `due_at` at once, so `get` shows it
//! right away; the claim settles again whatever it finds due while its
//! window is shut (a backlog released at night), so a job reaches Coax only
//! while its window is open, whichever way it got there.
//!
//! A deferral is not an attempt: it changes `due_at` and nothing else.

use super::quarantine::{DUE_COLUMNS, quarantine, read_due};
use super::{StoreError, walk};
use crate::job::{Kind, State};
use crate::time::{self, Millis};
use crate::window::{Calendar, HORIZON_DAYS, Plan};
use rusqlite::{Connection, OptionalExtension, params};

/// The search horizon for an opening, in milliseconds.
const HORIZON_MS: Millis = HORIZON_DAYS * 86_400_000;

/// What settling needs to know of a scheduled job.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing<'a> {
    pub id: i64,
    pub kind: Kind,
    pub timezone: Option<&'a str>,
    pub window: Option<&'a str>,
    pub scheduled_at: Millis,
    pub expires_at: Option<Millis>,
    /// The `due_at` stored now.
    pub due_at: Millis,
}

impl<'a> Timing<'a> {
    /// The timing of `job`, about to be stored as `id`: due at its own
    /// time until settled.
    pub(super) fn of_new(id: i64, job: &'a crate::job::NewJob) -> Timing<'a> {
        Timing {
            id,
            kind: job.kind,
            timezone: job.timezone.as_deref(),
            window: job.window.as_deref(),
            scheduled_at: job.scheduled_at,
            expires_at: job.expires_at,
            due_at: job.scheduled_at,
        }
    }
}

/// The answer for `job`, just stored as `id`, which settling left
/// `settled`.
pub(super) fn enqueued(
    id: i64,
    job: &crate::job::NewJob,
    settled: Settled,
) -> crate::protocol::Enqueued {
    let (state, due_at) = match settled {
        Settled::Due => (State::Scheduled, Some(job.scheduled_at)),
        Settled::Deferred(at) => (State::Scheduled, Some(at)),
        Settled::Expired => (State::Expired, None),
        Settled::Held => (State::Held, None),
    };
    crate::protocol::Enqueued {
        id,
        state,
        scheduled_at: time::format(job.scheduled_at),
        due_at: due_at.map(time::format),
        duplicate: false,
    }
}

/// Where settling left a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// Its window is open at its due time: `due_at` is `scheduled_at`.
    Due,
    /// Its window is shut then: `due_at` is this later instant.
    Deferred(Millis),
    /// The next opening is at or after its expiry: now `expired`.
    Expired,
    /// Its zone or window cannot be used, or its window never opens
    /// again: now `held`, for a person to decide.
    Held,
}

/// How a settle reports a deferral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Report {
    /// One INFO line per deferral: the job fell due, or was just made.
    Each,
    /// DEBUG only: the queue is being settled anew in bulk, and the walk
    /// logs one INFO line with the count (a line per job would flood the
    /// journal past its rate limit).
    Bulk,
}

/// The change to a job's row that settling it comes to.
pub(super) enum Change {
    Keep,
    SetDue(Millis),
    /// To `expired`, with this reason.
    Expire(String),
    /// To `held`, with this reason.
    Hold(String),
}

/// What settling a job against its window comes to, judged without the
/// database, so that both stores settle alike: the verdict, the change to
/// make, and the line to log once the change is made.
pub(super) struct Verdict {
    pub settled: Settled,
    pub change: Change,
    pub note: Option<Box<dyn FnOnce() + Send>>,
}

impl Verdict {
    fn new(settled: Settled, change: Change) -> Verdict {
        Verdict {
            settled,
            change,
            note: None,
        }
    }
}

/// Judges job `t`'s `due_at` against its window at `now`. A deferral is
/// logged once (when `due_at` moves). A job whose next opening is at or
/// after its expiry is expired; one whose zone or window the config no
/// longer has, or whose window does not open again, is held. Settling
/// anew in bulk leaves a job deferred to a point in its window's spread at
/// that point while the window is open, so a reload inside an opening does
/// not release the rest of its spread at once.
pub(super) fn judge(calendar: &Calendar, t: &Timing<'_>, now: Millis, report: Report) -> Verdict {
    let rule = match calendar.rule(t.timezone, t.window, t.kind) {
        Ok(rule) => rule,
        Err(e) => {
            let reason = format!("held: {e}; requeue it once the config has it, or cancel it");
            return Verdict::new(Settled::Held, Change::Hold(reason));
        }
    };
    let (id, zone, window) = (
        t.id,
        rule.zone_name().to_owned(),
        rule.window_name().to_owned(),
    );
    match rule.plan(t.id, t.scheduled_at, now) {
        Plan::Due
            if report == Report::Bulk
                && t.due_at > t.scheduled_at
                && t.due_at > now
                && t.due_at - now <= rule.spread_ms()
                && rule.is_open(t.due_at) =>
        {
            Verdict::new(Settled::Deferred(t.due_at), Change::Keep)
        }
        Plan::Due if t.due_at != t.scheduled_at => {
            Verdict::new(Settled::Due, Change::SetDue(t.scheduled_at))
        }
        Plan::Due => Verdict::new(Settled::Due, Change::Keep),
        Plan::Deferred { opening, due_at } => {
            if let Some(expiry) = t.expires_at.filter(|e| opening >= *e) {
                let reason = format!(
                    "expired: window {window} in {zone} next opens at {}, at or after its expiry {}",
                    time::format(opening),
                    time::format(expiry)
                );
                let note = move || {
                    tracing::info!(
                        job_id = id,
                        timezone = zone,
                        window,
                        opening = %time::format(opening),
                        expires_at = %time::format(expiry),
                        "expired: its window opens only at or after its expiry"
                    )
                };
                return Verdict {
                    note: Some(Box::new(note)),
                    ..Verdict::new(Settled::Expired, Change::Expire(reason))
                };
            }
            // The spread must not carry a job past its expiry.
            let due_at = match t.expires_at {
                Some(expiry) if due_at >= expiry => opening,
                _ => due_at,
            };
            if due_at == t.due_at {
                return Verdict::new(Settled::Deferred(due_at), Change::Keep);
            }
            let note = move || {
                macro_rules! deferred {
                    ($level:ident) => {
                        tracing::$level!(
                            job_id = id,
                            timezone = zone,
                            window,
                            opening = %time::format(opening),
                            due_at = %time::format(due_at),
                            "deferred to its window's next opening"
                        )
                    };
                }
                match report {
                    Report::Each => deferred!(info),
                    Report::Bulk => deferred!(debug),
                }
            };
            Verdict {
                note: Some(Box::new(note)),
                ..Verdict::new(Settled::Deferred(due_at), Change::SetDue(due_at))
            }
        }
        Plan::Never => {
            // Not open within the horizon: surely not before an expiry
            // that comes sooner.
            let horizon = t.scheduled_at.max(now).saturating_add(HORIZON_MS);
            if let Some(expiry) = t.expires_at.filter(|e| *e <= horizon) {
                let reason = format!(
                    "expired: window {window} in {zone} does not open again before its expiry {}",
                    time::format(expiry)
                );
                return Verdict::new(Settled::Expired, Change::Expire(reason));
            }
            let reason = format!(
                "held: window {window} in {zone} does not open again within ten years (its \
                 holidays keep it shut); requeue it once it does, or cancel it"
            );
            Verdict::new(Settled::Held, Change::Hold(reason))
        }
    }
}

/// Settles job `t.id`'s `due_at` against its window at `now` (see
/// [`judge`]), or expires or holds it.
pub(super) fn settle(
    conn: &Connection,
    calendar: &Calendar,
    t: &Timing<'_>,
    now: Millis,
    report: Report,
) -> Result<Settled, StoreError> {
    let verdict = judge(calendar, t, now, report);
    match &verdict.change {
        Change::Keep => {}
        Change::SetDue(due_at) => set_due(conn, t.id, *due_at)?,
        Change::Expire(reason) => expire(conn, t.id, reason, now)?,
        Change::Hold(reason) => hold(conn, t.id, reason, now)?,
    }
    if let Some(note) = verdict.note {
        note();
    }
    Ok(verdict.settled)
}

fn set_due(conn: &Connection, id: i64, due_at: Millis) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE jobs SET due_at = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id, due_at]))
        .map_err(StoreError::sqlite("setting a job's due time"))?;
    Ok(())
}

/// Moves job `id` to `expired` with `reason`, and cancels its waiting
/// followers with it: every path that expires a job comes here.
pub(super) fn expire(
    conn: &Connection,
    id: i64,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE jobs SET state = 'expired', last_error = ?2, updated_at = ?3 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, reason, now]))
    .map_err(StoreError::sqlite("expiring a job"))?;
    // Cancelling its followers needs no calendar: the cancelling half of
    // [`super::chain::parent_ended`].
    super::chain::cancel_descendants(conn, id, State::Expired, now)?;
    Ok(())
}

fn hold(conn: &Connection, id: i64, reason: &str, now: Millis) -> Result<(), StoreError> {
    tracing::warn!(job_id = id, reason, "held a job its window cannot place");
    conn.prepare_cached(
        "UPDATE jobs SET state = 'held', last_error = ?2, updated_at = ?3 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, reason, now]))
    .map_err(StoreError::sqlite("holding a job"))?;
    Ok(())
}

/// How many scheduled jobs wait for an opening (`due_at` later than
/// `scheduled_at`): the count triggers keep in `meta` (schema version 9).
pub(super) fn deferred(conn: &Connection) -> Result<u64, StoreError> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT value FROM meta WHERE name = 'deferred'")
        .and_then(|mut s| {
            s.query_row([], |r| Ok(r.get_ref(0)?.as_i64().ok()))
                .optional()
        })
        .map_err(StoreError::sqlite("reading the count of deferred jobs"))?
        .flatten();
    Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

/// Counts the deferred jobs (a walk of `jobs_deferred`) and, when the
/// count kept in `meta` disagrees (a hand edit), puts it right. Runs at
/// start-up; returns the count kept and the count found when they differed.
pub(super) fn recount(conn: &Connection) -> Result<Option<(i64, i64)>, StoreError> {
    let err = || StoreError::sqlite("counting deferred jobs");
    let counted: i64 = conn
        .query_row(
            "SELECT count(*) FROM jobs INDEXED BY jobs_deferred
             WHERE state = 'scheduled' AND due_at > scheduled_at",
            [],
            |r| r.get(0),
        )
        .map_err(err())?;
    let kept: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE name = 'deferred'", [], |r| {
            Ok(r.get_ref(0)?.as_i64().ok())
        })
        .optional()
        .map_err(err())?
        .flatten();
    if kept == Some(counted) {
        return Ok(None);
    }
    conn.execute(
        "INSERT OR REPLACE INTO meta (name, value) VALUES ('deferred', ?1)",
        [counted],
    )
    .map_err(err())?;
    Ok(Some((kept.unwrap_or(-1), counted)))
}

/// Settles up to `limit` scheduled jobs from `from` on under `calendar`
/// (after a reload or a restart changed it); returns how many it moved
/// (deferred, brought forward, expired or held) and where to go on. A row
/// that cannot be read is quarantined, as the claim would.
pub(super) fn resettle_step(
    conn: &Connection,
    calendar: &Calendar,
    from: walk::Cursor,
    limit: usize,
    now: Millis,
) -> Result<(u64, Option<walk::Cursor>), StoreError> {
    let (seen, next) = walk::step(conn, &["scheduled"], from, limit, DUE_COLUMNS, &[], |r| {
        let at = r.get_ref(11)?.as_i64().unwrap_or(Millis::MAX);
        Ok((at, read_due(r)?))
    })
    .map_err(StoreError::sqlite(
        "settling due times under a new calendar",
    ))?;
    let mut moved = 0;
    for seen in seen {
        match seen.row {
            Ok(job) => {
                let before = job.due_at;
                let settled = settle(conn, calendar, &job.timing(), now, Report::Bulk)?;
                moved += u64::from(match settled {
                    Settled::Due => before != job.scheduled_at,
                    Settled::Deferred(at) => at != before,
                    Settled::Expired | Settled::Held => true,
                });
            }
            Err((id, why)) => quarantine(conn, id, &why, now)?,
        }
    }
    Ok((moved, next))
}

/// Under a calendar with no windows, settles up to `limit` deferred jobs
/// (a walk of `jobs_deferred`; each settled job leaves it); returns how
/// many it moved and, while more may remain, where to go on.
pub(super) fn undefer_step(
    conn: &Connection,
    calendar: &Calendar,
    limit: usize,
    now: Millis,
) -> Result<(u64, Option<walk::Cursor>), StoreError> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {DUE_COLUMNS} FROM jobs INDEXED BY jobs_deferred
             WHERE state = 'scheduled' AND due_at > scheduled_at LIMIT ?1"
        ))
        .and_then(|mut s| {
            s.query_map([limit as i64], read_due)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(StoreError::sqlite(
            "settling deferred jobs under a new calendar",
        ))?;
    let mut moved = 0;
    for row in &rows {
        match row {
            Ok(job) => {
                // Nothing is deferred without a window: each one is due,
                // or held for a window the config no longer has.
                let settled = settle(conn, calendar, &job.timing(), now, Report::Bulk)?;
                if settled != Settled::Deferred(job.due_at) {
                    moved += 1;
                }
            }
            Err((id, why)) => {
                quarantine(conn, *id, why, now)?;
                moved += 1;
            }
        }
    }
    let more = rows.len() == limit && moved == limit as u64;
    Ok((moved, more.then_some(walk::Cursor::START)))
}

/// The name under which `meta` keeps the fingerprint of the calendar that
/// the stored due times were settled under.
const CALENDAR: &str = "calendar";

/// Whether the due times were settled under a calendar with this
/// fingerprint (see [`Calendar::fingerprint`]).
pub(super) fn settled_under(conn: &Connection, fingerprint: u64) -> Result<bool, StoreError> {
    let stored: Option<i64> = conn
        .prepare_cached("SELECT value FROM meta WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([CALENDAR], |r| Ok(r.get_ref(0)?.as_i64().ok()))
                .optional()
        })
        .map_err(StoreError::sqlite("reading the calendar's fingerprint"))?
        .flatten();
    // Stored as the same 64 bits, signed.
    Ok(stored == Some(fingerprint as i64))
}

/// Forgets the calendar the queue was settled under, before a walk that
/// settles it anew: a walk cut short (a reload back to the old calendar, a
/// stop, a crash) then leaves no calendar recorded, and the next start or
/// reload walks again instead of trusting due times half-moved.
pub(super) fn mark_unsettled(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM meta WHERE name = ?1")
        .and_then(|mut s| s.execute([CALENDAR]))
        .map_err(StoreError::sqlite("clearing the calendar's fingerprint"))?;
    Ok(())
}

pub(super) fn mark_settled(conn: &Connection, fingerprint: u64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute(params![CALENDAR, fingerprint as i64]))
    .map_err(StoreError::sqlite("recording the calendar's fingerprint"))?;
    Ok(())
}
