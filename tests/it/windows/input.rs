//! Bad `timezone`, `window` and local `scheduled_at` values are refused at
//! enqueue with `invalid_job`, naming the field; a bad `due_before` is a
//! `bad_request` naming it.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_zones_windows_and_local_times_are_invalid_job_naming_the_field() {
    let coax = accepting_coax().await;
    let daemon = TestDaemon::start_with(&config(&coax, "", &daily("day", "09:00-17:00"))).await;
    let cases = [
        (json!({"timezone": "Mars/Olympus_Mons"}), "timezone"),
        (json!({"timezone": "Etc/Unknown"}), "timezone"),
        (json!({"timezone": 10}), "timezone"),
        (json!({"timezone": ""}), "timezone"),
        (json!({"timezone": ["UTC"]}), "timezone"),
        (json!({"window": "nights"}), "window"),
        (json!({"window": 3}), "window"),
        (json!({"window": ""}), "window"),
        (json!({"scheduled_at": "2026-12-01T09:xx"}), "scheduled_at"),
        (
            json!({"scheduled_at": "2026-12-01T09:00garbage"}),
            "scheduled_at",
        ),
        (json!({"scheduled_at": "2026-02-30T09:00"}), "scheduled_at"),
        (json!({"scheduled_at": "2026-12-01T24:00"}), "scheduled_at"),
        (json!({"scheduled_at": "2026-12-01 09:00"}), "scheduled_at"),
        (
            json!({"scheduled_at": "2026-12-01T09:00", "timezone": "Nowhere/City"}),
            "timezone",
        ),
    ];
    for (fields, field) in cases {
        let answer = daemon
            .request(json!({"op": "enqueue", "job": sms("bad", fields.clone())}))
            .await;
        assert_eq!(answer["ok"], false, "{fields} was accepted: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_job", "{fields}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{fields}: {answer}");
    }
    let answer = daemon
        .request(json!({"op": "list", "order": "recent", "due_before": "2026-12-01T09:00:00Z"}))
        .await;
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    assert_eq!(answer["error"]["field"], "due_before", "{answer}");
    let answer = daemon
        .request(json!({"op": "list", "due_before": "2026-12-01T09:00"}))
        .await;
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    assert_eq!(answer["error"]["field"], "due_before", "{answer}");
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["scheduled"], 0, "{stats}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_scheduled_at_past_the_tz_database_is_refused_saying_so() {
    // The tz database reaches 9999-12-30 (as UTC); on the last day of
    // 9999 only a time with an offset can be given, and the refusal of a
    // local one says so instead of calling it no RFC 3339 time.
    let coax = accepting_coax().await;
    let daemon = TestDaemon::start_with(&config(&coax, "", "")).await;
    let with_offset = daemon
        .request(json!({"op": "enqueue", "job": sms("offset", json!({
            "scheduled_at": "9999-12-31T12:00:00Z"
        }))}))
        .await;
    assert_eq!(with_offset["ok"], true, "{with_offset}");
    let local = daemon
        .request(json!({"op": "enqueue", "job": sms("local", json!({
            "scheduled_at": "9999-12-31T12:00", "timezone": "UTC"
        }))}))
        .await;
    assert_eq!(local["error"]["code"], "invalid_job", "{local}");
    assert_eq!(local["error"]["field"], "scheduled_at", "{local}");
    let message = local["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("give a time with an offset"), "{local}");
    // A well-formed local time that is no date is named as such.
    let bad_date = daemon
        .request(json!({"op": "enqueue", "job": sms("bad-date", json!({
            "scheduled_at": "2026-02-30T09:00"
        }))}))
        .await;
    let message = bad_date["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not a real local date and time"),
        "{bad_date}"
    );
    daemon.stop().await;
}
