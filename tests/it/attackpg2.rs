//! Hostile tests of several nodes on one PostgreSQL queue: clocks that
//! step, a server gone for longer than the lease, connections terminated
//! under a node, nodes killed and restarted, a pool of one.
//!
//! Each test named after a defect failed before its fix; the others pin
//! behaviour that an attack did not break.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{DaemonProcess, TestDaemon, request_at};
use crate::helpers::nodes::{
    attempt_nodes, node_config, prepare, queue_url, start_node, start_process,
};
use crate::helpers::postgres::{PgCluster, count};
use crate::helpers::{PATIENCE, sms_job, wait_until};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod clocks;
mod names;

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

/// Node `name`'s connections in `pg_stat_activity` whose last statement
/// starts with `prefix` (`""`: all of them).
async fn backends(cluster: &PgCluster, name: &str, prefix: &str) -> i64 {
    count(
        &cluster.superuser("postgres").await,
        &format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = '{name}' AND query LIKE '{prefix}%'"
        ),
    )
    .await
}

/// A process node's config: lease 2 s, requests allowed 30 s, logs at
/// `level`, polls every 30 s (so a prompt send needs a wake-up).
fn process_config(coax_url: &str, name: &str, level: &str) -> String {
    node_config(
        coax_url,
        name,
        &format!(
            "[coax]\nrequest_timeout = \"30s\"\n[store]\nlease = \"2s\"\n\
             [dispatch]\nconcurrency = 16\npoll_interval = \"30s\"\n[log]\nlevel = \"{level}\"\n"
        ),
    )
}

/// PostgreSQL stopped for twice the lease while a node has a request in
/// flight: enqueue answers `internal` with the reason, the node logs one
/// ERROR for the outage and `storage recovered` after it, the job is sent
/// once (its outcome recorded by one node), and both nodes listen again.
/// Node-a logs at `trace`: the password is in none of its lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gone_longer_than_the_lease_loses_nothing_and_logs_one_error() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::sent().with_delay(Duration::from_secs(6)));
    let mut cluster = PgCluster::start().await;
    let url = queue_url(Some(&cluster)).await;
    let (_dir_a, a) = start_process(
        &url,
        "node-a",
        &process_config(&coax.base_url(), "node-a", "trace"),
    )
    .await;
    let (_dir_b, b) = start_process(
        &url,
        "node-b",
        &process_config(&coax.base_url(), "node-b", "info"),
    )
    .await;
    let answer = a
        .request(json!({"op": "enqueue", "jobs": [sms_job("slow", "0s")]}))
        .await;
    let id = answer["results"][0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{answer}"));
    coax.wait_for_requests(1, PATIENCE).await;

    cluster.stop();
    let refused = a
        .request(json!({"op": "enqueue", "jobs": [sms_job("refused", "0s")]}))
        .await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["code"], "internal", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.len() > 20),
        "the reason is given: {refused}"
    );
    assert!(
        !refused
            .to_string()
            .contains(crate::helpers::postgres::PASSWORD),
        "{refused}"
    );
    // The outage is the attack: it must outlast the lease (2 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| cluster.restart());

    for node in ["node-a", "node-b"] {
        wait_until("the node to listen again", PATIENCE, || async {
            (backends(&cluster, node, "LISTEN").await == 1).then_some(())
        })
        .await;
    }
    let job = wait_until("the slow job to be sent", PATIENCE, || async {
        let job = a.request(json!({"op": "get", "id": id})).await;
        (job["job"]["state"] == "sent").then_some(job)
    })
    .await;
    let history = job["job"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ambiguous = history.iter().filter(|h| h["ambiguous"] == true).count();
    assert!(
        coax.requests().len() <= 1 + ambiguous,
        "every extra request is an ambiguous attempt: {job}"
    );
    assert!(
        history.iter().all(|h| !h["finished_at"].is_null()),
        "no attempt left open: {job}"
    );
    // A job enqueued on one node after the restart is sent well before
    // the 30 s poll: the wake-ups work again.
    let answer = b
        .request(json!({"op": "enqueue", "jobs": [sms_job("after", "0s")]}))
        .await;
    let after = answer["results"][0]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{answer}"));
    wait_until(
        "the job enqueued after the restart to be sent",
        PATIENCE,
        || async {
            let job = a.request(json!({"op": "get", "id": after})).await;
            (job["job"]["state"] == "sent").then_some(())
        },
    )
    .await;
    for node in [&a, &b] {
        node.wait_for_log_line("storage recovered", |l| l.contains("storage recovered"))
            .await;
        let logs = node.logs();
        let errors: Vec<&str> = logs
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("ERROR"))
            .collect();
        assert!(
            !errors.is_empty() && errors.len() <= 2,
            "one ERROR for the outage (two at most: the dispatcher's and the store's), not a flood:\n{logs}"
        );
        assert!(!logs.contains(crate::helpers::postgres::PASSWORD), "{logs}");
    }
}

