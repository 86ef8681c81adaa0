//! Hostile tests of several nodes on one PostgreSQL queue: clocks that
//! step, a server gone for longer than the lease, connections terminated
//! under a node, nodes killed and restarted, a pool of one.
//!
//! Each test named after a defect failed before its fix; the others pin
//! behaviour that an attack did not break.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{DaemonProcess, TestClock, TestDaemon, request_at};
use crate::helpers::nodes::{
    attempt_nodes, node_config, prepare, queue_url, start_node, start_process,
};
use crate::helpers::postgres::{PgCluster, count};
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

/// A node killed with SIGKILL while 20 requests are in flight, started
/// again at once under the same name: it is not refused, and it puts its
/// own claims back in line at start-up, each logged as a possible
/// duplicate, without waiting for the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_send_restarts_at_once_under_its_name_and_recovers_its_claims() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent().with_delay(Duration::from_secs(60)));
    let cluster = PgCluster::start().await;
    let url = queue_url(Some(&cluster)).await;
    let config = process_config(&coax.base_url(), "node-k", "info");
    let (dir, mut first) = start_process(&url, "node-k", &config).await;
    let jobs: Vec<Value> = (0..20).map(|i| sms_job(&format!("k-{i}"), "0s")).collect();
    let answer = first.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    coax.wait_for_requests(16, PATIENCE).await;
    coax.set_default(Reply::sent());
    first.signal("KILL");
    assert_eq!(first.wait_exit(PATIENCE).await, None, "killed by SIGKILL");

    let second = DaemonProcess::start(
        dir.path(),
        &std::fs::read_to_string(dir.path().join("config.toml")).expect("config"),
    )
    .await;
    let line = second
        .wait_for_log_line("a possible duplicate", |l| l.contains("possible duplicate"))
        .await;
    assert!(line.contains("WARN"), "{line}");
    let duplicates = second
        .logs()
        .lines()
        .filter(|l| l.contains("possible duplicate"))
        .count();
    assert_eq!(
        duplicates,
        16,
        "each claim in flight logged once:\n{}",
        second.logs()
    );
    wait_until("every job to be sent", PATIENCE, || async {
        let s = second.request(json!({"op": "stats"})).await;
        (s["counts"]["sent"] == 20).then_some(())
    })
    .await;
    drop(second);
    drop(dir);
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

/// The listening connection alone is terminated: the node listens again
/// (a job enqueued on a busy node is sent by it before its poll) and
/// holds its name again (a second daemon under it is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_listening_connection_comes_back_with_its_name_lock() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::sent().with_delay(Duration::from_secs(15)));
    let cluster = PgCluster::start().await;
    let url = queue_url(Some(&cluster)).await;
    let b = start_node(&url, "node-b", &busy_config(&coax.base_url(), "node-b")).await;
    let blocker = b.enqueue(sms_job("blocker", "0s")).await;
    coax.wait_for_requests(1, PATIENCE).await;
    let a = start_node(&url, "node-a", &busy_config(&coax.base_url(), "node-a")).await;
    let terminated = count(
        &cluster.superuser("postgres").await,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'node-a' AND query LIKE 'LISTEN%') t",
    )
    .await;
    assert_eq!(terminated, 1, "node-a had one listening connection");
    // Gone, then back.
    wait_until("node-a to listen again", PATIENCE, || async {
        (backends(&cluster, "node-a", "LISTEN").await == 1).then_some(())
    })
    .await;
    let target = b.enqueue(sms_job("target", "0s")).await;
    let job = b.wait_for_state(target, "sent").await;
    assert_eq!(attempt_nodes(&job), vec!["node-a".to_owned()], "{job}");

    let (dir, config) = prepare(&url, "node-a", &busy_config(&coax.base_url(), "node-a"));
    let mut second = DaemonProcess::spawn(dir.path(), &config);
    let code = second.wait_exit(PATIENCE).await;
    assert_ne!(code, Some(0), "{}", second.logs());
    assert!(
        second.logs().contains("another daemon is running as node"),
        "{}",
        second.logs()
    );
    b.wait_for_state(blocker, "sent").await;
    a.stop().await;
    b.stop().await;
}

/// Two daemons started at the same moment under one `node.name`: exactly
/// one runs, the other is refused naming the clash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_started_at_once_under_one_name_run_one() {
    let coax = CoaxStub::start().await;
    let url = queue_url(None).await;
    let config = busy_config(&coax.base_url(), "twin");
    let (one_dir, one_config) = prepare(&url, "twin", &config);
    let (two_dir, two_config) = prepare(&url, "twin", &config);
    let mut one = DaemonProcess::spawn(one_dir.path(), &one_config);
    let mut two = DaemonProcess::spawn(two_dir.path(), &two_config);
    // One of them exits, refused; the other keeps running.
    let refused = wait_until("one twin to be refused", PATIENCE, || {
        let exited = [
            one.child.try_wait().ok().flatten(),
            two.child.try_wait().ok().flatten(),
        ];
        async move { exited.iter().position(Option::is_some) }
    })
    .await;
    let (loser, winner) = if refused == 0 {
        (&mut one, &mut two)
    } else {
        (&mut two, &mut one)
    };
    assert!(
        loser.logs().contains("another daemon is running as node"),
        "{}",
        loser.logs()
    );
    wait_until("the other twin's socket", PATIENCE, || async {
        winner.socket.exists().then_some(())
    })
    .await;
    let pong = winner.request(json!({"op": "ping"})).await;
    assert_eq!(pong["ok"], true, "{pong}\n{}", winner.logs());
    assert!(
        winner.child.try_wait().ok().flatten().is_none(),
        "the winner runs on"
    );
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

