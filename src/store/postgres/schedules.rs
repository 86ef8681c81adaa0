//! Recurring sends on PostgreSQL, as [`super::super::schedules`] on
//! SQLite. An occurrence is created in the transaction that moves its
//! schedule on, under the schedule row's lock, so that of several nodes
//! only one creates it.
//!
//! Columns are typed here, but a hand edit can still leave a `catch_up`
//! we do not know or a `job` that is not a JSON object: such a row is
//! read with SQLite's own [`parse`] and [`shown`], so it is shown, and set
//! aside when met due, exactly as there.

use super::pool::Tx;
use super::queue::{Queue, notify_due};
use super::{StoreError, pg_error};
use crate::protocol::Enqueued;
use crate::schedule::wire::Occurrence;
use crate::schedule::{Row, Schedule, Stored};
use crate::store::Firing;
use crate::store::schedules::{COLUMNS, RECENT, parse, shown};
use crate::time::Millis;
use crate::transfer::Cell;
use crate::window::Calendar;
use serde_json::Value;
use tokio_postgres::types::ToSql;

/// A row as read, with the values that identify it as stored, so that an
/// unreadable row is set aside only if no put or delete changed it since.
struct Read {
    row: Row,
    name: String,
    next_at: Option<Millis>,
    revision: i64,
}

/// Reads one row of [`COLUMNS`]. Every column but `next_at` is NOT NULL,
/// so the cells are text and integers; what they say is checked by
/// SQLite's [`parse`].
fn read(row: &tokio_postgres::Row) -> Result<Read, tokio_postgres::Error> {
    let mut cells = [(); 7].map(|()| Cell::Null);
    for (i, cell) in cells.iter_mut().take(5).enumerate() {
        *cell = row.try_get::<_, Option<String>>(i)?.into();
    }
    let next_at: Option<Millis> = row.try_get(5)?;
    let revision: i64 = row.try_get(6)?;
    cells[5] = next_at.map_or(Cell::Null, Cell::Integer);
    cells[6] = Cell::Integer(revision);
    let name = cells[0].as_str().unwrap_or_default().to_owned();
    let row = parse(&cells).map_or_else(|why| Row::Unreadable(shown(&cells, why)), Row::Readable);
    Ok(Read {
        row,
        name,
        next_at,
        revision,
    })
}

