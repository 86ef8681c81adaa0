//! Hostile tests of several nodes on one PostgreSQL queue: clocks that
//! step, a server gone for longer than the lease, connections terminated
//! under a node, nodes killed and restarted, a pool of one.
//!
//! Each test named after a defect failed before its fix; the others pin
//! behaviour that an attack did not break.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{TestClock, TestDaemon, request_at};
use crate::helpers::nodes::{attempt_nodes, node_config, prepare, queue_url, start_node};
use crate::helpers::{PATIENCE, sms_job, wait_until};
use coax_scheduler::time;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Starts node `name` on `url` with its wall clock read from `clock`.
async fn start_clocked(url: &str, name: &str, config: &str, clock: Arc<TestClock>) -> TestDaemon {
    let (dir, config) = prepare(url, name, config);
    TestDaemon::start_in_with_clock(dir, &config, clock).await
}

async fn stats(socket: &Path) -> Value {
    let answer = request_at(socket, json!({"op": "stats"})).await;
    assert_eq!(answer["ok"], true, "stats: {answer}");
    answer
}

/// The names `stats` lists under `nodes`.
fn node_names(stats: &Value) -> Vec<String> {
    stats["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect()
}

/// A lease of 2 s, requests allowed 30 s.
fn slow_config(coax_url: &str, name: &str) -> String {
    node_config(
        coax_url,
        name,
        "[coax]\nrequest_timeout = \"30s\"\n[store]\nlease = \"2s\"\n",
    )
}

/// A node whose wall clock runs a minute behind the others' claims a job
/// whose request takes 5 s with a lease of 2 s. Its lease, written by its
/// own clock, looked a minute stale to every other node, which recovered
/// the job and sent it again while the first request was in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_of_a_node_whose_clock_runs_behind_is_not_taken_in_flight() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::sent().with_delay(Duration::from_secs(5)));
    let url = queue_url(None).await;
    let behind = TestClock::at(time::now() - 60_000);
    let a = start_clocked(
        &url,
        "node-a",
        &slow_config(&coax.base_url(), "node-a"),
        behind,
    )
    .await;
    let id = a.enqueue(sms_job("slow", "0s")).await;
    coax.wait_for_requests(1, PATIENCE).await;
    // Started after the claim: it can only take the job by recovering it.
    let b = start_node(&url, "node-b", &slow_config(&coax.base_url(), "node-b")).await;

    let job = a.wait_for_state(id, "sent").await;
    assert_eq!(
        attempt_nodes(&job),
        vec!["node-a".to_owned()],
        "node-a's request in flight stayed node-a's: {job}"
    );
    assert_eq!(job["history"][0]["ambiguous"], false, "{job}");
    assert_eq!(coax.requests().len(), 1, "sent once: {job}");
    b.stop().await;
    a.stop().await;
}

/// A node whose wall clock runs a minute behind is live: every node's
/// `stats` lists it, as long as it beats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_nodes_lists_a_live_node_whose_clock_runs_behind() {
    let coax = CoaxStub::start().await;
    let url = queue_url(None).await;
    let behind = TestClock::at(time::now() - 60_000);
    let a = start_clocked(
        &url,
        "node-a",
        &slow_config(&coax.base_url(), "node-a"),
        behind,
    )
    .await;
    let b = start_node(&url, "node-b", &slow_config(&coax.base_url(), "node-b")).await;
    for node in [&a, &b] {
        let listed = wait_until("both nodes to be listed", PATIENCE, || async {
            let s = stats(&node.socket).await;
            let names = node_names(&s);
            (names.len() == 2).then_some(names)
        })
        .await;
        assert_eq!(listed, vec!["node-a".to_owned(), "node-b".to_owned()]);
    }
    b.stop().await;
    a.stop().await;
}
