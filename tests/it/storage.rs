//! The queue database as a file on disk: a database written by the first
//! released schema (version 1) opens in this build with every job intact; a
//! file at `store.path` that is not ours (random bytes, text, another
//! application's SQLite database) or that comes from a newer schema is
//! refused with a clear message and left byte-for-byte untouched, while an
//! empty file is taken as a new queue; a full database fails the write that
//! hit the limit, keeps everything committed before it, and recovers once
//! there is room; and group commit gives each of many concurrent enqueues its
//! own durable job.
//!
//! Fixtures live in `tests/data/`:
//! - `schema-v1.db` is a queue made by schema version 1, with jobs that are
//!   sent, failed after a retry, skipped, cancelled, and scheduled in 2099;
//! - `schema-v1.expected.json` is what `get` answered for each of them when
//!   the fixture was made.
//!
//! Both come from the real daemon, not hand-written SQL, by the ignored
//! test `make_schema_v1_fixture`. To regenerate them (only ever from a commit
//! whose `SCHEMA_VERSION` is 1, which the generator checks), run
//!
//! ```text
//! COAX_WRITE_FIXTURES=1 cargo test --test it storage::make_schema_v1_fixture -- --ignored
//! ```
//!
//! Without `COAX_WRITE_FIXTURES=1` the generator builds the database in a
//! temp dir and writes nothing, so `--include-ignored` runs are harmless.
//!
//! A read-only database file while the daemon runs is not tested: the daemon
//! keeps its connection open, and `chmod 0444` does not affect a descriptor
//! that is already open, so there is no deterministic way to provoke it
//! without root.

use crate::helpers::PATIENCE;
use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{DaemonProcess, TEST_KEY, TestDaemon, config_text, request_at};
use coax_scheduler::config::{Config, OnAmbiguous};
use coax_scheduler::daemon::Daemon;
use coax_scheduler::job::{NewJob, State, validate};
use coax_scheduler::policy::Decision;
use coax_scheduler::store::{Finish, Lookup, Options, SCHEMA_VERSION, Store, StoreError};
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// "Coax" in ASCII: the application_id the daemon stamps on its databases.
const COAX_APPLICATION_ID: i64 = 0x436f_6178;

/// Coax is never reached in tests that use this; nothing listens on port 9.
const NO_COAX: &str = "http://127.0.0.1:9";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn v1_fixture() -> PathBuf {
    data_dir().join("schema-v1.db")
}

fn v1_expected() -> Vec<Value> {
    let path = data_dir().join("schema-v1.expected.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the expected views are a JSON array")
}

/// The environment a test daemon sees: only the API key.
fn test_env(name: &str) -> Option<String> {
    (name == "COAX_API_KEY").then(|| TEST_KEY.to_owned())
}

/// Writes the default test config into `dir` (store.path = `queue.db`) and loads it.
fn load_config(dir: &Path) -> Config {
    let path = dir.join("config.toml");
    std::fs::write(&path, config_text(NO_COAX, "", "")).expect("write config");
    Config::load_with_env(&path, &test_env).expect("test config is valid")
}

/// Opens the daemon on `dir`'s config and returns why it refused.
fn refusal(dir: &Path) -> StoreError {
    match crate::helpers::open_blocking(load_config(dir)) {
        Ok(_) => panic!("the daemon opened {}", dir.join("queue.db").display()),
        Err(e) => e,
    }
}

fn read_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Bytes that are not SQLite, the same every run.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A read-only connection of our own: it sees only what was committed.
fn reader(db: &Path) -> Connection {
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open read-only")
}

fn pragma(conn: &Connection, name: &str) -> i64 {
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("PRAGMA {name}: {e}"))
}

fn count_jobs(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .expect("count jobs")
}

/// Asserts the daemon refused to start, left no socket, and said `needles`.
async fn assert_binary_refuses(dir: &Path, needles: &[&str]) {
    let mut daemon = DaemonProcess::spawn(dir, &config_text(NO_COAX, "", ""));
    let code = daemon.wait_exit(PATIENCE).await;
    let logs = daemon.logs();
    assert_ne!(code, Some(0), "the daemon started; its output:\n{logs}");
    for needle in needles {
        assert!(
            logs.contains(needle),
            "the daemon's output does not say {needle:?}:\n{logs}"
        );
    }
    assert!(
        !dir.join("coax.sock").exists(),
        "a refused daemon left its socket behind"
    );
}

// ---------------------------------------------------------------------------
// Upgrading from schema version 1
// ---------------------------------------------------------------------------

