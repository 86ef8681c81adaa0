//! An outside attack on follow-ups, tags and recurring sends (issue 11).
//! Each test here is named after a defect the attack found and is ignored
//! until that defect is fixed; each asserts what a client or Coax would
//! see, never how long anything took.

use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{TestClock, TestDaemon, config_text};
use crate::helpers::{PATIENCE, edit_db, wait_until};
use coax_scheduler::schedule::recurrence::Recurrence;
use coax_scheduler::time::{self, Millis};
use serde_json::{Value, json};
use std::sync::Arc;

fn t(text: &str) -> Millis {
    time::parse_rfc3339(text).expect("a time")
}

fn template() -> Value {
    json!({"kind": "message", "channel": "sms",
           "payload": {"message": "From the schedule", "phone": "+15550100"}})
}

async fn start(clock: Arc<TestClock>) -> (CoaxStub, TestDaemon) {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let daemon = TestDaemon::start_with_clock(&config, clock).await;
    (coax, daemon)
}

/// In Europe/Berlin the clocks go back at 03:00 CEST on 2026-10-25, so
/// 02:00-03:00 local happens twice; the second time is 01:00-02:00 UTC.
const INSIDE_THE_REPEATED_HOUR: &str = "2026-10-25T01:10:00Z";

#[test]
fn a_cron_read_inside_a_repeated_dst_hour_still_has_a_next_occurrence() {
    let from = t(INSIDE_THE_REPEATED_HOUR);
    for cron in [
        "0 0 9 * * MON",
        "0 30 2 * * *",
        "0 */15 * * * *",
        "* * * * * *",
    ] {
        let r = Recurrence::parse(cron, "Europe/Berlin").expect("a valid cron");
        let next = r.next_after(from);
        // None means "no occurrence left before 9999": the task then
        // stores next_at null and the schedule never fires again.
        assert!(
            next.is_some_and(|n| n > from),
            "{cron} from {INSIDE_THE_REPEATED_HOUR}: {:?}",
            next.map(time::format)
        );
    }
}

#[tokio::test]
async fn a_schedule_put_during_a_repeated_dst_hour_is_accepted() {
    let clock = TestClock::at(t(INSIDE_THE_REPEATED_HOUR));
    let (_coax, daemon) = start(clock).await;
    let answer = daemon
        .request(
            json!({"op": "schedule_put", "name": "nightly", "cron": "0 30 2 * * *",
                        "timezone": "Europe/Berlin", "job": template()}),
        )
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    // 26 October, 02:30 CET (+01:00).
    assert_eq!(
        answer["schedule"]["next_at"], "2026-10-26T01:30:00.000Z",
        "{answer}"
    );
}

