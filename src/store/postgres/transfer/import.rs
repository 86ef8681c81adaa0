//! Import into PostgreSQL: [`PgImporter`], one transaction that commits
//! only a complete stream (see [`super`]).

use super::{DAEMON_LOCK, param, runtime};
use crate::config::PostgresConfig;
use crate::store::postgres::{connect, migrate, pg_error};
use crate::store::transfer::{shown, stored_tags};
use crate::transfer::{Attempt, Cell, Imported, Job, Schedule, Sink, TransferError};
use tokio::runtime::Runtime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

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
    /// Jobs read but not yet sent (see [`PgImporter::flush`]).
    pending: Vec<(u64, Job)>,
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
            pending: Vec::new(),
            jobs: 0,
            schedules: 0,
        })
    }

    /// The row for `statement`: the job id `lead` (if any), then `values`
    /// (the cells of `columns`), each as the column's type takes it.
    #[allow(clippy::too_many_arguments)]
    fn row<'a>(
        &self,
        statement: &'a Statement,
        line: u64,
        what: &str,
        lead: Option<&'a i64>,
        values: &[&'a Cell],
        columns: &[&str],
        duplicate: Duplicate<'a>,
    ) -> Result<Insert<'a>, TransferError> {
        let types = &statement.params()[usize::from(lead.is_some())..];
        let mut params: Vec<Box<dyn ToSql + Sync + 'a>> = Vec::with_capacity(values.len() + 1);
        if let Some(id) = lead {
            params.push(Box::new(*id));
        }
        for (i, value) in values.iter().enumerate() {
            let param = param(value, &types[i]).map_err(|why| TransferError::Line {
                line,
                detail: format!(
                    "{what}: {} holds {why}, which PostgreSQL cannot keep in that column; \
                     correct the row at the source and export again",
                    columns[i]
                ),
            })?;
            params.push(param);
        }
        Ok(Insert {
            statement,
            params,
            line,
            duplicate,
        })
    }

    /// Sends `rows` to the server together, in order, and waits for all
    /// of them: one round trip for the lot instead of one per row. Once a
    /// row fails, PostgreSQL refuses the rest of the transaction, so the
    /// first failure in order is the one reported.
    fn send(&self, rows: &[Insert<'_>]) -> Result<(), TransferError> {
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = rows
            .iter()
            .map(|r| {
                r.params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect()
            })
            .collect();
        let results = self.rt.block_on(futures_util::future::join_all(
            rows.iter()
                .zip(&params)
                .map(|(r, p)| self.client.execute(r.statement, p)),
        ));
        match rows
            .iter()
            .zip(results)
            .find_map(|(r, res)| res.err().map(|e| (r, e)))
        {
            None => Ok(()),
            Some((row, e)) => Err(match e.as_db_error() {
                Some(db) if db.code().code() == "23505" => TransferError::Line {
                    line: row.line,
                    detail: row.duplicate.describe(),
                },
                Some(db) => TransferError::Line {
                    line: row.line,
                    detail: format!("the store refused it ({})", db.message()),
                },
                None => pg_error("importing")(e).into(),
            }),
        }
    }

    /// Inserts the jobs waiting in `pending`, with their histories and tags.
    fn flush(&mut self) -> Result<(), TransferError> {
        let pending = std::mem::take(&mut self.pending);
        let tags: Vec<Cell> = pending
            .iter()
            .map(|(_, job)| {
                job.tags_stored
                    .clone()
                    .unwrap_or_else(|| stored_tags(&job.tags))
            })
            .collect();
        let mut columns: Vec<&str> = Job::COLUMNS.to_vec();
        columns.push("tags");
        let mut rows = Vec::new();
        // A cell the columns cannot take is reported after the rows before
        // it have been sent, so that an earlier line's fault comes first.
        let mut refused = None;
        'jobs: for ((line, job), tags) in pending.iter().zip(&tags) {
            let what = format!("job {}", job.id);
            let mut values: Vec<&Cell> = job.cells().into_iter().collect();
            values.push(tags);
            let mut built = vec![self.row(
                &self.job,
                *line,
                &what,
                Some(&job.id),
                &values,
                &columns,
                Duplicate::Job(job),
            )];
            for attempt in &job.history {
                let values: Vec<&Cell> = attempt.cells().into_iter().collect();
                built.push(self.row(
                    &self.attempt,
                    *line,
                    &what,
                    Some(&job.id),
                    &values,
                    Attempt::COLUMNS,
                    Duplicate::Attempt(job, attempt),
                ));
            }
            for row in built {
                match row {
                    Ok(row) => rows.push(row),
                    Err(e) => {
                        refused = Some(e);
                        break 'jobs;
                    }
                }
            }
            for tag in &job.tags {
                rows.push(Insert {
                    statement: &self.tag,
                    params: vec![Box::new(tag.as_str()), Box::new(job.id)],
                    line: *line,
                    duplicate: Duplicate::Tag,
                });
            }
        }
        self.send(&rows)?;
        if let Some(e) = refused {
            return Err(e);
        }
        self.jobs += pending.len() as u64;
        Ok(())
    }
}

/// Jobs whose rows go to the server together (see [`PgImporter::send`]).
const PIPELINE: usize = 256;

/// One row to insert, and what it means if it is a duplicate.
struct Insert<'a> {
    statement: &'a Statement,
    params: Vec<Box<dyn ToSql + Sync + 'a>>,
    line: u64,
    duplicate: Duplicate<'a>,
}

/// The row a unique violation is about.
enum Duplicate<'a> {
    Job(&'a Job),
    Attempt(&'a Job, &'a Attempt),
    Tag,
    Schedule(&'a Schedule),
}

impl Duplicate<'_> {
    fn describe(&self) -> String {
        match self {
            Duplicate::Job(job) if job.key == Cell::Null => {
                format!("job id {} appears twice in the stream", job.id)
            }
            Duplicate::Job(job) => format!(
                "job id {} or key {} appears twice in the stream",
                job.id,
                shown(&job.key)
            ),
            Duplicate::Attempt(job, attempt) => format!(
                "job {}'s history has attempt {} twice",
                job.id,
                shown(&attempt.attempt)
            ),
            Duplicate::Tag => "a tag appears twice".to_owned(),
            Duplicate::Schedule(schedule) => format!(
                "schedule {} appears twice in the stream",
                shown(&schedule.name)
            ),
        }
    }
}

impl Sink for PgImporter {
    fn job(&mut self, line: u64, job: &Job) -> Result<(), TransferError> {
        self.pending.push((line, job.clone()));
        if self.pending.len() >= PIPELINE {
            self.flush()?;
        }
        Ok(())
    }

    fn schedule(&mut self, line: u64, schedule: &Schedule) -> Result<(), TransferError> {
        self.flush()?;
        let values: Vec<&Cell> = schedule.cells().into_iter().collect();
        let what = format!("schedule {}", shown(&schedule.name));
        let row = self.row(
            &self.schedule,
            line,
            &what,
            None,
            &values,
            Schedule::COLUMNS,
            Duplicate::Schedule(schedule),
        )?;
        self.send(&[row])?;
        self.schedules += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Imported, TransferError> {
        self.flush()?;
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
