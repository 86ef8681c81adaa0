//! Moving a queue with `export` and `import`, as an operator runs them:
//! the real binary against a store a daemon made. A queue with a job in
//! every state comes back identical through export, import and export
//! again, and the imported daemon shows the same jobs and goes on above
//! their ids; an export taken while a daemon enqueues is one consistent
//! snapshot ([`live`]); import refuses what it must, leaving the store
//! without a row of the stream ([`refusals`]); and the importing daemon
//! settles due times under its own windows ([`settling`]) and recovers a
//! job exported while sending as after a crash ([`recovery`]).

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::command::{released, run};
use crate::helpers::daemon::{TEST_KEY, TestClock, TestDaemon, binary, config_text};
use crate::helpers::{PATIENCE, edit_db};
use coax_scheduler::time;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

mod live;
mod recovery;
mod refusals;
mod settling;

/// `export` of the store configured in `dir`, asserting success.
async fn export(dir: &Path) -> String {
    let run = run("export", dir, "").await;
    assert!(run.ok, "export failed: {}", run.stderr);
    run.stdout
}

/// An empty dir with the test config (as [`TestDaemon`] writes it) for a
/// store to import into.
fn target(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.toml"), config).expect("write config");
    dir
}

/// The lines of an export, without the header's export time.
pub(crate) fn comparable(export: &str) -> Vec<String> {
    let mut lines: Vec<String> = export.lines().map(str::to_owned).collect();
    let mut header: Value = serde_json::from_str(&lines[0]).expect("header is JSON");
    assert!(header["exported_at"].is_string(), "{header}");
    header["exported_at"] = Value::Null;
    lines[0] = header.to_string();
    lines
}

/// How many rows `table` of the store at `db` holds.
fn rows(db: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).expect("open the queue");
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count rows")
}

/// Asserts that the tables the daemon derives from the jobs agree with
/// them before any daemon has opened the store (its start-up would
/// correct the counts, with a WARN, but not the tag index).
fn derived_tables_agree(db: &Path, deferred: i64, tags: i64) {
    let conn = rusqlite::Connection::open(db).expect("open the queue");
    let table = |sql: &str| -> Vec<(String, i64)> {
        conn.prepare(sql)
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .expect(sql)
    };
    assert_eq!(
        table("SELECT state, jobs FROM state_counts WHERE jobs > 0 ORDER BY state"),
        table("SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state")
    );
    let value = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect(sql) };
    assert_eq!(
        value("SELECT value FROM meta WHERE name = 'deferred'"),
        deferred
    );
    assert_eq!(value("SELECT count(*) FROM job_tags"), tags);
    assert_eq!(
        value(
            "SELECT count(*) FROM jobs j, json_each(j.tags) t
             WHERE EXISTS (SELECT 1 FROM job_tags WHERE tag = t.value AND job_id = j.id)"
        ),
        tags
    );
    assert_eq!(
        value("SELECT count(*) FROM meta WHERE name = 'calendar'"),
        0,
        "due times settled under the source's windows are trusted"
    );
}

/// A window open 02:00-03:00 every day, and a Monday noon to run at: a job
/// due now in that window is deferred.
fn config_with_window(coax: &CoaxStub) -> String {
    let days: String = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|d| format!("{d} = \"02:00-03:00\"\n"))
        .collect();
    format!(
        "{}\n[windows.night]\n{days}",
        config_text(&coax.base_url(), "", "")
    )
}

fn sms(key: &str, extra: Value) -> Value {
    let mut job = json!({"kind": "message", "channel": "sms", "key": key,
                         "payload": {"message": format!("hello {key}"), "phone": "+15550100"}});
    if let (Some(fields), Value::Object(extra)) = (job.as_object_mut(), extra) {
        fields.extend(extra);
    }
    job
}

