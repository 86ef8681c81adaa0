//! The queue as a whole on PostgreSQL: counts per state (`stats`),
//! pruning, settling due times anew after the windows change, and the
//! check for unreadable rows, as SQLite's `queries::summary`, `prune`,
//! `deferral` and `quarantine` do.
//!
//! A prune goes one node at a time: each of its steps takes the advisory
//! lock [`PRUNE_LOCK`] for its transaction, and a node that does not get it
//! leaves the pruning to the node that has it.

use super::counts::{self, FOLD_AFTER};
use super::deferral::settle;
use super::delivery::next_due_in;
use super::delivery_rows::{DUE_COLUMNS, bad_state_reason, quarantine, read_due};
use super::pg_error;
use super::queue::Queue;
use super::shared::DB_NOW;
use crate::job::State;
use crate::store::deferral::{Report, Settled};
use crate::store::prune::FINISHED_STATES;
use crate::store::{NodeStatus, Pruned, StoreError, Summary};
use crate::time::Millis;
use crate::window::Calendar;
use std::collections::BTreeMap;

/// The advisory lock key a prune step holds: "Coax" in ASCII, then 3.
pub(super) const PRUNE_LOCK: i64 = 0x436f_6178_0000_0003;

/// How many finished jobs one transaction of a prune examines at most.
const PRUNE_STEP: i64 = 1_000;

/// The name under which `meta` keeps the fingerprint of the calendar that
/// the stored due times were settled under (as on SQLite).
const CALENDAR: &str = "calendar";

/// The states whose jobs may still be sent, so must be readable.
const SWEPT: [&str; 2] = ["scheduled", "held"];

impl Queue {
    /// Counts per state, deferred jobs, the next due time, and the live
    /// nodes.
    pub async fn summary(&self, _now: Millis) -> Result<Summary, StoreError> {
        let during = "counting jobs";
        let (kept, nodes, next_due) = {
            let mut client = self.pool.get().await?;
            // One snapshot: the counts and the next due time agree.
            let tx = client
                .begin_with(tokio_postgres::IsolationLevel::RepeatableRead, true)
                .await
                .map_err(pg_error(during))?;
            let kept = counts::read(tx.inner()).await?;
            // Heartbeats are the database's time (see `Queue::beat`).
            let rows = tx
                .query(
                    &format!(
                        "SELECT n.name, n.last_heartbeat,
                                (SELECT count(*) FROM jobs
                                 WHERE state = 'sending' AND node = n.name)
                         FROM nodes n WHERE n.last_heartbeat >= {DB_NOW} - $1 ORDER BY n.name"
                    ),
                    &[&self.lease_ms],
                )
                .await
                .map_err(pg_error(during))?;
            let nodes: Vec<NodeStatus> = rows
                .iter()
                .map(|r| NodeStatus {
                    name: r.get(0),
                    last_heartbeat: r.get(1),
                    in_flight: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                })
                .collect();
            let next_due = next_due_in(&tx).await?;
            tx.commit().await.map_err(pg_error(during))?;
            (kept, nodes, next_due)
        };
        if kept.rows > FOLD_AFTER {
            self.fold_counts().await?;
        }
        let mut counts: BTreeMap<State, u64> = State::ALL.iter().map(|s| (*s, 0)).collect();
        for (stored, n) in &kept.per_state {
            // A state that is not one: the sweep sets its jobs aside.
            let Some(state) = State::parse(stored) else {
                continue;
            };
            let n = u64::try_from(*n).unwrap_or_else(|_| {
                // Only a hand edit of job_counts can do this.
                tracing::error!(
                    state = state.as_str(),
                    count = n,
                    "the count of jobs in a state is negative (was job_counts edited by hand?)"
                );
                0
            });
            counts.insert(state, n);
        }
        Ok(Summary {
            counts,
            next_due,
            deferred: u64::try_from(kept.deferred).unwrap_or(0),
            nodes,
        })
    }

