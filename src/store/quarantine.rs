//! Rows that cannot be read: checked before a job is sent, and moved to
//! `failed` (quarantined) instead of failing the call that met them.
//!
//! A hand edit or bit rot can leave a row whose kind or state is not one,
//! whose attempts are negative, whose channel or enquiry id would climb
//! out of its route, whose times are not integers, or whose payload is not
//! UTF-8 or not a JSON object. Such a row is read here column by column from SQLite's raw
//! values; what cannot be sent is moved to `failed` with `last_error`
//! naming the fault and one ERROR line, so the jobs beside it keep
//! flowing. The claim checks every due row it reads, and a sweep after
//! start-up checks the scheduled and held jobs in short steps, so a large
//! queue does not delay start-up.

use super::StoreError;
use super::delivery::ClaimedJob;
use super::view;
use crate::job::{Kind, State, is_channel, is_enquiry_id};
use crate::time::Millis;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row, params};
use serde_json::{Map, Value};

/// The columns [`read_due`] expects, in order.
pub(super) const DUE_COLUMNS: &str = "id, key, kind, channel, enquiry_id, scheduled_at, attempts, \
     payload, expires_at, created_at, updated_at, due_at, timezone, send_window";

/// A due row: a job ready to send, or the id of one that cannot be read
/// and why.
pub(super) type Due = Result<ClaimedJob, (i64, String)>;

/// Reads a row of [`DUE_COLUMNS`]. Fails only if SQLite itself does.
pub(super) fn read_due(r: &Row<'_>) -> rusqlite::Result<Due> {
    let id: i64 = r.get(0)?;
    let v = |i: usize| r.get_ref(i);
    let (key, kind_, channel, enquiry, at, tries, body, expires) =
        (v(1)?, v(2)?, v(3)?, v(4)?, v(5)?, v(6)?, v(7)?, v(8)?);
    let (created, updated, due, zone, window) = (v(9)?, v(10)?, v(11)?, v(12)?, v(13)?);
    let job = (|| {
        // Not needed to send, but every view shows them.
        integer(created, "created_at")?;
        integer(updated, "updated_at")?;
        Ok(ClaimedJob {
            id,
            key: optional_text(key, "key")?,
            kind: kind(kind_)?,
            channel: channel_of(channel)?,
            enquiry_id: enquiry_of(enquiry)?,
            scheduled_at: integer(at, "scheduled_at")?,
            due_at: integer(due, "due_at")?,
            timezone: optional_text(zone, "timezone")?,
            window: optional_text(window, "send_window")?,
            attempt: attempts(tries)?.saturating_add(1),
            seq: 0,
            payload: payload(body)?,
            expires_at: match expires {
                ValueRef::Null => None,
                v => Some(integer(v, "expires_at")?),
            },
        })
    })();
    Ok(job.map_err(|reason: String| (id, reason)))
}

/// Moves job `id` to `failed`, naming what is wrong with its row.
///
/// Its time columns that are not integers are set to `now` (`expires_at`
/// to none), so a quarantined row can be listed and paged like any other:
/// positions in a list are integer times. What they held was not a time.
pub(super) fn quarantine(
    conn: &Connection,
    id: i64,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    quarantine_row(conn, id, reason, now)
        .map_err(StoreError::sqlite("quarantining an unreadable job"))
}

