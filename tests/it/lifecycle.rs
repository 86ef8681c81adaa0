//! The daemon's life as an operator sees it, mostly through the real
//! `coax-scheduler run` binary: jobs go out on time (and an earlier enqueue
//! wakes the dispatcher), the queue survives a restart, SIGTERM waits for a
//! request in flight and records its outcome, a kill -9 mid-request is
//! recovered by sending again as a possible duplicate, a second daemon on the
//! same database or socket is refused, the socket path is handled safely and
//! gets its mode, the API key never reaches the logs, and the start-up,
//! shutdown and per-attempt log lines carry what they should.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{DaemonProcess, TEST_KEY, config_text};
use crate::helpers::{PATIENCE, wait_until};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// RFC 3339 in UTC with milliseconds and a `Z`, as a client would send it.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// A message job to `/api/v2/message/send/sms` whose body says `message`.
fn sms(key: &str, message: &str) -> Value {
    json!({
        "kind": "message", "channel": "sms", "key": key,
        "payload": {"message": message, "phone": "+15550100", "business_location_id": 3}
    })
}

fn sms_at(key: &str, message: &str, scheduled_at: &str) -> Value {
    let mut job = sms(key, message);
    job["scheduled_at"] = json!(scheduled_at);
    job
}

/// The default test config with one `key = value` line replaced.
fn config_with(coax_url: &str, from: &str, to: &str) -> String {
    let text = config_text(coax_url, "", "");
    assert!(text.contains(from), "config_text has no {from:?}");
    text.replace(from, to)
}

/// Enqueues one job and returns the whole answer, asserting `ok`.
async fn enqueue(daemon: &DaemonProcess, job: Value) -> Value {
    let answer = daemon.request(json!({"op": "enqueue", "job": job})).await;
    assert_eq!(answer["ok"], true, "enqueue failed: {answer}");
    answer
}

async fn enqueue_id(daemon: &DaemonProcess, job: Value) -> i64 {
    enqueue(daemon, job).await["id"].as_i64().expect("id")
}

async fn get(daemon: &DaemonProcess, id: i64) -> Value {
    let answer = daemon.request(json!({"op": "get", "id": id})).await;
    assert_eq!(answer["ok"], true, "get {id} failed: {answer}");
    answer["job"].clone()
}

async fn wait_for_state(daemon: &DaemonProcess, id: i64, state: &str) -> Value {
    wait_until(&format!("job {id} to be {state}"), PATIENCE, || async {
        let job = get(daemon, id).await;
        (job["state"] == state).then_some(job)
    })
    .await
}

/// A second `coax-scheduler run` in `dir` that is expected to refuse to
/// start: waits for it to exit and returns its exit code and its output.
async fn refused_start(dir: &Path, config: &str) -> (Option<i32>, String) {
    let mut second = DaemonProcess::spawn(dir, config);
    let code = second.wait_exit(PATIENCE).await;
    (code, second.logs())
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// 1. Scheduling precision
// ---------------------------------------------------------------------------

#[tokio::test]
async fn jobs_go_out_at_their_scheduled_time_never_before_and_within_500ms() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = DaemonProcess::start(dir.path(), &config_text(&coax.base_url(), "", "")).await;

    let base = Utc::now();
    let due: Vec<String> = (0..5)
        .map(|i| rfc3339(base + chrono::Duration::milliseconds(1500 + 250 * i)))
        .collect();
    let jobs: Vec<Value> = due
        .iter()
        .enumerate()
        .map(|(i, at)| sms_at(&format!("precise-{i}"), &format!("precise {i}"), at))
        .collect();
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(
        Utc::now() < parse_time(&due[0]),
        "the enqueue itself took longer than the first job's lead time; the test cannot judge precision"
    );

    let requests = coax.wait_for_requests(5, PATIENCE).await;
    assert_eq!(requests.len(), 5);
    for (i, at) in due.iter().enumerate() {
        let scheduled = parse_time(at);
        let matching: Vec<_> = requests
            .iter()
            .filter(|r| r.json()["message"] == format!("precise {i}"))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "job {i} was sent {} times",
            matching.len()
        );
        let got = matching[0].received_at;
        assert!(
            got >= scheduled,
            "job {i} went out before its time: scheduled {at}, received {}",
            rfc3339(got)
        );
        let late = got - scheduled;
        assert!(
            late <= chrono::Duration::milliseconds(500),
            "job {i} went out {}ms after its time {at}",
            late.num_milliseconds()
        );
    }
    for i in 0..5 {
        let id = answer["results"][i]["id"].as_i64().unwrap();
        wait_for_state(&daemon, id, "sent").await;
    }
}

