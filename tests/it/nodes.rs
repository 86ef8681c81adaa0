//! `node.name`: the daemon that made each attempt, and the daemons working
//! the queue as `stats` shows them. A SQLite queue has one node, the daemon
//! that holds its lock.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{TestDaemon, config_text};
use crate::helpers::{edit_db, sms_job, wait_until};
use coax_scheduler::time;
use serde_json::{Value, json};
use std::time::Duration;

fn named(coax: &CoaxStub, name: &str) -> String {
    format!(
        "{}\n[node]\nname = \"{name}\"\n",
        config_text(&coax.base_url(), "", "")
    )
}

fn nodes(stats: &Value) -> Vec<Value> {
    stats["nodes"].as_array().cloned().unwrap_or_default()
}

fn nodes_of_history(job: &Value) -> Vec<Value> {
    job["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["node"].clone())
        .collect()
}

#[tokio::test]
async fn stats_lists_this_daemon_with_its_requests_in_flight() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::sent().with_delay(Duration::from_millis(1500)));
    let daemon = TestDaemon::start_with(&named(&coax, "web-7")).await;

    let stats = daemon.request(json!({"op": "stats"})).await;
    let listed = nodes(&stats);
    assert_eq!(listed.len(), 1, "{stats}");
    assert_eq!(listed[0]["name"], "web-7");
    assert_eq!(listed[0]["in_flight"], 0);
    let heartbeat = time::parse_rfc3339(listed[0]["last_heartbeat"].as_str().unwrap_or(""))
        .expect("last_heartbeat is a time");
    assert!(
        (time::now() - heartbeat).abs() < 60_000,
        "heartbeat {heartbeat} is not now"
    );

    let id = daemon.enqueue(sms_job("in-flight", "0s")).await;
    wait_until(
        "the request is in flight",
        Duration::from_secs(10),
        || async {
            let stats = daemon.request(json!({"op": "stats"})).await;
            (nodes(&stats).first().map(|n| n["in_flight"].clone()) == Some(json!(1))).then_some(())
        },
    )
    .await;
    let job = daemon.wait_for_state(id, "sent").await;
    assert_eq!(nodes_of_history(&job), vec![json!("web-7")]);
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(nodes(&stats)[0]["in_flight"], 0, "{stats}");
}

#[tokio::test]
async fn each_attempt_keeps_the_name_of_the_node_that_made_it() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::status(503));
    let daemon = TestDaemon::start_with(&named(&coax, "old-host")).await;
    let first = daemon.enqueue(sms_job("first", "0s")).await;
    daemon.wait_for_state(first, "sent").await;
    let dir = daemon.stop().await;

    // A restart under another name: the old attempts keep theirs.
    let daemon = TestDaemon::start_in(dir, &named(&coax, "new-host")).await;
    let second = daemon.enqueue(sms_job("second", "0s")).await;
    let second = daemon.wait_for_state(second, "sent").await;
    assert_eq!(nodes_of_history(&second), vec![json!("new-host")]);
    let first = daemon.get(first).await;
    assert_eq!(
        nodes_of_history(&first),
        vec![json!("old-host"), json!("old-host")],
        "a retry is an attempt of the node that made it: {first}"
    );
    assert_eq!(
        nodes(&daemon.request(json!({"op": "stats"})).await)[0]["name"],
        "new-host"
    );
}

#[tokio::test]
async fn an_attempt_from_before_nodes_were_recorded_shows_none() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start_with(&named(&coax, "web-1")).await;
    let id = daemon.enqueue(sms_job("before", "0s")).await;
    daemon.wait_for_state(id, "sent").await;
    let dir = daemon.stop().await;
    // What schema version 9 left: attempts without a node.
    edit_db(
        &dir.path().join("queue.db"),
        "UPDATE attempts SET node = NULL",
    );
    let daemon = TestDaemon::start_in(dir, &named(&coax, "web-1")).await;
    let job = daemon.get(id).await;
    assert_eq!(nodes_of_history(&job), vec![Value::Null], "{job}");
    assert_eq!(job["history"][0]["decision"], "sent");
}
