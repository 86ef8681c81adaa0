//! Where a deferred job's `due_at` lands, shown at once: the next opening
//! after 22:00 in Sydney, past a holiday, in the second half of a split
//! day, and at a point within the opening's spread that a restart keeps.

use super::*;
use crate::helpers::daemon::{DaemonProcess, binary};

/// The issue's example window, the config's default in Sydney.
const BUSINESS: &str = r#"
[windows.business]
mon = "09:00-20:00"
tue = "09:00-20:00"
wed = "09:00-12:00, 13:00-20:00"
thu = "09:00-20:00"
fri = "09:00-20:00"
sat = "10:00-16:00"
sun = "closed"
holidays = ["2026-12-25", "2026-12-28", "2027-01-01"]
"#;

const SYDNEY_BUSINESS: &str =
    "default_timezone = \"Australia/Sydney\"\ndefault_window = \"business\"";

/// Monday 22:00 in Sydney (AEDT, +11), and Tuesday's opening.
const MONDAY_22: &str = "2026-12-07T22:00:00+11:00";
const TUESDAY_9: &str = "2026-12-08T09:00:00+11:00";

/// Runs the CLI against `daemon` in the UTC zone, and returns its stdout.
async fn cli(daemon: &TestDaemon, args: &[&std::ffi::OsStr]) -> String {
    let out = tokio::process::Command::new(binary())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .env("TZ", "UTC")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enqueue_answer_carries_due_at() {
    let coax = accepting_coax().await;
    let (daemon, _clock) = start_at(&config(&coax, SYDNEY_BUSINESS, BUSINESS), MONDAY_22).await;
    let deferred = enqueue(&daemon, sms("deferred", json!({}))).await;
    assert_due(&deferred, TUESDAY_9);
    // A job without a window is due as scheduled, and says so too.
    let open = enqueue(
        &daemon,
        sms("open", json!({"window": "none", "delay": "1h"})),
    )
    .await;
    assert_eq!(open["due_at"], open["scheduled_at"], "{open}");

    // The CLI reads it to say that the window defers the job.
    let file = daemon.dir.path().join("job.json");
    std::fs::write(&file, sms("from the cli", json!({})).to_string()).expect("write job");
    let stdout = cli(&daemon, &["enqueue".as_ref(), file.as_os_str()]).await;
    assert!(
        stdout.contains("its send window is shut then: due at 2026-12-07 22:00:00"),
        "{stdout}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_at_22_00_shows_due_at_09_00_in_get_list_and_the_cli() {
    let coax = accepting_coax().await;
    let (daemon, _clock) = start_at(&config(&coax, SYDNEY_BUSINESS, BUSINESS), MONDAY_22).await;
    let answer = enqueue(&daemon, sms("night", json!({}))).await;
    let id = answer["id"].as_i64().expect("id");
    let scheduled = at(answer["scheduled_at"].as_str().expect("scheduled_at"));
    assert!(
        (0..MINUTE_MS).contains(&(scheduled - at(MONDAY_22))),
        "scheduled now, by the daemon's clock: {answer}"
    );
    assert_due(&answer, TUESDAY_9);

    let view = daemon.get(id).await;
    assert_due(&view, TUESDAY_9);
    assert_eq!(view["timezone"], "Australia/Sydney", "{view}");
    assert_eq!(view["window"], "business", "{view}");
    assert_eq!(view["attempts"], 0, "a deferral is not an attempt: {view}");

    let list = daemon
        .request(json!({"op": "list", "state": "scheduled"}))
        .await;
    let listed = list["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["id"] == id))
        .unwrap_or_else(|| panic!("job {id} not listed: {list}"));
    assert_due(listed, TUESDAY_9);

    let stdout = cli(&daemon, &["get".as_ref(), id.to_string().as_ref()]).await;
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{stdout}"))
            .to_owned()
    };
    // Tuesday 09:00 in Sydney is Monday 22:00 UTC, the CLI's zone here.
    assert!(line("due_at").contains("2026-12-07 22:00:00"), "{stdout}");
    assert!(line("timezone").contains("Australia/Sydney"), "{stdout}");
    assert!(line("window").contains("business"), "{stdout}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holiday_keeps_the_window_shut_all_day_in_the_jobs_zone() {
    let coax = accepting_coax().await;
    let windows = format!(
        "{}holidays = [\"2026-12-25\"]\n",
        daily("daily", "09:00-17:00")
    );
    // Christmas Eve 18:00 in London (UTC in winter).
    let (daemon, clock) = start_at(&config(&coax, "", &windows), "2026-12-24T18:00:00Z").await;
    let london = json!({"timezone": "Europe/London", "window": "daily"});
    let tonight = enqueue(&daemon, sms("tonight", london.clone())).await;
    assert_due(&tonight, "2026-12-26T09:00:00Z");
    let mut christmas_noon = london.clone();
    christmas_noon["scheduled_at"] = json!("2026-12-25T12:00");
    let noon = enqueue(&daemon, sms("christmas noon", christmas_noon)).await;
    assert_due(&noon, "2026-12-26T09:00:00Z");
    // The holiday is a date in the job's own zone: Christmas in New York
    // ends five hours after it ends in London.
    let new_york = enqueue(
        &daemon,
        sms(
            "new york",
            json!({"timezone": "America/New_York", "window": "daily",
                   "scheduled_at": "2026-12-25T10:00"}),
        ),
    )
    .await;
    assert_due(&new_york, "2026-12-26T09:00:00-05:00");

    // Christmas Day at 10:00 in London: open hours, but a holiday.
    clock.set(at("2026-12-25T10:00:00Z"));
    send_a_windowless_job(&daemon, &coax, "christmas").await;
    assert_eq!(sends_of(&coax, "tonight"), 0);
    assert_eq!(sends_of(&coax, "christmas noon"), 0);
    clock.set(at("2026-12-26T09:00:00Z"));
    let tonight = tonight["id"].as_i64().expect("id");
    daemon.wait_for_state(tonight, "sent").await;
    daemon
        .wait_for_state(noon["id"].as_i64().expect("id"), "sent")
        .await;
    assert_eq!(sends_of(&coax, "new york"), 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_splits_a_day_defers_the_gap_to_the_second_range() {
    let coax = accepting_coax().await;
    // Wednesday 2026-12-02, 12:30 in Sydney: the business lunch break.
    let (daemon, clock) = start_at(
        &config(&coax, SYDNEY_BUSINESS, BUSINESS),
        "2026-12-02T12:30:00+11:00",
    )
    .await;
    let lunch = enqueue(&daemon, sms("lunch", json!({}))).await;
    assert_due(&lunch, "2026-12-02T13:00:00+11:00");
    let morning = enqueue(
        &daemon,
        sms("morning", json!({"scheduled_at": "2026-12-03T11:59"})),
    )
    .await;
    assert_due(&morning, "2026-12-03T11:59:00+11:00");
    send_a_windowless_job(&daemon, &coax, "at lunch").await;
    assert_eq!(sends_of(&coax, "lunch"), 0);
    clock.set(at("2026-12-02T13:00:00+11:00"));
    daemon
        .wait_for_state(lunch["id"].as_i64().expect("id"), "sent")
        .await;
    assert_eq!(sends_of(&coax, "morning"), 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_gives_two_deferred_jobs_different_points_within_it() {
    let coax = accepting_coax().await;
    let windows = format!("{}spread = \"20m\"\n", daily("daily", "09:00-17:00"));
    let (daemon, clock) = start_at(&config(&coax, "", &windows), "2026-12-02T06:00:00Z").await;
    let opening = at("2026-12-02T09:00:00Z");
    let mut jobs = Vec::new();
    for marker in ["first", "second"] {
        let answer = enqueue(&daemon, sms(marker, json!({"window": "daily"}))).await;
        let due = due_at(&answer);
        assert!(
            (opening..opening + 20 * MINUTE_MS).contains(&due),
            "due_at outside the spread: {answer}"
        );
        assert_eq!(due % 1000, 0, "a point in whole seconds: {answer}");
        jobs.push((answer["id"].as_i64().expect("id"), marker, due));
    }
    assert_ne!(jobs[0].2, jobs[1].2, "two jobs, one point: {jobs:?}");
    jobs.sort_by_key(|j| j.2);
    let (early, late) = (jobs[0], jobs[1]);
    // Each goes out at its own point, not at the opening.
    clock.set(early.2);
    daemon.wait_for_state(early.0, "sent").await;
    if late.2 - early.2 > 5_000 {
        send_a_windowless_job(&daemon, &coax, "between").await;
        assert_eq!(sends_of(&coax, late.1), 0, "sent before its point");
    }
    clock.set(late.2);
    daemon.wait_for_state(late.0, "sent").await;
    daemon.stop().await;
}

/// The real binary on a queue in `dir`, with a spread window shut now and
/// a window `other` open at `other_hours`.
fn spread_config(coax: &CoaxStub, spread: &str, other_hours: &str) -> String {
    let (shut, _) = shut_now("later");
    config(
        coax,
        "",
        &format!(
            "{shut}spread = \"{spread}\"\n{}",
            daily("other", other_hours)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_job_keeps_its_spread_point_across_a_restart() {
    let coax = accepting_coax().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, opening) = shut_now("later");
    let mut daemon =
        DaemonProcess::start(dir.path(), &spread_config(&coax, "20m", "10:00-11:00")).await;
    let mut points = Vec::new();
    for marker in ["first", "second", "third"] {
        let answer = daemon
            .request(json!({"op": "enqueue", "job": sms(marker, json!({"window": "later"}))}))
            .await;
        let due = due_at(&answer);
        assert!(
            (opening..opening + 20 * MINUTE_MS).contains(&due),
            "due_at outside the spread: {answer}"
        );
        points.push((answer["id"].as_i64().expect("id"), due));
    }
    // Moved by the next config, to show that the restart settled the queue.
    let other = daemon
        .request(json!({"op": "enqueue", "job": sms("other", json!({"window": "other", "scheduled_at": time::format(opening + 24 * HOUR_MS - 9 * HOUR_MS)}))}))
        .await;
    let other_id = other["id"].as_i64().expect("id");
    let other_due = due_at(&other);
    daemon.terminate().await;

    let daemon =
        DaemonProcess::start(dir.path(), &spread_config(&coax, "20m", "11:00-12:00")).await;
    let get = |id: i64| {
        let daemon = &daemon;
        async move {
            let answer = daemon.request(json!({"op": "get", "id": id})).await;
            answer["job"].clone()
        }
    };
    wait_until("the restart to settle the queue", PATIENCE, || async {
        (due_at(&get(other_id).await) != other_due).then_some(())
    })
    .await;
    for (id, point) in points {
        let view = get(id).await;
        assert_eq!(due_at(&view), point, "the point moved: {view}");
    }
}
