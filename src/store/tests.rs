//! The store's SQL on a real database file, below the store thread.

use super::queries;
use super::walk::{self, Cursor};
use super::{listing, schema};
use crate::job::validate;
use crate::protocol::ListOrder;
use crate::window::Calendar;
use rusqlite::Connection;
use rusqlite::params;
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
                "scheduled_at": "2030-01-01T00:00:00Z", "tags": [prefix, "every"],
                "payload": {"message": "hi", "phone": "+15550100"}
            });
            validate(&job, 0, &crate::job::Rules::default()).expect("a valid job")
        })
        .collect();
    queries::enqueue(conn, &Calendar::none(), &new, 0).expect("enqueue");
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

    let mut from = Some(Cursor::START);
    let mut steps = Vec::new();
    while let Some(cursor) = from {
        let step = queries::prune_step(&conn, 1_000, cursor, 10, false).expect("a prune step");
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

/// A dry run used to count every finished job and join every attempt in
/// one statement, which on a large queue held the store thread far past
/// the 50 ms any one call may take. It now walks the same bounded steps as
/// a prune, and must count exactly what the prune then removes.
#[test]
fn a_dry_run_prune_counts_in_bounded_steps_what_a_prune_removes() {
    let (_dir, conn) = queue();
    jobs(&conn, "old-sent", 25, "sent", 10);
    jobs(&conn, "new-sent", 7, "sent", 5_000);
    jobs(&conn, "old-failed", 3, "failed", 10);
    jobs(&conn, "old-scheduled", 10, "scheduled", 10);
    conn.execute_batch(
        "INSERT INTO attempts (job_id, seq, started_at) SELECT id, 1, 0 FROM jobs;
         INSERT INTO attempts (job_id, seq, started_at)
             SELECT id, 2, 0 FROM jobs WHERE key LIKE 'old-failed-%';",
    )
    .expect("attempts");
    let walk = |dry_run: bool| {
        let mut total = queries::Pruned::default();
        let mut from = Some(Cursor::START);
        while let Some(cursor) = from {
            let step =
                queries::prune_step(&conn, 1_000, cursor, 10, dry_run).expect("a prune step");
            assert!(step.pruned.jobs <= 10, "{step:?}");
            total.jobs += step.pruned.jobs;
            total.attempts += step.pruned.attempts;
            from = step.next;
        }
        total
    };
    let counted = walk(true);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM jobs"),
        45,
        "a dry run removes nothing"
    );
    assert_eq!((counted.jobs, counted.attempts), (28, 31));
    let removed = walk(false);
    assert_eq!(counted, removed);
    assert_eq!(count(&conn, "SELECT count(*) FROM jobs"), 17);
}

