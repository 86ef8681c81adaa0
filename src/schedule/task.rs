//! The daemon task that creates occurrences: it sleeps until the earliest
//! stored `next_at` (or until a `schedule_put` or `schedule_delete` wakes
//! it, or shutdown), then creates every due schedule's occurrences, each
//! schedule in one store call.
//!
//! The wall clock is the store's ([`Store::now`]), so a test that sets or
//! steps it moves schedules too; a sleep is never longer than
//! `dispatch.poll_interval`, so a step of the wall clock is noticed as the
//! dispatcher notices it. At start-up the first pass works from the stored
//! `next_at`s alone: what a downtime missed is judged there, under each
//! schedule's `catch_up` (see [`super::recurrence::plan`]).

use super::recurrence::{Plan, plan};
use super::{Stored, occurrence_job};
use crate::dispatch::Handle;
use crate::job::Rules;
use crate::store::{Firing, Store};
use crate::time::{self, Millis};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How long to wait after the store failed before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Creates due occurrences until `stop` turns true.
pub async fn run(
    store: Store,
    rules: Rules,
    dispatch: Handle,
    wake: Arc<Notify>,
    longest_sleep: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_now: Option<Millis> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        // A wall clock that went back (a forward step corrected, a VM
        // restored) leaves next occurrences planned from the later time:
        // each is brought back to the first after now. Occurrences made
        // again are not made twice: their keys are taken.
        let now = store.now();
        if last_now.is_some_and(|last| now.saturating_add(STEP_BACK_MS) < last)
            && let Err(e) = rewind(&store, now).await
        {
            tracing::warn!(error = %e, "cannot replan recurring sends after the clock went back");
        }
        last_now = Some(now);
        let wait = match pass(&store, &rules, &dispatch).await {
            Ok(next) => next.map_or(longest_sleep, |at| {
                time::until(at, store.now()).min(longest_sleep)
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create recurring sends now; trying again");
                RETRY_AFTER
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// How far the wall clock must go back between two passes to be taken as
/// a step back.
const STEP_BACK_MS: Millis = 1_000;

/// Brings each schedule's next occurrence back to the first after `now`,
/// where it lies later (the clock went back).
async fn rewind(store: &Store, now: Millis) -> Result<(), crate::store::StoreError> {
    for stored in store.due_schedules(Millis::MAX).await? {
        let Some(was) = stored.next_at else { continue };
        let Ok(recurrence) = stored.schedule.recurrence() else {
            continue;
        };
        let Some(next) = recurrence.next_after(now).filter(|next| *next < was) else {
            continue;
        };
        tracing::warn!(
            schedule = stored.schedule.name,
            was = %time::format(was),
            next_at = %time::format(next),
            "the wall clock went back; the schedule's next occurrence is brought back with it"
        );
        let firing = Firing {
            name: stored.schedule.name.clone(),
            revision: stored.revision,
            was: Some(was),
            next_at: Some(next),
            jobs: Vec::new(),
        };
        store.fire_schedule(firing).await?;
    }
    Ok(())
}

/// Creates the occurrences of every due schedule; the earliest next
/// occurrence after that.
async fn pass(
    store: &Store,
    rules: &Rules,
    dispatch: &Handle,
) -> Result<Option<Millis>, crate::store::StoreError> {
    let now = store.now();
    for stored in store.due_schedules(now).await? {
        fire(store, rules, dispatch, stored, now).await?;
    }
    Ok(store.schedules_overview().await?.1)
}

async fn fire(
    store: &Store,
    rules: &Rules,
    dispatch: &Handle,
    stored: Stored,
    now: Millis,
) -> Result<(), crate::store::StoreError> {
    let s = &stored.schedule;
    let Some(was) = stored.next_at else {
        return Ok(());
    };
    let recurrence = match s.recurrence() {
        Ok(r) => r,
        Err(e) => {
            // Only a hand edit can store a cron that does not parse; the
            // schedule stops rather than firing at a guess.
            tracing::error!(schedule = s.name, error = %e, "a schedule's cron cannot be read; it is stopped until put again");
            let firing = Firing {
                name: s.name.clone(),
                revision: stored.revision,
                was: Some(was),
                next_at: None,
                jobs: Vec::new(),
            };
            store.fire_schedule(firing).await?;
            return Ok(());
        }
    };
    let plan = plan(&recurrence, was, now, s.catch_up);
    log_missed(s, &plan);
    let rules = Rules {
        calendar: store.calendar(),
        ..rules.clone()
    };
    let mut jobs = Vec::with_capacity(plan.create.len());
    for at in &plan.create {
        match occurrence_job(s, *at, now, &rules) {
            Ok(job) => jobs.push(job),
            // A reload can take away a window the template names: the
            // occurrence cannot become a job, and says so.
            Err(e) => tracing::error!(
                schedule = s.name,
                occurrence = %time::format(*at),
                error = %e,
                "a recurring send's occurrence is not a valid job under the config now; not created"
            ),
        }
    }
    let firing = Firing {
        name: s.name.clone(),
        revision: stored.revision,
        was: Some(was),
        next_at: plan.next_at,
        jobs,
    };
    let Some(done) = store.fire_schedule(firing).await? else {
        tracing::debug!(
            schedule = s.name,
            "the schedule changed while its occurrences were planned; planned again"
        );
        return Ok(());
    };
    for e in &done {
        tracing::info!(
            schedule = s.name,
            job_id = e.id,
            scheduled_at = %e.scheduled_at,
            duplicate = e.duplicate,
            "recurring send: occurrence {}",
            if e.duplicate { "already created" } else { "created" }
        );
    }
    if !done.is_empty() {
        crate::metrics::enqueued(&done);
        dispatch.wake();
    }
    if plan.next_at.is_none() {
        tracing::info!(
            schedule = s.name,
            "the schedule has no occurrence left before 9999"
        );
    }
    Ok(())
}

/// Logs what `catch_up` did with occurrences the daemon was down for.
fn log_missed(s: &super::Schedule, plan: &Plan) {
    if plan.missed == 0 {
        return;
    }
    tracing::info!(
        schedule = s.name,
        catch_up = s.catch_up.as_str(),
        missed = plan.missed,
        skipped = plan.skipped,
        created = plan.missed - plan.skipped,
        more = plan.more,
        "recurring send: occurrences missed while the daemon was down; catch_up chose"
    );
}
