//! `list` and tags on PostgreSQL, as [`super::super::listing`] and
//! [`super::super::tags`] on SQLite.

use super::queue::{Queue, not_built};
use crate::protocol::ListCursor;
use crate::store::listing::{Filter, ListStep};
use crate::store::{Moved, StoreError};
use crate::time::Millis;
use crate::window::Calendar;

impl Queue {
    /// One step of a `list`, as SQLite's `listing::step`.
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
        let _ = (calendar, filter, from, rows, budget, first, now);
        Err(not_built("listing jobs"))
    }

    /// Cancels every scheduled, held and waiting job with `tag`, and the
    /// waiting followers of each; how many of each.
    pub async fn cancel_tag(
        &self,
        calendar: &Calendar,
        tag: String,
        now: Millis,
    ) -> Result<(u64, u64), StoreError> {
        let _ = (calendar, tag, now);
        Err(not_built("cancelling a tag"))
    }

    /// Moves every scheduled job with `tag` by `by_ms`; the id of a job
    /// the move would take past 9999-12-31, if any, in which case none
    /// was moved.
    pub async fn reschedule_tag(
        &self,
        calendar: &Calendar,
        tag: String,
        by_ms: i64,
        now: Millis,
    ) -> Result<Result<Moved, i64>, StoreError> {
        let _ = (calendar, tag, by_ms, now);
        Err(not_built("rescheduling a tag"))
    }
}
