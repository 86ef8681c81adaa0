//! Recurring sends in SQLite: the `schedules` table (schema version 8),
//! one row per schedule with its next occurrence, and creating an
//! occurrence's job together with moving that next occurrence on, in one
//! call and so one transaction.
//!
//! What a schedule is and when it fires is [`crate::schedule`]'s; this
//! module only keeps and reads them. A schedule's recent occurrences are
//! its tag's newest jobs, found through `job_tags` with one seek.
//!
//! A row can hold any type in any column (a hand edit, an import), so
//! every column is read as what it holds: a row that is not a schedule is
//! shown as far as it can be, counts for no next occurrence, and is set
//! aside (its `next_at` null, logged once) when the task meets it due.

use super::{Backend, Store, StoreError, queries};
use crate::job::NewJob;
use crate::protocol::Enqueued;
use crate::schedule::wire::Occurrence;
use crate::schedule::{CatchUp, Row, Schedule, Stored, Unreadable};
use crate::time::Millis;
use crate::transfer::Cell;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;

/// How many recent occurrences a schedule's view shows.
pub const RECENT: usize = 10;

pub(super) const COLUMNS: &str = "name, cron, timezone, catch_up, job, next_at, revision";

/// A row as read, with the values that identify it as stored: a hand edit
/// or an import can put any type in any column, and a row that cannot be
/// read is set aside by these, not by what it should have held.
struct Read {
    row: Row,
    name: Cell,
    next_at: Cell,
    revision: Cell,
}

/// Reads one row without failing on any value it holds: a row edited or
/// imported into nonsense reads as what can be shown of it and why it
/// cannot fire, and stops no other row.
fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Read> {
    let mut cells = [(); 7].map(|()| Cell::Null);
    for (i, cell) in cells.iter_mut().enumerate() {
        *cell = match row.get_ref(i)? {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(n) => Cell::Integer(n),
            ValueRef::Real(x) => Cell::Real(x),
            ValueRef::Text(b) => Cell::text(b),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        };
    }
    let row = parse(&cells).map_or_else(|why| Row::Unreadable(shown(&cells, why)), Row::Readable);
    let [name, _, _, _, _, next_at, revision] = cells;
    Ok(Read {
        row,
        name,
        next_at,
        revision,
    })
}

/// What a cell holds, for a message.
fn held(cell: &Cell) -> &'static str {
    match cell {
        Cell::Null => "null",
        Cell::Integer(_) => "an integer",
        Cell::Real(_) => "a real",
        Cell::Text(_) => "text",
        Cell::RawText(_) => "text that is not UTF-8",
        Cell::Blob(_) => "bytes",
    }
}

/// The schedule the cells of a row (in [`COLUMNS`] order) hold, or what
/// is wrong with them.
pub(super) fn parse(cells: &[Cell; 7]) -> Result<Stored, String> {
    let [name, cron, timezone, catch_up, job, next_at, revision] = cells;
    let text = |cell: &Cell, column: &str| match cell {
        Cell::Text(t) => Ok(t.clone()),
        Cell::RawText(_) => Err(format!("its {column} is not UTF-8")),
        other => Err(format!("its {column} is {}, not text", held(other))),
    };
    let catch_up = text(catch_up, "catch_up")?;
    let catch_up = CatchUp::parse(&catch_up)
        .ok_or_else(|| format!("catch_up {catch_up:?} is not one we know"))?;
    let Some(Ok(Value::Object(job))) = job.as_str().map(serde_json::from_str::<Value>) else {
        return Err("its job is not a JSON object".into());
    };
    let next_at = match next_at {
        Cell::Null => None,
        Cell::Integer(at) => Some(*at),
        other => {
            return Err(format!(
                "its next_at is {}, not an integer time",
                held(other)
            ));
        }
    };
    let revision = revision
        .as_i64()
        .ok_or_else(|| format!("its revision is {}, not an integer", held(revision)))?;
    Ok(Stored {
        schedule: Schedule {
            name: text(name, "name")?,
            cron: text(cron, "cron")?,
            timezone: text(timezone, "timezone")?,
            catch_up,
            job,
        },
        next_at,
        revision,
    })
}

/// What can be shown of a row that cannot be read.
pub(super) fn shown(cells: &[Cell; 7], why: String) -> Unreadable {
    let [name, cron, timezone, catch_up, job, ..] = cells;
    let text = |cell: &Cell| cell.as_str().map(str::to_owned);
    Unreadable {
        name: match name {
            Cell::Text(t) => t.clone(),
            Cell::RawText(b) | Cell::Blob(b) => String::from_utf8_lossy(b).into_owned(),
            Cell::Integer(n) => n.to_string(),
            Cell::Real(x) => x.to_string(),
            Cell::Null => String::new(),
        },
        cron: text(cron),
        timezone: text(timezone),
        catch_up: text(catch_up),
        job: match job.as_str() {
            Some(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_owned())),
            None => Value::Null,
        },
        why,
    }
}

