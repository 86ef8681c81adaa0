//! Jobs out on PostgreSQL with several nodes on one queue: claims that
//! never overlap, leases that run out and are recovered by another node,
//! an answer that comes back after its node lost the job, and the counts
//! per state kept by a trigger through it all.
//!
//! Jobs are written with SQL, as a hand edit or another node's enqueue
//! would; each test drives the queue's own calls with times it chooses,
//! so a lease runs out without waiting for it (except where the upkeep
//! task, on the wall clock, is the thing under test).

use crate::helpers::backend::new_database;
use crate::helpers::logs::Logs;
use crate::helpers::postgres::PASSWORD;
use crate::helpers::wait_until;
use coax_scheduler::config::{Config, OnAmbiguous, PostgresConfig};
use coax_scheduler::policy::Decision;
use coax_scheduler::store::postgres::{Queue, connect};
use coax_scheduler::store::{Finish, Options, Store};
use coax_scheduler::window::Calendar;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// A moment the tests count from.
const T: i64 = 1_900_000_000_000;
/// `store.lease` in these tests.
const LEASE_MS: i64 = 30_000;

/// Moves every lease `ms` earlier, as that much time passing on the
/// database's clock (by which leases run) would.
async fn age_leases(client: &Client, ms: i64) {
    client
        .execute(
            "UPDATE jobs SET lease_until = lease_until - $1 WHERE state = 'sending'",
            &[&ms],
        )
        .await
        .expect("age the leases");
}

/// The store config for the database at `url`.
fn config(url: &str, lease: &str) -> PostgresConfig {
    let text = format!(
        "[coax]\nbase_url = \"http://127.0.0.1:9\"\n\n[store]\nbackend = \"postgres\"\n\
         url = \"{url}\"\nlease = \"{lease}\"\n\n[socket]\npath = \"coax.sock\"\n"
    );
    let env = |name: &str| match name {
        "COAX_API_KEY" => Some("ck_test_key".to_owned()),
        "COAX_SCHEDULER_DB_PASSWORD" => Some(PASSWORD.to_owned()),
        _ => None,
    };
    let config = Config::from_toml(
        &text,
        std::path::Path::new("/nonexistent/config.toml"),
        &env,
    )
    .unwrap_or_else(|e| panic!("config: {e}"));
    config.store.postgres.expect("a postgres store config")
}

fn options(node: &str, on_ambiguous: OnAmbiguous) -> Options {
    Options {
        path: "unused".into(),
        on_ambiguous,
        max_attempts: 5,
        calendar: Arc::new(Calendar::none()),
        node: node.to_owned(),
    }
}

/// A queue as node `node` on the database at `url`.
async fn node(url: &str, node: &str, on_ambiguous: OnAmbiguous) -> Queue {
    let (queue, _) = Queue::open(config(url, "30s"), &options(node, on_ambiguous), T)
        .await
        .unwrap_or_else(|e| panic!("open node {node}: {e}"));
    queue
}

/// A connection from outside the daemon.
async fn outside(url: &str) -> Client {
    connect(&config(url, "30s")).await.expect("connects")
}

/// Inserts `n` jobs due at `due_at` (scheduled at `scheduled_at`), in
/// `state`; their ids.
async fn insert(client: &Client, n: i64, state: &str, scheduled_at: i64, due_at: i64) -> Vec<i64> {
    client
        .query(
            "INSERT INTO jobs (kind, channel, scheduled_at, state, created_at, updated_at,
                               payload, due_at)
             SELECT 'message', 'sms', $2, $3, $4, $4, '{\"message\":\"hi\"}', $5
             FROM generate_series(1::bigint, $1)
             RETURNING id",
            &[&n, &scheduled_at, &state, &T, &due_at],
        )
        .await
        .expect("insert jobs")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn job(client: &Client, id: i64) -> (String, Option<String>, i64) {
    let row = client
        .query_one(
            "SELECT state, node, attempts FROM jobs WHERE id = $1",
            &[&id],
        )
        .await
        .expect("the job");
    (row.get(0), row.get(1), row.get(2))
}

