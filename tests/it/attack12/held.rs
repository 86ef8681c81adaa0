//! Attacks on `export` and `import` that failed: rows no daemon could send
//! are quarantined while the rest goes out, an importer killed mid-stream
//! leaves an empty store that takes the next import, a stream too deep or
//! an output too full ends in an error, not a crash, and an export of an
//! older store refuses without touching it.

use super::{cli, import, job, released, schedule, stderr, stream, target, with};
use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{TestDaemon, binary, config_text};
use crate::helpers::edit_db;
use coax_scheduler::time;
use serde_json::json;
use std::io::Write as _;
use std::process::{Command, Stdio};

#[tokio::test]
async fn a_crafted_import_is_quarantined_and_the_rest_still_sends() {
    let coax = CoaxStub::start().await;
    let now = time::now();
    let template =
        r#"{"kind":"message","channel":"sms","payload":{"message":"hi","phone":"+15550100"}}"#;
    let (dir, config, output) = import(
        &coax,
        &[
            job(1, now),
            with(job(2, now), json!({"state": "bogus"})),
            with(job(3, now), json!({"payload": "not json {"})),
            with(
                job(4, now),
                json!({"scheduled_at": "tomorrow", "due_at": "tomorrow"}),
            ),
            with(job(5, now), json!({"kind": "bogus", "channel": "fax"})),
            with(job(6, now), json!({"attempts": -3})),
            with(job(7, now), json!({"timezone": "Mars/Olympus"})),
            job(8, now),
            with(
                schedule("stopped", "skip", template, now + 3_600_000),
                json!({"cron": "not a cron", "timezone": "Nowhere/X"}),
            ),
        ],
    )
    .await;
    assert!(output.status.success(), "import: {}", stderr(&output));
    let daemon = TestDaemon::start_in(dir, &config).await;
    for id in [1, 8] {
        daemon.wait_for_state(id, "sent").await;
    }
    for id in 2..=6 {
        let job = daemon.wait_for_state(id, "failed").await;
        let error = job["last_error"].as_str().unwrap_or_default();
        assert!(error.starts_with("quarantined"), "job {id}: {job}");
    }
    daemon.wait_for_state(7, "held").await;
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "{stats}");
    assert_eq!(stats["counts"]["sent"], 2, "{stats}");
    assert_eq!(stats["schedules"], 1, "{stats}");
}

#[tokio::test]
async fn an_import_killed_mid_stream_leaves_an_empty_store_that_takes_the_next() {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let dir = target(&config);
    let later = time::now() + 3_600_000;
    let records: Vec<_> = (1..=500).map(|id| job(id, later)).collect();
    let whole = stream(&records);
    // Everything but the end line, with stdin left open: the importer
    // holds its transaction, waiting for more, when it is killed.
    let cut = whole
        .trim_end()
        .rsplit_once('\n')
        .expect("lines")
        .0
        .to_owned()
        + "\n";
    let mut importer = Command::new(binary())
        .args(["import", "--config"])
        .arg(dir.path().join("config.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start import");
    let mut input = importer.stdin.take().expect("piped stdin");
    input.write_all(cut.as_bytes()).expect("feed the importer");
    input.flush().expect("flush");
    importer.kill().expect("kill -9 the importer");
    importer.wait().expect("reap the importer");
    drop(input);

    let again = cli(dir.path(), &["import"], whole.as_bytes()).await;
    assert!(again.status.success(), "second import: {}", stderr(&again));
    assert!(
        stderr(&again).contains("imported 500 jobs"),
        "{}",
        stderr(&again)
    );
}

#[tokio::test]
async fn a_deeply_nested_line_is_refused_with_its_line_number() {
    let config = config_text("http://127.0.0.1:9", "", "");
    let dir = target(&config);
    let deep = format!(
        "{}\n{{\"type\":\"job\",\"id\":1,\"key\":{}{}}}\n",
        r#"{"format":"coax-scheduler-export","version":1}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let output = cli(dir.path(), &["import"], deep.as_bytes()).await;
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("line 2") && text.contains("not JSON"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[tokio::test]
async fn export_to_a_full_device_fails_with_a_clear_error() {
    let coax = CoaxStub::start().await;
    let (dir, _config, output) = import(&coax, &[job(1, time::now() + 3_600_000)]).await;
    assert!(output.status.success(), "import: {}", stderr(&output));
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full here");
        return;
    };
    let output = Command::new(binary())
        .args(["export", "--config"])
        .arg(dir.path().join("config.toml"))
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .output()
        .expect("run export");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("cannot write the export"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

/// A store of the schema before this build's (the previous release, which
/// had no `export`): export writes nothing, leaves the store as it was,
/// and says how to get an export.
#[tokio::test]
async fn export_of_an_older_store_says_how_to_migrate_and_changes_nothing() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    daemon.enqueue(crate::helpers::sms_job("older", "1h")).await;
    let db = daemon.db().to_owned();
    let dir = daemon.stop().await;
    released(dir.path()).await;
    edit_db(
        &db,
        "ALTER TABLE attempts DROP COLUMN node; PRAGMA user_version = 9;",
    );

    let output = cli(dir.path(), &["export"], b"").await;
    assert!(!output.status.success(), "export of a schema 9 store");
    assert!(output.stdout.is_empty(), "it wrote part of an export");
    let text = stderr(&output);
    assert!(
        text.contains("schema version 9") && text.contains("start this one on it once"),
        "{text}"
    );
    let conn = rusqlite::Connection::open(&db).expect("open the queue");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, 9, "export changed the store's schema");
}
