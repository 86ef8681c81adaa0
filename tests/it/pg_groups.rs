//! PostgreSQL's group commit, attacked as hostile clients would: many
//! single enqueues at one instant (one key sent by several at once), a
//! job PostgreSQL refuses among good ones, outcomes recorded in groups
//! (one of them a claim this node lost), the upkeep's ANALYZE of a table
//! that outgrew its statistics, and two nodes racing for a parent's last
//! follow-up.
//!
//! Each test runs on PostgreSQL whatever `COAX_TEST_BACKEND` says: the
//! group writers exist only there.

use crate::helpers::backend::new_database;
use crate::helpers::coax::{Chooser, CoaxStub, Recorded, Reply};
use crate::helpers::daemon::TestDaemon;
use crate::helpers::logs::Logs;
use crate::helpers::nodes::{all_jobs, node_config, start_node};
use crate::helpers::postgres::{PASSWORD, PgCluster, count};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::client::Client;
use coax_scheduler::config::OnAmbiguous;
use coax_scheduler::job::{NewJob, Rules};
use coax_scheduler::policy::Decision;
use coax_scheduler::store::postgres::Queue;
use coax_scheduler::store::{Finish, Options};
use coax_scheduler::time;
use coax_scheduler::window::Calendar;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex};

/// Sends each request on a connection of its own, all released at one
/// instant once every connection is open; the answers, in order.
async fn at_once(requests: Vec<(PathBuf, Value)>) -> Vec<Value> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let mut clients = Vec::with_capacity(requests.len());
    for (socket, request) in requests {
        let barrier = barrier.clone();
        clients.push(tokio::task::spawn_blocking(move || {
            let mut client = Client::connect(&socket).expect("connect");
            barrier.wait();
            client.request(&request).expect("answer").1
        }));
    }
    let mut answers = Vec::with_capacity(clients.len());
    for client in clients {
        answers.push(client.await.expect("client thread"));
    }
    answers
}

fn sms(key: Option<&str>, message: &str, delay: &str, tags: &[&str]) -> Value {
    let mut job = json!({"kind": "message", "channel": "sms", "delay": delay,
                         "payload": {"message": message, "phone": "+15550100"}});
    if let Some(key) = key {
        job["key"] = json!(key);
    }
    if !tags.is_empty() {
        job["tags"] = json!(tags);
    }
    job
}

fn enqueue(job: &Value) -> Value {
    json!({"op": "enqueue", "job": job})
}

/// One node on a new database of the shared cluster, sending to `coax`.
async fn one_node(coax: &CoaxStub, overrides: &str) -> TestDaemon {
    let url = new_database().await;
    start_node(
        &url,
        "node-1",
        &node_config(&coax.base_url(), "node-1", overrides),
    )
    .await
}

async fn stats(daemon: &TestDaemon) -> Value {
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "{stats}");
    stats
}

fn counted(stats: &Value, state: &str) -> i64 {
    stats["counts"][state].as_i64().unwrap_or(0)
}

