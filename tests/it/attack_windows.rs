//! Send windows attacked from outside: defects found by using the daemon as
//! a hostile operator, client or clock would. Each test is named after
//! the defect it shows and is ignored until that defect is fixed, so the
//! suite stays green; run one with `cargo test --test it NAME -- --ignored`.
//!
//! Tests that need a particular wall-clock moment drive the store with a
//! fixed clock ([`FixedClock`]); the others use windows that do not depend
//! on the time of day (open all day, or closed by holidays from yesterday
//! on), so they hold whenever they run.

use crate::helpers::daemon::{DaemonProcess, TestDaemon, config_text};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::config::OnAmbiguous;
use coax_scheduler::job::{self, NewJob, Rules};
use coax_scheduler::store::{Lookup, Options, Store};
use coax_scheduler::time::{self, Clock, Millis, Mono};
use coax_scheduler::window::Calendar;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// A wall clock the test sets; the monotonic clock does not matter here.
#[derive(Debug)]
struct FixedClock(AtomicI64);

impl FixedClock {
    fn at(text: &str) -> Arc<FixedClock> {
        Arc::new(FixedClock(AtomicI64::new(at(text))))
    }

    fn set(&self, text: &str) {
        self.0.store(at(text), Ordering::SeqCst);
    }
}

impl Clock for FixedClock {
    fn wall(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }

    fn mono(&self) -> Mono {
        Mono::from_millis(0)
    }
}

fn at(text: &str) -> Millis {
    time::parse_rfc3339(text).expect("an RFC 3339 time")
}

fn calendar(text: &str) -> Arc<Calendar> {
    Arc::new(Calendar::from_toml(text).expect("the calendar is valid"))
}

/// A store on a fresh database in `dir`, reading the time from `clock`.
fn open_store(dir: &Path, calendar: &Arc<Calendar>, clock: &Arc<FixedClock>) -> Store {
    let (store, _) = Store::open(&Options {
        path: dir.join("queue.db"),
        on_ambiguous: OnAmbiguous::Retry,
        max_attempts: 5,
        calendar: calendar.clone(),
        node: "test".to_owned(),
    })
    .expect("the store opens");
    store.with_clock(clock.clone())
}

/// `n` SMS jobs, checked as the daemon checks them, each with `fields`.
fn new_jobs(n: usize, fields: Value, now: Millis, calendar: &Arc<Calendar>) -> Vec<NewJob> {
    let rules = Rules {
        calendar: calendar.clone(),
        ..Rules::default()
    };
    (0..n)
        .map(|i| {
            let mut job = json!({
                "kind": "message", "channel": "sms",
                "payload": {"message": format!("Hello {i}"), "phone": "+15550100"}
            });
            for (k, v) in fields.as_object().expect("fields") {
                job[k] = v.clone();
            }
            job::validate(&job, now, &rules).expect("the job is valid")
        })
        .collect()
}

/// `"YYYY-MM-DD"` for every day from yesterday (UTC) for `days` days, as a
/// TOML array: a window closed from now on for that long, whenever the
/// test runs.
fn holidays_from_yesterday(days: i64) -> String {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let mut date = today.yesterday().expect("a date");
    let mut out = Vec::with_capacity(usize::try_from(days).unwrap_or(0));
    for _ in 0..days {
        out.push(format!("\"{date}\""));
        date = date.tomorrow().expect("a date");
    }
    format!("[{}]", out.join(", "))
}

/// A window `w`, open all day every day, with `extra` lines in its table;
/// the default for every job.
fn all_day_window(extra: &str) -> String {
    let days: Vec<String> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|d| format!("{d} = \"00:00-24:00\""))
        .collect();
    format!("\n[windows.w]\n{}\n{extra}\n", days.join("\n"))
}

