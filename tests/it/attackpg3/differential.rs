//! The same requests to a daemon on SQLite and one on PostgreSQL get the
//! same answers, op by op, for edge inputs.

use crate::helpers::backend::{adopt, new_database, on_postgres};
use crate::helpers::daemon::{TestDaemon, config_text};
use serde_json::{Value, json};

/// An answer with what differs by the moment it was made taken out:
/// write times (and a follow-up's time, counted from its enqueue), the
/// node list, a prune's cut-off, the cursors that hold such times.
fn normal(mut v: Value) -> Value {
    let now = coax_scheduler::time::now();
    let days: Vec<String> = [-1, 0, 1]
        .iter()
        .map(|d| coax_scheduler::time::format(now + d * 86_400_000)[..10].to_owned())
        .collect();
    strip(&mut v, &days);
    v
}

fn strip(v: &mut Value, days: &[String]) {
    match v {
        Value::Object(map) => {
            for k in ["created_at", "updated_at", "nodes", "before", "dispatch"] {
                map.remove(k);
            }
            if let Some(next) = map.get_mut("next").filter(|n| n.is_string()) {
                *next = json!("CURSOR");
            }
            map.values_mut().for_each(|v| strip(v, days));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| strip(v, days)),
        // Follow-ups count from the time they were enqueued.
        Value::String(t) if days.iter().any(|d| t.starts_with(d.as_str())) => *t = "NOW".into(),
        _ => {}
    }
}

fn config() -> String {
    config_text(
        "http://127.0.0.1:9",
        "default_timezone = \"America/New_York\"\ndefault_window = \"business\"",
        "",
    ) + "\n[windows.business]\nmon = \"09:00-20:00\"\ntue = \"09:00-20:00\"\n\
         wed = \"09:00-12:00, 13:00-20:00\"\nthu = \"09:00-20:00\"\nfri = \"09:00-20:00\"\n\
         sat = \"10:00-16:00\"\nholidays = [\"2099-12-25\"]\n"
}

fn job(extra: Value) -> Value {
    let mut job = json!({"kind": "message", "channel": "sms", "scheduled_at": "2099-06-01T12:00:00Z",
                         "payload": {"message": "hi", "phone": "+15550100"}});
    if let (Some(job), Value::Object(extra)) = (job.as_object_mut(), extra) {
        job.extend(extra);
        if job.contains_key("after") {
            job.remove("scheduled_at");
        }
    }
    job
}

