//! The store's SQL on a real database file, below the store thread.

use super::queries::{self, PruneCursor};
use super::schema;
use crate::job::validate;
use rusqlite::Connection;
use serde_json::json;

fn queue() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = schema::open(&dir.path().join("queue.db")).expect("open the queue");
    (dir, conn)
}

/// Enqueues `n` jobs and gives them `state` and an `updated_at` of `at`.
fn jobs(conn: &Connection, prefix: &str, n: usize, state: &str, at: i64) {
    let new: Vec<_> = (0..n)
        .map(|i| {
            let job = json!({
                "kind": "message", "channel": "sms", "key": format!("{prefix}-{i}"),
                "scheduled_at": "2030-01-01T00:00:00Z",
                "payload": {"message": "hi", "phone": "+15550100"}
            });
            validate(&job, 0, &crate::job::Rules::default()).expect("a valid job")
        })
        .collect();
    queries::enqueue(conn, &new, 0).expect("enqueue");
    conn.execute(
        "UPDATE jobs SET state = ?1, updated_at = ?2 WHERE key LIKE ?3 || '-%'",
        rusqlite::params![state, at, prefix],
    )
    .expect("set the state");
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

#[test]
fn a_prune_step_examines_at_most_its_limit_and_the_next_resumes() {
    let (_dir, conn) = queue();
    // All due at the same instant, so the cursor must use the id too.
    jobs(&conn, "old-sent", 25, "sent", 10);
    jobs(&conn, "new-sent", 7, "sent", 5_000);
    jobs(&conn, "old-failed", 3, "failed", 10);
    jobs(&conn, "old-scheduled", 10, "scheduled", 10);

    let mut from = Some(PruneCursor::START);
    let mut steps = Vec::new();
    while let Some(cursor) = from {
        let step = queries::prune_step(&conn, 1_000, cursor, 10).expect("a prune step");
        assert!(step.pruned.jobs <= 10, "{step:?}");
        steps.push(step.pruned.jobs);
        from = step.next;
        assert!(steps.len() < 100, "the prune does not end: {steps:?}");
    }
    // sent: 32 examined in steps of 10 (the last finds the state done);
    // then skipped, failed, expired and cancelled one step each.
    assert_eq!(steps, [10, 10, 5, 0, 0, 3, 0, 0]);
    assert_eq!(count(&conn, "SELECT count(*) FROM jobs"), 17);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM jobs WHERE key LIKE 'old-sent-%' OR key LIKE 'old-failed-%'"
        ),
        0
    );
}

#[test]
fn a_prune_step_seeks_in_the_state_index() {
    let (_dir, conn) = queue();
    let plan = |sql: &str| -> String {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .and_then(|mut s| {
                s.query_map(rusqlite::params![0, "sent", 0, 0, 10], |r| {
                    r.get::<_, String>(3)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .expect("explain")
            .join("; ")
    };
    let [same_instant, later] = queries::PRUNE_STEP_SQL.map(plan);
    assert_eq!(
        same_instant,
        "SEARCH jobs USING INDEX jobs_by_state_due (state=? AND scheduled_at=? AND id>?)"
    );
    assert_eq!(
        later,
        "SEARCH jobs USING INDEX jobs_by_state_due (state=? AND scheduled_at>?)"
    );
}
