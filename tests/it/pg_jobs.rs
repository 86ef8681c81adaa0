//! Jobs in on PostgreSQL, where several nodes share one queue: what only
//! a shared queue can get wrong. Two nodes changing one job at once lose
//! neither change; a key enqueued on two nodes at once is stored once; an
//! enqueue wakes every node (`coax_due`); a follow-up attached after its
//! parent was sent elsewhere is scheduled from that send.
//!
//! Each test starts its own cluster and opens two stores ("nodes") on its
//! one database, whatever `COAX_TEST_BACKEND` says.

use crate::helpers::postgres::{DATABASE, PgCluster, SUPERUSER, SUPERUSER_PASSWORD};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::config::OnAmbiguous;
use coax_scheduler::job::{NewJob, Rules, State};
use coax_scheduler::protocol::Lookup;
use coax_scheduler::store::{Options, Refusal, Store};
use coax_scheduler::time;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A store on `cluster`'s database as node `name`.
async fn node(cluster: &PgCluster, name: &str) -> Store {
    let options = Options {
        path: Default::default(),
        on_ambiguous: OnAmbiguous::Retry,
        max_attempts: 5,
        calendar: Arc::new(coax_scheduler::window::Calendar::none()),
        node: name.to_owned(),
    };
    Store::open_postgres(cluster.load(""), &options)
        .await
        .unwrap_or_else(|e| panic!("node {name} opens: {e}"))
        .0
}

/// `job` validated as the server would.
fn new_job(job: Value) -> NewJob {
    coax_scheduler::job::validate(&job, time::now(), &Rules::default())
        .unwrap_or_else(|e| panic!("{job}: {e}"))
}

fn sms(key: &str, delay: &str) -> Value {
    json!({"kind": "message", "channel": "sms", "key": key, "delay": delay,
           "payload": {"message": "hi", "phone": "+15550100"}})
}

async fn enqueue_one(store: &Store, job: Value) -> i64 {
    let answer = store.enqueue(vec![new_job(job)]).await.expect("enqueue");
    answer[0].id
}

#[tokio::test]
async fn a_cancel_and_a_reschedule_of_one_job_at_once_on_two_nodes_lose_no_update() {
    let cluster = PgCluster::start().await;
    let (a, b) = (node(&cluster, "a").await, node(&cluster, "b").await);
    let (mut moved, mut refused) = (0, 0);
    for round in 0..40 {
        let id = enqueue_one(&a, sms(&format!("race-{round}"), "1d")).await;
        let before = a.get(Lookup::Id(id)).await.expect("get").expect("stored");
        let to = time::now() + 2 * 86_400_000;
        let (cancelled, rescheduled) = tokio::join!(a.cancel(id), b.reschedule(id, to));
        // A cancel finds the job scheduled whichever comes first.
        let (view, _) = cancelled
            .expect("cancel")
            .unwrap_or_else(|r| panic!("round {round}: cancel refused: {r:?}"));
        assert_eq!(view.state, State::Cancelled);
        let after = a.get(Lookup::Id(id)).await.expect("get").expect("stored");
        assert_eq!(after.state, State::Cancelled, "round {round}");
        match rescheduled.expect("reschedule") {
            // It came first: the job it answered was still scheduled, at
            // the new time, and the cancel kept that time.
            Ok(view) => {
                assert_eq!(view.state, State::Scheduled, "round {round}");
                assert_eq!(view.scheduled_at, time::format(to), "round {round}");
                assert_eq!(after.scheduled_at, time::format(to), "round {round}");
                moved += 1;
            }
            // It came second: it saw the cancel and changed nothing.
            Err(Refusal::Conflict { state }) => {
                assert_eq!(state, State::Cancelled, "round {round}");
                assert_eq!(after.scheduled_at, before.scheduled_at, "round {round}");
                refused += 1;
            }
            Err(other) => panic!("round {round}: {other:?}"),
        }
    }
    assert_eq!(moved + refused, 40);
}

#[tokio::test]
async fn one_key_enqueued_on_two_nodes_at_once_is_stored_once() {
    let cluster = PgCluster::start().await;
    let (a, b) = (node(&cluster, "a").await, node(&cluster, "b").await);
    for round in 0..20 {
        let key = format!("once-{round}");
        let (x, y) = tokio::join!(
            a.enqueue(vec![new_job(sms(&key, "1h"))]),
            b.enqueue(vec![new_job(sms(&key, "1h"))])
        );
        let (x, y) = (&x.expect("enqueue on a")[0], &y.expect("enqueue on b")[0]);
        assert_eq!(x.id, y.id, "round {round}: one job holds the key");
        assert_eq!(
            [x.duplicate, y.duplicate].iter().filter(|d| **d).count(),
            1,
            "round {round}: one stored it, the other was told it is a duplicate: {x:?} {y:?}"
        );
        assert_eq!(y.state, State::Scheduled);
        assert_eq!(x.due_at, y.due_at);
    }
}

