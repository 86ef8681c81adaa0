//! How a row is shown: the view `get` and `list` answer with, read
//! leniently and bounded in size.
//!
//! A row may hold anything after a hand edit, so every column is read from
//! SQLite's raw value and shown as it is stored: a time that is not an
//! integer as its stored text, a count that is not one as 0, a JSON column
//! that is not JSON text as null. Only a state that is not a state cannot
//! be shown; [`read`] reports it, and the caller quarantines the row (see
//! [`super::quarantine`]).
//!
//! Every variable-size field has a ceiling, so a view's size has one too,
//! far below an answer line's 8 MiB whatever the row holds: text fields at
//! [`MAX_TEXT_BYTES`], `result` at [`MAX_RESULT_BYTES`], the history at its
//! last [`MAX_HISTORY`] tries. The payload is the exception: it is left out
//! whole (see [`omit_payload`]) when the view would not fit.

use super::StoreError;
use crate::job::State;
use crate::protocol::{AttemptView, JobView};
use crate::time;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};
use serde_json::value::RawValue;

/// The columns [`read`] expects, in order.
pub(super) const JOB_COLUMNS: &str = "id, key, kind, channel, enquiry_id, scheduled_at, state, \
     attempts, created_at, updated_at, last_error, result, payload, expires_at, due_at, timezone, \
     send_window, tags, parent_id";

/// The most a text field of a view (or a stored error) takes, in bytes.
pub const MAX_TEXT_BYTES: usize = 4 * 1024;

/// The most a view's `result` (or a stored one) takes as JSON, in bytes.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

/// How many tries of its history a view shows at most: the latest.
pub const MAX_HISTORY: usize = 100;

/// A row read for a view.
pub(super) enum Read {
    View(Box<JobView>),
    /// The row's state is not a job state: its id and the state as stored.
    BadState(i64, String),
}

/// `text` cut to at most `max` bytes on a character boundary, with a
/// marker saying how long it was.
pub fn bounded(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated: {} bytes]", &text[..end], text.len())
}

/// A JSON text of at most [`MAX_RESULT_BYTES`]: itself, or else a JSON
/// string holding its start and the truncation marker.
pub fn bounded_json(json: String) -> String {
    if json.len() <= MAX_RESULT_BYTES {
        return json;
    }
    serde_json::Value::String(bounded(json, MAX_TEXT_BYTES)).to_string()
}

/// Any stored value as text: text (invalid bytes replaced) or a number.
pub(super) fn raw_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(x) => Some(x.to_string()),
        ValueRef::Null => None,
    }
}

/// A stored time: RFC 3339 if it is an integer, else what is stored.
pub(super) fn time_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Integer(ms) => Some(time::format(ms)),
        other => raw_text(other).map(|t| bounded(t, MAX_TEXT_BYTES)),
    }
}

