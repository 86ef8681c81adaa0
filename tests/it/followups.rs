//! Follow-ups (`after`): a job that waits for another and goes out only if
//! that one was sent, end to end through the socket, the CLI and a kill -9.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{DaemonProcess, TestDaemon, binary, config_text};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::time;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn job(key: &str, message: &str) -> Value {
    json!({"kind": "message", "channel": "sms", "key": key,
           "payload": {"message": message, "phone": "+15550100"}})
}

/// A job `key` that follows `after` by `delay`.
fn follow(key: &str, after: Value, delay: &str) -> Value {
    let mut j = job(key, &format!("follow-up {key}"));
    j["after"] = after;
    j["delay"] = json!(delay);
    j
}

async fn daemon() -> (CoaxStub, TestDaemon) {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    (coax, daemon)
}

fn ms(text: &Value) -> i64 {
    time::parse_rfc3339(text.as_str().unwrap_or_default()).expect("a time")
}

/// When job `view` was sent: the end of its last attempt.
fn sent_at(view: &Value) -> i64 {
    let history = view["history"].as_array().expect("history");
    ms(&history.last().expect("an attempt")["finished_at"])
}

async fn batch(daemon: &TestDaemon, jobs: Vec<Value>) -> Vec<Value> {
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    answer["results"].as_array().expect("results").clone()
}

