//! Recurring sends: `schedule_*` ops, occurrences created at their time
//! on an injected clock, DST, catch-up after downtime, and restarts that
//! neither lose nor repeat an occurrence.

use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{TestClock, TestDaemon, binary, config_text};
use crate::helpers::{PATIENCE, edit_db, wait_until};
use coax_scheduler::time::{self, Millis};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

fn t(text: &str) -> Millis {
    time::parse_rfc3339(text).expect("a time")
}

fn template() -> Value {
    json!({"kind": "message", "channel": "sms", "tags": ["weekly-digest"],
           "payload": {"message": "This week at the clinic", "phone": "+15550100"}})
}

fn put(name: &str, cron: &str, zone: &str, catch_up: &str) -> Value {
    json!({"op": "schedule_put", "name": name, "cron": cron, "timezone": zone,
           "catch_up": catch_up, "job": template()})
}

async fn ok(daemon: &TestDaemon, request: Value) -> Value {
    let answer = daemon.request(request.clone()).await;
    assert_eq!(answer["ok"], true, "{request}: {answer}");
    answer
}

/// The jobs of schedule `name`, soonest first.
async fn occurrences(daemon: &TestDaemon, name: &str) -> Vec<Value> {
    let answer = ok(
        daemon,
        json!({"op": "list", "tag": format!("schedule:{name}"), "limit": 1000}),
    )
    .await;
    answer["jobs"].as_array().cloned().unwrap_or_default()
}

async fn next_at(daemon: &TestDaemon, name: &str) -> Value {
    ok(daemon, json!({"op": "schedule_get", "name": name})).await["schedule"]["next_at"].clone()
}

/// Waits until schedule `name`'s next occurrence is `want`.
async fn wait_next_at(daemon: &TestDaemon, name: &str, want: &str) {
    wait_until(
        &format!("{name}'s next occurrence {want}"),
        PATIENCE,
        || async { (next_at(daemon, name).await == want).then_some(()) },
    )
    .await;
}

/// Runs `phase` (a daemon's life before a restart) on a runtime of its
/// own, dropped at the end: an in-process daemon's store stays open while
/// a task of its runtime (the housekeeping scheduler's) lives on, so only
/// dropping that runtime lets a restart in this process take the lock.
async fn on_own_runtime<T, F, Fut>(phase: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(phase())
    })
    .await
    .expect("the phase ran")
}

/// Starts the daemon again on the database in `dir`, once the one before
/// has let go of it (its store thread ends after its last task).
async fn restart(dir: tempfile::TempDir, config: &str, clock: Arc<TestClock>) -> TestDaemon {
    let lock = dir.path().join("queue.db.lock");
    wait_until(
        "the stopped daemon to release its lock",
        PATIENCE,
        || async {
            let file = std::fs::OpenOptions::new().write(true).open(&lock).ok()?;
            file.try_lock().ok()
        },
    )
    .await;
    TestDaemon::start_in_with_clock(dir, config, clock).await
}

async fn start(clock: Arc<TestClock>) -> (CoaxStub, TestDaemon, String) {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let daemon = TestDaemon::start_with_clock(&config, clock).await;
    (coax, daemon, config)
}

