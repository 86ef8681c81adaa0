//! Export and import in PostgreSQL: the same stream as SQLite's (the
//! records of [`crate::transfer`]), read from one snapshot and written in
//! one transaction.
//!
//! Export reads inside one `REPEATABLE READ, READ ONLY` transaction: every
//! statement sees the same snapshot however daemons write meanwhile, and
//! nothing is written. Jobs come through a cursor, a batch at a time, each
//! batch's history with one more query, so a large queue is never held in
//! memory. Schedules are ordered by name in byte order (`COLLATE "C"`), as
//! SQLite orders them, so that the same queue makes the same stream from
//! either store.
//!
//! Import creates or migrates the schema as a daemon would, then, in one
//! transaction, refuses a store in use or not empty, inserts every row as
//! the stream carries it, moves the id sequence above the highest id, and
//! commits only once the whole stream has been read and found complete.
//! "In use" is decided two ways: the advisory lock [`DAEMON_LOCK`], which a
//! daemon on PostgreSQL will hold (shared) for as long as it runs and
//! which import takes exclusively, so neither can start while the other
//! runs; and, as a second guard, a node whose heartbeat in `nodes` is
//! younger than `store.lease`, by the database's clock.
//!
//! PostgreSQL's columns are typed: a cell that SQLite kept in the wrong
//! type after a hand edit (a time as text, a payload that is not UTF-8)
//! cannot be stored, and is refused with its line, column and job, before
//! anything is committed.
//!
//! The store's client is async and this interface is not: each snapshot or
//! import runs its own single-threaded runtime, so these types must not be
//! used from inside another runtime (the CLI has none).

use super::{SCHEMA_VERSION, StoreError, connect, migrate, pg_error};
use crate::config::PostgresConfig;
use crate::store::transfer::{shown, stored_tags, tags_of};
use crate::transfer::{Attempt, Cell, Imported, Job, Schedule, Sink, Source, TransferError};
use std::collections::HashMap;
use tokio::runtime::Runtime;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

/// The advisory lock a daemon on PostgreSQL holds shared while it runs,
/// and an import holds exclusively: "Coax" in ASCII, then 2.
pub const DAEMON_LOCK: i64 = 0x436f_6178_0000_0002;

/// Jobs read per batch of an export.
const BATCH: usize = 500;

fn runtime() -> Result<Runtime, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Postgres {
            during: "starting the client's runtime",
            detail: e.to_string(),
        })
}

/// One read-only snapshot of the queue, for an export.
pub struct PgSnapshot {
    rt: Runtime,
    client: Client,
}

impl PgSnapshot {
    /// Connects and starts the snapshot; a database without our schema,
    /// or with another version of it, is refused. Nothing is written.
    pub fn open(config: &PostgresConfig) -> Result<PgSnapshot, TransferError> {
        let rt = runtime()?;
        let database = config.describe();
        let client = rt.block_on(async {
            let client = connect(config).await?;
            let during = "starting the export";
            client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(pg_error(during))?;
            Ok::<_, StoreError>(client)
        })?;
        let version: Option<i32> = rt.block_on(async {
            let during = "reading the schema version";
            let exists: bool = client
                .query_one("SELECT to_regclass('coax_schema') IS NOT NULL", &[])
                .await
                .map_err(pg_error(during))?
                .get(0);
            if !exists {
                return Ok::<_, StoreError>(None);
            }
            let row = client
                .query_one("SELECT max(version) FROM coax_schema", &[])
                .await
                .map_err(pg_error(during))?;
            Ok(row.get(0))
        })?;
        match version {
            None => Err(TransferError::NoQueue(database)),
            Some(v) if v > SCHEMA_VERSION => Err(StoreError::TooNew {
                path: database.into(),
                found: v.into(),
                supported: SCHEMA_VERSION.into(),
            }
            .into()),
            Some(v) if v != SCHEMA_VERSION => Err(TransferError::Schema {
                path: database.into(),
                found: v.into(),
                supported: SCHEMA_VERSION.into(),
            }),
            Some(_) => Ok(PgSnapshot { rt, client }),
        }
    }

