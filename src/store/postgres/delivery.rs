//! Jobs out on PostgreSQL: claiming due jobs with `FOR UPDATE SKIP
//! LOCKED`, recording how each attempt ended, renewing this node's leases
//! and recovering the `sending` jobs of nodes whose leases ran out, as
//! [`super::super::delivery`] on SQLite.
//!
//! A claim makes a job this node's (`jobs.node`) until `jobs.lease_until`,
//! which [`Queue::renew`] pushes on while the node lives. Once the lease has
//! run out any node may recover the job; the node that claimed it may still
//! come back with an answer, which [`Queue::finish`] then drops with a
//! WARN: the job is no longer its to move on.

use super::deferral::settle;
use super::delivery_rows::{DUE_COLUMNS, followers_move_on, quarantine, read_due};
use super::group_finish::{Finished, Recorder, record};
use super::pg_error;
use super::pool::Tx;
use super::queue::{Queue, notify_due};
use super::shared::DB_NOW;
use crate::config::OnAmbiguous;
use crate::job::State;
use crate::store::deferral::{Report, Settled};
use crate::store::delivery::MAX_OVERDUE_COUNT;
use crate::store::{Claimed, ClaimedJob, Finish, PauseKind, Recovered, StoreError};
use crate::time::Millis;
use crate::window::Calendar;
use std::sync::Arc;
use std::time::Duration;

impl Queue {
    /// Moves up to `limit` jobs due at `now` to `sending`, each this
    /// node's until `now + lease`, opening an attempt for each.
    pub async fn claim(
        &self,
        calendar: &Calendar,
        now: Millis,
        limit: usize,
    ) -> Result<Claimed, StoreError> {
        let during = "claiming due jobs";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        // Rows another node is claiming (or a cancel is changing) are
        // passed over, not waited for: each node takes its own.
        let rows = tx
            .query(
                &format!(
                    "SELECT {DUE_COLUMNS} FROM jobs
                     WHERE state = 'scheduled' AND due_at <= $1
                     ORDER BY due_at, id LIMIT $2
                     FOR UPDATE SKIP LOCKED"
                ),
                &[&now, &limit],
            )
            .await
            .map_err(pg_error(during))?;
        // A row that cannot be read must not stop the rows beside it.
        let mut readable = Vec::with_capacity(rows.len());
        for row in &rows {
            match read_due(row)? {
                Ok(job) => readable.push(job),
                Err((id, reason)) => quarantine(&tx, id, &reason, now).await?,
            }
        }
        let (expired, jobs): (Vec<ClaimedJob>, Vec<ClaimedJob>) = readable
            .into_iter()
            .partition(|job| job.expires_at.is_some_and(|at| at <= now));
        for job in &expired {
            expire(
                &tx,
                calendar,
                job.id,
                "expired before it could be sent",
                now,
            )
            .await?;
        }
        // The window is judged now, not when the due time was settled: the
        // job may have waited out a pause, or the calendar may have changed.
        let mut sendable = Vec::with_capacity(jobs.len());
        for job in jobs {
            let open_now = calendar
                .rule(job.timezone.as_deref(), job.window.as_deref(), job.kind)
                .is_ok_and(|rule| rule.is_open(now));
            if open_now {
                sendable.push(job);
            } else {
                // Shut at `now`, and `scheduled_at <= due_at <= now`:
                // settling moves it to an opening after now, expires it or
                // holds it.
                settle(&tx, calendar, &job.timing(), now, Report::Each).await?;
            }
        }
        let mut jobs = sendable;
        if !jobs.is_empty() {
            let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
            // The lease runs by the database's clock, as every node reads
            // it: a node whose clock is off neither shortens nor stretches it.
            tx.execute(
                &format!(
                    "UPDATE jobs SET state = 'sending', attempts = attempts + 1, updated_at = $2,
                            node = $3, lease_until = {DB_NOW} + $4
                     WHERE id = ANY($1)"
                ),
                &[&ids, &now, &&*self.node, &self.lease_ms],
            )
            .await
            .map_err(pg_error(during))?;
            let opened = tx
                .query(
                    "INSERT INTO attempts (job_id, seq, started_at, node)
                     SELECT j, (SELECT coalesce(max(seq), 0) + 1 FROM attempts WHERE job_id = j),
                            $2, $3
                     FROM unnest($1::bigint[]) AS j
                     RETURNING job_id, seq",
                    &[&ids, &now, &&*self.node],
                )
                .await
                .map_err(pg_error(during))?;
            for row in opened {
                let (id, seq): (i64, i64) = (row.get(0), row.get(1));
                if let Some(job) = jobs.iter_mut().find(|j| j.id == id) {
                    job.seq = u32::try_from(seq).unwrap_or(u32::MAX);
                }
            }
        }
        let next_due = next_due_in(&tx).await?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok(Claimed {
            jobs,
            expired,
            next_due,
        })
    }

