//! Send windows on PostgreSQL: settling a job's due time against its
//! window, as [`super::super::deferral`] on SQLite.

use super::queue::not_built;
use crate::store::StoreError;
use crate::store::deferral::{Report, Settled, Timing};
use crate::time::Millis;
use crate::window::Calendar;
use tokio_postgres::Transaction;

/// Sets job `t.id`'s `due_at` from its window, judged at `now` (or
/// expires or holds it), as SQLite's `deferral::settle`.
pub(super) async fn settle(
    tx: &Transaction<'_>,
    calendar: &Calendar,
    t: &Timing<'_>,
    now: Millis,
    report: Report,
) -> Result<Settled, StoreError> {
    let _ = (tx, calendar, t, now, report);
    Err(not_built("settling a job against its window"))
}