/// Makes `tests/data/schema-v1.db` and `schema-v1.expected.json` with the
/// real daemon. See the module docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "regenerates tests/data/schema-v1.db; run by hand (see the module docs)"]
async fn make_schema_v1_fixture() {
    assert_eq!(
        SCHEMA_VERSION, 1,
        "the fixture must be made by a build whose schema is version 1"
    );
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;

    // Sent on the first try, with a key and Coax's answer as its result.
    coax.push(Reply::sent());
    let sent = daemon
        .enqueue(json!({
            "kind": "message", "channel": "sms", "key": "v1-sent",
            "payload": {"message": "Grüße from v1 👋", "phone": "+15550100", "business_location_id": 3}
        }))
        .await;
    daemon.wait_for_state(sent, "sent").await;

    // A retry after a 503, then refused: failed, with two attempts in its history.
    coax.push(Reply::status(503));
    coax.push(Reply::refused("Invalid phone number"));
    let failed = daemon
        .enqueue(json!({
            "kind": "message", "channel": "email", "enquiry_id": "1234",
            "payload": {"message": "Your order shipped", "contact_ids": [7, 8]}
        }))
        .await;
    daemon.wait_for_state(failed, "failed").await;

    // The campaign is paused: skipped.
    coax.push(Reply::paused());
    let skipped = daemon
        .enqueue(json!({
            "kind": "message", "channel": "whatsapp", "key": "v1-skipped",
            "payload": {"message": "Weekly offer", "email": "ann@example.com"}
        }))
        .await;
    daemon.wait_for_state(skipped, "skipped").await;

    // Scheduled far in the future, with a key.
    let scheduled = daemon
        .enqueue(json!({
            "kind": "review_request", "channel": "sms", "key": "v1-future",
            "scheduled_at": "2099-01-01T09:00:00Z",
            "payload": {"phone": "+15550101", "name": "Ann", "review_types": ["google"]}
        }))
        .await;

    // Cancelled before it was due.
    let cancelled = daemon
        .enqueue(json!({
            "kind": "coax_schedule", "channel": "sms", "key": "v1-cancelled",
            "scheduled_at": "2099-06-01T12:30:00Z",
            "payload": {"message": "See you tomorrow", "phone": "+15550102",
                        "scheduled_at": "2099-06-02 09:00:00"}
        }))
        .await;
    let answer = daemon
        .request(json!({"op": "cancel", "id": cancelled}))
        .await;
    assert_eq!(answer["ok"], true, "cancel failed: {answer}");

    let mut views = Vec::new();
    for id in [sent, failed, skipped, scheduled, cancelled] {
        views.push(daemon.get(id).await);
    }
    assert_eq!(
        coax.requests().len(),
        4,
        "one request each, two for the retry"
    );
    let dir = daemon.stop().await;

    // Fold the WAL into the main file and compact it: the fixture is one file.
    let db = dir.path().join("queue.db");
    {
        let conn = Connection::open(&db).expect("open the new database");
        assert_eq!(pragma(&conn, "user_version"), 1);
        assert_eq!(pragma(&conn, "application_id"), COAX_APPLICATION_ID);
        conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("vacuum and checkpoint");
    }
    for sidecar in ["queue.db-wal", "queue.db-shm"] {
        assert!(
            !dir.path().join(sidecar).exists(),
            "{sidecar} is still there after the last connection closed"
        );
    }
    let size = std::fs::metadata(&db).expect("the new database").len();
    assert!(size < 100_000, "the fixture would be {size} bytes");
    if std::env::var_os("COAX_WRITE_FIXTURES").is_none_or(|v| v != "1") {
        eprintln!("not written: set COAX_WRITE_FIXTURES=1 to replace tests/data/schema-v1.*");
        return;
    }
    std::fs::create_dir_all(data_dir()).expect("create tests/data");
    std::fs::copy(&db, v1_fixture()).expect("write the fixture");
    let mut text = serde_json::to_string_pretty(&Value::Array(views)).expect("views as JSON");
    text.push('\n');
    std::fs::write(data_dir().join("schema-v1.expected.json"), text).expect("write expected");
}