/// The requests, in order; a `list` answer's cursor feeds the next
/// request that names `"after":"NEXT"`.
fn script() -> Vec<Value> {
    let mut s = vec![
        json!({"op": "enqueue", "jobs": [
            job(json!({"key": "a", "tags": ["t1", "t2", "t1"]})),
            job(json!({"after": {"key": "a"}, "delay": "1h", "key": "b", "tags": ["t1"]})),
            job(json!({"after": {"key": "b"}, "key": "c"})),
            job(json!({"scheduled_at": "2099-06-06T03:00", "timezone": "Australia/Sydney", "tags": ["t2"]})),
            job(json!({"scheduled_at": "2099-06-07T23:00:00Z", "expires_at": "2099-06-07T23:30:00Z"})),
            job(json!({"scheduled_at": "2099-03-08T02:30", "window": "none", "tags": ["t3"]})),
            job(json!({"scheduled_at": "2099-12-25T10:00", "ttl": "48h", "tags": ["t3"]})),
        ]}),
        json!({"op": "enqueue", "jobs": [job(json!({"key": "a"})), job(json!({"key": "d", "after": {"id": 3}}))]}),
        json!({"op": "enqueue", "jobs": []}),
        json!({"op": "enqueue", "jobs": [job(json!({"key": "e", "tags": ["t4"]}))]}),
        json!({"op": "enqueue", "job": job(json!({"key": "f", "after": {"key": "e"}, "ttl": "1h"}))}),
        json!({"op": "enqueue", "job": job(json!({"scheduled_at": "2099-06-07T19:59:59-04:00", "expires_at": "2099-06-07T20:00:00-04:00"}))}),
        json!({"op": "enqueue", "job": job(json!({"scheduled_at": "2099-06-07T19:59:59-04:00", "expires_at": "2099-06-07T19:59:59-04:00"}))}),
        json!({"op": "enqueue", "job": job(json!({"scheduled_at": "9999-12-30T23:00", "timezone": "Pacific/Kiritimati"}))}),
        json!({"op": "enqueue", "job": job(json!({"key": "b"}))}),
        json!({"op": "get", "key": "b"}),
        json!({"op": "get", "key": "zz"}),
        json!({"op": "get", "id": 999}),
        json!({"op": "get", "id": -1}),
        json!({"op": "stats"}),
    ];
    for order in ["due", "recent"] {
        for filter in [
            json!({}),
            json!({"tag": "t1"}),
            json!({"state": "waiting"}),
            json!({"state": "expired"}),
            json!({"due_before": "2099-06-06T00:00:00Z"}),
        ] {
            let mut req = json!({"op": "list", "order": order, "limit": 2});
            if let (Some(r), Value::Object(f)) = (req.as_object_mut(), filter) {
                r.extend(f);
            }
            s.push(req.clone());
            req["after"] = json!("NEXT");
            s.push(req.clone());
            s.push(req);
        }
    }
    s.extend([
        json!({"op": "list", "after": "garbage"}),
        json!({"op": "list", "after": "r1.1"}),
        json!({"op": "list", "after": "d-1.-1"}),
        json!({"op": "list", "after": "d9223372036854775807.9223372036854775807"}),
        json!({"op": "list", "after": "d-9223372036854775808.0", "limit": 1}),
        json!({"op": "list", "order": "recent", "after": "r9223372036854775807.1", "limit": 1}),
        json!({"op": "list", "order": "recent", "after": "r0.0"}),
        json!({"op": "list", "limit": 10000}),
        json!({"op": "list", "limit": 10001}),
        json!({"op": "list", "limit": 0}),
        json!({"op": "list", "tag": "nope"}),
        json!({"op": "list", "state": "nope"}),
        json!({"op": "reschedule", "id": 5, "scheduled_at": "2099-06-09T08:00:00"}),
        json!({"op": "reschedule", "id": 6, "scheduled_at": "2099-06-08T00:00:00Z"}),
        json!({"op": "reschedule", "id": 3, "scheduled_at": "2099-06-08T00:00:00Z"}),
        // Nothing moves into the past: the dispatcher would race the script.
        json!({"op": "reschedule", "tag": "t3", "by": "-30m"}),
        json!({"op": "reschedule", "tag": "t3", "by": "100000h"}),
        json!({"op": "reschedule", "tag": "t2", "by": "-1h"}),
        json!({"op": "reschedule", "tag": "t2", "by": "1000000h"}),
        json!({"op": "reschedule", "tag": "none", "by": "1h"}),
        json!({"op": "requeue", "id": 1}),
        json!({"op": "requeue", "id": 999}),
        json!({"op": "cancel", "id": 2}),
        json!({"op": "cancel", "tag": "t4"}),
        json!({"op": "cancel", "id": 1}),
        json!({"op": "cancel", "id": 2}),
        json!({"op": "cancel", "tag": "t4"}),
        json!({"op": "cancel", "id": 1}),
        json!({"op": "cancel", "id": 3}),
        json!({"op": "cancel", "tag": "t3"}),
        json!({"op": "cancel", "tag": "t3"}),
        json!({"op": "get", "id": 1}),
        json!({"op": "get", "id": 4}),
        json!({"op": "stats"}),
        json!({"op": "list", "order": "recent", "limit": 100}),
        json!({"op": "schedule_put", "name": "daily", "cron": "0 0 9 * * *", "timezone": "Europe/London",
               "job": {"kind": "message", "channel": "sms", "payload": {"message": "hi", "phone": "+15550100"}}}),
        json!({"op": "schedule_put", "name": "daily", "cron": "0 0 10 * * MON-FRI", "timezone": "Europe/London",
               "catch_up": "latest", "job": {"kind": "message", "channel": "sms", "payload": {"message": "hi", "phone": "+15550100"}}}),
        json!({"op": "schedule_put", "name": "bad", "cron": "61 * * * *", "timezone": "UTC",
               "job": {"kind": "message", "channel": "sms", "payload": {"message": "hi", "phone": "+15550100"}}}),
        json!({"op": "schedule_get", "name": "daily"}),
        json!({"op": "schedule_get", "name": "nope"}),
        json!({"op": "schedule_list"}),
        json!({"op": "schedule_list", "after": "daily"}),
        json!({"op": "schedule_delete", "name": "daily"}),
        json!({"op": "schedule_delete", "name": "daily"}),
        // Not "0s": a job changed in the same millisecond is not older.
        json!({"op": "prune", "older_than": "1h", "dry_run": true}),
        json!({"op": "prune", "older_than": "100000000h"}),
        json!({"op": "resume"}),
        json!({"op": "stats"}),
        // Last: on PostgreSQL these use up ids (see the README).
        json!({"op": "enqueue", "jobs": [job(json!({"key": "x"})), job(json!({"after": {"key": "nope"}}))]}),
        json!({"op": "enqueue", "jobs": [job(json!({"key": "g", "tags": ["t4"]})), job(json!({"key": "g", "tags": ["t5"]}))]}),
    ]);
    s
}

/// Runs the script against `daemon`; each request with its answer.
async fn answers(daemon: &TestDaemon) -> Vec<(Value, Value)> {
    let mut next = Value::Null;
    let mut out = Vec::new();
    for mut req in script() {
        if req.get("after") == Some(&json!("NEXT")) {
            req["after"] = next.clone();
        }
        let answer = daemon.request(req.clone()).await;
        if req["op"] == "list" {
            next = answer.get("next").cloned().unwrap_or(Value::Null);
        }
        out.push((req, normal(answer)));
    }
    out
}

/// Every answer of the script is the same on both stores. (It found that
/// a duplicate key used up an id on PostgreSQL, so that every later id
/// differed; see `pg_duplicate_key_does_not_use_up_an_id`.)
#[tokio::test]
async fn pg_answers_the_same_as_sqlite_op_by_op() {
    let sqlite = TestDaemon::start_with(&config()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    adopt(dir.path(), &new_database().await);
    let text = on_postgres(&config(), dir.path());
    let postgres = TestDaemon::start_in(dir, &text).await;
    let (a, b) = (answers(&sqlite).await, answers(&postgres).await);
    let mut diffs = Vec::new();
    for ((req, x), (_, y)) in a.iter().zip(&b) {
        if x != y {
            diffs.push(format!("{req}\n  sqlite:   {x}\n  postgres: {y}"));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