/// Stops a row that cannot be read from being due again, so that it is
/// met (and logged) once, not at every pass: its `next_at` is set to null
/// unless a put or a delete changed the row since it was read.
fn set_aside(conn: &Connection, read: &Read, why: &str) -> Result<(), StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE schedules SET next_at = NULL WHERE name = ?1 AND next_at IS ?2 AND revision IS ?3",
        )
        .and_then(|mut st| st.execute(params![read.name, read.next_at, read.revision]))
        .map_err(StoreError::sqlite("setting an unreadable schedule aside"))?;
    if changed > 0 {
        tracing::error!(
            schedule = read.row.name(),
            why,
            "a schedule's row cannot be read, so it cannot fire; it is stopped (next_at set to null) until put again with schedule_put, or deleted with schedule_delete (was the database edited by hand, or the schedule imported?)"
        );
    }
    Ok(())
}

fn put(conn: &Connection, s: &Schedule, next_at: Millis, now: Millis) -> Result<bool, StoreError> {
    let err = StoreError::sqlite("putting a schedule");
    let existed: bool = conn
        .prepare_cached("SELECT 1 FROM schedules WHERE name = ?1")
        .and_then(|mut st| st.exists([&s.name]))
        .map_err(err)?;
    conn.prepare_cached(
        "INSERT INTO schedules (name, cron, timezone, catch_up, job, next_at, revision, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7)
         ON CONFLICT (name) DO UPDATE SET cron = ?2, timezone = ?3, catch_up = ?4, job = ?5,
             next_at = ?6, updated_at = ?7,
             revision = CASE WHEN typeof(revision) = 'integer' AND revision < 9223372036854775807
                             THEN revision + 1 ELSE 1 END",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.name,
            s.cron,
            s.timezone,
            s.catch_up.as_str(),
            Value::Object(s.job.clone()).to_string(),
            next_at,
            now
        ])
    })
    .map_err(StoreError::sqlite("putting a schedule"))?;
    Ok(!existed)
}

fn recent(conn: &Connection, name: &str) -> Result<Vec<Occurrence>, StoreError> {
    // Occurrences are created in time order, so the newest job ids are the
    // newest occurrences; the (tag, job_id) key gives them without a sort.
    // A job edited into nonsense (its quarantine may not have come yet)
    // must not fail the view: one whose time is not a time is left out.
    conn.prepare_cached(
        "SELECT j.id, j.state, j.scheduled_at FROM job_tags t CROSS JOIN jobs j ON j.id = t.job_id
         WHERE t.tag = ?1 AND typeof(j.scheduled_at) = 'integer' ORDER BY t.job_id DESC LIMIT ?2",
    )
    .and_then(|mut st| {
        st.query_map(params![crate::schedule::tag(name), RECENT as i64], |r| {
            Ok(Occurrence {
                id: r.get(0)?,
                state: match r.get_ref(1)? {
                    ValueRef::Text(b) | ValueRef::Blob(b) => {
                        String::from_utf8_lossy(b).into_owned()
                    }
                    other => other.data_type().to_string(),
                },
                at: r.get(2)?,
            })
        })?
        .collect()
    })
    .map_err(StoreError::sqlite("reading a schedule's occurrences"))
}

/// The rows `filter` picks, with `args`.
fn select(
    conn: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Read>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM schedules {filter}");
    conn.prepare_cached(&sql)
        .and_then(|mut st| st.query_map(args, read)?.collect())
        .map_err(StoreError::sqlite("reading schedules"))
}

/// Each row with its recent occurrences.
fn with_recent(
    conn: &Connection,
    rows: Vec<Read>,
) -> Result<Vec<(Row, Vec<Occurrence>)>, StoreError> {
    rows.into_iter()
        .map(|r| {
            let recent = recent(conn, r.row.name())?;
            Ok((r.row, recent))
        })
        .collect()
}

/// Up to `limit` rows named after `after`, in name order. Rows that cannot
/// be read are on it too, so that they never cut a page short; a name that
/// is not text (bytes, after a hand edit) could not be paged after, so
/// such a row is left out.
fn page(
    conn: &Connection,
    after: &str,
    limit: usize,
) -> Result<Vec<(Row, Vec<Occurrence>)>, StoreError> {
    let rows = select(
        conn,
        "WHERE name > ?1 AND typeof(name) = 'text' ORDER BY name LIMIT ?2",
        params![after, limit as i64],
    )?;
    with_recent(conn, rows)
}

/// The schedules due at `now`. A due row that cannot be read is set aside
/// (its `next_at` set to null, one ERROR logged), so that it is not due
/// again at once: it stops nothing, and floods nothing.
fn due(conn: &Connection, now: Millis) -> Result<Vec<Stored>, StoreError> {
    // A next_at of text or bytes sorts after every number, so is never
    // due; `>= ''` finds it too, to be set aside.
    let rows = select(
        conn,
        "WHERE next_at <= ?1 OR next_at >= '' ORDER BY next_at, name",
        [now],
    )?;
    let mut due = Vec::with_capacity(rows.len());
    for read in rows {
        match &read.row {
            Row::Readable(stored) => due.push(stored.clone()),
            Row::Unreadable(u) => set_aside(conn, &read, &u.why)?,
        }
    }
    Ok(due)
}

