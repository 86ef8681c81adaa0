//! `list` and tags on PostgreSQL, as [`super::super::listing`] and
//! [`super::super::tags`] on SQLite.
//!
//! A list step walks `jobs_by_state_due` or `jobs_by_state_updated` per
//! state from the cursor (a row comparison, which PostgreSQL seeks on the
//! index) and merges the states, as SQLite does; it reads in one
//! snapshot (`REPEATABLE READ`), so a job is shown as it was where its
//! position was read. Columns are typed, so every row has a position and
//! none needs SQLite's repair of times. The jobs of a tag, and their
//! waiting followers, are locked in id order before they change, so two
//! tag operations (on two nodes) wait for each other rather than
//! deadlock.

use super::deferral::{DUE_COLUMNS, expire, read_due, set_aside, settle};
use super::pool::Tx;
use super::queue::{Queue, notify_due};
use super::{pg_error, view};
use crate::job::{LATEST, State};
use crate::protocol::{ListCursor, ListOrder, Lookup};
use crate::store::deferral::{Report, Settled};
use crate::store::listing::{Filter, ListStep};
use crate::store::view::{omit_payload, view_bytes};
use crate::store::{Moved, StoreError};
use crate::time::{self, Millis};
use crate::window::Calendar;
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::ToSql;

/// The seek of one state's index after a position ($2, $3), in each
/// order; $5 the tag, when the list has one.
const POSITION_SQL: [&str; 2] = [
    "SELECT due_at, id FROM jobs
     WHERE state = $1 AND (due_at, id) > ($2, $3) ORDER BY due_at, id LIMIT $4",
    "SELECT updated_at, id FROM jobs
     WHERE state = $1 AND (updated_at, id) < ($2, $3) ORDER BY updated_at DESC, id DESC LIMIT $4",
];

const TAG_POSITION_SQL: [&str; 2] = [
    "SELECT j.due_at, j.id FROM job_tags t JOIN jobs j ON j.id = t.job_id
     WHERE t.tag = $5 AND j.state = $1 AND (j.due_at, j.id) > ($2, $3)
     ORDER BY j.due_at, j.id LIMIT $4",
    "SELECT j.updated_at, j.id FROM job_tags t JOIN jobs j ON j.id = t.job_id
     WHERE t.tag = $5 AND j.state = $1 AND (j.updated_at, j.id) < ($2, $3)
     ORDER BY j.updated_at DESC, j.id DESC LIMIT $4",
];

impl Queue {
    /// One step of a `list`, as SQLite's `listing::step`: up to `rows`
    /// jobs after `from`, taking views while they fit in `budget` bytes;
    /// when `first`, the first job is always taken, without its payload
    /// if its view alone would not fit.
    #[allow(clippy::too_many_arguments)]
    pub async fn list_step(
        &self,
        calendar: &Calendar,
        filter: Filter,
        from: ListCursor,
        rows: usize,
        budget: usize,
        first: bool,
        now: Millis,
    ) -> Result<ListStep, StoreError> {
        let during = "listing jobs";
        let mut client = self.pool.get().await?;
        let tx = client
            .begin_with(IsolationLevel::RepeatableRead, false)
            .await
            .map_err(pg_error(during))?;
        let order = match from.order {
            ListOrder::Due => 0,
            ListOrder::Recent => 1,
        };
        let mut found = Vec::new();
        for state in states(&filter) {
            let (state, room) = (state.as_str(), rows as i64);
            let found_rows = match &filter.tag {
                Some(tag) => {
                    let params: [&(dyn ToSql + Sync); 5] = [&state, &from.at, &from.id, &room, tag];
                    tx.query(TAG_POSITION_SQL[order], &params).await
                }
                None => {
                    let params: [&(dyn ToSql + Sync); 4] = [&state, &from.at, &from.id, &room];
                    tx.query(POSITION_SQL[order], &params).await
                }
            }
            .map_err(pg_error(during))?;
            for r in found_rows {
                let at: i64 = r.try_get(0).map_err(pg_error(during))?;
                let id: i64 = r.try_get(1).map_err(pg_error(during))?;
                found.push((at, id));
            }
        }
        match from.order {
            ListOrder::Due => found.sort_unstable(),
            ListOrder::Recent => found.sort_unstable_by(|a, b| b.cmp(a)),
        }
        found.truncate(rows);
        if let Some(before) = filter.due_before {
            // In order `due` the positions are due times, in order: past
            // the first one at or after `before`, none is listed, and a
            // short step ends the list.
            found.retain(|(at, _)| *at < before);
        }
        let mut out = ListStep {
            jobs: Vec::new(),
            bytes: 0,
            last: from,
            end: found.len() < rows,
            full: false,
        };
        for (at, id) in found {
            let here = ListCursor {
                order: from.order,
                at,
                id,
            };
            // A job pruned since its position was read is passed over.
            let Some(mut view) = view::get(&tx, calendar, &Lookup::Id(id), now).await? else {
                out.last = here;
                continue;
            };
            let comma = usize::from(!out.jobs.is_empty());
            let mut size = view_bytes(&view) + comma;
            if out.bytes + size > budget {
                if !(first && out.jobs.is_empty()) {
                    out.full = true;
                    out.end = false;
                    break;
                }
                omit_payload(&mut view);
                size = view_bytes(&view);
            }
            out.bytes += size;
            out.jobs.push(view);
            out.last = here;
        }
        tx.commit().await.map_err(pg_error(during))?;
        Ok(out)
    }

