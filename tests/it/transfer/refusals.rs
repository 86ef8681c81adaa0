//! What import refuses, each time leaving the store without a row of the
//! stream: a store that holds jobs, a store a daemon has open, a stream cut
//! short, a malformed line (named by its number), a duplicate id.

use super::{export, rows, run, target};
use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{TestDaemon, config_text};
use serde_json::json;
use std::path::Path;

/// An export of a store with three jobs and a schedule, and the config.
async fn small_export() -> (String, String) {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let daemon = TestDaemon::start_with(&config).await;
    for key in ["a", "b", "c"] {
        daemon
            .enqueue(
                json!({"kind": "message", "channel": "sms", "key": key, "delay": "1h",
                            "tags": ["t"], "payload": {"message": "hi", "phone": "+15550100"}}),
            )
            .await;
    }
    let answer = daemon
        .request(
            json!({"op": "schedule_put", "name": "daily", "cron": "0 0 9 * * *",
                        "timezone": "UTC", "catch_up": "skip",
                        "job": {"kind": "message", "channel": "sms",
                                "payload": {"message": "hi", "phone": "+15550100"}}}),
        )
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    let text = export(daemon.dir.path()).await;
    assert_eq!(text.lines().count(), 6, "{text}");
    (text, config)
}

/// Asserts the store in `dir` holds no row an import would have written.
fn untouched(dir: &Path) {
    let db = dir.join("queue.db");
    for table in ["jobs", "attempts", "job_tags", "schedules"] {
        assert_eq!(rows(&db, table), 0, "{table} has rows");
    }
}

/// Import of `stream` into a new store: it fails with `expect` in its
/// error, and the store is left without a row of it.
async fn refused(config: &str, stream: &str, expect: &str) {
    let into = target(config);
    let run = run("import", into.path(), stream).await;
    assert!(!run.ok, "import of a bad stream succeeded: {}", run.stderr);
    assert!(
        run.stderr.contains(expect),
        "{expect:?} not in: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("nothing was imported"),
        "{}",
        run.stderr
    );
    untouched(into.path());
}

fn with_line(text: &str, index: usize, line: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines[index] = line;
    lines.join("\n") + "\n"
}

#[tokio::test]
async fn import_refuses_a_stream_cut_short_a_malformed_line_and_a_duplicate_id() {
    let (text, config) = small_export().await;
    let lines: Vec<&str> = text.lines().collect();

    let cut = lines[..5].join("\n") + "\n";
    refused(&config, &cut, "without its end line").await;
    let mid_line = &text[..text.len() - 20];
    refused(&config, mid_line, "line 6").await;

    refused(
        &config,
        &with_line(&text, 2, "{\"type\":\"job\",\"id\":"),
        "line 3",
    )
    .await;
    refused(&config, &with_line(&text, 3, "[1, 2]"), "line 4").await;
    let no_kind = lines[1].replace("\"kind\":\"message\",", "");
    refused(&config, &with_line(&text, 1, &no_kind), "line 2").await;

    // A duplicate id, with counts that agree.
    let duplicate = lines[1].replace("\"key\":\"a\"", "\"key\":\"z\"");
    let twice = [lines[0], lines[1], &duplicate, lines[2], lines[3], lines[4]].join("\n")
        + "\n"
        + &lines[5].replace("\"jobs\":3", "\"jobs\":4")
        + "\n";
    refused(&config, &twice, "line 3: job id 1 appears twice").await;
    // A duplicate key under another id.
    let same_key = lines[1].replace("\"id\":1,", "\"id\":10,");
    let twice = [lines[0], lines[1], &same_key, lines[2], lines[3], lines[4]].join("\n")
        + "\n"
        + &lines[5].replace("\"jobs\":3", "\"jobs\":4")
        + "\n";
    refused(&config, &twice, "line 3: key \"a\" appears twice").await;
    // Counts that disagree, and an unknown format version.
    let counts = with_line(&text, 5, &lines[5].replace("\"jobs\":3", "\"jobs\":2"));
    refused(&config, &counts, "line 6: the end line counts 2 jobs").await;
    let version = with_line(
        &text,
        0,
        &lines[0].replace("\"version\":1", "\"version\":2"),
    );
    refused(&config, &version, "format version 2").await;

    // The same stream, whole, imports.
    let into = target(&config);
    let run = run("import", into.path(), &text).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(rows(&into.path().join("queue.db"), "jobs"), 3);
}

#[tokio::test]
async fn import_refuses_a_store_with_jobs_and_one_a_daemon_has_open() {
    let (text, config) = small_export().await;

    // A store that holds jobs: refused, and it keeps just its own.
    let into = target(&config);
    assert!(run("import", into.path(), &text).await.ok);
    let again = run("import", into.path(), &text).await;
    assert!(!again.ok, "a second import succeeded");
    assert!(
        again.stderr.contains("is not empty (3 jobs, 1 schedules)"),
        "{}",
        again.stderr
    );
    assert_eq!(rows(&into.path().join("queue.db"), "jobs"), 3);

    // A store a daemon has open: refused, naming the lock file.
    let daemon = TestDaemon::start_with(&config).await;
    let run = run("import", daemon.dir.path(), &text).await;
    assert!(!run.ok, "import beside a running daemon succeeded");
    assert!(
        run.stderr.contains("queue.db.lock is held"),
        "{}",
        run.stderr
    );
    untouched(daemon.dir.path());
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "{stats}");
}

#[tokio::test]
async fn import_and_export_refuse_a_file_that_is_not_a_queue_and_leave_it_alone() {
    let (text, config) = small_export().await;
    let into = target(&config);
    let db = into.path().join("queue.db");
    std::fs::write(&db, "not a database\n").expect("write a foreign file");
    for (command, stdin) in [("import", text.as_str()), ("export", "")] {
        let run = run(command, into.path(), stdin).await;
        assert!(!run.ok, "{command} of a foreign file succeeded");
        assert!(
            run.stderr
                .contains("is not a coax-scheduler queue database"),
            "{command}: {}",
            run.stderr
        );
    }
    assert_eq!(
        std::fs::read(&db).expect("read it back"),
        b"not a database\n"
    );
    assert!(
        !into.path().join("queue.db.lock").exists(),
        "a lock file was left"
    );

    // A store that is not there is no queue to export, and is not created.
    let empty = target(&config);
    let run = run("export", empty.path(), "").await;
    assert!(
        run.stderr.contains("there is no queue database"),
        "{}",
        run.stderr
    );
    assert!(!empty.path().join("queue.db").exists());
}
