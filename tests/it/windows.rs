//! Send windows from outside, as a user meets them: jobs enqueued through
//! the socket with a `timezone`, a `window` and local `scheduled_at` times,
//! delivered to the Coax stand-in only while their window is open.
//!
//! Tests that need a particular moment (a Saturday night before a DST
//! change, 22:00 in Sydney) run the daemon on a [`TestClock`] set to it and
//! step it to the opening; none sleeps for an hour to come. Where the point
//! is that nothing is sent, the test first has the daemon send a job with
//! no window (`"window": "none"`), so a claim has demonstrably run since.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{TestClock, TestDaemon, config_text};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::time::{self, Millis};
use serde_json::{Value, json};
use std::sync::Arc;

mod deferral;
mod delivery;
mod dst;
mod input;
mod logs;
mod reload;
mod routes;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// An RFC 3339 instant with an offset, as milliseconds.
fn at(text: &str) -> Millis {
    time::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The test config with `dispatch` lines and `[windows.*]` tables.
fn config(coax: &CoaxStub, dispatch: &str, windows: &str) -> String {
    format!(
        "{}\n{windows}\n",
        config_text(&coax.base_url(), dispatch, "")
    )
}

/// A window open every day during `hours`.
fn daily(name: &str, hours: &str) -> String {
    let days: String = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|d| format!("{d} = \"{hours}\"\n"))
        .collect();
    format!("[windows.{name}]\n{days}")
}

/// A customer SMS whose message carries `marker`, with `extra` fields.
fn sms(marker: &str, extra: Value) -> Value {
    let mut job = json!({
        "kind": "message", "channel": "sms",
        "payload": {"message": format!("Hello <{marker}>"), "phone": "+15550100"}
    });
    if let (Some(fields), Value::Object(extra)) = (job.as_object_mut(), extra) {
        fields.extend(extra);
    }
    job
}

/// How many requests reached Coax for the job marked `marker`.
fn sends_of(coax: &CoaxStub, marker: &str) -> usize {
    let tag = format!("<{marker}>");
    coax.requests()
        .iter()
        .filter(|r| r.body_text().contains(&tag))
        .count()
}

/// The whole answer to enqueueing `job`, asserting success.
async fn enqueue(daemon: &TestDaemon, job: Value) -> Value {
    let answer = daemon.request(json!({"op": "enqueue", "job": job})).await;
    assert_eq!(answer["ok"], true, "enqueue failed: {answer}");
    answer
}

/// A VIEW's (or an enqueue answer's) `due_at`.
fn due_at(view: &Value) -> Millis {
    let text = view["due_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no due_at in {view}"));
    at(text)
}

/// Asserts that `view` is scheduled with `due_at` at `expected`.
fn assert_due(view: &Value, expected: &str) {
    assert_eq!(view["state"], "scheduled", "{view}");
    assert_eq!(
        time::format(due_at(view)),
        time::format(at(expected)),
        "due_at: {view}"
    );
}

/// Has the daemon send a job with no window, and waits until it is sent:
/// every job due before it has been judged by a claim since.
async fn send_a_windowless_job(daemon: &TestDaemon, coax: &CoaxStub, marker: &str) {
    let id = enqueue(daemon, sms(marker, json!({"window": "none"}))).await["id"]
        .as_i64()
        .expect("id");
    daemon.wait_for_state(id, "sent").await;
    assert_eq!(sends_of(coax, marker), 1);
}

/// A Coax stand-in that accepts every send.
async fn accepting_coax() -> CoaxStub {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    coax
}

/// A daemon on a clock that reads `now`.
async fn start_at(config: &str, now: &str) -> (TestDaemon, Arc<TestClock>) {
    let clock = TestClock::at(at(now));
    let daemon = TestDaemon::start_with_clock(config, clock.clone()).await;
    (daemon, clock)
}

async fn dispatch_state(daemon: &TestDaemon) -> Value {
    let answer = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    answer["dispatch"]["state"].clone()
}

async fn wait_for_dispatch_state(daemon: &TestDaemon, state: &str) {
    wait_until(&format!("dispatch.state {state}"), PATIENCE, || async {
        (dispatch_state(daemon).await == state).then_some(())
    })
    .await;
}

/// A window `name` that is shut at the real time now, for the real binary
/// (which runs on the system clock): open 09:00-17:00 UTC only on the
/// weekday two days from today; and its opening, that day at 09:00 UTC.
fn shut_now(name: &str) -> (String, Millis) {
    use chrono::{Datelike, Days, Utc};
    let day = Utc::now()
        .date_naive()
        .checked_add_days(Days::new(2))
        .expect("a date two days on");
    let key = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        [day.weekday().num_days_from_monday() as usize];
    let opening = at(&format!("{day}T09:00:00Z"));
    (
        format!("[windows.{name}]\n{key} = \"09:00-17:00\"\n"),
        opening,
    )
}

/// Starts a daemon on `clock` in `dir`, where the real binary ran before.
/// (An in-process daemon cannot be restarted on its queue: the store
/// thread keeps the queue's lock after `Daemon::run` returns.)
async fn restart_in(dir: tempfile::TempDir, config: &str, clock: Arc<TestClock>) -> TestDaemon {
    TestDaemon::start_in_with_clock(dir, config, clock).await
}
