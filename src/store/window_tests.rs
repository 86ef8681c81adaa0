//! Send windows in the store, on a real database file: a property test that
//! drives random calendars, jobs and event sequences through every route to
//! sending (claim, retry, key pause, requeue, reschedule, recovery and a
//! calendar change) and checks that no claim happens outside the job's
//! window or before its `scheduled_at`; and plain tests of how enqueue, the
//! claim and settling the queue anew move `due_at`.
//!
//! The property test's inputs are in [`props`], the run that applies and
//! checks them in [`run`]; the helpers both share are here.

mod props;
mod run;

use super::deferral;
use super::delivery::{self, Finish};
use super::{queries, schema, walk};
use crate::job::{Kind, NewJob, State};
use crate::policy::Decision;
use crate::protocol::Lookup;
use crate::time::{Millis, format, parse_rfc3339};
use crate::window::{Calendar, Plan};
use rusqlite::Connection;
use std::collections::BTreeMap;

const MINUTE: Millis = 60_000;
const HOUR: Millis = 60 * MINUTE;
const DAY: Millis = 24 * HOUR;

fn utc(text: &str) -> Millis {
    parse_rfc3339(text).expect("a valid RFC 3339 time")
}

/// A queue on a temp dir. Nothing here survives the test, so SQLite need
/// not wait for the disk.
fn queue() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = schema::open(&dir.path().join("queue.db")).expect("open the queue");
    conn.execute_batch("PRAGMA synchronous = OFF")
        .expect("synchronous off");
    (dir, conn)
}

/// What the tests read of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    id: i64,
    kind: Kind,
    state: State,
    attempts: i64,
    scheduled_at: Millis,
    due_at: Millis,
    expires_at: Option<Millis>,
    timezone: Option<String>,
    window: Option<String>,
}

fn rows(conn: &Connection) -> BTreeMap<i64, Row> {
    let mut stmt = conn
        .prepare(
            "SELECT id, kind, state, attempts, scheduled_at, due_at, expires_at, timezone,
                    send_window FROM jobs",
        )
        .expect("prepare");
    stmt.query_map([], |r| {
        let text = |i| r.get::<_, String>(i);
        Ok(Row {
            id: r.get(0)?,
            kind: Kind::parse(&text(1)?).expect("a kind"),
            state: State::parse(&text(2)?).expect("a state"),
            attempts: r.get(3)?,
            scheduled_at: r.get(4)?,
            due_at: r.get(5)?,
            expires_at: r.get(6)?,
            timezone: r.get(7)?,
            window: r.get(8)?,
        })
    })
    .and_then(|rows| rows.map(|r| r.map(|r| (r.id, r))).collect())
    .expect("read the jobs")
}

/// Where settling should leave a job: scheduled and due at an instant,
/// expired, or held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Due(Millis),
    Expired,
    Held,
}

/// Where settling leaves `row` when judged at `now` under `calendar`,
/// from [`crate::window::Rule::plan`] alone.
fn expected(calendar: &Calendar, row: &Row, now: Millis) -> Outcome {
    let rule = match calendar.rule(row.timezone.as_deref(), row.window.as_deref(), row.kind) {
        Ok(rule) => rule,
        Err(_) => return Outcome::Held,
    };
    match rule.plan(row.id, row.scheduled_at, now) {
        Plan::Due => Outcome::Due(row.scheduled_at),
        Plan::Deferred { opening, due_at } => match row.expires_at {
            Some(expiry) if opening >= expiry => Outcome::Expired,
            Some(expiry) if due_at >= expiry => Outcome::Due(opening),
            _ => Outcome::Due(due_at),
        },
        Plan::Never => Outcome::Held,
    }
}

/// Whether settling anew in bulk leaves `row` at the point in its window's
/// spread it was deferred to: it is deferred, that point is ahead of `now`
/// within the spread, and the window is open at both.
fn keeps_spread_point(calendar: &Calendar, row: &Row, now: Millis) -> bool {
    let Ok(rule) = calendar.rule(row.timezone.as_deref(), row.window.as_deref(), row.kind) else {
        return false;
    };
    row.state == State::Scheduled
        && row.due_at > row.scheduled_at
        && row.due_at > now
        && row.due_at - now <= rule.spread_ms()
        && rule.is_open(now)
        && rule.is_open(row.due_at)
}