#[tokio::test]
async fn a_client_key_in_the_schedule_namespace_does_not_swallow_an_occurrence() {
    let clock = TestClock::at(t("2026-12-01T10:59:55Z"));
    let (coax, daemon) = start(clock).await;
    let put = daemon
        .request(
            json!({"op": "schedule_put", "name": "hourly", "cron": "0 0 * * * *",
                        "timezone": "UTC", "job": template()}),
        )
        .await;
    assert_eq!(put["ok"], true, "{put}");
    assert_eq!(put["schedule"]["next_at"], "2026-12-01T11:00:00.000Z");
    // A client's job with the key the 11:00 occurrence will get (for
    // another message, years later) would take its place: such keys are
    // refused.
    let squatter = daemon
        .request(json!({"op": "enqueue", "job": {
            "kind": "message", "channel": "sms",
            "key": "schedule:hourly:2026-12-01T11:00:00.000Z",
            "scheduled_at": "2030-01-01T00:00:00Z",
            "payload": {"message": "Something else", "phone": "+15550199"}}}))
        .await;
    assert_eq!(squatter["error"]["field"], "key", "{squatter}");
    wait_until("the schedule to move past 11:00", PATIENCE, || async {
        let got = daemon
            .request(json!({"op": "schedule_get", "name": "hourly"}))
            .await;
        (got["schedule"]["next_at"] == "2026-12-01T12:00:00.000Z").then_some(())
    })
    .await;
    // The 11:00 occurrence is the schedule's: its message reaches Coax.
    wait_until("the 11:00 occurrence to reach Coax", PATIENCE, || async {
        coax.requests_to("/send/sms")
            .iter()
            .any(|r| r.json()["message"] == "From the schedule")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn reschedule_by_tag_past_year_9999_is_refused_not_parked_at_9999() {
    let clock = TestClock::at(t("2026-12-01T10:00:00Z"));
    let (_coax, daemon) = start(clock).await;
    let mut job = template();
    job["tags"] = json!(["appointment:8812"]);
    job["scheduled_at"] = json!("2026-12-03T09:00:00Z");
    let id = daemon.enqueue(job).await;
    let answer = daemon
        .request(json!({"op": "reschedule", "tag": "appointment:8812", "by": "9999999999h"}))
        .await;
    // A single reschedule to a time past 9999 is refused; a move by tag
    // that lands there must be too, and must leave the job where it was
    // (a clamp cannot be undone: moving back by the same amount does not
    // bring the job back).
    assert_eq!(answer["ok"], false, "{answer}");
    let view = daemon.get(id).await;
    assert_eq!(view["scheduled_at"], "2026-12-03T09:00:00.000Z", "{view}");
}

/// 200,000 finished jobs, as a queue with some history has.
const HISTORY: &str =
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
         INSERT INTO jobs (key, kind, channel, scheduled_at, state, created_at, updated_at,
                           payload, due_at, timezone, send_window)
         SELECT 'old-' || i, 'message', 'sms', 1700000000000, 'cancelled', 1700000000000,
                1700000000000, '{\"message\":\"m\",\"phone\":\"+15550100\"}',
                1700000000000, 'UTC', 'none' FROM n;";

/// How many follow-ups one parent gets in the store-holding test: as
/// many as a job may have.
const CHILDREN: usize = 1_000;

/// A parent's send releases all its waiting follow-ups in one store call,
/// as the one-transaction rule requires: with 100,000 of them that call
/// held every request and claim for a minute. A job now takes at most
/// 1,000 follow-ups, and finding them walks the parent index, so the
/// release of the most a parent may have leaves the store answering.
#[tokio::test]
async fn a_parent_with_many_follow_ups_being_sent_does_not_hold_the_store() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    // A queue with history: 200,000 finished jobs. On an empty queue the
    // same release is over in about a second; with these rows it held the
    // store of a release build for 63 s (100,000 follow-ups).
    edit_db(daemon.db(), HISTORY);
    let mut parent = template();
    parent["key"] = json!("parent");
    parent["scheduled_at"] = json!("2030-01-01T00:00:00Z");
    let parent = daemon.enqueue(parent).await;
    for batch in 0..CHILDREN.div_ceil(1000) {
        let jobs: Vec<Value> = (0..CHILDREN.min(1000))
            .map(|i| {
                let mut child = template();
                child["key"] = json!(format!("child-{batch}-{i}"));
                child["after"] = json!({"key": "parent"});
                child["delay"] = json!("1d");
                child
            })
            .collect();
        let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
        assert_eq!(answer["ok"], true, "batch {batch}");
    }
    // Now the parent is due; the follow-ups are released when it is sent.
    let moved = daemon
        .request(json!({"op": "reschedule", "id": parent,
                        "scheduled_at": time::format(time::now())}))
        .await;
    assert_eq!(moved["ok"], true, "{moved}");
    coax.wait_for_requests(1, PATIENCE).await;
    // From the parent's send until every follow-up is scheduled, the
    // store must keep answering: each `stats` gets its answer within the
    // patience every other wait in the suite allows.
    loop {
        let stats = tokio::time::timeout(PATIENCE, daemon.request(json!({"op": "stats"})))
            .await
            .expect("stats answered while the follow-ups were being released");
        assert_eq!(stats["ok"], true, "{stats}");
        if stats["counts"]["waiting"] == 0 {
            assert_eq!(stats["counts"]["scheduled"], CHILDREN, "{stats}");
            assert_eq!(stats["counts"]["sent"], 1, "{stats}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn schedule_list_answers_stay_under_8_mib() {
    let clock = TestClock::at(t("2026-12-01T10:00:00Z"));
    let (_coax, daemon) = start(clock).await;
    // Each template is a valid job: its payload is under the 64 KiB cap.
    let message = "x".repeat(60_000);
    for i in 0..150 {
        let mut job = template();
        job["payload"]["message"] = json!(message);
        let answer = daemon
            .request(json!({"op": "schedule_put", "name": format!("yearly-{i}"),
                            "cron": "0 0 9 1 1 *", "timezone": "UTC", "job": job}))
            .await;
        assert_eq!(answer["ok"], true, "schedule {i}");
    }
    let line = daemon.raw(r#"{"op":"schedule_list"}"#).await;
    assert!(
        line.len() <= 8 * 1024 * 1024,
        "one answer line of {} bytes",
        line.len()
    );
}

#[tokio::test]
async fn a_corrected_forward_clock_step_does_not_silence_a_schedule() {
    let clock = TestClock::at(t("2026-12-01T10:59:50Z"));
    let (coax, daemon) = start(clock.clone()).await;
    let put = daemon
        .request(
            json!({"op": "schedule_put", "name": "hourly", "cron": "0 0 * * * *",
                        "timezone": "UTC", "job": template()}),
        )
        .await;
    assert_eq!(put["ok"], true, "{put}");
    // A bad NTP answer puts the clock a day ahead; the schedule task sees
    // it (it sleeps at most poll_interval) and moves on past that day.
    clock.step(86_400_000);
    wait_until("the schedule to see the step", PATIENCE, || async {
        let got = daemon
            .request(json!({"op": "schedule_get", "name": "hourly"}))
            .await;
        (got["schedule"]["next_at"] != "2026-12-01T11:00:00.000Z").then_some(())
    })
    .await;
    // The step is corrected a moment later.
    clock.step(-86_400_000);
    // 11:00 comes (about 10 s away): its occurrence is created and sent.
    wait_until("the 11:00 occurrence to reach Coax", PATIENCE, || async {
        coax.requests_to("/send/sms")
            .iter()
            .any(|r| r.json()["message"] == "From the schedule")
            .then_some(())
    })
    .await;
}
