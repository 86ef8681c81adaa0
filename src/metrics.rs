//! Prometheus metrics: the recorder, the metric names, and the recording
//! calls the rest of the daemon makes.
//!
//! It owns what is counted and how it is named (every name starts with
//! `coax_scheduler_`). The calls below are one line at the place where the
//! thing happens (an enqueue, an attempt, a change of the gate's mode, a
//! socket request, a store call); the gauges that describe the whole queue
//! (jobs per state, due now, oldest overdue, the dispatcher's state) are
//! not kept up to date by every change but computed when Prometheus
//! scrapes, by [`scrape`], from the same store call as `stats`. Serving
//! `GET /metrics` and `GET /health` is [`http`]'s job.
//!
//! The recorder is the `metrics` crate's global one, installed only when
//! `[metrics] listen` is set. Without it every call here is a load of a
//! flag and a return, so a daemon without metrics pays nothing. With it, a
//! counter is a hash lookup and an atomic add, and a histogram sample is a
//! push onto a lock-free buffer that [`http`] drains every few seconds.
//! The recorder is per process: daemons embedded in one process (tests)
//! share its counters.

mod http;
mod record;
mod scrape;

pub use http::{Exporter, MetricsError};
pub use record::{
    Connection, StoreCall, attempt, attempt_started, connection, dispatch_changed, enqueued,
    lateness, set_recording, socket_request, store_call,
};

use crate::job::{Kind, State};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::Mutex;

pub const JOBS: &str = "coax_scheduler_jobs";
pub const DUE_NOW: &str = "coax_scheduler_due_now";
pub const DEFERRED: &str = "coax_scheduler_deferred_jobs";
pub const OLDEST_OVERDUE: &str = "coax_scheduler_oldest_overdue_seconds";
pub const ENQUEUED: &str = "coax_scheduler_enqueued_total";
pub const DUPLICATES: &str = "coax_scheduler_duplicates_total";
pub const ATTEMPTS: &str = "coax_scheduler_attempts_total";
pub const REQUEST_DURATION: &str = "coax_scheduler_request_duration_seconds";
pub const LATENESS: &str = "coax_scheduler_lateness_seconds";
pub const DISPATCH_STATE: &str = "coax_scheduler_dispatch_state";
pub const BREAKER_OPENS: &str = "coax_scheduler_breaker_opens_total";
pub const PAUSES: &str = "coax_scheduler_pauses_total";
pub const SOCKET_CONNECTIONS: &str = "coax_scheduler_socket_connections";
pub const SOCKET_REQUESTS: &str = "coax_scheduler_socket_requests_total";
pub const STORE_CALL_DURATION: &str = "coax_scheduler_store_call_duration_seconds";
pub const BUILD_INFO: &str = "coax_scheduler_build_info";

/// The dispatcher's states, as `stats` names them.
pub const DISPATCH_STATES: [&str; 4] = [
    "running",
    "paused_auth",
    "paused_rate_limit",
    "breaker_open",
];
/// The decisions an attempt can end in, as the history names them.
pub const DECISIONS: [&str; 7] = [
    "sent",
    "skipped",
    "failed",
    "retry",
    "paused_auth",
    "held",
    "expired",
];

/// 1 ms to 1 h: a job is usually sent within milliseconds of its due time,
/// and waits for as long as Coax is paused or failing.
const LATENESS_BUCKETS: [f64; 19] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 1800.0, 3600.0,
];
/// Up to the longest `coax.request_timeout` anyone should set.
const REQUEST_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// A group commit with fsync takes a few milliseconds; a prune step longer.
const STORE_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// The installed recorder's handle; a second daemon in the process reuses it.
static INSTALLED: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process's recorder (once) and returns a handle to render
/// it. With `node`, every series carries `node="<name>"`: the daemons
/// sharing a PostgreSQL queue are told apart by it.
pub fn install(node: Option<&str>) -> Result<PrometheusHandle, MetricsError> {
    let mut installed = match INSTALLED.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(handle) = installed.as_ref() {
        record::start();
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    if let Some(node) = node {
        builder = builder.add_global_label("node", node);
    }
    let builder = builder
        .set_buckets_for_metric(Matcher::Full(LATENESS.into()), &LATENESS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &REQUEST_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(STORE_CALL_DURATION.into()), &STORE_BUCKETS)
        })
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| MetricsError::Recorder(e.to_string()))?;
    describe();
    record::start();
    *installed = Some(handle.clone());
    Ok(handle)
}

/// HELP texts, and a zero for every series known in advance, so that a
/// rule or panel finds its series before the first event.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(JOBS, "Jobs in the queue per state, as stats counts them.");
    describe_gauge!(DUE_NOW, "Scheduled jobs whose due_at has passed.");
    describe_gauge!(
        DEFERRED,
        "Scheduled jobs waiting for their send window to open (due_at later than scheduled_at)."
    );
    describe_gauge!(
        OLDEST_OVERDUE,
        "Seconds since the oldest due scheduled job fell due; 0 when none is due."
    );
    describe_counter!(ENQUEUED, "Jobs created by enqueue.");
    describe_counter!(
        DUPLICATES,
        "Enqueued jobs whose key already existed, so nothing was created."
    );
    describe_counter!(ATTEMPTS, "Attempts to send a job, by kind and decision.");
    describe_histogram!(
        REQUEST_DURATION,
        "Time of one request to Coax, by job kind, in seconds."
    );
    describe_histogram!(
        LATENESS,
        "Start of a job's first attempt minus its scheduled_at, in seconds."
    );
    describe_gauge!(
        DISPATCH_STATE,
        "1 for the dispatcher's current state, 0 for the others."
    );
    describe_counter!(BREAKER_OPENS, "Times the breaker opened.");
    describe_counter!(PAUSES, "Pauses of all sending begun, by reason.");
    describe_gauge!(SOCKET_CONNECTIONS, "Open control socket connections.");
    describe_counter!(
        SOCKET_REQUESTS,
        "Control socket requests, by op and result (ok or the error code)."
    );
    describe_histogram!(
        STORE_CALL_DURATION,
        "Time of one store call, queueing on the store thread included, in seconds."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");

    counter!(ENQUEUED).absolute(0);
    counter!(DUPLICATES).absolute(0);
    counter!(BREAKER_OPENS).absolute(0);
    for reason in ["auth", "rate_limit"] {
        counter!(PAUSES, "reason" => reason).absolute(0);
    }
    for kind in Kind::ALL {
        for decision in DECISIONS {
            counter!(ATTEMPTS, "kind" => kind.as_str(), "decision" => decision).absolute(0);
        }
    }
    gauge!(SOCKET_CONNECTIONS).set(0.0);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Sets the gauges that describe the queue and the dispatcher, as read now.
fn set_queue_gauges(view: &scrape::View) {
    for state in State::ALL {
        let n = view.counts.get(&state).copied().unwrap_or(0);
        gauge!(JOBS, "state" => state.as_str()).set(n as f64);
    }
    gauge!(DUE_NOW).set(view.due as f64);
    gauge!(DEFERRED).set(view.deferred as f64);
    gauge!(OLDEST_OVERDUE).set(view.oldest_overdue.as_secs_f64());
    for state in DISPATCH_STATES {
        let value = if state == view.dispatch { 1.0 } else { 0.0 };
        gauge!(DISPATCH_STATE, "state" => state).set(value);
    }
}
