//! Jobs in: enqueue, get, cancel, reschedule and requeue on PostgreSQL,
//! each one transaction, as [`super::super::queries`] and
//! [`super::super::changes`] are on SQLite, with the same answers,
//! refusals and log lines.
//!
//! Several nodes may change one job at once: every change reads the job
//! `FOR UPDATE` before it checks its state, so of a cancel, a reschedule
//! and a claim, each sees what the one before it committed, and none is
//! lost. A key two nodes enqueue at once is stored once: the second
//! insert waits for the first to commit, finds the key taken, and answers
//! the stored job as a duplicate.

use super::chain::{self, current_state};
use super::deferral::{settle, settle_row};
use super::group::NewOne;
use super::pool::Tx;
use super::queue::{Queue, notify_due};
use super::{pg_error, view};
use crate::job::{NewJob, State};
use crate::protocol::{Enqueued, JobView};
use crate::store::deferral::{Change, Report, Settled, Timing, enqueued, judge};
use crate::store::{Lookup, Refusal, StoreError, UnknownParent};
use crate::time::{self, Millis};
use crate::window::{Calendar, Plan};
use serde_json::Value;
use tokio_postgres::types::ToSql;

impl Queue {
    /// Stores new jobs; with `check_parents`, first checks that each
    /// `after` names a job (stored, or earlier in `jobs` by key), and when
    /// one does not, stores nothing and says which.
    pub async fn enqueue(
        &self,
        calendar: &Calendar,
        mut jobs: Vec<NewJob>,
        check_parents: bool,
        now: Millis,
    ) -> Result<Result<Vec<Enqueued>, UnknownParent>, StoreError> {
        let during = "enqueueing";
        let alone = matches!(jobs.as_slice(),
            [job] if job.after.is_none() && due_as_asked(calendar, job, now));
        if alone && let Some(job) = jobs.pop() {
            let one = NewOne { job, now };
            return Ok(Ok(vec![self.enqueues.store(one).await?]));
        }
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        if check_parents && let Some(unknown) = chain::unknown_parent(&tx, &jobs).await? {
            return Ok(Err(unknown));
        }
        let stored = enqueue_in(&tx, calendar, &jobs, now).await?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok(Ok(stored))
    }

    pub async fn get(
        &self,
        calendar: &Calendar,
        lookup: Lookup,
        now: Millis,
    ) -> Result<Option<JobView>, StoreError> {
        let during = "reading a job";
        // PostgreSQL text cannot hold NUL, so no stored key has one (and
        // the server would refuse the statement).
        if let Lookup::Key(key) = &lookup
            && key.contains('\0')
        {
            return Ok(None);
        }
        let mut client = self.pool.get().await?;
        // One snapshot for the job, its history and its children: at READ
        // COMMITTED each statement would see the commits made before it,
        // and a finish committed between them would show a `sending` job
        // whose attempt has ended.
        let tx = client
            .begin_with(tokio_postgres::IsolationLevel::RepeatableRead, false)
            .await
            .map_err(pg_error(during))?;
        let view = view::get(&tx, calendar, &lookup, now).await?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok(view)
    }

    /// Cancels job `id` and its waiting followers: the job, and how many
    /// followers were cancelled.
    pub async fn cancel(
        &self,
        calendar: &Calendar,
        id: i64,
        now: Millis,
    ) -> Result<Result<(JobView, u64), Refusal>, StoreError> {
        let during = "cancelling a job";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        let view = change(
            &tx,
            calendar,
            id,
            &[State::Scheduled, State::Held, State::Waiting],
            "UPDATE jobs SET state = 'cancelled', updated_at = $2 WHERE id = $1",
            &[&id, &now],
            now,
        )
        .await?;
        let answer = match view {
            Ok(view) => {
                let children =
                    chain::parent_ended(&tx, calendar, id, State::Cancelled, now, now).await?;
                Ok((view, children))
            }
            Err(refusal) => Err(refusal),
        };
        tx.commit().await.map_err(pg_error(during))?;
        Ok(answer)
    }

    /// Moves scheduled job `id` to `at`. Refused when `at`, or the opening
    /// of the job's window after it, is at or after the job's expiry: the
    /// move would only expire it.
    pub async fn reschedule(
        &self,
        calendar: &Calendar,
        id: i64,
        at: Millis,
        now: Millis,
    ) -> Result<Result<JobView, Refusal>, StoreError> {
        let during = "rescheduling a job";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        let row = tx
            .query_opt(
                "SELECT expires_at, kind, timezone, send_window FROM jobs WHERE id = $1
                 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg_error(during))?;
        if let Some(row) = row {
            let read = || -> Result<_, tokio_postgres::Error> {
                Ok((
                    row.try_get::<_, Option<i64>>(0)?,
                    row.try_get::<_, String>(1)?,
                    row.try_get::<_, Option<String>>(2)?,
                    row.try_get::<_, Option<String>>(3)?,
                ))
            };
            let (expires_at, kind, zone, window) = read().map_err(pg_error(during))?;
            if let Some(expiry) = expires_at {
                if at >= expiry {
                    return Ok(Err(Refusal::PastExpiry { expires_at: expiry }));
                }
                let rule = crate::job::Kind::parse(&kind)
                    .and_then(|kind| calendar.rule(zone.as_deref(), window.as_deref(), kind).ok());
                if let Some(rule) = rule
                    && let Plan::Deferred { opening, .. } = rule.plan(id, at, now)
                    && opening >= expiry
                {
                    return Ok(Err(Refusal::ShutUntilExpiry {
                        opening,
                        expires_at: expiry,
                    }));
                }
            }
        }
        let view = change(
            &tx,
            calendar,
            id,
            &[State::Scheduled],
            "UPDATE jobs SET scheduled_at = $3, updated_at = $2 WHERE id = $1",
            &[&id, &now, &at],
            now,
        )
        .await?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok(view)
    }

