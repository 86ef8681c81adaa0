//! Two changes on PostgreSQL at once that deadlocked where SQLite does
//! one after the other: each test lines them up with an outside lock, so
//! that the deadlock came every time.

use super::{T, node, on_postgres_config, outside};
use crate::helpers::backend::new_database;
use crate::helpers::daemon::TestDaemon;
use coax_scheduler::window::Calendar;
use serde_json::json;
use tokio_postgres::Client;

/// Inserts one job in `state` following `parent`, with `tags`; its id.
async fn insert_tagged(client: &Client, state: &str, parent: Option<i64>, tags: &[&str]) -> i64 {
    let id: i64 = client
        .query_one(
            "INSERT INTO jobs (kind, channel, scheduled_at, state, created_at, updated_at,
                               payload, due_at, parent_id, tags)
             VALUES ('message', 'sms', $1, $2, $1, $1, '{\"message\":\"hi\",\"phone\":\"+15550100\"}',
                     $1, $3, $4)
             RETURNING id",
            &[&T, &state, &parent, &serde_json::to_string(tags).expect("tags")],
        )
        .await
        .expect("insert a job")
        .get(0);
    for tag in tags {
        client
            .execute(
                "INSERT INTO job_tags (tag, job_id) VALUES ($1, $2)",
                &[tag, &id],
            )
            .await
            .expect("tag the job");
    }
    id
}

/// Waits until `n` sessions of this database wait for a row lock.
async fn lock_waiters(client: &Client, n: i64) {
    crate::helpers::wait_until(
        "sessions waiting for a lock",
        crate::helpers::PATIENCE,
        || async {
            let waiting: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            (waiting >= n).then_some(())
        },
    )
    .await;
}

/// Two `cancel` by tag at once whose jobs overlap through a follow-up
/// (job A tagged x is followed by C tagged y; E has both tags) both
/// succeed, as on SQLite: neither is chosen as a deadlock's victim and
/// answered `internal`. An outside lock on E lines them up the way that
/// deadlocked: x's cancel took A and waited for E, y's took C and waited
/// for E, and x's, once it had E, waited for C to cancel A's follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_cancel_by_tags_overlapping_through_a_follower_do_not_deadlock() {
    let url = new_database().await;
    let queue = node(&url, "node-a").await;
    let dba = outside(&url).await;
    let a = insert_tagged(&dba, "scheduled", None, &["x"]).await;
    let c = insert_tagged(&dba, "waiting", Some(a), &["y"]).await;
    let e = insert_tagged(&dba, "scheduled", None, &["x", "y"]).await;
    let mut holder = outside(&url).await;
    let hold = holder.transaction().await.expect("begin");
    hold.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&e])
        .await
        .expect("lock E");
    let calendar = Calendar::none();
    let cancel = |tag: &'static str| {
        let (queue, calendar) = (queue.clone(), calendar.clone());
        tokio::spawn(async move { queue.cancel_tag(&calendar, tag.to_owned(), T).await })
    };
    let x = cancel("x");
    lock_waiters(&dba, 1).await;
    let y = cancel("y");
    lock_waiters(&dba, 2).await;
    hold.commit().await.expect("release E");
    let (x, y) = (x.await.expect("x"), y.await.expect("y"));
    let (x, y) = (
        x.unwrap_or_else(|e| panic!("cancel x: {e}")),
        y.unwrap_or_else(|e| panic!("cancel y: {e}")),
    );
    assert_eq!(x.0 + x.1 + y.0 + y.1, 3, "x {x:?}, y {y:?}");
    let cancelled: i64 = dba
        .query_one(
            "SELECT count(*) FROM jobs WHERE id = ANY($1) AND state = 'cancelled'",
            &[&vec![a, c, e]],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(cancelled, 3);
}

/// Two batches naming the same keys in opposite orders, enqueued at once,
/// both succeed, as on SQLite: neither is a deadlock's victim answered
/// `internal`. An outside insert of key x, not yet committed, lines them
/// up the way that deadlocked: [a, x, b] stored a and waited for x,
/// [b, a] stored b and waited for a; once x was free, the first waited
/// for b.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_batches_with_keys_in_opposite_orders_do_not_deadlock() {
    let (password, config) = on_postgres_config().await;
    let url = std::fs::read_to_string(password.path().join("postgres-url")).expect("url");
    let daemon = TestDaemon::start_with(&config).await;
    let dba = outside(&url).await;
    let mut holder = outside(&url).await;
    let hold = holder.transaction().await.expect("begin");
    hold.execute(
        "INSERT INTO jobs (key, kind, channel, scheduled_at, state, created_at, updated_at,
                           payload, due_at)
         VALUES ('x', 'message', 'sms', $1, 'scheduled', $1, $1, '{}', $1)",
        &[&T],
    )
    .await
    .expect("hold key x");
    let job = |key: &str| {
        json!({"kind": "message", "channel": "sms", "scheduled_at": "2099-06-01T12:00:00Z",
               "key": key, "payload": {"message": "hi", "phone": "+15550100"}})
    };
    let send = |keys: &[&str]| {
        let request =
            json!({"op": "enqueue", "jobs": keys.iter().map(|k| job(k)).collect::<Vec<_>>()});
        let socket = daemon.socket.clone();
        tokio::spawn(async move { crate::helpers::daemon::request_at(&socket, request).await })
    };
    let first = send(&["a", "x", "b"]);
    lock_waiters(&dba, 1).await;
    let second = send(&["b", "a"]);
    lock_waiters(&dba, 2).await;
    hold.rollback().await.expect("let x go");
    let (first, second) = (first.await.expect("first"), second.await.expect("second"));
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(second["ok"], true, "{second}");
    let keys: i64 = dba
        .query_one(
            "SELECT count(*) FROM jobs WHERE key IN ('a', 'b', 'x')",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(keys, 3);
}