/// Where `row` is, in the terms of [`Outcome`].
fn outcome(row: &Row) -> Option<Outcome> {
    match row.state {
        State::Scheduled => Some(Outcome::Due(row.due_at)),
        State::Expired => Some(Outcome::Expired),
        State::Held => Some(Outcome::Held),
        _ => None,
    }
}

fn new_job(kind: Kind, zone: Option<&str>, window: Option<&str>, at: Millis) -> NewJob {
    let payload = serde_json::json!({"message": "hi", "phone": "+15550100"});
    NewJob {
        key: None,
        kind,
        channel: "sms".to_owned(),
        enquiry_id: None,
        scheduled_at: at,
        expires_at: None,
        payload: payload.as_object().cloned().unwrap_or_default(),
        timezone: zone.map(str::to_owned),
        window: window.map(str::to_owned),
        tags: Vec::new(),
        after: None,
    }
}

/// The record of attempt `seq` of job `id`, ended at `at` with `decision`.
fn ended(id: i64, seq: u32, at: Millis, decision: Decision) -> Finish {
    Finish {
        id,
        seq,
        finished_at: at,
        status: None,
        error: None,
        ambiguous: false,
        latency_ms: 1,
        result: None,
        decision,
    }
}

/// Monday to Friday, 09:00-17:00, in the default zone of Sydney; "gone"
/// is not a window of it.
const BUSINESS: &str = r#"
[dispatch]
default_timezone = "Australia/Sydney"
[windows.business]
mon = "09:00-17:00"
tue = "09:00-17:00"
wed = "09:00-17:00"
thu = "09:00-17:00"
fri = "09:00-17:00"
"#;

fn business() -> Calendar {
    Calendar::from_toml(BUSINESS).expect("a valid calendar")
}

fn attempts_of(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM attempts", [], |r| r.get(0))
        .expect("count")
}

#[test]
fn enqueue_settles_due_at_deferred_expired_or_held() {
    let (_dir, conn) = queue();
    let calendar = business();
    // Monday 2026-11-30 22:00 in Sydney (+11).
    let now = utc("2026-11-30T11:00:00Z");
    let tuesday_9 = utc("2026-11-30T22:00:00Z");
    let mut short = new_job(Kind::Message, None, Some("business"), now);
    short.expires_at = Some(now + 2 * HOUR);
    let mut long = new_job(Kind::Message, None, Some("business"), now);
    long.expires_at = Some(tuesday_9 + 1);
    let jobs = [
        new_job(Kind::Message, None, Some("business"), now),
        short,
        new_job(Kind::Message, None, Some("gone"), now),
        new_job(Kind::Message, None, Some("none"), now),
        // Default window unset: any hour.
        new_job(Kind::Message, None, None, now),
        long,
    ];
    let answers = queries::enqueue(&conn, &calendar, &jobs, now).expect("enqueue");
    let states: Vec<(State, Option<String>)> = answers
        .iter()
        .map(|a| (a.state, a.due_at.clone()))
        .collect();
    let at = |t| Some(format(t));
    assert_eq!(
        states,
        [
            (State::Scheduled, at(tuesday_9)),
            (State::Expired, None),
            (State::Held, None),
            (State::Scheduled, at(now)),
            (State::Scheduled, at(now)),
            (State::Scheduled, at(tuesday_9)),
        ]
    );
    let stored = rows(&conn);
    assert_eq!(stored[&answers[0].id].due_at, tuesday_9);
    assert_eq!(stored[&answers[0].id].scheduled_at, now);
    assert_eq!(deferral::deferred(&conn).expect("deferred"), 2);
    let held = queries::get(&conn, &calendar, &Lookup::Id(answers[2].id), now)
        .expect("get")
        .expect("the held job");
    assert!(
        held.last_error
            .as_deref()
            .is_some_and(|e| e.contains("gone")),
        "{:?}",
        held.last_error
    );
    assert!(stored.values().all(|r| r.attempts == 0));
    assert_eq!(attempts_of(&conn), 0);
}