#[tokio::test]
async fn an_earlier_enqueue_wakes_the_dispatcher_before_its_poll_interval() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    // With a 30 s poll interval, only the wake on enqueue can send the
    // second job at ~1 s.
    let config = config_with(
        &coax.base_url(),
        "poll_interval = \"1s\"",
        "poll_interval = \"30s\"",
    );
    let daemon = DaemonProcess::start(dir.path(), &config).await;

    let late_at = rfc3339(Utc::now() + chrono::Duration::seconds(30));
    let late = enqueue_id(&daemon, sms_at("late", "in thirty seconds", &late_at)).await;
    let soon_at = rfc3339(Utc::now() + chrono::Duration::seconds(1));
    let soon = enqueue_id(&daemon, sms_at("soon", "in one second", &soon_at)).await;

    let requests = coax.wait_for_requests(1, PATIENCE).await;
    assert_eq!(requests[0].json()["message"], "in one second");
    let scheduled = parse_time(&soon_at);
    let got = requests[0].received_at;
    assert!(
        got >= scheduled,
        "sent before its time: scheduled {soon_at}, received {}",
        rfc3339(got)
    );
    assert!(
        got - scheduled <= chrono::Duration::milliseconds(500),
        "sent {}ms after its time: the enqueue did not wake the dispatcher",
        (got - scheduled).num_milliseconds()
    );
    wait_for_state(&daemon, soon, "sent").await;
    assert_eq!(get(&daemon, late).await["state"], "scheduled");
    assert_eq!(coax.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// 2. Restart persistence
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_queue_survives_a_restart_with_the_same_ids_states_and_keys() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(&coax.base_url(), "", "");
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;

    let in_an_hour = rfc3339(Utc::now() + chrono::Duration::hours(1));
    let a = enqueue_id(&daemon, sms_at("later-a", "first", &in_an_hour)).await;
    let b = enqueue_id(&daemon, sms_at("later-b", "second", &in_an_hour)).await;
    let c = enqueue_id(&daemon, sms_at("later-c", "cancelled", &in_an_hour)).await;
    let cancelled = daemon.request(json!({"op": "cancel", "id": c})).await;
    assert_eq!(cancelled["ok"], true, "{cancelled}");
    let d = enqueue_id(&daemon, sms("now-d", "sent before the restart")).await;
    wait_for_state(&daemon, d, "sent").await;

    let ids = [a, b, c, d];
    let mut before = Vec::new();
    for id in ids {
        before.push(get(&daemon, id).await);
    }
    let mut stats_before = daemon.request(json!({"op": "stats"})).await;
    // A node's heartbeat is the time of the answer; the rest must match.
    stats_before["nodes"][0]["last_heartbeat"].take();

    daemon.terminate().await;
    assert!(
        !dir.path().join("coax.sock").exists(),
        "a clean stop removes the socket"
    );
    drop(daemon);

    let daemon = DaemonProcess::start(dir.path(), &config).await;
    for (id, view) in ids.iter().zip(&before) {
        assert_eq!(&get(&daemon, *id).await, view, "job {id} after restart");
    }
    let states: Vec<_> = before.iter().map(|v| v["state"].clone()).collect();
    assert_eq!(
        states,
        vec![
            json!("scheduled"),
            json!("scheduled"),
            json!("cancelled"),
            json!("sent")
        ]
    );
    let mut stats_after = daemon.request(json!({"op": "stats"})).await;
    stats_after["nodes"][0]["last_heartbeat"].take();
    assert_eq!(stats_after, stats_before);

    for (key, id) in [("later-a", a), ("now-d", d)] {
        let again = enqueue(
            &daemon,
            sms_at(key, "a second enqueue of the same key", &in_an_hour),
        )
        .await;
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["id"], id, "{again}");
    }
    let listed = daemon.request(json!({"op": "list"})).await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(4), "{listed}");
    assert_eq!(
        get(&daemon, a).await["payload"]["message"],
        "first",
        "a duplicate enqueue must not change the job"
    );
    // Only the job due before the restart was ever sent.
    assert_eq!(coax.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// 3. Graceful SIGTERM with a request in flight
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_waits_for_the_request_in_flight_and_records_its_outcome() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::sent().with_delay(Duration::from_millis(1500)));
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), &config_text(&coax.base_url(), "", "")).await;

    let id = enqueue_id(&daemon, sms("in-flight", "slow answer")).await;
    coax.wait_for_requests(1, PATIENCE).await;
    daemon.terminate().await;

    // The process is gone: what the database says now is what was recorded
    // before exit.
    let db = rusqlite::Connection::open_with_flags(
        dir.path().join("queue.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the queue read-only");
    let (state, attempts): (String, i64) = db
        .query_row(
            "SELECT state, attempts FROM jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the job row");
    assert_eq!(state, "sent", "logs:\n{}", daemon.logs());
    assert_eq!(attempts, 1);
    let (rows, unfinished, status): (i64, i64, Option<i64>) = db
        .query_row(
            "SELECT count(*), sum(finished_at IS NULL), max(status) FROM attempts WHERE job_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("the attempt rows");
    assert_eq!((rows, unfinished, status), (1, 0, Some(200)));
    assert_eq!(coax.requests().len(), 1);
    let logs = daemon.logs();
    assert!(
        logs.contains("waiting for requests in flight") && logs.contains("coax-scheduler stopped"),
        "{logs}"
    );
}

// ---------------------------------------------------------------------------
// 4. kill -9 recovery
// ---------------------------------------------------------------------------

#[tokio::test]
async fn after_kill_9_mid_request_the_job_is_sent_again_as_a_possible_duplicate() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::hang());
    let dir = tempfile::tempdir().unwrap();
    // A long request timeout so the hung request is still in flight when
    // the daemon is killed, however slow the machine.
    let config = config_with(
        &coax.base_url(),
        "request_timeout = \"2s\"",
        "request_timeout = \"60s\"",
    );
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;

    let id = enqueue_id(&daemon, sms("crash-1", "maybe twice")).await;
    coax.wait_for_requests(1, PATIENCE).await;
    daemon.signal("KILL");
    let code = daemon.wait_exit(PATIENCE).await;
    assert_eq!(code, None, "killed by a signal, not an exit");
    let first_run_logs = daemon.logs();
    drop(daemon);
    assert!(
        !first_run_logs.contains("possible duplicate"),
        "{first_run_logs}"
    );

    coax.set_default(Reply::sent());
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    let job = wait_for_state(&daemon, id, "sent").await;
    let requests = coax.wait_for_requests(2, PATIENCE).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].json(), requests[0].json());
    assert_eq!(requests[1].path, requests[0].path);

    let history = job["history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "{job}");
    assert_eq!(history[0]["ambiguous"], true, "{job}");
    assert_eq!(history[0]["attempt"], 1, "{job}");
    assert!(history[0]["finished_at"].is_string(), "{job}");
    assert_eq!(history[1]["ambiguous"], false, "{job}");
    assert_eq!(history[1]["decision"], "sent", "{job}");
    assert_eq!(history[1]["status"], 200, "{job}");
    assert_eq!(job["result"]["status"], 200, "{job}");

    let id_field = format!("job_id={id}");
    let line = daemon
        .wait_for_log_line("'possible duplicate' and the job id", |l| {
            l.contains("possible duplicate") && l.split_whitespace().any(|w| w == id_field)
        })
        .await;
    assert!(line.contains("crash-1"), "the line names the key: {line}");
}