fn quarantine_row(conn: &Connection, id: i64, reason: &str, now: Millis) -> rusqlite::Result<()> {
    let last_error = view::bounded(
        format!("quarantined: its row cannot be read ({reason})"),
        view::MAX_TEXT_BYTES,
    );
    conn.prepare_cached(
        "UPDATE jobs SET state = 'failed', last_error = ?2, updated_at = ?3 WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, last_error, now]))
    .and_then(|_| set_bad_times_to(conn, id, now))
    .and_then(|_| drop_unknown_counts(conn))?;
    // Its followers are cancelled with it, as for any failed parent (the
    // cancelling half of [`super::chain::parent_ended`]; it needs no
    // calendar, which a quarantine does not have).
    super::chain::cancel_waiting(conn, id, State::Failed, now)?;
    tracing::error!(
        job_id = id,
        reason,
        "a job's row cannot be read (was the database edited by hand?); moved to failed"
    );
    Ok(())
}

/// Sets the time columns of job `id` that are not integers to `now`
/// (`expires_at` to none), leaving its state alone: `list` meets such a
/// row in a state the claim never reads (a `sent` job, say), and cannot
/// place it in its order otherwise. What they held was not a time.
pub(super) fn repair_times(conn: &Connection, id: i64, now: Millis) -> Result<(), StoreError> {
    set_bad_times_to(conn, id, now).map_err(StoreError::sqlite("repairing a job's times"))?;
    tracing::error!(
        job_id = id,
        "a job's times are not times (was the database edited by hand?); set to now"
    );
    Ok(())
}

/// Sets each time column of job `id` that is not an integer to `now`
/// (`expires_at` to none).
fn set_bad_times_to(conn: &Connection, id: i64, now: Millis) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE jobs SET
                scheduled_at = CASE typeof(scheduled_at) WHEN 'integer' THEN scheduled_at ELSE ?2 END,
                due_at = CASE typeof(due_at) WHEN 'integer' THEN due_at ELSE ?2 END,
                created_at = CASE typeof(created_at) WHEN 'integer' THEN created_at ELSE ?2 END,
                updated_at = CASE typeof(updated_at) WHEN 'integer' THEN updated_at ELSE ?2 END,
                expires_at = CASE typeof(expires_at) WHEN 'integer' THEN expires_at ELSE NULL END
         WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, now]))
}

/// Why a job whose state `stored` is not a job state is quarantined.
fn bad_state_reason(stored: &str) -> String {
    format!("state {stored:?} is not a job state")
}

/// Quarantines job `id`, whose state `stored` is not a job state.
pub(super) fn bad_state(
    conn: &Connection,
    id: i64,
    stored: &str,
    now: Millis,
) -> Result<(), StoreError> {
    quarantine(conn, id, &bad_state_reason(stored), now)
}

/// The job states as a SQL list, for `state NOT IN (...)`.
pub(super) fn known_states() -> String {
    let states: Vec<String> = State::ALL
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    states.join(", ")
}

/// Drops the counts kept for states that are not states once no job is
/// counted in them (a quarantine moved the last one on).
fn drop_unknown_counts(conn: &Connection) -> rusqlite::Result<usize> {
    conn.prepare_cached(&format!(
        "DELETE FROM state_counts WHERE jobs = 0 AND state NOT IN ({})",
        known_states()
    ))?
    .execute([])
}

/// How many jobs of one state that is not a state a call quarantines.
const UNKNOWN_STEP: i64 = 1_000;

/// Puts right counts kept for states that are not states, which a hand
/// edit of a job's state leaves while the daemon runs: quarantines up to
/// [`UNKNOWN_STEP`] of the jobs in each such state (a seek on the state
/// index) and, once none is left, drops the count. `state_counts` holds a
/// few rows, so this costs nothing when all is well.
pub(super) fn unknown_counts(conn: &Connection, now: Millis) -> Result<(), StoreError> {
    let err = || StoreError::sqlite("checking the counts per state");
    let unknown: Vec<rusqlite::types::Value> = conn
        .prepare_cached(&format!(
            "SELECT state FROM state_counts WHERE state NOT IN ({})",
            known_states()
        ))
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(err())?;
    for state in unknown {
        let ids: Vec<(i64, String)> = conn
            .prepare_cached("SELECT id, state FROM jobs WHERE state = ?1 LIMIT ?2")
            .and_then(|mut s| {
                s.query_map(params![state, UNKNOWN_STEP], |r| {
                    Ok((r.get(0)?, view::raw_text(r.get_ref(1)?).unwrap_or_default()))
                })?
                .collect()
            })
            .map_err(err())?;
        for (id, stored) in &ids {
            bad_state(conn, *id, stored, now)?;
        }
        if (ids.len() as i64) < UNKNOWN_STEP {
            conn.prepare_cached("DELETE FROM state_counts WHERE state = ?1")
                .and_then(|mut s| s.execute([&state]))
                .map_err(err())?;
        }
    }
    Ok(())
}