/// The rows `filter` picks, with `args`.
async fn select(
    tx: &Tx<'_>,
    filter: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Read>, StoreError> {
    let during = "reading schedules";
    let sql = format!("SELECT {COLUMNS} FROM schedules {filter}");
    tx.query(&sql, args)
        .await
        .map_err(pg_error(during))?
        .iter()
        .map(|r| read(r).map_err(pg_error(during)))
        .collect()
}

/// A schedule's newest occurrences: its tag's newest jobs, newest first
/// (occurrences are created in time order, so by id).
async fn recent(tx: &Tx<'_>, name: &str) -> Result<Vec<Occurrence>, StoreError> {
    let during = "reading a schedule's occurrences";
    let rows = tx
        .query(
            "SELECT j.id, j.state, j.scheduled_at FROM job_tags t JOIN jobs j ON j.id = t.job_id
             WHERE t.tag = $1 ORDER BY t.job_id DESC LIMIT $2",
            &[&crate::schedule::tag(name), &(RECENT as i64)],
        )
        .await
        .map_err(pg_error(during))?;
    rows.iter()
        .map(|r| {
            Ok(Occurrence {
                id: r.try_get(0)?,
                state: r.try_get(1)?,
                at: r.try_get(2)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(pg_error(during))
}

/// Each row with its recent occurrences.
async fn with_recent(
    tx: &Tx<'_>,
    rows: Vec<Read>,
) -> Result<Vec<(Row, Vec<Occurrence>)>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let recent = recent(tx, &r.name).await?;
        out.push((r.row, recent));
    }
    Ok(out)
}

/// Stops a row that cannot be read from being due again, unless a put or
/// a delete changed it since it was read; logs it once.
async fn set_aside(tx: &Tx<'_>, read: &Read, why: &str) -> Result<(), StoreError> {
    let changed = tx
        .execute(
            "UPDATE schedules SET next_at = NULL
             WHERE name = $1 AND next_at IS NOT DISTINCT FROM $2 AND revision = $3",
            &[&read.name, &read.next_at, &read.revision],
        )
        .await
        .map_err(pg_error("setting an unreadable schedule aside"))?;
    if changed > 0 {
        tracing::error!(
            schedule = read.row.name(),
            why,
            "a schedule's row cannot be read, so it cannot fire; it is stopped (next_at set to null) until put again with schedule_put, or deleted with schedule_delete (was the database edited by hand, or the schedule imported?)"
        );
    }
    Ok(())
}

impl Queue {
    /// Creates or replaces a schedule; whether it is new.
    pub async fn put_schedule(
        &self,
        s: Schedule,
        next_at: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let during = "putting a schedule";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        // `xmax = 0` only on a row this statement inserted: an update
        // stamps the old version's xmax. Of two puts of a new name at
        // once, exactly one is told it is new.
        let inserted: bool = tx
            .query_one(
                "INSERT INTO schedules AS s
                     (name, cron, timezone, catch_up, job, next_at, revision, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)
                 ON CONFLICT (name) DO UPDATE SET cron = $2, timezone = $3, catch_up = $4,
                     job = $5, next_at = $6, updated_at = $7,
                     revision = CASE WHEN s.revision < 9223372036854775807
                                     THEN s.revision + 1 ELSE 1 END
                 RETURNING (xmax = 0)",
                &[
                    &s.name,
                    &s.cron,
                    &s.timezone,
                    &s.catch_up.as_str(),
                    &Value::Object(s.job.clone()).to_string(),
                    &next_at,
                    &now,
                ],
            )
            .await
            .map_err(pg_error(during))?
            .try_get(0)
            .map_err(pg_error(during))?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok(inserted)
    }

    pub async fn get_schedule(
        &self,
        name: String,
    ) -> Result<Option<(Row, Vec<Occurrence>)>, StoreError> {
        let during = "reading a schedule";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        let rows = select(&tx, "WHERE name = $1", &[&name]).await?;
        let found = with_recent(&tx, rows).await?.pop();
        tx.commit().await.map_err(pg_error(during))?;
        Ok(found)
    }

    /// Up to `limit` schedules named after `after`, in name order (byte
    /// order, as SQLite's), unreadable rows included.
    pub async fn list_schedules(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(Row, Vec<Occurrence>)>, StoreError> {
        let during = "listing schedules";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = select(
            &tx,
            r#"WHERE name COLLATE "C" > $1 ORDER BY name COLLATE "C" LIMIT $2"#,
            &[&after.unwrap_or_default(), &limit],
        )
        .await?;
        let page = with_recent(&tx, rows).await?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok(page)
    }

    pub async fn delete_schedule(&self, name: String) -> Result<bool, StoreError> {
        let during = "deleting a schedule";
        let client = self.pool.get().await?;
        let deleted = client
            .execute("DELETE FROM schedules WHERE name = $1", &[&name])
            .await
            .map_err(pg_error(during))?;
        Ok(deleted > 0)
    }

    /// The schedules due at `now`; a due row that cannot be read is set
    /// aside in the same transaction.
    pub async fn due_schedules(&self, now: Millis) -> Result<Vec<Stored>, StoreError> {
        let during = "reading due schedules";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        let rows = select(
            &tx,
            r#"WHERE next_at <= $1 ORDER BY next_at, name COLLATE "C""#,
            &[&now],
        )
        .await?;
        let mut due = Vec::with_capacity(rows.len());
        for read in rows {
            match &read.row {
                Row::Readable(stored) => due.push(stored.clone()),
                Row::Unreadable(u) => set_aside(&tx, &read, &u.why).await?,
            }
        }
        tx.commit().await.map_err(pg_error(during))?;
        Ok(due)
    }

    /// How many schedules there are, and the earliest next occurrence.
    pub async fn schedules_overview(&self) -> Result<(u64, Option<Millis>), StoreError> {
        let during = "counting schedules";
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT count(*), min(next_at) FROM schedules", &[])
            .await
            .map_err(pg_error(during))?;
        let count: i64 = row.try_get(0).map_err(pg_error(during))?;
        let earliest: Option<Millis> = row.try_get(1).map_err(pg_error(during))?;
        Ok((u64::try_from(count).unwrap_or(0), earliest))
    }

    /// Creates one schedule's due occurrences and moves its next
    /// occurrence on, in one transaction under the schedule row's lock;
    /// `None` (nothing written) when the schedule changed since it was
    /// read: a put, a delete, or another node's firing came first.
    pub async fn fire_schedule(
        &self,
        calendar: &Calendar,
        firing: Firing,
        now: Millis,
    ) -> Result<Option<Vec<Enqueued>>, StoreError> {
        let during = "moving a schedule on";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        // A second node firing the same schedule waits here for the first
        // to commit, then reads the moved next_at and writes nothing.
        let current = tx
            .query_opt(
                "SELECT revision, next_at FROM schedules WHERE name = $1 FOR UPDATE",
                &[&firing.name],
            )
            .await
            .map_err(pg_error(during))?;
        let unchanged = match &current {
            Some(row) => {
                let revision: i64 = row.try_get(0).map_err(pg_error(during))?;
                let next_at: Option<Millis> = row.try_get(1).map_err(pg_error(during))?;
                revision == firing.revision && next_at == firing.was
            }
            None => false,
        };
        if !unchanged {
            // Dropping the transaction rolls it back, releasing the lock.
            return Ok(None);
        }
        let created = super::jobs::enqueue_in(&tx, calendar, &firing.jobs, now).await?;
        tx.execute(
            "UPDATE schedules SET next_at = $2 WHERE name = $1",
            &[&firing.name, &firing.next_at],
        )
        .await
        .map_err(pg_error(during))?;
        if !firing.jobs.is_empty() {
            notify_due(&tx).await?;
        }
        tx.commit().await.map_err(pg_error(during))?;
        Ok(Some(created))
    }
}
