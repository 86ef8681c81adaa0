//! Rows a hand edit left in shapes the daemon never writes: a state that is
//! not a state, columns of the wrong type, fields of many megabytes. None
//! of them may break `stats`, `get`, `list`, `cancel` or a start-up; each
//! is quarantined or shown as stored, and every answer stays small.

use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{DaemonProcess, TestDaemon, config_text};
use crate::helpers::{edit_db as edit, sms_job as job};
use rusqlite::Connection;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;

/// The states `state_counts` keeps a row for.
fn counted_states(db: &Path) -> BTreeSet<String> {
    let conn = Connection::open(db).expect("open the queue");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    let mut stmt = conn
        .prepare("SELECT state FROM state_counts")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("read")
}

/// A daemon in-process, or the real binary where a test restarts it.
trait Daemon {
    async fn ask(&self, request: Value) -> Value;
}

impl Daemon for TestDaemon {
    async fn ask(&self, request: Value) -> Value {
        self.request(request).await
    }
}

impl Daemon for DaemonProcess {
    async fn ask(&self, request: Value) -> Value {
        self.request(request).await
    }
}

async fn by_key(daemon: &impl Daemon, key: &str) -> Value {
    daemon.ask(json!({"op": "get", "key": key})).await
}

async fn enqueue(daemon: &impl Daemon, jobs: Vec<Value>) {
    let answer = daemon.ask(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
}

/// Runs the real daemon on a new queue holding `jobs`, and stops it.
async fn queue_of(dir: &Path, config: &str, jobs: Vec<Value>) {
    let mut daemon = DaemonProcess::start(dir, config).await;
    enqueue(&daemon, jobs).await;
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_is_not_a_state_breaks_neither_stats_nor_get_nor_cancel() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    enqueue(
        &daemon,
        vec![job("bogus", "1h"), job("other", "1h"), job("fine", "1h")],
    )
    .await;
    edit(
        daemon.db(),
        "UPDATE jobs SET state = 'bogus' WHERE key IN ('bogus', 'other')",
    );

    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "{stats}");
    assert_eq!(stats["counts"]["scheduled"], 1, "{stats}");
    assert_eq!(stats["counts"]["failed"], 2, "{stats}");
    let bad = by_key(&daemon, "bogus").await;
    assert_eq!(bad["job"]["state"], "failed", "{bad}");
    let why = bad["job"]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("\"bogus\" is not a job state"), "{bad}");
    let cancel = daemon
        .request(json!({"op": "cancel", "id": bad["job"]["id"]}))
        .await;
    assert_eq!(cancel["error"]["code"], "conflict", "{cancel}");
    let listed = daemon
        .request(json!({"op": "list", "state": "failed"}))
        .await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(2), "{listed}");
    assert!(
        !counted_states(daemon.db()).contains("bogus"),
        "the count of the state that is not one outlived its jobs"
    );

    // Met first by `get` or `cancel`, the row is quarantined there.
    edit(
        daemon.db(),
        "UPDATE jobs SET state = 'weird' WHERE key = 'fine'",
    );
    let fine = by_key(&daemon, "fine").await;
    assert_eq!(fine["job"]["state"], "failed", "{fine}");
    assert!(!counted_states(daemon.db()).contains("weird"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_is_not_a_state_at_start_up_is_quarantined_and_its_count_dropped() {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let dir = tempfile::tempdir().expect("temp dir");
    queue_of(
        dir.path(),
        &config,
        vec![job("bogus", "1h"), job("fine", "1h")],
    )
    .await;
    let db = dir.path().join("queue.db");
    // A state put back by hand leaves a count of zero behind.
    edit(
        &db,
        "UPDATE jobs SET state = 'bogus' WHERE key = 'bogus';
         INSERT INTO state_counts (state, jobs) VALUES ('gone', 0);",
    );

    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let bad = by_key(&daemon, "bogus").await;
    assert_eq!(bad["job"]["state"], "failed", "{bad}");
    assert_eq!(by_key(&daemon, "fine").await["job"]["state"], "scheduled");
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["failed"], 1, "{stats}");
    let counted = counted_states(&db);
    assert!(
        !counted.contains("bogus") && !counted.contains("gone"),
        "{counted:?}"
    );
    assert_eq!(coax.requests().len(), 0);
    daemon.terminate().await;
}

/// Puts job `key` back in `sending` with `attempts` tries made and one
/// open, as a crash mid-request leaves it.
fn interrupt(db: &Path, key: &str, attempts: &str) {
    edit(
        db,
        &format!(
            "UPDATE jobs SET state = 'sending', attempts = {attempts} WHERE key = '{key}';
             INSERT INTO attempts (job_id, seq, started_at)
             SELECT id, 1, 0 FROM jobs WHERE key = '{key}';"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_fails_an_interrupted_job_whose_attempts_are_used_up() {
    let coax = CoaxStub::start().await;
    // max_attempts = 3
    let config = config_text(&coax.base_url(), "", "");
    let dir = tempfile::tempdir().expect("temp dir");
    queue_of(
        dir.path(),
        &config,
        vec![job("used-up", "1h"), job("one-left", "1h")],
    )
    .await;
    let db = dir.path().join("queue.db");
    interrupt(&db, "used-up", "3");
    interrupt(&db, "one-left", "2");

    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let used_up = by_key(&daemon, "used-up").await;
    assert_eq!(used_up["job"]["state"], "failed", "{used_up}");
    let why = used_up["job"]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("no attempts left"), "{used_up}");
    assert_eq!(used_up["job"]["history"][0]["ambiguous"], true, "{used_up}");
    let one_left = by_key(&daemon, "one-left").await;
    assert_eq!(one_left["job"]["state"], "scheduled", "{one_left}");
    daemon.terminate().await;
}

/// Under `hold`, recovery must not fail a job whose attempts are used up:
/// it is held like any interrupted send, for an operator to requeue or
/// cancel, and its count moves with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_under_hold_holds_an_interrupted_job_whose_attempts_are_used_up() {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "on_ambiguous = \"hold\"", "");
    let dir = tempfile::tempdir().expect("temp dir");
    queue_of(dir.path(), &config, vec![job("used-up", "1h")]).await;
    let db = dir.path().join("queue.db");
    interrupt(&db, "used-up", "3");

    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let used_up = by_key(&daemon, "used-up").await;
    assert_eq!(used_up["job"]["state"], "held", "{used_up}");
    assert_eq!(used_up["job"]["history"][0]["ambiguous"], true, "{used_up}");
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["held"], 1, "{stats}");
    assert_eq!(stats["counts"]["sending"], 0, "{stats}");
    assert!(coax.requests().is_empty(), "a held job is not sent");
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sending_row_with_wrong_column_types_does_not_stop_start_up() {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let dir = tempfile::tempdir().expect("temp dir");
    queue_of(
        dir.path(),
        &config,
        vec![job("blob", "1h"), job("fine", "1h")],
    )
    .await;
    let db = dir.path().join("queue.db");
    interrupt(&db, "blob", "'x'");
    interrupt(&db, "fine", "1");
    edit(
        &db,
        "UPDATE jobs SET key = CAST('blob' AS BLOB) WHERE key = 'blob'",
    );

    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let listed = daemon
        .request(json!({"op": "list", "state": "failed"}))
        .await;
    let jobs = listed["jobs"].as_array().cloned().unwrap_or_default();
    assert_eq!(jobs.len(), 1, "{listed}");
    let why = jobs[0]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("key is Blob"), "{listed}");
    let fine = by_key(&daemon, "fine").await;
    assert_eq!(fine["job"]["state"], "scheduled", "{fine}");
    daemon.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_get_show_rows_with_wrong_column_types() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let keys = [
        "at-text",
        "expiry-text",
        "attempts-real",
        "created-text",
        "updated-text",
    ];
    let mut jobs: Vec<Value> = keys.iter().map(|k| job(k, "1h")).collect();
    jobs.extend((0..5).map(|i| job(&format!("fine-{i}"), "1h")));
    enqueue(&daemon, jobs).await;
    edit(
        daemon.db(),
        "UPDATE jobs SET state = 'failed' WHERE key NOT LIKE 'fine-%';
         UPDATE jobs SET state = 'sent' WHERE key IN ('created-text', 'fine-0');
         UPDATE jobs SET scheduled_at = 'soon', due_at = 'later' WHERE key = 'at-text';
         UPDATE jobs SET expires_at = 'never' WHERE key = 'expiry-text';
         UPDATE jobs SET attempts = 1.5 WHERE key = 'attempts-real';
         UPDATE jobs SET created_at = 'long ago' WHERE key = 'created-text';
         UPDATE jobs SET updated_at = 'just now' WHERE key = 'updated-text';",
    );

    for key in keys {
        let answer = by_key(&daemon, key).await;
        assert_eq!(answer["ok"], true, "{key}: {answer}");
    }
    let created = by_key(&daemon, "created-text").await;
    assert_eq!(created["job"]["state"], "sent", "{created}");
    assert_eq!(created["job"]["created_at"], "long ago", "{created}");

    // Paging one job at a time meets every job once, and ends, in either
    // order (text sorts after every integer, so has no place unrepaired).
    for order in ["recent", "due"] {
        let mut seen = BTreeSet::new();
        let mut after = Value::Null;
        for _ in 0..50 {
            let answer = daemon
                .request(json!({"op": "list", "limit": 1, "order": order, "after": after}))
                .await;
            assert_eq!(answer["ok"], true, "{answer}");
            for job in answer["jobs"].as_array().into_iter().flatten() {
                assert!(seen.insert(job["key"].to_string()), "twice: {answer}");
            }
            after = answer["next"].clone();
            if after.is_null() {
                break;
            }
        }
        assert!(after.is_null(), "the list does not end");
        assert_eq!(seen.len(), 10, "{order}: {seen:?}");
    }
    for request in [
        json!({"op": "list"}),
        json!({"op": "list", "state": "failed", "order": "recent"}),
        json!({"op": "list", "order": "recent"}),
    ] {
        let answer = daemon.request(request.clone()).await;
        assert_eq!(answer["ok"], true, "{request}: {answer}");
        assert_eq!(
            answer["jobs"].as_array().map(Vec::len),
            Some(if request["state"].is_null() { 10 } else { 4 }),
            "{request}: {answer}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_lines_stay_far_under_8_mib_with_huge_stored_fields() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    enqueue(&daemon, vec![job("huge", "1h"), job("next", "1h")]).await;
    // 12 MiB of 'x', three times over, and many tries with long errors.
    edit(
        daemon.db(),
        "CREATE TEMP TABLE big AS SELECT replace(hex(zeroblob(6291456)), '0', 'x') AS x;
         UPDATE jobs SET state = 'failed',
                last_error = (SELECT x FROM big),
                result = '\"' || (SELECT x FROM big) || '\"',
                channel = (SELECT x FROM big)
          WHERE key = 'huge';
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO attempts (job_id, seq, started_at, error)
         SELECT (SELECT id FROM jobs WHERE key = 'huge'), i, 0,
                substr((SELECT x FROM big), 1, 10000) FROM n;",
    );
    let ceiling = 1024 * 1024;
    for request in [
        json!({"op": "get", "key": "huge"}),
        json!({"op": "list"}),
        json!({"op": "list", "state": "failed"}),
    ] {
        let line = daemon.raw(&request.to_string()).await;
        assert!(line.len() < ceiling, "{request}: {} bytes", line.len());
        let answer: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(answer["ok"], true, "{request}");
    }
    let huge = by_key(&daemon, "huge").await;
    let history = huge["job"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(history.len(), 100, "the latest tries are shown");
    assert_eq!(history[99]["attempt"], 300);
    let why = huge["job"]["last_error"].as_str().unwrap_or_default();
    assert!(
        why.ends_with("[truncated: 12582912 bytes]"),
        "{}",
        why.len()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_older_than_before_1970_answers_the_epoch() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let answer = daemon
        .request(json!({"op": "prune", "older_than": "600000y", "dry_run": true}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["before"], "1970-01-01T00:00:00.000Z", "{answer}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_optional_field_means_absent() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let enqueued = daemon
        .request(json!({"op": "enqueue", "job": job("k", "1h"), "jobs": null}))
        .await;
    assert_eq!(enqueued["ok"], true, "{enqueued}");
    let id = enqueued["id"].clone();
    for request in [
        json!({"op": "prune", "older_than": null, "dry_run": null}),
        json!({"op": "get", "id": id, "key": null}),
        json!({"op": "get", "key": "k", "id": null}),
        json!({"op": "list", "state": null, "limit": null, "order": null, "after": null}),
    ] {
        let answer = daemon.request(request.clone()).await;
        assert_eq!(answer["ok"], true, "{request}: {answer}");
    }
    daemon.stop().await;
}
