//! An export taken while the daemon enqueues is one snapshot: every batch
//! (one transaction) is in it whole or not at all, its end line counts
//! its lines, and it imports.

use super::{export, rows, run, target};
use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{TestDaemon, config_text};
use crate::helpers::wait_until;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const BATCH: usize = 20;

#[tokio::test]
async fn an_export_while_the_daemon_enqueues_is_one_consistent_snapshot() {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let daemon = Arc::new(TestDaemon::start_with(&config).await);
    let (stop, batches) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let enqueuing = {
        let (daemon, stop, batches) = (daemon.clone(), stop.clone(), batches.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = batches.load(Ordering::SeqCst);
                let jobs: Vec<Value> = (0..BATCH)
                    .map(|i| {
                        json!({"kind": "message", "channel": "sms", "delay": "1h",
                               "key": format!("b{n}-{i}"), "tags": [format!("batch-{n}")],
                               "payload": {"message": "x".repeat(2_000), "phone": "+15550100"}})
                    })
                    .collect();
                let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
                assert_eq!(answer["ok"], true, "{answer}");
                batches.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    wait_until("some batches to be stored", super::PATIENCE, || async {
        (batches.load(Ordering::SeqCst) >= 5).then_some(())
    })
    .await;

    let mut exports = Vec::new();
    for _ in 0..3 {
        let from = batches.load(Ordering::SeqCst);
        exports.push(export(daemon.dir.path()).await);
        // Enqueueing went on while it ran: the export did not stop the daemon.
        wait_until("a batch after the export", super::PATIENCE, || async {
            (batches.load(Ordering::SeqCst) > from).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    enqueuing.await.expect("enqueuing task");

    for text in &exports {
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        let (jobs, end) = (&lines[1..lines.len() - 1], &lines[lines.len() - 1]);
        assert_eq!(end["type"], "end", "{end}");
        assert_eq!(end["jobs"], jobs.len(), "{end}");
        let mut per_batch: BTreeMap<String, usize> = BTreeMap::new();
        for job in jobs {
            let tag = job["tags"][0].as_str().expect("a batch tag").to_owned();
            *per_batch.entry(tag).or_default() += 1;
        }
        assert!(!per_batch.is_empty());
        for (batch, n) in per_batch {
            assert_eq!(n, BATCH, "{batch} is in the export in part");
        }
    }

    let last = exports.last().expect("an export");
    let into = target(&config);
    let imported = run("import", into.path(), last).await;
    assert!(imported.ok, "import failed: {}", imported.stderr);
    let jobs = last.lines().count() as i64 - 2;
    assert_eq!(rows(&into.path().join("queue.db"), "jobs"), jobs);
    assert_eq!(
        rows(&into.path().join("queue.db"), "job_tags"),
        jobs,
        "a tag row per job"
    );
}
