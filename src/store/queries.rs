//! The SQL behind the operations callers ask for: enqueue, look up, list,
//! change, count and prune. Every function here runs on the store thread
//! inside a savepoint that [`super::Store::call`] opened. Delivery's SQL is
//! in [`super::delivery`].

use super::StoreError;
use super::delivery::next_due;
use crate::job::{Kind, NewJob, State};
use crate::protocol::{AttemptView, Enqueued, JobView, ListOrder};
use crate::time::{self, Millis};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

pub use crate::protocol::Lookup;

/// Why a change to a job was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    /// The job's state does not allow the change.
    Conflict {
        state: State,
    },
    /// The new time is at or after the job's expiry.
    PastExpiry {
        expires_at: Millis,
    },
}

/// Counts per state and the next due time, for `stats` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub counts: BTreeMap<State, u64>,
    pub next_due: Option<Millis>,
}

const JOB_COLUMNS: &str = "id, key, kind, channel, enquiry_id, scheduled_at, state, attempts, \
     created_at, updated_at, last_error, result, payload, expires_at";

pub fn enqueue(
    conn: &Connection,
    jobs: &[NewJob],
    now: Millis,
) -> Result<Vec<Enqueued>, StoreError> {
    let err = StoreError::sqlite("enqueueing");
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO jobs (key, kind, channel, enquiry_id, scheduled_at, state, created_at, updated_at, payload, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'scheduled', ?6, ?6, ?7, ?8)
             ON CONFLICT (key) DO NOTHING
             RETURNING id",
        )
        .map_err(StoreError::sqlite("enqueueing"))?;
    let mut existing = conn
        .prepare_cached("SELECT id, state, scheduled_at FROM jobs WHERE key = ?1")
        .map_err(StoreError::sqlite("enqueueing"))?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut inserted = 0_i64;
    for job in jobs {
        let payload = Value::Object(job.payload.clone()).to_string();
        let id: Option<i64> = insert
            .query_row(
                params![
                    job.key,
                    job.kind.as_str(),
                    job.channel,
                    job.enquiry_id,
                    job.scheduled_at,
                    now,
                    payload,
                    job.expires_at
                ],
                |r| r.get(0),
            )
            .optional()
            .map_err(StoreError::sqlite("enqueueing"))?;
        inserted += i64::from(id.is_some());
        let answer = match (id, &job.key) {
            (Some(id), _) => Enqueued {
                id,
                state: State::Scheduled,
                scheduled_at: time::format(job.scheduled_at),
                duplicate: false,
            },
            (None, Some(key)) => existing
                .query_row([key], |r| {
                    Ok(Enqueued {
                        id: r.get(0)?,
                        state: state_column(r, 1)?,
                        scheduled_at: time::format(r.get(2)?),
                        duplicate: true,
                    })
                })
                .map_err(StoreError::sqlite("looking up a duplicate key"))?,
            (None, None) => {
                return Err(err(rusqlite::Error::QueryReturnedNoRows));
            }
        };
        out.push(answer);
    }
    // Triggers count every other change (schema version 3); inserts are
    // counted here, once per call.
    conn.prepare_cached(
        "INSERT INTO state_counts (state, jobs) VALUES ('scheduled', ?1)
         ON CONFLICT (state) DO UPDATE SET jobs = jobs + excluded.jobs",
    )
    .and_then(|mut s| s.execute([inserted]))
    .map_err(StoreError::sqlite("counting new jobs"))?;
    Ok(out)
}

pub fn get(conn: &Connection, lookup: &Lookup) -> Result<Option<JobView>, StoreError> {
    let err = StoreError::sqlite("reading a job");
    let row = match lookup {
        Lookup::Id(id) => conn
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
            .and_then(|mut s| s.query_row([id], job_row).optional()),
        Lookup::Key(key) => conn
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE key = ?1"))
            .and_then(|mut s| s.query_row([key], job_row).optional()),
    }
    .map_err(err)?;
    match row {
        None => Ok(None),
        Some(mut view) => {
            view.history = history(conn, view.id)?;
            Ok(Some(view))
        }
    }
}

pub fn list(
    conn: &Connection,
    state: Option<State>,
    limit: u32,
    order: ListOrder,
) -> Result<Vec<JobView>, StoreError> {
    let order = match order {
        ListOrder::Due => "scheduled_at, id",
        ListOrder::Recent => "updated_at DESC, id DESC",
    };
    let mut views = match state {
        Some(state) => conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state = ?1 ORDER BY {order} LIMIT ?2"
            ))
            .and_then(|mut s| {
                s.query_map(params![state.as_str(), limit], job_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            }),
        None => conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs ORDER BY {order} LIMIT ?1"
            ))
            .and_then(|mut s| {
                s.query_map([limit], job_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            }),
    }
    .map_err(StoreError::sqlite("listing jobs"))?;
    for view in &mut views {
        view.history = history(conn, view.id)?;
    }
    Ok(views)
}