/// Asserts `actual` says what `expected` (a view from the fixture's time) said.
/// Fields a later version adds to a view are allowed; every old one must match.
fn assert_same_view(expected: &Value, actual: &Value) {
    let id = &expected["id"];
    let expected = expected.as_object().expect("a view is an object");
    for (field, want) in expected {
        let got = &actual[field.as_str()];
        if field == "history" {
            let (want, got) = (want.as_array().expect("history"), got.as_array());
            let got = got.unwrap_or_else(|| panic!("job {id} has no history: {actual}"));
            assert_eq!(got.len(), want.len(), "job {id}: history length");
            for (w, g) in want.iter().zip(got) {
                for (k, v) in w.as_object().expect("an attempt is an object") {
                    assert_eq!(&g[k.as_str()], v, "job {id}: history field {k}");
                }
            }
        } else {
            assert_eq!(got, want, "job {id}: field {field}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_v1_database_opens_with_every_job_intact() {
    let expected = v1_expected();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(v1_fixture(), dir.path().join("queue.db")).expect("copy the fixture");
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start_in(dir, &config_text(&coax.base_url(), "", "")).await;

    for view in &expected {
        let id = view["id"].as_i64().expect("id");
        assert_same_view(view, &daemon.get(id).await);
    }

    // The same, spelled out, so a regenerated snapshot cannot quietly change it.
    let by_key = |key: &str| {
        expected
            .iter()
            .find(|v| v["key"] == key)
            .unwrap_or_else(|| panic!("the fixture has no job with key {key}"))
            .clone()
    };
    let sent = daemon.get(by_key("v1-sent")["id"].as_i64().unwrap()).await;
    assert_eq!(sent["state"], "sent");
    assert_eq!(sent["kind"], "message");
    assert_eq!(
        sent["payload"],
        json!({"message": "Grüße from v1 👋", "phone": "+15550100", "business_location_id": 3})
    );
    assert_eq!(sent["result"]["status"], 200);
    assert_eq!(sent["result"]["body"]["enquiry"]["id"], 4242);
    assert_eq!(sent["history"].as_array().map(Vec::len), Some(1));
    assert_eq!(sent["history"][0]["decision"], "sent");

    let failed = expected
        .iter()
        .find(|v| v["key"].is_null())
        .expect("the fixture has a job without a key");
    let failed = daemon.get(failed["id"].as_i64().unwrap()).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["enquiry_id"], "1234");
    assert_eq!(failed["payload"]["contact_ids"], json!([7, 8]));
    let history = failed["history"].as_array().expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["status"], 503);
    assert_eq!(history[0]["decision"], "retry");
    assert_eq!(history[1]["decision"], "failed");
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Invalid phone number")),
        "{failed}"
    );

    let skipped = daemon
        .get(by_key("v1-skipped")["id"].as_i64().unwrap())
        .await;
    assert_eq!(skipped["state"], "skipped");

    let future = by_key("v1-future");
    let future_id = future["id"].as_i64().unwrap();
    let scheduled = daemon.get(future_id).await;
    assert_eq!(scheduled["state"], "scheduled");
    assert_eq!(scheduled["kind"], "review_request");
    assert_eq!(scheduled["scheduled_at"], "2099-01-01T09:00:00.000Z");
    assert_eq!(scheduled["attempts"], 0);
    assert_eq!(scheduled["history"], json!([]));
    let answer = daemon
        .request(json!({"op": "get", "key": "v1-future"}))
        .await;
    assert_eq!(answer["job"]["id"], future_id, "lookup by key: {answer}");

    let cancelled = daemon
        .get(by_key("v1-cancelled")["id"].as_i64().unwrap())
        .await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["kind"], "coax_schedule");

    // Keys stay unique across the upgrade, and new ids follow the old ones.
    let answer = daemon
        .request(json!({"op": "enqueue", "job": {
            "kind": "review_request", "channel": "sms", "key": "v1-future",
            "scheduled_at": "2099-01-01T09:00:00Z", "payload": {"phone": "+15550101"}
        }}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert_eq!(answer["id"], future_id, "{answer}");
    let newest = daemon
        .enqueue(json!({
            "kind": "message", "channel": "sms", "scheduled_at": "2099-02-01T00:00:00Z",
            "payload": {"message": "after the upgrade", "phone": "+15550103"}
        }))
        .await;
    let oldest_max = expected.iter().filter_map(|v| v["id"].as_i64()).max();
    assert!(
        Some(newest) > oldest_max,
        "new id {newest} reuses an old one"
    );

    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "{stats}");
    for (state, n) in [
        ("scheduled", 2),
        ("sent", 1),
        ("failed", 1),
        ("skipped", 1),
        ("cancelled", 1),
        ("sending", 0),
        ("held", 0),
    ] {
        assert_eq!(stats["counts"][state], n, "{state}: {stats}");
    }

    let dir = daemon.stop().await;
    assert!(
        coax.requests().is_empty(),
        "opening an old queue sent something: {:?}",
        coax.requests()
    );
    let conn = reader(&dir.path().join("queue.db"));
    assert_eq!(pragma(&conn, "user_version"), SCHEMA_VERSION);
    assert_eq!(pragma(&conn, "application_id"), COAX_APPLICATION_ID);
    assert_eq!(count_jobs(&conn), expected.len() as i64 + 1);
}

// ---------------------------------------------------------------------------
// Files that are not ours
// ---------------------------------------------------------------------------

#[test]
fn random_bytes_at_store_path_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let bytes = noise(8192);
    std::fs::write(&db, &bytes).expect("write noise");

    let e = refusal(dir.path());
    assert!(matches!(e, StoreError::Foreign { .. }), "{e:?}");
    let message = e.to_string();
    assert!(
        message.contains("is not a coax-scheduler queue database"),
        "{message}"
    );
    assert!(message.contains("not an SQLite database"), "{message}");
    assert!(message.contains(&db.display().to_string()), "{message}");
    assert_eq!(read_bytes(&db), bytes, "the file was changed");
    assert!(!dir.path().join("queue.db-wal").exists());
    assert!(!dir.path().join("queue.db-journal").exists());
}

