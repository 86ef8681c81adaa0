//! Hostile tests of the daemon on PostgreSQL: rows a DBA wrote by hand
//! into the tables the nodes share, and clients racing the dispatcher.
//!
//! Each test named after a defect failed before its fix; the others pin
//! behaviour that an attack did not break.

use crate::helpers::backend::{adopt, new_database, on_postgres};
use crate::helpers::daemon::{TestDaemon, config_text};
use crate::helpers::postgres::PASSWORD;
use coax_scheduler::config::{Config, OnAmbiguous, PostgresConfig, RateLimit};
use coax_scheduler::job::State;
use coax_scheduler::store::Options;
use coax_scheduler::store::postgres::{Queue, connect};
use coax_scheduler::window::Calendar;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

mod deadlocks;
mod differential;

/// A moment the queues are opened at.
const T: i64 = 1_900_000_000_000;

/// The store config for the database at `url`.
fn config(url: &str) -> PostgresConfig {
    let text = format!(
        "[coax]\nbase_url = \"http://127.0.0.1:9\"\n\n[store]\nbackend = \"postgres\"\n\
         url = \"{url}\"\n\n[socket]\npath = \"coax.sock\"\n"
    );
    let env = |name: &str| match name {
        "COAX_API_KEY" => Some("ck_test_key".to_owned()),
        "COAX_SCHEDULER_DB_PASSWORD" => Some(PASSWORD.to_owned()),
        _ => None,
    };
    let config = Config::from_toml(
        &text,
        std::path::Path::new("/nonexistent/config.toml"),
        &env,
    )
    .unwrap_or_else(|e| panic!("config: {e}"));
    config.store.postgres.expect("a postgres store config")
}

/// A queue as node `name` on the database at `url`.
async fn node(url: &str, name: &str) -> Queue {
    let options = Options {
        path: "unused".into(),
        on_ambiguous: OnAmbiguous::Hold,
        max_attempts: 5,
        calendar: Arc::new(Calendar::none()),
        node: name.to_owned(),
    };
    let (queue, _) = Queue::open(config(url), &options, T)
        .await
        .unwrap_or_else(|e| panic!("open node {name}: {e}"));
    queue
}

/// A connection from outside the daemon, as a DBA's.
async fn outside(url: &str) -> Client {
    connect(&config(url)).await.expect("connects")
}

fn rate(text: &str) -> RateLimit {
    RateLimit::parse(text).expect("a rate")
}

/// A `pauses` row edited to end in the year 9999 pauses the nodes for at
/// most `dispatch.max_pause`: it is cut to it, so it does not pause them
/// again once that is over.
#[tokio::test]
async fn pg_hand_edited_pause_in_year_9999_ends_after_max_pause() {
    let url = new_database().await;
    let queue = node(&url, "node-a").await;
    let dba = outside(&url).await;
    dba.execute(
        "INSERT INTO pauses (kind, until_at, reason, node)
         VALUES ('rate_limit', 253402300799000, 'by hand', NULL)",
        &[],
    )
    .await
    .expect("insert the pause");
    let longest = Duration::from_millis(1500);
    let allowance = queue.allowance(4, None, longest).await.expect("allowance");
    let pause = allowance.pause.expect("the pause is in force");
    assert!(pause.left <= longest, "{pause:?}");
    assert_eq!(allowance.count, 0);
    let ends: i64 = dba
        .query_one("SELECT until_at FROM pauses", &[])
        .await
        .expect("the pause")
        .get(0);
    assert!(ends < 253402300799000, "the row was not cut: {ends}");
    crate::helpers::wait_until("the pause is over", crate::helpers::PATIENCE, || async {
        let a = queue.allowance(4, None, longest).await.expect("allowance");
        (a.pause.is_none() && a.count == 4).then_some(())
    })
    .await;
}

