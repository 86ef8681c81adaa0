//! Recurring sends on the PostgreSQL store, called directly: what several
//! nodes firing one schedule at once leave behind, and rows a hand edit
//! made unreadable. The daemon-level behaviour is `recurring`'s, run on
//! both stores by `.ci/test`.

use crate::helpers::postgres::PgCluster;
use coax_scheduler::config::OnAmbiguous;
use coax_scheduler::job::Rules;
use coax_scheduler::schedule::{Put, Row, Schedule, check, occurrence_job};
use coax_scheduler::store::postgres::Queue;
use coax_scheduler::store::{Firing, Options};
use coax_scheduler::time::Millis;
use coax_scheduler::window::Calendar;
use serde_json::json;
use std::sync::Arc;

const NOW: Millis = 1_764_583_200_000; // 2025-12-01T10:00:00Z
const HOUR: Millis = 3_600_000;

async fn open(cluster: &PgCluster, node: &str) -> Queue {
    let options = Options {
        path: "unused-on-postgres".into(),
        on_ambiguous: OnAmbiguous::Retry,
        max_attempts: 3,
        calendar: Arc::new(Calendar::none()),
        node: node.into(),
    };
    Queue::open(cluster.load(""), &options, NOW)
        .await
        .expect("the queue opens")
        .0
}

fn schedule(name: &str) -> (Schedule, Millis) {
    let put = Put {
        name: name.into(),
        cron: "0 0 * * * *".into(),
        timezone: None,
        catch_up: None,
        job: json!({"kind": "message", "channel": "sms",
                    "payload": {"message": "hi", "phone": "+15550100"}}),
    };
    check(put, NOW, &Rules::default()).expect("a valid schedule")
}

fn firing(s: &Schedule, revision: i64, was: Millis) -> Firing {
    let job = occurrence_job(s, was, NOW, &Rules::default()).expect("a valid job");
    Firing {
        name: s.name.clone(),
        revision,
        was: Some(was),
        next_at: Some(was + HOUR),
        jobs: vec![job],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_firing_one_schedule_at_once_create_its_occurrence_once() {
    let cluster = PgCluster::start().await;
    let (a, b) = (open(&cluster, "a").await, open(&cluster, "b").await);
    let (s, first) = schedule("hourly");
    assert!(a.put_schedule(s.clone(), first, NOW).await.expect("put"));
    assert!(!b.put_schedule(s.clone(), first, NOW).await.expect("put"));
    // Two puts: revision 2. Both nodes planned from the same reading.
    let calendar = Calendar::none();
    let (x, y) = tokio::join!(
        a.fire_schedule(&calendar, firing(&s, 2, first), NOW),
        b.fire_schedule(&calendar, firing(&s, 2, first), NOW)
    );
    let (x, y) = (x.expect("fire on a"), y.expect("fire on b"));
    let created = match (x, y) {
        (Some(created), None) | (None, Some(created)) => created,
        other => panic!("exactly one node fires it: {other:?}"),
    };
    assert_eq!(created.len(), 1);
    assert!(!created[0].duplicate);
    // A plan from before the second put is dropped.
    assert!(
        a.fire_schedule(&calendar, firing(&s, 1, first + HOUR), NOW)
            .await
            .expect("fire")
            .is_none()
    );
    let (row, recent) = b
        .get_schedule("hourly".into())
        .await
        .expect("get")
        .expect("stored");
    let Row::Readable(stored) = row else {
        panic!("a readable row: {row:?}");
    };
    assert_eq!(stored.next_at, Some(first + HOUR));
    assert_eq!(recent.len(), 1, "{recent:?}");
    assert_eq!(recent[0].id, created[0].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_edited_into_nonsense_is_shown_and_set_aside_once() {
    let cluster = PgCluster::start().await;
    let queue = open(&cluster, "a").await;
    let (hourly, first) = schedule("hourly");
    let (other, other_first) = schedule("other");
    queue.put_schedule(hourly, first, NOW).await.expect("put");
    queue
        .put_schedule(other, other_first, NOW)
        .await
        .expect("put");
    cluster
        .superuser(crate::helpers::postgres::DATABASE)
        .await
        .batch_execute(
            "UPDATE schedules SET catch_up = 'bogus', job = 'nope' WHERE name = 'hourly'",
        )
        .await
        .expect("hand edit");

    let page = queue.list_schedules(None, 10).await.expect("list");
    let names: Vec<&str> = page.iter().map(|(r, _)| r.name()).collect();
    assert_eq!(
        names,
        ["hourly", "other"],
        "an unreadable row cuts no page short"
    );
    let Row::Unreadable(shown) = &page[0].0 else {
        panic!("unreadable: {:?}", page[0].0);
    };
    assert_eq!(shown.catch_up.as_deref(), Some("bogus"));
    assert_eq!(shown.job, json!("nope"));
    assert!(shown.why.contains("catch_up"), "{}", shown.why);

    // Due: the readable one fires, the other is set aside (next_at null),
    // so it is not due again and no longer counts as the next occurrence.
    let due = queue.due_schedules(first + HOUR).await.expect("due");
    let due: Vec<&str> = due.iter().map(|s| s.schedule.name.as_str()).collect();
    assert_eq!(due, ["other"]);
    assert_eq!(
        queue.schedules_overview().await.expect("overview"),
        (2, Some(other_first))
    );
    assert!(
        queue
            .delete_schedule("hourly".into())
            .await
            .expect("delete")
    );
    assert!(
        !queue
            .delete_schedule("hourly".into())
            .await
            .expect("delete")
    );
}