    /// Deletes finished jobs last updated before `before` (or only counts
    /// them, on a dry run), in bounded steps; one node at a time.
    pub async fn prune(&self, before: Millis, dry_run: bool) -> Result<Pruned, StoreError> {
        let mut total = Pruned::default();
        for state in FINISHED_STATES {
            // Where the walk of this state's finished jobs goes on, by
            // (updated_at, id) in `jobs_by_state_updated`.
            let mut from = (Millis::MIN, 0);
            loop {
                let Some((step, last)) = self.prune_step(state, before, from, dry_run).await?
                else {
                    tracing::info!("another node is pruning the queue; this one leaves it");
                    return Ok(total);
                };
                total.jobs += step.jobs;
                total.attempts += step.attempts;
                match last {
                    Some(last) => from = last,
                    None => break,
                }
            }
        }
        if !dry_run && total.jobs > 0 {
            self.fold_counts().await?;
        }
        Ok(total)
    }

    /// One transaction of a prune: up to [`PRUNE_STEP`] jobs in `state`
    /// after `from`. `None` when another node holds the prune's lock; else
    /// what it removed and, while more may remain, where it stopped.
    async fn prune_step(
        &self,
        state: State,
        before: Millis,
        from: (Millis, i64),
        dry_run: bool,
    ) -> Result<Option<(Pruned, Option<(Millis, i64)>)>, StoreError> {
        let during = "pruning finished jobs";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        let ours: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
            .await
            .map_err(pg_error(during))?
            .get(0);
        if !ours {
            return Ok(None);
        }
        // A job another call holds (a requeue) is passed over: it is not
        // finished for long, or the next prune takes it.
        let rows = tx
            .query(
                "SELECT id, updated_at FROM jobs
                 WHERE state = $1 AND updated_at < $2 AND (updated_at, id) > ($3, $4)
                 ORDER BY updated_at, id LIMIT $5
                 FOR UPDATE SKIP LOCKED",
                &[&state.as_str(), &before, &from.0, &from.1, &PRUNE_STEP],
            )
            .await
            .map_err(pg_error(during))?;
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let last = (rows.len() as i64 == PRUNE_STEP)
            .then(|| rows.last().map(|r| (r.get(1), r.get(0))))
            .flatten();
        let mut pruned = Pruned::default();
        if !ids.is_empty() {
            let attempts = if dry_run {
                let n: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM attempts WHERE job_id = ANY($1)",
                        &[&ids],
                    )
                    .await
                    .map_err(pg_error(during))?
                    .get(0);
                u64::try_from(n).unwrap_or(0)
            } else {
                // Tags go with their job (ON DELETE CASCADE).
                let n = tx
                    .execute("DELETE FROM attempts WHERE job_id = ANY($1)", &[&ids])
                    .await
                    .map_err(pg_error(during))?;
                tx.execute("DELETE FROM jobs WHERE id = ANY($1)", &[&ids])
                    .await
                    .map_err(pg_error(during))?;
                n
            };
            pruned = Pruned {
                jobs: ids.len() as u64,
                attempts,
            };
        }
        tx.commit().await.map_err(pg_error(during))?;
        Ok(Some((pruned, last)))
    }

    /// Whether the queue was last settled under the calendar with
    /// `fingerprint`.
    pub async fn settled_under(&self, fingerprint: u64) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let stored: Option<i64> = client
            .query_opt("SELECT value FROM meta WHERE name = $1", &[&CALENDAR])
            .await
            .map_err(pg_error("reading the calendar's fingerprint"))?
            .map(|r| r.get(0));
        // Stored as the same 64 bits, signed.
        Ok(stored == Some(fingerprint as i64))
    }

    /// Forgets the calendar the queue was settled under, before a walk that
    /// settles it anew, so that a walk cut short is walked again.
    pub async fn mark_unsettled(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM meta WHERE name = $1", &[&CALENDAR])
            .await
            .map_err(pg_error("clearing the calendar's fingerprint"))?;
        Ok(())
    }

    pub async fn mark_settled(&self, fingerprint: u64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO meta (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&CALENDAR, &(fingerprint as i64)],
            )
            .await
            .map_err(pg_error("recording the calendar's fingerprint"))?;
        Ok(())
    }

    /// One step of settling every scheduled job's due time under
    /// `calendar` anew (only the deferred ones when it has no windows):
    /// how many jobs moved, and the id after which the next step starts,
    /// `None` at the end.
    pub async fn resettle_step(
        &self,
        calendar: &Calendar,
        after: i64,
        limit: usize,
        now: Millis,
    ) -> Result<(u64, Option<i64>), StoreError> {
        let during = "settling due times under a new calendar";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Nothing is deferred without a window: then only the deferred
        // jobs (`jobs_deferred`) can be wrong.
        let deferred_only = if calendar.window_names().next().is_none() {
            "AND due_at > scheduled_at"
        } else {
            ""
        };
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {DUE_COLUMNS} FROM jobs
                     WHERE state = 'scheduled' {deferred_only} AND id > $1
                     ORDER BY id LIMIT $2
                     FOR UPDATE"
                ),
                &[&after, &limit],
            )
            .await
            .map_err(pg_error(during))?;
        let mut moved = 0;
        let mut last = None;
        for row in &rows {
            match read_due(row)? {
                Ok(job) => {
                    last = Some(job.id);
                    let before = job.due_at;
                    let settled = settle(&tx, calendar, &job.timing(), now, Report::Bulk).await?;
                    moved += u64::from(match settled {
                        Settled::Due => before != job.scheduled_at,
                        Settled::Deferred(at) => at != before,
                        Settled::Expired | Settled::Held => true,
                    });
                }
                Err((id, why)) => {
                    last = Some(id);
                    quarantine(&tx, id, &why, now).await?;
                }
            }
        }
        if moved > 0 {
            // A job brought forward may be due now.
            super::queue::notify_due(&tx).await?;
        }
        tx.commit().await.map_err(pg_error(during))?;
        let more = rows.len() as i64 == limit;
        Ok((moved, last.filter(|_| more)))
    }

    /// One step of the check for unreadable rows among scheduled and held
    /// jobs with ids after `after`: how many it set aside, and where the
    /// next step starts.
    ///
    /// A job whose state is not a state (a hand edit) is set aside too,
    /// whatever it is: no call would otherwise move it on.
    pub async fn sweep_step(
        &self,
        after: i64,
        span: i64,
        now: Millis,
    ) -> Result<(u64, Option<i64>), StoreError> {
        let during = "checking jobs for unreadable rows";
        let until = after.saturating_add(span);
        let known: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
        let swept: Vec<&str> = SWEPT.to_vec();
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        // A range of the primary key: its pages in order, at most `span`
        // rows, however the jobs' due times are spread. Jobs another call
        // holds are passed over: it is moving them on.
        let rows = tx
            .query(
                &format!(
                    "SELECT {DUE_COLUMNS}, state FROM jobs
                     WHERE id > $1 AND id <= $2
                       AND (state = ANY($3) OR NOT (state = ANY($4)))
                     ORDER BY id
                     FOR UPDATE SKIP LOCKED"
                ),
                &[&after, &until, &swept, &known],
            )
            .await
            .map_err(pg_error(during))?;
        let mut quarantined = 0;
        for row in &rows {
            let state: String = row.get(14);
            let fault = if State::parse(&state).is_none() {
                Some((row.get(0), bad_state_reason(&state)))
            } else {
                read_due(row)?.err()
            };
            if let Some((id, reason)) = fault {
                quarantine(&tx, id, &reason, now).await?;
                quarantined += 1;
            }
        }
        let more: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE id > $1)",
                &[&until],
            )
            .await
            .map_err(pg_error(during))?
            .get(0);
        tx.commit().await.map_err(pg_error(during))?;
        Ok((quarantined, more.then_some(until)))
    }
}