/// Quarantines every job whose state is not a state, at start-up, when
/// counting found one. The `NOT IN` walks the whole state index, so it is
/// run only then.
pub(super) fn unknown_states(conn: &Connection, now: Millis) -> rusqlite::Result<()> {
    let found: Vec<(i64, String)> = conn
        .prepare(&format!(
            "SELECT id, state FROM jobs WHERE state NOT IN ({})",
            known_states()
        ))?
        .query_map([], |r| {
            Ok((r.get(0)?, view::raw_text(r.get_ref(1)?).unwrap_or_default()))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (id, stored) in found {
        quarantine_row(conn, id, &bad_state_reason(&stored), now)?;
    }
    Ok(())
}

/// The states whose jobs may still be sent, so must be readable. (Jobs in
/// `sending` are put back in one of these by recovery before the sweep.)
const SWEPT: [&str; 2] = ["scheduled", "held"];

/// Checks the scheduled and held jobs whose ids are in `(after, after +
/// span]` and quarantines those that cannot be read; returns how many it
/// quarantined and where to go on (`None` once past the highest id). It
/// walks the table in id order, which reads its pages in sequence however
/// the jobs' due times are spread, and each step reads at most `span`
/// rows.
pub(super) fn sweep_step(
    conn: &Connection,
    after: i64,
    span: i64,
    now: Millis,
) -> Result<(u64, Option<i64>), StoreError> {
    let err = || StoreError::sqlite("checking jobs for unreadable rows");
    let until = after.saturating_add(span);
    let rows = conn
        .prepare_cached(&format!(
            // NOT INDEXED: a range of the table itself, never a walk of
            // the state index (which SQLite would pick for `state IN`).
            "SELECT {DUE_COLUMNS} FROM jobs NOT INDEXED
             WHERE id > ?1 AND id <= ?2 AND state IN ('{}', '{}') ORDER BY id",
            SWEPT[0], SWEPT[1]
        ))
        .and_then(|mut s| {
            s.query_map(params![after, until], read_due)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(err())?;
    let mut quarantined = 0;
    for row in rows {
        if let Err((id, reason)) = row {
            quarantine(conn, id, &reason, now)?;
            quarantined += 1;
        }
    }
    let more: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE id > ?1)")
        .and_then(|mut s| s.query_row([until], |r| r.get(0)))
        .map_err(err())?;
    Ok((quarantined, more.then_some(until)))
}

fn text(v: ValueRef<'_>, column: &str) -> Result<String, String> {
    match v {
        ValueRef::Text(bytes) => {
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("{column} is not valid UTF-8"))
        }
        other => Err(format!("{column} is {}, not text", other.data_type())),
    }
}

fn optional_text(v: ValueRef<'_>, column: &str) -> Result<Option<String>, String> {
    match v {
        ValueRef::Null => Ok(None),
        v => text(v, column).map(Some),
    }
}

fn integer(v: ValueRef<'_>, column: &str) -> Result<i64, String> {
    match v {
        ValueRef::Integer(n) => Ok(n),
        other => Err(format!("{column} is {}, not an integer", other.data_type())),
    }
}

/// A channel as the job rules allow it: it becomes a path segment.
fn channel_of(v: ValueRef<'_>) -> Result<String, String> {
    let channel = text(v, "channel")?;
    if !is_channel(&channel) {
        return Err(format!(
            "channel {:?} is not a channel",
            view::bounded(channel, 100)
        ));
    }
    Ok(channel)
}

/// An enquiry id as the job rules allow it: digits, a path segment.
fn enquiry_of(v: ValueRef<'_>) -> Result<Option<String>, String> {
    let Some(enquiry) = optional_text(v, "enquiry_id")? else {
        return Ok(None);
    };
    if !is_enquiry_id(&enquiry) {
        return Err(format!(
            "enquiry_id {:?} is not an enquiry id",
            view::bounded(enquiry, 100)
        ));
    }
    Ok(Some(enquiry))
}

fn kind(v: ValueRef<'_>) -> Result<Kind, String> {
    let raw = match v {
        ValueRef::Text(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => return Err(format!("kind is {}, not text", other.data_type())),
    };
    Kind::parse(&raw).ok_or_else(|| format!("kind {raw:?} is not a job kind"))
}

fn attempts(v: ValueRef<'_>) -> Result<u32, String> {
    let n = integer(v, "attempts")?;
    u32::try_from(n).map_err(|_| format!("attempts is {n}"))
}

fn payload(v: ValueRef<'_>) -> Result<Map<String, Value>, String> {
    let bytes = match v {
        ValueRef::Text(bytes) => bytes,
        other => return Err(format!("payload is {}, not text", other.data_type())),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| "payload is not valid UTF-8".to_owned())?;
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("payload is not a JSON object".into()),
        Err(e) => Err(format!("payload is not JSON ({e})")),
    }
}
