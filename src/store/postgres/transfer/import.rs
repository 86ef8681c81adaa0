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