#[test]
fn a_short_text_file_at_store_path_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let text = b"my notes: remember to configure store.path\n";
    std::fs::write(&db, text).expect("write text");

    let e = refusal(dir.path());
    assert!(matches!(e, StoreError::Foreign { .. }), "{e:?}");
    assert!(e.to_string().contains("not an SQLite database"), "{e}");
    assert_eq!(read_bytes(&db), text, "the file was changed");
}

#[tokio::test]
async fn the_binary_refuses_a_foreign_file_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let bytes = noise(5000);
    std::fs::write(&db, &bytes).expect("write noise");

    assert_binary_refuses(
        dir.path(),
        &[
            "is not a coax-scheduler queue database",
            "not an SQLite database",
        ],
    )
    .await;
    assert_eq!(read_bytes(&db), bytes, "the file was changed");
}

#[test]
fn another_applications_sqlite_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    {
        let conn = Connection::open(&db).expect("create");
        conn.execute_batch(
            "CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO foo (name) VALUES ('keep me');",
        )
        .expect("fill");
    }
    let bytes = read_bytes(&db);

    let e = refusal(dir.path());
    assert!(matches!(e, StoreError::Foreign { .. }), "{e:?}");
    let message = e.to_string();
    assert!(
        message.contains("is not a coax-scheduler queue database"),
        "{message}"
    );
    assert!(message.contains("another application"), "{message}");
    assert_eq!(read_bytes(&db), bytes, "the file was changed");
    let conn = reader(&db);
    let name: String = conn
        .query_row("SELECT name FROM foo", [], |r| r.get(0))
        .expect("foo is still readable");
    assert_eq!(name, "keep me");
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .expect("count tables");
    assert_eq!(tables, 1, "tables were added to another application's file");
}

#[test]
fn an_empty_sqlite_database_of_another_application_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    {
        let conn = Connection::open(&db).expect("create");
        conn.pragma_update(None, "application_id", 0x1234_5678)
            .expect("set application_id");
    }
    let bytes = read_bytes(&db);

    let e = refusal(dir.path());
    assert!(matches!(e, StoreError::Foreign { .. }), "{e:?}");
    assert!(e.to_string().contains("0x12345678"), "{e}");
    assert_eq!(read_bytes(&db), bytes, "the file was changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_at_store_path_becomes_a_new_queue() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("queue.db"), b"").expect("touch");
    let daemon = TestDaemon::start_in(dir, &config_text(NO_COAX, "", "")).await;

    let id = daemon
        .enqueue(json!({
            "kind": "message", "channel": "sms", "key": "first", "delay": "1h",
            "payload": {"message": "hi", "phone": "+15550100"}
        }))
        .await;
    let job = daemon.get(id).await;
    assert_eq!(job["key"], "first");
    assert_eq!(job["state"], "scheduled");

    let dir = daemon.stop().await;
    let conn = reader(&dir.path().join("queue.db"));
    assert_eq!(pragma(&conn, "user_version"), SCHEMA_VERSION);
    assert_eq!(pragma(&conn, "application_id"), COAX_APPLICATION_ID);
    assert_eq!(count_jobs(&conn), 1);
}

// ---------------------------------------------------------------------------
// A database from a newer schema
// ---------------------------------------------------------------------------

/// Copies the v1 fixture to `dir/queue.db` and marks it as schema version 99.
fn newer_database(dir: &Path) -> PathBuf {
    let db = dir.join("queue.db");
    std::fs::copy(v1_fixture(), &db).expect("copy the fixture");
    let conn = Connection::open(&db).expect("open the copy");
    assert_eq!(pragma(&conn, "application_id"), COAX_APPLICATION_ID);
    conn.pragma_update(None, "user_version", 99)
        .expect("bump user_version");
    drop(conn);
    db
}

#[test]
fn a_database_from_a_newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = newer_database(dir.path());
    let bytes = read_bytes(&db);

    let e = refusal(dir.path());
    match &e {
        StoreError::TooNew {
            found, supported, ..
        } => {
            assert_eq!(*found, 99);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    let message = e.to_string();
    assert!(message.contains("schema version 99"), "{message}");
    assert!(message.contains("newer"), "{message}");
    assert_eq!(read_bytes(&db), bytes, "the file was changed");
    let conn = reader(&db);
    assert_eq!(pragma(&conn, "user_version"), 99);
    assert_eq!(count_jobs(&conn), v1_expected().len() as i64);
}

#[tokio::test]
async fn the_binary_refuses_a_newer_schema_naming_the_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = newer_database(dir.path());
    let bytes = read_bytes(&db);

    assert_binary_refuses(dir.path(), &["schema version 99", "newer"]).await;
    assert_eq!(read_bytes(&db), bytes, "the file was changed");
}

// ---------------------------------------------------------------------------
// A full database
// ---------------------------------------------------------------------------

