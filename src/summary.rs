//! The status page: a periodic one-line queue summary in the log, and the
//! same line as systemd's `STATUS=`.
//!
//! It reads the store, the dispatcher's counters and the socket's connection
//! counts; it changes nothing.

use crate::dispatch::Handle;
use crate::job::State;
use crate::server::ConnectionCounts;
use crate::store::Store;
use crate::time;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often `STATUS=` is refreshed, whatever the log interval.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Logs the summary every `log_every` (if set; it may change on reload) and
/// refreshes systemd's status line every few seconds, until `shutdown`
/// turns true.
pub async fn run(
    store: Store,
    dispatch: Handle,
    connections: Arc<ConnectionCounts>,
    mut log_every: watch::Receiver<Option<Duration>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut status = tokio::time::interval(STATUS_EVERY);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Counting a large queue costs tens of milliseconds: refresh STATUS=
    // only when systemd is there to read it.
    let supervised = crate::systemd::supervised();
    let mut period = *log_every.borrow_and_update();
    let mut next_log = next(period);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = status.tick(), if supervised => {
                if let Some(line) = line(&store, &dispatch).await {
                    crate::systemd::status(&line.text);
                }
            }
            Ok(()) = log_every.changed() => {
                period = *log_every.borrow_and_update();
                next_log = next(period);
            }
            _ = tokio::time::sleep_until(next_log), if period.is_some() => {
                next_log = next(period);
                log(&store, &dispatch, &connections).await;
            }
        }
    }
}

/// When the next summary is due; far away when summaries are off.
fn next(period: Option<Duration>) -> tokio::time::Instant {
    let year = Duration::from_secs(365 * 86_400);
    tokio::time::Instant::now() + period.unwrap_or(year).min(year)
}

/// What one summary says.
pub struct Line {
    pub text: String,
}

async fn line(store: &Store, dispatch: &Handle) -> Option<Line> {
    let (summary, due, _) = store.overview(store.now()).await.ok()?;
    let (schedules, next_occurrence) = store.schedules_overview().await.ok()?;
    let count = |s: State| summary.counts.get(&s).copied().unwrap_or(0);
    Some(Line {
        text: format!(
            "{} scheduled ({} due, {} deferred), {} sending, {} sent, {} failed, {} held; {} schedules (next {}); dispatcher {}",
            count(State::Scheduled),
            due,
            summary.deferred,
            count(State::Sending),
            count(State::Sent),
            count(State::Failed),
            count(State::Held),
            schedules,
            next_occurrence.map_or_else(|| "none".into(), time::format),
            dispatch.mode().name()
        ),
    })
}

async fn log(store: &Store, dispatch: &Handle, connections: &ConnectionCounts) {
    let now = store.now();
    let (summary, due_now, oldest) = match store.overview(now).await {
        Ok(overview) => overview,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the queue for the summary");
            return;
        }
    };
    let (schedules, next_occurrence) = match store.schedules_overview().await {
        Ok(overview) => overview,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the schedules for the summary");
            return;
        }
    };
    let (sent, failed) = dispatch.take_interval_counts();
    // Per-connection lines are DEBUG (a connect loop must not flood the
    // journal); these counts are what INFO sees of them.
    let (accepted, refused) = connections.take();
    let count = |s: State| summary.counts.get(&s).copied().unwrap_or(0);
    let lateness_ms = oldest.map_or(0, |at| now.saturating_sub(at).max(0));
    let mode = dispatch.mode();
    tracing::info!(
        scheduled = count(State::Scheduled),
        sending = count(State::Sending),
        sent_total = count(State::Sent),
        skipped = count(State::Skipped),
        failed_total = count(State::Failed),
        cancelled = count(State::Cancelled),
        held = count(State::Held),
        expired = count(State::Expired),
        due_now,
        deferred = summary.deferred,
        oldest_overdue_ms = lateness_ms,
        sent_in_interval = sent,
        failed_in_interval = failed,
        connections = accepted,
        refused,
        schedules,
        next_occurrence = %next_occurrence.map(time::format).unwrap_or_default(),
        dispatch = mode.name(),
        until = %mode.until().map(time::format).unwrap_or_default(),
        "queue summary"
    );
}