    async fn batch(&self, rows: Vec<Row>) -> Result<Vec<Job>, StoreError> {
        let err = pg_error;
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let mut history: HashMap<i64, Vec<Attempt>> = HashMap::new();
        let attempts = self
            .client
            .query(
                &format!(
                    "SELECT job_id, {} FROM attempts WHERE job_id = ANY($1) ORDER BY job_id, seq",
                    Attempt::COLUMNS.join(", ")
                ),
                &[&ids],
            )
            .await
            .map_err(err("reading the history to export"))?;
        for a in &attempts {
            history
                .entry(a.get(0))
                .or_default()
                .push(Attempt::from_cells(cells(a, 1)?));
        }
        let mut jobs = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: i64 = r.get(0);
            let (tags, tags_stored) = tags_of(cell(r, 1 + Job::COLUMNS.len())?);
            jobs.push(Job::from_cells(
                id,
                cells(r, 1)?,
                tags,
                tags_stored,
                history.remove(&id).unwrap_or_default(),
            ));
        }
        Ok(jobs)
    }
}

impl Source for PgSnapshot {
    /// The SQLite schema version whose tables this one mirrors, so that a
    /// stream says the same of the same columns whichever store wrote it.
    fn schema(&self) -> i64 {
        super::schema::SQLITE_EQUIVALENT
    }

    fn jobs(
        &mut self,
        each: &mut dyn FnMut(Job) -> Result<(), TransferError>,
    ) -> Result<u64, TransferError> {
        let during = "reading the jobs to export";
        self.rt
            .block_on(self.client.batch_execute(&format!(
                "DECLARE coax_export NO SCROLL CURSOR FOR SELECT id, {}, tags FROM jobs ORDER BY id",
                Job::COLUMNS.join(", ")
            )))
            .map_err(pg_error(during))?;
        let mut count = 0;
        loop {
            let rows = self
                .rt
                .block_on(
                    self.client
                        .query(&format!("FETCH {BATCH} FROM coax_export"), &[]),
                )
                .map_err(pg_error(during))?;
            if rows.is_empty() {
                break;
            }
            for job in self.rt.block_on(self.batch(rows))? {
                each(job)?;
                count += 1;
            }
        }
        self.rt
            .block_on(self.client.batch_execute("CLOSE coax_export"))
            .map_err(pg_error(during))?;
        Ok(count)
    }

    fn schedules(
        &mut self,
        each: &mut dyn FnMut(Schedule) -> Result<(), TransferError>,
    ) -> Result<u64, TransferError> {
        let rows = self
            .rt
            .block_on(self.client.query(
                &format!(
                    "SELECT {} FROM schedules ORDER BY name COLLATE \"C\"",
                    Schedule::COLUMNS.join(", ")
                ),
                &[],
            ))
            .map_err(pg_error("reading the schedules to export"))?;
        let mut count = 0;
        for r in &rows {
            each(Schedule::from_cells(cells(r, 0)?))?;
            count += 1;
        }
        Ok(count)
    }
}

/// Column `i` of `r` as a cell.
fn cell(r: &Row, i: usize) -> Result<Cell, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::Postgres {
        during: "reading a row to export",
        detail: e.to_string(),
    };
    let ty = r.columns()[i].type_();
    Ok(match *ty {
        Type::INT8 => r
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map_or(Cell::Null, Cell::Integer),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map_or(Cell::Null, |n| Cell::Integer(n.into())),
        Type::TEXT | Type::VARCHAR => r.try_get::<_, Option<String>>(i).map_err(bad)?.into(),
        _ => {
            return Err(StoreError::Postgres {
                during: "reading a row to export",
                detail: format!(
                    "column {} is of type {ty}, which the schema does not use",
                    r.columns()[i].name()
                ),
            });
        }
    })
}

/// Columns `from..from + N` of `r` as cells.
fn cells<const N: usize>(r: &Row, from: usize) -> Result<[Cell; N], StoreError> {
    let mut out = [(); N].map(|()| Cell::Null);
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = cell(r, from + i)?;
    }
    Ok(out)
}