/// A calendar edit reverted while the queue is being settled under it
/// leaves the jobs it reached waiting for the edit's openings.
///
/// `settle_all` records the calendar's fingerprint only when a walk ends,
/// and `resettle` skips the walk when the stored fingerprint matches. A
/// walk under B that is cut short (B replaced by a reload, or the daemon
/// stopped) leaves A's fingerprint in `meta`; going back to A then walks
/// nothing, so the jobs B deferred keep B's due times under A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverted_reload_leaves_jobs_deferred_to_openings_the_windows_no_longer_have() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Monday 2030-01-07, noon UTC.
    let clock = FixedClock::at("2030-01-07T12:00:00Z");
    let a_text = "[dispatch]\ndefault_window = \"w\"\n[windows.w]\nmon = \"08:00-20:00\"\n\
                  tue = \"08:00-20:00\"\nwed = \"08:00-20:00\"\nthu = \"08:00-20:00\"\n\
                  fri = \"08:00-20:00\"\nsat = \"08:00-20:00\"\nsun = \"08:00-20:00\"\n";
    let a = calendar(a_text);
    // B closes the whole week: every job is deferred to Monday 2030-01-14.
    let b = calendar(&format!(
        "{a_text}holidays = [\"2030-01-07\", \"2030-01-08\", \"2030-01-09\", \"2030-01-10\", \
         \"2030-01-11\", \"2030-01-12\", \"2030-01-13\"]\n"
    ));
    let store = open_store(dir.path(), &a, &clock);
    let total = 20_000;
    for _ in 0..4 {
        let jobs = new_jobs(
            total / 4,
            json!({"scheduled_at": "2030-01-07T13:00:00Z"}),
            clock.wall(),
            &a,
        );
        store.enqueue(jobs).await.expect("enqueue");
    }
    assert_eq!(store.stats().await.expect("stats").deferred, 0);
    // As at the daemon's start: the queue is settled under A, which `meta`
    // records.
    let (_keep, stop) = watch::channel(false);
    store
        .resettle(stop.clone())
        .await
        .expect("resettle under A");

    // A reload puts B in force and settles the queue under it...
    assert!(store.set_calendar(b.clone()));
    let walking = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move { store.resettle(stop).await })
    };
    wait_until("the walk under B to defer a job", PATIENCE, || async {
        (store.stats().await.expect("stats").deferred > 0).then_some(())
    })
    .await;
    // ...and the operator reverts the edit with a second reload.
    assert!(store.set_calendar(a.clone()));
    let moved_under_b = walking.await.expect("task").expect("resettle under B");
    assert!(
        moved_under_b < total as u64,
        "precondition: the walk under B was to be cut short, but it moved all {moved_under_b}"
    );
    store.resettle(stop).await.expect("resettle under A");

    // Under A every job is due at 13:00, inside its window.
    let stats = store.stats().await.expect("stats");
    assert_eq!(
        stats.deferred,
        0,
        "after going back to A, {} jobs still wait for B's opening (next_due {:?})",
        stats.deferred,
        stats.next_due.map(time::format)
    );
}

