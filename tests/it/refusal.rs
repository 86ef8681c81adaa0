//! Refusing a database that is not ours leaves it exactly as it was, even
//! when its latest changes are still only in its write-ahead log; and our
//! own database with its first migration only in the log is still ours.

use crate::helpers::daemon::{TEST_KEY, TestDaemon, config_text};
use coax_scheduler::config::Config;
use coax_scheduler::daemon::Daemon;
use coax_scheduler::store::StoreError;
use rusqlite::Connection;
use serde_json::json;
use std::path::{Path, PathBuf};

const NO_COAX: &str = "http://127.0.0.1:9";
const SIDE_FILES: [&str; 4] = ["", "-wal", "-shm", ".lock"];

fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The bytes of the database and each file beside it (`None`: absent).
fn snapshot(db: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    SIDE_FILES
        .iter()
        .map(|s| (s.to_string(), std::fs::read(beside(db, s)).ok()))
        .collect()
}

/// Copies the database and its log files, as they are this instant, into `to`.
fn copy_files(db: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let from = beside(db, suffix);
        if from.exists() {
            std::fs::copy(&from, beside(to, suffix)).expect("copy a database file");
        }
    }
}

fn open_daemon(dir: &Path) -> Result<Daemon, StoreError> {
    let path = dir.join("config.toml");
    std::fs::write(&path, config_text(NO_COAX, "", "")).expect("write config");
    let config = Config::load_with_env(&path, &|name| {
        (name == "COAX_API_KEY").then(|| TEST_KEY.to_owned())
    })
    .expect("test config is valid");
    crate::helpers::open_blocking(config)
}

#[test]
fn refusing_a_foreign_database_with_an_unflushed_wal_leaves_its_files_unchanged() {
    let origin = tempfile::tempdir().expect("temp dir");
    let theirs = origin.path().join("theirs.db");
    let conn = Connection::open(&theirs).expect("create");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA wal_autocheckpoint = 0;
         CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
         INSERT INTO notes (body) VALUES ('only in the log');",
    )
    .expect("fill");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    // Copied while the other application still has it open: its table and
    // row are in the -wal file, not yet in the database file.
    copy_files(&theirs, &db);
    drop(conn);
    assert!(
        beside(&db, "-wal").exists(),
        "the test needs an unflushed log"
    );
    let before = snapshot(&db);

    let e = open_daemon(dir.path())
        .err()
        .expect("the daemon refused the file");
    assert!(matches!(e, StoreError::Foreign { .. }), "{e:?}");
    assert!(e.to_string().contains("another application"), "{e}");
    let after = snapshot(&db);
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(
            was.as_ref().map(Vec::len),
            is.as_ref().map(Vec::len),
            "queue.db{name} changed in existence or size"
        );
        assert!(was == is, "the bytes of queue.db{name} changed");
    }
    assert!(
        !beside(&db, ".lock").exists(),
        "a lock file was left beside it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_database_with_its_schema_only_in_the_wal_is_still_ours() {
    let daemon = TestDaemon::start(NO_COAX).await;
    daemon
        .enqueue(json!({
            "kind": "message", "channel": "sms", "key": "in-the-log", "delay": "1h",
            "payload": {"message": "hi", "phone": "+15550100"}
        }))
        .await;
    // Copied while the daemon runs: a crash at this instant leaves these files.
    let dir = tempfile::tempdir().expect("temp dir");
    copy_files(daemon.db(), &dir.path().join("queue.db"));
    daemon.stop().await;
    let header = std::fs::read(dir.path().join("queue.db")).expect("read the copy");
    assert!(
        header.get(68..72) != Some(&[0x43, 0x6f, 0x61, 0x78][..]),
        "the test needs the application id to be only in the log"
    );

    let copy = TestDaemon::start_in(dir, &config_text(NO_COAX, "", "")).await;
    let answer = copy
        .request(json!({"op": "get", "key": "in-the-log"}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    copy.stop().await;
}