/// `cell` as a parameter for a column of type `ty`, or why it cannot be
/// one: PostgreSQL keeps each column in one type, where SQLite kept what
/// it was given.
fn param<'a>(cell: &'a Cell, ty: &Type) -> Result<Box<dyn ToSql + Sync + 'a>, String> {
    match (cell, ty) {
        (Cell::Null, &Type::INT8) => Ok(Box::new(None::<i64>)),
        (Cell::Null, _) => Ok(Box::new(None::<&str>)),
        (Cell::Integer(n), &Type::INT8) => Ok(Box::new(*n)),
        (Cell::Text(t), &Type::TEXT) => Ok(Box::new(t.as_str())),
        (Cell::RawText(_), _) => Err("text that is not UTF-8".to_owned()),
        (other, &Type::INT8) => Err(format!("{}, not an integer", shown(other))),
        (other, _) => Err(format!("{}, not text", shown(other))),
    }
}

/// An import under way: one open transaction holding [`DAEMON_LOCK`].
/// Dropped before [`Sink::finish`], its connection closes and PostgreSQL
/// rolls everything back.
pub struct PgImporter {
    rt: Runtime,
    client: Client,
    job: Statement,
    attempt: Statement,
    tag: Statement,
    schedule: Statement,
    jobs: u64,
    schedules: u64,
}

impl PgImporter {
    /// Connects, creates or migrates the schema, and starts the
    /// transaction; refuses a database that a daemon (or another import)
    /// has open, and one that holds jobs or schedules.
    pub fn begin(config: &PostgresConfig) -> Result<PgImporter, TransferError> {
        let rt = runtime()?;
        let database = config.describe();
        let lease_ms = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX);
        let mut client = rt.block_on(connect(config))?;
        rt.block_on(migrate(&mut client, &database))?;
        let err = || pg_error("starting the import");
        let (locked, live, jobs, schedules) = rt
            .block_on(async {
                client.batch_execute("BEGIN").await?;
                let locked: bool = client
                    .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&DAEMON_LOCK])
                    .await?
                    .get(0);
                let live: Vec<String> = client
                    .query(
                        "SELECT name FROM nodes WHERE last_heartbeat >
                             (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $1
                         ORDER BY name",
                        &[&lease_ms],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let counts = client
                    .query_one(
                        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM schedules)",
                        &[],
                    )
                    .await?;
                Ok((locked, live, counts.get(0), counts.get(1)))
            })
            .map_err(err())?;
        if !locked {
            return Err(TransferError::PostgresInUse {
                database,
                detail: format!(
                    "a daemon or another import (it holds advisory lock {DAEMON_LOCK:#x})"
                ),
            });
        }
        if !live.is_empty() {
            return Err(TransferError::PostgresInUse {
                database,
                detail: format!(
                    "node {} (a heartbeat within store.lease)",
                    live.join(", node ")
                ),
            });
        }
        if jobs > 0 || schedules > 0 {
            return Err(TransferError::PostgresNotEmpty {
                database,
                jobs,
                schedules,
            });
        }
        let prepare = |sql: String| rt.block_on(client.prepare(&sql)).map_err(err());
        let job = prepare(format!(
            "INSERT INTO jobs (id, {}, tags) VALUES ({})",
            Job::COLUMNS.join(", "),
            placeholders(Job::COLUMNS.len() + 2)
        ))?;
        let attempt = prepare(format!(
            "INSERT INTO attempts (job_id, {}) VALUES ({})",
            Attempt::COLUMNS.join(", "),
            placeholders(Attempt::COLUMNS.len() + 1)
        ))?;
        let tag = prepare(
            "INSERT INTO job_tags (tag, job_id) VALUES ($1, $2) ON CONFLICT DO NOTHING".to_owned(),
        )?;
        let schedule = prepare(format!(
            "INSERT INTO schedules ({}) VALUES ({})",
            Schedule::COLUMNS.join(", "),
            placeholders(Schedule::COLUMNS.len())
        ))?;
        Ok(PgImporter {
            rt,
            client,
            job,
            attempt,
            tag,
            schedule,
            jobs: 0,
            schedules: 0,
        })
    }

    /// Runs `statement` with the job id `lead` (if any) and then `values`
    /// (the cells of `columns`), for the row on `line`; `what` names the
    /// row, `duplicate` says what a unique violation means.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        statement: &Statement,
        line: u64,
        what: &str,
        lead: Option<&i64>,
        values: &[&Cell],
        columns: &[&str],
        duplicate: impl FnOnce() -> String,
    ) -> Result<(), TransferError> {
        let types = &statement.params()[usize::from(lead.is_some())..];
        let mut boxed = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let param = param(value, &types[i]).map_err(|why| TransferError::Line {
                line,
                detail: format!(
                    "{what}: {} holds {why}, which PostgreSQL cannot keep in that column; \
                     correct the row at the source and export again",
                    columns[i]
                ),
            })?;
            boxed.push(param);
        }
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(values.len() + 1);
        if let Some(id) = lead {
            params.push(id);
        }
        params.extend(boxed.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)));
        match self.rt.block_on(self.client.execute(statement, &params)) {
            Ok(_) => Ok(()),
            Err(e) => match e.as_db_error() {
                Some(db) if db.code().code() == "23505" => Err(TransferError::Line {
                    line,
                    detail: duplicate(),
                }),
                Some(db) => Err(TransferError::Line {
                    line,
                    detail: format!("{what}: the store refused it ({})", db.message()),
                }),
                None => Err(pg_error("importing")(e).into()),
            },
        }
    }
}

