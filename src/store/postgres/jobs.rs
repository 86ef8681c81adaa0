//! Jobs in: enqueue, get, cancel, reschedule and requeue on PostgreSQL,
//! each one transaction, as [`super::super::queries`] and
//! [`super::super::changes`] are on SQLite.

use super::queue::{Queue, not_built};
use crate::job::NewJob;
use crate::protocol::{Enqueued, JobView};
use crate::store::{Lookup, Refusal, StoreError, UnknownParent};
use crate::time::Millis;
use crate::window::Calendar;
use tokio_postgres::Transaction;

impl Queue {
    /// Stores new jobs; with `check_parents`, first checks that each
    /// `after` names a job (stored, or earlier in `jobs` by key), and when
    /// one does not, stores nothing and says which.
    pub async fn enqueue(
        &self,
        calendar: &Calendar,
        jobs: Vec<NewJob>,
        check_parents: bool,
        now: Millis,
    ) -> Result<Result<Vec<Enqueued>, UnknownParent>, StoreError> {
        let _ = (calendar, jobs, check_parents, now);
        Err(not_built("enqueueing"))
    }

    pub async fn get(
        &self,
        calendar: &Calendar,
        lookup: Lookup,
        now: Millis,
    ) -> Result<Option<JobView>, StoreError> {
        let _ = (calendar, lookup, now);
        Err(not_built("reading a job"))
    }

    /// Cancels job `id` and its waiting followers: the job, and how many
    /// followers were cancelled.
    pub async fn cancel(
        &self,
        calendar: &Calendar,
        id: i64,
        now: Millis,
    ) -> Result<Result<(JobView, u64), Refusal>, StoreError> {
        let _ = (calendar, id, now);
        Err(not_built("cancelling a job"))
    }

    pub async fn reschedule(
        &self,
        calendar: &Calendar,
        id: i64,
        at: Millis,
        now: Millis,
    ) -> Result<Result<JobView, Refusal>, StoreError> {
        let _ = (calendar, id, at, now);
        Err(not_built("rescheduling a job"))
    }

    pub async fn requeue(
        &self,
        calendar: &Calendar,
        id: i64,
        now: Millis,
    ) -> Result<Result<JobView, Refusal>, StoreError> {
        let _ = (calendar, id, now);
        Err(not_built("requeueing a job"))
    }
}

/// Stores `jobs` inside `tx` (the schedule task's occurrences use it in
/// the transaction that moves their schedule on); as [`Queue::enqueue`]
/// without the parent check.
pub(super) async fn enqueue_in(
    tx: &Transaction<'_>,
    calendar: &Calendar,
    jobs: &[NewJob],
    now: Millis,
) -> Result<Vec<Enqueued>, StoreError> {
    let _ = (tx, calendar, jobs, now);
    Err(not_built("enqueueing"))
}