// ---------------------------------------------------------------------------
// 5. A second instance
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_second_daemon_on_the_same_database_or_socket_refuses_to_start() {
    let coax = CoaxStub::start().await;
    let first_dir = tempfile::tempdir().unwrap();
    let url = coax.base_url();
    let first = DaemonProcess::start(first_dir.path(), &config_text(&url, "", "")).await;
    let id = enqueue_id(
        &first,
        sms_at(
            "first-daemon",
            "kept",
            &rfc3339(Utc::now() + chrono::Duration::hours(1)),
        ),
    )
    .await;
    let db = first_dir.path().join("queue.db");
    let socket = first_dir.path().join("coax.sock");

    // Same database, its own socket.
    let second_dir = tempfile::tempdir().unwrap();
    let same_db = config_with(
        &url,
        "path = \"queue.db\"",
        &format!("path = \"{}\"", db.display()),
    );
    let (code, out) = refused_start(second_dir.path(), &same_db).await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}; output:\n{out}"
    );
    assert!(
        out.contains("in use by another coax-scheduler"),
        "output:\n{out}"
    );
    assert!(
        !second_dir.path().join("coax.sock").exists(),
        "the refused daemon left a socket behind"
    );

    // Its own database, the same socket.
    let third_dir = tempfile::tempdir().unwrap();
    let same_socket = config_with(
        &url,
        "path = \"coax.sock\"",
        &format!("path = \"{}\"", socket.display()),
    );
    let (code, out) = refused_start(third_dir.path(), &same_socket).await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}; output:\n{out}"
    );
    assert!(
        out.contains("another daemon is already listening"),
        "output:\n{out}"
    );

    // Both the same.
    let fourth_dir = tempfile::tempdir().unwrap();
    let both = config_with(
        &url,
        "path = \"queue.db\"",
        &format!("path = \"{}\"", db.display()),
    )
    .replace(
        "path = \"coax.sock\"",
        &format!("path = \"{}\"", socket.display()),
    );
    let (code, out) = refused_start(fourth_dir.path(), &both).await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}; output:\n{out}"
    );

    // The first daemon is untouched and still answers.
    assert!(is_socket(&socket), "the first daemon's socket is gone");
    assert_eq!(first.request(json!({"op": "ping"})).await["ok"], true);
    assert_eq!(get(&first, id).await["state"], "scheduled");
    let now = enqueue_id(&first, sms("first-daemon-now", "still sending")).await;
    wait_for_state(&first, now, "sent").await;
}