/// A stored tag list: its tags, or none if it is not a JSON array of
/// strings (a hand edit). Tags are bounded at enqueue, and this is bounded
/// like every text field.
fn tags(v: ValueRef<'_>) -> Vec<String> {
    let ValueRef::Text(bytes) = v else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(bytes);
    serde_json::from_str::<Vec<String>>(&text)
        .map(|tags| {
            tags.into_iter()
                .take(crate::job::MAX_TAGS)
                .map(|t| bounded(t, MAX_TEXT_BYTES))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a row of [`JOB_COLUMNS`]. Fails only if SQLite itself does.
pub(super) fn read(r: &Row<'_>) -> rusqlite::Result<Read> {
    let text = |i: usize| -> rusqlite::Result<Option<String>> {
        Ok(raw_text(r.get_ref(i)?).map(|t| bounded(t, MAX_TEXT_BYTES)))
    };
    let json = |i: usize| -> rusqlite::Result<Option<Box<RawValue>>> {
        Ok(match r.get_ref(i)? {
            ValueRef::Text(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|t| RawValue::from_string(t.to_owned()).ok()),
            _ => None,
        })
    };
    let id: i64 = r.get(0)?;
    let stored = raw_text(r.get_ref(6)?).unwrap_or_default();
    let Some(state) = State::parse(&stored) else {
        return Ok(Read::BadState(id, bounded(stored, MAX_TEXT_BYTES)));
    };
    let result = json(11)?.map(|raw| {
        let raw = raw.get().to_owned();
        // Only JSON text reaches here, and a bounded JSON text is JSON.
        RawValue::from_string(bounded_json(raw)).unwrap_or_else(|_| null())
    });
    Ok(Read::View(Box::new(JobView {
        id,
        key: text(1)?,
        kind: text(2)?.unwrap_or_default(),
        channel: text(3)?.unwrap_or_default(),
        enquiry_id: text(4)?,
        scheduled_at: time_text(r.get_ref(5)?).unwrap_or_default(),
        // Only a scheduled job will be tried; the column keeps the last
        // due time of the others, as their place in the walks.
        due_at: match state {
            State::Scheduled => time_text(r.get_ref(14)?),
            _ => None,
        },
        // As stored: `get` puts the config's defaults in for those unset.
        timezone: text(15)?,
        window: text(16)?,
        tags: tags(r.get_ref(17)?),
        after: r.get_ref(18)?.as_i64().ok(),
        // Filled in by [`children`] where a view is shown.
        children: Vec::new(),
        state,
        attempts: r.get_ref(7)?.as_i64().unwrap_or(0),
        created_at: time_text(r.get_ref(8)?).unwrap_or_default(),
        updated_at: time_text(r.get_ref(9)?).unwrap_or_default(),
        last_error: text(10)?,
        result,
        payload: json(12)?.unwrap_or_else(null),
        payload_omitted: None,
        expires_at: time_text(r.get_ref(13)?),
        history: Vec::new(),
    })))
}

/// The latest [`MAX_HISTORY`] tries of job `id`, oldest first.
pub(super) fn history(conn: &Connection, id: i64) -> Result<Vec<AttemptView>, StoreError> {
    let mut tries = conn
        .prepare_cached(
            "SELECT seq, started_at, finished_at, status, error, decision, ambiguous, latency_ms, node
             FROM attempts WHERE job_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(rusqlite::params![id, MAX_HISTORY as i64], |r| {
                let text = |i: usize| -> rusqlite::Result<Option<String>> {
                    Ok(raw_text(r.get_ref(i)?).map(|t| bounded(t, MAX_TEXT_BYTES)))
                };
                let number =
                    |i: usize| -> rusqlite::Result<Option<i64>> { Ok(r.get_ref(i)?.as_i64().ok()) };
                Ok(AttemptView {
                    attempt: number(0)?.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
                    started_at: time_text(r.get_ref(1)?).unwrap_or_default(),
                    finished_at: time_text(r.get_ref(2)?),
                    status: number(3)?.and_then(|n| u16::try_from(n).ok()),
                    error: text(4)?,
                    decision: text(5)?,
                    ambiguous: number(6)?.is_some_and(|n| n != 0),
                    latency_ms: number(7)?.and_then(|ms| u64::try_from(ms).ok()),
                    node: text(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(StoreError::sqlite("reading attempt history"))?;
    tries.reverse();
    Ok(tries)
}

/// The ids of the jobs that follow job `id`, at most
/// [`crate::protocol::MAX_CHILDREN_SHOWN`], in the order enqueued.
pub(super) fn children(conn: &Connection, id: i64) -> Result<Vec<i64>, StoreError> {
    conn.prepare_cached(
        "SELECT id FROM jobs INDEXED BY jobs_by_parent WHERE parent_id = ?1 ORDER BY id LIMIT ?2",
    )
    .and_then(|mut s| {
        s.query_map(
            rusqlite::params![id, crate::protocol::MAX_CHILDREN_SHOWN as i64],
            |r| r.get(0),
        )?
        .collect()
    })
    .map_err(StoreError::sqlite("reading a job's children"))
}

/// The length of `view` as JSON, counted without writing it out.
pub(super) fn view_bytes(view: &JobView) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serialising strings, numbers and raw JSON cannot fail.
    let _ = serde_json::to_writer(&mut count, view);
    count.0
}

/// Leaves the payload out of a view too large for one answer line (only a
/// row written before payloads were capped can be), saying how large it was.
pub(super) fn omit_payload(view: &mut JobView) {
    view.payload_omitted = Some(view.payload.get().len() as u64);
    view.payload = null();
}

pub(super) fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}