fn current_state(conn: &Connection, id: i64) -> Result<Option<State>, StoreError> {
    conn.prepare_cached("SELECT state FROM jobs WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| state_column(r, 0)).optional())
        .map_err(StoreError::sqlite("reading a job"))
}

/// Applies `sql` (which takes ?1 = id, ?2 = now, ?3 = extra) if the job is
/// in one of `from`, then returns the job as it now is.
fn change(
    conn: &Connection,
    id: i64,
    from: &[State],
    sql: &str,
    now: Millis,
    extra: Option<Millis>,
) -> Result<Result<JobView, Refusal>, StoreError> {
    let Some(state) = current_state(conn, id)? else {
        return Ok(Err(Refusal::NotFound));
    };
    if !from.contains(&state) {
        return Ok(Err(Refusal::Conflict { state }));
    }
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute(params![id, now, extra]))
        .map_err(StoreError::sqlite("changing a job"))?;
    match get(conn, &Lookup::Id(id))? {
        Some(view) => Ok(Ok(view)),
        None => Ok(Err(Refusal::NotFound)),
    }
}

pub fn cancel(
    conn: &Connection,
    id: i64,
    now: Millis,
) -> Result<Result<JobView, Refusal>, StoreError> {
    change(
        conn,
        id,
        &[State::Scheduled, State::Held],
        "UPDATE jobs SET state = 'cancelled', updated_at = ?2 WHERE id = ?1 AND ?3 IS NULL",
        now,
        None,
    )
}

pub fn reschedule(
    conn: &Connection,
    id: i64,
    at: Millis,
    now: Millis,
) -> Result<Result<JobView, Refusal>, StoreError> {
    let expires_at: Option<Millis> = conn
        .prepare_cached("SELECT expires_at FROM jobs WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(StoreError::sqlite("reading a job"))?
        .flatten();
    if let Some(expiry) = expires_at.filter(|e| at >= *e) {
        return Ok(Err(Refusal::PastExpiry { expires_at: expiry }));
    }
    change(
        conn,
        id,
        &[State::Scheduled],
        "UPDATE jobs SET scheduled_at = ?3, updated_at = ?2 WHERE id = ?1",
        now,
        Some(at),
    )
}

/// Back to `scheduled`, due now, with a fresh set of attempts; the history stays.
pub fn requeue(
    conn: &Connection,
    id: i64,
    now: Millis,
) -> Result<Result<JobView, Refusal>, StoreError> {
    change(
        conn,
        id,
        &[State::Failed, State::Held],
        "UPDATE jobs SET state = 'scheduled', scheduled_at = ?2, attempts = 0, updated_at = ?2
         WHERE id = ?1 AND ?3 IS NULL",
        now,
        None,
    )
}

/// Counts per state from `state_counts`, which every change keeps in step
/// with `jobs`, and the next due time.
pub fn summary(conn: &Connection) -> Result<Summary, StoreError> {
    let mut counts: BTreeMap<State, u64> = State::ALL.iter().map(|s| (*s, 0)).collect();
    let mut stmt = conn
        .prepare_cached("SELECT state, jobs FROM state_counts")
        .map_err(StoreError::sqlite("counting jobs"))?;
    let rows = stmt
        .query_map([], |r| Ok((state_column(r, 0)?, r.get::<_, i64>(1)?)))
        .map_err(StoreError::sqlite("counting jobs"))?;
    for row in rows {
        let (state, n) = row.map_err(StoreError::sqlite("counting jobs"))?;
        counts.insert(state, u64::try_from(n).unwrap_or(0));
    }
    drop(stmt);
    Ok(Summary {
        counts,
        next_due: next_due(conn)?,
    })
}

/// Counts the jobs per state and, where `state_counts` disagrees, rewrites
/// it. Every change the daemon makes keeps the two in step; this catches a
/// hand edit of the database. Runs at start-up, in its own transaction;
/// returns each state whose count was wrong, as (state, kept, counted).
pub fn reconcile_counts(conn: &Connection) -> Result<Vec<(String, i64, i64)>, StoreError> {
    let read = |sql: &str| -> rusqlite::Result<BTreeMap<String, i64>> {
        conn.prepare(sql)?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .filter(|row| !matches!(row, Ok((_, 0))))
            .collect()
    };
    super::in_transaction(conn, "checking the counts per state", || {
        let kept = read("SELECT state, jobs FROM state_counts")?;
        let counted = read("SELECT state, count(*) FROM jobs GROUP BY state")?;
        let states: BTreeSet<&String> = kept.keys().chain(counted.keys()).collect();
        let wrong: Vec<(String, i64, i64)> = states
            .into_iter()
            .map(|s| {
                let n = |counts: &BTreeMap<String, i64>| counts.get(s).copied().unwrap_or(0);
                (s.clone(), n(&kept), n(&counted))
            })
            .filter(|(_, kept, counted)| kept != counted)
            .collect();
        if !wrong.is_empty() {
            conn.execute_batch(
                "DELETE FROM state_counts;
                 INSERT INTO state_counts (state, jobs) SELECT state, count(*) FROM jobs GROUP BY state;",
            )?;
        }
        Ok(wrong)
    })
}

/// What a prune removed, or would remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub attempts: u64,
}