// ---------------------------------------------------------------------------
// 6. Socket hygiene
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_refused_and_left_untouched() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coax.sock");
    let precious = "not a socket: someone's data\n";
    std::fs::write(&path, precious).unwrap();

    let (code, out) = refused_start(dir.path(), &config_text(&coax.base_url(), "", "")).await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}; output:\n{out}"
    );
    assert!(out.contains("not a socket"), "output:\n{out}");
    let meta = std::fs::symlink_metadata(&path).expect("the file is still there");
    assert!(meta.file_type().is_file());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), precious);
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_the_new_one_has_mode_0660() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coax.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind a socket"));
    assert!(is_socket(&path), "a stale socket file is left behind");

    let mut daemon = DaemonProcess::start(dir.path(), &config_text(&coax.base_url(), "", "")).await;
    assert_eq!(daemon.request(json!({"op": "ping"})).await["ok"], true);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert!(
        daemon.logs().contains("removed a stale socket"),
        "{}",
        daemon.logs()
    );
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o660,
        "socket mode is {:o}",
        meta.permissions().mode() & 0o7777
    );
    daemon.terminate().await;
}

#[tokio::test]
async fn the_socket_mode_from_the_config_is_applied() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        &coax.base_url(),
        "path = \"coax.sock\"",
        "path = \"coax.sock\"\nmode = \"0600\"",
    );
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    let mode = std::fs::symlink_metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o600, "socket mode is {mode:o}");
}

