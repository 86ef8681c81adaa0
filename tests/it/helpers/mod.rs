//! Test support: a daemon fixture, a Coax stand-in, and waiting helpers.

#![allow(dead_code)]

pub mod backend;
pub mod coax;
pub mod command;
pub mod daemon;
pub mod logs;
pub mod nodes;
pub mod postgres;

use std::future::Future;
use std::time::Duration;

/// How long any wait in the tests may take before it counts as a failure.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `probe` until it returns `Some`, or panics after `timeout` saying `what`.
///
/// Used where the thing waited for has no event to subscribe to (a row in
/// the database, a log line); the poll interval is short and the timeout is
/// the only bound.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `VmHWM` (peak resident set) and `VmRSS` of `pid`, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{status}"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// A customer SMS job with `key`, due after `delay`.
pub fn sms_job(key: &str, delay: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "message", "channel": "sms", "key": key, "delay": delay,
        "payload": {"message": "hi", "phone": "+15550100"}
    })
}

/// Runs `sql` on a queue database from outside, as a hand edit would.
pub fn edit_db(db: &std::path::Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).expect("open the queue");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn.execute_batch(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Opens a daemon from a test that is not async (a refusal at start-up).
pub fn open_blocking(
    config: coax_scheduler::config::Config,
) -> Result<coax_scheduler::daemon::Daemon, coax_scheduler::store::StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
        .block_on(coax_scheduler::daemon::Daemon::open(config))
}