/// One batch of a prune: what it removed, and the highest job id it looked
/// at (`None` once no finished job is left past the previous batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneBatch {
    pub pruned: Pruned,
    pub through: Option<i64>,
}

const FINISHED: &str =
    "state IN ('sent', 'skipped', 'failed', 'expired', 'cancelled') AND updated_at < ?1";

/// How many finished jobs, and their attempts, a prune would remove.
pub fn count_prunable(conn: &Connection, before: Millis) -> Result<Pruned, StoreError> {
    let count = |sql: &str| -> Result<u64, StoreError> {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.query_row([before], |r| r.get::<_, i64>(0)))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(StoreError::sqlite("counting finished jobs"))
    };
    Ok(Pruned {
        jobs: count(&format!("SELECT count(*) FROM jobs WHERE {FINISHED}"))?,
        attempts: count(&format!(
            "SELECT count(*) FROM jobs JOIN attempts ON attempts.job_id = jobs.id WHERE {FINISHED}"
        ))?,
    })
}

/// Deletes up to `limit` finished jobs with ids above `after`, and their
/// attempts. The jobs are walked in id order (`NOT INDEXED` keeps SQLite on
/// the rowid), so a whole prune reads the table once however many batches
/// it takes.
pub fn prune_batch(
    conn: &Connection,
    before: Millis,
    after: i64,
    limit: usize,
) -> Result<PruneBatch, StoreError> {
    let err = || StoreError::sqlite("pruning finished jobs");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let through: Option<i64> = conn
        .prepare_cached(&format!(
            "SELECT max(id) FROM (SELECT id FROM jobs NOT INDEXED
             WHERE id > ?2 AND {FINISHED} ORDER BY id LIMIT ?3)"
        ))
        .and_then(|mut s| s.query_row(params![before, after, limit], |r| r.get(0)))
        .map_err(err())?;
    let Some(through) = through else {
        return Ok(PruneBatch {
            pruned: Pruned::default(),
            through: None,
        });
    };
    let in_batch = format!("id > ?2 AND id <= ?3 AND {FINISHED}");
    let attempts = conn
        .prepare_cached(&format!(
            "DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs NOT INDEXED WHERE {in_batch})"
        ))
        .and_then(|mut s| s.execute(params![before, after, through]))
        .map_err(err())?;
    let jobs = conn
        .prepare_cached(&format!("DELETE FROM jobs NOT INDEXED WHERE {in_batch}"))
        .and_then(|mut s| s.execute(params![before, after, through]))
        .map_err(err())?;
    Ok(PruneBatch {
        pruned: Pruned {
            jobs: jobs as u64,
            attempts: attempts as u64,
        },
        through: Some(through),
    })
}

fn history(conn: &Connection, id: i64) -> Result<Vec<AttemptView>, StoreError> {
    conn.prepare_cached(
        "SELECT seq, started_at, finished_at, status, error, decision, ambiguous, latency_ms
         FROM attempts WHERE job_id = ?1 ORDER BY seq",
    )
    .and_then(|mut s| {
        s.query_map([id], |r| {
            Ok(AttemptView {
                attempt: r.get(0)?,
                started_at: time::format(r.get(1)?),
                finished_at: r.get::<_, Option<Millis>>(2)?.map(time::format),
                status: r.get(3)?,
                error: r.get(4)?,
                decision: r.get(5)?,
                ambiguous: r.get(6)?,
                latency_ms: r
                    .get::<_, Option<i64>>(7)?
                    .and_then(|ms| u64::try_from(ms).ok()),
            })
        })?
        .collect()
    })
    .map_err(StoreError::sqlite("reading attempt history"))
}

fn job_row(r: &Row<'_>) -> rusqlite::Result<JobView> {
    let json = |text: Option<String>| text.and_then(|t| serde_json::from_str::<Value>(&t).ok());
    Ok(JobView {
        id: r.get(0)?,
        key: r.get(1)?,
        kind: kind_column(r, 2)?,
        channel: r.get(3)?,
        enquiry_id: r.get(4)?,
        scheduled_at: time::format(r.get(5)?),
        state: state_column(r, 6)?,
        attempts: r.get(7)?,
        created_at: time::format(r.get(8)?),
        updated_at: time::format(r.get(9)?),
        last_error: r.get(10)?,
        result: json(r.get(11)?),
        payload: json(r.get(12)?).unwrap_or(Value::Null),
        expires_at: r.get::<_, Option<Millis>>(13)?.map(time::format),
        history: Vec::new(),
    })
}

fn bad_column(index: usize, text: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        index,
        rusqlite::types::Type::Text,
        format!("unexpected value {text:?}").into(),
    )
}

fn state_column(r: &Row<'_>, index: usize) -> rusqlite::Result<State> {
    let text: String = r.get(index)?;
    State::parse(&text).ok_or_else(|| bad_column(index, &text))
}

pub(super) fn kind_column(r: &Row<'_>, index: usize) -> rusqlite::Result<Kind> {
    let text: String = r.get(index)?;
    Kind::parse(&text).ok_or_else(|| bad_column(index, &text))
}
