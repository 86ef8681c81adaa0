//! The SQL behind the operations callers ask for: enqueue, look up, list,
//! change, count and prune. Every function here runs on the store thread
//! inside a savepoint that [`super::Store::call`] opened, except
//! [`reconcile_counts`], which runs at start-up in its own transaction.
//! Delivery's SQL is in [`super::delivery`].

use super::StoreError;
use super::delivery::next_due;
use crate::job::{NewJob, State};
use crate::protocol::{AttemptView, Enqueued, JobView};
use crate::time::{self, Millis};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;
use serde_json::value::RawValue;
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
            if view_bytes(&view) > super::listing::VIEWS_BUDGET {
                omit_payload(&mut view);
            }
            Ok(Some(view))
        }
    }
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

fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
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
        let n = u64::try_from(n).unwrap_or_else(|_| {
            // Only a hand edit while the daemon runs can do this; start-up
            // recounts.
            tracing::error!(
                state = state.as_str(),
                count = n,
                "the count of jobs in a state is negative; restart the daemon to recount"
            );
            0
        });
        counts.insert(state, n);
    }
    drop(stmt);
    Ok(Summary {
        counts,
        next_due: next_due(conn)?,
    })
}

/// A state whose kept count disagreed with its jobs at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recount {
    pub state: String,
    /// What `state_counts` said.
    pub kept: i64,
    /// How many jobs there were.
    pub counted: i64,
}

/// Counts the jobs per state and, where `state_counts` disagrees, rewrites
/// it. Every change the daemon makes keeps the two in step; this catches a
/// hand edit of the database. Runs at start-up, in its own transaction;
/// returns each state whose count was wrong.
pub fn reconcile_counts(conn: &Connection) -> Result<Vec<Recount>, StoreError> {
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
        let wrong: Vec<Recount> = states
            .into_iter()
            .map(|s| {
                let n = |counts: &BTreeMap<String, i64>| counts.get(s).copied().unwrap_or(0);
                Recount {
                    state: s.clone(),
                    kept: n(&kept),
                    counted: n(&counted),
                }
            })
            .filter(|r| r.kept != r.counted)
            .collect();
        if !wrong.is_empty() {
            conn.execute("DELETE FROM state_counts", [])?;
            let mut insert =
                conn.prepare("INSERT INTO state_counts (state, jobs) VALUES (?1, ?2)")?;
            for (state, n) in &counted {
                insert.execute(params![state, n])?;
            }
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

/// Where a prune has got to: the finished state it is walking (an index
/// into [`FINISHED_STATES`]) and the last job it examined there, in the
/// order of the `jobs_by_state_due` index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneCursor {
    state: usize,
    scheduled_at: Millis,
    id: i64,
}

impl PruneCursor {
    pub const START: PruneCursor = PruneCursor {
        state: 0,
        scheduled_at: Millis::MIN,
        id: i64::MIN,
    };
}

/// One step of a prune: what it removed, and where the next step starts
/// (`None` once every finished state has been walked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneStep {
    pub pruned: Pruned,
    pub next: Option<PruneCursor>,
}

/// The states a prune may delete, in the order it walks them.
const FINISHED_STATES: [State; 5] = [
    State::Sent,
    State::Skipped,
    State::Failed,
    State::Expired,
    State::Cancelled,
];

/// How many finished jobs, and their attempts, a prune would remove.
pub fn count_prunable(conn: &Connection, before: Millis) -> Result<Pruned, StoreError> {
    let states: Vec<String> = FINISHED_STATES
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    let prunable = format!("state IN ({}) AND updated_at < ?1", states.join(", "));
    let count = |sql: &str| -> Result<u64, StoreError> {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.query_row([before], |r| r.get::<_, i64>(0)))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(StoreError::sqlite("counting finished jobs"))
    };
    Ok(Pruned {
        jobs: count(&format!("SELECT count(*) FROM jobs WHERE {prunable}"))?,
        attempts: count(&format!(
            "SELECT count(*) FROM jobs JOIN attempts ON attempts.job_id = jobs.id WHERE {prunable}"
        ))?,
    })
}

