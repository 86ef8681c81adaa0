//! The queue as a whole on PostgreSQL: counts per state (`stats`),
//! pruning, settling due times anew after the windows change, and the
//! check for unreadable rows, as SQLite's `queries::summary`, `prune`,
//! `deferral` and `quarantine` do.

use super::queue::{Queue, not_built};
use crate::store::{Pruned, StoreError, Summary};
use crate::time::Millis;
use crate::window::Calendar;

impl Queue {
    /// Counts per state, deferred jobs, the next due time, and the live
    /// nodes.
    pub async fn summary(&self, now: Millis) -> Result<Summary, StoreError> {
        let _ = now;
        Err(not_built("counting jobs"))
    }

    /// Deletes finished jobs last updated before `before` (or only counts
    /// them, on a dry run), in bounded steps; one node at a time.
    pub async fn prune(&self, before: Millis, dry_run: bool) -> Result<Pruned, StoreError> {
        let _ = (before, dry_run);
        Err(not_built("pruning finished jobs"))
    }

    /// Whether the queue was last settled under the calendar with
    /// `fingerprint`.
    pub async fn settled_under(&self, fingerprint: u64) -> Result<bool, StoreError> {
        let _ = fingerprint;
        Err(not_built("reading the calendar's record"))
    }

    pub async fn mark_unsettled(&self) -> Result<(), StoreError> {
        Err(not_built("clearing the calendar's record"))
    }

    pub async fn mark_settled(&self, fingerprint: u64) -> Result<(), StoreError> {
        let _ = fingerprint;
        Err(not_built("recording the calendar"))
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
        let _ = (calendar, after, limit, now);
        Err(not_built("settling due times anew"))
    }

    /// One step of the check for unreadable rows among scheduled and held
    /// jobs with ids after `after`: how many it set aside, and where the
    /// next step starts.
    pub async fn sweep_step(
        &self,
        after: i64,
        span: i64,
        now: Millis,
    ) -> Result<(u64, Option<i64>), StoreError> {
        let _ = (after, span, now);
        Err(not_built("checking for unreadable rows"))
    }
}