fn tags_of(job: &Value) -> BTreeSet<String> {
    job["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_64_single_enqueues_at_once_are_each_answered_as_stored() {
    let coax = CoaxStub::start().await;
    let daemon = one_node(&coax, "").await;
    let mut jobs = Vec::new();
    for i in 0..24 {
        let (key, delay) = (format!("u-{i}"), if i % 2 == 0 { "0s" } else { "1h" });
        let tags: &[&str] = if i % 3 == 0 { &["uniq", "third"] } else { &[] };
        jobs.push(sms(Some(&key), &format!("unique {i}"), delay, tags));
    }
    for i in 0..16 {
        let delay = if i < 8 { "0s" } else { "2h" };
        let tags: &[&str] = if i % 2 == 0 { &["nokey"] } else { &[] };
        jobs.push(sms(None, &format!("keyless {i}"), delay, tags));
    }
    for _ in 0..8 {
        jobs.push(sms(Some("hot-later"), "hot", "1h", &["hot"]));
        jobs.push(sms(Some("hot-now"), "hot now", "0s", &["hot-now"]));
    }
    // One key, eight different jobs: the one stored is the one answered
    // `duplicate: false`, with its own tags.
    for i in 0..8 {
        let tag = format!("mixed-{i}");
        jobs.push(sms(Some("hot-mixed"), &format!("mixed {i}"), "1h", &[&tag]));
    }
    assert_eq!(jobs.len(), 64);
    let answers = at_once(
        jobs.iter()
            .map(|j| (daemon.socket.clone(), enqueue(j)))
            .collect(),
    )
    .await;

    // Per key: exactly one stored, the others told of it by its id.
    let mut by_key: BTreeMap<&str, Vec<(usize, &Value)>> = BTreeMap::new();
    let mut stored: BTreeMap<i64, &Value> = BTreeMap::new();
    for (i, (job, answer)) in jobs.iter().zip(&answers).enumerate() {
        assert_eq!(answer["ok"], true, "{job}: {answer}");
        let id = answer["id"].as_i64().expect("an id");
        if answer["duplicate"] == false {
            assert!(stored.insert(id, job).is_none(), "id {id} given twice");
        } else {
            assert_eq!(answer["duplicate"], true, "{answer}");
        }
        if let Some(key) = job["key"].as_str() {
            by_key.entry(key).or_default().push((i, answer));
        }
    }
    for (key, answered) in &by_key {
        let first: Vec<&(usize, &Value)> = answered
            .iter()
            .filter(|(_, a)| a["duplicate"] == false)
            .collect();
        assert_eq!(first.len(), 1, "key {key}: {answered:?}");
        let id = &first[0].1["id"];
        for (_, answer) in answered {
            assert_eq!(&answer["id"], id, "key {key}: {answered:?}");
        }
    }
    assert_eq!(stored.len(), 24 + 16 + 3, "jobs stored");

    // Each job as it was asked for: its key, tags and state.
    let due_now: Vec<i64> = stored
        .iter()
        .filter(|(_, j)| j["delay"] == "0s")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(due_now.len(), 12 + 8 + 1);
    for id in &due_now {
        daemon.wait_for_state(*id, "sent").await;
    }
    for (id, job) in &stored {
        let view = daemon.get(*id).await;
        assert_eq!(view["key"], job["key"], "{view}");
        assert_eq!(view["payload"], job["payload"], "{view}");
        assert_eq!(tags_of(&view), tags_of(job), "{view}");
        let state = if job["delay"] == "0s" {
            "sent"
        } else {
            "scheduled"
        };
        assert_eq!(view["state"], state, "{view}");
    }
    let listed = all_jobs(&daemon.socket).await;
    let listed: BTreeMap<i64, BTreeSet<String>> = listed
        .iter()
        .map(|j| (j["id"].as_i64().expect("id"), tags_of(j)))
        .collect();
    let expected: BTreeMap<i64, BTreeSet<String>> =
        stored.iter().map(|(id, j)| (*id, tags_of(j))).collect();
    assert_eq!(listed, expected, "list shows each job once, with its tags");
    // And each tag finds its jobs (the tag index, not the job's own list).
    let all_tags: BTreeSet<String> = expected.values().flatten().cloned().collect();
    assert_eq!(
        all_tags.len(),
        6,
        "one mixed-N, the stored one: {all_tags:?}"
    );
    for tag in &all_tags {
        let answer = daemon
            .request(json!({"op": "list", "tag": tag, "limit": 1000}))
            .await;
        assert_eq!(answer["ok"], true, "{answer}");
        let found: BTreeSet<i64> = answer["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| j["id"].as_i64())
            .collect();
        let tagged: BTreeSet<i64> = expected
            .iter()
            .filter(|(_, tags)| tags.contains(tag))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(found, tagged, "list tag {tag}");
    }
    let stats = stats(&daemon).await;
    assert_eq!(counted(&stats, "sent"), 21, "{stats}");
    assert_eq!(counted(&stats, "scheduled"), 22, "{stats}");
    assert_eq!(coax.requests().len(), 21, "each job due now sent once");
    daemon.stop().await;
}

/// PostgreSQL text cannot hold NUL, which a JSON string can: a key with
/// one was answered `internal` ("PostgreSQL failure while locking
/// idempotency keys"), as though the store had failed. It is the job's
/// fault, and the daemon says so; the jobs grouped with it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_key_with_a_nul_is_refused_as_invalid_and_its_group_is_stored() {
    let coax = CoaxStub::start().await;
    let daemon = one_node(&coax, "").await;
    let bad = sms(Some("bad\u{0}key"), "bad", "1h", &[]);
    // A NUL in the payload is JSON's to escape: it is stored.
    let mut jobs: Vec<Value> = (0..40)
        .map(|i| {
            sms(
                Some(&format!("good-{i}")),
                &format!("good\u{0}{i}"),
                "1h",
                &["good"],
            )
        })
        .collect();
    jobs.insert(20, bad.clone());
    let answers = at_once(
        jobs.iter()
            .map(|j| (daemon.socket.clone(), enqueue(j)))
            .collect(),
    )
    .await;
    let refusal = &answers[20];
    assert_eq!(refusal["ok"], false, "{refusal}");
    assert_eq!(refusal["error"]["code"], "invalid_job", "{refusal}");
    assert_eq!(refusal["error"]["field"], "key", "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("NUL"), "{refusal}");
    let mut ids = BTreeSet::new();
    for (job, answer) in jobs.iter().zip(&answers) {
        if job["key"] == bad["key"] {
            continue;
        }
        assert_eq!(answer["ok"], true, "{job}: {answer}");
        assert_eq!(answer["duplicate"], false, "{answer}");
        let id = answer["id"].as_i64().expect("id");
        assert!(ids.insert(id), "id {id} given twice");
        let view = daemon.get(id).await;
        assert_eq!(view["key"], job["key"], "{view}");
        assert_eq!(view["payload"], job["payload"], "{view}");
    }
    assert_eq!(ids.len(), 40);
    // Alone, or in a batch, the same refusal; the daemon still serves.
    let alone = daemon.request(enqueue(&bad)).await;
    assert_eq!(alone["error"]["code"], "invalid_job", "{alone}");
    let batch = daemon
        .request(json!({"op": "enqueue", "jobs": [sms(Some("fine"), "x", "1h", &[]), bad]}))
        .await;
    assert_eq!(batch["error"]["code"], "invalid_job", "{batch}");
    assert_eq!(batch["error"]["index"], 1, "{batch}");
    let stats = stats(&daemon).await;
    assert_eq!(counted(&stats, "scheduled"), 40, "{stats}");
    daemon.stop().await;
}

/// Which reply each job's message asks of the Coax stand-in: a `[kind]`
/// in its text; a `[flaky]` one is answered 503 the first time only.
fn chooser() -> Chooser {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    Arc::new(move |r: &Recorded| {
        let body = r.body_text();
        if body.contains("[refuse]") {
            Reply::refused("opted out")
        } else if body.contains("[pause]") {
            Reply::paused()
        } else if body.contains("[reject]") {
            Reply::status(422)
        } else if body.contains("[down]") {
            Reply::status(503)
        } else if body.contains("[nul]") {
            Reply::refused("opted\u{0}out")
        } else if body.contains("[flaky]") && seen.lock().expect("seen").insert(body) {
            Reply::status(503)
        } else {
            Reply::sent()
        }
    })
}

/// Enqueues `kinds` × `per_kind` jobs due now in one batch, the first
/// `followed` of each kind with a follow-up (`[ok]`, due at its parent's
/// send, kind `after`), and waits until none is waiting or out; each
/// job's kind and view.
async fn send_all(
    daemon: &TestDaemon,
    kinds: &[&str],
    per_kind: usize,
    followed: usize,
) -> Vec<(String, Value)> {
    let mut jobs = Vec::new();
    for kind in kinds {
        for i in 0..per_kind {
            let key = format!("{kind}-{i}");
            jobs.push(sms(Some(&key), &format!("[{kind}] {i}"), "0s", &[]));
            if i < followed {
                let mut after = sms(Some(&format!("after-{key}")), "[ok] after", "0s", &[]);
                after["after"] = json!({"key": key});
                jobs.push(after);
            }
        }
    }
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    let ids: Vec<i64> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|j| j["id"].as_i64().expect("id"))
        .collect();
    let mut done = Vec::new();
    for (id, job) in ids.iter().zip(&jobs) {
        let view = wait_until(&format!("job {id} to end"), PATIENCE, || async {
            let view = daemon.get(*id).await;
            let state = view["state"].as_str().unwrap_or_default().to_owned();
            (!["scheduled", "sending", "waiting"].contains(&state.as_str())).then_some(view)
        })
        .await;
        let kind = job["key"].as_str().and_then(|k| k.split('-').next());
        done.push((kind.expect("a kind").to_owned(), view));
    }
    done
}

fn decisions(view: &Value) -> Vec<String> {
    view["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["decision"].as_str().unwrap_or("open").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_outcomes_recorded_in_groups_leave_each_job_as_coax_answered() {
    let coax = CoaxStub::start().await;
    coax.set_chooser(chooser());
    let daemon = one_node(&coax, "[dispatch]\nconcurrency = 16").await;
    let kinds = ["ok", "refuse", "pause", "reject", "flaky", "down"];
    let done = send_all(&daemon, &kinds, 8, 2).await;
    for (kind, view) in &done {
        // A follow-up goes out once its parent is sent, and is cancelled
        // when its parent ends otherwise.
        let parent = view["key"].as_str().and_then(|k| k.split('-').nth(1));
        let (state, history): (&str, &[&str]) = match kind.as_str() {
            "after" if matches!(parent, Some("ok" | "flaky")) => ("sent", &["sent"]),
            "after" => ("cancelled", &[]),
            "ok" => ("sent", &["sent"]),
            "refuse" | "reject" => ("failed", &["failed"]),
            "pause" => ("skipped", &["skipped"]),
            "flaky" => ("sent", &["retry", "sent"]),
            "down" => ("failed", &["retry", "retry", "failed"]),
            other => panic!("kind {other}"),
        };
        assert_eq!(view["state"], state, "{kind}: {view}");
        assert_eq!(decisions(view), history, "{kind}: {view}");
        assert_eq!(view["attempts"], history.len(), "{kind}: {view}");
        for attempt in view["history"].as_array().into_iter().flatten() {
            assert_eq!(attempt["node"], "node-1", "{view}");
            assert!(attempt["finished_at"].is_string(), "{view}");
        }
    }
    let stats = stats(&daemon).await;
    assert_eq!(counted(&stats, "sent"), 16 + 4, "{stats}");
    assert_eq!(counted(&stats, "failed"), 24, "{stats}");
    assert_eq!(counted(&stats, "skipped"), 8, "{stats}");
    assert_eq!(counted(&stats, "cancelled"), 8, "{stats}");
    let left = ["scheduled", "sending", "waiting", "held"].map(|s| counted(&stats, s));
    assert_eq!(left, [0; 4], "{stats}");
    assert_eq!(
        coax.requests().len(),
        8 * (4 + 2 + 3) + 4,
        "one request per attempt"
    );
    daemon.stop().await;
}

/// Coax's words are stored as the attempt's error and the job's last
/// error; an answer with a NUL in them could not be stored on PostgreSQL,
/// so the job stayed `sending` until its lease ran out, and was then
/// held as a possible duplicate although Coax had refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_coax_answer_with_a_nul_is_recorded_and_its_group_too() {
    let coax = CoaxStub::start().await;
    coax.set_chooser(chooser());
    let daemon = one_node(&coax, "[dispatch]\nconcurrency = 16").await;
    let done = send_all(&daemon, &["ok", "nul"], 12, 0).await;
    for (kind, view) in &done {
        if kind == "ok" {
            assert_eq!(view["state"], "sent", "{view}");
            continue;
        }
        assert_eq!(view["state"], "failed", "{view}");
        assert_eq!(decisions(view), ["failed"], "{view}");
        let error = view["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("opted") && error.contains("out"), "{view}");
        assert_eq!(view["history"][0]["error"], view["last_error"], "{view}");
    }
    let stats = stats(&daemon).await;
    assert_eq!(counted(&stats, "sent"), 12, "{stats}");
    assert_eq!(counted(&stats, "failed"), 12, "{stats}");
    daemon.stop().await;
}

/// A queue as node `name` on `cluster`'s database, holding what may
/// have been sent.
async fn queue(cluster: &PgCluster, name: &str) -> Queue {
    let options = Options {
        path: Default::default(),
        on_ambiguous: OnAmbiguous::Hold,
        max_attempts: 5,
        calendar: Arc::new(Calendar::none()),
        node: name.to_owned(),
    };
    Queue::open(cluster.load(""), &options, time::now())
        .await
        .unwrap_or_else(|e| panic!("node {name} opens: {e}"))
        .0
}

#[tokio::test]
async fn pg_a_group_of_outcomes_with_one_lost_claim_records_the_others() {
    let logs = Logs::default();
    let _logging = logs.install();
    let cluster = PgCluster::start().await;
    let (a, b) = (
        queue(&cluster, "node-a").await,
        queue(&cluster, "node-b").await,
    );
    let now = time::now();
    let jobs: Vec<NewJob> = (0..6)
        .map(|i| {
            let job = sms(Some(&format!("j-{i}")), "hi", "0s", &[]);
            coax_scheduler::job::validate(&job, now, &Rules::default())
                .unwrap_or_else(|e| panic!("{job}: {e}"))
        })
        .collect();
    let calendar = Calendar::none();
    a.enqueue(&calendar, jobs, false, now)
        .await
        .expect("enqueue")
        .expect("no parents");
    let claimed = a.claim(&calendar, now, 10).await.expect("claim").jobs;
    assert_eq!(claimed.len(), 6);
    let lost = claimed[2].id;
    let client = cluster.superuser(crate::helpers::postgres::DATABASE).await;
    client
        .execute(
            "UPDATE jobs SET lease_until = lease_until - 3600000 WHERE id = $1",
            &[&lost],
        )
        .await
        .expect("age one lease");
    let recovered = b.recover(&calendar, now, false).await.expect("recover");
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(recovered[0].id, lost);

    // Every answer comes back at once: they are recorded together.
    let calendar = Arc::new(calendar);
    let finishes: Vec<Finish> = claimed
        .iter()
        .map(|j| Finish {
            id: j.id,
            seq: j.seq,
            finished_at: now + 10,
            status: Some(200),
            error: None,
            ambiguous: false,
            latency_ms: 5,
            result: None,
            decision: Decision::Sent,
        })
        .collect();
    let finishing = finishes
        .iter()
        .map(|f| a.finish(calendar.clone(), f.clone(), None));
    for done in futures_util::future::join_all(finishing).await {
        done.expect("a finish, lost or not, is not an error");
    }
    for j in &claimed {
        let row = client
            .query_one(
                "SELECT j.state, a.decision, a.node FROM jobs j
                 JOIN attempts a ON a.job_id = j.id AND a.seq = 1 WHERE j.id = $1",
                &[&j.id],
            )
            .await
            .expect("the job");
        let (state, decision, node): (String, Option<String>, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let expected = if j.id == lost { "held" } else { "sent" };
        assert_eq!(state, expected, "job {}", j.id);
        assert_eq!(decision.as_deref(), Some(expected), "job {}", j.id);
        assert_eq!(node.as_deref(), Some("node-a"), "job {}", j.id);
    }
    let text = logs.text();
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("lost its claim"))
        .collect();
    assert_eq!(warned.len(), 1, "{text}");
    assert!(
        warned[0].contains(&format!("lost its claim on job {lost} ")),
        "{text}"
    );
}

/// A new database is planned as empty; once `jobs` outgrows that, the
/// upkeep analyzes it (`last_analyze`; autovacuum's is `last_autoanalyze`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_the_upkeep_analyzes_jobs_once_it_outgrows_its_statistics() {
    let coax = CoaxStub::start().await;
    let url = new_database().await;
    let daemon = start_node(&url, "node-1", &node_config(&coax.base_url(), "node-1", "")).await;
    let mut config: tokio_postgres::Config = url.parse().expect("a URL");
    config.password(PASSWORD);
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let analyzed = "SELECT count(*) FROM pg_stat_user_tables
                    WHERE relname = 'jobs' AND last_analyze IS NOT NULL";
    assert_eq!(count(&client, analyzed).await, 0, "a new table");
    // Autovacuum's analyze would refresh the statistics first, now and
    // then, and leave the upkeep nothing to do.
    client
        .batch_execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        .await
        .expect("autovacuum off for jobs");
    // About 1 KiB a job: 3,000 jobs are some 400 pages, past 64.
    let text = "x".repeat(1_000);
    for batch in 0..6 {
        let jobs: Vec<Value> = (0..500)
            .map(|i| sms(Some(&format!("b{batch}-{i}")), &text, "1h", &[]))
            .collect();
        let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
        assert_eq!(answer["ok"], true, "{answer}");
    }
    let pages = count(
        &client,
        "SELECT (pg_relation_size('jobs') / current_setting('block_size')::bigint)::bigint",
    )
    .await;
    assert!(pages > 2 * 64, "{pages} pages");
    // Analyzed (maybe while the batches still came in, then again) until
    // what it saw is within the upkeep's bound of what the table holds.
    let seen = "SELECT relpages::bigint FROM pg_class WHERE relname = 'jobs'";
    wait_until("the upkeep to analyze jobs", PATIENCE, || async {
        let done =
            count(&client, analyzed).await == 1 && pages <= 2 * count(&client, seen).await + 64;
        done.then_some(())
    })
    .await;
    daemon.stop().await;
}

fn follow(key: &str, parent: &str) -> Value {
    let mut job = sms(Some(key), "follow-up", "1m", &[]);
    job["after"] = json!({"key": parent});
    job
}

/// Two nodes on one queue, several clients on each, all attaching a
/// follow-up to one parent that has room for one more: one is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_two_nodes_cannot_both_attach_a_parents_last_follow_up() {
    let coax = CoaxStub::start().await;
    let url = new_database().await;
    let config = |name: &str| node_config(&coax.base_url(), name, "");
    let a = start_node(&url, "node-a", &config("node-a")).await;
    let b = start_node(&url, "node-b", &config("node-b")).await;
    for round in 0..3 {
        let parent = format!("parent-{round}");
        a.enqueue(sms(Some(&parent), "parent", "1h", &[])).await;
        let children: Vec<Value> = (0..999)
            .map(|i| follow(&format!("c{round}-{i}"), &parent))
            .collect();
        let answer = a.request(json!({"op": "enqueue", "jobs": children})).await;
        assert_eq!(answer["ok"], true, "{answer}");
        let racers: Vec<(PathBuf, Value)> = (0..8)
            .map(|i| {
                let node = if i % 2 == 0 { &a } else { &b };
                let job = follow(&format!("last-{round}-{i}"), &parent);
                (node.socket.clone(), enqueue(&job))
            })
            .collect();
        let answers = at_once(racers).await;
        let stored: Vec<&Value> = answers.iter().filter(|a| a["ok"] == true).collect();
        assert_eq!(stored.len(), 1, "round {round}: {answers:#?}");
        for refused in answers.iter().filter(|a| a["ok"] != true) {
            assert_eq!(refused["error"]["code"], "invalid_job", "{refused}");
            assert_eq!(refused["error"]["field"], "after", "{refused}");
            let message = refused["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("1000 follow-ups"), "{refused}");
        }
        let parent = a.request(json!({"op": "get", "key": parent})).await;
        assert_eq!(
            parent["job"]["children"].as_array().map(Vec::len),
            Some(1_000)
        );
    }
    let stats = stats(&a).await;
    assert_eq!(counted(&stats, "waiting"), 3 * 1_000, "{stats}");
    a.stop().await;
    b.stop().await;
}

/// Two nodes, each grouping its own enqueues: one key sent to both at
/// once by many clients is stored once, and every answer names that job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_one_key_sent_to_two_nodes_grouping_at_once_is_stored_once() {
    let coax = CoaxStub::start().await;
    let url = new_database().await;
    let config = |name: &str| node_config(&coax.base_url(), name, "");
    let a = start_node(&url, "node-a", &config("node-a")).await;
    let b = start_node(&url, "node-b", &config("node-b")).await;
    for round in 0..4 {
        let mut requests = Vec::new();
        for i in 0..32 {
            let node = if i % 2 == 0 { &a } else { &b };
            // Half race for the key; the others fill the groups around them.
            let job = if i % 4 < 2 {
                sms(Some(&format!("shared-{round}")), &format!("{i}"), "1h", &[])
            } else {
                sms(Some(&format!("own-{round}-{i}")), "own", "1h", &[])
            };
            requests.push((node.socket.clone(), enqueue(&job)));
        }
        let answers = at_once(requests).await;
        let shared: Vec<&Value> = answers
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 < 2)
            .map(|(_, a)| a)
            .collect();
        for answer in &answers {
            assert_eq!(answer["ok"], true, "round {round}: {answer}");
        }
        let stored: Vec<&&Value> = shared.iter().filter(|a| a["duplicate"] == false).collect();
        assert_eq!(stored.len(), 1, "round {round}: {shared:#?}");
        for answer in &shared {
            assert_eq!(answer["id"], stored[0]["id"], "round {round}: {shared:#?}");
        }
        let own = answers.iter().enumerate().filter(|(i, _)| i % 4 >= 2);
        assert!(own.clone().all(|(_, a)| a["duplicate"] == false));
        let ids: BTreeSet<i64> = own.filter_map(|(_, a)| a["id"].as_i64()).collect();
        assert_eq!(ids.len(), 16, "round {round}");
    }
    let stats = stats(&b).await;
    assert_eq!(counted(&stats, "scheduled"), 4 * 17, "{stats}");
    a.stop().await;
    b.stop().await;
}

/// No stored key holds a NUL (PostgreSQL text cannot): a `get` by such a
/// key was answered `internal` ("PostgreSQL failure while reading a
/// job"); it finds no job, as on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_get_by_a_key_with_a_nul_finds_no_job() {
    let coax = CoaxStub::start().await;
    let daemon = one_node(&coax, "").await;
    daemon.enqueue(sms(Some("a"), "x", "1h", &[])).await;
    let answer = daemon.request(json!({"op": "get", "key": "a\u{0}"})).await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"]["code"], "not_found", "{answer}");
    let found = daemon.request(json!({"op": "get", "key": "a"})).await;
    assert_eq!(found["ok"], true, "{found}");
    daemon.stop().await;
}
