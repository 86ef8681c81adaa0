//! `list` in pages: no answer line is over 8 MiB, however large the jobs;
//! `next` and `after` page through every job exactly once, in the same
//! order and filter; the daemon's memory stays bounded while it does; and
//! the CLI follows the pages.
//!
//! Payloads larger than enqueue allows are written straight into the
//! database, as rows from before the payload cap (or a hand edit) would be.

use crate::helpers::daemon::{DaemonProcess, TestDaemon, binary, config_text, request_at};
use crate::helpers::memory_kib;
use coax_scheduler::client::Client;
use coax_scheduler::protocol::MAX_ANSWER_BYTES;
use rusqlite::Connection;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;

const NO_COAX: &str = "http://127.0.0.1:9";
const MIB: usize = 1024 * 1024;

fn batch(prefix: &str, n: usize) -> Value {
    let jobs: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "kind": "message", "channel": "sms", "key": format!("{prefix}-{i}"),
                "delay": format!("{}m", 60 + i),
                "payload": {"message": "small", "phone": "+15550100"}
            })
        })
        .collect();
    json!({"op": "enqueue", "jobs": jobs})
}

/// Gives every job a payload of about `bytes`, straight in the database.
fn inflate(db: &Path, bytes: usize) {
    let conn = Connection::open(db).expect("open the queue");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn.execute(
        "UPDATE jobs SET payload = json_object('message', ?1, 'phone', '+15550100')",
        ["m".repeat(bytes)],
    )
    .expect("inflate the payloads");
}

