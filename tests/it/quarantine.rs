//! A row that cannot be read (a kind that is not a kind, negative attempts,
//! a payload that is not UTF-8 or not a JSON object) is quarantined: moved
//! to `failed` with `last_error` naming the fault and one ERROR line, while
//! every other job keeps flowing; `get`, `cancel` and `prune` work on it;
//! and one present at start-up is found without waiting for it to be due.

use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{DaemonProcess, config_text};
use crate::helpers::{PATIENCE, wait_until};
use crate::helpers::{edit_db as edit, sms_job as job};
use serde_json::{Value, json};

const HEALTHY: usize = 49;

async fn get(daemon: &DaemonProcess, key: &str) -> Value {
    daemon.request(json!({"op": "get", "key": key})).await
}

fn error_lines(daemon: &DaemonProcess) -> Vec<String> {
    daemon
        .logs()
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

/// 49 healthy jobs and one made unreadable by `damage` (SQL run against
/// the job with key `bad`) all fall due at once.
async fn one_bad_row_among_due_jobs(damage: &str, named: &str) {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let daemon = DaemonProcess::start(dir.path(), &config_text(&coax.base_url(), "", "")).await;
    let db = dir.path().join("queue.db");
    // The bad row first in line: every claim meets it before a healthy job.
    let mut jobs = vec![job("bad", "1h")];
    jobs.extend((0..HEALTHY).map(|i| job(&format!("ok-{i}"), "1h")));
    jobs.push(job("bad-later", "2h"));
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");

    edit(
        &db,
        &format!(
            "{damage_bad}; {damage_later};
             UPDATE jobs SET scheduled_at = 0, due_at = 0 WHERE key != 'bad-later';",
            damage_bad = damage.replace("KEY", "'bad'"),
            damage_later = damage.replace("KEY", "'bad-later'"),
        ),
    );

    coax.wait_for_requests(HEALTHY, PATIENCE).await;
    let bad = wait_until("the bad row to be quarantined", PATIENCE, || async {
        let answer = get(&daemon, "bad").await;
        (answer["job"]["state"] == "failed").then_some(answer)
    })
    .await;
    let last_error = bad["job"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains(named), "{bad}");
    for i in 0..HEALTHY {
        let answer = get(&daemon, &format!("ok-{i}")).await;
        assert_eq!(answer["job"]["state"], "sent", "{answer}");
    }
    assert_eq!(coax.requests().len(), HEALTHY, "the bad row was sent");

    // A bad row not yet due can still be looked at and cancelled.
    let later = get(&daemon, "bad-later").await;
    assert_eq!(later["ok"], true, "{later}");
    let id = later["job"]["id"].clone();
    let cancelled = daemon.request(json!({"op": "cancel", "id": id})).await;
    assert_eq!(cancelled["job"]["state"], "cancelled", "{cancelled}");

    // The quarantined job: a refusal, not an internal error; then pruned.
    let id = bad["job"]["id"].clone();
    let cancel = daemon.request(json!({"op": "cancel", "id": id})).await;
    assert_eq!(cancel["error"]["code"], "conflict", "{cancel}");
    let listed = daemon.request(json!({"op": "list", "limit": 100})).await;
    assert_eq!(listed["ok"], true, "{listed}");
    let prune = daemon
        .request(json!({"op": "prune", "older_than": "0s"}))
        .await;
    assert_eq!(prune["ok"], true, "{prune}");
    let gone = get(&daemon, "bad").await;
    assert_eq!(gone["error"]["code"], "not_found", "{gone}");

    let errors = error_lines(&daemon);
    assert_eq!(errors.len(), 1, "ERROR lines:\n{}", errors.join("\n"));
    assert!(errors[0].contains("cannot be read"), "{}", errors[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_row_with_a_bad_kind_is_quarantined_and_the_rest_are_sent() {
    one_bad_row_among_due_jobs(
        "UPDATE jobs SET kind = 'carrier_pigeon' WHERE key = KEY",
        "carrier_pigeon",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_row_with_negative_attempts_is_quarantined_and_the_rest_are_sent() {
    one_bad_row_among_due_jobs(
        "UPDATE jobs SET attempts = -1 WHERE key = KEY",
        "attempts is -1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_row_with_a_non_utf8_payload_is_quarantined_and_the_rest_are_sent() {
    one_bad_row_among_due_jobs(
        "UPDATE jobs SET payload = CAST(x'ff' AS TEXT) WHERE key = KEY",
        "not valid UTF-8",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_row_with_a_payload_that_is_not_an_object_is_quarantined_not_sent_empty() {
    one_bad_row_among_due_jobs(
        "UPDATE jobs SET payload = '[\"not\", \"an object\"]' WHERE key = KEY",
        "not a JSON object",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_present_at_start_up_is_found_before_it_is_due() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_text(&coax.base_url(), "", "");
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let answer = daemon
        .request(json!({"op": "enqueue", "jobs": [job("far", "1000h"), job("fine", "1000h")]}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    daemon.terminate().await;
    edit(
        &dir.path().join("queue.db"),
        "UPDATE jobs SET kind = 'smoke_signal' WHERE key = 'far'",
    );

    let first_run = daemon.logs().lines().count();
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    let bad = wait_until("the bad row to be quarantined", PATIENCE, || async {
        let answer = get(&daemon, "far").await;
        (answer["job"]["state"] == "failed").then_some(answer)
    })
    .await;
    assert!(
        bad["job"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("smoke_signal")),
        "{bad}"
    );
    assert_eq!(bad["job"]["kind"], "smoke_signal", "{bad}");
    assert_eq!(get(&daemon, "fine").await["job"]["state"], "scheduled");
    // The lines of this run only (both runs share the log file).
    let errors: Vec<String> = daemon
        .logs()
        .lines()
        .skip(first_run)
        .filter(|l| l.contains(" ERROR "))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "ERROR lines:\n{}", errors.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_row_with_a_text_created_at_is_quarantined_and_the_rest_are_sent() {
    one_bad_row_among_due_jobs(
        "UPDATE jobs SET created_at = 'yesterday' WHERE key = KEY",
        "created_at is Text",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_channel_with_a_path_is_quarantined_not_sent() {
    one_bad_row_among_due_jobs(
        "UPDATE jobs SET channel = '../admin' WHERE key = KEY",
        "\"../admin\" is not a channel",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_enquiry_id_with_a_path_is_quarantined_not_sent() {
    one_bad_row_among_due_jobs(
        "UPDATE jobs SET enquiry_id = '1/../../../../v9/danger' WHERE key = KEY",
        "is not an enquiry id",
    )
    .await;
}
