//! Export and import in SQLite: reading every job, its history and every
//! schedule in one snapshot, and writing them into an empty store.
//!
//! Export opens its own read-only connection and reads inside one read
//! transaction: in WAL mode that is a consistent snapshot however the
//! daemon writes meanwhile, and it never takes the daemon's lock file nor
//! writes to the database. It hands over one job at a time, so a large
//! queue is never held in memory.
//!
//! Import takes the daemon's lock, so that no daemon opens the store while
//! it runs, checks and migrates the file as the daemon does, and inserts
//! everything in one transaction that commits only once the whole stream
//! has been read and found complete ([`Importer::finish`]); any failure
//! before then leaves nothing behind. Rows go in as the stream carries
//! them, column by column: the daemon's own start-up checks and sweep deal
//! with a row that cannot be sent, as they would have at the source.
//!
//! The stream's format, and the checks on it, are [`crate::transfer`]'s.

use super::{SCHEMA_VERSION, StoreError, deferral, schema};
use crate::transfer::{Attempt, Cell, Job, Schedule, TransferError};
use rusqlite::types::{ToSql, ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, Row, params, params_from_iter};
use std::fs::File;
use std::path::{Path, PathBuf};

impl ToSql for Cell {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Cell::Null => ToSqlOutput::Owned(Value::Null),
            Cell::Integer(n) => ToSqlOutput::Owned(Value::Integer(*n)),
            Cell::Real(x) => ToSqlOutput::Owned(Value::Real(*x)),
            Cell::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            // Stored as text, as it was: its bytes were never UTF-8.
            Cell::RawText(b) => ToSqlOutput::Borrowed(ValueRef::Text(b)),
            Cell::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn cell(v: ValueRef<'_>) -> Cell {
    match v {
        ValueRef::Null => Cell::Null,
        ValueRef::Integer(n) => Cell::Integer(n),
        ValueRef::Real(x) => Cell::Real(x),
        ValueRef::Text(b) => Cell::text(b),
        ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
    }
}

/// Columns `from..from + N` of `r` as cells.
fn cells<const N: usize>(r: &Row<'_>, from: usize) -> rusqlite::Result<[Cell; N]> {
    let mut out = [(); N].map(|()| Cell::Null);
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = cell(r.get_ref(from + i)?);
    }
    Ok(out)
}

/// The stored form of a tag list, as enqueue writes it: none for no tags.
pub(crate) fn stored_tags(tags: &[String]) -> Cell {
    if tags.is_empty() {
        return Cell::Null;
    }
    let list: Vec<&str> = tags.iter().map(String::as_str).collect();
    Cell::Text(serde_json::Value::from(list).to_string())
}

/// A job's tags from its stored list, and the list itself when it is not
/// what [`stored_tags`] would write for them (a hand edit), so that it
/// comes back as it was.
pub(crate) fn tags_of(stored: Cell) -> (Vec<String>, Option<Cell>) {
    let tags: Vec<String> = stored
        .as_str()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    if stored_tags(&tags) == stored {
        (tags, None)
    } else {
        (tags, Some(stored))
    }
}

/// How many jobs and schedules an existing queue at `path` holds, read
/// without writing (and so without migrating); none for a new file.
fn held_rows(path: &Path) -> Result<(i64, i64), StoreError> {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return Ok((0, 0));
    }
    let err = || StoreError::sqlite("counting the jobs already there");
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err())?;
    let count = |table: &str| -> Result<i64, StoreError> {
        let exists: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .map_err(err())?;
        if !exists {
            return Ok(0);
        }
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(err())
    };
    Ok((count("jobs")?, count("schedules")?))
}

/// One read transaction on the database, for an export.
pub struct Snapshot {
    conn: Connection,
}