#[test]
fn a_claim_defers_a_due_job_whose_window_is_shut_and_leaves_attempts_alone() {
    let (_dir, conn) = queue();
    // Saturday 2026-12-05 03:00 in Sydney: enqueued while its window is
    // open all Saturday, so due at once; then a reload narrows the window
    // to weekdays before the claim.
    let now = utc("2026-12-04T16:00:00Z");
    let monday_9 = utc("2026-12-06T22:00:00Z");
    let job = new_job(Kind::Message, None, Some("business"), now);
    let old = Calendar::from_toml(
        "[dispatch]\ndefault_timezone = \"Australia/Sydney\"\n\
         [windows.business]\nsat = \"00:00-24:00\"",
    )
    .expect("a valid calendar");
    let answers = queries::enqueue(&conn, &old, &[job], now).expect("enqueue");
    let id = answers[0].id;
    assert_eq!(rows(&conn)[&id].due_at, now);

    let calendar = business();
    let claimed = delivery::claim(&conn, &calendar, "test", now + MINUTE, 10).expect("claim");
    assert!(claimed.jobs.is_empty() && claimed.expired.is_empty());
    assert_eq!(claimed.next_due, Some(monday_9));
    let row = &rows(&conn)[&id];
    assert_eq!(
        (row.state, row.due_at, row.attempts),
        (State::Scheduled, monday_9, 0)
    );
    assert_eq!(attempts_of(&conn), 0, "a deferral opens no attempt");
    assert_eq!(deferral::deferred(&conn).expect("deferred"), 1);

    let early = delivery::claim(&conn, &calendar, "test", monday_9 - 1, 10).expect("claim");
    assert!(early.jobs.is_empty());
    let claimed = delivery::claim(&conn, &calendar, "test", monday_9, 10).expect("claim");
    assert_eq!(claimed.jobs.len(), 1);
    assert_eq!((claimed.jobs[0].attempt, claimed.jobs[0].seq), (1, 1));
}

#[test]
fn a_retry_that_lands_after_closing_is_deferred_without_an_extra_attempt() {
    let (_dir, conn) = queue();
    let calendar = business();
    // Monday 16:50 in Sydney; the retry would fall at 17:10.
    let now = utc("2026-11-30T05:50:00Z");
    let tuesday_9 = utc("2026-11-30T22:00:00Z");
    let job = new_job(Kind::Message, None, Some("business"), now);
    let id = queries::enqueue(&conn, &calendar, &[job], now).expect("enqueue")[0].id;
    let claimed = delivery::claim(&conn, &calendar, "test", now, 10).expect("claim");
    let job = &claimed.jobs[0];
    let retry = Decision::Retry {
        at: now + 20 * MINUTE,
        reason: "HTTP 503".to_owned(),
    };
    let retry = ended(id, job.seq, now + MINUTE, retry);
    delivery::finish(&conn, &calendar, &retry).expect("finish");
    let row = &rows(&conn)[&id];
    assert_eq!(row.scheduled_at, now + 20 * MINUTE);
    assert_eq!((row.due_at, row.attempts), (tuesday_9, 1));
    let claimed = delivery::claim(&conn, &calendar, "test", tuesday_9, 10).expect("claim");
    assert_eq!((claimed.jobs[0].attempt, claimed.jobs[0].seq), (2, 2));
}

/// A key pause gives the job back as `scheduled` without settling its due
/// time, so a job given back after its window shut showed its old, past
/// `due_at` and was not counted as deferred until a claim met it.
#[test]
fn a_job_given_back_by_a_key_pause_after_closing_is_deferred_at_once() {
    let (_dir, conn) = queue();
    let calendar = business();
    // Claimed on Monday 16:59:30 in Sydney; Coax answers 401 at 17:00:30.
    let now = utc("2026-11-30T05:59:30Z");
    let tuesday_9 = utc("2026-11-30T22:00:00Z");
    let job = new_job(Kind::Message, None, Some("business"), now);
    let id = queries::enqueue(&conn, &calendar, &[job], now).expect("enqueue")[0].id;
    let claimed = delivery::claim(&conn, &calendar, "test", now, 10).expect("claim");
    let paused = ended(id, claimed.jobs[0].seq, now + MINUTE, Decision::PauseForKey);
    delivery::finish(&conn, &calendar, &paused).expect("finish");
    let row = &rows(&conn)[&id];
    assert_eq!((row.state, row.attempts), (State::Scheduled, 0));
    assert_eq!(row.due_at, tuesday_9, "due at {}", format(row.due_at));
    assert_eq!(deferral::deferred(&conn).expect("deferred"), 1);
}

