//! What operators see of deferred jobs: `list` with `due_before`, the
//! `deferred` count of `stats` and of the summary line, and one INFO line
//! per deferral. The log tests run the real binary on the real clock, with
//! a window that is shut today.

use super::*;
use crate::helpers::daemon::DaemonProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_due_before_and_stats_count_deferred_jobs() {
    let coax = accepting_coax().await;
    let (daemon, _clock) = start_at(
        &config(&coax, "", &daily("day", "09:00-17:00")),
        "2026-12-02T18:00:00Z",
    )
    .await;
    let id = |answer: Value| answer["id"].as_i64().expect("id");
    let first = id(enqueue(&daemon, sms("first", json!({"window": "day"}))).await);
    let second = id(enqueue(&daemon, sms("second", json!({"window": "day"}))).await);
    let tonight = id(enqueue(
        &daemon,
        sms("tonight", json!({"scheduled_at": "2026-12-02T20:00:00Z"})),
    )
    .await);
    let later = id(enqueue(
        &daemon,
        sms("later", json!({"scheduled_at": "2026-12-04T20:00:00Z"})),
    )
    .await);

    let listed = |due_before: &str| {
        let daemon = &daemon;
        let due_before = due_before.to_owned();
        async move {
            let answer = daemon
                .request(json!({"op": "list", "due_before": due_before}))
                .await;
            assert_eq!(answer["ok"], true, "{answer}");
            answer["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .map(|j| j["id"].as_i64().expect("id"))
                .collect::<Vec<i64>>()
        }
    };
    // Scheduled before them, the deferred jobs are due after the job at
    // 20:00, and listed by due time.
    assert_eq!(listed("2026-12-02T21:00:00Z").await, vec![tonight]);
    assert_eq!(
        listed("2026-12-03T10:00:00Z").await,
        vec![tonight, first, second]
    );
    assert_eq!(
        listed("2026-12-05T00:00:00Z").await,
        vec![tonight, first, second, later]
    );

    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["deferred"], 2, "{stats}");
    assert_eq!(stats["counts"]["scheduled"], 4, "{stats}");
    daemon.stop().await;
}

/// The test config for the real binary, with a window shut today and a
/// summary line every `summary`.
fn shut_today(coax: &CoaxStub, summary: &str) -> (String, Millis) {
    let (windows, opening) = shut_now("later");
    let config = config(coax, "", &windows).replace(
        "level = \"debug\"",
        &format!("level = \"debug\"\nsummary_interval = \"{summary}\""),
    );
    (config, opening)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_line_counts_deferred_jobs() {
    let coax = accepting_coax().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, _) = shut_today(&coax, "200ms");
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    for marker in ["first", "second"] {
        let answer = daemon
            .request(json!({"op": "enqueue", "job": sms(marker, json!({"window": "later"}))}))
            .await;
        assert_eq!(answer["ok"], true, "{answer}");
    }
    let line = daemon
        .wait_for_log_line("a summary with deferred=2", |l| {
            l.contains("queue summary") && l.contains("deferred=2")
        })
        .await;
    assert!(line.contains("scheduled=2"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_deferral_is_logged_once_at_info_with_zone_window_and_opening() {
    let coax = accepting_coax().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, opening) = shut_today(&coax, "200ms");
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    let answer = daemon
        .request(json!({"op": "enqueue", "job": sms("deferred", json!({
            "window": "later", "timezone": "UTC"
        }))}))
        .await;
    let id = answer["id"].as_i64().expect("id");
    let tag = format!("job_id={id} ");
    let is_deferral =
        |l: &str| l.contains("deferred to its window's next opening") && l.contains(&tag);
    let line = daemon.wait_for_log_line("the deferral", is_deferral).await;
    assert!(line.contains("INFO"), "{line}");
    assert!(
        line.contains("timezone=UTC") || line.contains("timezone=\"UTC\""),
        "{line}"
    );
    assert!(
        line.contains("window=later") || line.contains("window=\"later\""),
        "{line}"
    );
    assert!(line.contains(&time::format(opening)), "{line}");

    // Reads, a send of another job and a few summaries later: still one line.
    for _ in 0..3 {
        daemon.request(json!({"op": "get", "id": id})).await;
        daemon.request(json!({"op": "list"})).await;
    }
    let other = daemon
        .request(json!({"op": "enqueue", "job": sms("windowless", json!({"window": "none"}))}))
        .await;
    let other = other["id"].as_i64().expect("id");
    wait_until("the windowless job to be sent", PATIENCE, || async {
        let j = daemon.request(json!({"op": "get", "id": other})).await;
        (j["job"]["state"] == "sent").then_some(())
    })
    .await;
    let summaries = |logs: &str| logs.lines().filter(|l| l.contains("queue summary")).count();
    let seen = summaries(&daemon.logs());
    wait_until("two more summaries", PATIENCE, || async {
        (summaries(&daemon.logs()) >= seen + 2).then_some(())
    })
    .await;
    let logs = daemon.logs();
    let count = logs.lines().filter(|l| is_deferral(l)).count();
    assert_eq!(count, 1, "logged {count} times:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_due_before_pages_through_every_job_due_before_it_and_no_other() {
    let coax = accepting_coax().await;
    let (daemon, _clock) = start_at(
        &config(&coax, "", &daily("day", "09:00-17:00")),
        "2026-12-02T18:00:00Z",
    )
    .await;
    let mut due = Vec::new();
    // Five jobs deferred to tomorrow's opening, one due tonight, and one
    // due the day after, in an order unlike their due times.
    for n in 0..5 {
        let answer = enqueue(
            &daemon,
            sms(&format!("deferred {n}"), json!({"window": "day"})),
        )
        .await;
        due.push(answer["id"].as_i64().expect("id"));
    }
    let tonight = enqueue(
        &daemon,
        sms("tonight", json!({"scheduled_at": "2026-12-02T23:00:00Z"})),
    )
    .await["id"]
        .as_i64()
        .expect("id");
    enqueue(
        &daemon,
        sms("later", json!({"scheduled_at": "2026-12-04T08:00:00Z"})),
    )
    .await;
    due.insert(0, tonight);

    let mut listed = Vec::new();
    let mut after = Value::Null;
    for _ in 0..10 {
        let answer = daemon
            .request(json!({"op": "list", "limit": 2, "after": after,
                            "due_before": "2026-12-03T12:00:00Z"}))
            .await;
        assert_eq!(answer["ok"], true, "{answer}");
        listed.extend(
            answer["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .map(|j| j["id"].as_i64().expect("id")),
        );
        after = answer["next"].clone();
        if after.is_null() {
            break;
        }
    }
    assert_eq!(listed, due);
    daemon.stop().await;
}