    /// Back to `scheduled`, due now (or at its window's next opening),
    /// with a fresh set of attempts; the history stays.
    pub async fn requeue(
        &self,
        calendar: &Calendar,
        id: i64,
        now: Millis,
    ) -> Result<Result<JobView, Refusal>, StoreError> {
        let during = "requeueing a job";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        let view = change(
            &tx,
            calendar,
            id,
            &[State::Failed, State::Held],
            "UPDATE jobs SET state = 'scheduled', scheduled_at = $2, attempts = 0,
                    updated_at = $2
             WHERE id = $1",
            &[&id, &now],
            now,
        )
        .await?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok(view)
    }
}

/// Applies `sql` (with `params`) if job `id`, read `FOR UPDATE`, is in
/// one of `from`; settles its due time when the change leaves it
/// `scheduled` (and wakes the nodes); then returns the job as it now is.
/// As SQLite's `changes::change`.
async fn change(
    tx: &Tx<'_>,
    calendar: &Calendar,
    id: i64,
    from: &[State],
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    now: Millis,
) -> Result<Result<JobView, Refusal>, StoreError> {
    let Some(state) = current_state(tx, id, "FOR UPDATE", now).await? else {
        return Ok(Err(Refusal::NotFound));
    };
    if !from.contains(&state) {
        return Ok(Err(Refusal::Conflict { state }));
    }
    tx.execute(sql, params)
        .await
        .map_err(pg_error("changing a job"))?;
    if let Some(Settled::Due | Settled::Deferred(_)) =
        settle_row(tx, calendar, id, None, now).await?
    {
        notify_due(tx).await?;
    }
    match view::get(tx, calendar, &Lookup::Id(id), now).await? {
        Some(view) => Ok(Ok(view)),
        None => Ok(Err(Refusal::NotFound)),
    }
}

/// The advisory lock class of idempotency keys being enqueued
/// (`pg_advisory_xact_lock(class, hashtext(key))`): "Coay" in ASCII as an
/// int4, beside the class of node names.
pub(super) const KEY_LOCK_CLASS: i32 = 0x436f_6179;

/// Locks the idempotency keys `$1` (class `$2`) for the rest of the
/// transaction, in one order.
pub(super) const LOCK_KEYS: &str = "SELECT pg_advisory_xact_lock($2, h)
     FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest($1::text[]) AS k ORDER BY 1) AS s";

/// Locks idempotency keys `keys` for the rest of `tx`, in one order.
pub(super) async fn lock_keys(tx: &Tx<'_>, keys: &[&str]) -> Result<(), StoreError> {
    tx.execute(LOCK_KEYS, &[&keys, &KEY_LOCK_CLASS])
        .await
        .map_err(pg_error("locking idempotency keys"))?;
    Ok(())
}

