//! Jobs out on PostgreSQL: claiming due jobs with `FOR UPDATE SKIP
//! LOCKED`, recording how each attempt ended, renewing this node's leases
//! and recovering the `sending` jobs of nodes whose leases ran out, as
//! [`super::super::delivery`] on SQLite.

use super::queue::{Queue, not_built};
use crate::store::{Claimed, Finish, Recovered, StoreError};
use crate::time::Millis;
use crate::window::Calendar;

impl Queue {
    /// Moves up to `limit` jobs due at `now` to `sending`, each this
    /// node's until `now + lease`, opening an attempt for each.
    pub async fn claim(
        &self,
        calendar: &Calendar,
        now: Millis,
        limit: usize,
    ) -> Result<Claimed, StoreError> {
        let _ = (calendar, now, limit);
        Err(not_built("claiming due jobs"))
    }

    /// Records how an attempt ended and moves its job on, if the job is
    /// still this node's claim.
    pub async fn finish(&self, calendar: &Calendar, finish: &Finish) -> Result<(), StoreError> {
        let _ = (calendar, finish);
        Err(not_built("recording an attempt"))
    }

    /// Extends the lease of every job this node has in `sending`; how many.
    pub async fn renew(&self, now: Millis) -> Result<u64, StoreError> {
        let _ = now;
        Err(not_built("renewing leases"))
    }

    /// Puts back in line (or holds, or fails) the `sending` jobs whose
    /// lease has run out, and, with `own`, every `sending` job of this
    /// node's name (at start-up, when none of them can still be in flight).
    pub async fn recover(
        &self,
        calendar: &Calendar,
        now: Millis,
        own: bool,
    ) -> Result<Vec<Recovered>, StoreError> {
        let _ = (calendar, now, own);
        Err(not_built("recovering claims"))
    }

    /// Scheduled jobs already due at `now`: how many (at most
    /// `MAX_OVERDUE_COUNT`), and the oldest due time.
    pub async fn overdue(&self, now: Millis) -> Result<(u64, Option<Millis>), StoreError> {
        let _ = now;
        Err(not_built("counting due jobs"))
    }

    /// The earliest `due_at` among scheduled jobs.
    pub async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        Err(not_built("finding the next due job"))
    }
}
