//! The SQL behind the operations callers ask for: enqueue, look up and
//! count. Every function here runs on the store thread inside a savepoint
//! that [`super::Store::call`] opened, except [`reconcile_counts`], which
//! runs at start-up in its own transaction. Changes to one job are in
//! [`super::changes`], pruning in [`super::prune`], delivery's SQL in
//! [`super::delivery`].

use super::StoreError;
use super::deferral::{self, Report, Timing};
use super::delivery::next_due;
use super::quarantine;
use super::view::{self, JOB_COLUMNS, Read};
pub(super) use super::view::{omit_payload, view_bytes};
use crate::job::{Kind, NewJob, State};
use crate::protocol::{Enqueued, JobView};
use crate::time::Millis;
use crate::window::Calendar;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

pub use super::changes::{Refusal, cancel, requeue, reschedule};
pub use super::prune::{Pruned, prune_step};
pub use crate::protocol::Lookup;

/// Counts per state and the next due time, for `stats` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub counts: BTreeMap<State, u64>,
    pub next_due: Option<Millis>,
    /// Scheduled jobs waiting for their window to open.
    pub deferred: u64,
    /// The daemons working this queue. A SQLite queue has one, the daemon
    /// asking, which holds its lock.
    pub nodes: Vec<NodeStatus>,
}

/// One daemon working the queue, as `stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its `node.name`.
    pub name: String,
    /// When it was last known to be alive.
    pub last_heartbeat: Millis,
    /// Its jobs in `sending`, each a request that may be in flight.
    pub in_flight: u64,
}

/// Stores new jobs, each `scheduled` with its `due_at` settled against its
/// window (so it may be `expired` or `held` at once, see
/// [`deferral::settle`]); a job whose key is taken is not stored, and its
/// answer describes the job that holds the key.
pub fn enqueue(
    conn: &Connection,
    calendar: &Calendar,
    jobs: &[NewJob],
    now: Millis,
) -> Result<Vec<Enqueued>, StoreError> {
    let err = StoreError::sqlite("enqueueing");
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO jobs (key, kind, channel, enquiry_id, scheduled_at, state, created_at,
                               updated_at, payload, expires_at, due_at, timezone, send_window, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, 'scheduled', ?6, ?6, ?7, ?8, ?5, ?9, ?10, ?11)
             ON CONFLICT (key) DO NOTHING
             RETURNING id",
        )
        .map_err(StoreError::sqlite("enqueueing"))?;
    let mut tag = conn
        .prepare_cached("INSERT OR IGNORE INTO job_tags (tag, job_id) VALUES (?1, ?2)")
        .map_err(StoreError::sqlite("enqueueing"))?;
    let mut existing = conn
        .prepare_cached("SELECT id, state, scheduled_at, due_at FROM jobs WHERE key = ?1")
        .map_err(StoreError::sqlite("enqueueing"))?;
    // New jobs are counted below, once per call; settling may move one on
    // (to `expired` or `held`) before that, and the trigger then takes it
    // from a count that must exist for the sum to come out right.
    conn.prepare_cached("INSERT OR IGNORE INTO state_counts (state, jobs) VALUES ('scheduled', 0)")
        .and_then(|mut s| s.execute([]))
        .map_err(StoreError::sqlite("counting new jobs"))?;
    let mut out = Vec::with_capacity(jobs.len());
    let mut inserted = 0_i64;
    for job in jobs {
        let payload = Value::Object(job.payload.clone()).to_string();
        let tags = (!job.tags.is_empty()).then(|| {
            Value::from(job.tags.iter().map(String::as_str).collect::<Vec<_>>()).to_string()
        });
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
                    job.expires_at,
                    job.timezone,
                    job.window,
                    tags,
                ],
                |r| r.get(0),
            )
            .optional()
            .map_err(StoreError::sqlite("enqueueing"))?;
        inserted += i64::from(id.is_some());
        let answer = match (id, &job.key) {
            (Some(id), _) => {
                for t in &job.tags {
                    tag.execute(params![t, id])
                        .map_err(StoreError::sqlite("tagging a job"))?;
                }
                if let Some(after) = &job.after {
                    let state = super::chain::attach(conn, calendar, id, after, now)?;
                    out.push(follow_up_answer(conn, id, state)?);
                    continue;
                }
                let timing = Timing::of_new(id, job);
                let settled = deferral::settle(conn, calendar, &timing, now, Report::Each)?;
                deferral::enqueued(id, job, settled)
            }
            (None, Some(key)) => {
                let (id, stored, scheduled_at, due_at) = existing
                    .query_row([key], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            view::raw_text(r.get_ref(1)?).unwrap_or_default(),
                            view::time_text(r.get_ref(2)?).unwrap_or_default(),
                            view::time_text(r.get_ref(3)?),
                        ))
                    })
                    .map_err(StoreError::sqlite("looking up a duplicate key"))?;
                let state = match State::parse(&stored) {
                    Some(state) => state,
                    None => {
                        quarantine::bad_state(conn, id, &stored, now)?;
                        State::Failed
                    }
                };
                Enqueued {
                    id,
                    state,
                    scheduled_at,
                    due_at: due_at.filter(|_| state == State::Scheduled),
                    duplicate: true,
                }
            }
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