/// The jobs of one state (?2) after a position (?3, ?4) in the
/// `jobs_by_state_due` index, with whether each was last updated before ?1:
/// first those due at the same instant with a higher id, then those due
/// later. (A row-value comparison, `(scheduled_at, id) > (?3, ?4)`, seeks
/// on `scheduled_at` alone and would rescan every job due at that instant
/// on each step.)
pub(super) const PRUNE_STEP_SQL: [&str; 2] = [
    "SELECT id, scheduled_at, updated_at < ?1 FROM jobs
     WHERE state = ?2 AND scheduled_at = ?3 AND id > ?4
     ORDER BY id LIMIT ?5",
    "SELECT id, scheduled_at, updated_at < ?1 FROM jobs
     WHERE state = ?2 AND scheduled_at > ?3
     ORDER BY scheduled_at, id LIMIT ?5",
];

/// Examines up to `limit` finished jobs from `from` on, through the
/// `jobs_by_state_due` index, and deletes those last updated before
/// `before`, with their attempts. Each step costs at most `limit` index
/// entries and row lookups however the queue is made up, and a whole prune
/// reads each finished job once; scheduled jobs are never read.
pub fn prune_step(
    conn: &Connection,
    before: Millis,
    from: PruneCursor,
    limit: usize,
) -> Result<PruneStep, StoreError> {
    let err = || StoreError::sqlite("pruning finished jobs");
    let Some(state) = FINISHED_STATES.get(from.state) else {
        return Ok(PruneStep {
            pruned: Pruned::default(),
            next: None,
        });
    };
    let mut examined: Vec<(i64, Millis, bool)> = Vec::with_capacity(limit);
    for sql in PRUNE_STEP_SQL {
        let room = i64::try_from(limit - examined.len()).unwrap_or(i64::MAX);
        if room == 0 {
            break;
        }
        conn.prepare_cached(sql)
            .and_then(|mut s| {
                let rows = s.query_map(
                    params![before, state.as_str(), from.scheduled_at, from.id, room],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                for row in rows {
                    examined.push(row?);
                }
                Ok(())
            })
            .map_err(err())?;
    }

    let mut pruned = Pruned::default();
    let mut attempts = conn
        .prepare_cached("DELETE FROM attempts WHERE job_id = ?1")
        .map_err(err())?;
    let mut jobs = conn
        .prepare_cached("DELETE FROM jobs WHERE id = ?1")
        .map_err(err())?;
    for &(id, _, old) in &examined {
        if old {
            pruned.attempts += attempts.execute([id]).map_err(err())? as u64;
            pruned.jobs += jobs.execute([id]).map_err(err())? as u64;
        }
    }
    let next = match examined.last() {
        Some(&(id, scheduled_at, _)) if examined.len() >= limit => PruneCursor {
            state: from.state,
            scheduled_at,
            id,
        },
        // This state is done; the next starts from its beginning.
        _ => PruneCursor {
            state: from.state + 1,
            ..PruneCursor::START
        },
    };
    Ok(PruneStep {
        pruned,
        next: (next.state < FINISHED_STATES.len()).then_some(next),
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

/// A row as `get` and `list` show it. Only a row whose state is not a
/// state fails; any other column that cannot be read is shown as it is
/// stored (text with its invalid bytes replaced) or, for JSON columns that
/// are not JSON text, as null; the claim and the start-up sweep quarantine
/// such rows (see [`super::quarantine`]).
fn job_row(r: &Row<'_>) -> rusqlite::Result<JobView> {
    let text = |i: usize| -> rusqlite::Result<Option<String>> {
        Ok(match r.get_ref(i)? {
            ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
            ValueRef::Integer(n) => Some(n.to_string()),
            ValueRef::Real(x) => Some(x.to_string()),
            ValueRef::Null => None,
        })
    };
    let json = |i: usize| -> rusqlite::Result<Option<Box<RawValue>>> {
        Ok(match r.get_ref(i)? {
            ValueRef::Text(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|t| RawValue::from_string(t.to_owned()).ok()),
            _ => None,
        })
    };
    Ok(JobView {
        id: r.get(0)?,
        key: text(1)?,
        kind: text(2)?.unwrap_or_default(),
        channel: text(3)?.unwrap_or_default(),
        enquiry_id: text(4)?,
        scheduled_at: time::format(r.get(5)?),
        state: state_column(r, 6)?,
        attempts: r.get(7)?,
        created_at: time::format(r.get(8)?),
        updated_at: time::format(r.get(9)?),
        last_error: text(10)?,
        result: json(11)?,
        payload: json(12)?.unwrap_or_else(null),
        payload_omitted: None,
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