/// The attempts of job `id`: (seq, node, decision, ambiguous, finished).
async fn attempts(
    client: &Client,
    id: i64,
) -> Vec<(i64, Option<String>, Option<String>, i64, bool)> {
    client
        .query(
            "SELECT seq, node, decision, ambiguous, finished_at IS NOT NULL FROM attempts
             WHERE job_id = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .expect("attempts")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

fn sent(id: i64, seq: u32, at: i64) -> Finish {
    Finish {
        id,
        seq,
        finished_at: at,
        status: Some(200),
        error: None,
        ambiguous: false,
        latency_ms: 5,
        result: None,
        decision: Decision::Sent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_two_nodes_never_claim_the_same_job() {
    let url = new_database().await;
    let (a, b) = (
        node(&url, "node-a", OnAmbiguous::Retry).await,
        node(&url, "node-b", OnAmbiguous::Retry).await,
    );
    let client = outside(&url).await;
    let ids = insert(&client, 300, "scheduled", T, T).await;

    let calendar = Calendar::none();
    let claimer = |queue: Queue| {
        let calendar = calendar.clone();
        async move {
            let mut mine = Vec::new();
            loop {
                let claimed = queue.claim(&calendar, T + 1_000, 7).await.expect("claim");
                if claimed.jobs.is_empty() {
                    return mine;
                }
                mine.extend(claimed.jobs.iter().map(|j| (j.id, j.seq)));
            }
        }
    };
    let (by_a, by_b) = tokio::join!(
        tokio::spawn(claimer(a.clone())),
        tokio::spawn(claimer(b.clone()))
    );
    let (by_a, by_b) = (by_a.expect("node a"), by_b.expect("node b"));
    assert!(!by_a.is_empty() && !by_b.is_empty(), "both nodes claimed");
    let mut all: Vec<i64> = by_a.iter().chain(&by_b).map(|(id, _)| *id).collect();
    all.sort();
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "a job was claimed twice");
    assert_eq!(
        distinct,
        ids.iter().copied().collect(),
        "every job was claimed"
    );
    for (who, claimed) in [("node-a", &by_a), ("node-b", &by_b)] {
        for (id, seq) in claimed.iter().take(20) {
            assert_eq!(*seq, 1);
            let (state, owner, tries) = job(&client, *id).await;
            assert_eq!(
                (state.as_str(), owner.as_deref(), tries),
                ("sending", Some(who), 1)
            );
            let history = attempts(&client, *id).await;
            assert_eq!(history.len(), 1, "one attempt per claim: {history:?}");
            assert_eq!(history[0].1.as_deref(), Some(who));
        }
    }
}

#[tokio::test]
async fn pg_a_claim_whose_lease_ran_out_is_recovered_by_another_node() {
    let url = new_database().await;
    let a = node(&url, "node-a", OnAmbiguous::Hold).await;
    let b = node(&url, "node-b", OnAmbiguous::Hold).await;
    let client = outside(&url).await;
    let [id] = insert(&client, 1, "scheduled", T, T).await[..] else {
        panic!("one job")
    };
    let calendar = Calendar::none();
    let claimed = a.claim(&calendar, T, 10).await.expect("claim");
    assert_eq!(claimed.jobs.len(), 1);

    // Within the lease, and after a renewal that extends it, the claim is
    // node a's, whatever the node's clock says.
    age_leases(&client, LEASE_MS - 5_000).await;
    assert!(
        b.recover(&calendar, T + 10 * LEASE_MS, false)
            .await
            .expect("recover")
            .is_empty()
    );
    assert_eq!(a.renew().await.expect("renew"), 1);
    age_leases(&client, LEASE_MS - 5_000).await;
    assert!(
        b.recover(&calendar, T + 10 * LEASE_MS, false)
            .await
            .expect("recover")
            .is_empty()
    );
    assert_eq!(job(&client, id).await.0, "sending");

    // Once it has run out, node b takes the job back.
    age_leases(&client, 10_000).await;
    let recovered = b.recover(&calendar, T, false).await.expect("recover");
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!((recovered[0].id, recovered[0].attempt), (id, 1));
    assert!(recovered[0].held && !recovered[0].failed);
    assert_eq!(job(&client, id).await.0, "held");
    let history = attempts(&client, id).await;
    assert_eq!(
        history,
        vec![(
            1,
            Some("node-a".to_owned()),
            Some("held".to_owned()),
            1,
            true
        )],
        "the open attempt is closed as ambiguous"
    );
}

#[tokio::test]
async fn pg_the_upkeep_recovers_a_dead_nodes_job_as_a_possible_duplicate() {
    let logs = Logs::default();
    let _logging = logs.install();
    let url = new_database().await;
    let (b, _) = Store::open_postgres(config(&url, "1s"), &options("node-b", OnAmbiguous::Hold))
        .await
        .expect("open node b");
    // Node a claims and dies: its lease is never renewed.
    let a = node(&url, "node-a", OnAmbiguous::Hold).await;
    let client = outside(&url).await;
    // Claimed long enough ago that its lease has run out already.
    let then = coax_scheduler::time::now() - 2 * LEASE_MS;
    let [id] = insert(&client, 1, "scheduled", then, then).await[..] else {
        panic!("one job")
    };
    assert_eq!(
        a.claim(&Calendar::none(), then, 1)
            .await
            .expect("claim")
            .jobs
            .len(),
        1
    );
    drop(a);
    age_leases(&client, 2 * LEASE_MS).await;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let keeping = tokio::spawn({
        let b = b.clone();
        async move { b.keep(stopped).await }
    });
    wait_until(
        "node b recovers the job",
        Duration::from_secs(20),
        || async { (job(&client, id).await.0 == "held").then_some(()) },
    )
    .await;
    let _ = stop.send(true);
    keeping.await.expect("the upkeep ends");
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("possible duplicate"))
        .unwrap_or_else(|| panic!("no possible-duplicate line in:\n{text}"));
    assert!(line.contains(&format!("job_id={id}")), "{line}");
}

#[tokio::test]
async fn pg_a_finish_after_the_lease_was_lost_records_nothing() {
    let logs = Logs::default();
    let _logging = logs.install();
    let url = new_database().await;
    let a = node(&url, "node-a", OnAmbiguous::Hold).await;
    let b = node(&url, "node-b", OnAmbiguous::Hold).await;
    let client = outside(&url).await;
    let [id] = insert(&client, 1, "scheduled", T, T).await[..] else {
        panic!("one job")
    };
    let calendar = Calendar::none();
    let first = a.claim(&calendar, T, 1).await.expect("claim").jobs;
    assert_eq!(first.len(), 1);
    let later = T + LEASE_MS + 1;
    age_leases(&client, LEASE_MS + 1).await;
    assert_eq!(
        b.recover(&calendar, later, false)
            .await
            .expect("recover")
            .len(),
        1
    );
    // A person requeues it, and node b claims it.
    client
        .execute("UPDATE jobs SET state = 'scheduled' WHERE id = $1", &[&id])
        .await
        .expect("requeue by hand");
    let second = b.claim(&calendar, later + 1, 1).await.expect("claim").jobs;
    assert_eq!((second.len(), second[0].seq), (1, 2));

    // Node a's answer for attempt 1 comes back late.
    a.finish(calendar.clone().into(), sent(id, 1, later + 2), None)
        .await
        .expect("a late finish is not an error");
    assert_eq!(
        job(&client, id).await,
        ("sending".to_owned(), Some("node-b".to_owned()), 2),
        "node b's claim is left alone"
    );
    let history = attempts(&client, id).await;
    assert_eq!(history[0].2.as_deref(), Some("held"), "{history:?}");
    assert_eq!(history[1], (2, Some("node-b".to_owned()), None, 0, false));
    let text = logs.text();
    assert!(
        text.contains(&format!(
            "this node lost its claim on job {id} (its lease ran out); the outcome of attempt 1 (sent) is not recorded"
        )),
        "{text}"
    );

    // Node b's own answer is recorded.
    b.finish(calendar.clone().into(), sent(id, 2, later + 3), None)
        .await
        .expect("finish");
    assert_eq!(job(&client, id).await.0, "sent");
    assert_eq!(attempts(&client, id).await[1].2.as_deref(), Some("sent"));
}

/// What the jobs themselves say: per state, and deferred.
async fn counted(client: &Client) -> (BTreeMap<String, u64>, u64) {
    let per_state = client
        .query("SELECT state, count(*) FROM jobs GROUP BY state", &[])
        .await
        .expect("count")
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect();
    let deferred: i64 = client
        .query_one(
            "SELECT count(*) FROM jobs WHERE state = 'scheduled' AND due_at > scheduled_at",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    (per_state, deferred as u64)
}

async fn assert_counts_right(queue: &Queue, client: &Client, when: &str) {
    let summary = queue.summary(T).await.expect("summary");
    let (per_state, deferred) = counted(client).await;
    let kept: BTreeMap<String, u64> = summary
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| (s.as_str().to_owned(), *n))
        .collect();
    assert_eq!(kept, per_state, "counts per state {when}");
    assert_eq!(summary.deferred, deferred, "deferred jobs {when}");
}

#[tokio::test]
async fn pg_counts_stay_right_through_enqueue_claim_finish_and_prune() {
    let url = new_database().await;
    let a = node(&url, "node-a", OnAmbiguous::Hold).await;
    let client = outside(&url).await;
    let calendar = Calendar::none();
    assert_counts_right(&a, &client, "when empty").await;

    insert(&client, 40, "scheduled", T, T).await;
    // Waiting for a window: deferred.
    insert(&client, 5, "scheduled", T + 5_000_000, T + 9_000_000).await;
    assert_counts_right(&a, &client, "after an enqueue").await;

    let claimed = a.claim(&calendar, T, 30).await.expect("claim").jobs;
    assert_eq!(claimed.len(), 30);
    assert_counts_right(&a, &client, "after a claim").await;

    for (i, job) in claimed.iter().enumerate() {
        let mut finish = sent(job.id, job.seq, T + 10);
        if i % 3 == 0 {
            finish.decision = Decision::Failed {
                reason: "refused".into(),
            };
        }
        a.finish(calendar.clone().into(), finish, None)
            .await
            .expect("finish");
    }
    assert_counts_right(&a, &client, "after finishing").await;
    let summary = a.summary(T).await.expect("summary");
    assert_eq!(summary.nodes.len(), 1);
    assert_eq!(
        (summary.nodes[0].name.as_str(), summary.nodes[0].in_flight),
        ("node-a", 0)
    );

    // A dry run removes nothing.
    let would = a.prune(T + 100, true).await.expect("dry run");
    assert_eq!((would.jobs, would.attempts), (30, 30));
    assert_counts_right(&a, &client, "after a dry run").await;

    // While another node prunes, this one leaves it.
    let mut other = outside(&url).await;
    let held = other.transaction().await.expect("transaction");
    held.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&0x436f_6178_0000_0003_i64],
    )
    .await
    .expect("the prune's lock");
    let none = a.prune(T + 100, false).await.expect("prune");
    assert_eq!((none.jobs, none.attempts), (0, 0));
    held.rollback().await.expect("let go");

    let pruned = a.prune(T + 100, false).await.expect("prune");
    assert_eq!((pruned.jobs, pruned.attempts), (30, 30));
    assert_counts_right(&a, &client, "after a prune").await;
    let left: i64 = client
        .query_one("SELECT count(*) FROM attempts", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);

    // Folding keeps the sums and leaves one row per (state, deferred).
    a.fold_counts().await.expect("fold");
    assert_counts_right(&a, &client, "after folding").await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM job_counts", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 2, "scheduled (due) and scheduled (deferred)");
}