// ---------------------------------------------------------------------------
// 7. The API key stays out of the logs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_api_key_never_appears_in_debug_logs_even_for_401_and_transport_errors() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::status(401));
    coax.push(Reply::reset());
    coax.set_default(Reply::sent());
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(&coax.base_url(), "", "");
    assert!(config.contains("level = \"debug\""));
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;

    let id = enqueue_id(&daemon, sms("secret-check", "hello")).await;
    let job = wait_for_state(&daemon, id, "sent").await;
    let requests = coax.wait_for_requests(3, PATIENCE).await;
    assert!(
        requests.iter().all(|r| r.bearer() == Some(TEST_KEY)),
        "every request carried the key"
    );
    // The 401 did not count; the reset did.
    assert_eq!(job["attempts"], 2, "{job}");
    daemon.terminate().await;

    let logs = daemon.logs();
    assert!(logs.contains("DEBUG"), "debug lines are logged:\n{logs}");
    assert!(
        logs.contains("rejected the API key"),
        "the 401 was logged:\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains(&format!("job_id={id}")) && l.contains("status=-1")),
        "the transport error was logged:\n{logs}"
    );
    assert!(!logs.contains(TEST_KEY), "the API key leaked:\n{logs}");
    assert!(
        !logs.contains(&TEST_KEY[TEST_KEY.len() - 6..]),
        "part of the API key leaked:\n{logs}"
    );
}

// ---------------------------------------------------------------------------
// 8. Start-up, shutdown and attempt log lines
// ---------------------------------------------------------------------------

#[tokio::test]
async fn start_stop_and_attempt_log_lines_carry_their_fields() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = DaemonProcess::start(dir.path(), &config_text(&coax.base_url(), "", "")).await;
    daemon
        .wait_for_log_line("'coax-scheduler started'", |l| {
            l.contains("coax-scheduler started")
        })
        .await;

    let id = enqueue_id(&daemon, sms("logged-1", "log me")).await;
    wait_for_state(&daemon, id, "sent").await;
    let id_field = format!("job_id={id}");
    let line = daemon
        .wait_for_log_line("the attempt line", |l| {
            l.split_whitespace().any(|w| w == id_field) && l.contains("attempt=")
        })
        .await;
    for field in [
        "kind=message",
        "route=\"/api/v2/message/send/sms\"",
        "attempt=1",
        "status=200",
        "latency_ms=",
        "decision=\"sent\"",
        "key=\"logged-1\"",
    ] {
        assert!(
            line.contains(field),
            "no {field} in the attempt line: {line}"
        );
    }

    daemon.terminate().await;
    let logs = daemon.logs();
    let started = logs.find("coax-scheduler started").expect("start-up line");
    let stopped = logs.find("coax-scheduler stopped").unwrap_or_else(|| {
        panic!("no shutdown line:\n{logs}");
    });
    assert!(started < stopped, "{logs}");
}

#[tokio::test]
async fn json_logs_carry_the_attempt_fields_as_values() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(
        &coax.base_url(),
        "level = \"debug\"",
        "level = \"info\"\nformat = \"json\"",
    );
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let id = enqueue_id(&daemon, sms("logged-json", "log me as json")).await;
    wait_for_state(&daemon, id, "sent").await;
    daemon.terminate().await;

    let logs = daemon.logs();
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |v: &Value| v["message"].as_str().unwrap_or("").to_owned();
    assert!(
        lines.iter().any(|v| message(v) == "coax-scheduler started"),
        "{logs}"
    );
    assert!(
        lines.iter().any(|v| message(v) == "coax-scheduler stopped"),
        "{logs}"
    );
    let attempt = lines
        .iter()
        .find(|v| v["job_id"] == id && v.get("decision").is_some())
        .unwrap_or_else(|| panic!("no attempt line for job {id}:\n{logs}"));
    assert_eq!(attempt["key"], "logged-json", "{attempt}");
    assert_eq!(attempt["kind"], "message", "{attempt}");
    assert_eq!(attempt["route"], "/api/v2/message/send/sms", "{attempt}");
    assert_eq!(attempt["attempt"], 1, "{attempt}");
    assert_eq!(attempt["status"], 200, "{attempt}");
    assert_eq!(attempt["decision"], "sent", "{attempt}");
    assert!(attempt["latency_ms"].is_u64(), "{attempt}");
}