/// A `rate_tokens_milli` row edited to a huge negative number does not
/// stop every node from sending for ever: the bucket fills from empty.
#[tokio::test]
async fn pg_negative_shared_rate_bucket_does_not_stop_sending() {
    let url = new_database().await;
    let queue = node(&url, "node-a").await;
    let dba = outside(&url).await;
    dba.execute(
        "INSERT INTO meta (name, value) VALUES
             ('rate_tokens_milli', -9000000000000000000),
             ('rate_at', (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 10000)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        &[],
    )
    .await
    .expect("edit the bucket");
    let allowance = queue
        .allowance(1, Some(rate("10/s")), Duration::from_secs(60))
        .await
        .expect("allowance");
    assert_eq!(allowance.count, 1, "{allowance:?}");
}

/// Garbage in the bucket's time (far past, far future) neither panics nor
/// stops sending for long.
#[tokio::test]
async fn pg_garbage_shared_rate_time_is_survived() {
    let url = new_database().await;
    let queue = node(&url, "node-a").await;
    let dba = outside(&url).await;
    for (milli, at) in [
        (i64::MAX, i64::MIN),
        (i64::MIN, i64::MAX),
        (0, i64::MAX),
        (i64::MAX, i64::MAX),
    ] {
        dba.execute(
            "INSERT INTO meta (name, value) VALUES ('rate_tokens_milli', $1), ('rate_at', $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&milli, &at],
        )
        .await
        .expect("edit the bucket");
        let allowance = queue
            .allowance(1, Some(rate("1000/s")), Duration::from_secs(60))
            .await
            .expect("allowance");
        if allowance.count == 0 {
            let retry = allowance.retry_in.expect("when to ask again");
            assert!(
                retry <= Duration::from_secs(1),
                "{milli} {at}: {allowance:?}"
            );
        }
    }
}

/// Inserts `n` jobs in `state`, as another node's enqueue would.
async fn insert(client: &Client, n: i64, state: &str) {
    client
        .execute(
            "INSERT INTO jobs (kind, channel, scheduled_at, state, created_at, updated_at,
                               payload, due_at)
             SELECT 'message', 'sms', $2, $3, $2, $2, '{\"message\":\"hi\"}', $2
             FROM generate_series(1::bigint, $1)",
            &[&n, &T, &state],
        )
        .await
        .expect("insert jobs");
}

/// A row of `job_counts` edited by hand is put right when a node starts,
/// as SQLite's start-up recounts `state_counts`: `stats` then agrees with
/// `SELECT state, count(*) FROM jobs GROUP BY state`.
#[tokio::test]
async fn pg_hand_edited_job_counts_are_recounted_at_start_up() {
    let url = new_database().await;
    let first = node(&url, "node-a").await;
    let dba = outside(&url).await;
    insert(&dba, 3, "scheduled").await;
    insert(&dba, 2, "failed").await;
    dba.batch_execute(
        "INSERT INTO job_counts (state, deferred, n) VALUES ('scheduled', false, 1000),
             ('failed', false, -2), ('sent', false, 7), ('scheduled', true, 4)",
    )
    .await
    .expect("edit the counts");
    let wrong = first.summary(T).await.expect("summary");
    assert_eq!(
        wrong.counts[&State::Scheduled],
        1007,
        "the edit shows until a start"
    );
    let (second, opened) = Queue::open(
        config(&url),
        &Options {
            path: "unused".into(),
            on_ambiguous: OnAmbiguous::Hold,
            max_attempts: 5,
            calendar: Arc::new(Calendar::none()),
            node: "node-b".to_owned(),
        },
        T,
    )
    .await
    .expect("open node-b");
    let mut recounted: Vec<(String, i64, i64)> = opened
        .recounted
        .iter()
        .map(|r| (r.state.clone(), r.kept, r.counted))
        .collect();
    recounted.sort();
    assert_eq!(
        recounted,
        vec![
            ("failed".to_owned(), 0, 2),
            ("scheduled".to_owned(), 1007, 3),
            ("sent".to_owned(), 7, 0),
        ]
    );
    for queue in [&first, &second] {
        let summary = queue.summary(T).await.expect("summary");
        assert_eq!(summary.counts[&State::Scheduled], 3);
        assert_eq!(summary.counts[&State::Failed], 2);
        assert_eq!(summary.counts[&State::Sent], 0);
        assert_eq!(summary.deferred, 0);
    }
}

