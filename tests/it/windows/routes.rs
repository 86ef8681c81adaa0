//! The other routes to `scheduled` keep to the window too: a requeue, a
//! reschedule to a local time, a duplicate enqueue's answer; and reloads
//! that drop every window or change the default zone.

use super::*;

fn id_of(answer: &Value) -> i64 {
    answer["id"].as_i64().expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeue_at_night_is_due_at_the_next_opening() {
    let coax = accepting_coax().await;
    coax.push(Reply::status(400));
    let (daemon, clock) = start_at(
        &config(&coax, "", &daily("day", "09:00-20:00")),
        "2026-12-02T19:00:00Z",
    )
    .await;
    let id = id_of(&enqueue(&daemon, sms("requeued", json!({"window": "day"}))).await);
    daemon.wait_for_state(id, "failed").await;
    clock.set(at("2026-12-02T22:00:00Z"));
    let answer = daemon.request(json!({"op": "requeue", "id": id})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_due(&answer["job"], "2026-12-03T09:00:00Z");
    send_a_windowless_job(&daemon, &coax, "night").await;
    assert_eq!(sends_of(&coax, "requeued"), 1);
    clock.set(at("2026-12-03T09:00:00Z"));
    daemon.wait_for_state(id, "sent").await;
    assert_eq!(sends_of(&coax, "requeued"), 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reschedule_to_a_local_time_is_read_in_the_jobs_zone_and_settled() {
    let coax = accepting_coax().await;
    let (daemon, _clock) = start_at(
        &config(&coax, "", &daily("day", "09:00-20:00")),
        "2026-12-02T12:00:00Z",
    )
    .await;
    let job = sms(
        "moved",
        json!({"window": "day", "timezone": "America/New_York", "delay": "1h"}),
    );
    let id = id_of(&enqueue(&daemon, job).await);
    let answer = daemon
        .request(json!({"op": "reschedule", "id": id, "scheduled_at": "2026-12-03T10:15"}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(
        answer["job"]["scheduled_at"],
        time::format(at("2026-12-03T10:15:00-05:00"))
    );
    assert_due(&answer["job"], "2026-12-03T10:15:00-05:00");
    // 22:00 in New York: deferred to 09:00 there.
    let answer = daemon
        .request(json!({"op": "reschedule", "id": id, "scheduled_at": "2026-12-03T22:00"}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_due(&answer["job"], "2026-12-04T09:00:00-05:00");
    assert_due(&daemon.get(id).await, "2026-12-04T09:00:00-05:00");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_enqueue_answers_the_stored_due_at() {
    let coax = accepting_coax().await;
    let (daemon, _clock) = start_at(
        &config(&coax, "", &daily("day", "09:00-20:00")),
        "2026-12-02T22:00:00Z",
    )
    .await;
    let mut job = sms("twice", json!({"window": "day"}));
    job["key"] = json!("twice");
    let first = enqueue(&daemon, job.clone()).await;
    let again = enqueue(&daemon, job).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_due(&first, "2026-12-03T09:00:00Z");
    assert_due(&again, "2026-12-03T09:00:00Z");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_every_window_releases_deferred_jobs() {
    let coax = accepting_coax().await;
    let before = config(
        &coax,
        "default_window = \"day\"",
        &daily("day", "09:00-20:00"),
    );
    let clock = TestClock::at(at("2026-12-02T22:00:00Z"));
    let daemon = TestDaemon::start_reloadable(&before, clock.clone()).await;
    let by_default = id_of(&enqueue(&daemon, sms("by default", json!({}))).await);
    let named = id_of(&enqueue(&daemon, sms("named", json!({"window": "day"}))).await);
    assert_due(&daemon.get(by_default).await, "2026-12-03T09:00:00Z");
    daemon.reload(&config(&coax, "", "")).await;
    // Its window is no longer the default: it may go at any hour.
    daemon.wait_for_state(by_default, "sent").await;
    let held = daemon.wait_for_state(named, "held").await;
    assert!(
        held["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("\"day\"")),
        "{held}"
    );
    assert_eq!(sends_of(&coax, "named"), 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_default_zone_moves_jobs_that_name_none() {
    let coax = accepting_coax().await;
    let windows = daily("day", "09:00-20:00");
    let before = config(&coax, "default_timezone = \"Europe/London\"", &windows);
    // 21:00 in London, 16:00 in New York.
    let clock = TestClock::at(at("2026-12-02T21:00:00Z"));
    let daemon = TestDaemon::start_reloadable(&before, clock.clone()).await;
    let id = id_of(
        &enqueue(
            &daemon,
            sms("zoned", json!({"window": "day", "delay": "30m"})),
        )
        .await,
    );
    let pinned = id_of(
        &enqueue(
            &daemon,
            sms(
                "pinned",
                json!({"window": "day", "timezone": "Europe/London", "delay": "30m"}),
            ),
        )
        .await,
    );
    assert_due(&daemon.get(id).await, "2026-12-03T09:00:00Z");
    daemon
        .reload(&config(
            &coax,
            "default_timezone = \"America/New_York\"",
            &windows,
        ))
        .await;
    // Due at 21:30 UTC, 16:30 in New York: open there, so due as scheduled.
    let view = wait_until(
        "the job to follow the new default zone",
        PATIENCE,
        || async {
            let view = daemon.get(id).await;
            (view["due_at"] == view["scheduled_at"]).then_some(view)
        },
    )
    .await;
    assert_eq!(view["state"], "scheduled", "{view}");
    assert_eq!(view["timezone"], "America/New_York", "{view}");
    assert_due(&daemon.get(pinned).await, "2026-12-03T09:00:00Z");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_point_never_lands_past_the_jobs_expiry() {
    let coax = accepting_coax().await;
    let windows = format!("{}spread = \"24h\"\n", daily("day", "09:00-20:00"));
    let (daemon, _clock) = start_at(&config(&coax, "", &windows), "2026-12-02T22:00:00Z").await;
    for n in 0..5 {
        let marker = format!("expiring {n}");
        let mut job = sms(&marker, json!({"window": "day"}));
        job["expires_at"] = json!("2026-12-03T09:00:01Z");
        let answer = enqueue(&daemon, job).await;
        assert_due(&answer, "2026-12-03T09:00:00Z");
    }
    daemon.stop().await;
}