/// Pages through `request` from the start on one connection; returns each
/// answer line's length and the ids in the order they came.
fn page_through(socket: &Path, request: Value) -> (Vec<usize>, Vec<i64>) {
    let mut client = Client::connect(socket).expect("connect");
    let (mut lengths, mut ids) = (Vec::new(), Vec::new());
    let mut request = request;
    loop {
        let line = client.send_line(&request.to_string()).expect("answer");
        lengths.push(line.len() + 1);
        let answer: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(answer["ok"], true, "{}", &line[..line.len().min(300)]);
        let jobs = answer["jobs"].as_array().expect("jobs");
        ids.extend(jobs.iter().map(|j| j["id"].as_i64().expect("id")));
        match &answer["next"] {
            Value::Null => return (lengths, ids),
            Value::String(next) => request["after"] = json!(next),
            other => panic!("next is {other}"),
        }
        assert!(lengths.len() < 1000, "the pages do not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_large_payloads_under_8_mib() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_text(NO_COAX, "", "");
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let answer = daemon.request(batch("big", 100)).await;
    assert_eq!(answer["ok"], true, "{answer}");
    daemon.terminate().await;
    inflate(&dir.path().join("queue.db"), MIB);

    let daemon = DaemonProcess::start(dir.path(), &config).await;
    let socket = daemon.socket.clone();
    // The attack: two lists of up to 10,000 jobs of about 1 MiB each.
    let (lengths, ids) = tokio::task::spawn_blocking(move || {
        let mut all = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (lengths, ids) = page_through(&socket, json!({"op": "list", "limit": 10_000}));
            all.0.extend(lengths);
            all.1.push(ids);
        }
        all
    })
    .await
    .expect("client thread");

    for length in &lengths {
        assert!(
            *length <= MAX_ANSWER_BYTES,
            "an answer line of {length} bytes"
        );
    }
    assert!(lengths.len() > 2, "the lists were not paged: {lengths:?}");
    for pass in &ids {
        assert_eq!(pass.len(), 100, "every job, once: {pass:?}");
        let distinct: BTreeSet<i64> = pass.iter().copied().collect();
        assert_eq!(distinct.len(), 100, "a job came twice: {pass:?}");
        assert!(
            pass.windows(2).all(|w| w[0] < w[1]),
            "out of order: {pass:?}"
        );
    }
    let peak_mib = memory_kib(daemon.child.id()).0 / 1024;
    eprintln!("daemon peak RSS (VmHWM) after two paged lists: {peak_mib} MiB");
    assert!(peak_mib < 256, "the daemon's peak RSS was {peak_mib} MiB");
    let ping = daemon.request(json!({"op": "ping"})).await;
    assert_eq!(ping["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_too_large_for_one_answer_line_is_shown_without_its_payload() {
    let daemon = TestDaemon::start(NO_COAX).await;
    let answer = daemon.request(batch("huge", 2)).await;
    assert_eq!(answer["ok"], true, "{answer}");
    inflate(daemon.db(), 9 * MIB);

    let socket = daemon.socket.clone();
    let (lengths, ids) =
        tokio::task::spawn_blocking(move || page_through(&socket, json!({"op": "list"})))
            .await
            .expect("client thread");
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        lengths.iter().all(|l| *l <= MAX_ANSWER_BYTES),
        "{lengths:?}"
    );

    let line = daemon
        .raw(&json!({"op": "get", "id": ids[0]}).to_string())
        .await;
    assert!(
        line.len() < MAX_ANSWER_BYTES,
        "get answered {} bytes",
        line.len()
    );
    let job: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(job["job"]["payload"], Value::Null, "{line}");
    let omitted = job["job"]["payload_omitted"]
        .as_u64()
        .expect("payload_omitted");
    assert!(omitted > 9 * MIB as u64, "{omitted}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_after_continues_with_the_same_filter_and_order() {
    let daemon = TestDaemon::start(NO_COAX).await;
    let answer = daemon.request(batch("p", 30)).await;
    assert_eq!(answer["ok"], true, "{answer}");
    // Cancel every third job, so that two states interleave.
    for id in (1..=30).filter(|id| id % 3 == 0) {
        let answer = daemon.request(json!({"op": "cancel", "id": id})).await;
        assert_eq!(answer["ok"], true, "{answer}");
    }
    let whole = |request: Value| {
        let socket = daemon.socket.clone();
        async move {
            let mut request = request;
            request["limit"] = json!(10_000);
            let answer = request_at(&socket, request).await;
            assert_eq!(answer["next"], Value::Null, "{answer}");
            answer["jobs"]
                .as_array()
                .expect("jobs")
                .iter()
                .map(|j| j["id"].as_i64().expect("id"))
                .collect::<Vec<i64>>()
        }
    };
    for request in [
        json!({"op": "list"}),
        json!({"op": "list", "order": "recent"}),
        json!({"op": "list", "state": "scheduled"}),
        json!({"op": "list", "state": "cancelled", "order": "recent"}),
    ] {
        let expected = whole(request.clone()).await;
        let mut paged = request.clone();
        paged["limit"] = json!(4);
        let socket = daemon.socket.clone();
        let (_, ids) = tokio::task::spawn_blocking(move || page_through(&socket, paged))
            .await
            .expect("client thread");
        assert_eq!(ids, expected, "{request}");
    }

    for (after, order) in [("garbage", "due"), ("d5.3", "recent")] {
        let answer = daemon
            .request(json!({"op": "list", "after": after, "order": order}))
            .await;
        assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
        assert_eq!(answer["error"]["field"], "after", "{answer}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_list_follows_next_until_its_limit() {
    let daemon = TestDaemon::start(NO_COAX).await;
    let answer = daemon.request(batch("c", 20)).await;
    assert_eq!(answer["ok"], true, "{answer}");
    // About 1 MiB each: a page holds fewer than 15.
    inflate(daemon.db(), MIB);

    let socket = daemon.socket.clone();
    let run = |args: &'static [&'static str]| {
        let socket = socket.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary())
                .arg("--socket")
                .arg(&socket)
                .args(args)
                .env_remove("RUST_LOG")
                .output()
                .expect("run the CLI")
        })
    };
    let out = run(&["--json", "list", "--limit", "15"])
        .await
        .expect("thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line per page"))
        .collect();
    assert!(pages.len() > 1, "one page only");
    let ids: Vec<i64> = pages
        .iter()
        .flat_map(|p| p["jobs"].as_array().expect("jobs").clone())
        .map(|j| j["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, (1..=15).collect::<Vec<i64>>());

    let out = run(&["list", "--limit", "15"]).await.expect("thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let rows = table.lines().filter(|l| l.contains("scheduled")).count();
    assert_eq!(rows, 15, "{}", &table[..table.len().min(2000)]);
    daemon.stop().await;
}
