//! Follow-ups on PostgreSQL: what happens to a job's waiting followers
//! when it ends, as [`super::super::chain`] on SQLite.

use super::queue::not_built;
use crate::job::State;
use crate::store::StoreError;
use crate::time::Millis;
use crate::window::Calendar;
use tokio_postgres::Transaction;

/// Moves on the children of job `parent`, which has just become `state`
/// (at `at`, its send time when `sent`); how many jobs it cancelled. As
/// SQLite's `chain::parent_ended`.
pub(super) async fn parent_ended(
    tx: &Transaction<'_>,
    calendar: &Calendar,
    parent: i64,
    state: State,
    at: Millis,
    now: Millis,
) -> Result<u64, StoreError> {
    let _ = (tx, calendar, parent, state, at, now);
    Err(not_built("moving a job's follow-ups on"))
}

/// Cancels the waiting descendants of job `parent`, which ended `how`;
/// how many. As SQLite's `chain::cancel_descendants`.
pub(super) async fn cancel_descendants(
    tx: &Transaction<'_>,
    parent: i64,
    how: State,
    now: Millis,
) -> Result<u64, StoreError> {
    let _ = (tx, parent, how, now);
    Err(not_built("cancelling a job's follow-ups"))
}