/// A connection as the superuser to the queue's database that passes on
/// the channel of each notification it hears.
async fn listening(
    cluster: &PgCluster,
) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<String>) {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(cluster.port)
        .user(SUPERUSER)
        .password(SUPERUSER_PASSWORD)
        .dbname(DATABASE);
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("superuser connection");
    let (tx, heard) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.channel().to_owned());
            }
        }
    });
    (client, heard)
}

#[tokio::test]
async fn an_enqueue_of_a_due_job_notifies_coax_due_to_every_node() {
    let cluster = PgCluster::start().await;
    let a = node(&cluster, "a").await;
    let (listener, mut heard) = listening(&cluster).await;
    listener
        .batch_execute("LISTEN coax_due")
        .await
        .expect("LISTEN");
    enqueue_one(&a, sms("due-now", "0s")).await;
    let channel = tokio::time::timeout(PATIENCE, heard.recv())
        .await
        .expect("a notification within PATIENCE")
        .expect("the listening connection is open");
    assert_eq!(channel, "coax_due");
}

#[tokio::test]
async fn a_follow_up_of_a_parent_sent_on_another_node_is_scheduled_its_delay_after_the_send() {
    let cluster = PgCluster::start().await;
    let (a, b) = (node(&cluster, "a").await, node(&cluster, "b").await);
    let parent = enqueue_one(&a, sms("parent", "0s")).await;
    // The parent went out on another node: its attempt ended at `sent`.
    let sent = time::now() - 60_000;
    let admin = cluster.superuser(DATABASE).await;
    admin
        .execute(
            "UPDATE jobs SET state = 'sent', attempts = 1, updated_at = $2 WHERE id = $1",
            &[&parent, &time::now()],
        )
        .await
        .expect("mark the parent sent");
    admin
        .execute(
            "INSERT INTO attempts (job_id, seq, started_at, finished_at, status, decision, node)
             VALUES ($1, 1, $2, $2, 200, 'sent', 'c')",
            &[&parent, &sent],
        )
        .await
        .expect("record its attempt");
    let mut follow = sms("child", "0s");
    follow["after"] = json!({"id": parent});
    follow["delay"] = json!("2h");
    let answer = b.enqueue(vec![new_job(follow)]).await.expect("enqueue")[0].clone();
    assert_eq!(answer.state, State::Scheduled, "{answer:?}");
    assert_eq!(answer.scheduled_at, time::format(sent + 7_200_000));
    let child = wait_until("the child is readable from a", PATIENCE, || async {
        a.get(Lookup::Id(answer.id)).await.ok().flatten()
    })
    .await;
    assert_eq!(child.after, Some(parent));
    assert_eq!(child.due_at, Some(time::format(sent + 7_200_000)));
    let parent_view = a
        .get(Lookup::Id(parent))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(parent_view.children, vec![answer.id]);
    assert_eq!(parent_view.history.len(), 1);
}

#[tokio::test]
async fn reschedule_by_tag_on_postgres_moves_expires_and_refuses_past_9999() {
    let cluster = PgCluster::start().await;
    let a = node(&cluster, "a").await;
    let tagged = |key: &str, ttl: Option<&str>| {
        let mut job = sms(key, "1h");
        job["tags"] = json!(["visit:1"]);
        if let Some(ttl) = ttl {
            job["ttl"] = json!(ttl);
        }
        job
    };
    let ids = [
        enqueue_one(&a, tagged("t1", None)).await,
        enqueue_one(&a, tagged("t2", None)).await,
    ];
    let expiring = enqueue_one(&a, tagged("t3", Some("90m"))).await;
    let untagged = enqueue_one(&a, sms("other", "1h")).await;
    let at = |view: &coax_scheduler::protocol::JobView| {
        time::parse_rfc3339(&view.scheduled_at).expect("a time")
    };
    let mut before = Vec::new();
    for id in ids {
        before.push(at(&a.get(Lookup::Id(id)).await.expect("get").expect("job")));
    }

    let moved = a
        .reschedule_tag("visit:1".into(), -30 * 60_000)
        .await
        .expect("reschedule")
        .expect("not past 9999");
    assert_eq!((moved.rescheduled, moved.expired), (3, 0));
    for (id, was) in ids.iter().zip(&before) {
        let view = a.get(Lookup::Id(*id)).await.expect("get").expect("job");
        assert_eq!(at(&view), was - 30 * 60_000);
        assert_eq!(view.due_at.as_deref(), Some(view.scheduled_at.as_str()));
    }
    let other = a
        .get(Lookup::Id(untagged))
        .await
        .expect("get")
        .expect("job");
    assert_eq!(
        other.updated_at, other.created_at,
        "an untagged job is left alone"
    );

    let moved = a
        .reschedule_tag("visit:1".into(), 2 * 3_600_000)
        .await
        .expect("reschedule")
        .expect("not past 9999");
    assert_eq!((moved.rescheduled, moved.expired), (2, 1));
    let gone = a
        .get(Lookup::Id(expiring))
        .await
        .expect("get")
        .expect("job");
    assert_eq!(gone.state, State::Expired);
    assert!(
        gone.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("expired: moved by tag to")),
        "{:?}",
        gone.last_error
    );

    let refused = a
        .reschedule_tag("visit:1".into(), 9_000 * 365 * 86_400_000)
        .await
        .expect("reschedule");
    assert!(
        matches!(refused, Err(id) if ids.contains(&id)),
        "{refused:?}"
    );
    for id in ids {
        let view = a.get(Lookup::Id(id)).await.expect("get").expect("job");
        assert!(
            at(&view) < time::now() + 4 * 3_600_000,
            "nothing moved: {view:?}"
        );
    }
}

