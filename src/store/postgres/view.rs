//! How a job is shown on PostgreSQL: the view `get` and `list` answer
//! with, as SQLite's [`super::super::view`] and `queries::get` build it,
//! with the same bounds on every variable-size field.
//!
//! Columns are typed here, so a time is always a time; a hand edit can
//! still leave a state that is not a state (set aside on the spot, as
//! SQLite's quarantine does) or text that is not JSON where JSON belongs
//! (shown as null, as on SQLite).

use super::chain::current_state;
use super::pg_error;
use super::pool::Tx;
use crate::job::{MAX_TAGS, State};
use crate::protocol::{AttemptView, JobView, Lookup, MAX_CHILDREN_SHOWN};
use crate::store::StoreError;
use crate::store::listing::VIEWS_BUDGET;
use crate::store::queries::show_rule;
use crate::store::view::{
    MAX_HISTORY, MAX_TEXT_BYTES, bounded, bounded_json, null, omit_payload, view_bytes,
};
use crate::time::{self, Millis};
use crate::window::Calendar;
use serde_json::value::RawValue;
use tokio_postgres::Row;

/// The columns [`read`] expects, in order (as SQLite's).
pub(super) const JOB_COLUMNS: &str = "id, key, kind, channel, enquiry_id, scheduled_at, state, \
     attempts, created_at, updated_at, last_error, result, payload, expires_at, due_at, timezone, \
     send_window, tags, parent_id";

/// A row read for a view: the view, or the id and state of a row whose
/// state is not a job state.
enum Read {
    View(Box<JobView>),
    BadState(i64),
}

/// Job `lookup` as a view, with its history and children and the zone
/// and window that govern it; as SQLite's `queries::get`. A row whose
/// state is not a state is set aside on the spot and shown as it then is.
pub(super) async fn get(
    tx: &Tx<'_>,
    calendar: &Calendar,
    lookup: &Lookup,
    now: Millis,
) -> Result<Option<JobView>, StoreError> {
    let mut row = read_one(tx, lookup).await?;
    if let Some(Read::BadState(id)) = &row {
        // Sets it aside, as the state read anywhere else would.
        current_state(tx, *id, "", now).await?;
        row = read_one(tx, lookup).await?;
    }
    match row {
        None | Some(Read::BadState(_)) => Ok(None),
        Some(Read::View(view)) => {
            let mut view = *view;
            show_rule(&mut view, calendar);
            view.history = history(tx, view.id).await?;
            view.children = children(tx, view.id).await?;
            if view_bytes(&view) > VIEWS_BUDGET {
                omit_payload(&mut view);
            }
            Ok(Some(view))
        }
    }
}

async fn read_one(tx: &Tx<'_>, lookup: &Lookup) -> Result<Option<Read>, StoreError> {
    let during = "reading a job";
    let row = match lookup {
        Lookup::Id(id) => {
            tx.query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
                &[id],
            )
            .await
        }
        Lookup::Key(key) => {
            tx.query_opt(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE key = $1"),
                &[key],
            )
            .await
        }
    }
    .map_err(pg_error(during))?;
    row.map(|r| read(&r)).transpose().map_err(pg_error(during))
}

/// A stored JSON text as raw JSON, or none when it is not JSON.
fn json(text: Option<String>) -> Option<Box<RawValue>> {
    text.and_then(|t| RawValue::from_string(t).ok())
}

