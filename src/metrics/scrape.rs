//! What a scrape reads at the moment it happens: the counts per state, the
//! due jobs and the oldest of them (one store call, the one `stats` makes),
//! and the dispatcher's state, which `GET /health` answers with too.
//!
//! Reading these at scrape time instead of counting every change keeps the
//! enqueue and dispatch paths free of them, and makes the gauges exactly
//! the numbers `stats` shows.

use crate::dispatch::Handle;
use crate::job::State;
use crate::store::{Store, StoreError};
use crate::time;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// The queue and the dispatcher as one scrape sees them.
pub(super) struct View {
    pub counts: BTreeMap<State, u64>,
    pub due: u64,
    /// Scheduled jobs waiting for their send window.
    pub deferred: u64,
    /// Zero when nothing is due.
    pub oldest_overdue: Duration,
    /// The dispatcher's state, as `stats` names it.
    pub dispatch: &'static str,
}

/// Reads the queue and the dispatcher now.
pub(super) async fn view(store: &Store, dispatch: &Handle) -> Result<View, StoreError> {
    let now = store.now();
    let (summary, due, oldest) = store.overview(now).await?;
    Ok(View {
        deferred: summary.deferred,
        counts: summary.counts,
        due,
        // How long ago it fell due: the time from it until now.
        oldest_overdue: oldest.map_or(Duration::ZERO, |at| time::until(now, at)),
        dispatch: dispatch.mode().name(),
    })
}

/// `GET /health`: the HTTP status and body for the dispatcher's state.
pub(super) fn health(dispatch: &Handle) -> (u16, Value) {
    let mode = dispatch.mode();
    if mode.name() == "running" {
        (200, json!({"status": "running"}))
    } else {
        (
            503,
            json!({"status": mode.name(), "until": mode.until().map(time::format)}),
        )
    }
}