/// A source daemon, on a Monday noon under [`config_with_window`], whose
/// queue holds a job in every state: sent after one retry (a history of
/// two tries), failed, scheduled (its tag list hand-edited into a form
/// enqueue does not write), deferred by its window, expired, waiting for
/// the scheduled one, cancelled, held, and quarantined for a channel that
/// would climb out of its route; with `bytes`, also one quarantined for a
/// payload that is not UTF-8 (a store of text only cannot hold it). Also a
/// weekly schedule. Returns the daemon, its config, its clock, and each
/// job's id with its state.
pub(crate) async fn queue_in_every_state(
    coax: &CoaxStub,
    bytes: bool,
) -> (TestDaemon, String, Arc<TestClock>, Vec<(i64, &'static str)>) {
    let config = config_with_window(coax);
    let clock = TestClock::at(time::parse_rfc3339("2026-03-02T12:00:00Z").expect("time"));
    let source = TestDaemon::start_with_clock(&config, clock.clone()).await;

    coax.push(Reply::status(500));
    let sent = source
        .enqueue(sms("sent", json!({"tags": ["vip", "march"]})))
        .await;
    source.wait_for_state(sent, "sent").await;
    coax.push(Reply::refused("The customer has opted out of SMS"));
    let failed = source.enqueue(sms("failed", json!({}))).await;
    source.wait_for_state(failed, "failed").await;

    let scheduled = source
        .enqueue(sms("scheduled", json!({"delay": "1h", "tags": ["march"]})))
        .await;
    let deferred = source
        .enqueue(sms("deferred", json!({"window": "night"})))
        .await;
    let expired = source
        .enqueue(sms("expired", json!({"window": "night", "ttl": "1m"})))
        .await;
    let waiting = source
        .enqueue(sms(
            "waiting",
            json!({"after": {"key": "scheduled"}, "delay": "10m"}),
        ))
        .await;
    let cancelled = source
        .enqueue(sms("cancelled", json!({"delay": "1h"})))
        .await;
    let answer = source
        .request(json!({"op": "cancel", "id": cancelled}))
        .await;
    assert_eq!(answer["job"]["state"], "cancelled", "{answer}");
    let held = source.enqueue(sms("held", json!({"delay": "1h"}))).await;
    let route = source.enqueue(sms("route", json!({"delay": "2h"}))).await;
    let bad = match bytes {
        true => Some(source.enqueue(sms("bad", json!({"delay": "2h"}))).await),
        false => None,
    };
    let answer = source
        .request(
            json!({"op": "schedule_put", "name": "weekly", "cron": "0 0 9 * * MON",
                        "timezone": "UTC", "catch_up": "skip",
                        "job": {"kind": "message", "channel": "sms",
                                "payload": {"message": "weekly", "phone": "+15550100"}}}),
        )
        .await;
    assert_eq!(answer["ok"], true, "{answer}");

    // The hand edits, and the rows the daemon finds unreadable at its next
    // start, quarantined and kept as they are.
    let dir = source.stop().await;
    released(dir.path()).await;
    let mut edits = format!(
        "UPDATE jobs SET state = 'held', last_error = 'held: by hand' WHERE id = {held};
         UPDATE jobs SET channel = '../admin' WHERE id = {route};
         UPDATE jobs SET tags = '[ \"march\" ]' WHERE id = {scheduled};"
    );
    if let Some(bad) = bad {
        edits.push_str(&format!(
            "UPDATE jobs SET payload = CAST(X'FF7B22' AS TEXT) WHERE id = {bad};"
        ));
    }
    edit_db(&dir.path().join("queue.db"), &edits);
    let source = TestDaemon::start_in_with_clock(dir, &config, clock.clone()).await;
    source.wait_for_state(route, "failed").await;
    let mut jobs = vec![
        (sent, "sent"),
        (failed, "failed"),
        (scheduled, "scheduled"),
        (deferred, "scheduled"),
        (expired, "expired"),
        (waiting, "waiting"),
        (cancelled, "cancelled"),
        (held, "held"),
        (route, "failed"),
    ];
    if let Some(bad) = bad {
        let quarantined = source.wait_for_state(bad, "failed").await;
        assert!(
            quarantined["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not valid UTF-8")),
            "{quarantined}"
        );
        jobs.push((bad, "failed"));
    }
    (source, config, clock, jobs)
}

#[tokio::test]
async fn a_queue_in_every_state_round_trips_through_export_and_import() {
    let coax = CoaxStub::start().await;
    let (source, config, clock, jobs) = queue_in_every_state(&coax, true).await;
    let ids: Vec<i64> = jobs.iter().map(|(id, _)| *id).collect();
    let states = jobs.iter().map(|(_, state)| *state);
    let mut before = Vec::new();
    for (id, state) in ids.iter().zip(states) {
        let view = source.get(*id).await;
        assert_eq!(view["state"], state, "{view}");
        before.push(view);
    }
    assert_ne!(before[3]["due_at"], before[3]["scheduled_at"], "deferred");
    assert_eq!(before[0]["history"].as_array().map(Vec::len), Some(2));

    // Exported while the source daemon runs; imported into a new store.
    let first = export(source.dir.path()).await;
    assert!(!first.contains(TEST_KEY), "the export holds the API key");
    assert!(
        first.contains(r#""payload":{"text_hex":"ff7b22"}"#),
        "{first}"
    );
    let into = target(&config);
    let imported = run("import", into.path(), &first).await;
    assert!(imported.ok, "import failed: {}", imported.stderr);
    let highest = ids.iter().max().copied().unwrap_or_default();
    assert!(
        imported.stderr.contains("imported 10 jobs and 1 schedules"),
        "{}",
        imported.stderr
    );
    assert!(
        imported
            .stderr
            .contains(&format!("highest job id {highest}")),
        "{}",
        imported.stderr
    );

    let second = export(into.path()).await;
    assert_eq!(comparable(&second), comparable(&first));
    derived_tables_agree(&into.path().join("queue.db"), 1, 3);

    // The imported daemon shows the same jobs, and goes on above their ids.
    let imported = TestDaemon::start_in_with_clock(into, &config, clock).await;
    for (id, view) in ids.iter().zip(&before) {
        assert_eq!(&imported.get(*id).await, view, "job {id}");
    }
    let stats = imported.request(json!({"op": "stats"})).await;
    let counts = source.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"], counts["counts"], "{stats}");
    assert_eq!(stats["deferred"], 1, "{stats}");
    let listed = imported
        .request(json!({"op": "list", "tag": "march"}))
        .await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(2), "{listed}");
    let weekly = imported
        .request(json!({"op": "schedule_get", "name": "weekly"}))
        .await;
    assert_eq!(weekly["ok"], true, "{weekly}");
    let new = imported.enqueue(sms("new", json!({"delay": "1h"}))).await;
    assert!(new > highest, "new id {new} not above {highest}");
}

/// `coax-scheduler export | head -1` ends as Unix tools do once `head` has
/// gone: by SIGPIPE, without a panic or an error of its own.
#[tokio::test]
async fn export_ends_quietly_when_its_output_pipe_closes() {
    use std::os::unix::process::ExitStatusExt;
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    daemon.enqueue(sms("a", json!({"delay": "1h"}))).await;
    let config = daemon.dir.path().join("config.toml");
    let output = tokio::task::spawn_blocking(move || {
        // A pipe whose reader is gone before the export writes a byte.
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        Command::new(binary())
            .arg("export")
            .arg("--config")
            .arg(&config)
            .env_remove("COAX_API_KEY")
            .stdout(writer)
            .output()
            .expect("run the export")
    })
    .await
    .expect("export thread");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(13),
        "{:?} {stderr}",
        output.status
    );
}
