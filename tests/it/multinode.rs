//! Several daemons sharing one queue on PostgreSQL: a pause that one node
//! is told of holds them all, a rate limit holds for their sum, a job
//! enqueued on one node wakes another at once, and the queue survives a
//! node killed hard, a server restart and lost connections under faults.
//!
//! These run on PostgreSQL whatever `COAX_TEST_BACKEND` says (see
//! [`crate::helpers::nodes`]).

use crate::helpers::coax::{CoaxStub, Recorded, Reply};
use crate::helpers::daemon::request_at;
use crate::helpers::nodes::{
    all_jobs, attempt_nodes, node_config, queue_url, start_node, start_nodes, start_process,
};
use crate::helpers::postgres::PgCluster;
use crate::helpers::{PATIENCE, sms_job, wait_until};
use coax_scheduler::time;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn stats(socket: &Path) -> Value {
    let answer = request_at(socket, json!({"op": "stats"})).await;
    assert_eq!(answer["ok"], true, "stats: {answer}");
    answer
}

fn ms(text: &Value) -> i64 {
    time::parse_rfc3339(text.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{text} is not a time: {e}"))
}

fn ids(answer: &Value) -> Vec<i64> {
    assert_eq!(answer["ok"], true, "{answer}");
    answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_answered_to_one_node_pauses_every_node_for_its_retry_after() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::status(429).with_header("Retry-After", "3"));
    let nodes = start_nodes(3, |name| node_config(&coax.base_url(), name, "")).await;

    let throttled = nodes[0].enqueue(sms_job("throttled", "0s")).await;
    let job = wait_until("the 429 to be recorded", PATIENCE, || async {
        let job = nodes[0].get(throttled).await;
        job["history"][0]["finished_at"].is_string().then_some(job)
    })
    .await;
    assert_eq!(job["history"][0]["status"], 429, "{job}");
    let told = job["history"][0]["node"].as_str().expect("node").to_owned();
    // Nodes are named node-1 .. node-3.
    let told = told
        .strip_prefix("node-")
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| n.checked_sub(1))
        .expect("the node told of the 429 is one of ours");
    let until = wait_until("the node told to pause", PATIENCE, || async {
        let s = stats(&nodes[told].socket).await;
        (s["dispatch"]["state"] == "paused_rate_limit").then(|| ms(&s["dispatch"]["until"]))
    })
    .await;
    assert!(until - ms(&job["history"][0]["finished_at"]) >= 2_900);

    // Due now on the nodes that were not told: they wait for the pause too.
    let mut later = Vec::new();
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != told) {
        later.push((i, node.enqueue(sms_job(&format!("later-{i}"), "0s")).await));
    }
    for (i, id) in &later {
        nodes[*i].wait_for_state(*id, "sent").await;
    }
    nodes[told].wait_for_state(throttled, "sent").await;
    let requests = coax.requests();
    assert_eq!(requests.len(), 4, "one 429, then each job once");
    for r in &requests[1..] {
        let at = r.received_at.timestamp_millis();
        // A little slack for the clocks read on either side of the socket.
        assert!(
            at >= until - 100,
            "a request reached Coax {} ms before the shared pause ended",
            until - at
        );
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_for_the_sum_of_every_nodes_sends() {
    const RATE: f64 = 50.0;
    const JOBS: usize = 300;
    let coax = CoaxStub::start().await;
    let nodes = start_nodes(3, |name| {
        node_config(
            &coax.base_url(),
            name,
            "[dispatch]\nrate_limit = \"50/s\"\nconcurrency = 16",
        )
    })
    .await;
    let mut sent = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let jobs: Vec<Value> = (0..JOBS / 3)
            .map(|i| sms_job(&format!("rl-{n}-{i}"), "0s"))
            .collect();
        let answer = node.request(json!({"op": "enqueue", "jobs": jobs})).await;
        sent.extend(ids(&answer).into_iter().map(|id| (n, id)));
    }
    let requests = coax.wait_for_requests(JOBS, Duration::from_secs(60)).await;
    assert_eq!(requests.len(), JOBS);

    // A token bucket of 50 refilled at 50/s: in any stretch of time, at
    // most the burst plus the rate times its length, with 100 ms of slack
    // for loopback jitter.
    let times: Vec<f64> = requests
        .iter()
        .map(|r| r.received_at.timestamp_millis() as f64 / 1000.0)
        .collect();
    for i in 0..times.len() {
        for j in i..times.len() {
            let allowed = RATE + RATE * (times[j] - times[i] + 0.1);
            assert!(
                (j - i + 1) as f64 <= allowed,
                "{} sends in {:.3}s across the nodes; at most {allowed:.1} allowed",
                j - i + 1,
                times[j] - times[i]
            );
        }
    }
    let mut by_node = BTreeMap::new();
    for (n, id) in sent {
        let job = nodes[n].wait_for_state(id, "sent").await;
        for name in attempt_nodes(&job) {
            *by_node.entry(name).or_insert(0) += 1;
        }
    }
    assert!(by_node.len() > 1, "more than one node sent: {by_node:?}");
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_on_a_busy_node_is_sent_by_another_before_its_poll() {
    let coax = CoaxStub::start().await;
    // The first request (node-a's only slot) is answered 10 s late.
    coax.push(Reply::sent().with_delay(Duration::from_secs(10)));
    let config = |name: &str| {
        node_config(
            &coax.base_url(),
            name,
            "[coax]\nrequest_timeout = \"30s\"\n\
             [dispatch]\npoll_interval = \"30s\"\nconcurrency = 1",
        )
    };
    let url = queue_url(None).await;
    let a = start_node(&url, "node-a", &config("node-a")).await;
    let blocker = a.enqueue(sms_job("blocker", "0s")).await;
    coax.wait_for_requests(1, PATIENCE).await;
    // Started after the blocker was claimed: its first pass found nothing
    // due, and its next poll is 30 s away.
    let b = start_node(&url, "node-b", &config("node-b")).await;

    let target = a.enqueue(sms_job("target", "0s")).await;
    // PATIENCE (20 s) is under the poll interval: only the notification
    // of the enqueue can have woken node-b in time, and node-a had no
    // free slot until the blocker's answer 10 s later.
    let job = a.wait_for_state(target, "sent").await;
    assert_eq!(
        attempt_nodes(&job),
        vec!["node-b".to_owned()],
        "node-b sent it while node-a was busy: {job}"
    );
    a.wait_for_state(blocker, "sent").await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_on_three_nodes_creates_each_occurrence_once() {
    let coax = CoaxStub::start().await;
    let nodes = start_nodes(3, |name| node_config(&coax.base_url(), name, "")).await;
    let put = json!({"op": "schedule_put", "name": "tick", "cron": "* * * * * *",
                     "catch_up": "all",
                     "job": {"kind": "message", "channel": "sms",
                             "payload": {"message": "tick", "phone": "+15550100"}}});
    let answer = nodes[0].request(put).await;
    assert_eq!(answer["ok"], true, "{answer}");
    coax.wait_for_requests(5, PATIENCE).await;
    let answer = nodes[1]
        .request(json!({"op": "schedule_delete", "name": "tick"}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");

    // Once deleted, no node fires it again: the list is complete.
    let answer = nodes[2]
        .request(json!({"op": "list", "tag": "schedule:tick", "limit": 1000}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    let jobs = answer["jobs"].as_array().cloned().unwrap_or_default();
    let mut at: Vec<i64> = jobs.iter().map(|j| ms(&j["scheduled_at"])).collect();
    at.sort_unstable();
    // catch_up = "all": one occurrence each second, none twice, none missed.
    for pair in at.windows(2) {
        assert_eq!(pair[1] - pair[0], 1_000, "occurrences {at:?}");
    }
    for job in &jobs {
        nodes[2]
            .wait_for_state(job["id"].as_i64().expect("id"), "sent")
            .await;
    }
    assert_eq!(
        coax.requests().len(),
        jobs.len(),
        "each occurrence sent once"
    );
    for node in nodes {
        node.stop().await;
    }
}

// ---------------------------------------------------------------------------
// Chaos across nodes
// ---------------------------------------------------------------------------

const CHAOS_JOBS: usize = 5_000;
const CHAOS_BATCH: usize = 250;
/// Due times are spread over this long, which bounds how fast requests
/// come, so that each fault below lands while jobs are still being sent:
/// the kill, its recovery, the restart and the lost connections take
/// about 10 s on a loaded machine, and sends keep up with due times.
const CHAOS_SPREAD_MS: i64 = 25_000;
/// `store.lease`; a dead node's jobs are back in line within it plus a beat.
const LEASE: Duration = Duration::from_secs(2);
/// What the test's own polling and a loaded machine add to that bound.
const RECOVERY_SLACK: Duration = Duration::from_secs(1);
const FINAL_STATES: &[&str] = &["sent", "skipped", "failed", "cancelled", "expired"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Ok,
    Unavailable,
    Timeout,
    Reset,
}

/// Answers with 10% 503s, 5% replies too late for `request_timeout` and
/// 2% resets; logs each request's key (its `message`) and fault.
fn inject_faults(stub: &CoaxStub, seed: u64) -> Arc<Mutex<Vec<(String, Fault)>>> {
    let log: Arc<Mutex<Vec<(String, Fault)>>> = Arc::default();
    let rng = Mutex::new(fastrand::Rng::with_seed(seed));
    let sink = log.clone();
    stub.set_chooser(Arc::new(move |r: &Recorded| {
        let roll = rng.lock().unwrap_or_else(|e| e.into_inner()).f64();
        let (fault, reply) = match roll {
            x if x < 0.10 => (Fault::Unavailable, Reply::status(503)),
            x if x < 0.15 => (
                Fault::Timeout,
                Reply::sent().with_delay(Duration::from_secs(1)),
            ),
            x if x < 0.17 => (Fault::Reset, Reply::reset()),
            _ => (Fault::Ok, Reply::sent()),
        };
        let key = r.json()["message"].as_str().unwrap_or_default().to_owned();
        sink.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, fault));
        reply
    }));
    log
}

fn chaos_config(coax_url: &str, name: &str) -> String {
    let lease = LEASE.as_secs();
    node_config(
        coax_url,
        name,
        &format!(
            "[coax]\nrequest_timeout = \"300ms\"\n\
             [store]\nlease = \"{lease}s\"\n\
             [dispatch]\nconcurrency = 16\n\
             [retry]\nmax_attempts = 20\nbase_delay = \"20ms\"\n\
             [breaker]\nfailures = 1000\n\
             [log]\nlevel = \"info\"\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_nodes_a_kill_a_restart_and_lost_connections_lose_nothing() {
    let seed = std::env::var("COAX_CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("multinode chaos: seed {seed} (COAX_CHAOS_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut cluster = PgCluster::start_for(100).await;
    let url = queue_url(Some(&cluster)).await;
    let coax = CoaxStub::start().await;
    let log = inject_faults(&coax, rng.u64(..));
    let n1 = start_node(&url, "n1", &chaos_config(&coax.base_url(), "n1")).await;
    let n2 = start_node(&url, "n2", &chaos_config(&coax.base_url(), "n2")).await;
    let (_n3_dir, mut n3) = start_process(&url, "n3", &chaos_config(&coax.base_url(), "n3")).await;
    let sockets = [n1.socket.clone(), n2.socket.clone(), n3.socket.clone()];

    // Spread over the nodes, falling due over a few seconds.
    let now = time::now();
    let mut keys = HashMap::new();
    for (b, chunk) in (0..CHAOS_JOBS)
        .collect::<Vec<_>>()
        .chunks(CHAOS_BATCH)
        .enumerate()
    {
        let jobs: Vec<Value> = chunk
            .iter()
            .map(|i| {
                let key = format!("mn-{i:04}");
                let at = now + 300 + rng.i64(0..CHAOS_SPREAD_MS);
                json!({"kind": "message", "channel": "sms", "key": key,
                       "scheduled_at": time::format(at),
                       "payload": {"message": key, "phone": "+15550100"}})
            })
            .collect();
        let answer = request_at(&sockets[b % 3], json!({"op": "enqueue", "jobs": jobs})).await;
        for (i, id) in chunk.iter().zip(ids(&answer)) {
            keys.insert(format!("mn-{i:04}"), id);
        }
    }
    assert_eq!(keys.len(), CHAOS_JOBS);

    // n3 dies hard while sending; its claims are back in line within the
    // lease (renewed each beat) and a beat.
    coax.wait_for_requests(400, PATIENCE).await;
    n3.signal("KILL");
    assert_eq!(n3.wait_exit(PATIENCE).await, None, "killed by SIGKILL");
    let killed = Instant::now();
    let held_by_n3 = || async {
        let answer = request_at(
            &sockets[0],
            json!({"op": "list", "state": "sending", "limit": 1000}),
        )
        .await;
        assert_eq!(answer["ok"], true, "{answer}");
        answer["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| attempt_nodes(j).last().map(String::as_str) == Some("n3"))
            .count()
    };
    let in_flight = held_by_n3().await;
    assert!(in_flight > 0, "n3 was killed with requests in flight");
    wait_until(
        "n3's jobs in flight to be recovered",
        LEASE + Duration::from_secs(1) + RECOVERY_SLACK,
        || async { (held_by_n3().await == 0).then_some(()) },
    )
    .await;
    println!(
        "multinode chaos: n3's {in_flight} claims recovered {:?} after the kill",
        killed.elapsed()
    );

    // The server crashes and comes back.
    let seen = coax.requests().len();
    tokio::task::block_in_place(|| cluster.restart());
    coax.wait_for_requests(seen + 100, Duration::from_secs(60))
        .await;

    // n1 loses every connection it has, once it has reconnected since the
    // restart (the other nodes may have sent the 100 before it did).
    let superuser = cluster.superuser("postgres").await;
    wait_until("n1 to reconnect", PATIENCE, || async {
        let n1 = crate::helpers::postgres::count(
            &superuser,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'n1'",
        )
        .await;
        (n1 > 0).then_some(())
    })
    .await;
    let seen = coax.requests().len();
    let terminated = crate::helpers::postgres::count(
        &cluster.superuser("postgres").await,
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'n1') t",
    )
    .await;
    assert!(terminated > 0, "n1 had connections to terminate");
    coax.wait_for_requests(seen + 100, Duration::from_secs(60))
        .await;

    // Settled: nothing scheduled or sending, as n2 sees the queue.
    wait_until("the queue to settle", Duration::from_secs(180), || async {
        let s = stats(&sockets[1]).await;
        let open = |state: &str| s["counts"][state].as_u64().unwrap_or(0);
        (open("scheduled") == 0 && open("sending") == 0).then_some(())
    })
    .await;

    let jobs = all_jobs(&sockets[0]).await;
    let by_key: HashMap<String, Value> = jobs
        .into_iter()
        .map(|j| (j["key"].as_str().unwrap_or_default().to_owned(), j))
        .collect();
    let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut per_key: HashMap<&str, Vec<Fault>> = HashMap::new();
    for (key, fault) in &log {
        per_key.entry(key.as_str()).or_default().push(*fault);
    }
    let mut problems = Vec::new();
    let mut shares: BTreeMap<String, usize> = BTreeMap::new();
    for (key, id) in &keys {
        let Some(job) = by_key.get(key) else {
            problems.push(format!("{key} was lost"));
            continue;
        };
        assert_eq!(job["id"], *id, "{key}");
        let state = job["state"].as_str().unwrap_or_default();
        if !FINAL_STATES.contains(&state) {
            problems.push(format!("{key} ended {state}, which is not final"));
        }
        let got = per_key.get(key.as_str()).cloned().unwrap_or_default();
        if state == "sent" && !got.contains(&Fault::Ok) {
            problems.push(format!("{key} is sent but Coax never said so: {got:?}"));
        }
        let history = job["history"].as_array().cloned().unwrap_or_default();
        let ambiguous = history.iter().filter(|a| a["ambiguous"] == true).count();
        let maybe = got.iter().filter(|f| **f != Fault::Unavailable).count();
        if maybe > 1 + ambiguous {
            problems.push(format!(
                "{key}: Coax may have acted on {maybe} requests, but only {ambiguous} attempts are ambiguous: {job}"
            ));
        }
        for name in attempt_nodes(job) {
            *shares.entry(name).or_default() += 1;
        }
    }
    println!(
        "multinode chaos: {} requests; attempts per node {shares:?}",
        log.len()
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    for name in ["n1", "n2", "n3"] {
        assert!(
            shares.get(name).is_some_and(|n| *n > 0),
            "{name} sent a share: {shares:?}"
        );
    }
    n2.stop().await;
    n1.stop().await;
}
