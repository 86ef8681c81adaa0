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
#[ignore = "defect: a local scheduled_at on 9999-12-31 (UTC) is refused as not RFC 3339"]
async fn a_local_scheduled_at_on_the_last_day_of_9999_is_accepted_like_one_with_an_offset() {
    // The README allows times up to 9999-12-31 (UTC), and the same instant
    // with an offset is accepted; the local form fails past jiff's range
    // (which ends at 9999-12-30T22:00Z) with a message that calls a
    // well-formed local time "not an RFC 3339 time".
    let coax = accepting_coax().await;
    let daemon = TestDaemon::start_with(&config(&coax, "", "")).await;
    for (local, offset) in [
        ("9999-12-31T00:00", "9999-12-31T00:00:00Z"),
        ("9999-12-31T12:00", "9999-12-31T12:00:00Z"),
    ] {
        let with_offset = daemon
            .request(
                json!({"op": "enqueue", "job": sms("offset", json!({"scheduled_at": offset}))}),
            )
            .await;
        assert_eq!(with_offset["ok"], true, "{offset}: {with_offset}");
        let local_answer = daemon
            .request(json!({"op": "enqueue", "job": sms("local", json!({
                "scheduled_at": local, "timezone": "UTC"
            }))}))
            .await;
        assert_eq!(local_answer["ok"], true, "{local}: {local_answer}");
        assert_eq!(local_answer["scheduled_at"], with_offset["scheduled_at"]);
    }
    daemon.stop().await;
}
