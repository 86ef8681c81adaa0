//! The SQL of recurring sends against a real store file: firing, and
//! rows a hand edit or an import left unreadable.

use super::*;
use crate::job::Rules;
use crate::schedule::{Put, check, occurrence_job};
use crate::window::Calendar;
use serde_json::json;

const NOW: Millis = 1_764_583_200_000; // 2025-12-01T10:00:00Z

fn schedule() -> (Schedule, Millis) {
    let put = Put {
        name: "hourly".into(),
        cron: "0 0 * * * *".into(),
        timezone: None,
        catch_up: None,
        job: json!({"kind": "message", "channel": "sms",
                    "payload": {"message": "hi", "phone": "+15550100"}}),
    };
    check(put, NOW, &Rules::default()).expect("a valid schedule")
}

fn firing(s: &Schedule, revision: i64, was: Millis) -> Firing {
    let job = occurrence_job(s, was, NOW, &Rules::default()).expect("a valid job");
    Firing {
        name: s.name.clone(),
        revision,
        was: Some(was),
        next_at: Some(was + 3_600_000),
        jobs: vec![job],
    }
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

#[test]
fn a_firing_moves_next_at_and_creates_the_job_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = super::super::schema::open(&dir.path().join("q.db")).expect("open");
    let (s, first) = schedule();
    assert!(put(&conn, &s, first, NOW).expect("put"), "new");
    let calendar = Calendar::none();
    let done = fire(&conn, &calendar, &firing(&s, 1, first), NOW)
        .expect("fire")
        .expect("fired");
    assert_eq!(done.len(), 1);
    assert!(!done[0].duplicate);
    assert_eq!(
        count(&conn, "SELECT next_at FROM schedules"),
        first + 3_600_000
    );
    // Planned again from the same stored state (a second daemon, or a
    // plan read before the first firing committed): nothing is written.
    assert!(
        fire(&conn, &calendar, &firing(&s, 1, first), NOW)
            .expect("fire")
            .is_none()
    );
    // Even with next_at put back by hand, the key keeps it single.
    conn.execute("UPDATE schedules SET next_at = ?1", [first])
        .expect("edit");
    let again = fire(&conn, &calendar, &firing(&s, 1, first), NOW)
        .expect("fire")
        .expect("fired");
    assert!(again[0].duplicate);
    assert_eq!(count(&conn, "SELECT count(*) FROM jobs"), 1);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM job_tags WHERE tag = 'schedule:hourly'"
        ),
        1
    );
}

#[test]
fn a_firing_planned_before_a_put_is_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = super::super::schema::open(&dir.path().join("q.db")).expect("open");
    let (s, first) = schedule();
    put(&conn, &s, first, NOW).expect("put");
    assert!(!put(&conn, &s, first, NOW).expect("put"), "replaced");
    let stale = fire(&conn, &Calendar::none(), &firing(&s, 1, first), NOW).expect("fire");
    assert!(stale.is_none());
    assert_eq!(count(&conn, "SELECT count(*) FROM jobs"), 0);
    assert_eq!(count(&conn, "SELECT revision FROM schedules"), 2);
}

/// A store holding the schedule "a-good", due at NOW, and a copy of it
/// under each other name in `spoiled`, each then edited by its SQL (`?1`
/// is the name), as a hand edit or an import may leave a row.
fn spoiled(spoiled: &[(&str, &str)]) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = super::super::schema::open(&dir.path().join("q.db")).expect("open");
    let (mut s, _) = schedule();
    for name in std::iter::once("a-good").chain(spoiled.iter().map(|(n, _)| *n)) {
        s.name = name.into();
        put(&conn, &s, NOW, NOW).expect("put");
    }
    for (name, edit) in spoiled {
        let sql = format!("UPDATE schedules SET {edit} WHERE name = ?1");
        conn.execute(&sql, [name]).expect("edit");
    }
    (dir, conn)
}

fn why(row: &Row) -> Option<&str> {
    match row {
        Row::Readable(_) => None,
        Row::Unreadable(u) => Some(&u.why),
    }
}