/// A busy node's config: one request at a time, a poll every 30 s.
fn busy_config(coax_url: &str, name: &str) -> String {
    node_config(
        coax_url,
        name,
        "[coax]\nrequest_timeout = \"30s\"\n[store]\nlease = \"2s\"\n\
         [dispatch]\nconcurrency = 1\npoll_interval = \"30s\"\n",
    )
}

/// `pool_size = 1` with many clients and many due jobs: every job is
/// sent and every client answered; no call waits for ever on the one
/// connection while holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_serves_many_clients_and_due_jobs() {
    let coax = CoaxStub::start().await;
    let url = queue_url(None).await;
    let config = node_config(
        &coax.base_url(),
        "solo",
        "[store]\npool_size = 1\nlease = \"2s\"\n[dispatch]\nconcurrency = 16\n",
    );
    let node = start_node(&url, "solo", &config).await;
    let jobs: Vec<Value> = (0..100).map(|i| sms_job(&format!("p-{i}"), "0s")).collect();
    let answer = node.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    let mut clients = Vec::new();
    for i in 0..32 {
        let socket = node.socket.clone();
        clients.push(tokio::spawn(async move {
            for j in 0..5 {
                let request = match (i + j) % 4 {
                    0 => json!({"op": "stats"}),
                    1 => json!({"op": "list", "limit": 50}),
                    2 => json!({"op": "get", "id": 1}),
                    _ => json!({"op": "enqueue", "jobs": [sms_job(&format!("c-{i}-{j}"), "0s")]}),
                };
                let answer = request_at(&socket, request.clone()).await;
                assert_eq!(answer["ok"], true, "{request}: {answer}");
            }
        }));
    }
    for client in clients {
        tokio::time::timeout(PATIENCE, client)
            .await
            .expect("every client is answered")
            .expect("client task");
    }
    wait_until("every job to be sent", PATIENCE, || async {
        let s = stats(&node.socket).await;
        (s["counts"]["sent"] == 140 && s["counts"]["sending"] == 0).then_some(())
    })
    .await;
    node.stop().await;
}

/// Coax answers node-a's request while PostgreSQL is down for twice the
/// lease. When the server is back, node-a still holds the answer and
/// renews within a beat; node-b, back at the same moment, must not take
/// the claim before node-a has had its chance: every node's lease looks
/// run out after an outage, though their nodes live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_held_through_an_outage_is_recorded_not_sent_again() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::sent().with_delay(Duration::from_millis(1500)));
    let mut cluster = PgCluster::start().await;
    let url = queue_url(Some(&cluster)).await;
    let a = start_node(&url, "node-a", &slow_config(&coax.base_url(), "node-a")).await;
    let id = a.enqueue(sms_job("answered-in-outage", "0s")).await;
    coax.wait_for_requests(1, PATIENCE).await;
    // Started after the claim, so that the job is node-a's.
    let b = start_node(&url, "node-b", &slow_config(&coax.base_url(), "node-b")).await;
    // Past its start-up reads, which a start that loses the server fails.
    stats(&b.socket).await;

    tokio::task::block_in_place(|| cluster.stop());
    // The outage is the attack: it outlasts the lease (2 s) and Coax's
    // answer (1.5 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| cluster.restart());

    let job = a.wait_for_state(id, "sent").await;
    assert_eq!(
        attempt_nodes(&job),
        vec!["node-a".to_owned()],
        "node-a recorded the answer it held: {job}"
    );
    assert_eq!(job["history"][0]["ambiguous"], false, "{job}");
    assert_eq!(coax.requests().len(), 1, "sent once: {job}");
    b.stop().await;
    a.stop().await;
}