impl Sink for PgImporter {
    fn job(&mut self, line: u64, job: &Job) -> Result<(), TransferError> {
        let tags = job
            .tags_stored
            .clone()
            .unwrap_or_else(|| stored_tags(&job.tags));
        let mut values: Vec<&Cell> = job.cells().into_iter().collect();
        values.push(&tags);
        let mut columns: Vec<&str> = Job::COLUMNS.to_vec();
        columns.push("tags");
        let what = format!("job {}", job.id);
        self.insert(
            &self.job,
            line,
            &what,
            Some(&job.id),
            &values,
            &columns,
            || {
                if job.key == Cell::Null {
                    format!("job id {} appears twice in the stream", job.id)
                } else {
                    format!(
                        "job id {} or key {} appears twice in the stream",
                        job.id,
                        shown(&job.key)
                    )
                }
            },
        )?;
        for attempt in &job.history {
            let values: Vec<&Cell> = attempt.cells().into_iter().collect();
            self.insert(
                &self.attempt,
                line,
                &what,
                Some(&job.id),
                &values,
                Attempt::COLUMNS,
                || {
                    format!(
                        "job {}'s history has attempt {} twice",
                        job.id,
                        shown(&attempt.attempt)
                    )
                },
            )?;
        }
        for tag in &job.tags {
            self.rt
                .block_on(self.client.execute(&self.tag, &[tag, &job.id]))
                .map_err(pg_error("importing the tags"))?;
        }
        self.jobs += 1;
        Ok(())
    }

    fn schedule(&mut self, line: u64, schedule: &Schedule) -> Result<(), TransferError> {
        let values: Vec<&Cell> = schedule.cells().into_iter().collect();
        let what = format!("schedule {}", shown(&schedule.name));
        self.insert(
            &self.schedule,
            line,
            &what,
            None,
            &values,
            Schedule::COLUMNS,
            || format!("{what} appears twice in the stream"),
        )?;
        self.schedules += 1;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Imported, TransferError> {
        let err = || pg_error("finishing the import");
        let highest_id: Option<i64> = self
            .rt
            .block_on(async {
                let highest: Option<i64> = self
                    .client
                    .query_one("SELECT max(id) FROM jobs", &[])
                    .await?
                    .get(0);
                if let Some(id) = highest {
                    // New jobs get ids above the imported ones.
                    self.client
                        .execute(
                            "SELECT setval(pg_get_serial_sequence('jobs', 'id'), $1)",
                            &[&id],
                        )
                        .await?;
                }
                // Due times were settled under the source's send windows.
                self.client
                    .execute("DELETE FROM meta WHERE name = 'calendar'", &[])
                    .await?;
                self.client.batch_execute("COMMIT").await?;
                Ok(highest)
            })
            .map_err(err())?;
        Ok(Imported {
            jobs: self.jobs,
            schedules: self.schedules,
            highest_id,
        })
    }
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
