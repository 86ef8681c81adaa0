//! Reading a job's row as the claim, recovery and the sweep read it on
//! PostgreSQL, and setting aside (quarantining) one that cannot be sent,
//! as SQLite's [`crate::store::quarantine`] does.
//!
//! PostgreSQL's columns are typed, so a time is always an integer; what a
//! hand edit can still leave is a kind, channel or enquiry id that is not
//! one, attempts out of range, or a payload that is not a JSON object.

use super::pg_error;
use super::pool::Tx;
use crate::job::{Kind, State, is_channel, is_enquiry_id};
use crate::store::delivery::ClaimedJob;
use crate::store::{StoreError, view};
use crate::time::Millis;
use crate::window::Calendar;
use serde_json::{Map, Value};
use tokio_postgres::Row;

/// The columns [`read_due`] expects, in order.
pub(super) const DUE_COLUMNS: &str = "id, key, kind, channel, enquiry_id, scheduled_at, attempts, \
     payload, expires_at, created_at, updated_at, due_at, timezone, send_window";

/// A due row: a job ready to send, or the id of one that cannot be read
/// and why.
pub(super) type Due = Result<ClaimedJob, (i64, String)>;

/// Reads a row of [`DUE_COLUMNS`]. Fails only if the client does.
pub(super) fn read_due(r: &Row) -> Result<Due, StoreError> {
    let during = "reading a job";
    let id: i64 = r.try_get(0).map_err(pg_error(during))?;
    let key: Option<String> = r.try_get(1).map_err(pg_error(during))?;
    let kind_: String = r.try_get(2).map_err(pg_error(during))?;
    let channel: String = r.try_get(3).map_err(pg_error(during))?;
    let enquiry: Option<String> = r.try_get(4).map_err(pg_error(during))?;
    let scheduled_at: i64 = r.try_get(5).map_err(pg_error(during))?;
    let tries: i64 = r.try_get(6).map_err(pg_error(during))?;
    let body: String = r.try_get(7).map_err(pg_error(during))?;
    let expires_at: Option<i64> = r.try_get(8).map_err(pg_error(during))?;
    let due_at: i64 = r.try_get(11).map_err(pg_error(during))?;
    let timezone: Option<String> = r.try_get(12).map_err(pg_error(during))?;
    let window: Option<String> = r.try_get(13).map_err(pg_error(during))?;
    let job = (|| {
        let kind =
            Kind::parse(&kind_).ok_or_else(|| format!("kind {kind_:?} is not a job kind"))?;
        if !is_channel(&channel) {
            return Err(format!(
                "channel {:?} is not a channel",
                view::bounded(channel.clone(), 100)
            ));
        }
        if let Some(enquiry) = enquiry.as_deref().filter(|e| !is_enquiry_id(e)) {
            return Err(format!(
                "enquiry_id {:?} is not an enquiry id",
                view::bounded(enquiry.to_owned(), 100)
            ));
        }
        let attempts = u32::try_from(tries).map_err(|_| format!("attempts is {tries}"))?;
        Ok(ClaimedJob {
            id,
            key: key.clone(),
            kind,
            channel: channel.clone(),
            enquiry_id: enquiry.clone(),
            scheduled_at,
            due_at,
            timezone: timezone.clone(),
            window: window.clone(),
            attempt: attempts.saturating_add(1),
            seq: 0,
            payload: payload(&body)?,
            expires_at,
        })
    })();
    Ok(job.map_err(|reason: String| (id, reason)))
}

fn payload(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("payload is not a JSON object".into()),
        Err(e) => Err(format!("payload is not JSON ({e})")),
    }
}

/// Moves job `id` to `failed`, naming what is wrong with its row, and
/// cancels its waiting followers with it, as SQLite's quarantine does.
pub(super) async fn quarantine(
    tx: &Tx<'_>,
    id: i64,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    let last_error = view::bounded(
        format!("quarantined: its row cannot be read ({reason})"),
        view::MAX_TEXT_BYTES,
    );
    tx.execute(
        "UPDATE jobs SET state = 'failed', last_error = $2, updated_at = $3,
                node = NULL, lease_until = NULL
         WHERE id = $1",
        &[&id, &last_error, &now],
    )
    .await
    .map_err(pg_error("quarantining an unreadable job"))?;
    if has_followers(tx, id).await? {
        super::chain::cancel_descendants(tx, id, State::Failed, now).await?;
    }
    tracing::error!(
        job_id = id,
        reason,
        "a job's row cannot be read (was the database edited by hand?); moved to failed"
    );
    Ok(())
}

/// Why a job whose state `stored` is not a job state is quarantined.
pub(super) fn bad_state_reason(stored: &str) -> String {
    format!("state {stored:?} is not a job state")
}

/// Whether job `id` has follow-ups (a seek on `jobs_by_parent`).
async fn has_followers(tx: &Tx<'_>, id: i64) -> Result<bool, StoreError> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE parent_id = $1)",
            &[&id],
        )
        .await
        .map_err(pg_error("finding a job's follow-ups"))?;
    Ok(row.get(0))
}

/// Moves on the followers of job `id`, which has just become `state`, as
/// [`super::chain::parent_ended`] does; only a send or an end moves them
/// (`scheduled` and `held` leave them waiting), and a job without any is
/// passed over at the cost of one index seek.
pub(super) async fn followers_move_on(
    tx: &Tx<'_>,
    calendar: &Calendar,
    id: i64,
    state: State,
    at: Millis,
    now: Millis,
) -> Result<(), StoreError> {
    if super::group_finish::moves_followers(state) && has_followers(tx, id).await? {
        super::chain::parent_ended(tx, calendar, id, state, at, now).await?;
    }
    Ok(())
}
