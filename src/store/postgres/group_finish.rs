//! The outcomes of attempts, recorded in groups ([`super::group`]): each
//! statement does the whole group's rows at once, so a group costs about
//! what one outcome did, as on SQLite, where the store thread groups them.
//!
//! A group locks its jobs in id order, keeps those still this node's
//! claim (the rest are logged, as [`super::Queue::finish`] logs them),
//! closes their attempts and moves the jobs on in one statement each, and
//! then does per job only what few jobs need: settling a retry against
//! its window, and moving on the followers of a job that has them. An
//! outcome that shares a pause is not grouped: it goes with its pause.

use super::delivery::settle_row;
use super::group::Grouped;
use super::pg_error;
use super::pool::{Pool, Tx};
use super::queue::notify_due;
use crate::job::State;
use crate::policy::Decision;
use crate::store::deferral::Settled;
use crate::store::delivery::{reason_for, state_after};
use crate::store::{Finish, PauseKind, StoreError, view};
use crate::window::Calendar;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// An attempt's outcome to record, with the calendar of the moment.
pub(super) struct Finished {
    pub finish: Finish,
    pub calendar: Arc<Calendar>,
}

/// What recording needs: the connections, and this node's name.
#[derive(Clone)]
pub(super) struct Recorder {
    pub pool: Pool,
    pub node: Arc<str>,
}

impl Grouped for Finished {
    type Answer = ();
    type Context = Recorder;

    async fn store(
        cx: &Recorder,
        group: &[Finished],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        record(cx, group, None).await?;
        Ok(group.iter().map(|_| Ok(())).collect())
    }
}

/// Records `group` in one transaction; with `share`, puts that pause in
/// force for every node in the same transaction (see `super::shared`),
/// whoever's claim the jobs are: Coax said it.
pub(super) async fn record(
    cx: &Recorder,
    group: &[Finished],
    share: Option<(PauseKind, Duration, &str)>,
) -> Result<(), StoreError> {
    let during = "recording attempts";
    let mut client = cx.pool.get().await?;
    let tx = client.begin().await.map_err(pg_error(during))?;
    if let Some(share) = share {
        super::shared::put_pause(&tx, share, &cx.node).await?;
    }
    let lost = record_in(&tx, &cx.node, group).await?;
    tx.commit().await.map_err(pg_error(during))?;
    for g in lost {
        lost_claim(&g.finish);
    }
    Ok(())
}

/// Records `group` inside `tx`, as node `node`: the outcomes whose claim
/// was lost, which it leaves alone, for the caller to log once `tx` has
/// committed.
async fn record_in<'g>(
    tx: &Tx<'_>,
    node: &str,
    group: &'g [Finished],
) -> Result<Vec<&'g Finished>, StoreError> {
    let during = "recording attempts";
    let ids: Vec<i64> = group.iter().map(|g| g.finish.id).collect();
    let seqs: Vec<i64> = group.iter().map(|g| i64::from(g.finish.seq)).collect();
    // Locked first, in one order, so that a recovery by another node
    // cannot move a job between this check and the writes below.
    let rows = tx
        .query(
            "SELECT j.id,
                    coalesce(j.state = 'sending' AND j.node = $3
                             AND EXISTS (SELECT 1 FROM attempts a
                                         WHERE a.job_id = j.id AND a.seq = u.seq
                                           AND a.finished_at IS NULL),
                             false)
             FROM jobs j JOIN unnest($1::bigint[], $2::bigint[]) AS u (id, seq) ON u.id = j.id
             ORDER BY j.id
             FOR UPDATE OF j",
            &[&ids, &seqs, &node],
        )
        .await
        .map_err(pg_error(during))?;
    let mut ours = HashSet::with_capacity(rows.len());
    for row in rows {
        let (id, mine): (i64, bool) = (
            row.try_get(0).map_err(pg_error(during))?,
            row.try_get(1).map_err(pg_error(during))?,
        );
        if mine {
            ours.insert(id);
        }
    }
    let (kept, lost): (Vec<&Finished>, Vec<&Finished>) =
        group.iter().partition(|g| ours.contains(&g.finish.id));
    if !kept.is_empty() {
        close_attempts(tx, &kept).await?;
        move_jobs(tx, &kept).await?;
        move_on(tx, &kept).await?;
    }
    Ok(lost)
}

/// Coax's words as stored: bounded, so no answer can grow a row (and the
/// views of it) without limit, however often the job is requeued; and
/// without NUL, which PostgreSQL text cannot hold (an answer with one
/// could not be recorded, and its job stayed out until its lease ran out).
pub(super) fn stored_text(text: &str) -> String {
    view::bounded(text.replace('\0', "\u{FFFD}"), view::MAX_TEXT_BYTES)
}

/// The reason recorded with `f`'s decision, bounded.
fn reason(f: &Finish) -> Option<String> {
    reason_for(&f.decision, f.status).map(|r| stored_text(&r))
}

/// One column of `kept`'s outcomes, for an `unnest`.
fn column<T>(kept: &[&Finished], f: impl Fn(&Finish) -> T) -> Vec<T> {
    kept.iter().map(|g| f(&g.finish)).collect()
}