/// A second daemon started under a running node's name just as that
/// node's listening connection (which holds the name's lock) is cut: it
/// must be refused all the same, or it recovers the running node's
/// claims in flight as its own crash's and sends them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_not_given_to_a_second_daemon_while_its_node_reconnects() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent().with_delay(Duration::from_secs(10)));
    let cluster = PgCluster::start().await;
    let url = queue_url(Some(&cluster)).await;
    let a = start_node(&url, "node-a", &busy_config(&coax.base_url(), "node-a")).await;
    let id = a.enqueue(sms_job("in-flight", "0s")).await;
    coax.wait_for_requests(1, PATIENCE).await;

    let (dir, config) = prepare(&url, "node-a", &busy_config(&coax.base_url(), "node-a"));
    let terminated = count(
        &cluster.superuser("postgres").await,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'node-a' AND query LIKE 'LISTEN%') t",
    )
    .await;
    assert_eq!(terminated, 1);
    let mut second = DaemonProcess::spawn(dir.path(), &config);
    let code = second.wait_exit(PATIENCE).await;
    assert_ne!(code, Some(0), "{}", second.logs());
    assert!(
        second.logs().contains("another daemon is running as node"),
        "{}",
        second.logs()
    );
    let job = a.wait_for_state(id, "sent").await;
    assert_eq!(coax.requests().len(), 1, "sent once: {job}");
    a.stop().await;
}

/// The least time left on node `name`'s lease of job `id`, by the
/// database's clock, seen while polling until the job leaves `sending`.
async fn least_lease_left(cluster: &PgCluster, id: i64) -> Option<i64> {
    let client = cluster.superuser("coax").await;
    let mut least: Option<i64> = None;
    loop {
        let row = client
            .query_opt(
                "SELECT lease_until - (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
                 FROM jobs WHERE id = $1 AND state = 'sending'",
                &[&id],
            )
            .await
            .expect("read the lease");
        let Some(row) = row else {
            return least;
        };
        let left: i64 = row.get(0);
        least = Some(least.map_or(left, |l| l.min(left)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// With `lease = "1s"` (the least allowed) the lease was renewed once a
/// second, so it ran out for a moment before each renewal, and any other
/// node's recovery in that moment took the job and sent it again. It must
/// keep a third of the lease at least while the request is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_one_second_never_runs_out_while_its_request_is_in_flight() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::sent().with_delay(Duration::from_secs(4)));
    let cluster = PgCluster::start().await;
    let url = queue_url(Some(&cluster)).await;
    let config = node_config(
        &coax.base_url(),
        "node-a",
        "[coax]\nrequest_timeout = \"30s\"\n[store]\nlease = \"1s\"\n",
    );
    let a = start_node(&url, "node-a", &config).await;
    let id = a.enqueue(sms_job("one-second", "0s")).await;
    coax.wait_for_requests(1, PATIENCE).await;
    let least = least_lease_left(&cluster, id)
        .await
        .expect("seen in sending");
    assert!(
        least > 333,
        "the lease came within {least} ms of running out"
    );
    let job = a.wait_for_state(id, "sent").await;
    assert_eq!(attempt_nodes(&job), vec!["node-a".to_owned()], "{job}");
    a.stop().await;
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

/// A 429 with Retry-After 4 s answered to node-a; then node-a's wall clock
/// steps an hour forward and node-b's runs an hour behind. The shared
/// pause is neither cut short by the step forward nor stretched by the
/// clock behind: every job waits it out, and is sent once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pause_is_neither_cut_nor_stretched_by_stepped_clocks() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::status(429).with_header("Retry-After", "4"));
    let url = queue_url(None).await;
    let a_clock = TestClock::at(time::now());
    let a = start_clocked(
        &url,
        "node-a",
        &slow_config(&coax.base_url(), "node-a"),
        a_clock.clone(),
    )
    .await;
    let throttled = a.enqueue(sms_job("throttled", "0s")).await;
    let told = coax.wait_for_requests(1, PATIENCE).await[0].received_at;
    wait_until("the 429 to be recorded", PATIENCE, || async {
        let job = a.get(throttled).await;
        job["history"][0]["finished_at"].is_string().then_some(())
    })
    .await;
    a_clock.step(3_600_000);
    let b = start_clocked(
        &url,
        "node-b",
        &slow_config(&coax.base_url(), "node-b"),
        TestClock::at(time::now() - 3_600_000),
    )
    .await;
    let later_a = a.enqueue(sms_job("later-a", "0s")).await;
    let later_b = b.enqueue(sms_job("later-b", "0s")).await;
    a.wait_for_state(later_a, "sent").await;
    b.wait_for_state(later_b, "sent").await;
    a.wait_for_state(throttled, "sent").await;
    for request in coax.requests().iter().skip(1) {
        let waited = (request.received_at - told).num_milliseconds();
        assert!(
            waited >= 3_500,
            "a request went out {waited} ms after the 429"
        );
    }
    b.stop().await;
    a.stop().await;
}
