//! The calendar the store settles due times under, and settling the queue
//! anew when it changes (a reload, or a restart with another config).
//!
//! Every change that makes a job `scheduled` settles its `due_at` under the
//! calendar of the moment (see [`super::deferral`]). When the calendar
//! changes, jobs already queued are settled again, in bounded steps after
//! the change, so that none waits for an opening that no longer exists and
//! `get` shows each one's new due time; meanwhile the claim judges every
//! job under the new calendar, so none goes out of its new window. `meta`
//! keeps the fingerprint of the calendar the queue was last fully settled
//! under, so a restart with the same config walks nothing.

use super::deferral;
use super::{Backend, Store, StoreError, walk};
use crate::window::Calendar;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// How many jobs one step of settling the queue anew reads at most.
const RESETTLE_STEP: usize = 1_000;

/// The calendar in force, shared with the store thread. A call reads it
/// when it runs, not when it is queued, so a claim queued just before a
/// reload but run after it judges windows under the new calendar.
#[derive(Clone)]
pub(super) struct CalendarCell(Arc<RwLock<Arc<Calendar>>>);

impl CalendarCell {
    pub(super) fn new(calendar: Arc<Calendar>) -> CalendarCell {
        CalendarCell(Arc::new(RwLock::new(calendar)))
    }

    pub(super) fn get(&self) -> Arc<Calendar> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            // A panic while swapping an Arc cannot leave it half-written.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `calendar` in force; whether it differs from the one before.
    fn replace(&self, calendar: Arc<Calendar>) -> bool {
        let mut slot = match self.0.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = **slot != *calendar;
        *slot = calendar;
        changed
    }
}

impl Store {
    /// The calendar due times are settled under now.
    pub fn calendar(&self) -> Arc<Calendar> {
        self.calendar.get()
    }

    /// Puts `calendar` in force for every call that runs from now on.
    /// Returns whether it differs from the one it replaces; if so,
    /// [`Store::resettle`] brings the queued jobs' due times in line.
    pub fn set_calendar(&self, calendar: Arc<Calendar>) -> bool {
        self.calendar.replace(calendar)
    }

    /// Settles the due time of every scheduled job under the calendar in
    /// force, unless the queue was last settled under the same one. Goes in
    /// steps of [`RESETTLE_STEP`] jobs, each its own call; stops early when
    /// `stop` turns true or a newer calendar comes into force (whose own
    /// resettle takes over). Returns how many jobs it moved.
    ///
    /// Under a calendar with no windows only the deferred jobs can be
    /// wrong, so only they are walked: a queue of a million jobs none of
    /// which has a window costs nothing here.
    pub async fn resettle(&self, stop: watch::Receiver<bool>) -> Result<u64, StoreError> {
        let fingerprint = self.calendar().fingerprint();
        let settled = match &self.backend {
            Backend::Postgres(q) => self.observed(q.settled_under(fingerprint).await)?,
            Backend::Sqlite(_) => {
                self.call(move |c| deferral::settled_under(c, fingerprint))
                    .await?
            }
        };
        if settled {
            return Ok(0);
        }
        self.settle_all(stop).await
    }

    /// [`Store::resettle`] whatever calendar the queue was last settled
    /// under: after a reload (which may go back to the calendar recorded
    /// while a walk under another was under way), and for the benchmark.
    /// The record is cleared first, so a walk cut short is walked again.
    pub async fn settle_all(&self, stop: watch::Receiver<bool>) -> Result<u64, StoreError> {
        let _timed = crate::metrics::store_call("resettle");
        let calendar = self.calendar();
        let fingerprint = calendar.fingerprint();
        if let Backend::Postgres(q) = &self.backend {
            return self.settle_all_postgres(q, stop).await;
        }
        self.call(deferral::mark_unsettled).await?;
        let windowless = calendar.window_names().next().is_none();
        let mut moved = 0;
        let mut from = Some(walk::Cursor::START);
        while let Some(cursor) = from {
            if *stop.borrow() || self.calendar().fingerprint() != fingerprint {
                // Not recorded as settled: the next start (or the newer
                // calendar's resettle) walks again.
                return Ok(moved);
            }
            let (calendar, now) = (calendar.clone(), self.now());
            let (step, next) = self
                .call(move |c| {
                    if windowless {
                        deferral::undefer_step(c, &calendar, RESETTLE_STEP, now)
                    } else {
                        deferral::resettle_step(c, &calendar, cursor, RESETTLE_STEP, now)
                    }
                })
                .await?;
            moved += step;
            from = next;
        }
        self.call(move |c| deferral::mark_settled(c, fingerprint))
            .await?;
        log_settled(moved);
        Ok(moved)
    }

    /// [`Store::settle_all`] on PostgreSQL, walking the scheduled jobs by id.
    async fn settle_all_postgres(
        &self,
        q: &super::postgres::Queue,
        stop: watch::Receiver<bool>,
    ) -> Result<u64, StoreError> {
        let calendar = self.calendar();
        let fingerprint = calendar.fingerprint();
        self.observed(q.mark_unsettled().await)?;
        let mut moved = 0;
        let mut from = Some(0);
        while let Some(after) = from {
            if *stop.borrow() || self.calendar().fingerprint() != fingerprint {
                return Ok(moved);
            }
            let step = q.resettle_step(&calendar, after, RESETTLE_STEP, self.now());
            let (step, next) = self.observed(step.await)?;
            moved += step;
            from = next;
        }
        self.observed(q.mark_settled(fingerprint).await)?;
        log_settled(moved);
        Ok(moved)
    }
}

fn log_settled(moved: u64) {
    if moved > 0 {
        tracing::info!(
            jobs = moved,
            "settled the queue's due times under the new send windows"
        );
    }
}