/// Closes the attempts of `kept`.
async fn close_attempts(tx: &Tx<'_>, kept: &[&Finished]) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE attempts a
         SET finished_at = u.finished_at, status = u.status, error = u.error,
             decision = u.decision, ambiguous = u.ambiguous, latency_ms = u.latency
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                     $6::text[], $7::bigint[], $8::bigint[])
              AS u (id, seq, finished_at, status, error, decision, ambiguous, latency)
         WHERE a.job_id = u.id AND a.seq = u.seq",
        &[
            &column(kept, |f| f.id),
            &column(kept, |f| i64::from(f.seq)),
            &column(kept, |f| f.finished_at),
            &column(kept, |f| f.status.map(i64::from)),
            &column(kept, |f| {
                f.error.as_deref().map(stored_text).or_else(|| reason(f))
            }),
            &column(kept, |f| f.decision.label()),
            &column(kept, |f| i64::from(f.ambiguous)),
            &column(kept, |f| i64::try_from(f.latency_ms).unwrap_or(i64::MAX)),
        ],
    )
    .await
    .map_err(pg_error("recording attempts"))?;
    Ok(())
}

/// Moves each job of `kept` to the state its outcome decided. A rejected
/// key is not the job's fault: its attempt is given back.
async fn move_jobs(tx: &Tx<'_>, kept: &[&Finished]) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jobs j
         SET state = u.state, scheduled_at = coalesce(u.retry_at, j.scheduled_at),
             attempts = j.attempts - u.give_back, last_error = coalesce(u.reason, j.last_error),
             result = coalesce(u.result, j.result), updated_at = u.at,
             node = NULL, lease_until = NULL
         FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::text[],
                     $6::text[], $7::bigint[])
              AS u (id, state, retry_at, give_back, reason, result, at)
         WHERE j.id = u.id",
        &[
            &column(kept, |f| f.id),
            &column(kept, |f| state_after(&f.decision).as_str()),
            &column(kept, retry_at),
            &column(kept, |f| i64::from(f.decision == Decision::PauseForKey)),
            &column(kept, reason),
            &column(kept, |f| {
                f.result.as_ref().map(|r| view::bounded_json(r.to_string()))
            }),
            &column(kept, |f| f.finished_at),
        ],
    )
    .await
    .map_err(pg_error("recording attempts"))?;
    Ok(())
}

/// What only some jobs of `kept` need: a retry, or a job given back by a
/// key pause, is settled against its window (it may have come back after
/// it shut), and the other nodes hear it is due again; the followers of a
/// job that has them move on, a send's time being the end of its attempt.
async fn move_on(tx: &Tx<'_>, kept: &[&Finished]) -> Result<(), StoreError> {
    let mut due_again = false;
    for g in kept {
        let f = &g.finish;
        if retry_at(f).is_some() || f.decision == Decision::PauseForKey {
            let settled = settle_row(tx, &g.calendar, f.id, f.finished_at).await?;
            due_again |= matches!(settled, Some(Settled::Due | Settled::Deferred(_)));
        }
    }
    if due_again {
        notify_due(tx).await?;
    }
    let ended: Vec<i64> = kept
        .iter()
        .filter(|g| moves_followers(state_after(&g.finish.decision)))
        .map(|g| g.finish.id)
        .collect();
    if ended.is_empty() {
        return Ok(());
    }
    let parents = tx
        .query(
            "SELECT DISTINCT parent_id FROM jobs WHERE parent_id = ANY($1) ORDER BY 1",
            &[&ended],
        )
        .await
        .map_err(pg_error("finding jobs' follow-ups"))?;
    for row in parents {
        let parent: i64 = row
            .try_get(0)
            .map_err(pg_error("finding jobs' follow-ups"))?;
        if let Some(g) = kept.iter().find(|g| g.finish.id == parent) {
            let (state, at) = (state_after(&g.finish.decision), g.finish.finished_at);
            super::chain::parent_ended(tx, &g.calendar, parent, state, at, at).await?;
        }
    }
    Ok(())
}

/// Whether a job ending in `state` moves its followers on: only a send or
/// an end does (`scheduled` and `held` leave them waiting).
pub(super) fn moves_followers(state: State) -> bool {
    matches!(
        state,
        State::Sent | State::Skipped | State::Failed | State::Expired | State::Cancelled
    )
}

fn retry_at(f: &Finish) -> Option<crate::time::Millis> {
    match &f.decision {
        Decision::Retry { at, .. } => Some(*at),
        _ => None,
    }
}

/// Logs an outcome that is not recorded: this node's claim on its job
/// was lost (its lease ran out) before the answer came.
fn lost_claim(f: &Finish) {
    let decision = f.decision.label();
    tracing::warn!(
        job_id = f.id,
        attempt = f.seq,
        decision,
        "this node lost its claim on job {} (its lease ran out); the outcome of attempt {} ({decision}) is not recorded",
        f.id,
        f.seq
    );
}