#[test]
fn rows_of_any_type_are_listed_set_aside_once_and_stop_nothing() {
    let (_dir, conn) = spoiled(&[
        ("b-real", "next_at = 1.5"),
        ("c-text", "next_at = 'soon'"),
        ("d-bytes", "next_at = x'00'"),
        ("e-revision", "revision = 1.5"),
        ("f-catch-up", "catch_up = 'maybe'"),
        ("g-job", "job = 'not json'"),
        ("h-cron", "cron = x'ff'"),
        ("i-name", "name = CAST(x'ff' AS TEXT)"),
    ]);
    // Only integers count towards the next occurrence: min(next_at)
    // would be 1.5 here, and not a time.
    assert_eq!(overview(&conn).expect("overview"), (9, Some(NOW)));
    let listed = page(&conn, "", 100).expect("page");
    let whys: Vec<_> = listed.iter().map(|(row, _)| why(row)).collect();
    assert_eq!(
        whys,
        [
            None,
            Some("its next_at is a real, not an integer time"),
            Some("its next_at is text, not an integer time"),
            Some("its next_at is bytes, not an integer time"),
            Some("its revision is a real, not an integer"),
            Some("catch_up \"maybe\" is not one we know"),
            Some("its job is not a JSON object"),
            Some("its cron is bytes, not text"),
            Some("its name is not UTF-8"),
        ]
    );
    assert_eq!(listed[8].0.name(), "\u{fffd}");
    let Row::Unreadable(g) = &listed[6].0 else {
        panic!("g-job is unreadable");
    };
    assert_eq!(g.job, json!("not json"));
    assert_eq!(g.catch_up.as_deref(), Some("skip"));

    let due_names = |conn: &Connection| -> Vec<String> {
        due(conn, NOW)
            .expect("due")
            .into_iter()
            .map(|s| s.schedule.name)
            .collect()
    };
    assert_eq!(due_names(&conn), ["a-good"]);
    // Every unreadable row is set aside: none is due again.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM schedules WHERE next_at IS NOT NULL"
        ),
        1
    );
    let before = conn.total_changes();
    assert_eq!(due_names(&conn), ["a-good"]);
    assert_eq!(conn.total_changes(), before, "nothing set aside twice");
    assert_eq!(page(&conn, "", 100).expect("page").len(), 9);

    // Put again, each is a schedule again, its revision an integer.
    let (mut s, _) = schedule();
    for name in ["e-revision", "f-catch-up"] {
        s.name = name.into();
        assert!(!put(&conn, &s, NOW, NOW).expect("put"), "replaced");
    }
    assert_eq!(due_names(&conn), ["a-good", "e-revision", "f-catch-up"]);
    assert_eq!(
        count(
            &conn,
            "SELECT revision FROM schedules WHERE name = 'e-revision'"
        ),
        1
    );
}

#[test]
fn a_row_named_by_bytes_is_set_aside_but_not_paged() {
    let (_dir, conn) = spoiled(&[("b-bytes", "name = x'ff'")]);
    let listed = page(&conn, "", 100).expect("page");
    let names: Vec<_> = listed.iter().map(|(row, _)| row.name()).collect();
    assert_eq!(names, ["a-good"], "bytes sort after every name: no `after`");
    assert_eq!(due(&conn, NOW).expect("due").len(), 1);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM schedules WHERE next_at IS NULL"
        ),
        1
    );
}

#[test]
fn a_row_put_again_before_it_is_set_aside_is_left_alone() {
    let (_dir, conn) = spoiled(&[("b-real", "next_at = 1.5")]);
    let rows = select(&conn, "WHERE name = 'b-real'", []).expect("select");
    let (s, first) = schedule();
    let s = Schedule {
        name: "b-real".into(),
        ..s
    };
    put(&conn, &s, first, NOW).expect("put");
    set_aside(&conn, &rows[0], "edited").expect("set aside");
    assert_eq!(
        count(&conn, "SELECT next_at FROM schedules WHERE name = 'b-real'"),
        first
    );
}

#[test]
fn an_occurrence_edited_into_nonsense_does_not_fail_the_view() {
    let (_dir, conn) = spoiled(&[]);
    let s = Schedule {
        name: "a-good".into(),
        ..schedule().0
    };
    fire(&conn, &Calendar::none(), &firing(&s, 1, NOW), NOW)
        .expect("fire")
        .expect("fired");
    let recent = |conn: &Connection| page(conn, "", 100).expect("page")[0].1.clone();
    assert_eq!(recent(&conn).len(), 1);
    conn.execute("UPDATE jobs SET state = CAST(x'ff' AS TEXT)", [])
        .expect("edit");
    assert_eq!(recent(&conn)[0].state, "\u{fffd}");
    conn.execute("UPDATE jobs SET scheduled_at = 'soon'", [])
        .expect("edit");
    assert!(recent(&conn).is_empty());
}