#[tokio::test]
async fn a_payload_too_large_for_one_answer_line_is_left_out_of_get_and_list_on_postgres() {
    let cluster = PgCluster::start().await;
    let a = node(&cluster, "a").await;
    let id = enqueue_one(&a, sms("huge", "1h")).await;
    let small = enqueue_one(&a, sms("small", "2h")).await;
    // Only a row written before payloads were capped, or a hand edit, can
    // hold one this large.
    let admin = cluster.superuser(DATABASE).await;
    admin
        .execute(
            "UPDATE jobs SET payload = '{\"message\":\"' || repeat('x', 9 * 1024 * 1024) || '\"}'
             WHERE id = $1",
            &[&id],
        )
        .await
        .expect("inflate the payload");

    let view = a.get(Lookup::Id(id)).await.expect("get").expect("job");
    assert_eq!(view.payload.get(), "null");
    assert!(view.payload_omitted.is_some_and(|n| n > 9 * 1024 * 1024));

    let page = a
        .list(None, 10, Default::default(), None, None, None)
        .await
        .expect("list");
    let ids: Vec<i64> = page.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![id, small], "the list goes on past it");
    assert!(page.jobs[0].payload_omitted.is_some());
    assert!(page.jobs[1].payload_omitted.is_none());
    assert!(page.next.is_none());
}

#[tokio::test]
async fn a_state_a_hand_edit_made_unknown_is_set_aside_on_postgres() {
    let cluster = PgCluster::start().await;
    let a = node(&cluster, "a").await;
    let parent = enqueue_one(&a, sms("edited", "1h")).await;
    let mut follow = sms("follower", "0s");
    follow["after"] = json!({"id": parent});
    let child = enqueue_one(&a, follow).await;
    let admin = cluster.superuser(DATABASE).await;
    admin
        .execute("UPDATE jobs SET state = 'bogus' WHERE id = $1", &[&parent])
        .await
        .expect("edit the state");

    let view = a.get(Lookup::Id(parent)).await.expect("get").expect("job");
    assert_eq!(view.state, State::Failed);
    assert!(
        view.last_error
            .as_deref()
            .is_some_and(|e| e.contains("state \"bogus\" is not a job state")),
        "{:?}",
        view.last_error
    );
    let follower = a.get(Lookup::Id(child)).await.expect("get").expect("job");
    assert_eq!(
        follower.state,
        State::Cancelled,
        "its follower goes with it"
    );
}

#[tokio::test]
async fn a_follower_attached_while_its_parent_is_sent_on_another_node_is_not_left_waiting() {
    let cluster = PgCluster::start().await;
    let b = node(&cluster, "b").await;
    let parent = enqueue_one(&b, sms("in-flight", "0s")).await;
    let watcher = cluster.superuser(DATABASE).await;
    watcher
        .execute(
            "UPDATE jobs SET state = 'sending' WHERE id = $1",
            &[&parent],
        )
        .await
        .expect("the parent is claimed");
    // Another node records the send: it holds the parent's row until it
    // commits, and its release of the followers cannot see one enqueued
    // meanwhile.
    let mut other = cluster.superuser(DATABASE).await;
    let finish = other.transaction().await.expect("begin");
    let sent = time::now() - 1_000;
    finish
        .execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&parent])
        .await
        .expect("lock the parent");
    finish
        .execute(
            "UPDATE jobs SET state = 'sent', attempts = 1, updated_at = $2 WHERE id = $1",
            &[&parent, &sent],
        )
        .await
        .expect("mark it sent");
    finish
        .execute(
            "INSERT INTO attempts (job_id, seq, started_at, finished_at, status, decision, node)
             VALUES ($1, 1, $2, $2, 200, 'sent', 'c')",
            &[&parent, &sent],
        )
        .await
        .expect("record its attempt");

    let mut follow = sms("follower", "0s");
    follow["after"] = json!({"id": parent});
    follow["delay"] = json!("1h");
    let enqueue = tokio::spawn({
        let b = b.clone();
        async move { b.enqueue(vec![new_job(follow)]).await }
    });
    // Until the enqueue waits for the parent's row, or (were it not to
    // wait) has answered.
    wait_until(
        "the enqueue waits for the parent's row",
        PATIENCE,
        || async {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE usename = 'coax' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            (waiting > 0 || enqueue.is_finished()).then_some(())
        },
    )
    .await;
    finish.commit().await.expect("commit the send");

    let answer = enqueue.await.expect("task").expect("enqueue")[0].clone();
    assert_eq!(answer.state, State::Scheduled, "{answer:?}");
    assert_eq!(answer.scheduled_at, time::format(sent + 3_600_000));
}
