//! A reload that changes the windows: queued jobs are settled again at
//! once, so none is sent outside its new window and none waits for an
//! opening that no longer exists; a job whose window the new config lacks
//! is held, saying which.

use super::*;

fn windows(early: &str, late: &str, gone: bool) -> String {
    let mut text = format!("{}{}", daily("early", early), daily("late", late));
    if gone {
        text.push_str(&daily("gone", "09:00-20:00"));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_narrows_or_moves_windows_settles_queued_jobs_anew() {
    let coax = accepting_coax().await;
    let before = config(&coax, "", &windows("05:00-20:00", "09:00-20:00", true));
    let clock = TestClock::at(at("2026-12-02T04:00:00Z"));
    let daemon = TestDaemon::start_reloadable(&before, clock.clone()).await;
    let id = |answer: Value| answer["id"].as_i64().expect("id");

    // Deferred to an opening at 09:00 that moves to 07:00.
    let late = enqueue(&daemon, sms("late", json!({"window": "late"}))).await;
    assert_due(&late, "2026-12-02T09:00:00Z");
    // Due at 06:00, inside the old window, outside the new one.
    let early = enqueue(
        &daemon,
        sms(
            "early",
            json!({"window": "early", "scheduled_at": "2026-12-02T06:00:00Z"}),
        ),
    )
    .await;
    assert_due(&early, "2026-12-02T06:00:00Z");
    // In a window the new config removes.
    let gone = enqueue(&daemon, sms("gone", json!({"window": "gone"}))).await;
    assert_due(&gone, "2026-12-02T09:00:00Z");
    let (late, early, gone) = (id(late), id(early), id(gone));

    daemon
        .reload(&config(
            &coax,
            "",
            &windows("07:00-20:00", "07:00-20:00", false),
        ))
        .await;
    let held = daemon.wait_for_state(gone, "held").await;
    assert!(
        held["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("\"gone\"")),
        "the reason names the window: {held}"
    );
    assert_due(&daemon.get(late).await, "2026-12-02T07:00:00Z");
    assert_due(&daemon.get(early).await, "2026-12-02T07:00:00Z");

    clock.set(at("2026-12-02T06:30:00Z"));
    send_a_windowless_job(&daemon, &coax, "at half past six").await;
    assert_eq!(sends_of(&coax, "early"), 0, "sent outside the new window");
    clock.set(at("2026-12-02T07:00:00Z"));
    daemon.wait_for_state(late, "sent").await;
    daemon.wait_for_state(early, "sent").await;
    assert_eq!(sends_of(&coax, "gone"), 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_due_now_is_not_sent_once_a_reload_shuts_its_window() {
    // The claim judges the window at claim time, whatever due_at says: a
    // job due at 10:00 under the old window waits after a reload that
    // closes its window at 10:00.
    let coax = accepting_coax().await;
    let before = config(&coax, "", &daily("day", "09:00-20:00"));
    let clock = TestClock::at(at("2026-12-02T09:30:00Z"));
    let daemon = TestDaemon::start_reloadable(&before, clock.clone()).await;
    let job = enqueue(
        &daemon,
        sms(
            "ten",
            json!({"window": "day", "scheduled_at": "2026-12-02T10:00:00Z"}),
        ),
    )
    .await;
    assert_due(&job, "2026-12-02T10:00:00Z");
    let id = job["id"].as_i64().expect("id");
    daemon
        .reload(&config(
            &coax,
            "",
            &daily("day", "09:00-10:00, 11:00-20:00"),
        ))
        .await;
    wait_until("the reload to move the job", PATIENCE, || async {
        (due_at(&daemon.get(id).await) == at("2026-12-02T11:00:00Z")).then_some(())
    })
    .await;
    clock.set(at("2026-12-02T10:30:00Z"));
    send_a_windowless_job(&daemon, &coax, "half past ten").await;
    assert_eq!(sends_of(&coax, "ten"), 0);
    clock.set(at("2026-12-02T11:00:00Z"));
    daemon.wait_for_state(id, "sent").await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_defers_a_job_whose_due_at_falls_in_a_shut_window() {
    // What a reload leaves for a moment before the queue is settled again:
    // a due_at that the window in force no longer allows. The claim judges
    // the window itself, so the job waits and shows its opening.
    let coax = accepting_coax().await;
    let (daemon, _clock) = start_at(
        &config(&coax, "", &daily("day", "09:00-20:00")),
        "2026-12-02T22:00:00Z",
    )
    .await;
    let job = enqueue(&daemon, sms("stale", json!({"window": "day"}))).await;
    assert_due(&job, "2026-12-03T09:00:00Z");
    let id = job["id"].as_i64().expect("id");
    crate::helpers::edit_db(
        daemon.db(),
        &format!("UPDATE jobs SET due_at = scheduled_at WHERE id = {id}"),
    );
    send_a_windowless_job(&daemon, &coax, "after the edit").await;
    assert_eq!(sends_of(&coax, "stale"), 0);
    assert_due(&daemon.get(id).await, "2026-12-03T09:00:00Z");
    daemon.stop().await;
}

async fn stats(daemon: &TestDaemon) -> Value {
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "{stats}");
    stats
}

/// How many jobs are due before `before`, by `list`.
async fn due_before(daemon: &TestDaemon, before: &str) -> usize {
    let answer = daemon
        .request(json!({"op": "list", "limit": 10_000, "due_before": before}))
        .await;
    answer["jobs"].as_array().expect("jobs").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_settles_a_queue_larger_than_one_step_of_the_walk() {
    // More jobs than one step of settling reads (1,000), so the walk goes
    // on across steps, with jobs moving earlier behind its position.
    const JOBS: u64 = 2_500;
    let coax = accepting_coax().await;
    let before = config(&coax, "", &daily("day", "09:00-20:00"));
    let clock = TestClock::at(at("2026-12-02T04:00:00Z"));
    let daemon = TestDaemon::start_reloadable(&before, clock.clone()).await;
    let jobs: Vec<Value> = (0..JOBS)
        .map(|n| sms(&format!("bulk {n}"), json!({"window": "day"})))
        .collect();
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(stats(&daemon).await["deferred"], JOBS);
    assert_eq!(due_before(&daemon, "2026-12-02T09:00:00Z").await, 0);

    daemon
        .reload(&config(&coax, "", &daily("day", "07:00-20:00")))
        .await;
    wait_until("every job to move to 07:00", PATIENCE, || async {
        (due_before(&daemon, "2026-12-02T07:00:01Z").await as u64 == JOBS).then_some(())
    })
    .await;

    // A config without windows: no job is deferred any more, and each of
    // these, naming a window that is gone, is held.
    daemon.reload(&config(&coax, "", "")).await;
    let stats = wait_until("every job to be held", PATIENCE, || async {
        let stats = stats(&daemon).await;
        (stats["counts"]["held"] == JOBS).then_some(stats)
    })
    .await;
    assert_eq!(stats["deferred"], 0, "{stats}");
    assert!(coax.requests().is_empty(), "a held job was sent");
    daemon.stop().await;
}
