//! Recurring sends on PostgreSQL, as [`super::super::schedules`] on
//! SQLite. An occurrence is created in the transaction that moves its
//! schedule on, under the schedule row's lock, so that of several nodes
//! only one creates it.

use super::queue::{Queue, not_built};
use crate::protocol::Enqueued;
use crate::schedule::wire::Occurrence;
use crate::schedule::{Row, Schedule, Stored};
use crate::store::{Firing, StoreError};
use crate::time::Millis;
use crate::window::Calendar;

impl Queue {
    pub async fn put_schedule(
        &self,
        s: Schedule,
        next_at: Millis,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let _ = (s, next_at, now);
        Err(not_built("storing a schedule"))
    }

    pub async fn get_schedule(
        &self,
        name: String,
    ) -> Result<Option<(Row, Vec<Occurrence>)>, StoreError> {
        let _ = name;
        Err(not_built("reading a schedule"))
    }

    pub async fn list_schedules(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(Row, Vec<Occurrence>)>, StoreError> {
        let _ = (after, limit);
        Err(not_built("listing schedules"))
    }

    pub async fn delete_schedule(&self, name: String) -> Result<bool, StoreError> {
        let _ = name;
        Err(not_built("deleting a schedule"))
    }

    pub async fn due_schedules(&self, now: Millis) -> Result<Vec<Stored>, StoreError> {
        let _ = now;
        Err(not_built("reading due schedules"))
    }

    pub async fn schedules_overview(&self) -> Result<(u64, Option<Millis>), StoreError> {
        Err(not_built("counting schedules"))
    }

    pub async fn fire_schedule(
        &self,
        calendar: &Calendar,
        firing: Firing,
        now: Millis,
    ) -> Result<Option<Vec<Enqueued>>, StoreError> {
        let _ = (calendar, firing, now);
        Err(not_built("creating a schedule's occurrences"))
    }
}