/// Enqueueing a key that is taken (alone, or twice in one batch) uses up
/// no id on PostgreSQL, as on SQLite: the next new job's id follows on.
#[tokio::test]
async fn pg_duplicate_key_does_not_use_up_an_id() {
    let (_password, config) = on_postgres_config().await;
    let daemon = TestDaemon::start_with(&config).await;
    let job = |key: &str| {
        json!({"kind": "message", "channel": "sms", "scheduled_at": "2099-06-01T12:00:00Z",
               "key": key, "payload": {"message": "hi", "phone": "+15550100"}})
    };
    let first = daemon
        .request(json!({"op": "enqueue", "job": job("k")}))
        .await;
    assert_eq!(first["id"], 1, "{first}");
    for _ in 0..3 {
        let again = daemon
            .request(json!({"op": "enqueue", "job": job("k")}))
            .await;
        assert_eq!(again["duplicate"], true, "{again}");
    }
    let batch = daemon
        .request(json!({"op": "enqueue", "jobs": [job("k"), job("m"), job("m")]}))
        .await;
    let ids: Vec<&Value> = batch["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, [&json!(1), &json!(2), &json!(2)], "{batch}");
    let next = daemon
        .request(json!({"op": "enqueue", "job": job("n")}))
        .await;
    assert_eq!(next["id"], 3, "{next}");
}

/// The test daemon's config on a new PostgreSQL database, whichever
/// backend this test process runs on, and the dir holding its password
/// file (keep it while the daemon runs).
async fn on_postgres_config() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    adopt(dir.path(), &new_database().await);
    let text = on_postgres(&config_text("http://127.0.0.1:9", "", ""), dir.path());
    (dir, text)
}

/// Rows a DBA wrote by hand, each bad in its own way, neither panic the
/// daemon nor stop it: `get`, `list` and `stats` answer, the rows that
/// cannot be sent are set aside, and a good job enqueued beside them is
/// sent.
#[tokio::test]
async fn pg_hand_written_bad_rows_stop_nothing() {
    let coax = crate::helpers::coax::CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = new_database().await;
    adopt(dir.path(), &url);
    let config = on_postgres(&config_text(&coax.base_url(), "", ""), dir.path());
    let daemon = TestDaemon::start_with(&config).await;
    let dba = outside(&url).await;
    let huge = "e".repeat(5 << 20);
    let rows: [(&str, &str, i64, Option<&str>, &str); 6] = [
        ("message", "scheduled", 0, None, "not json"),
        ("message", "scheduled", 0, None, "[1,2]"),
        (
            "message",
            "bogus",
            0,
            None,
            "{\"message\":\"hi\",\"phone\":\"+15550100\"}",
        ),
        (
            "message",
            "scheduled",
            -5,
            None,
            "{\"message\":\"hi\",\"phone\":\"+15550100\"}",
        ),
        (
            "zzz",
            "scheduled",
            0,
            None,
            "{\"message\":\"hi\",\"phone\":\"+15550100\"}",
        ),
        (
            "message",
            "failed",
            3,
            Some(&huge),
            "{\"message\":\"hi\",\"phone\":\"+15550100\"}",
        ),
    ];
    let mut ids = Vec::new();
    for (kind, state, attempts, last_error, payload) in rows {
        let id: i64 = dba
            .query_one(
                "INSERT INTO jobs (kind, channel, scheduled_at, state, attempts, created_at,
                                   updated_at, payload, due_at, last_error, timezone,
                                   send_window, result)
                 VALUES ($1, 'sms', 0, $2, $3, 0, 0, $4, 0, $5, 'Mars/Olympus', 'nope',
                         'not json either')
                 RETURNING id",
                &[&kind, &state, &attempts, &payload, &last_error],
            )
            .await
            .expect("insert a bad row")
            .get(0);
        ids.push(id);
    }
    let good = daemon
        .enqueue(json!({"kind": "message", "channel": "sms",
                        "payload": {"message": "hi", "phone": "+15550100"}}))
        .await;
    daemon.wait_for_state(good, "sent").await;
    for id in &ids {
        let answer = daemon.request(json!({"op": "get", "id": id})).await;
        assert_eq!(answer["ok"], true, "{id}: {}", answer.to_string().len());
        assert!(
            answer.to_string().len() < 1 << 20,
            "{id}: a view is bounded"
        );
    }
    for order in ["due", "recent"] {
        let answer = daemon
            .request(json!({"op": "list", "order": order, "limit": 10000}))
            .await;
        assert_eq!(answer["ok"], true, "{order}");
        assert_eq!(answer["jobs"].as_array().map(Vec::len), Some(ids.len() + 1));
    }
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "{stats}");
    assert_eq!(stats["counts"]["sent"], 1, "{stats}");
    let requeue = daemon.request(json!({"op": "requeue", "id": ids[5]})).await;
    assert_eq!(requeue["ok"], true, "{}", requeue.to_string().len());
}