    /// Cancels every scheduled, held and waiting job with `tag`, and the
    /// waiting followers of each; how many of each.
    pub async fn cancel_tag(
        &self,
        _calendar: &Calendar,
        tag: String,
        now: Millis,
    ) -> Result<(u64, u64), StoreError> {
        let during = "cancelling jobs by tag";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        lock_with_followers(&tx, &tag, &["scheduled", "held", "waiting"], during).await?;
        let rows = tx
            .query(
                "UPDATE jobs SET state = 'cancelled', updated_at = $2
                 WHERE id IN (SELECT j.id FROM job_tags t JOIN jobs j ON j.id = t.job_id
                              WHERE t.tag = $1 AND j.state IN ('scheduled', 'held', 'waiting')
                              ORDER BY j.id FOR UPDATE OF j)
                   AND state IN ('scheduled', 'held', 'waiting')
                 RETURNING id",
                &[&tag, &now],
            )
            .await
            .map_err(pg_error(during))?;
        let ids = rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<Vec<i64>, _>>()
            .map_err(pg_error(during))?;
        // As `chain::parent_ended` for each, in one statement per
        // generation of followers.
        let children = super::chain::cancel_descendants_of(&tx, ids, State::Cancelled, now).await?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok((rows.len() as u64, children))
    }

    /// Moves every scheduled job with `tag` by `by_ms`, as SQLite's
    /// `tags::reschedule`: a job moved into the past is due now, one
    /// moved to or past its expiry is expired, each moved job is settled
    /// against its window. A move that would take a job past 9999-12-31
    /// moves none: the id of the first such job.
    pub async fn reschedule_tag(
        &self,
        calendar: &Calendar,
        tag: String,
        by_ms: i64,
        now: Millis,
    ) -> Result<Result<Moved, i64>, StoreError> {
        let during = "rescheduling jobs by tag";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        // A job moved past its expiry cancels its followers.
        lock_with_followers(&tx, &tag, &["scheduled"], during).await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {DUE_COLUMNS} FROM job_tags t JOIN jobs j ON j.id = t.job_id
                     WHERE t.tag = $1 AND j.state = 'scheduled' ORDER BY j.id FOR UPDATE OF j"
                ),
                &[&tag],
            )
            .await
            .map_err(pg_error(during))?
            .iter()
            .map(read_due)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pg_error(during))?;
        let past_latest = rows.iter().flatten().find(|job| {
            job.scheduled_at
                .checked_add(by_ms)
                .is_none_or(|at| at > LATEST)
        });
        if let Some(job) = past_latest {
            return Ok(Err(job.id));
        }
        let mut moved = Moved::default();
        let mut scheduled = false;
        for row in rows {
            let mut job = match row {
                Ok(job) => job,
                Err((id, why)) => {
                    set_aside(&tx, id, &why, now).await?;
                    continue;
                }
            };
            // Checked above: at most LATEST; into the past, due now.
            let at = job.scheduled_at.saturating_add(by_ms).max(now);
            if let Some(expiry) = job.expires_at.filter(|e| at >= *e) {
                let reason = format!(
                    "expired: moved by tag to {}, at or after its expiry {}",
                    time::format(at),
                    time::format(expiry)
                );
                expire(&tx, job.id, &reason, now).await?;
                moved.expired += 1;
                continue;
            }
            tx.execute(
                "UPDATE jobs SET scheduled_at = $2, updated_at = $3 WHERE id = $1",
                &[&job.id, &at, &now],
            )
            .await
            .map_err(pg_error(during))?;
            job.scheduled_at = at;
            let settled = settle(&tx, calendar, &job.timing(), now, Report::Each).await?;
            scheduled |= matches!(settled, Settled::Due | Settled::Deferred(_));
            moved.rescheduled += 1;
        }
        if scheduled {
            notify_due(&tx).await?;
        }
        tx.commit().await.map_err(pg_error(during))?;
        Ok(Ok(moved))
    }
}

/// Locks, in id order, the jobs with `tag` in one of `states` and every
/// waiting job that follows them, however deep: all that a tag operation
/// may change. Locked as they were met (the tagged jobs, then each one's
/// followers), two tag operations whose jobs meet through a follower
/// could each hold a job the other waits for, and one would fail as a
/// deadlock's victim; in id order, as every other change that locks
/// several jobs, one waits for the other.
async fn lock_with_followers(
    tx: &Tx<'_>,
    tag: &str,
    states: &[&str],
    during: &'static str,
) -> Result<(), StoreError> {
    tx.execute(
        "WITH RECURSIVE tree (id) AS (
             SELECT j.id FROM job_tags t JOIN jobs j ON j.id = t.job_id
             WHERE t.tag = $1 AND j.state = ANY($2)
           UNION
             SELECT c.id FROM tree JOIN jobs c ON c.parent_id = tree.id
             WHERE c.state = 'waiting')
         SELECT j.id FROM jobs j WHERE j.id IN (SELECT id FROM tree) ORDER BY j.id FOR UPDATE",
        &[&tag, &states],
    )
    .await
    .map_err(pg_error(during))?;
    Ok(())
}

/// The states whose indexes a list walks: one, or every state; only
/// `scheduled` when the list asks for jobs due before a time.
fn states(filter: &Filter) -> Vec<State> {
    let states = filter
        .state
        .map_or_else(|| State::ALL.to_vec(), |s| vec![s]);
    match filter.due_before {
        Some(_) => states
            .into_iter()
            .filter(|s| *s == State::Scheduled)
            .collect(),
        None => states,
    }
}