impl Snapshot {
    /// Opens the database at `path` read-only and starts the snapshot. A
    /// file that is not ours, or of another schema version than this
    /// build's, is refused; nothing is created or written.
    pub fn open(path: &Path) -> Result<Snapshot, TransferError> {
        if !path.exists() {
            return Err(TransferError::Missing(path.to_owned()));
        }
        schema::check(path)?;
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        // The first read after BEGIN fixes the snapshot every later read sees.
        conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
            .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if version == 0 {
            // An empty file, or SQLite with nothing of ours in it yet.
            return Err(TransferError::Missing(path.to_owned()));
        }
        if version != SCHEMA_VERSION {
            return Err(TransferError::Schema {
                path: path.to_owned(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Snapshot { conn })
    }

    /// The schema version of the database.
    pub fn schema(&self) -> i64 {
        SCHEMA_VERSION
    }

    /// Hands every job, with its history, to `each`, in id order; how many.
    pub fn jobs(
        &self,
        mut each: impl FnMut(Job) -> Result<(), TransferError>,
    ) -> Result<u64, TransferError> {
        let err = || StoreError::sqlite("reading the jobs to export");
        let mut jobs = self
            .conn
            .prepare(&format!(
                "SELECT id, {}, tags FROM jobs ORDER BY id",
                Job::COLUMNS.join(", ")
            ))
            .map_err(err())?;
        let mut history = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM attempts WHERE job_id = ?1 ORDER BY seq",
                Attempt::COLUMNS.join(", ")
            ))
            .map_err(err())?;
        let mut rows = jobs.query([]).map_err(err())?;
        let mut count = 0;
        while let Some(r) = rows.next().map_err(err())? {
            let mut read = |r: &Row<'_>| -> rusqlite::Result<Job> {
                let id: i64 = r.get(0)?;
                let columns = cells(r, 1)?;
                let (tags, tags_stored) = tags_of(cell(r.get_ref(1 + Job::COLUMNS.len())?));
                let history = history
                    .query_map([id], |a| Ok(Attempt::from_cells(cells(a, 0)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(Job::from_cells(id, columns, tags, tags_stored, history))
            };
            let job = read(r).map_err(err())?;
            each(job)?;
            count += 1;
        }
        Ok(count)
    }

    /// Hands every recurring schedule to `each`, by name; how many.
    pub fn schedules(
        &self,
        mut each: impl FnMut(Schedule) -> Result<(), TransferError>,
    ) -> Result<u64, TransferError> {
        let err = || StoreError::sqlite("reading the schedules to export");
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM schedules ORDER BY name",
                Schedule::COLUMNS.join(", ")
            ))
            .map_err(err())?;
        let mut rows = stmt.query([]).map_err(err())?;
        let mut count = 0;
        while let Some(r) = rows.next().map_err(err())? {
            each(Schedule::from_cells(cells(r, 0).map_err(err())?))?;
            count += 1;
        }
        Ok(count)
    }
}

/// What an import put in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub jobs: u64,
    pub schedules: u64,
    /// The highest job id: new jobs get ids above it.
    pub highest_id: Option<i64>,
}

/// An import under way: the store's lock, and one open transaction.
/// Dropped before [`Importer::finish`], it rolls everything back.
pub struct Importer {
    conn: Connection,
    path: PathBuf,
    jobs: u64,
    schedules: u64,
    open: bool,
    /// Held until the import ends, so that no daemon starts meanwhile.
    _lock: File,
}

impl Importer {
    /// Opens the store at `path` as the daemon would (refusing a file that
    /// is not ours or is too new, and one a daemon holds), and starts the
    /// transaction; refuses a store that holds jobs or schedules.
    pub fn begin(path: &Path) -> Result<Importer, TransferError> {
        schema::check(path)?;
        let lock = schema::lock(path)?;
        // Refused before anything is migrated: a store an older build
        // still runs must stay one it can open.
        let (jobs, schedules) = held_rows(path)?;
        if jobs > 0 || schedules > 0 {
            return Err(TransferError::NotEmpty {
                path: path.to_owned(),
                jobs,
                schedules,
            });
        }
        let conn = schema::open(path)?;
        let err = || StoreError::sqlite("starting the import");
        conn.execute_batch("BEGIN IMMEDIATE").map_err(err())?;
        let importer = Importer {
            conn,
            path: path.to_owned(),
            jobs: 0,
            schedules: 0,
            open: true,
            _lock: lock,
        };
        let count = |table: &str| -> Result<i64, StoreError> {
            importer
                .conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .map_err(err())
        };
        let (jobs, schedules) = (count("jobs")?, count("schedules")?);
        if jobs > 0 || schedules > 0 {
            return Err(TransferError::NotEmpty {
                path: importer.path.clone(),
                jobs,
                schedules,
            });
        }
        Ok(importer)
    }

