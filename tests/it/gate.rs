//! The gate against the clocks and the operator: a step of the wall clock,
//! in either direction, neither stretches nor cuts a pause, the rate limit or
//! the breaker's probes; a 429's pause has a ceiling (`dispatch.max_pause`),
//! which a reload can lower; and `resume` (the op and the CLI) ends a 429
//! pause, an auth pause or an open breaker at once, naming the peer's uid in
//! the log.
//!
//! The clock tests run the daemon on a [`SteppedClock`]: the system's clocks,
//! with an offset on the wall clock that the test moves. Jobs are enqueued
//! with a `scheduled_at` read from that clock, so "due now" means now as the
//! daemon sees it.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{DaemonProcess, TestDaemon, binary, config_text};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::time::{self, Clock, Millis, Mono, SystemClock};
use serde_json::{Value, json};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

const HOUR_MS: i64 = 3_600_000;

/// The system's clocks, with a wall clock that the test can step.
#[derive(Debug)]
struct SteppedClock {
    system: SystemClock,
    step_ms: AtomicI64,
}

impl SteppedClock {
    fn new() -> Arc<SteppedClock> {
        Arc::new(SteppedClock {
            system: SystemClock::new(),
            step_ms: AtomicI64::new(0),
        })
    }

    /// Moves the wall clock by `ms` (negative: back), as NTP or a VM
    /// restore would; the monotonic clock does not move.
    fn step(&self, ms: i64) {
        self.step_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for SteppedClock {
    fn wall(&self) -> Millis {
        self.system.wall() + self.step_ms.load(Ordering::SeqCst)
    }

    fn mono(&self) -> Mono {
        self.system.mono()
    }
}

fn job_at(at: Millis, marker: &str) -> Value {
    json!({
        "kind": "message", "channel": "sms", "scheduled_at": time::format(at),
        "payload": {"message": format!("Hello {marker}"), "phone": "+15550100"}
    })
}

/// A job due now by the daemon's clock.
fn job_now(clock: &SteppedClock, marker: &str) -> Value {
    job_at(clock.wall(), marker)
}

async fn start(coax: &CoaxStub, dispatch: &str, clock: &Arc<SteppedClock>) -> TestDaemon {
    let config = config_text(&coax.base_url(), dispatch, "");
    TestDaemon::start_with_clock(&config, clock.clone()).await
}

/// The test config with the auth pause set to `pause`.
fn auth_pause(config: &str, pause: &str) -> String {
    config.replace(
        "auth_pause = \"300ms\"",
        &format!("auth_pause = \"{pause}\""),
    )
}

async fn stats(daemon: &TestDaemon) -> Value {
    let answer = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    answer["dispatch"].clone()
}

async fn wait_for_dispatch_state(daemon: &TestDaemon, state: &str) -> Value {
    wait_until(&format!("dispatch.state {state}"), PATIENCE, || async {
        let d = stats(daemon).await;
        (d["state"] == state).then_some(d)
    })
    .await
}

fn until_ms(dispatch: &Value) -> Millis {
    let text = dispatch["until"].as_str().expect("until is a time");
    time::parse_rfc3339(text).expect("until parses")
}

/// Sends one job into `first` (the answer that stops sending for two
/// seconds), steps the wall clock back an hour, and checks that a job due
/// now by the stepped clock is sent once the pause has run its real course.
async fn step_back_while_stopped(first: Reply, stopped: &str) {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    coax.push(first);
    let clock = SteppedClock::new();
    let config = auth_pause(&config_text(&coax.base_url(), "", ""), "2s");
    let daemon = TestDaemon::start_with_clock(&config, clock.clone()).await;
    daemon.enqueue(job_now(&clock, "first")).await;
    let before = wait_for_dispatch_state(&daemon, stopped).await;
    let remaining = until_ms(&before) - clock.wall();

    clock.step(-HOUR_MS);
    // `stats` shows the end on the stepped wall clock: no further away than
    // before (unless the pause is already over).
    let after = stats(&daemon).await;
    if after["state"] == stopped {
        let shown = until_ms(&after) - clock.wall();
        assert!(
            shown <= remaining + 100,
            "the pause grew with the step: {shown} ms left, was {remaining} ms: {after}"
        );
    }

    let second = daemon.enqueue(job_now(&clock, "second")).await;
    daemon.wait_for_state(second, "sent").await;
    wait_for_dispatch_state(&daemon, "running").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_step_back_does_not_stretch_a_429_pause() {
    step_back_while_stopped(
        Reply::status(429).with_header("Retry-After", "2"),
        "paused_rate_limit",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_step_back_does_not_stretch_an_auth_pause() {
    step_back_while_stopped(Reply::status(401), "paused_auth").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_step_back_does_not_delay_the_breaker_probe() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    coax.push(Reply::status(503));
    let clock = SteppedClock::new();
    let config = format!(
        "{}\n[breaker]\nfailures = 1\n",
        config_text(&coax.base_url(), "", "")
    );
    let daemon = TestDaemon::start_with_clock(&config, clock.clone()).await;
    daemon.enqueue(job_now(&clock, "first")).await;
    wait_for_dispatch_state(&daemon, "breaker_open").await;
    clock.step(-HOUR_MS);
    // The first probe is a second after the breaker opened, in real time;
    // the job due now by the stepped clock is the trial that closes it.
    let second = daemon.enqueue(job_now(&clock, "second")).await;
    daemon.wait_for_state(second, "sent").await;
    assert!(coax.health_checks() >= 1);
    wait_for_dispatch_state(&daemon, "running").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_step_back_does_not_stop_the_token_bucket() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    let clock = SteppedClock::new();
    // One send a second, a burst of one: the first send empties the bucket.
    let daemon = start(&coax, "rate_limit = \"1/s\"", &clock).await;
    let first = daemon.enqueue(job_now(&clock, "first")).await;
    daemon.wait_for_state(first, "sent").await;
    clock.step(-HOUR_MS);
    let second = daemon.enqueue(job_now(&clock, "second")).await;
    daemon.wait_for_state(second, "sent").await;
    assert_eq!(stats(&daemon).await["state"], "running");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_step_forward_does_not_end_a_429_pause() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    // Half an hour, under the default max_pause of an hour.
    coax.push(Reply::status(429).with_header("Retry-After", "1800"));
    let clock = SteppedClock::new();
    let daemon = start(&coax, "", &clock).await;
    daemon.enqueue(job_now(&clock, "first")).await;
    wait_for_dispatch_state(&daemon, "paused_rate_limit").await;

    clock.step(HOUR_MS);
    let second = daemon.enqueue(job_now(&clock, "second")).await;
    let after = stats(&daemon).await;
    assert_eq!(after["state"], "paused_rate_limit", "{after}");
    let left = until_ms(&after) - clock.wall();
    assert!(
        left > 29 * 60 * 1000,
        "the step cut the pause short: {left} ms left: {after}"
    );
    // Only an operator ends it early.
    let resumed = daemon.request(json!({"op": "resume"})).await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    daemon.wait_for_state(second, "sent").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_step_forward_sends_jobs_that_fall_due() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    let clock = SteppedClock::new();
    let daemon = start(&coax, "", &clock).await;
    let later = daemon
        .enqueue(job_at(clock.wall() + HOUR_MS / 2, "later"))
        .await;
    assert_eq!(daemon.get(later).await["state"], "scheduled");
    clock.step(HOUR_MS);
    // Nothing wakes the dispatcher but its poll_interval (1s): the step is
    // seen at the next turn, and the job is due by the wall clock.
    daemon.wait_for_state(later, "sent").await;
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// dispatch.max_pause

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_of_ten_years_pauses_for_at_most_max_pause() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    coax.push(Reply::status(429).with_header("Retry-After", "315360000"));
    let clock = SteppedClock::new();
    let daemon = start(&coax, "max_pause = \"2s\"", &clock).await;
    let id = daemon.enqueue(job_now(&clock, "throttled")).await;
    let paused = wait_for_dispatch_state(&daemon, "paused_rate_limit").await;
    let left = until_ms(&paused) - clock.wall();
    assert!(left <= 2_000, "paused for {left} ms: {paused}");
    // The job's own retry is capped at max_delay; it goes out once the
    // capped pause is over.
    daemon.wait_for_state(id, "sent").await;
    assert_eq!(stats(&daemon).await["state"], "running");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_lowering_max_pause_shortens_the_pause_in_force() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    coax.push(Reply::status(429).with_header("Retry-After", "315360000"));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_text(&coax.base_url(), "", "");
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    let answer = daemon
        .request(json!({"op": "enqueue", "job": job_at(time::now(), "throttled")}))
        .await;
    let id = answer["id"].as_i64().expect("id");
    let paused = wait_until("a 429 pause", PATIENCE, || async {
        let s = daemon.request(json!({"op": "stats"})).await;
        (s["dispatch"]["state"] == "paused_rate_limit").then_some(s)
    })
    .await;
    let left = until_ms(&paused["dispatch"]) - time::now();
    assert!(
        (50 * 60 * 1000..=HOUR_MS).contains(&left),
        "capped at the default max_pause of 1h: {left} ms left"
    );

    std::fs::write(
        dir.path().join("config.toml"),
        config.replace("auth_pause", "max_pause = \"1s\"\nauth_pause"),
    )
    .expect("rewrite config");
    daemon.signal("HUP");
    daemon
        .wait_for_log_line("dispatch.max_pause applied", |l| {
            l.contains("config reloaded") && l.contains("dispatch.max_pause")
        })
        .await;
    wait_until("job to be sent", PATIENCE, || async {
        let j = daemon.request(json!({"op": "get", "id": id})).await;
        (j["job"]["state"] == "sent").then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------
// resume

/// Starts a daemon whose first answer from Coax is `first`, sends a job
/// into it, and waits until the dispatcher is `stopped`.
async fn stopped_by(first: Reply, config: &str, stopped: &str) -> (CoaxStub, TestDaemon, i64) {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    coax.push(first);
    let daemon = TestDaemon::start_with(&config.replace("COAX", &coax.base_url())).await;
    let id = daemon
        .enqueue(job_at(time::now(), &format!("stopped by {stopped}")))
        .await;
    wait_for_dispatch_state(&daemon, stopped).await;
    (coax, daemon, id)
}

async fn resume_ends(first: Reply, config: &str, stopped: &str) {
    let (_coax, daemon, id) = stopped_by(first, config, stopped).await;
    let answer = daemon.request(json!({"op": "resume"})).await;
    assert_eq!(
        answer,
        json!({"ok": true, "resumed": true, "dispatch": {"state": "running", "was": stopped}})
    );
    assert_eq!(stats(&daemon).await["state"], "running");
    daemon.wait_for_state(id, "sent").await;
    daemon.stop().await;
}

/// A test config whose pauses all last an hour, unless resumed.
fn hour_long_pauses() -> String {
    format!(
        "{}\n[breaker]\nfailures = 1\nmax_probe_interval = \"1h\"\n",
        auth_pause(&config_text("COAX", "", ""), "1h")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_ends_a_429_pause_at_once() {
    let reply = Reply::status(429).with_header("Retry-After", "3000");
    resume_ends(reply, &hour_long_pauses(), "paused_rate_limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_ends_an_auth_pause_at_once() {
    resume_ends(Reply::status(401), &hour_long_pauses(), "paused_auth").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_ends_an_open_breaker_at_once() {
    // /health keeps failing, so only `resume` can close the breaker.
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    coax.set_health(503);
    coax.push(Reply::status(503));
    let daemon =
        TestDaemon::start_with(&hour_long_pauses().replace("COAX", &coax.base_url())).await;
    let id = daemon.enqueue(job_at(time::now(), "breaker")).await;
    wait_for_dispatch_state(&daemon, "breaker_open").await;
    let answer = daemon.request(json!({"op": "resume"})).await;
    assert_eq!(
        answer,
        json!({"ok": true, "resumed": true, "dispatch": {"state": "running", "was": "breaker_open"}})
    );
    daemon.wait_for_state(id, "sent").await;
    assert_eq!(stats(&daemon).await["state"], "running");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_nothing_paused_is_ok_and_says_so() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let answer = daemon.request(json!({"op": "resume"})).await;
    assert_eq!(
        answer,
        json!({"ok": true, "resumed": false, "dispatch": {"state": "running", "was": "running"}})
    );
    daemon.stop().await;
}

/// The CLI's `resume` against the real daemon, whose log names the uid of
/// the operator who resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_resume_ends_a_pause_and_the_log_names_the_uid() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    coax.push(Reply::status(429).with_header("Retry-After", "3000"));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = hour_long_pauses().replace("COAX", &coax.base_url());
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    daemon
        .request(json!({"op": "enqueue", "job": job_at(time::now(), "cli")}))
        .await;
    wait_until("a 429 pause", PATIENCE, || async {
        let s = daemon.request(json!({"op": "stats"})).await;
        (s["dispatch"]["state"] == "paused_rate_limit").then_some(())
    })
    .await;

    let resume = || async {
        tokio::process::Command::new(binary())
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("resume")
            .env_remove("RUST_LOG")
            .output()
            .await
            .expect("run the CLI")
    };
    let out = resume().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("sending resumed") && stdout.contains("paused_rate_limit"),
        "{stdout}"
    );
    let uid = std::fs::metadata(dir.path().join("config.toml"))
        .expect("config file")
        .uid();
    let line = daemon
        .wait_for_log_line("the resume line", |l| {
            l.contains("resume") && l.contains("ended the pause")
        })
        .await;
    assert!(line.contains(&format!("uid={uid}")), "{line}");

    // Again, with nothing paused: still exit 0, and it says so.
    let out = resume().await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing was paused"),
        "{out:?}"
    );
}