/// A stored tag list: its tags, or none if it is not a JSON array of
/// strings (a hand edit), each bounded like every text field.
fn tags(text: Option<String>) -> Vec<String> {
    text.and_then(|t| serde_json::from_str::<Vec<String>>(&t).ok())
        .map(|tags| {
            tags.into_iter()
                .take(MAX_TAGS)
                .map(|t| bounded(t, MAX_TEXT_BYTES))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a row of [`JOB_COLUMNS`].
fn read(r: &Row) -> Result<Read, tokio_postgres::Error> {
    let text = |i: usize| -> Result<Option<String>, tokio_postgres::Error> {
        Ok(r.try_get::<_, Option<String>>(i)?
            .map(|t| bounded(t, MAX_TEXT_BYTES)))
    };
    let id: i64 = r.try_get(0)?;
    let stored: String = r.try_get(6)?;
    let Some(state) = State::parse(&stored) else {
        return Ok(Read::BadState(id));
    };
    let result = json(r.try_get(11)?).map(|raw| {
        let raw = raw.get().to_owned();
        // Only JSON text reaches here, and a bounded JSON text is JSON.
        RawValue::from_string(bounded_json(raw)).unwrap_or_else(|_| null())
    });
    let at = |i: usize| -> Result<String, tokio_postgres::Error> {
        Ok(time::format(r.try_get::<_, i64>(i)?))
    };
    let due_at = match state {
        // Only a scheduled job will be tried.
        State::Scheduled => Some(at(14)?),
        _ => None,
    };
    Ok(Read::View(Box::new(JobView {
        id,
        key: text(1)?,
        kind: text(2)?.unwrap_or_default(),
        channel: text(3)?.unwrap_or_default(),
        enquiry_id: text(4)?,
        scheduled_at: at(5)?,
        due_at,
        timezone: text(15)?,
        window: text(16)?,
        tags: tags(r.try_get(17)?),
        after: r.try_get(18)?,
        children: Vec::new(),
        state,
        attempts: r.try_get(7)?,
        created_at: at(8)?,
        updated_at: at(9)?,
        last_error: text(10)?,
        result,
        payload: json(r.try_get(12)?).unwrap_or_else(null),
        payload_omitted: None,
        expires_at: r.try_get::<_, Option<i64>>(13)?.map(time::format),
        history: Vec::new(),
    })))
}

/// The latest [`MAX_HISTORY`] tries of job `id`, oldest first.
async fn history(tx: &Tx<'_>, id: i64) -> Result<Vec<AttemptView>, StoreError> {
    let during = "reading attempt history";
    let rows = tx
        .query(
            "SELECT seq, started_at, finished_at, status, error, decision, ambiguous, latency_ms,
                    node
             FROM attempts WHERE job_id = $1 ORDER BY seq DESC LIMIT $2",
            &[&id, &(MAX_HISTORY as i64)],
        )
        .await
        .map_err(pg_error(during))?;
    let mut tries = rows
        .iter()
        .map(|r| {
            let text = |i: usize| -> Result<Option<String>, tokio_postgres::Error> {
                Ok(r.try_get::<_, Option<String>>(i)?
                    .map(|t| bounded(t, MAX_TEXT_BYTES)))
            };
            let number = |i: usize| r.try_get::<_, Option<i64>>(i);
            Ok(AttemptView {
                attempt: u32::try_from(r.try_get::<_, i64>(0)?).unwrap_or(0),
                started_at: time::format(r.try_get::<_, i64>(1)?),
                finished_at: number(2)?.map(time::format),
                status: number(3)?.and_then(|n| u16::try_from(n).ok()),
                error: text(4)?,
                decision: text(5)?,
                ambiguous: r.try_get::<_, i64>(6)? != 0,
                latency_ms: number(7)?.and_then(|ms| u64::try_from(ms).ok()),
                node: text(8)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(pg_error(during))?;
    tries.reverse();
    Ok(tries)
}

/// The ids of the jobs that follow job `id`, at most
/// [`MAX_CHILDREN_SHOWN`], in the order enqueued.
async fn children(tx: &Tx<'_>, id: i64) -> Result<Vec<i64>, StoreError> {
    let during = "reading a job's children";
    let rows = tx
        .query(
            "SELECT id FROM jobs WHERE parent_id = $1 ORDER BY id LIMIT $2",
            &[&id, &(MAX_CHILDREN_SHOWN as i64)],
        )
        .await
        .map_err(pg_error(during))?;
    rows.iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(pg_error(during))
}