    /// Records how an attempt ended and moves its job on, if the job is
    /// still this node's claim: with others, in a group
    /// ([`super::group_finish`]).
    /// With `share`, alone, and puts that pause in force for every node in
    /// the same transaction (see `super::shared`).
    pub async fn finish(
        &self,
        calendar: Arc<Calendar>,
        f: Finish,
        share: Option<(PauseKind, Duration, &str)>,
    ) -> Result<(), StoreError> {
        let Some(share) = share else {
            let finished = Finished {
                finish: f,
                calendar,
            };
            return self.finishes.store(finished).await;
        };
        let recorder = Recorder {
            pool: self.pool.clone(),
            node: self.node.clone(),
        };
        let one = [Finished {
            finish: f,
            calendar,
        }];
        record(&recorder, &one, Some(share)).await
    }

    /// Extends the lease of every job this node has in `sending`, by the
    /// database's clock; how many.
    pub async fn renew(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                &format!(
                    "UPDATE jobs SET lease_until = {DB_NOW} + $2
                     WHERE state = 'sending' AND node = $1"
                ),
                &[&&*self.node, &self.lease_ms],
            )
            .await
            .map_err(pg_error("renewing leases"))
    }

    /// Puts back in line (or holds, or fails) the `sending` jobs whose
    /// lease has run out, and, with `own`, every `sending` job of this
    /// node's name (at start-up, when none of them can still be in flight).
    ///
    /// As on SQLite, each open attempt is closed as ambiguous: the request
    /// may have reached Coax. Under `retry`, a job that has used up its
    /// `max_attempts` goes to `failed` instead; under `hold` every job is
    /// held, since only an operator's `requeue` sends it again.
    pub async fn recover(
        &self,
        calendar: &Calendar,
        now: Millis,
        own: bool,
    ) -> Result<Vec<Recovered>, StoreError> {
        let (state, decision) = match self.on_ambiguous {
            OnAmbiguous::Retry => (State::Scheduled, "retry"),
            OnAmbiguous::Hold => (State::Held, "held"),
        };
        let reason =
            "interrupted: the daemon stopped before Coax answered, so it may have been sent";
        let used_up = "interrupted: the daemon stopped before Coax answered, so it may have been \
                       sent; no attempts left";
        let during = "recovering interrupted sends";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        // A claim with no lease (a job imported in `sending`) holds none.
        // Leases run by the database's clock (see `claim`).
        let rows = tx
            .query(
                &format!(
                    "SELECT {DUE_COLUMNS} FROM jobs
                     WHERE state = 'sending'
                       AND (lease_until IS NULL OR lease_until < {DB_NOW} OR ($1 AND node = $2))
                     ORDER BY id
                     FOR UPDATE SKIP LOCKED"
                ),
                &[&own, &&*self.node],
            )
            .await
            .map_err(pg_error(during))?;
        let mut recovered = Vec::with_capacity(rows.len());
        let mut closed = Vec::with_capacity(rows.len());
        let mut due_again = false;
        for row in &rows {
            let job = match read_due(row)? {
                Ok(job) => job,
                Err((id, why)) => {
                    closed.push(id);
                    quarantine(&tx, id, &why, now).await?;
                    continue;
                }
            };
            closed.push(job.id);
            // `attempt` counts this try too; the row holds the tries made.
            let tries = job.attempt.saturating_sub(1);
            let failed = self.on_ambiguous == OnAmbiguous::Retry && tries >= self.max_attempts;
            let (to, why) = if failed {
                (State::Failed, used_up)
            } else {
                (state, reason)
            };
            tx.execute(
                "UPDATE jobs SET state = $2, last_error = $3, updated_at = $4,
                        node = NULL, lease_until = NULL
                 WHERE id = $1",
                &[&job.id, &to.as_str(), &why, &now],
            )
            .await
            .map_err(pg_error(during))?;
            if to == State::Scheduled {
                let settled = settle(&tx, calendar, &job.timing(), now, Report::Each).await?;
                due_again |= matches!(settled, Settled::Due | Settled::Deferred(_));
            }
            followers_move_on(&tx, calendar, job.id, to, now, now).await?;
            recovered.push(Recovered {
                id: job.id,
                key: job.key,
                attempt: tries,
                held: to == State::Held,
                failed,
            });
        }
        // Only these jobs' attempts: another node's open attempts are
        // requests in flight.
        tx.execute(
            "UPDATE attempts SET finished_at = $2, error = $3, decision = $4, ambiguous = 1
             WHERE job_id = ANY($1) AND finished_at IS NULL",
            &[&closed, &now, &reason, &decision],
        )
        .await
        .map_err(pg_error(during))?;
        if due_again {
            notify_due(&tx).await?;
        }
        tx.commit().await.map_err(pg_error(during))?;
        Ok(recovered)
    }

    /// Scheduled jobs already due at `now`: how many (at most
    /// `MAX_OVERDUE_COUNT`), and the oldest due time.
    pub async fn overdue(&self, now: Millis) -> Result<(u64, Option<Millis>), StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM jobs
                         WHERE state = 'scheduled' AND due_at <= $1 LIMIT $2) AS due),
                        (SELECT min(due_at) FROM jobs
                         WHERE state = 'scheduled' AND due_at <= $1)",
                &[&now, &(MAX_OVERDUE_COUNT as i64)],
            )
            .await
            .map_err(pg_error("counting due jobs"))?;
        let due: i64 = row.get(0);
        Ok((u64::try_from(due).unwrap_or(0), row.get(1)))
    }

    /// The earliest `due_at` among scheduled jobs.
    pub async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        let mut client = self.pool.get().await?;
        let during = "finding the next due job";
        let tx = client.begin().await.map_err(pg_error(during))?;
        let next = next_due_in(&tx).await?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok(next)
    }
}