/// How many schedules there are, and the earliest next occurrence of
/// those stored as an integer: a row holding anything else is never due,
/// and must not stop the others.
fn overview(conn: &Connection) -> Result<(u64, Option<Millis>), StoreError> {
    conn.prepare_cached(
        "SELECT count(*), min(CASE WHEN typeof(next_at) = 'integer' THEN next_at END)
         FROM schedules",
    )
    .and_then(|mut st| {
        st.query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .optional()
    })
    .map(|o| o.unwrap_or((0, None)))
    .map_err(StoreError::sqlite("counting schedules"))
}

/// Moves `name`'s next occurrence from `was` to `next_at` and enqueues
/// `jobs`, if the schedule is still at revision `revision` and `was`;
/// `None` (and nothing written) when a put or a delete came first.
fn fire(
    conn: &Connection,
    calendar: &crate::window::Calendar,
    firing: &Firing,
    now: Millis,
) -> Result<Option<Vec<Enqueued>>, StoreError> {
    let moved = conn
        .prepare_cached(
            "UPDATE schedules SET next_at = ?4 WHERE name = ?1 AND revision = ?2 AND next_at IS ?3",
        )
        .and_then(|mut st| {
            st.execute(params![
                firing.name,
                firing.revision,
                firing.was,
                firing.next_at
            ])
        })
        .map_err(StoreError::sqlite("moving a schedule on"))?;
    if moved == 0 {
        return Ok(None);
    }
    queries::enqueue(conn, calendar, &firing.jobs, now).map(Some)
}

/// One schedule's due occurrences, to be created in one call.
#[derive(Debug, Clone)]
pub struct Firing {
    pub name: String,
    pub revision: i64,
    /// The next occurrence the plan started from, as read.
    pub was: Option<Millis>,
    pub next_at: Option<Millis>,
    pub jobs: Vec<NewJob>,
}

impl Store {
    /// Creates or replaces a schedule, its next occurrence `next_at`;
    /// whether it is new.
    pub async fn put_schedule(&self, s: Schedule, next_at: Millis) -> Result<bool, StoreError> {
        let _timed = crate::metrics::store_call("schedule_put");
        let now = self.now();
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.put_schedule(s, next_at, now).await);
        }
        self.call(move |c| put(c, &s, next_at, now)).await
    }

    /// A schedule (or what can be shown of a row that cannot be read) and
    /// its recent occurrences, newest first.
    pub async fn get_schedule(
        &self,
        name: String,
    ) -> Result<Option<(Row, Vec<Occurrence>)>, StoreError> {
        let _timed = crate::metrics::store_call("schedule_get");
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.get_schedule(name).await);
        }
        self.call(move |c| {
            let rows = select(c, "WHERE name = ?1", [&name])?;
            Ok(with_recent(c, rows)?.pop())
        })
        .await
    }

    /// Up to `limit` schedules named after `after`, in name order, each
    /// with its recent occurrences: one page of `schedule_list`.
    pub async fn list_schedules(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(Row, Vec<Occurrence>)>, StoreError> {
        let _timed = crate::metrics::store_call("schedule_list");
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.list_schedules(after, limit).await);
        }
        self.call(move |c| page(c, &after.unwrap_or_default(), limit))
            .await
    }

    /// Deletes a schedule (not the jobs it created); whether there was one.
    pub async fn delete_schedule(&self, name: String) -> Result<bool, StoreError> {
        let _timed = crate::metrics::store_call("schedule_delete");
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.delete_schedule(name).await);
        }
        self.call(move |c| {
            c.prepare_cached("DELETE FROM schedules WHERE name = ?1")
                .and_then(|mut st| st.execute([name]))
                .map(|n| n > 0)
                .map_err(StoreError::sqlite("deleting a schedule"))
        })
        .await
    }

    /// The schedules whose next occurrence is at or before `now`; a due
    /// row that cannot be read is set aside in the same call.
    pub async fn due_schedules(&self, now: Millis) -> Result<Vec<Stored>, StoreError> {
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.due_schedules(now).await);
        }
        self.call(move |c| due(c, now)).await
    }

    /// How many schedules there are, and the earliest next occurrence.
    pub async fn schedules_overview(&self) -> Result<(u64, Option<Millis>), StoreError> {
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.schedules_overview().await);
        }
        self.call(overview).await
    }

    /// Creates one schedule's due occurrences and moves its next
    /// occurrence on, in one transaction; `None` when the schedule changed
    /// since it was read (nothing written).
    pub async fn fire_schedule(&self, firing: Firing) -> Result<Option<Vec<Enqueued>>, StoreError> {
        let _timed = crate::metrics::store_call("schedule_fire");
        let (calendar, now) = (self.calendar.clone(), self.now());
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.fire_schedule(&calendar.get(), firing, now).await);
        }
        self.call(move |c| fire(c, &calendar.get(), &firing, now))
            .await
    }
}

#[cfg(test)]
mod tests;