#[test]
fn a_prune_step_seeks_in_the_state_index() {
    let (_dir, conn) = queue();
    let plan = |sql: &str| -> String {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .and_then(|mut s| {
                s.query_map(rusqlite::params!["sent", 0, 0, 10, 0], |r| {
                    r.get::<_, String>(3)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .expect("explain")
            .join("; ")
    };
    let [same_instant, later] = walk::SEEKS.map(|seek| {
        plan(&format!(
            "SELECT {} FROM jobs {seek}",
            super::prune::PRUNE_COLUMNS
        ))
    });
    assert_eq!(
        same_instant,
        "SEARCH jobs USING INDEX jobs_by_state_due (state=? AND due_at=? AND id>?)"
    );
    assert_eq!(
        later,
        "SEARCH jobs USING INDEX jobs_by_state_due (state=? AND due_at>?)"
    );
}

/// One step of a list of every state, at time 0, under no windows.
fn step_all(
    conn: &Connection,
    from: crate::protocol::ListCursor,
    rows: usize,
    budget: usize,
    first: bool,
) -> listing::ListStep {
    let every = listing::Filter {
        state: None,
        due_before: None,
        tag: None,
    };
    listing::step(conn, &Calendar::none(), every, from, rows, budget, first, 0).expect("step")
}

/// The plan of `sql` run with `args`, one line per step.
fn plan_of(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> String {
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .and_then(|mut s| {
            s.query_map(args, |r| r.get::<_, String>(3))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .expect("explain")
        .join("; ")
}

#[test]
fn every_list_query_seeks_in_an_index_and_sorts_nothing() {
    let (_dir, conn) = queue();
    let [[due_same, due_later], [recent_same, recent_earlier]] =
        listing::POSITION_SQL.map(|pair| pair.map(|sql| plan_of(&conn, sql, params![0, 0, 0, 10])));
    assert_eq!(
        due_same,
        "SEARCH jobs USING COVERING INDEX jobs_by_state_due (state=? AND due_at=? AND id>?)"
    );
    assert_eq!(
        due_later,
        "SEARCH jobs USING COVERING INDEX jobs_by_state_due (state=? AND due_at>?)"
    );
    assert_eq!(
        recent_same,
        "SEARCH jobs USING COVERING INDEX jobs_by_state_updated (state=? AND updated_at=? AND id<?)"
    );
    assert_eq!(
        recent_earlier,
        "SEARCH jobs USING COVERING INDEX jobs_by_state_updated (state=? AND updated_at<?)"
    );
    let [due_unplaced, recent_unplaced] =
        listing::UNPLACED_SQL.map(|sql| plan_of(&conn, sql, params!["sent", 10]));
    assert_eq!(
        due_unplaced,
        "SEARCH jobs USING COVERING INDEX jobs_by_state_due (state=? AND due_at>?)"
    );
    assert_eq!(
        recent_unplaced,
        "SEARCH jobs USING COVERING INDEX jobs_by_state_updated (state=? AND updated_at>?)"
    );
}

#[test]
fn list_steps_merge_every_state_and_page_through_each_job_once() {
    let (_dir, conn) = queue();
    // Every job due at the same instant, so positions tie on time.
    jobs(&conn, "s", 7, "scheduled", 30);
    jobs(&conn, "f", 5, "failed", 10);
    jobs(&conn, "c", 4, "cancelled", 20);
    for order in [ListOrder::Due, ListOrder::Recent] {
        let mut seen = Vec::new();
        let mut from = listing::start(order);
        loop {
            let step = step_all(&conn, from, 3, usize::MAX, seen.is_empty());
            assert!(step.jobs.len() <= 3);
            seen.extend(step.jobs.iter().map(|j| (j.id, j.updated_at.clone())));
            from = step.last;
            if step.end {
                break;
            }
            assert!(seen.len() <= 16, "the list does not end: {seen:?}");
        }
        let mut ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
        let mut expected = ids.clone();
        match order {
            // Due: all at one instant, so by id.
            ListOrder::Due => expected.sort_unstable(),
            // Recent: scheduled (30), cancelled (20), failed (10), each by id descending.
            ListOrder::Recent => {
                expected.sort_unstable_by_key(|id| {
                    let at = seen.iter().find(|(i, _)| i == id).map(|(_, at)| at.clone());
                    (std::cmp::Reverse(at), std::cmp::Reverse(*id))
                });
            }
        }
        assert_eq!(ids, expected, "{order:?}");
        ids.dedup();
        assert_eq!(ids.len(), 16, "{order:?}: every job once");
    }
}

#[test]
fn a_list_step_stops_at_its_byte_budget_but_always_takes_a_first_job() {
    let (_dir, conn) = queue();
    jobs(&conn, "s", 4, "scheduled", 30);
    let from = listing::start(ListOrder::Due);
    let one = step_all(&conn, from, 10, usize::MAX, true);
    let size = serde_json::to_string(&one.jobs[0]).expect("json").len();

    let step = step_all(&conn, from, 10, size * 2 + 1, true);
    assert_eq!(step.jobs.len(), 2);
    assert!(step.full && !step.end);
    assert_eq!(step.last.id, step.jobs[1].id);

    // A first job larger than the whole budget comes without its payload.
    let step = step_all(&conn, from, 10, 10, true);
    assert_eq!(step.jobs.len(), 1);
    assert_eq!(step.jobs[0].payload.get(), "null");
    assert!(step.jobs[0].payload_omitted.is_some());
    // Later in an answer, a job that does not fit waits for the next page.
    let step = step_all(&conn, from, 10, 10, false);
    assert!(step.jobs.is_empty() && step.full);
    assert_eq!(step.last, from);
}

#[test]
fn coax_words_of_any_size_are_stored_bounded() {
    use super::delivery::{self, Finish};
    use super::view::{MAX_RESULT_BYTES, MAX_TEXT_BYTES};
    use crate::policy::Decision;
    let (_dir, conn) = queue();
    jobs(&conn, "big", 1, "scheduled", 0);
    conn.execute("UPDATE jobs SET scheduled_at = 0, due_at = 0", [])
        .expect("due now");
    let claimed = delivery::claim(&conn, &Calendar::none(), "test", 1, 1).expect("claim");
    let job = &claimed.jobs[0];
    let mib = 1024 * 1024;
    delivery::finish(
        &conn,
        &Calendar::none(),
        &Finish {
            id: job.id,
            seq: job.seq,
            finished_at: 2,
            status: Some(500),
            error: Some("e".repeat(mib)),
            ambiguous: false,
            latency_ms: 1,
            result: Some(json!({"status": 500, "message": "m".repeat(mib)})),
            decision: Decision::Retry {
                at: 10,
                reason: "r".repeat(mib),
            },
        },
    )
    .expect("finish");
    let longest = |sql: &str| count(&conn, sql) as usize;
    let marker = 40;
    assert!(longest("SELECT length(last_error) FROM jobs") <= MAX_TEXT_BYTES + marker);
    assert!(longest("SELECT length(result) FROM jobs") <= MAX_RESULT_BYTES);
    assert!(longest("SELECT length(error) FROM attempts") <= MAX_TEXT_BYTES + marker);
    let result: String = conn
        .query_row("SELECT result FROM jobs", [], |r| r.get(0))
        .expect("result");
    serde_json::from_str::<serde_json::Value>(&result).expect("the result is still JSON");
}

#[test]
fn the_claim_and_the_deferred_count_walk_their_indexes() {
    let (_dir, conn) = queue();
    let claim = plan_of(
        &conn,
        &format!(
            "SELECT {} FROM jobs WHERE state = 'scheduled' AND due_at <= ?1
             ORDER BY due_at, id LIMIT ?2",
            super::quarantine::DUE_COLUMNS
        ),
        params![0, 10],
    );
    assert_eq!(
        claim,
        "SEARCH jobs USING INDEX jobs_by_state_due (state=? AND due_at<?)"
    );
    let deferred = plan_of(
        &conn,
        "SELECT count(*) FROM (SELECT 1 FROM jobs INDEXED BY jobs_deferred
         WHERE state = 'scheduled' AND due_at > scheduled_at LIMIT ?1)",
        params![10],
    );
    assert!(
        deferred.contains("jobs_deferred") && !deferred.contains("SCAN jobs;"),
        "{deferred}"
    );
}

#[test]
fn a_prune_deletes_the_tags_of_the_jobs_it_deletes() {
    let (_dir, conn) = queue();
    jobs(&conn, "old", 5, "sent", 10);
    jobs(&conn, "new", 3, "sent", 5_000);
    assert_eq!(count(&conn, "SELECT count(*) FROM job_tags"), 16);
    let step = queries::prune_step(&conn, 1_000, Cursor::START, 100, false).expect("prune");
    assert_eq!(step.pruned.jobs, 5);
    assert_eq!(count(&conn, "SELECT count(*) FROM job_tags"), 6);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM job_tags WHERE tag = 'old'"),
        0
    );
}

#[test]
fn tag_lookups_seek_the_tag_and_never_walk_the_queue() {
    let (_dir, conn) = queue();
    for pair in listing::TAG_POSITION_SQL {
        for sql in pair {
            let plan = plan_of(&conn, sql, params!["scheduled", 0, 0, 10, "t"]);
            assert!(
                plan.starts_with("SEARCH t USING PRIMARY KEY (tag=?"),
                "{plan}"
            );
            assert!(!plan.contains("SCAN"), "{plan}");
        }
    }
    let plan = plan_of(
        &conn,
        "UPDATE jobs SET state = 'cancelled', updated_at = ?2
         WHERE id IN (SELECT job_id FROM job_tags WHERE tag = ?1)
           AND state IN ('scheduled', 'held')",
        params!["t", 0],
    );
    assert!(
        plan.contains("job_tags USING PRIMARY KEY (tag=?)"),
        "{plan}"
    );
    assert!(!plan.contains("SCAN"), "{plan}");
}

/// A parent's follow-ups are found through `jobs_by_parent`, never the
/// state index: with `state = 'waiting'` SQLite chose the state index and
/// read every waiting job at each level of a chain (minutes at 100,000).
#[test]
fn follow_ups_are_found_through_the_parent_index() {
    let (_dir, conn) = queue();
    for sql in [
        "UPDATE jobs INDEXED BY jobs_by_parent
         SET state = 'cancelled', last_error = ?2, updated_at = ?3
         WHERE parent_id = ?1 AND state = 'waiting' RETURNING id",
        "SELECT count(*) FROM jobs INDEXED BY jobs_by_parent WHERE parent_id = ?1 AND ?2 = ?3",
    ] {
        let plan = plan_of(&conn, sql, params![1, "x", 0]);
        assert!(plan.contains("jobs_by_parent (parent_id=?)"), "{plan}");
    }
}

/// The start-up sweep reads a range of the table by id: with `state IN`
/// SQLite took the state index and read every scheduled job at each step.
#[test]
fn the_sweep_reads_a_range_of_ids_not_the_state_index() {
    let (_dir, conn) = queue();
    let plan = plan_of(
        &conn,
        &format!(
            "SELECT {} FROM jobs NOT INDEXED
             WHERE id > ?1 AND id <= ?2 AND state IN ('scheduled', 'held') ORDER BY id",
            super::quarantine::DUE_COLUMNS
        ),
        params![0, 2_000],
    );
    assert!(plan.contains("rowid>? AND rowid<?"), "{plan}");
    assert!(!plan.contains("jobs_by_state"), "{plan}");
}