/// The entry of `name` in `stats`'s `nodes`, if listed.
fn node_entry(stats: &Value, name: &str) -> Option<Value> {
    stats["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == name)
        .cloned()
}

/// A node killed with requests in flight stays in `stats`'s `nodes`, with
/// its requests `in_flight`, until its lease passes; then it is gone, and
/// its claims are back in line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_nodes_drops_a_killed_node_once_its_lease_passes() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent().with_delay(Duration::from_secs(60)));
    let url = queue_url(None).await;
    let (_dir, mut k) = start_process(
        &url,
        "node-k",
        &process_config(&coax.base_url(), "node-k", "info"),
    )
    .await;
    let jobs: Vec<Value> = (0..5).map(|i| sms_job(&format!("d-{i}"), "0s")).collect();
    let answer = k.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    coax.wait_for_requests(5, PATIENCE).await;
    coax.set_default(Reply::sent());
    let b = start_node(&url, "node-b", &slow_config(&coax.base_url(), "node-b")).await;
    let listed = node_entry(&stats(&b.socket).await, "node-k").expect("node-k is live");
    assert_eq!(listed["in_flight"], 5, "{listed}");

    k.signal("KILL");
    assert_eq!(k.wait_exit(PATIENCE).await, None, "killed by SIGKILL");
    wait_until("node-k to leave stats", PATIENCE, || async {
        node_entry(&stats(&b.socket).await, "node-k")
            .is_none()
            .then_some(())
    })
    .await;
    wait_until("node-k's claims to be sent", PATIENCE, || async {
        let s = stats(&b.socket).await;
        (s["counts"]["sent"] == 5).then_some(())
    })
    .await;
    let s = stats(&b.socket).await;
    assert_eq!(node_names(&s), vec!["node-b".to_owned()], "{s}");
    assert_eq!(s["nodes"][0]["in_flight"], 0, "{s}");
    b.stop().await;
}

/// Every connection of one node is terminated while it has a request in
/// flight: the node reconnects, listens again, records its answer once,
/// and serves its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_connections_are_all_terminated_carries_on() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::sent().with_delay(Duration::from_secs(3)));
    let cluster = PgCluster::start().await;
    let url = queue_url(Some(&cluster)).await;
    let a = start_node(&url, "node-a", &slow_config(&coax.base_url(), "node-a")).await;
    let id = a.enqueue(sms_job("cut-off", "0s")).await;
    coax.wait_for_requests(1, PATIENCE).await;
    let terminated = count(
        &cluster.superuser("postgres").await,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'node-a') t",
    )
    .await;
    assert!(
        terminated >= 2,
        "the pool's and the listener's: {terminated}"
    );
    wait_until("node-a to listen again", PATIENCE, || async {
        (backends(&cluster, "node-a", "LISTEN").await == 1).then_some(())
    })
    .await;
    let job = a.wait_for_state(id, "sent").await;
    assert_eq!(attempt_nodes(&job), vec!["node-a".to_owned()], "{job}");
    assert_eq!(job["history"][0]["ambiguous"], false, "{job}");
    let next = a.enqueue(sms_job("after", "0s")).await;
    a.wait_for_state(next, "sent").await;
    assert_eq!(coax.requests().len(), 2);
    a.stop().await;
}
