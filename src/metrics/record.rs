//! The recording calls the daemon makes where things happen, and the
//! handles they record through.
//!
//! The handles of every series known in advance (the counters of each
//! kind and decision, each op's successful requests, each store call's
//! histogram...) are looked up once, when the recorder is installed, so a
//! call on the hot path is a flag check, an index and an atomic add (or a
//! push of a histogram sample): some 10 ns, where a lookup by name would
//! hash the name and labels and search the registry each time. Series with
//! a label value not known in advance (an error code, a store call added
//! later) are looked up by name.

use super::{
    ATTEMPTS, BREAKER_OPENS, DECISIONS, DUPLICATES, ENQUEUED, LATENESS, PAUSES, REQUEST_DURATION,
    SOCKET_CONNECTIONS, SOCKET_REQUESTS, STORE_CALL_DURATION,
};
use crate::job::Kind;
use crate::protocol::{ErrorCode, OPS};
use crate::store::ClaimedJob;
use crate::time::Millis;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The store calls timed in `src/store.rs`.
const STORE_OPS: [&str; 14] = [
    "enqueue",
    "get",
    "list",
    "cancel",
    "reschedule",
    "requeue",
    "stats",
    "claim",
    "finish",
    "overview",
    "prune",
    "next_due",
    "resettle",
    "allowance",
];

/// Whether calls record; off until the recorder is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);
static HANDLES: OnceLock<Handles> = OnceLock::new();

/// The series known in advance, looked up once.
struct Handles {
    enqueued: Counter,
    duplicates: Counter,
    lateness: Histogram,
    /// By kind (in `Kind::ALL` order), then decision (in `DECISIONS` order).
    attempts: Vec<Vec<Counter>>,
    /// By kind, in `Kind::ALL` order.
    requests: Vec<Histogram>,
    connections: Gauge,
    /// Each op's `ok` requests, in `OPS` order.
    ok_requests: Vec<Counter>,
    /// In `STORE_OPS` order.
    store_calls: Vec<Histogram>,
}

/// Looks the handles up (once per process; the recorder must be
/// installed) and turns recording on.
pub(super) fn start() {
    HANDLES.get_or_init(|| Handles {
        enqueued: counter!(ENQUEUED),
        duplicates: counter!(DUPLICATES),
        lateness: histogram!(LATENESS),
        attempts: Kind::ALL
            .iter()
            .map(|kind| {
                DECISIONS
                    .iter()
                    .map(|decision| {
                        counter!(ATTEMPTS, "kind" => kind.as_str(), "decision" => *decision)
                    })
                    .collect()
            })
            .collect(),
        requests: Kind::ALL
            .iter()
            .map(|kind| histogram!(REQUEST_DURATION, "kind" => kind.as_str()))
            .collect(),
        connections: gauge!(SOCKET_CONNECTIONS),
        ok_requests: OPS
            .iter()
            .map(|op| counter!(SOCKET_REQUESTS, "op" => *op, "result" => "ok"))
            .collect(),
        store_calls: STORE_OPS
            .iter()
            .map(|op| histogram!(STORE_CALL_DURATION, "op" => *op))
            .collect(),
    });
    ENABLED.store(true, Ordering::Relaxed);
}

/// The handles, while recording is on.
fn handles() -> Option<&'static Handles> {
    if ENABLED.load(Ordering::Relaxed) {
        HANDLES.get()
    } else {
        None
    }
}

/// Turns recording off (or back on) in a process whose recorder is
/// installed: what the benchmark uses to measure the same code with
/// metrics on and off in one run. Off, every call here returns at once, as
/// if no recorder were installed. A daemon with `[metrics]` that starts
/// turns it on again.
pub fn set_recording(on: bool) {
    ENABLED.store(on && HANDLES.get().is_some(), Ordering::Relaxed);
}

fn kind_index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

/// Counts what an enqueue created and what it found already there.
pub fn enqueued(done: &[crate::protocol::Enqueued]) {
    let Some(h) = handles() else { return };
    let duplicates = done.iter().filter(|e| e.duplicate).count() as u64;
    h.enqueued.increment(done.len() as u64 - duplicates);
    if duplicates > 0 {
        h.duplicates.increment(duplicates);
    }
}

/// Records the lateness of a job's first attempt, starting at `now`:
/// counted from its due time, so a job its send window held back is not
/// late for having waited.
pub fn attempt_started(job: &ClaimedJob, now: Millis) {
    if job.seq == 1 {
        lateness(now.saturating_sub(job.due_at));
    }
}

/// Records a first attempt's lateness, in milliseconds (none if early).
pub fn lateness(late_ms: i64) {
    let Some(h) = handles() else { return };
    h.lateness.record(late_ms.max(0) as f64 / 1000.0);
}

/// Counts an attempt's decision and records how long its request took.
pub fn attempt(kind: Kind, decision: &'static str, took: Duration) {
    let Some(h) = handles() else { return };
    let kind = kind_index(kind);
    match DECISIONS.iter().position(|d| *d == decision) {
        Some(i) => h.attempts[kind][i].increment(1),
        None => counter!(ATTEMPTS, "kind" => Kind::ALL[kind].as_str(), "decision" => decision)
            .increment(1),
    }
    h.requests[kind].record(took.as_secs_f64());
}

/// Counts a pause or an opening breaker when the gate's mode changes from
/// `from` to `to` (the names `stats` uses). Rare: looked up by name.
pub fn dispatch_changed(from: &'static str, to: &'static str) {
    if handles().is_none() || from == to {
        return;
    }
    match to {
        "breaker_open" => counter!(BREAKER_OPENS).increment(1),
        "paused_auth" => counter!(PAUSES, "reason" => "auth").increment(1),
        "paused_rate_limit" => counter!(PAUSES, "reason" => "rate_limit").increment(1),
        _ => {}
    }
}

/// Counts an open socket connection until the returned value is dropped.
pub fn connection() -> Connection {
    let gauge = handles().map(|h| h.connections.clone());
    if let Some(g) = &gauge {
        g.increment(1.0);
    }
    Connection { gauge }
}

/// An open connection, counted in `socket_connections` while it lives.
pub struct Connection {
    gauge: Option<Gauge>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.decrement(1.0);
        }
    }
}

/// Counts one socket request: `op` from [`Request::op`](crate::protocol::Request::op) (or `invalid`), and
/// its error code, if it failed.
pub fn socket_request(op: &'static str, error: Option<ErrorCode>) {
    let Some(h) = handles() else { return };
    match (error, OPS.iter().position(|o| *o == op)) {
        (None, Some(i)) => h.ok_requests[i].increment(1),
        (error, _) => {
            let result = error.map_or("ok", ErrorCode::as_str);
            counter!(SOCKET_REQUESTS, "op" => op, "result" => result).increment(1)
        }
    }
}

/// Times a store call named `op` until the returned value is dropped.
pub fn store_call(op: &'static str) -> StoreCall {
    StoreCall {
        op,
        started: handles().map(|_| Instant::now()),
    }
}

/// A store call being timed.
pub struct StoreCall {
    op: &'static str,
    started: Option<Instant>,
}

impl Drop for StoreCall {
    fn drop(&mut self) {
        let (Some(started), Some(h)) = (self.started, handles()) else {
            return;
        };
        let took = started.elapsed().as_secs_f64();
        match STORE_OPS.iter().position(|o| *o == self.op) {
            Some(i) => h.store_calls[i].record(took),
            None => histogram!(STORE_CALL_DURATION, "op" => self.op).record(took),
        }
    }
}