#[tokio::test]
async fn pg_the_sweep_sets_aside_a_payload_that_is_not_json_and_a_state_that_is_not_one() {
    let url = new_database().await;
    let a = node(&url, "node-a", OnAmbiguous::Hold).await;
    let client = outside(&url).await;
    let ids = insert(&client, 4, "scheduled", T, T + 10_000_000).await;
    client
        .execute(
            "UPDATE jobs SET payload = '{not json' WHERE id = $1",
            &[&ids[0]],
        )
        .await
        .expect("hand edit");
    client
        .execute("UPDATE jobs SET state = 'lost' WHERE id = $1", &[&ids[1]])
        .await
        .expect("hand edit");
    let mut total = 0;
    let mut from = Some(0);
    while let Some(after) = from {
        let (n, next) = a.sweep_step(after, 2, T).await.expect("sweep");
        total += n;
        from = next;
    }
    assert_eq!(total, 2);
    for id in &ids[..2] {
        assert_eq!(job(&client, *id).await.0, "failed");
    }
    for id in &ids[2..] {
        assert_eq!(job(&client, *id).await.0, "scheduled");
    }
    assert_counts_right(&a, &client, "after the sweep").await;
}

#[tokio::test]
async fn pg_migration_2_counts_the_jobs_already_stored() {
    let url = new_database().await;
    let a = node(&url, "node-a", OnAmbiguous::Hold).await;
    drop(a);
    let client = outside(&url).await;
    // Back to schema version 1, with jobs stored while nothing counted them.
    client
        .batch_execute(
            "DROP TABLE job_counts;
             DROP FUNCTION coax_count_jobs() CASCADE;
             DELETE FROM coax_schema WHERE version = 2;",
        )
        .await
        .expect("back to version 1");
    insert(&client, 7, "scheduled", T, T).await;
    insert(&client, 3, "scheduled", T, T + 1_000).await;
    insert(&client, 2, "sent", T, T).await;

    // Another name: the first node's name lock goes with its connection,
    // which the server may not have seen close yet.
    let a = node(&url, "node-a2", OnAmbiguous::Hold).await;
    assert_counts_right(&a, &client, "after migrating").await;
    let summary = a.summary(T).await.expect("summary");
    assert_eq!(summary.deferred, 3);
    assert_eq!(
        summary.counts.get(&coax_scheduler::job::State::Scheduled),
        Some(&10)
    );
    // And the trigger counts from then on.
    insert(&client, 1, "held", T, T).await;
    assert_counts_right(&a, &client, "after the migration").await;
}