/// The same defect through a crash: kill -9 during the walk that a reload
/// started, then a start on the config from before the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_resettle_and_a_start_on_the_old_config_keep_jobs_deferred() {
    let coax = crate::helpers::coax::CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let base = config_text(&coax.base_url(), "default_window = \"w\"", "");
    let a = format!("{base}{}", all_day_window(""));
    // B is closed for ten years from yesterday; settling each job walks
    // those days, so the walk goes in steps long enough to kill it midway.
    let b = format!(
        "{base}{}",
        all_day_window(&format!("holidays = {}", holidays_from_yesterday(3_650)))
    );
    let mut daemon = DaemonProcess::start(dir.path(), &a).await;
    // Enough jobs that the walk takes many steps, so the kill lands in it.
    let total = 20_000;
    for batch in 0..4 {
        let jobs: Vec<Value> = (0..total / 4)
            .map(|i| {
                json!({"kind": "message", "channel": "sms", "delay": "1h",
                       "payload": {"message": format!("Hello {batch}-{i}"), "phone": "+15550100"}})
            })
            .collect();
        let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
        assert_eq!(answer["ok"], true, "{answer}");
    }

    std::fs::write(dir.path().join("config.toml"), &b).expect("write config");
    daemon.signal("HUP");
    wait_until("the walk under B to defer a job", PATIENCE, || async {
        let stats = daemon.request(json!({"op": "stats"})).await;
        (stats["deferred"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    daemon.signal("KILL");
    daemon.wait_exit(PATIENCE).await;
    let stats_before = {
        let conn = rusqlite::Connection::open(dir.path().join("queue.db")).expect("open");
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM jobs WHERE state = 'scheduled' AND due_at > scheduled_at",
                [],
                |r| r.get(0),
            )
            .expect("count");
        n
    };
    // The kill races the walk; when the walk won, the restart below still
    // must leave no job deferred (the reverted-reload test above cuts a
    // walk short for certain).
    if stats_before >= total {
        eprintln!("the walk under B ended before the kill; the restart is checked anyway");
    }
    assert!(stats_before > 0, "the walk under B deferred no job");

    // The operator goes back to A and starts the daemon again.
    let daemon = DaemonProcess::start(dir.path(), &a).await;
    let deferred = wait_until_or_last(PATIENCE, || async {
        let stats = daemon.request(json!({"op": "stats"})).await;
        stats["deferred"].as_u64().unwrap_or(u64::MAX)
    })
    .await;
    assert_eq!(
        deferred,
        0,
        "under A, open all day, {deferred} jobs still wait ten years for B's opening; logs:\n{}",
        tail(&daemon.logs(), 20)
    );
}

/// Polls `probe` until it returns 0, or returns its last value once
/// `timeout` has passed.
async fn wait_until_or_last<F, Fut>(timeout: Duration, mut probe: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = probe().await;
        if value == 0 || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("deferred to its window"))
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A reload (or a restart) while an opening's `spread` is under way brings
/// every job still waiting in it forward to its `scheduled_at`, so they all
/// go out at once: settling judges the window at `max(scheduled_at, now)`,
/// finds it open, and answers "due as scheduled", dropping the job's point
/// in the spread. The issue asks for the same point for the same job every
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resettle_inside_the_spread_sends_the_rest_of_it_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Monday 2030-01-07, 08:00 UTC: the window opens at 09:00.
    let clock = FixedClock::at("2030-01-07T08:00:00Z");
    let a_text = "[dispatch]\ndefault_window = \"w\"\n[windows.w]\nmon = \"09:00-17:00\"\n\
                  spread = \"20m\"\n";
    let a = calendar(a_text);
    let store = open_store(dir.path(), &a, &clock);
    let n = 100;
    let enqueued = store
        .enqueue(new_jobs(n, json!({}), clock.wall(), &a))
        .await
        .expect("enqueue");
    let one_minute_in = at("2030-01-07T09:01:00Z");
    let planned_later: Vec<i64> = enqueued
        .iter()
        .filter(|e| e.due_at.as_deref().is_some_and(|d| at(d) > one_minute_in))
        .map(|e| e.id)
        .collect();
    assert!(
        planned_later.len() > n / 2,
        "precondition: most jobs were spread past 09:01, but only {} were",
        planned_later.len()
    );

    // One minute into the opening, a reload adds an unrelated window.
    clock.set("2030-01-07T09:01:00Z");
    let b = calendar(&format!(
        "{a_text}[windows.evenings]\nmon = \"18:00-21:00\"\n"
    ));
    assert!(store.set_calendar(b));
    let (_keep, stop) = watch::channel(false);
    store.resettle(stop).await.expect("resettle");

    let sample = store
        .get(Lookup::Id(planned_later[0]))
        .await
        .expect("get")
        .map(|v| (v.scheduled_at, v.due_at));
    let claimed = store.claim(one_minute_in, 1_000).await.expect("claim");
    let early: Vec<i64> = claimed
        .jobs
        .iter()
        .map(|j| j.id)
        .filter(|id| planned_later.contains(id))
        .collect();
    assert!(
        early.is_empty(),
        "{} of the {} jobs spread past 09:01 were claimed at 09:01 after the reload; \
         e.g. job {} now (scheduled_at, due_at) {sample:?}",
        early.len(),
        planned_later.len(),
        planned_later[0]
    );
}

/// Settling a job used to step through every day to its window's next
/// opening, so a window shut for years by holidays made one batch hold the
/// store (and every request behind it) for seconds. The search now steps
/// over a run of holidays at once and looks at most ten years ahead: such
/// jobs are held, saying why, and the daemon keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_shut_for_years_by_holidays_holds_its_jobs_saying_why() {
    let coax = crate::helpers::coax::CoaxStub::start().await;
    // Closed from yesterday for 30 years, as a paused line of business
    // might be written, with no ttl so nothing expires.
    let config = format!(
        "{}{}",
        config_text(&coax.base_url(), "default_window = \"w\"", ""),
        all_day_window(&format!("holidays = {}", holidays_from_yesterday(30 * 366)))
    );
    let daemon = TestDaemon::start_with(&config).await;
    let jobs: Vec<Value> = (0..1_000)
        .map(|i| {
            json!({"kind": "message", "channel": "sms",
                   "payload": {"message": format!("Hello {i}"), "phone": "+15550100"}})
        })
        .collect();
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["held"], 1_000, "{stats}");
    assert_eq!(stats["counts"]["scheduled"], 0, "{stats}");
    let first = answer["results"][0]["id"].as_i64().expect("an id");
    let view = daemon.get(first).await;
    let why = view["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("does not open again within ten years"),
        "{view}"
    );
    assert_eq!(coax.requests().len(), 0);
}