/// Stores `jobs` inside `tx` (the schedule task's occurrences use it in
/// the transaction that moves their schedule on); as [`Queue::enqueue`]
/// without the parent check, and as SQLite's `queries::enqueue`: each new
/// job `scheduled` with its due time settled against its window (so it
/// may be `expired` or `held` at once), or `waiting` on the job it
/// follows; a job whose key is taken is not stored, and its answer
/// describes the job that holds the key.
pub(super) async fn enqueue_in(
    tx: &Tx<'_>,
    calendar: &Calendar,
    jobs: &[NewJob],
    now: Millis,
) -> Result<Vec<Enqueued>, StoreError> {
    let during = "enqueueing";
    // Two batches naming the same keys in other orders would each wait at
    // the unique index for a key the other inserted first, and one would
    // fail as a deadlock's victim: the keys are locked first, in one order.
    let keys: Vec<&str> = jobs.iter().filter_map(|j| j.key.as_deref()).collect();
    if !keys.is_empty() {
        lock_keys(tx, &keys).await?;
    }
    // A key already taken is looked for first: ON CONFLICT alone would
    // use up an id from the sequence for each duplicate, so that ids
    // would skip where SQLite's do not. It still settles a race.
    let insert =
        "INSERT INTO jobs (key, kind, channel, enquiry_id, scheduled_at, state, created_at,
                               updated_at, payload, expires_at, due_at, timezone, send_window, tags)
             SELECT $1, $2, $3, $4, $5, 'scheduled', $6, $6, $7, $8, $5, $9, $10, $11
             WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE key = $1)
             ON CONFLICT (key) DO NOTHING
             RETURNING id";
    let mut out = Vec::with_capacity(jobs.len());
    let mut scheduled = false;
    for job in jobs {
        let payload = Value::Object(job.payload.clone()).to_string();
        let tags = (!job.tags.is_empty()).then(|| {
            Value::from(job.tags.iter().map(String::as_str).collect::<Vec<_>>()).to_string()
        });
        let id: Option<i64> = tx
            .query_opt(
                insert,
                &[
                    &job.key,
                    &job.kind.as_str(),
                    &job.channel,
                    &job.enquiry_id,
                    &job.scheduled_at,
                    &now,
                    &payload,
                    &job.expires_at,
                    &job.timezone,
                    &job.window,
                    &tags,
                ],
            )
            .await
            .and_then(|row| row.map(|r| r.try_get(0)).transpose())
            .map_err(pg_error(during))?;
        let answer = match (id, &job.key) {
            (Some(id), _) => {
                for tag in &job.tags {
                    tx.execute(
                        "INSERT INTO job_tags (tag, job_id) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                        &[tag, &id],
                    )
                    .await
                    .map_err(pg_error("tagging a job"))?;
                }
                if let Some(after) = &job.after {
                    let state = chain::attach(tx, calendar, id, after, now).await?;
                    scheduled |= state == State::Scheduled;
                    out.push(follow_up_answer(tx, id, state).await?);
                    continue;
                }
                let timing = Timing::of_new(id, job);
                let settled = settle(tx, calendar, &timing, now, Report::Each).await?;
                scheduled |= match settled {
                    Settled::Due => job.scheduled_at <= now.saturating_add(WAKE_HORIZON_MS),
                    Settled::Deferred(at) => at <= now.saturating_add(WAKE_HORIZON_MS),
                    Settled::Expired | Settled::Held => false,
                };
                enqueued(id, job, settled)
            }
            (None, Some(key)) => duplicate(tx, key, now).await?,
            (None, None) => {
                // Only a key can conflict.
                return Err(StoreError::Postgres {
                    during,
                    detail: "a job without a key was not stored".to_owned(),
                });
            }
        };
        out.push(answer);
    }
    if scheduled {
        notify_due(tx).await?;
    }
    Ok(out)
}

/// Whether `job`, stored at `now`, would be due at its own `scheduled_at`
/// (its window, if it has one, open then): so that storing it is its row
/// and its tags, and nothing else. Judged before the job has an id, which
/// only a deferral's point in the window's spread depends on.
fn due_as_asked(calendar: &Calendar, job: &NewJob, now: Millis) -> bool {
    let timing = Timing::of_new(0, job);
    let verdict = judge(calendar, &timing, now, Report::Each);
    matches!(
        (verdict.settled, verdict.change),
        (Settled::Due, Change::Keep)
    )
}

/// How soon a new job must fall due for an enqueue to wake the other
/// nodes. PostgreSQL takes one lock for every committing transaction that
/// notifies, so notifying on each enqueue would commit enqueues one at a
/// time; a job due later than this is found by every node's own polls
/// (each sleeps at most `dispatch.poll_interval`), and the enqueuing
/// node's dispatcher is woken without a notification anyway.
pub(super) const WAKE_HORIZON_MS: Millis = 60_000;

/// The answer for a job whose key `key` is taken: the job that holds it.
pub(super) async fn duplicate(tx: &Tx<'_>, key: &str, now: Millis) -> Result<Enqueued, StoreError> {
    let during = "looking up a duplicate key";
    let row = tx
        .query_one(
            "SELECT id, scheduled_at, due_at FROM jobs WHERE key = $1",
            &[&key],
        )
        .await
        .map_err(pg_error(during))?;
    let read = || -> Result<(i64, i64, i64), tokio_postgres::Error> {
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    };
    let (id, scheduled_at, due_at) = read().map_err(pg_error(during))?;
    let state = current_state(tx, id, "", now)
        .await?
        .unwrap_or(State::Failed);
    Ok(Enqueued {
        id,
        state,
        scheduled_at: time::format(scheduled_at),
        due_at: (state == State::Scheduled).then(|| time::format(due_at)),
        duplicate: true,
    })
}

/// The answer for follow-up `id`, just stored in `state`: its times as
/// its parent's end set them (while `waiting`, the earliest it could be).
async fn follow_up_answer(tx: &Tx<'_>, id: i64, state: State) -> Result<Enqueued, StoreError> {
    let during = "enqueueing a follow-up";
    let row = tx
        .query_one(
            "SELECT scheduled_at, due_at FROM jobs WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(pg_error(during))?;
    let read =
        || -> Result<(i64, i64), tokio_postgres::Error> { Ok((row.try_get(0)?, row.try_get(1)?)) };
    let (scheduled_at, due_at) = read().map_err(pg_error(during))?;
    Ok(Enqueued {
        id,
        state,
        scheduled_at: time::format(scheduled_at),
        due_at: (state == State::Scheduled).then(|| time::format(due_at)),
        duplicate: false,
    })
}
