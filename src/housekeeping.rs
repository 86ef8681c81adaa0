//! Housekeeping: pruning finished jobs, on `store.prune_schedule` and on
//! demand.
//!
//! A finished job (sent, skipped, failed, expired, cancelled) last updated
//! longer ago than the retention is deleted with its history; then the WAL
//! is checkpointed and SQLite optimises. The store deletes in short steps
//! (see [`Store::prune`]). Scheduled, sending and held jobs are never touched.
//! The schedule runs on tokio-cron-scheduler in local time.

use crate::store::{Pruned, Store, StoreError};
use crate::time::{self, Millis};
use std::time::Duration;
use tokio::sync::watch;
use tokio_cron_scheduler::{Job, JobScheduler};

/// What one prune did.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Jobs last updated before this were (or would be) removed.
    pub before: Millis,
    pub pruned: Pruned,
}

/// Prunes finished jobs older than `age`, logging what was removed.
pub async fn prune(store: &Store, age: Duration, dry_run: bool) -> Result<Report, StoreError> {
    // An age reaching before 1970 means every finished job: no job is
    // updated before the epoch, and `before` stays an RFC 3339 time.
    let before = time::now()
        .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
        .max(0);
    let pruned = store.prune(before, dry_run).await?;
    tracing::info!(
        jobs = pruned.jobs,
        attempts = pruned.attempts,
        before = %time::format(before),
        dry_run,
        "{}",
        if dry_run { "prune (dry run): would remove finished jobs" } else { "pruned finished jobs" }
    );
    Ok(Report { before, pruned })
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the housekeeping schedule {schedule:?}: {detail}")]
pub struct ScheduleError {
    schedule: String,
    detail: String,
}

/// Runs the prune on `schedule` until `shutdown` turns true.
pub async fn run(
    store: Store,
    schedule: String,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ScheduleError> {
    let fail = |detail: String| ScheduleError {
        schedule: schedule.clone(),
        detail,
    };
    let mut scheduler = JobScheduler::new().await.map_err(|e| fail(e.to_string()))?;
    // The scheduler keeps its jobs (and what they hold) after it shuts
    // down; the job holds the store through this slot, emptied on the way
    // out, so that a stopped daemon lets go of its queue and its lock.
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(store)));
    let held = slot.clone();
    let job = Job::new_async_tz(schedule.as_str(), chrono::Local, move |_, _| {
        let store = held.lock().ok().and_then(|s| s.clone());
        Box::pin(async move {
            let Some(store) = store else { return };
            if let Err(e) = prune(&store, retention, false).await {
                tracing::error!(error = %e, "scheduled prune failed");
            }
        })
    })
    .map_err(|e| fail(e.to_string()))?;
    scheduler.add(job).await.map_err(|e| fail(e.to_string()))?;
    scheduler.start().await.map_err(|e| fail(e.to_string()))?;
    let _ = shutdown.changed().await;
    if let Err(e) = scheduler.shutdown().await {
        tracing::debug!(error = %e, "housekeeping scheduler did not stop cleanly");
    }
    if let Ok(mut store) = slot.lock() {
        store.take();
    }
    Ok(())
}
