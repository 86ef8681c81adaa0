//! Export from PostgreSQL: [`PgSnapshot`], one `REPEATABLE READ`, read-only
//! transaction (see [`super`]).

use super::{cell, cells, runtime};
use crate::config::PostgresConfig;
use crate::store::StoreError;
use crate::store::postgres::{SCHEMA_VERSION, connect, pg_error, schema};
use crate::store::transfer::tags_of;
use crate::transfer::{Attempt, Job, Schedule, Source, TransferError};
use std::collections::HashMap;
use tokio::runtime::Runtime;
use tokio_postgres::{Client, Row};

/// Jobs read per batch of an export.
const BATCH: usize = 500;

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
            let version = schema::stored_version(&client, &database).await?;
            if let Some(version) = version {
                schema::check_tables(&client, &database, version).await?;
            }
            Ok(version)
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
        schema::SQLITE_EQUIVALENT
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
