//! Clocks against leases: a node whose wall clock is off or steps keeps
//! its claims and its place in `stats`, a short lease never runs out in
//! flight, and a shared pause lasts its real length on every node.

use super::*;
use crate::helpers::daemon::TestClock;
use coax_scheduler::time;

/// Starts node `name` on `url` with its wall clock read from `clock`.
async fn start_clocked(url: &str, name: &str, config: &str, clock: Arc<TestClock>) -> TestDaemon {
    let (dir, config) = prepare(url, name, config);
    TestDaemon::start_in_with_clock(dir, &config, clock).await
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