/// A leap second written as a local time and the same wall time written
/// in UTC with "Z" name different instants: jiff's civil parser clamps
/// "23:59:60" to 23:59:59, while the RFC 3339 reader rolls it over to
/// 00:00:00 of the next day. Under a window that closes at midnight the
/// two spellings fall on either side of the close.
#[test]
fn a_local_leap_second_and_its_utc_spelling_are_different_instants() {
    let rules = Rules::default();
    let now = at("2026-01-01T00:00:00Z");
    let job = |scheduled_at: &str, zone: Option<&str>| {
        let mut job = json!({
            "kind": "message", "channel": "sms", "scheduled_at": scheduled_at,
            "payload": {"message": "hi", "phone": "+15550100"}
        });
        if let Some(zone) = zone {
            job["timezone"] = json!(zone);
        }
        job::validate(&job, now, &rules)
            .map(|j| time::format(j.scheduled_at))
            .unwrap_or_else(|e| format!("refused: {e}"))
    };
    let local = job("2027-12-31T23:59:60", Some("UTC"));
    let utc = job("2027-12-31T23:59:60Z", None);
    assert_eq!(local, utc, "local and UTC spellings of one leap second");
}

/// The search for a window's next opening runs 7 × (holidays + 1) + 3 days
/// from the day before, which misses the next week's opening when a DST
/// gap removes this week's only range: New York's `sun = "02:00-02:30"`
/// does not exist on 2027-03-14, whose clocks jump from 02:00 to 03:00, and
/// from Monday 03-08 the search stops on Wednesday 03-17, before Sunday
/// 03-21. The job is then `held` as "does not open again", and waits for an
/// operator, though its window opens a week later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dst_gap_over_the_only_range_of_the_week_holds_jobs_as_never_opening() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Monday 2027-03-08, 07:00 in New York, 12:00 in London.
    let clock = FixedClock::at("2027-03-08T12:00:00Z");
    let cal = calendar(
        "[windows.sunday_night]\nsun = \"02:00-02:30\"\n\
         [windows.sunday_one]\nsun = \"01:00-01:59\"\n",
    );
    let store = open_store(dir.path(), &cal, &clock);
    // London's clocks jump from 01:00 to 02:00 on Sunday 2027-03-28; from
    // Monday 03-22 its next opening is 2027-04-04.
    let cases = [
        (
            "America/New_York",
            "sunday_night",
            "2027-03-08T12:00:00Z",
            "2027-03-21T06:00:00.000Z",
        ),
        (
            "Europe/London",
            "sunday_one",
            "2027-03-22T12:00:00Z",
            "2027-04-04T00:00:00.000Z",
        ),
    ];
    let mut wrong = Vec::new();
    for (zone, window, now, want) in cases {
        clock.set(now);
        let jobs = new_jobs(
            1,
            json!({"timezone": zone, "window": window}),
            clock.wall(),
            &cal,
        );
        let answer = store.enqueue(jobs).await.expect("enqueue");
        let view = store
            .get(Lookup::Id(answer[0].id))
            .await
            .expect("get")
            .expect("the job");
        if view.state.as_str() != "scheduled" || view.due_at.as_deref() != Some(want) {
            wrong.push(format!(
                "{zone} {window} from {now}: state {}, due_at {:?}, last_error {:?} (want scheduled, due {want})",
                view.state.as_str(),
                view.due_at,
                view.last_error
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A batch enqueue answers `{"id","duplicate"}` per job and nothing else,
/// so a job that settling expired at once (its window opens only after its
/// expiry) or held reads as accepted: the client learns only from a `get`
/// per job that it will never be sent. The single enqueue says
/// `"state":"expired"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_enqueue_answers_ok_for_a_job_its_window_expired_at_once() {
    let coax = crate::helpers::coax::CoaxStub::start().await;
    // Closed for thirty days from yesterday.
    let config = format!(
        "{}{}",
        config_text(&coax.base_url(), "default_window = \"w\"", ""),
        all_day_window(&format!("holidays = {}", holidays_from_yesterday(30)))
    );
    let daemon = TestDaemon::start_with(&config).await;
    let job = json!({"kind": "message", "channel": "sms", "ttl": "1h",
                     "payload": {"message": "Hello", "phone": "+15550100"}});
    let one = daemon.request(json!({"op": "enqueue", "job": job})).await;
    assert_eq!(one["state"], "expired", "precondition: {one}");

    let batch = daemon
        .request(json!({"op": "enqueue", "jobs": [job]}))
        .await;
    assert_eq!(batch["ok"], true, "{batch}");
    let id = batch["results"][0]["id"].as_i64().expect("id");
    assert_eq!(daemon.get(id).await["state"], "expired");
    assert_eq!(
        batch["results"][0]["state"], "expired",
        "the batch answer does not say the job will never be sent: {batch}"
    );
}

/// Settling the queue anew after a change of windows logs one INFO line
/// per job it moves: a restart with a changed window over 100,000 deferred
/// jobs wrote 100,000 lines in 4 s (release build), past journald's
/// default rate limit (10,000 per 30 s), which then drops lines, ERRORs
/// included, as the connection flood of #9 did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resettle_logs_a_line_per_job_and_floods_the_journal() {
    let coax = crate::helpers::coax::CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let base = config_text(&coax.base_url(), "default_window = \"w\"", "")
        .replace("level = \"debug\"", "level = \"info\"");
    let a = format!(
        "{base}{}",
        all_day_window(&format!("holidays = {}", holidays_from_yesterday(30)))
    );
    let b = format!(
        "{base}{}",
        all_day_window(&format!("holidays = {}", holidays_from_yesterday(31)))
    );
    let mut daemon = DaemonProcess::start(dir.path(), &a).await;
    let total = 3_000;
    let jobs: Vec<Value> = (0..total)
        .map(|i| {
            json!({"kind": "message", "channel": "sms",
                   "payload": {"message": format!("Hello {i}"), "phone": "+15550100"}})
        })
        .collect();
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    daemon.terminate().await;
    let before = daemon.logs().lines().count();

    let daemon = DaemonProcess::start(dir.path(), &b).await;
    daemon
        .wait_for_log_line("the end of settling anew", |l| {
            l.contains("settled the queue's due times")
        })
        .await;
    let logs = daemon.logs();
    let lines = logs
        .lines()
        .skip(before)
        .filter(|l| l.contains("INFO") && l.contains("deferred to its window's next opening"))
        .count();
    assert!(
        lines <= 100,
        "settling {total} jobs anew wrote {lines} INFO lines"
    );
}

/// A job expired or held by its window at enqueue changes state in the
/// call that inserts it; on a fresh queue the count of `scheduled` jobs had
/// no row yet to take it from, so `stats` showed it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_when_a_new_job_is_expired_or_held_at_enqueue() {
    let coax = crate::helpers::coax::CoaxStub::start().await;
    let config = format!(
        "{}{}",
        config_text(&coax.base_url(), "default_window = \"w\"", ""),
        all_day_window(&format!("holidays = {}", holidays_from_yesterday(11 * 366)))
    );
    let daemon = TestDaemon::start_with(&config).await;
    let job = |ttl: Option<&str>| {
        let mut job = json!({"kind": "message", "channel": "sms",
                             "payload": {"message": "Hello", "phone": "+15550100"}});
        if let Some(ttl) = ttl {
            job["ttl"] = json!(ttl);
        }
        job
    };
    // Shut for eleven years: held; with a ttl of a day: expired first.
    let held = daemon
        .request(json!({"op": "enqueue", "job": job(None)}))
        .await;
    assert_eq!(held["state"], "held", "{held}");
    let expired = daemon
        .request(json!({"op": "enqueue", "job": job(Some("1d"))}))
        .await;
    assert_eq!(expired["state"], "expired", "{expired}");
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(
        stats["counts"],
        json!({"cancelled": 0, "expired": 1, "failed": 0, "held": 1, "scheduled": 0,
               "sending": 0, "sent": 0, "skipped": 0, "waiting": 0}),
        "{stats}"
    );
}