#[tokio::test]
async fn schedules_are_put_got_listed_replaced_and_deleted() {
    let clock = TestClock::at(t("2026-12-01T10:30:00Z"));
    let (_coax, daemon, _) = start(clock).await;
    let answer = ok(
        &daemon,
        put("weekly", "0 0 9 * * MON", "Australia/Sydney", "latest"),
    )
    .await;
    assert_eq!(answer["created"], true, "{answer}");
    let s = &answer["schedule"];
    assert_eq!(s["name"], "weekly");
    assert_eq!(s["cron"], "0 0 9 * * MON");
    assert_eq!(s["timezone"], "Australia/Sydney");
    assert_eq!(s["catch_up"], "latest");
    assert_eq!(s["job"], template());
    // Monday 7 December, 09:00 in Sydney (AEDT, +11).
    assert_eq!(s["next_at"], "2026-12-06T22:00:00.000Z");
    assert_eq!(s["recent"], json!([]));

    let got = ok(&daemon, json!({"op": "schedule_get", "name": "weekly"})).await;
    assert_eq!(got["schedule"], answer["schedule"]);

    // No zone: dispatch.default_timezone (UTC); no catch_up: skip.
    let daily = json!({"op": "schedule_put", "name": "daily", "cron": "0 30 8 * * *",
                       "job": template()});
    let answer = ok(&daemon, daily).await;
    assert_eq!(answer["schedule"]["timezone"], "UTC");
    assert_eq!(answer["schedule"]["catch_up"], "skip");
    assert_eq!(answer["schedule"]["next_at"], "2026-12-02T08:30:00.000Z");

    let listed = ok(&daemon, json!({"op": "schedule_list"})).await;
    let names: Vec<&str> = listed["schedules"]
        .as_array()
        .expect("schedules")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["daily", "weekly"]);

    let replaced = ok(&daemon, put("weekly", "0 0 17 * * FRI", "UTC", "all")).await;
    assert_eq!(replaced["created"], false);
    assert_eq!(replaced["schedule"]["next_at"], "2026-12-04T17:00:00.000Z");

    let stats = ok(&daemon, json!({"op": "stats"})).await;
    assert_eq!(stats["schedules"], 2);
    assert_eq!(stats["next_occurrence"], "2026-12-02T08:30:00.000Z");

    let deleted = ok(&daemon, json!({"op": "schedule_delete", "name": "weekly"})).await;
    assert_eq!(deleted["deleted"], true);
    let again = ok(&daemon, json!({"op": "schedule_delete", "name": "weekly"})).await;
    assert_eq!(again["deleted"], false);
    let gone = daemon
        .request(json!({"op": "schedule_get", "name": "weekly"}))
        .await;
    assert_eq!(gone["error"]["code"], "not_found", "{gone}");
    let listed = ok(&daemon, json!({"op": "schedule_list"})).await;
    assert_eq!(listed["schedules"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_field() {
    let clock = TestClock::at(t("2026-12-01T10:30:00Z"));
    let (_coax, daemon, _) = start(clock).await;
    let with = |field: &str, value: Value| {
        let mut r = put("weekly", "0 0 9 * * MON", "UTC", "skip");
        r[field] = value;
        r
    };
    let with_job = |field: &str, value: Value| {
        let mut r = put("weekly", "0 0 9 * * MON", "UTC", "skip");
        r["job"][field] = value;
        r
    };
    let sixteen: Vec<String> = (0..16).map(|i| format!("t{i}")).collect();
    let cases = [
        (
            with("cron", json!("0 0 9 * * FUNDAY")),
            "bad_request",
            "cron",
        ),
        (with("cron", json!("0 9 * * MON")), "bad_request", "cron"),
        (with("cron", json!(9)), "bad_request", "cron"),
        (
            with("timezone", json!("Mars/Olympus")),
            "bad_request",
            "timezone",
        ),
        (with("catch_up", json!("some")), "bad_request", "catch_up"),
        (with("name", json!("a b")), "bad_request", "name"),
        (with("name", json!("")), "bad_request", "name"),
        (with("name", json!("x".repeat(56))), "bad_request", "name"),
        (with("job", json!("a job")), "invalid_job", "job"),
        (
            with_job("scheduled_at", json!("2026-12-07T09:00:00Z")),
            "invalid_job",
            "job.scheduled_at",
        ),
        (with_job("delay", json!("1h")), "invalid_job", "job.delay"),
        (with_job("key", json!("k")), "invalid_job", "job.key"),
        (
            with_job("after", json!({"id": 1})),
            "invalid_job",
            "job.after",
        ),
        (
            with_job("expires_at", json!("2027-01-01T00:00:00Z")),
            "invalid_job",
            "job.expires_at",
        ),
        (with_job("kind", json!("fax")), "invalid_job", "job.kind"),
        (
            with_job("window", json!("nope")),
            "invalid_job",
            "job.window",
        ),
        // The schedule's own tag would make seventeen.
        (with_job("tags", json!(sixteen)), "invalid_job", "job.tags"),
    ];
    for (request, code, field) in cases {
        let answer = daemon.request(request.clone()).await;
        assert_eq!(answer["ok"], false, "{request}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{request}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{request}: {answer}");
    }
    let long_ok = with("name", json!("x".repeat(55)));
    ok(&daemon, long_ok).await;
    let listed = ok(&daemon, json!({"op": "schedule_list"})).await;
    assert_eq!(listed["schedules"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn an_occurrence_becomes_a_job_at_its_time_with_its_key_and_tags() {
    let clock = TestClock::at(t("2026-12-01T08:59:58.500Z"));
    let (coax, daemon, _) = start(clock.clone()).await;
    ok(&daemon, put("morning", "0 0 9 * * *", "UTC", "skip")).await;
    assert!(occurrences(&daemon, "morning").await.is_empty());
    wait_next_at(&daemon, "morning", "2026-12-02T09:00:00.000Z").await;

    let jobs = occurrences(&daemon, "morning").await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    assert_eq!(job["key"], "schedule:morning:2026-12-01T09:00:00.000Z");
    assert_eq!(job["tags"], json!(["weekly-digest", "schedule:morning"]));
    assert_eq!(job["scheduled_at"], "2026-12-01T09:00:00.000Z");
    assert_eq!(job["timezone"], "UTC");
    let id = job["id"].as_i64().expect("id");
    daemon.wait_for_state(id, "sent").await;
    assert_eq!(coax.requests_to("/send/sms").len(), 1);

    let got = ok(&daemon, json!({"op": "schedule_get", "name": "morning"})).await;
    assert_eq!(
        got["schedule"]["recent"],
        json!([{"id": id, "state": "sent", "at": "2026-12-01T09:00:00.000Z"}])
    );

    // The next day's, a step of the wall clock away.
    clock.set(t("2026-12-02T09:00:00.200Z"));
    wait_next_at(&daemon, "morning", "2026-12-03T09:00:00.000Z").await;
    let recent =
        ok(&daemon, json!({"op": "schedule_get", "name": "morning"})).await["schedule"]["recent"]
            .clone();
    let at: Vec<&str> = recent
        .as_array()
        .expect("recent")
        .iter()
        .filter_map(|o| o["at"].as_str())
        .collect();
    assert_eq!(
        at,
        ["2026-12-02T09:00:00.000Z", "2026-12-01T09:00:00.000Z"],
        "newest first"
    );
}

#[tokio::test]
async fn monday_nine_in_sydney_stays_nine_local_across_a_dst_change() {
    // Monday 28 September 2026, just before 09:00 AEST (+10); Sydney
    // moves to AEDT (+11) on Sunday 4 October.
    let clock = TestClock::at(t("2026-09-28T08:59:59+10:00"));
    let (_coax, daemon, _) = start(clock.clone()).await;
    ok(
        &daemon,
        put("weekly", "0 0 9 * * MON", "Australia/Sydney", "skip"),
    )
    .await;
    wait_next_at(&daemon, "weekly", "2026-10-04T22:00:00.000Z").await;
    clock.set(t("2026-10-05T08:59:59+11:00"));
    wait_next_at(&daemon, "weekly", "2026-10-11T22:00:00.000Z").await;
    let keys: Vec<Value> = occurrences(&daemon, "weekly")
        .await
        .iter()
        .map(|j| j["key"].clone())
        .collect();
    assert_eq!(
        keys,
        [
            "schedule:weekly:2026-09-27T23:00:00.000Z",
            "schedule:weekly:2026-10-04T22:00:00.000Z"
        ]
    );
    // And back to AEST on Sunday 4 April 2027.
    clock.set(t("2027-03-30T12:00:00+11:00"));
    ok(
        &daemon,
        put("weekly", "0 0 9 * * MON", "Australia/Sydney", "skip"),
    )
    .await;
    assert_eq!(
        next_at(&daemon, "weekly").await,
        "2027-04-04T23:00:00.000Z",
        "09:00 AEST"
    );
}

/// Log lines written by the daemon's tasks on this test's thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

/// Puts an hourly schedule at 10:30 under `catch_up`, stops the daemon
/// until 15:40 (the 11:00 to 15:00 occurrences missed) and starts it
/// again: the occurrences created, and the catch-up log line.
async fn after_downtime(catch_up: &str) -> (Vec<Value>, String) {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _logs = tracing::subscriber::set_default(subscriber);

    let clock = TestClock::at(t("2026-12-01T10:30:00Z"));
    let (dir, config) = on_own_runtime({
        let (clock, catch_up) = (clock.clone(), catch_up.to_owned());
        move || async move {
            let (_coax, daemon, config) = start(clock).await;
            ok(&daemon, put("hourly", "0 0 * * * *", "UTC", &catch_up)).await;
            (daemon.stop().await, config)
        }
    })
    .await;
    clock.set(t("2026-12-01T15:40:00Z"));
    let daemon = restart(dir, &config, clock).await;
    wait_next_at(&daemon, "hourly", "2026-12-01T16:00:00.000Z").await;
    let jobs = occurrences(&daemon, "hourly").await;
    let log = wait_until("the catch-up log line", PATIENCE, || async {
        lines
            .text()
            .lines()
            .find(|l| l.contains("missed while the daemon was down"))
            .map(str::to_owned)
    })
    .await;
    daemon.stop().await;
    (jobs, log)
}

/// The occurrence times in the jobs' keys, in time order (the jobs may
/// be sent meanwhile, which moves them in a list).
fn keys(jobs: &[Value]) -> Vec<String> {
    let mut keys: Vec<String> = jobs
        .iter()
        .filter_map(|j| j["key"].as_str())
        .map(|k| k.trim_start_matches("schedule:hourly:").to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn catch_up_skip_creates_none_of_the_missed_occurrences() {
    let (jobs, log) = after_downtime("skip").await;
    assert!(jobs.is_empty(), "{jobs:?}");
    assert!(
        log.contains("catch_up=\"skip\"") || log.contains("catch_up=skip"),
        "{log}"
    );
    assert!(
        log.contains("missed=5") && log.contains("skipped=5"),
        "{log}"
    );
}

#[tokio::test]
async fn catch_up_latest_creates_only_the_most_recent() {
    let (jobs, log) = after_downtime("latest").await;
    assert_eq!(keys(&jobs), ["2026-12-01T15:00:00.000Z"]);
    assert!(
        log.contains("missed=5") && log.contains("skipped=4"),
        "{log}"
    );
}

#[tokio::test]
async fn catch_up_all_creates_every_missed_occurrence() {
    let (jobs, log) = after_downtime("all").await;
    assert_eq!(
        keys(&jobs),
        [
            "2026-12-01T11:00:00.000Z",
            "2026-12-01T12:00:00.000Z",
            "2026-12-01T13:00:00.000Z",
            "2026-12-01T14:00:00.000Z",
            "2026-12-01T15:00:00.000Z"
        ]
    );
    assert!(
        log.contains("missed=5") && log.contains("skipped=0"),
        "{log}"
    );
}

#[tokio::test]
async fn a_restart_never_creates_one_occurrence_twice_even_after_a_crash_between_job_and_next_at() {
    let clock = TestClock::at(t("2026-12-01T08:59:59.500Z"));
    let (dir, config) = on_own_runtime({
        let clock = clock.clone();
        move || async move {
            let (_coax, daemon, config) = start(clock).await;
            ok(&daemon, put("morning", "0 0 9 * * *", "UTC", "all")).await;
            wait_next_at(&daemon, "morning", "2026-12-02T09:00:00.000Z").await;
            assert_eq!(occurrences(&daemon, "morning").await.len(), 1);
            (daemon.stop().await, config)
        }
    })
    .await;

    // As if the daemon had died after creating the job but before moving
    // next_at on: the two are one transaction, so only a hand edit can
    // make this state; the key still keeps the occurrence single.
    edit_db(
        &dir.path().join("queue.db"),
        &format!(
            "UPDATE schedules SET next_at = {} WHERE name = 'morning'",
            t("2026-12-01T09:00:00Z")
        ),
    );
    let dir = on_own_runtime({
        let (clock, config) = (clock.clone(), config.clone());
        move || async move {
            let daemon = restart(dir, &config, clock).await;
            wait_next_at(&daemon, "morning", "2026-12-02T09:00:00.000Z").await;
            daemon.stop().await
        }
    })
    .await;
    // A plain restart, too.
    let daemon = restart(dir, &config, clock).await;
    ok(&daemon, json!({"op": "ping"})).await;
    let jobs = occurrences(&daemon, "morning").await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["key"], "schedule:morning:2026-12-01T09:00:00.000Z");
}

#[tokio::test]
async fn the_next_occurrence_is_stored_and_survives_a_restart() {
    let clock = TestClock::at(t("2026-12-01T08:59:40Z"));
    let (dir, config) = on_own_runtime({
        let clock = clock.clone();
        move || async move {
            let (_coax, daemon, config) = start(clock).await;
            ok(&daemon, put("morning", "0 0 9 * * *", "UTC", "skip")).await;
            (daemon.stop().await, config)
        }
    })
    .await;
    let conn = rusqlite::Connection::open(dir.path().join("queue.db")).expect("open");
    let stored: i64 = conn
        .query_row(
            "SELECT next_at FROM schedules WHERE name = 'morning'",
            [],
            |r| r.get(0),
        )
        .expect("a stored next_at");
    drop(conn);
    assert_eq!(stored, t("2026-12-01T09:00:00Z"));

    // Down across 09:00, back 20 s later: the stored occurrence is found
    // and created (a restart within a minute is not a downtime to skip),
    // where one recomputed from the time of the start would be 09:00
    // tomorrow.
    clock.set(t("2026-12-01T09:00:20Z"));
    let daemon = restart(dir, &config, clock).await;
    wait_next_at(&daemon, "morning", "2026-12-02T09:00:00.000Z").await;
    let jobs = occurrences(&daemon, "morning").await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["key"], "schedule:morning:2026-12-01T09:00:00.000Z");
}

#[tokio::test]
async fn the_cli_puts_gets_lists_and_deletes_schedules() {
    let clock = TestClock::at(t("2026-12-01T10:30:00Z"));
    let (_coax, daemon, _) = start(clock).await;
    let file = daemon.dir.path().join("weekly.json");
    std::fs::write(
        &file,
        json!({"name": "weekly", "cron": "0 0 9 * * MON", "timezone": "Australia/Sydney",
               "job": template(), "catch_up": "latest"})
        .to_string(),
    )
    .expect("write the schedule");
    let socket = daemon.socket.to_str().expect("a UTF-8 path").to_owned();
    let file = file.to_str().expect("a UTF-8 path").to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            let out = std::process::Command::new(binary())
                .arg("--socket")
                .arg(&socket)
                .args(args)
                .output()
                .expect("run the CLI");
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        [
            run(&["schedule", "put", &file]),
            run(&["schedule", "get", "weekly"]),
            run(&["schedule", "list"]),
            run(&["--json", "schedule", "list"]),
            run(&["status"]),
            run(&["schedule", "delete", "weekly"]),
        ]
    })
    .await
    .expect("CLI");
    assert!(out[0].contains("schedule weekly created"), "{}", out[0]);
    assert!(
        out[1].contains("0 0 9 * * MON (Australia/Sydney)"),
        "{}",
        out[1]
    );
    assert!(out[1].contains("recent    none yet"), "{}", out[1]);
    assert!(
        out[2].contains("NAME") && out[2].contains("weekly"),
        "{}",
        out[2]
    );
    let raw: Value = serde_json::from_str(out[3].trim()).expect("JSON");
    assert_eq!(raw["schedules"][0]["next_at"], "2026-12-06T22:00:00.000Z");
    assert!(
        out[4].contains("schedules   1, next occurrence"),
        "{}",
        out[4]
    );
    assert!(out[5].contains("deleted"), "{}", out[5]);
    let listed = ok(&daemon, json!({"op": "schedule_list"})).await;
    assert_eq!(listed["schedules"], json!([]));
}