fn open_store(db: &Path) -> Store {
    let (store, opened) = Store::open(&Options {
        path: db.to_owned(),
        on_ambiguous: OnAmbiguous::Retry,
        max_attempts: 5,
        calendar: std::sync::Arc::new(coax_scheduler::window::Calendar::none()),
        node: "test".to_owned(),
    })
    .expect("the store opens");
    assert!(opened.recovered.is_empty());
    assert!(opened.recounted.is_empty());
    store
}

fn pragma_error(e: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        during: "a test's pragma",
        detail: e.to_string(),
    }
}

/// Lets the database grow by at most `room` pages from its current size.
async fn cap_growth(store: &Store, room: i64) {
    store
        .call(move |c| {
            let pages: i64 = c
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(pragma_error)?;
            let max: i64 = c
                .query_row(
                    &format!("PRAGMA max_page_count = {}", pages + room),
                    [],
                    |r| r.get(0),
                )
                .map_err(pragma_error)?;
            assert_eq!(max, pages + room, "max_page_count was not set");
            Ok(())
        })
        .await
        .expect("cap the database");
}

async fn lift_cap(store: &Store) {
    store
        .call(|c| {
            c.query_row("PRAGMA max_page_count = 1000000000", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(pragma_error)
        })
        .await
        .expect("lift the cap");
}

/// A message job due in 2099 with a `size`-byte message.
fn big_job(key: &str, size: usize) -> NewJob {
    job_at(key, size, "2099-01-01T00:00:00Z")
}

/// A message job due at `at`, made as the daemon makes one from a request.
fn job_at(key: &str, size: usize, at: &str) -> NewJob {
    let job = json!({
        "kind": "message", "channel": "sms", "key": key, "scheduled_at": at,
        "payload": {"message": format!("{key}:{}", "x".repeat(size)), "phone": "+15550100"}
    });
    validate(&job, 0, &Default::default()).unwrap_or_else(|e| panic!("invalid test job: {e}"))
}

fn payload_of(job: &coax_scheduler::protocol::JobView) -> Value {
    serde_json::from_str(job.payload.get()).expect("the payload is JSON")
}

async fn total(store: &Store) -> u64 {
    store.stats().await.expect("stats").counts.values().sum()
}

fn assert_disk_full(e: &StoreError) {
    match e {
        StoreError::Unavailable { detail, .. } => {
            assert!(detail.contains("disk is full"), "{e}");
        }
        other => panic!("expected a storage failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_fails_the_whole_batch_keeps_earlier_jobs_and_recovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let store = open_store(&db);
    let early = store
        .enqueue(vec![big_job("early-1", 10), big_job("early-2", 10)])
        .await
        .expect("enqueue before the cap");

    cap_growth(&store, 12).await;
    let mut committed: Vec<(String, i64)> = Vec::new();
    let mut failure = None;
    for round in 0..100 {
        let keys: Vec<String> = (0..4).map(|i| format!("r{round}-{i}")).collect();
        let batch = keys.iter().map(|k| big_job(k, 5000)).collect();
        let before = total(&store).await;
        match store.enqueue(batch).await {
            Ok(done) => {
                assert_eq!(done.len(), 4);
                committed.extend(keys.into_iter().zip(done.iter().map(|e| e.id)));
            }
            Err(e) => {
                failure = Some((e, keys, before));
                break;
            }
        }
    }
    let (e, failed_keys, before) = failure.expect("the capped database never filled up");
    assert_disk_full(&e);
    assert!(
        e.to_string().contains("storage failure while"),
        "the message does not say what failed: {e}"
    );
    assert!(!committed.is_empty(), "not even one batch fitted");

    // Nothing of the failed batch was written, and everything before it is there.
    assert_eq!(
        total(&store).await,
        before,
        "the failed batch left jobs behind"
    );
    for key in &failed_keys {
        let found = store.get(Lookup::Key(key.clone())).await.expect("get");
        assert!(found.is_none(), "{key} of the failed batch was stored");
    }
    for (key, id) in &committed {
        let job = store.get(Lookup::Id(*id)).await.expect("get").expect("job");
        assert_eq!(job.key.as_deref(), Some(key.as_str()));
        assert_eq!(job.state, State::Scheduled);
        assert_eq!(
            payload_of(&job)["message"].as_str().map(str::len),
            Some(key.len() + 5001)
        );
    }
    for enqueued in &early {
        assert!(
            store
                .get(Lookup::Id(enqueued.id))
                .await
                .expect("get")
                .is_some()
        );
    }
    let on_disk = count_jobs(&reader(&db));
    assert_eq!(
        on_disk as u64, before,
        "what was committed is not what is on disk"
    );

    // With room again, the same batch goes in.
    lift_cap(&store).await;
    let again = store
        .enqueue(failed_keys.iter().map(|k| big_job(k, 5000)).collect())
        .await
        .expect("enqueue after the cap is lifted");
    assert!(again.iter().all(|e| !e.duplicate));
    assert_eq!(total(&store).await, before + 4);
    assert_eq!(count_jobs(&reader(&db)) as u64, before + 4);
}

/// Every caller told "done" finds its job on disk, and every caller told
/// "failed" does not, when the enqueues that fit and those that do not
/// share one group transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_database_fills_up_each_caller_is_told_the_truth_about_its_own_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let store = open_store(&db);
    store
        .enqueue(vec![big_job("warm-up", 10)])
        .await
        .expect("enqueue");
    cap_growth(&store, 16).await;

    // Hold the store thread so that all 96 calls wait, then share one group.
    let hold = Hold::start(&store).await;
    let keys: Vec<String> = (0..96).map(|i| format!("c-{i}")).collect();
    let mut calls: Vec<_> = keys
        .iter()
        .map(|key| Box::pin(store.enqueue(vec![big_job(key, 3000)])))
        .collect();
    for call in &mut calls {
        submit(call.as_mut()).await;
    }
    hold.release().await;
    let mut told_ok = Vec::new();
    let mut told_failed = Vec::new();
    for (key, call) in keys.into_iter().zip(calls) {
        match call.await {
            Ok(done) => told_ok.push((key, done[0].id)),
            Err(e) => {
                assert_disk_full(&e);
                told_failed.push(key);
            }
        }
    }
    assert!(!told_ok.is_empty(), "no enqueue fitted under the cap");
    assert!(!told_failed.is_empty(), "the database never filled up");

    let conn = reader(&db);
    let stored = |key: &str| -> Option<i64> {
        conn.query_row("SELECT id FROM jobs WHERE key = ?1", [key], |r| r.get(0))
            .ok()
    };
    for (key, id) in &told_ok {
        assert_eq!(
            stored(key),
            Some(*id),
            "{key} was acknowledged but is not on disk"
        );
    }
    let written_anyway: Vec<&String> = told_failed.iter().filter(|k| stored(k).is_some()).collect();
    assert!(
        written_anyway.is_empty(),
        "{} of {} callers told their enqueue failed had it stored anyway: {written_anyway:?}",
        written_anyway.len(),
        told_failed.len()
    );
    assert_eq!(count_jobs(&conn) as usize, told_ok.len() + 1);

    lift_cap(&store).await;
    let retried = store
        .enqueue(told_failed.iter().map(|k| big_job(k, 3000)).collect())
        .await
        .expect("enqueue after the cap is lifted");
    assert!(retried.iter().all(|e| !e.duplicate));
    assert_eq!(count_jobs(&conn), 97);
}

/// Keeps the store thread busy inside one call until released, so that the
/// calls submitted meanwhile are all taken into the next group together.
struct Hold {
    release: std::sync::mpsc::Sender<()>,
    call: JoinHandle<Result<(), StoreError>>,
}

impl Hold {
    /// Returns once the store thread is inside the holding call.
    async fn start(store: &Store) -> Hold {
        let (running, is_running) = oneshot::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let store = store.clone();
        let call = tokio::spawn(async move {
            store
                .call(move |_| {
                    let _ = running.send(());
                    let _ = released.recv_timeout(PATIENCE);
                    Ok(())
                })
                .await
        });
        is_running
            .await
            .expect("the store thread runs the holding call");
        Hold { release, call }
    }

    async fn release(self) {
        let _ = self.release.send(());
        self.call
            .await
            .expect("holding task")
            .expect("holding call");
    }
}

/// Polls `call` once: a store call hands its work to the store thread on its
/// first poll, so calls submitted one after another queue up in that order.
async fn submit<F: Future>(mut call: Pin<&mut F>) {
    std::future::poll_fn(|cx| {
        assert!(
            call.as_mut().poll(cx).is_pending(),
            "a call finished while the store thread was held"
        );
        Poll::Ready(())
    })
    .await;
}

/// A job due now, claimed, so that `finish` can record an answer for it.
async fn claimed_job(store: &Store) -> (i64, u32) {
    let job = job_at("claimed", 10, "2000-01-01T00:00:00Z");
    store.enqueue(vec![job]).await.expect("enqueue");
    let claimed = store.claim(i64::MAX / 2, 10).await.expect("claim");
    assert_eq!(claimed.jobs.len(), 1);
    (claimed.jobs[0].id, claimed.jobs[0].seq)
}

/// Coax answered with a body too large for the capped database (yet
/// within what a stored result may hold, so it is not cut short).
fn finish_with_huge_result(id: i64, seq: u32) -> Finish {
    Finish {
        id,
        seq,
        finished_at: 1,
        status: Some(200),
        error: None,
        ambiguous: false,
        latency_ms: 1,
        result: Some(json!({"status": 200, "message": "ok", "body": "r".repeat(15_000)})),
        decision: Decision::Sent,
    }
}

fn stored_key(db: &Path, key: &str) -> bool {
    reader(db)
        .query_row("SELECT 1 FROM jobs WHERE key = ?1", [key], |_| Ok(()))
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_grouped_after_a_full_database_failure_is_not_stored_if_told_it_failed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let store = open_store(&db);
    let (id, seq) = claimed_job(&store).await;
    cap_growth(&store, 2).await;

    let hold = Hold::start(&store).await;
    let mut finish = Box::pin(store.finish(finish_with_huge_result(id, seq)));
    let mut enqueue = Box::pin(store.enqueue(vec![big_job("after", 10)]));
    submit(finish.as_mut()).await;
    submit(enqueue.as_mut()).await;
    hold.release().await;

    let finished = finish.await;
    assert!(finished.is_err(), "the huge result fitted: {finished:?}");
    let enqueued = enqueue.await;
    let stored = stored_key(&db, "after");
    assert_eq!(
        enqueued.is_ok(),
        stored,
        "the enqueue was answered {enqueued:?}, but its job is {}on disk",
        if stored { "" } else { "not " }
    );
}

/// A statement-level SQLITE_FULL makes SQLite abandon the whole group
/// transaction, so a call that ran before it cannot be kept; what matters is
/// that its caller hears the truth and may simply try again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_grouped_before_a_full_database_failure_is_told_the_truth() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let store = open_store(&db);
    let (id, seq) = claimed_job(&store).await;
    cap_growth(&store, 2).await;

    let hold = Hold::start(&store).await;
    let mut enqueue = Box::pin(store.enqueue(vec![big_job("before", 10)]));
    let mut finish = Box::pin(store.finish(finish_with_huge_result(id, seq)));
    submit(enqueue.as_mut()).await;
    submit(finish.as_mut()).await;
    hold.release().await;

    let finished = finish.await;
    let reason = finished.expect_err("the huge result fitted").to_string();
    assert!(reason.contains("disk is full"), "{reason}");
    let enqueued = enqueue.await;
    let stored = stored_key(&db, "before");
    assert_eq!(
        enqueued.is_ok(),
        stored,
        "the enqueue was answered {enqueued:?}, but its job is {}on disk",
        if stored { "" } else { "not " }
    );
    if let Err(e) = &enqueued {
        assert!(e.to_string().contains("try again"), "{e}");
    }
    // Once space is back, the same job goes in.
    cap_growth(&store, 10_000).await;
    store
        .enqueue(vec![big_job("before", 10)])
        .await
        .expect("enqueue after space returned");
    assert!(stored_key(&db, "before"));
}

/// A daemon built here rather than by TestDaemon, so the test can reach its store.
struct OwnDaemon {
    _dir: TempDir,
    socket: PathBuf,
    store: Store,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl OwnDaemon {
    async fn start() -> OwnDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = load_config(dir.path());
        let socket = config.socket.path.clone();
        let daemon = Daemon::open(config.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let store = daemon.store();
        let listener =
            coax_scheduler::socket::bind(&socket, config.socket.mode).expect("socket binds");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(listener, async move {
            let _ = stopped.await;
        }));
        OwnDaemon {
            _dir: dir,
            socket,
            store,
            stop,
            task,
        }
    }

    async fn request(&self, request: Value) -> Value {
        request_at(&self.socket, request).await
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("daemon task")
            .expect("daemon ran cleanly");
        coax_scheduler::socket::remove(&self.socket);
    }
}

fn socket_job(key: &str, size: usize) -> Value {
    json!({"op": "enqueue", "job": {
        "kind": "message", "channel": "sms", "key": key,
        "scheduled_at": "2099-01-01T00:00:00Z",
        "payload": {"message": "y".repeat(size), "phone": "+15550100"}
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_database_answers_internal_and_the_daemon_keeps_serving() {
    let daemon = OwnDaemon::start().await;
    let first = daemon.request(socket_job("before", 100)).await;
    assert_eq!(first["ok"], true, "{first}");

    cap_growth(&daemon.store, 4).await;
    let answer = daemon.request(socket_job("too-big", 60_000)).await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"]["code"], "internal", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("disk is full"), "{answer}");
    assert!(
        !message.contains(TEST_KEY),
        "the error leaks the API key: {answer}"
    );

    let ping = daemon.request(json!({"op": "ping"})).await;
    assert_eq!(ping["ok"], true, "{ping}");
    let got = daemon
        .request(json!({"op": "get", "id": first["id"]}))
        .await;
    assert_eq!(got["job"]["key"], "before", "{got}");
    let missing = daemon.request(json!({"op": "get", "key": "too-big"})).await;
    assert_eq!(missing["ok"], false, "the failed job was stored: {missing}");
    assert_eq!(missing["error"]["code"], "not_found", "{missing}");

    lift_cap(&daemon.store).await;
    let answer = daemon.request(socket_job("too-big", 60_000)).await;
    assert_eq!(answer["ok"], true, "the enqueue still fails: {answer}");
    assert_eq!(answer["duplicate"], false, "{answer}");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// Group commit
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_enqueues_each_get_their_own_durable_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let store = open_store(&db);

    let mut tasks = JoinSet::new();
    for i in 0..500 {
        let store = store.clone();
        tasks.spawn(async move {
            let key = format!("g-{i}");
            let done = store
                .enqueue(vec![big_job(&key, i)])
                .await
                .unwrap_or_else(|e| panic!("enqueue {key}: {e}"));
            (i, done)
        });
    }
    let mut ids = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, done) = joined.expect("task");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].state, State::Scheduled);
        assert!(!done[0].duplicate, "job {i} was taken for a duplicate");
        ids.push((i, done[0].id));
    }
    let distinct: HashSet<i64> = ids.iter().map(|(_, id)| *id).collect();
    assert_eq!(distinct.len(), 500, "ids were shared");

    for (i, id) in &ids {
        let job = store
            .get(Lookup::Id(*id))
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("job {id} is missing"));
        let key = format!("g-{i}");
        assert_eq!(job.key.as_deref(), Some(key.as_str()));
        assert_eq!(
            payload_of(&job)["message"],
            json!(format!("{key}:{}", "x".repeat(*i)))
        );
    }
    let conn = reader(&db);
    assert_eq!(
        count_jobs(&conn),
        500,
        "not everything acknowledged is on disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_of_one_key_make_one_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(&dir.path().join("queue.db"));

    let mut tasks = JoinSet::new();
    for _ in 0..50 {
        let store = store.clone();
        tasks.spawn(async move { store.enqueue(vec![big_job("same", 10)]).await });
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        answers.push(joined.expect("task").expect("enqueue")[0].clone());
    }
    let fresh = answers.iter().filter(|e| !e.duplicate).count();
    assert_eq!(fresh, 1, "{answers:?}");
    let ids: HashSet<i64> = answers.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(total(&store).await, 1);
}

// ---------------------------------------------------------------------------
// Pruning
// ---------------------------------------------------------------------------

/// Gives each job (id, state, at) that state, an `updated_at` of `at` and
/// one attempt, as if it had been through delivery; all in one call.
async fn age_jobs(store: &Store, jobs: Vec<(i64, &'static str, i64)>) {
    store
        .call(move |c| {
            for (id, state, at) in jobs {
                c.execute(
                    "UPDATE jobs SET state = ?2, updated_at = ?3 WHERE id = ?1",
                    rusqlite::params![id, state, at],
                )
                .map_err(pragma_error)?;
                c.execute(
                    "INSERT INTO attempts (job_id, seq, started_at) VALUES (?1, 1, ?2)",
                    rusqlite::params![id, at],
                )
                .map_err(pragma_error)?;
            }
            Ok(())
        })
        .await
        .expect("age the jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_of_many_steps_removes_exactly_the_old_finished_jobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let store = open_store(&db);
    let mut ids = Vec::new();
    for chunk in 0..5 {
        let jobs = (0..700)
            .map(|i| big_job(&format!("p{chunk}-{i}"), 10))
            .collect();
        ids.extend(
            store
                .enqueue(jobs)
                .await
                .expect("enqueue")
                .iter()
                .map(|e| e.id),
        );
    }
    // Every finished state, old and recent, interleaved with jobs that must
    // stay whatever their age, across more ids than one batch covers.
    let (old, recent, before) = (1_000, 3_000, 2_000);
    let mut doomed = HashSet::new();
    let mut aged = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let (state, at) = match i % 7 {
            0 => ("sent", old),
            1 => ("failed", old),
            2 => ("skipped", old),
            3 => ("cancelled", old),
            4 => ("expired", old),
            5 => ("sent", recent),
            _ => ("held", old),
        };
        if at == old && state != "held" {
            doomed.insert(id);
        }
        aged.push((id, state, at));
    }
    age_jobs(&store, aged).await;

    let dry = store.prune(before, true).await.expect("dry run");
    assert_eq!(dry.jobs, doomed.len() as u64);
    assert_eq!(dry.attempts, doomed.len() as u64);
    assert_eq!(
        total(&store).await,
        ids.len() as u64,
        "a dry run removed jobs"
    );

    let pruned = store.prune(before, false).await.expect("prune");
    assert_eq!(pruned, dry);
    let conn = reader(&db);
    let left: HashSet<i64> = conn
        .prepare("SELECT id FROM jobs")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("read the jobs left");
    let kept: HashSet<i64> = ids
        .iter()
        .copied()
        .filter(|id| !doomed.contains(id))
        .collect();
    assert_eq!(left, kept);
    let orphans: i64 = conn
        .query_row(
            "SELECT count(*) FROM attempts WHERE job_id NOT IN (SELECT id FROM jobs)",
            [],
            |r| r.get(0),
        )
        .expect("count orphaned attempts");
    assert_eq!(orphans, 0);
    assert_eq!(total(&store).await, kept.len() as u64);
    assert_eq!(
        store.prune(before, false).await.expect("prune again").jobs,
        0
    );
}
