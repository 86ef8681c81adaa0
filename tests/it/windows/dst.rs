//! DST in both directions, in New York and Sydney: a local `scheduled_at`
//! that a change skips moves forward by the gap, one that happens twice is
//! the earlier; and an opening after a change is at the local hour, in the
//! new offset.

use super::*;

/// Enqueues jobs with local `scheduled_at` times in `zone`, and checks each
/// lands on the expected instant, in the enqueue answer and in `get`.
async fn local_times(zone: &str, cases: &[(&str, &str)]) {
    let coax = accepting_coax().await;
    // Before every case, so each job stays scheduled and shows its due_at.
    let (daemon, _clock) = start_at(&config(&coax, "", ""), "2026-01-01T00:00:00Z").await;
    for (local, expected) in cases {
        let answer = enqueue(
            &daemon,
            sms(local, json!({"timezone": zone, "scheduled_at": local})),
        )
        .await;
        let expected = time::format(at(expected));
        assert_eq!(
            answer["scheduled_at"], expected,
            "{local} in {zone}: {answer}"
        );
        assert_eq!(answer["due_at"], expected, "{local} in {zone}: {answer}");
        let id = answer["id"].as_i64().expect("id");
        let view = daemon.get(id).await;
        assert_eq!(view["scheduled_at"], expected, "{view}");
        assert_eq!(view["due_at"], expected, "{view}");
        assert_eq!(view["timezone"], *zone, "{view}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_york_local_scheduled_at_in_the_spring_gap_moves_forward_by_the_gap() {
    // 2026-03-08: at 02:00 EST the clocks go to 03:00 EDT.
    local_times(
        "America/New_York",
        &[
            ("2026-03-08T01:59", "2026-03-08T06:59:00Z"),
            ("2026-03-08T02:30", "2026-03-08T07:30:00Z"),
            ("2026-03-08T02:30:15", "2026-03-08T07:30:15Z"),
            ("2026-03-08T03:30", "2026-03-08T07:30:00Z"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_york_local_scheduled_at_in_the_autumn_fold_is_the_earlier() {
    // 2026-11-01: at 02:00 EDT the clocks go back to 01:00 EST.
    local_times(
        "America/New_York",
        &[
            ("2026-11-01T00:59", "2026-11-01T04:59:00Z"),
            ("2026-11-01T01:30", "2026-11-01T05:30:00Z"),
            ("2026-11-01T02:30", "2026-11-01T07:30:00Z"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sydney_local_scheduled_at_in_the_spring_gap_moves_forward_by_the_gap() {
    // 2026-10-04: at 02:00 AEST (+10) the clocks go to 03:00 AEDT (+11).
    local_times(
        "Australia/Sydney",
        &[
            ("2026-10-04T01:30", "2026-10-03T15:30:00Z"),
            ("2026-10-04T02:30", "2026-10-03T16:30:00Z"),
            ("2026-10-04T03:30", "2026-10-03T16:30:00Z"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sydney_local_scheduled_at_in_the_autumn_fold_is_the_earlier() {
    // 2026-04-05: at 03:00 AEDT (+11) the clocks go back to 02:00 AEST (+10).
    local_times(
        "Australia/Sydney",
        &[
            ("2026-04-05T01:30", "2026-04-04T14:30:00Z"),
            ("2026-04-05T02:30", "2026-04-04T15:30:00Z"),
            ("2026-04-05T03:30", "2026-04-04T17:30:00Z"),
        ],
    )
    .await;
}

/// The window tables of the opening tests: every day from 09:00, and
/// weekdays only.
fn opening_windows() -> String {
    format!(
        "{}\n[windows.weekdays]\nmon = \"09:00-17:00\"\ntue = \"09:00-17:00\"\n\
         wed = \"09:00-17:00\"\nthu = \"09:00-17:00\"\nfri = \"09:00-17:00\"\n",
        daily("daily", "09:00-17:00")
    )
}

/// On the Saturday night before a DST change in `zone` (`saturday_22`),
/// a job in a daily window is due at 09:00 on the Sunday of the change,
/// and one in a weekday window at 09:00 on the Monday, both in the new
/// offset; each is sent once the clock reaches its opening, not before.
async fn openings_across_a_change(zone: &str, saturday_22: &str, sunday_9: &str, monday_9: &str) {
    let coax = accepting_coax().await;
    let (daemon, clock) = start_at(&config(&coax, "", &opening_windows()), saturday_22).await;
    let sunday = enqueue(
        &daemon,
        sms("sunday", json!({"timezone": zone, "window": "daily"})),
    )
    .await;
    let monday = enqueue(
        &daemon,
        sms("monday", json!({"timezone": zone, "window": "weekdays"})),
    )
    .await;
    assert_due(&sunday, sunday_9);
    assert_due(&monday, monday_9);
    let (sunday, monday) = (
        sunday["id"].as_i64().expect("id"),
        monday["id"].as_i64().expect("id"),
    );
    assert_due(&daemon.get(sunday).await, sunday_9);
    assert_due(&daemon.get(monday).await, monday_9);

    // Two minutes before the Sunday opening: nothing goes out yet.
    clock.set(at(sunday_9) - 2 * MINUTE_MS);
    send_a_windowless_job(&daemon, &coax, "before sunday").await;
    assert_eq!(sends_of(&coax, "sunday"), 0);
    clock.set(at(sunday_9));
    daemon.wait_for_state(sunday, "sent").await;
    send_a_windowless_job(&daemon, &coax, "sunday noon").await;
    assert_eq!(sends_of(&coax, "monday"), 0, "a weekday window on a Sunday");
    clock.set(at(monday_9));
    daemon.wait_for_state(monday, "sent").await;
    assert_eq!(sends_of(&coax, "sunday"), 1);
    assert_eq!(sends_of(&coax, "monday"), 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_york_openings_after_the_spring_change_are_at_09_00_edt() {
    openings_across_a_change(
        "America/New_York",
        "2026-03-07T22:00:00-05:00",
        "2026-03-08T09:00:00-04:00",
        "2026-03-09T09:00:00-04:00",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_york_openings_after_the_autumn_change_are_at_09_00_est() {
    openings_across_a_change(
        "America/New_York",
        "2026-10-31T22:00:00-04:00",
        "2026-11-01T09:00:00-05:00",
        "2026-11-02T09:00:00-05:00",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sydney_openings_after_the_spring_change_are_at_09_00_aedt() {
    openings_across_a_change(
        "Australia/Sydney",
        "2026-10-03T22:00:00+10:00",
        "2026-10-04T09:00:00+11:00",
        "2026-10-05T09:00:00+11:00",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sydney_openings_after_the_autumn_change_are_at_09_00_aest() {
    openings_across_a_change(
        "Australia/Sydney",
        "2026-04-04T22:00:00+11:00",
        "2026-04-05T09:00:00+10:00",
        "2026-04-06T09:00:00+10:00",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_starts_in_the_spring_gap_opens_when_the_clock_jumps() {
    let coax = accepting_coax().await;
    let windows = "[windows.night]\nsun = \"02:15-04:00\"\n";
    // Saturday 22:00 EST before clocks skip 02:00-03:00 on Sunday.
    let (daemon, clock) = start_at(&config(&coax, "", windows), "2026-03-07T22:00:00-05:00").await;
    let job = sms(
        "gap",
        json!({"timezone": "America/New_York", "window": "night"}),
    );
    let answer = enqueue(&daemon, job).await;
    // 02:15 never shows on the wall: the range opens at the jump, 03:00 EDT.
    assert_due(&answer, "2026-03-08T03:00:00-04:00");
    clock.set(at("2026-03-08T03:00:00-04:00"));
    daemon
        .wait_for_state(answer["id"].as_i64().expect("id"), "sent")
        .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_inside_the_autumn_fold_opens_again_when_the_clock_goes_back() {
    let coax = accepting_coax().await;
    let windows = "[windows.early]\nsun = \"01:00-01:30\"\n";
    // 01:45 EDT on the Sunday the clocks go back at 02:00 EDT to 01:00 EST:
    // the wall shows 01:00-01:30 again an hour later.
    let (daemon, clock) = start_at(&config(&coax, "", windows), "2026-11-01T01:45:00-04:00").await;
    let job = sms(
        "fold",
        json!({"timezone": "America/New_York", "window": "early"}),
    );
    let answer = enqueue(&daemon, job).await;
    assert_due(&answer, "2026-11-01T01:00:00-05:00");
    clock.set(at("2026-11-01T00:59:00-05:00"));
    send_a_windowless_job(&daemon, &coax, "before the second 01:00").await;
    assert_eq!(sends_of(&coax, "fold"), 0);
    clock.set(at("2026-11-01T01:00:00-05:00"));
    daemon
        .wait_for_state(answer["id"].as_i64().expect("id"), "sent")
        .await;
    daemon.stop().await;
}
