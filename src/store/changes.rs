//! Changes a caller asks of one job: cancel, reschedule, requeue. Each
//! checks the job's state, makes the change, settles the job's due time
//! against its window when it is left `scheduled`, and answers with the
//! job as it now is. Runs on the store thread like [`super::queries`].

use super::StoreError;
use super::delivery;
use super::quarantine;
use super::queries::{Lookup, get};
use super::view;
use crate::job::{Kind, State};
use crate::protocol::JobView;
use crate::time::Millis;
use crate::window::{Calendar, Plan};
use rusqlite::{Connection, OptionalExtension, params};

/// Why a change to a job was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    /// The job's state does not allow the change.
    Conflict {
        state: State,
    },
    /// The new time is at or after the job's expiry.
    PastExpiry {
        expires_at: Millis,
    },
    /// The job's window is shut from the new time until after its expiry.
    ShutUntilExpiry {
        opening: Millis,
        expires_at: Millis,
    },
}

/// The state of job `id`; a state that is not a state is quarantined on
/// the spot, so the job is then `failed`.
pub(super) fn current_state(
    conn: &Connection,
    id: i64,
    now: Millis,
) -> Result<Option<State>, StoreError> {
    let stored: Option<String> = conn
        .prepare_cached("SELECT state FROM jobs WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id], |r| {
                Ok(view::raw_text(r.get_ref(0)?).unwrap_or_default())
            })
            .optional()
        })
        .map_err(StoreError::sqlite("reading a job"))?;
    match stored {
        None => Ok(None),
        Some(text) => match State::parse(&text) {
            Some(state) => Ok(Some(state)),
            None => {
                quarantine::bad_state(conn, id, &text, now)?;
                Ok(Some(State::Failed))
            }
        },
    }
}

/// Applies `sql` (which takes ?1 = id, ?2 = now, ?3 = extra) if the job is
/// in one of `from`, settles its due time when the change leaves it
/// `scheduled`, then returns the job as it now is.
fn change(
    conn: &Connection,
    calendar: &Calendar,
    id: i64,
    from: &[State],
    sql: &str,
    now: Millis,
    extra: Option<Millis>,
) -> Result<Result<JobView, Refusal>, StoreError> {
    let Some(state) = current_state(conn, id, now)? else {
        return Ok(Err(Refusal::NotFound));
    };
    if !from.contains(&state) {
        return Ok(Err(Refusal::Conflict { state }));
    }
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute(params![id, now, extra]))
        .map_err(StoreError::sqlite("changing a job"))?;
    delivery::settle_row(conn, calendar, id, None, now)?;
    match get(conn, calendar, &Lookup::Id(id), now)? {
        Some(view) => Ok(Ok(view)),
        None => Ok(Err(Refusal::NotFound)),
    }
}

/// Cancels job `id` and, in the same call, every waiting job that follows
/// it, however deep; the job, and how many followers were cancelled.
pub fn cancel(
    conn: &Connection,
    calendar: &Calendar,
    id: i64,
    now: Millis,
) -> Result<Result<(JobView, u64), Refusal>, StoreError> {
    let view = change(
        conn,
        calendar,
        id,
        &[State::Scheduled, State::Held, State::Waiting],
        "UPDATE jobs SET state = 'cancelled', updated_at = ?2 WHERE id = ?1 AND ?3 IS NULL",
        now,
        None,
    )?;
    match view {
        Ok(view) => {
            let children =
                super::chain::parent_ended(conn, calendar, id, State::Cancelled, now, now)?;
            Ok(Ok((view, children)))
        }
        Err(refusal) => Ok(Err(refusal)),
    }
}

/// Moves scheduled job `id` to `at`. Refused when `at`, or the opening of
/// the job's window after it, is at or after the job's expiry: the move
/// would only expire it.
pub fn reschedule(
    conn: &Connection,
    calendar: &Calendar,
    id: i64,
    at: Millis,
    now: Millis,
) -> Result<Result<JobView, Refusal>, StoreError> {
    type Row = (
        Option<Millis>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let row: Option<Row> = conn
        .prepare_cached("SELECT expires_at, kind, timezone, send_window FROM jobs WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id], |r| {
                let text = |i| -> rusqlite::Result<_> { Ok(view::raw_text(r.get_ref(i)?)) };
                Ok((r.get_ref(0)?.as_i64().ok(), text(1)?, text(2)?, text(3)?))
            })
            .optional()
        })
        .map_err(StoreError::sqlite("reading a job"))?;
    if let Some((Some(expiry), kind, zone, window)) = row {
        if at >= expiry {
            return Ok(Err(Refusal::PastExpiry { expires_at: expiry }));
        }
        let rule = kind
            .as_deref()
            .and_then(Kind::parse)
            .and_then(|kind| calendar.rule(zone.as_deref(), window.as_deref(), kind).ok());
        if let Some(rule) = rule
            && let Plan::Deferred { opening, .. } = rule.plan(id, at, now)
            && opening >= expiry
        {
            return Ok(Err(Refusal::ShutUntilExpiry {
                opening,
                expires_at: expiry,
            }));
        }
    }
    change(
        conn,
        calendar,
        id,
        &[State::Scheduled],
        "UPDATE jobs SET scheduled_at = ?3, updated_at = ?2 WHERE id = ?1",
        now,
        Some(at),
    )
}

/// Back to `scheduled`, due now (or at its window's next opening), with a
/// fresh set of attempts; the history stays.
pub fn requeue(
    conn: &Connection,
    calendar: &Calendar,
    id: i64,
    now: Millis,
) -> Result<Result<JobView, Refusal>, StoreError> {
    change(
        conn,
        calendar,
        id,
        &[State::Failed, State::Held],
        "UPDATE jobs SET state = 'scheduled', scheduled_at = ?2, attempts = 0, updated_at = ?2
         WHERE id = ?1 AND ?3 IS NULL",
        now,
        None,
    )
}