    /// Inserts `job`, its history and its tags; `line` names it in errors.
    pub fn job(&mut self, line: u64, job: &Job) -> Result<(), TransferError> {
        let tags = job
            .tags_stored
            .clone()
            .unwrap_or_else(|| stored_tags(&job.tags));
        let mut values: Vec<&dyn ToSql> = vec![&job.id];
        values.extend(job.cells().into_iter().map(|c| c as &dyn ToSql));
        values.push(&tags);
        let inserted = self
            .conn
            .prepare_cached(&format!(
                "INSERT INTO jobs (id, {}, tags) VALUES ({})",
                Job::COLUMNS.join(", "),
                placeholders(Job::COLUMNS.len() + 2)
            ))
            .and_then(|mut s| s.execute(params_from_iter(values)));
        if let Err(e) = inserted {
            return Err(self.refused(line, e, || self.duplicate_job(job)));
        }
        for attempt in &job.history {
            let mut values: Vec<&dyn ToSql> = vec![&job.id];
            values.extend(attempt.cells().into_iter().map(|c| c as &dyn ToSql));
            self.conn
                .prepare_cached(&format!(
                    "INSERT INTO attempts (job_id, {}) VALUES ({})",
                    Attempt::COLUMNS.join(", "),
                    placeholders(Attempt::COLUMNS.len() + 1)
                ))
                .and_then(|mut s| s.execute(params_from_iter(values)))
                .map_err(|e| {
                    self.refused(line, e, || {
                        Ok(format!(
                            "job {}'s history has attempt {} twice",
                            job.id,
                            shown(&attempt.attempt)
                        ))
                    })
                })?;
        }
        for tag in &job.tags {
            self.conn
                .prepare_cached("INSERT OR IGNORE INTO job_tags (tag, job_id) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![tag, job.id]))
                .map_err(|e| self.refused(line, e, || Ok(String::new())))?;
        }
        self.jobs += 1;
        Ok(())
    }

    /// What `job` repeats of a job already inserted: its id or its key.
    fn duplicate_job(&self, job: &Job) -> rusqlite::Result<String> {
        let taken = |sql: &str, value: &dyn ToSql| -> rusqlite::Result<bool> {
            self.conn.query_row(sql, [value], |r| r.get(0))
        };
        Ok(
            if taken("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)", &job.id)? {
                format!("job id {} appears twice in the stream", job.id)
            } else if taken(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE key = ?1)",
                &job.key,
            )? {
                format!("key {} appears twice in the stream", shown(&job.key))
            } else {
                String::new()
            },
        )
    }

    /// Inserts `schedule`; `line` names it in errors.
    pub fn schedule(&mut self, line: u64, schedule: &Schedule) -> Result<(), TransferError> {
        let values: Vec<&dyn ToSql> = schedule
            .cells()
            .into_iter()
            .map(|c| c as &dyn ToSql)
            .collect();
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO schedules ({}) VALUES ({})",
                Schedule::COLUMNS.join(", "),
                placeholders(Schedule::COLUMNS.len())
            ))
            .and_then(|mut s| s.execute(params_from_iter(values)))
            .map_err(|e| {
                self.refused(line, e, || {
                    Ok(format!(
                        "schedule {} appears twice in the stream",
                        shown(&schedule.name)
                    ))
                })
            })?;
        self.schedules += 1;
        Ok(())
    }

    /// Why the row on `line` was not stored: a constraint it breaks
    /// (`duplicate` says which, when it can), or a storage failure.
    fn refused(
        &self,
        line: u64,
        e: rusqlite::Error,
        duplicate: impl FnOnce() -> rusqlite::Result<String>,
    ) -> TransferError {
        if e.sqlite_error_code() != Some(ErrorCode::ConstraintViolation) {
            return StoreError::sqlite("importing")(e).into();
        }
        let detail = match duplicate() {
            Ok(d) if !d.is_empty() && e.to_string().contains("UNIQUE") => d,
            _ => format!("the store refused it ({e})"),
        };
        TransferError::Line { line, detail }
    }

    /// Brings the derived tables in line with the rows (the counts per
    /// state, the deferred count, the tag index) and commits. The due times
    /// were settled under the source's send windows, so the store is marked
    /// unsettled: the daemon settles them anew under its own at start-up.
    pub fn finish(mut self) -> Result<Imported, TransferError> {
        let err = || StoreError::sqlite("finishing the import");
        self.conn
            .execute_batch(
                "DELETE FROM state_counts;
                 INSERT INTO state_counts (state, jobs)
                     SELECT state, count(*) FROM jobs GROUP BY state;",
            )
            .map_err(err())?;
        deferral::recount(&self.conn)?;
        deferral::mark_unsettled(&self.conn)?;
        let highest_id: Option<i64> = self
            .conn
            .query_row("SELECT max(id) FROM jobs", [], |r| r.get(0))
            .map_err(err())?;
        self.conn.execute_batch("COMMIT").map_err(err())?;
        self.open = false;
        Ok(Imported {
            jobs: self.jobs,
            schedules: self.schedules,
            highest_id,
        })
    }
}

impl Drop for Importer {
    fn drop(&mut self) {
        if self.open {
            // Closing the connection would roll back too; this says so.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A cell for an error message, short.
pub(crate) fn shown(c: &Cell) -> String {
    let text = serde_json::to_string(c).unwrap_or_default();
    super::view::bounded(text, 200)
}
