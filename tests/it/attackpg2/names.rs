//! Node names: a node killed and started again at once under its name,
//! twins started together, and a second daemon under a running node's
//! name while that node's listening connection (holding the name's lock)
//! is cut.

use super::*;

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