/// The answer for follow-up `id`, just stored in `state`: its times as
/// its parent's end set them (while `waiting`, the earliest it could be).
fn follow_up_answer(conn: &Connection, id: i64, state: State) -> Result<Enqueued, StoreError> {
    let (scheduled_at, due_at) = conn
        .prepare_cached("SELECT scheduled_at, due_at FROM jobs WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([id], |r| {
                Ok((
                    view::time_text(r.get_ref(0)?).unwrap_or_default(),
                    view::time_text(r.get_ref(1)?),
                ))
            })
        })
        .map_err(StoreError::sqlite("enqueueing a follow-up"))?;
    Ok(Enqueued {
        id,
        state,
        scheduled_at,
        due_at: due_at.filter(|_| state == State::Scheduled),
        duplicate: false,
    })
}

/// Job `lookup` as a view. A row whose state is not a state is
/// quarantined on the spot and shown as it then is.
pub fn get(
    conn: &Connection,
    calendar: &Calendar,
    lookup: &Lookup,
    now: Millis,
) -> Result<Option<JobView>, StoreError> {
    let read = |conn: &Connection| {
        match lookup {
            Lookup::Id(id) => conn
                .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))
                .and_then(|mut s| s.query_row([id], view::read).optional()),
            Lookup::Key(key) => conn
                .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE key = ?1"))
                .and_then(|mut s| s.query_row([key], view::read).optional()),
        }
        .map_err(StoreError::sqlite("reading a job"))
    };
    let mut row = read(conn)?;
    if let Some(Read::BadState(id, state)) = &row {
        quarantine::bad_state(conn, *id, state, now)?;
        row = read(conn)?;
    }
    match row {
        None | Some(Read::BadState(..)) => Ok(None),
        Some(Read::View(view)) => {
            let mut view = *view;
            show_rule(&mut view, calendar);
            view.history = view::history(conn, view.id)?;
            view.children = view::children(conn, view.id)?;
            if view_bytes(&view) > super::listing::VIEWS_BUDGET {
                omit_payload(&mut view);
            }
            Ok(Some(view))
        }
    }
}

/// Puts the zone and window that govern the job in its view: what it
/// named, or the config's defaults. A name the config no longer has is
/// shown as stored.
pub(super) fn show_rule(view: &mut JobView, calendar: &Calendar) {
    let Some(kind) = Kind::parse(&view.kind) else {
        return;
    };
    if let Ok(rule) = calendar.rule(view.timezone.as_deref(), view.window.as_deref(), kind) {
        view.timezone = Some(rule.zone_name().to_owned());
        view.window = Some(rule.window_name().to_owned());
    }
}

/// Counts per state from `state_counts`, which every change keeps in step
/// with `jobs`, and the next due time. A count kept for a state that is
/// not a state (after a hand edit) is put right first: its jobs are
/// quarantined and the count dropped (see [`quarantine::unknown_counts`]).
///
/// `node` is the daemon asking: it holds the queue's lock, so it is the
/// one node, alive now, and every job in `sending` is its own.
pub fn summary(conn: &Connection, node: &str, now: Millis) -> Result<Summary, StoreError> {
    quarantine::unknown_counts(conn, now)?;
    let mut counts: BTreeMap<State, u64> = State::ALL.iter().map(|s| (*s, 0)).collect();
    let mut stmt = conn
        .prepare_cached("SELECT state, jobs FROM state_counts")
        .map_err(StoreError::sqlite("counting jobs"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                view::raw_text(r.get_ref(0)?).unwrap_or_default(),
                r.get_ref(1)?.as_i64().unwrap_or(0),
            ))
        })
        .map_err(StoreError::sqlite("counting jobs"))?;
    for row in rows {
        let (stored, n) = row.map_err(StoreError::sqlite("counting jobs"))?;
        // Only left when more jobs of it remain than one call quarantines;
        // the next call goes on.
        let Some(state) = State::parse(&stored) else {
            continue;
        };
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
    let nodes = vec![NodeStatus {
        name: node.to_owned(),
        last_heartbeat: now,
        in_flight: counts.get(&State::Sending).copied().unwrap_or(0),
    }];
    Ok(Summary {
        counts,
        next_due: next_due(conn)?,
        deferred: deferral::deferred(conn)?,
        nodes,
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
/// hand edit of the database. Jobs whose state is not a state are
/// quarantined first, and counts kept for such states dropped. Runs at
/// start-up, in its own transaction; returns each state whose count was
/// wrong.
///
/// Counting walks the `jobs_by_state_due` index once; only when that finds
/// a state that is not a state does a second walk look for its jobs.
pub fn reconcile_counts(conn: &Connection, now: Millis) -> Result<Vec<Recount>, StoreError> {
    let read = |sql: &str| -> rusqlite::Result<BTreeMap<String, i64>> {
        conn.prepare(sql)?
            .query_map([], |r| {
                Ok((view::raw_text(r.get_ref(0)?).unwrap_or_default(), r.get(1)?))
            })?
            .filter(|row| !matches!(row, Ok((_, 0))))
            .collect()
    };
    let count_jobs = "SELECT state, count(*) FROM jobs GROUP BY state";
    super::in_transaction(conn, "checking the counts per state", || {
        let mut counted = read(count_jobs)?;
        if counted.keys().any(|s| State::parse(s).is_none()) {
            quarantine::unknown_states(conn, now)?;
            counted = read(count_jobs)?;
        }
        // A count kept for a state that is not a state means nothing even
        // at zero (the zero filter below would hide it).
        conn.execute(
            &format!(
                "DELETE FROM state_counts WHERE jobs = 0 AND state NOT IN ({})",
                quarantine::known_states()
            ),
            [],
        )?;
        let kept = read("SELECT state, jobs FROM state_counts")?;
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