/// The earliest `due_at` among scheduled jobs, as `tx` sees them.
pub(super) async fn next_due_in(tx: &Tx<'_>) -> Result<Option<Millis>, StoreError> {
    tx.query_one(
        "SELECT min(due_at) FROM jobs WHERE state = 'scheduled'",
        &[],
    )
    .await
    .map_err(pg_error("finding the next due job"))
    .map(|r| r.get(0))
}

/// Moves job `id` to `expired` with `reason`, and cancels its waiting
/// followers with it, as SQLite's `deferral::expire`.
async fn expire(
    tx: &Tx<'_>,
    calendar: &Calendar,
    id: i64,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jobs SET state = 'expired', last_error = $2, updated_at = $3,
                node = NULL, lease_until = NULL
         WHERE id = $1",
        &[&id, &reason, &now],
    )
    .await
    .map_err(pg_error("expiring a job"))?;
    followers_move_on(tx, calendar, id, State::Expired, now, now).await
}

/// Settles the `due_at` of scheduled job `id` (locked by the caller),
/// reading the row as the claim does; a row that cannot be read is
/// quarantined. `None` when the job is gone or not scheduled. As SQLite's
/// `delivery::settle_row`, with `scheduled_at` already written.
pub(super) async fn settle_row(
    tx: &Tx<'_>,
    calendar: &Calendar,
    id: i64,
    now: Millis,
) -> Result<Option<Settled>, StoreError> {
    let row = tx
        .query_opt(
            &format!("SELECT {DUE_COLUMNS} FROM jobs WHERE id = $1 AND state = 'scheduled'"),
            &[&id],
        )
        .await
        .map_err(pg_error("reading a job's window"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    match read_due(&row)? {
        Err((id, why)) => {
            quarantine(tx, id, &why, now).await?;
            Ok(None)
        }
        Ok(job) => settle(tx, calendar, &job.timing(), now, Report::Each)
            .await
            .map(Some),
    }
}
