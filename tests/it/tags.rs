//! Tags: a job's labels, and `list`, `cancel` and `reschedule` by tag, end
//! to end through the socket and the CLI.

use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{TestDaemon, binary};
use coax_scheduler::time;
use serde_json::{Value, json};

fn job(delay: &str, tags: Value) -> Value {
    json!({"kind": "message", "channel": "sms", "delay": delay, "tags": tags,
           "payload": {"message": "Your appointment is soon", "phone": "+15550100"}})
}

async fn daemon() -> (CoaxStub, TestDaemon) {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    (coax, daemon)
}

fn ids(answer: &Value) -> Vec<i64> {
    answer["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["id"].as_i64())
        .collect()
}

fn ms(text: &Value) -> i64 {
    time::parse_rfc3339(text.as_str().unwrap_or_default()).expect("a time")
}

#[tokio::test]
async fn tags_are_checked_kept_once_each_and_shown() {
    let (_coax, daemon) = daemon().await;
    let id = daemon
        .enqueue(job(
            "1h",
            json!(["appointment:8812", "reminder", "reminder"]),
        ))
        .await;
    assert_eq!(
        daemon.get(id).await["tags"],
        json!(["appointment:8812", "reminder"])
    );
    let untagged = daemon.enqueue(job("1h", Value::Null)).await;
    assert_eq!(daemon.get(untagged).await["tags"], json!([]));

    let too_many: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    let long = "x".repeat(65);
    for bad in [
        json!("appointment"),
        json!([1]),
        json!([""]),
        json!(["a b"]),
        json!(["ümlaut"]),
        json!([long]),
        json!(too_many),
    ] {
        let answer = daemon
            .request(json!({"op": "enqueue", "job": job("1h", bad.clone())}))
            .await;
        assert_eq!(answer["ok"], false, "{bad}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_job", "{answer}");
        assert_eq!(answer["error"]["field"], "tags", "{answer}");
    }
    let sixteen: Vec<String> = (0..16).map(|i| format!("t{i}")).collect();
    let answer = daemon
        .request(json!({"op": "enqueue", "job": job("1h", json!(sixteen))}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
}

#[tokio::test]
async fn list_by_tag_combines_with_state_order_and_paging() {
    let (_coax, daemon) = daemon().await;
    let a: Vec<i64> = futures_ids(&daemon, 5, "appointment:1").await;
    let _b = futures_ids(&daemon, 3, "appointment:2").await;
    let answer = daemon
        .request(json!({"op": "list", "tag": "appointment:1"}))
        .await;
    assert_eq!(ids(&answer), a, "{answer}");

    // Paged one at a time, in order `recent` too, every job once.
    for order in ["due", "recent"] {
        let mut seen = Vec::new();
        let mut after = Value::Null;
        loop {
            let answer = daemon
                .request(json!({"op": "list", "tag": "appointment:1", "limit": 2,
                                "order": order, "after": after}))
                .await;
            seen.extend(ids(&answer));
            after = answer["next"].clone();
            if after.is_null() {
                break;
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, a, "{order}");
    }

    daemon.request(json!({"op": "cancel", "id": a[0]})).await;
    let answer = daemon
        .request(json!({"op": "list", "tag": "appointment:1", "state": "cancelled"}))
        .await;
    assert_eq!(ids(&answer), vec![a[0]], "{answer}");
    let answer = daemon.request(json!({"op": "list", "tag": "nobody"})).await;
    assert_eq!(ids(&answer), Vec::<i64>::new(), "{answer}");
    let answer = daemon.request(json!({"op": "list", "tag": "a b"})).await;
    assert_eq!(answer["error"]["field"], "tag", "{answer}");
}

/// Enqueues `n` jobs tagged `tag`, due 1 h, 2 h, ... from now.
async fn futures_ids(daemon: &TestDaemon, n: usize, tag: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 1..=n {
        ids.push(daemon.enqueue(job(&format!("{i}h"), json!([tag]))).await);
    }
    ids
}

#[tokio::test]
async fn cancel_by_tag_cancels_scheduled_and_held_jobs_of_that_tag_only() {
    let (_coax, daemon) = daemon().await;
    let mine = futures_ids(&daemon, 3, "appointment:8812").await;
    let other = daemon.enqueue(job("1h", json!(["appointment:9"]))).await;
    // One of mine already cancelled is not counted again.
    daemon.request(json!({"op": "cancel", "id": mine[2]})).await;
    let answer = daemon
        .request(json!({"op": "cancel", "tag": "appointment:8812"}))
        .await;
    assert_eq!(
        answer,
        json!({"ok": true, "cancelled": 2, "cancelled_children": 0})
    );
    for id in &mine {
        assert_eq!(daemon.get(*id).await["state"], "cancelled");
    }
    assert_eq!(daemon.get(other).await["state"], "scheduled");
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["cancelled"], 3, "{stats}");
    assert_eq!(stats["counts"]["scheduled"], 1, "{stats}");

    let answer = daemon
        .request(json!({"op": "cancel", "tag": "nobody"}))
        .await;
    assert_eq!(
        answer,
        json!({"ok": true, "cancelled": 0, "cancelled_children": 0})
    );
    let answer = daemon
        .request(json!({"op": "cancel", "tag": "x", "id": other}))
        .await;
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
}

#[tokio::test]
async fn reschedule_by_tag_moves_by_a_signed_duration_with_expiry_rules() {
    let (_coax, daemon) = daemon().await;
    let ids = futures_ids(&daemon, 2, "visit:1").await;
    let mut expiring = job("1h", json!(["visit:1"]));
    expiring["ttl"] = json!("90m");
    let expiring = daemon.enqueue(expiring).await;
    let before: Vec<i64> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(ms(&daemon.get(*id).await["scheduled_at"]));
        }
        v
    };

    let answer = daemon
        .request(json!({"op": "reschedule", "tag": "visit:1", "by": "-30m"}))
        .await;
    assert_eq!(answer, json!({"ok": true, "rescheduled": 3, "expired": 0}));
    for (id, was) in ids.iter().zip(&before) {
        let view = daemon.get(*id).await;
        assert_eq!(ms(&view["scheduled_at"]), was - 30 * 60_000, "{view}");
        assert_eq!(view["due_at"], view["scheduled_at"], "{view}");
    }

    // Forward past the expiry of one: that one expires, the rest move.
    let answer = daemon
        .request(json!({"op": "reschedule", "tag": "visit:1", "by": "+2h"}))
        .await;
    assert_eq!(answer, json!({"ok": true, "rescheduled": 2, "expired": 1}));
    assert_eq!(daemon.get(expiring).await["state"], "expired");

    // Into the past: due now, and sent.
    let answer = daemon
        .request(json!({"op": "reschedule", "tag": "visit:1", "by": "-30d"}))
        .await;
    assert_eq!(answer["rescheduled"], 2, "{answer}");
    for id in &ids {
        daemon.wait_for_state(*id, "sent").await;
    }

    for bad in [json!("soon"), json!("-"), json!(5), Value::Null] {
        let answer = daemon
            .request(json!({"op": "reschedule", "tag": "visit:1", "by": bad}))
            .await;
        assert_eq!(answer["ok"], false, "{bad}: {answer}");
    }
}

#[tokio::test]
async fn the_cli_lists_cancels_and_moves_by_tag() {
    let (_coax, daemon) = daemon().await;
    // Due in 3 h and 4 h: moved back 1 h, both stay ahead.
    let mut ids = Vec::new();
    for delay in ["3h", "4h"] {
        ids.push(daemon.enqueue(job(delay, json!(["appointment:7"]))).await);
    }
    let socket = daemon.socket.to_str().expect("a UTF-8 path").to_owned();
    let run = move |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .expect("run the CLI");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&["--json", "list", "--tag", "appointment:7"])
    })
    .await
    .expect("CLI");
    let answer: Value = serde_json::from_str(listed.trim()).expect("JSON");
    assert_eq!(self::ids(&answer), ids);

    let before = ms(&daemon.get(ids[1]).await["scheduled_at"]);
    let moved = tokio::task::spawn_blocking({
        let run = run.clone();
        move || {
            run(&["reschedule", "--tag", "appointment:7", "--by", "-30m"]);
            run(&["reschedule", "--tag", "appointment:7", "--by=-30m"])
        }
    })
    .await
    .expect("CLI");
    assert!(moved.contains("moved 2 jobs"), "{moved}");
    assert_eq!(
        ms(&daemon.get(ids[1]).await["scheduled_at"]),
        before - 60 * 60_000
    );
    let cancelled = tokio::task::spawn_blocking(move || run(&["cancel", "--tag", "appointment:7"]))
        .await
        .expect("CLI");
    assert!(cancelled.contains("cancelled 2 jobs"), "{cancelled}");
}