#[tokio::test]
async fn pg_a_claim_expires_what_is_past_its_expiry_and_sets_aside_what_cannot_be_read() {
    let url = new_database().await;
    let a = node(&url, "node-a", OnAmbiguous::Hold).await;
    let client = outside(&url).await;
    let ids = insert(&client, 3, "scheduled", T, T).await;
    client
        .execute(
            "UPDATE jobs SET expires_at = $2 WHERE id = $1",
            &[&ids[0], &T],
        )
        .await
        .expect("an expiry");
    client
        .execute("UPDATE jobs SET payload = '[1]' WHERE id = $1", &[&ids[1]])
        .await
        .expect("hand edit");
    // Not yet due: the next due time the claim answers with.
    insert(&client, 1, "scheduled", T + 60_000, T + 60_000).await;

    let claimed = a.claim(&Calendar::none(), T, 10).await.expect("claim");
    assert_eq!(
        claimed.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    assert_eq!(
        claimed.expired.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    assert_eq!(claimed.next_due, Some(T + 60_000));
    assert_eq!(job(&client, ids[0]).await.0, "expired");
    assert_eq!(job(&client, ids[1]).await.0, "failed");
    let why: String = client
        .query_one("SELECT last_error FROM jobs WHERE id = $1", &[&ids[1]])
        .await
        .expect("the job")
        .get(0);
    assert!(why.contains("payload is not a JSON object"), "{why}");
    assert!(
        attempts(&client, ids[0]).await.is_empty(),
        "no attempt for an expired job"
    );
    assert_counts_right(&a, &client, "after the claim").await;
}