#[test]
fn undefer_step_under_a_windowless_calendar_brings_every_deferred_job_back() {
    let (_dir, conn) = queue();
    let calendar = business();
    // Saturday 2026-12-05 12:00 in Sydney: every job waits for Monday.
    let now = utc("2026-12-05T01:00:00Z");
    let mut jobs: Vec<NewJob> = (0..7)
        .map(|i| new_job(Kind::Message, None, Some("business"), now + i * HOUR))
        .collect();
    jobs.push(new_job(Kind::Message, None, Some("none"), now));
    let ids: Vec<i64> = queries::enqueue(&conn, &calendar, &jobs, now)
        .expect("enqueue")
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(deferral::deferred(&conn).expect("deferred"), 7);

    let none = Calendar::none();
    let mut steps = 0;
    let mut moved = 0;
    loop {
        let (n, next) = deferral::undefer_step(&conn, &none, 2, now).expect("a step");
        assert!(n <= 2);
        moved += n;
        steps += 1;
        assert!(steps < 10, "undeferring does not end");
        if next.is_none() {
            break;
        }
    }
    assert_eq!(moved, 7);
    assert_eq!(deferral::deferred(&conn).expect("deferred"), 0);
    let stored = rows(&conn);
    for id in &ids[..7] {
        // The config no longer has the window these jobs name.
        assert_eq!(stored[id].state, State::Held, "{:?}", stored[id]);
    }
    assert_eq!(stored[&ids[7]].state, State::Scheduled);

    // Jobs that name no window come back to their own due times.
    let (_dir, conn) = queue();
    let jobs: Vec<NewJob> = (0..5)
        .map(|i| new_job(Kind::Message, None, None, now + i * HOUR))
        .collect();
    let by_default = Calendar::from_toml(&BUSINESS.replace(
        "default_timezone = \"Australia/Sydney\"",
        "default_timezone = \"Australia/Sydney\"\ndefault_window = \"business\"",
    ))
    .expect("a valid calendar");
    queries::enqueue(&conn, &by_default, &jobs, now).expect("enqueue");
    assert_eq!(deferral::deferred(&conn).expect("deferred"), 5);
    let mut next = Some(walk::Cursor::START);
    while next.is_some() {
        next = deferral::undefer_step(&conn, &none, 2, now)
            .expect("a step")
            .1;
    }
    assert_eq!(deferral::deferred(&conn).expect("deferred"), 0);
    for row in rows(&conn).values() {
        assert_eq!(
            (row.state, row.due_at),
            (State::Scheduled, row.scheduled_at)
        );
    }
}

#[test]
fn settled_under_and_mark_settled_round_trip() {
    let (_dir, conn) = queue();
    let first = business().fingerprint();
    let second = Calendar::none().fingerprint();
    assert_ne!(first, second);
    assert!(!deferral::settled_under(&conn, first).expect("read"));
    deferral::mark_settled(&conn, first).expect("mark");
    assert!(deferral::settled_under(&conn, first).expect("read"));
    assert!(!deferral::settled_under(&conn, second).expect("read"));
    deferral::mark_settled(&conn, second).expect("mark");
    assert!(deferral::settled_under(&conn, second).expect("read"));
    assert!(!deferral::settled_under(&conn, first).expect("read"));
    // Every bit of the 64 survives the signed column.
    for fingerprint in [u64::MAX, 1 << 63, 0] {
        deferral::mark_settled(&conn, fingerprint).expect("mark");
        assert!(deferral::settled_under(&conn, fingerprint).expect("read"));
        assert!(!deferral::settled_under(&conn, fingerprint ^ 1).expect("read"));
    }
}