/// A client's job could take a recurring occurrence's place by using its
/// key (the occurrence then exists already, so is never created), or join
/// a schedule's tag: keys and tags starting with `schedule:` are refused.
#[tokio::test]
async fn keys_and_tags_in_the_schedule_namespace_are_refused() {
    let (_coax, daemon) = daemon().await;
    let mut keyed = job("1h", Value::Null);
    keyed["key"] = json!("schedule:weekly:2026-12-07T22:00:00.000Z");
    let answer = daemon.request(json!({"op": "enqueue", "job": keyed})).await;
    assert_eq!(answer["error"]["code"], "invalid_job", "{answer}");
    assert_eq!(answer["error"]["field"], "key", "{answer}");
    let answer = daemon
        .request(json!({"op": "enqueue", "job": job("1h", json!(["schedule:weekly"]))}))
        .await;
    assert_eq!(answer["error"]["code"], "invalid_job", "{answer}");
    assert_eq!(answer["error"]["field"], "tags", "{answer}");
    // Such a tag can still be listed and cancelled by: it is a schedule's.
    let answer = daemon
        .request(json!({"op": "list", "tag": "schedule:weekly"}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
}

/// A move that would take a job past 9999-12-31, the last time a job may
/// name, is refused and moves nothing (it used to park the job there).
#[tokio::test]
async fn reschedule_by_tag_past_the_year_9999_is_refused_and_moves_nothing() {
    let (_coax, daemon) = daemon().await;
    let ids = futures_ids(&daemon, 2, "far").await;
    let before = daemon.get(ids[0]).await["scheduled_at"].clone();
    for by in ["70000000h", "+8000y"] {
        let answer = daemon
            .request(json!({"op": "reschedule", "tag": "far", "by": by}))
            .await;
        assert_eq!(answer["error"]["code"], "bad_request", "{by}: {answer}");
        assert_eq!(answer["error"]["field"], "by", "{answer}");
    }
    assert_eq!(daemon.get(ids[0]).await["scheduled_at"], before);
}