fn last_error(view: &Value) -> String {
    view["last_error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_follow_up_waits_then_is_due_its_delay_after_its_parent_is_sent() {
    let (coax, daemon) = daemon().await;
    let mut parent = job("thanks", "Thanks for your visit");
    parent["delay"] = json!("300ms");
    let results = batch(
        &daemon,
        vec![parent, follow("review", json!({"key": "thanks"}), "1s")],
    )
    .await;
    let (p, c) = (results[0]["id"].as_i64(), results[1]["id"].as_i64());
    let (p, c) = (p.expect("id"), c.expect("id"));
    assert_eq!(results[1]["state"], "waiting", "{results:?}");
    assert_eq!(results[1]["due_at"], Value::Null, "{results:?}");

    let child = daemon.get(c).await;
    assert_eq!(child["state"], "waiting", "{child}");
    assert_eq!(child["after"], p, "{child}");
    assert_eq!(child["due_at"], Value::Null, "{child}");
    assert_eq!(daemon.get(p).await["children"], json!([c]));

    let parent = daemon.wait_for_state(p, "sent").await;
    let child = daemon.get(c).await;
    assert!(
        child["state"] == "scheduled" || child["state"] == "sending" || child["state"] == "sent",
        "{child}"
    );
    assert_eq!(
        ms(&child["scheduled_at"]),
        sent_at(&parent) + 1_000,
        "{child}"
    );
    let child = daemon.wait_for_state(c, "sent").await;
    assert!(sent_at(&child) >= sent_at(&parent) + 1_000, "{child}");
    assert_eq!(coax.requests().len(), 2);
    daemon.stop().await;
}

#[tokio::test]
async fn a_follow_up_is_cancelled_naming_its_parent_when_the_parent_is_not_sent() {
    let (coax, daemon) = daemon().await;
    let cases = [
        ("skipped", Some(Reply::paused())),
        ("failed", Some(Reply::refused("opted out"))),
        ("expired", None),
    ];
    for (i, (end, reply)) in cases.into_iter().enumerate() {
        let mut parent = job(&format!("p{i}"), end);
        if let Some(reply) = reply {
            coax.push(reply);
            parent["delay"] = json!("200ms");
        } else {
            parent["scheduled_at"] = json!("2020-01-01T00:00:00Z");
            parent["expires_at"] = json!("2020-01-01T01:00:00Z");
        }
        let child = follow(&format!("c{i}"), json!({"key": format!("p{i}")}), "0s");
        let grandchild = follow(&format!("g{i}"), json!({"key": format!("c{i}")}), "0s");
        let results = batch(&daemon, vec![parent, child, grandchild]).await;
        let ids: Vec<i64> = results.iter().filter_map(|r| r["id"].as_i64()).collect();
        daemon.wait_for_state(ids[0], end).await;
        let child = daemon.get(ids[1]).await;
        assert_eq!(child["state"], "cancelled", "{end}: {child}");
        let why = last_error(&child);
        assert!(
            why.contains(&format!("job {}", ids[0])) && why.contains(end),
            "{end}: {why}"
        );
        let grandchild = daemon.get(ids[2]).await;
        assert_eq!(grandchild["state"], "cancelled", "{end}: {grandchild}");
        assert!(
            last_error(&grandchild).contains(&format!("job {}", ids[1])),
            "{grandchild}"
        );
    }
    // Only the two parents that were tried reached Coax.
    assert_eq!(coax.requests().len(), 2);
    daemon.stop().await;
}

#[tokio::test]
async fn cancelling_a_parent_cancels_every_waiting_descendant_and_counts_them() {
    let (_coax, daemon) = daemon().await;
    let mut root = job("a", "a");
    root["delay"] = json!("1h");
    let results = batch(
        &daemon,
        vec![
            root,
            follow("b", json!({"key": "a"}), "1h"),
            follow("c", json!({"key": "a"}), "2h"),
            follow("d", json!({"key": "b"}), "0s"),
        ],
    )
    .await;
    let ids: Vec<i64> = results.iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(
        daemon.get(ids[0]).await["children"],
        json!([ids[1], ids[2]])
    );

    // A waiting job can be cancelled itself, with its own followers.
    let answer = daemon.request(json!({"op": "cancel", "id": ids[1]})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["cancelled_children"], 1, "{answer}");
    assert_eq!(daemon.get(ids[3]).await["state"], "cancelled");

    let answer = daemon.request(json!({"op": "cancel", "id": ids[0]})).await;
    assert_eq!(answer["job"]["state"], "cancelled", "{answer}");
    assert_eq!(
        answer["cancelled_children"], 1,
        "only c still waited: {answer}"
    );
    for id in &ids {
        assert_eq!(daemon.get(*id).await["state"], "cancelled", "job {id}");
    }
    let answer = daemon.request(json!({"op": "cancel", "id": ids[2]})).await;
    assert_eq!(answer["error"]["code"], "conflict", "{answer}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_parent_that_already_ended_is_applied_at_once() {
    let (_coax, daemon) = daemon().await;
    let sent = daemon.enqueue(job("sent", "sent")).await;
    let sent_view = daemon.wait_for_state(sent, "sent").await;
    let mut later = follow("later", json!({"id": sent}), "2d");
    later["ttl"] = json!("1h");
    let answer = daemon.request(json!({"op": "enqueue", "job": later})).await;
    assert_eq!(answer["state"], "scheduled", "{answer}");
    assert_eq!(
        ms(&answer["scheduled_at"]),
        sent_at(&sent_view) + 2 * 86_400_000,
        "{answer}"
    );
    assert_eq!(answer["due_at"], answer["scheduled_at"], "{answer}");
    // Its ttl counts from the due time its parent's send gave it.
    let view = daemon.get(answer["id"].as_i64().expect("id")).await;
    assert_eq!(
        ms(&view["expires_at"]),
        ms(&view["scheduled_at"]) + 3_600_000,
        "{view}"
    );

    let mut gone = job("gone", "gone");
    gone["delay"] = json!("1h");
    let gone = daemon.enqueue(gone).await;
    daemon.request(json!({"op": "cancel", "id": gone})).await;
    let answer = daemon
        .request(json!({"op": "enqueue", "job": follow("never", json!({"key": "gone"}), "0s")}))
        .await;
    assert_eq!(answer["state"], "cancelled", "{answer}");
    let view = daemon.get(answer["id"].as_i64().expect("id")).await;
    assert!(last_error(&view).contains(&format!("job {gone}")), "{view}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_held_parent_keeps_its_followers_waiting_until_it_is_sent() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::raw(200, "text/html", "<html>ok?</html>"));
    let config = config_text(&coax.base_url(), "on_ambiguous = \"hold\"", "");
    let daemon = TestDaemon::start_with(&config).await;
    let results = batch(
        &daemon,
        vec![job("p", "p"), follow("c", json!({"key": "p"}), "0s")],
    )
    .await;
    let (p, c) = (results[0]["id"].as_i64(), results[1]["id"].as_i64());
    let (p, c) = (p.expect("id"), c.expect("id"));
    daemon.wait_for_state(p, "held").await;
    assert_eq!(daemon.get(c).await["state"], "waiting");
    let answer = daemon.request(json!({"op": "requeue", "id": p})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    daemon.wait_for_state(p, "sent").await;
    daemon.wait_for_state(c, "sent").await;
    daemon.stop().await;
}

#[tokio::test]
async fn requeueing_a_failed_parent_does_not_bring_back_its_cancelled_followers() {
    let (coax, daemon) = daemon().await;
    coax.push(Reply::refused("opted out"));
    let results = batch(
        &daemon,
        vec![job("p", "p"), follow("c", json!({"key": "p"}), "0s")],
    )
    .await;
    let (p, c) = (results[0]["id"].as_i64(), results[1]["id"].as_i64());
    let (p, c) = (p.expect("id"), c.expect("id"));
    daemon.wait_for_state(p, "failed").await;
    assert_eq!(daemon.get(c).await["state"], "cancelled");
    let answer = daemon.request(json!({"op": "requeue", "id": p})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    daemon.wait_for_state(p, "sent").await;
    assert_eq!(daemon.get(c).await["state"], "cancelled");
    assert_eq!(coax.requests().len(), 2, "the follower was never sent");
    daemon.stop().await;
}

#[tokio::test]
async fn a_prune_takes_only_finished_parents_whose_followers_no_longer_wait() {
    let (_coax, daemon) = daemon().await;
    let mut waiting_parent = job("long", "long");
    waiting_parent["delay"] = json!("1h");
    let results = batch(
        &daemon,
        vec![
            job("now", "now"),
            follow("next", json!({"key": "now"}), "1h"),
            waiting_parent,
            follow("waits", json!({"key": "long"}), "0s"),
        ],
    )
    .await;
    let ids: Vec<i64> = results.iter().filter_map(|r| r["id"].as_i64()).collect();
    daemon.wait_for_state(ids[0], "sent").await;
    let answer = daemon
        .request(json!({"op": "prune", "older_than": "0s"}))
        .await;
    assert_eq!(answer["jobs"], 1, "only the sent parent: {answer}");
    // The follower keeps its place and still names the job it followed.
    let next = daemon.get(ids[1]).await;
    assert_eq!(next["state"], "scheduled", "{next}");
    assert_eq!(next["after"], ids[0], "{next}");
    assert_eq!(daemon.get(ids[3]).await["state"], "waiting");
    daemon.stop().await;
}

#[tokio::test]
async fn after_must_name_a_stored_or_earlier_job_and_refuses_scheduled_at() {
    let (_coax, daemon) = daemon().await;
    let refused = |answer: &Value, field: &str| {
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_job", "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    };
    let one = |j: Value| json!({"op": "enqueue", "job": j});
    refused(
        &daemon
            .request(one(follow("x", json!({"id": 999}), "0s")))
            .await,
        "after",
    );
    refused(
        &daemon
            .request(one(follow("x", json!({"key": "nobody"}), "0s")))
            .await,
        "after",
    );
    for bad in [
        json!(5),
        json!({}),
        json!({"id": 1, "key": "k"}),
        json!({"id": "1"}),
    ] {
        refused(&daemon.request(one(follow("x", bad, "0s"))).await, "after");
    }
    let mut timed = follow("x", json!({"key": "nobody"}), "0s");
    timed.as_object_mut().expect("object").remove("delay");
    timed["scheduled_at"] = json!("2030-01-01T00:00:00Z");
    refused(&daemon.request(one(timed)).await, "scheduled_at");

    // Only an earlier job of a batch can be named; a refused batch stores
    // nothing.
    let answer = daemon
        .request(json!({"op": "enqueue", "jobs": [
            follow("first", json!({"key": "second"}), "0s"), job("second", "second")
        ]}))
        .await;
    refused(&answer, "after");
    assert_eq!(answer["error"]["index"], 0, "{answer}");
    let answer = daemon.request(json!({"op": "get", "key": "second"})).await;
    assert_eq!(answer["error"]["code"], "not_found", "{answer}");
    daemon.stop().await;
}

#[tokio::test]
async fn stats_and_list_count_waiting_jobs() {
    let (_coax, daemon) = daemon().await;
    let mut root = job("root", "root");
    root["delay"] = json!("1h");
    let results = batch(
        &daemon,
        vec![
            root,
            follow("w1", json!({"key": "root"}), "0s"),
            follow("w2", json!({"key": "w1"}), "0s"),
        ],
    )
    .await;
    let waiting: Vec<i64> = results[1..]
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["waiting"], 2, "{stats}");
    assert_eq!(stats["counts"]["scheduled"], 1, "{stats}");
    let list = daemon
        .request(json!({"op": "list", "state": "waiting"}))
        .await;
    let listed: Vec<i64> = list["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["id"].as_i64())
        .collect();
    assert_eq!(listed, waiting, "{list}");
    daemon.stop().await;
}

#[tokio::test]
async fn cancel_by_tag_cancels_waiting_jobs_and_their_followers() {
    let (_coax, daemon) = daemon().await;
    let mut root = job("root", "root");
    root["delay"] = json!("1h");
    let mut tagged = follow("tagged", json!({"key": "root"}), "0s");
    tagged["tags"] = json!(["appointment:1"]);
    let results = batch(
        &daemon,
        vec![
            root,
            tagged,
            follow("after-tagged", json!({"key": "tagged"}), "0s"),
        ],
    )
    .await;
    let ids: Vec<i64> = results.iter().filter_map(|r| r["id"].as_i64()).collect();
    let answer = daemon
        .request(json!({"op": "cancel", "tag": "appointment:1"}))
        .await;
    assert_eq!(answer["cancelled"], 1, "{answer}");
    assert_eq!(answer["cancelled_children"], 1, "{answer}");
    assert_eq!(daemon.get(ids[0]).await["state"], "scheduled");
    assert_eq!(daemon.get(ids[1]).await["state"], "cancelled");
    assert_eq!(daemon.get(ids[2]).await["state"], "cancelled");
    daemon.stop().await;
}

#[tokio::test]
async fn cli_get_shows_after_and_children() {
    let (_coax, daemon) = daemon().await;
    let mut root = job("root", "root");
    root["delay"] = json!("1h");
    let results = batch(
        &daemon,
        vec![root, follow("child", json!({"key": "root"}), "2d")],
    )
    .await;
    let (p, c) = (results[0]["id"].as_i64(), results[1]["id"].as_i64());
    let (p, c) = (p.expect("id"), c.expect("id"));
    let get = |id: i64| {
        let socket = daemon.socket.clone();
        async move {
            let out = tokio::process::Command::new(binary())
                .arg("--socket")
                .arg(&socket)
                .args(["get", &id.to_string()])
                .env_remove("COAX_SCHEDULER_CONFIG")
                .output()
                .await
                .expect("run the CLI");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
    };
    let parent = get(p).await;
    assert_eq!(field(&parent, "children"), c.to_string(), "{parent}");
    assert_eq!(field(&parent, "after"), "-", "{parent}");
    let child = get(c).await;
    assert_eq!(field(&child, "after"), p.to_string(), "{child}");
    assert_eq!(field(&child, "state"), "waiting", "{child}");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// kill -9
// ---------------------------------------------------------------------------

const CHAINS: usize = 300;

/// Every job's state and parent, read from the database file.
fn states(db: &std::path::Path) -> BTreeMap<i64, (String, Option<i64>)> {
    let conn = rusqlite::Connection::open(db).expect("open the queue");
    let mut stmt = conn
        .prepare("SELECT id, state, parent_id FROM jobs")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

/// Each child is as its parent's state implies, and the kept counts per
/// state are the real ones.
fn assert_consistent(db: &std::path::Path) {
    let jobs = states(db);
    for (id, (state, parent)) in &jobs {
        let Some(parent) = parent else { continue };
        let parent_state = jobs[parent].0.as_str();
        let ok = match parent_state {
            "sent" => state != "waiting",
            "skipped" | "failed" | "expired" | "cancelled" => state == "cancelled",
            _ => state == "waiting",
        };
        assert!(
            ok,
            "job {id} is {state} while its parent {parent} is {parent_state}"
        );
    }
    let conn = rusqlite::Connection::open(db).expect("open the queue");
    let kept: BTreeMap<String, i64> = conn
        .prepare("SELECT state, jobs FROM state_counts WHERE jobs != 0")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("counts");
    let real: BTreeMap<String, i64> = conn
        .prepare("SELECT state, count(*) FROM jobs GROUP BY state")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("counts");
    assert_eq!(kept, real, "the counts per state");
}

#[tokio::test]
async fn a_kill_9_while_parents_are_sent_leaves_every_follower_as_its_parent_implies() {
    let coax = CoaxStub::start().await;
    // Every third parent is skipped (Coax's campaign is paused), the rest
    // sent; each answer takes a little while, so sends are in flight.
    coax.set_chooser(std::sync::Arc::new(|r| {
        let skip = r.body_text().contains("skip-me");
        let reply = if skip { Reply::paused() } else { Reply::sent() };
        reply.with_delay(std::time::Duration::from_millis(5))
    }));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_text(&coax.base_url(), "", "");
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let mut jobs = Vec::new();
    for i in 0..CHAINS {
        let message = if i % 3 == 0 { "skip-me" } else { "send" };
        jobs.push(job(&format!("p{i}"), message));
        jobs.push(follow(
            &format!("c{i}"),
            json!({"key": format!("p{i}")}),
            "1h",
        ));
        jobs.push(follow(
            &format!("g{i}"),
            json!({"key": format!("c{i}")}),
            "0s",
        ));
    }
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");

    coax.wait_for_requests(CHAINS / 3, PATIENCE).await;
    daemon.signal("KILL");
    assert_eq!(daemon.wait_exit(PATIENCE).await, None, "killed, not exited");
    drop(daemon);
    let db = dir.path().join("queue.db");
    assert_consistent(&db);
    // The kill landed while parents were being sent: some had been, some
    // had not.
    let at_kill = states(&db);
    let parents = |wanted: &[&str]| {
        at_kill
            .values()
            .filter(|(s, p)| p.is_none() && wanted.contains(&s.as_str()))
            .count()
    };
    assert!(parents(&["sent", "skipped"]) > 0, "{at_kill:?}");
    assert!(parents(&["scheduled", "sending"]) > 0, "{at_kill:?}");

    // After the restart every parent ends, and every follower with it.
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    wait_until("every parent to end", PATIENCE, || {
        let db = db.clone();
        async move {
            let jobs = states(&db);
            let open = jobs.values().any(|(state, parent)| {
                parent.is_none() && matches!(state.as_str(), "scheduled" | "sending")
            });
            (!open).then_some(())
        }
    })
    .await;
    assert_consistent(&db);
    let jobs = states(&db);
    let waiting = jobs.values().filter(|(s, _)| s == "waiting").count();
    assert_eq!(
        waiting,
        CHAINS / 3 * 2,
        "the grandchildren of sent parents wait"
    );
    drop(daemon);
}

/// A parent's end moves all its waiting children in one transaction, so a
/// job may have at most 1,000 follow-ups: with more, that one store call
/// would hold every request and claim behind it for as long as it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_takes_at_most_a_thousand_follow_ups() {
    let (_coax, daemon) = daemon().await;
    let mut parent = job("busy-parent", "hello");
    parent["delay"] = json!("1h");
    daemon.enqueue(parent).await;
    let children: Vec<Value> = (0..999)
        .map(|i| follow(&format!("child-{i}"), json!({"key": "busy-parent"}), "1m"))
        .collect();
    batch(&daemon, children).await;
    // The thousandth in a batch of two: the second is one too many, and
    // the batch stores neither.
    let answer = daemon
        .request(json!({"op": "enqueue", "jobs": [
            follow("child-999", json!({"key": "busy-parent"}), "1m"),
            follow("child-1000", json!({"key": "busy-parent"}), "1m"),
        ]}))
        .await;
    assert_eq!(answer["error"]["code"], "invalid_job", "{answer}");
    assert_eq!(answer["error"]["field"], "after", "{answer}");
    assert_eq!(answer["error"]["index"], 1, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("1000 follow-ups"), "{answer}");
    let one = daemon
        .request(json!({"op": "enqueue",
                        "job": follow("child-999", json!({"key": "busy-parent"}), "1m")}))
        .await;
    assert_eq!(one["ok"], true, "{one}");
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["waiting"], 1_000, "{stats}");
}
