//! Moving a queue from SQLite to PostgreSQL with the real binary: export
//! from SQLite, import into PostgreSQL, export again, and the two streams
//! agree; and what import into PostgreSQL refuses, leaving nothing behind.

use crate::helpers::coax::CoaxStub;
use crate::helpers::command::Run;
use crate::helpers::postgres::{self, PgCluster, count};
use crate::transfer::comparable;
use coax_scheduler::store::postgres::transfer::DAEMON_LOCK;
use serde_json::Value;
use std::path::Path;

/// Runs `coax-scheduler <command> --config dir/config.toml` with `stdin`
/// and the test role's database password in the environment.
async fn run(command: &str, dir: &Path, stdin: &str) -> Run {
    let password = [("COAX_SCHEDULER_DB_PASSWORD", postgres::PASSWORD)];
    crate::helpers::command::run_with(command, dir, stdin, &password).await
}

/// A SQLite queue with a job in every state, as the SQLite round trip has
/// it but for the payload that is not UTF-8 (PostgreSQL's text cannot hold
/// it); its export, taken while its daemon runs.
async fn sqlite_export() -> String {
    let coax = CoaxStub::start().await;
    let (source, ..) = crate::transfer::queue_in_every_state(&coax, false).await;
    let exported = run("export", source.dir.path(), "").await;
    assert!(exported.ok, "export failed: {}", exported.stderr);
    exported.stdout
}

/// A dir whose config.toml points at `database` in `cluster`.
fn pg_target(cluster: &PgCluster, database: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = cluster.config_text("http://127.0.0.1:9", "").replace(
        &format!("/{}?", postgres::DATABASE),
        &format!("/{database}?"),
    );
    std::fs::write(dir.path().join("config.toml"), config).expect("write config");
    dir
}

#[tokio::test]
async fn postgres_sqlite_export_imports_into_postgres_and_exports_the_same() {
    let first = sqlite_export().await;
    let cluster = PgCluster::start().await;
    let into = pg_target(&cluster, postgres::DATABASE);

    let imported = run("import", into.path(), &first).await;
    assert!(imported.ok, "import failed: {}", imported.stderr);
    let retried = first
        .lines()
        .find(|l| l.contains(r#""key":"sent""#))
        .expect("the sent job");
    let retried: Value = serde_json::from_str(retried).expect("JSON");
    assert_eq!(
        retried["history"].as_array().map(Vec::len),
        Some(2),
        "{retried}"
    );
    assert!(
        first.contains(r#""tags_stored":"[ \"march\" ]""#),
        "{first}"
    );
    assert!(first.contains(r#""type":"schedule""#), "{first}");
    assert!(
        imported.stderr.contains("imported 9 jobs and 1 schedules"),
        "{}",
        imported.stderr
    );
    assert!(
        !imported.stderr.contains(postgres::PASSWORD),
        "{}",
        imported.stderr
    );

    let second = run("export", into.path(), "").await;
    assert!(second.ok, "export failed: {}", second.stderr);
    assert_eq!(comparable(&second.stdout), comparable(&first));

    // The derived tags, and new ids above the imported ones.
    let client = cluster.superuser(postgres::DATABASE).await;
    assert_eq!(count(&client, "SELECT count(*) FROM job_tags").await, 3);
    assert_eq!(
        count(&client, "SELECT count(*) FROM job_tags WHERE tag = 'march'").await,
        2
    );
    let highest = count(&client, "SELECT max(id) FROM jobs").await;
    let new: i64 = client
        .query_one(
            "INSERT INTO jobs (kind, channel, scheduled_at, state, created_at, updated_at, payload)
             VALUES ('message', 'sms', 1, 'scheduled', 1, 1, '{}') RETURNING id",
            &[],
        )
        .await
        .expect("a new job")
        .get(0);
    assert!(new > highest, "new id {new} not above {highest}");

    // A store that holds jobs is refused, and left as it was.
    let again = run("import", into.path(), &first).await;
    assert!(!again.ok);
    assert!(
        again.stderr.contains("not empty (10 jobs, 1 schedules)"),
        "{}",
        again.stderr
    );
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 10);
}

#[tokio::test]
async fn postgres_import_of_a_bad_stream_writes_nothing() {
    let cluster = PgCluster::start().await;
    let into = pg_target(&cluster, postgres::DATABASE);
    let header = r#"{"format":"coax-scheduler-export","version":1,"schema":10,"exported_at":"2026-03-02T12:00:00.000Z"}"#;
    let job = |id: i64, payload: &str| {
        format!(
            r#"{{"type":"job","id":{id},"key":null,"kind":"message","channel":"sms","enquiry_id":null,"state":"scheduled","scheduled_at":1,"due_at":1,"expires_at":null,"timezone":null,"window":null,"after":null,"after_delay_ms":null,"after_ttl_ms":null,"attempts":0,"created_at":1,"updated_at":1,"last_error":null,"result":null,"payload":{payload},"tags":["t"],"history":[]}}"#
        )
    };
    let good = job(5, r#""{\"a\":1}""#);
    let end = r#"{"type":"end","jobs":2,"schedules":0}"#;
    let client = cluster.superuser(postgres::DATABASE).await;

    // Cut short: no end line.
    let truncated = format!("{header}\n{good}\n{}\n", job(6, r#""{}""#));
    let run1 = run("import", into.path(), &truncated).await;
    assert!(!run1.ok);
    assert!(run1.stderr.contains("cut short"), "{}", run1.stderr);
    assert!(
        run1.stderr.contains("nothing was imported"),
        "{}",
        run1.stderr
    );
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 0);
    assert_eq!(count(&client, "SELECT count(*) FROM job_tags").await, 0);

    // A payload that is not UTF-8 text: PostgreSQL cannot keep it.
    let raw = format!(
        "{header}\n{good}\n{}\n{end}\n",
        job(6, r#"{"text_hex":"ff7b22"}"#)
    );
    let run2 = run("import", into.path(), &raw).await;
    assert!(!run2.ok);
    assert!(run2.stderr.contains("line 3"), "{}", run2.stderr);
    assert!(
        run2.stderr.contains("payload holds text that is not UTF-8"),
        "{}",
        run2.stderr
    );
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 0);

    // A time as text, as a hand edit may leave it in SQLite.
    let text_time = format!(
        "{header}\n{good}\n{}\n{end}\n",
        job(6, r#""{}""#).replace(r#""scheduled_at":1"#, r#""scheduled_at":"soon""#)
    );
    let run3 = run("import", into.path(), &text_time).await;
    assert!(!run3.ok);
    assert!(
        run3.stderr
            .contains("scheduled_at holds \"soon\", not an integer"),
        "{}",
        run3.stderr
    );
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 0);

    // The same id twice.
    let twice = format!("{header}\n{good}\n{good}\n{end}\n");
    let run4 = run("import", into.path(), &twice).await;
    assert!(!run4.ok);
    assert!(run4.stderr.contains("job id 5"), "{}", run4.stderr);
    assert!(run4.stderr.contains("appears twice"), "{}", run4.stderr);
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 0);

    // Past the rows sent to the server together: a fault on the last of
    // 600 jobs is named by its line, and the 599 before it are not kept.
    let many: Vec<String> = (1..=600).map(|id| job(id, r#""{}""#)).collect();
    let mut last = many.clone();
    last[599] = job(1, r#""{}""#);
    let long = format!(
        "{header}\n{}\n{{\"type\":\"end\",\"jobs\":600,\"schedules\":0}}\n",
        last.join("\n")
    );
    let run5 = run("import", into.path(), &long).await;
    assert!(!run5.ok);
    assert!(
        run5.stderr.contains("line 601: job id 1"),
        "{}",
        run5.stderr
    );
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 0);
    assert_eq!(count(&client, "SELECT count(*) FROM job_tags").await, 0);

    // And the whole stream goes in.
    let whole = format!("{header}\n{good}\n{}\n{end}\n", job(9, r#""{}""#));
    let run6 = run("import", into.path(), &whole).await;
    assert!(run6.ok, "{}", run6.stderr);
    assert!(run6.stderr.contains("highest job id 9"), "{}", run6.stderr);
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 2);
}

#[tokio::test]
async fn postgres_import_refuses_a_store_a_daemon_has_open() {
    let cluster = PgCluster::start().await;
    let into = pg_target(&cluster, postgres::DATABASE);
    let stream = concat!(
        r#"{"format":"coax-scheduler-export","version":1,"schema":10,"exported_at":"2026-03-02T12:00:00.000Z"}"#,
        "\n",
        r#"{"type":"end","jobs":0,"schedules":0}"#,
        "\n"
    );
    // An empty import creates the schema.
    let first = run("import", into.path(), stream).await;
    assert!(first.ok, "{}", first.stderr);

    // A daemon holds the lock, shared, while it runs.
    let daemon = cluster.superuser(postgres::DATABASE).await;
    daemon
        .execute("SELECT pg_advisory_lock_shared($1)", &[&DAEMON_LOCK])
        .await
        .expect("lock");
    let refused = run("import", into.path(), stream).await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("is in use by a daemon"),
        "{}",
        refused.stderr
    );
    daemon
        .execute("SELECT pg_advisory_unlock_shared($1)", &[&DAEMON_LOCK])
        .await
        .expect("unlock");

    // A node whose heartbeat is younger than the lease.
    daemon
        .batch_execute(
            "INSERT INTO nodes (name, started_at, last_heartbeat, in_flight)
             VALUES ('web-1', 0, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 0)",
        )
        .await
        .expect("a node");
    let refused = run("import", into.path(), stream).await;
    assert!(!refused.ok);
    assert!(refused.stderr.contains("node web-1"), "{}", refused.stderr);
    // One long gone does not count.
    daemon
        .batch_execute("UPDATE nodes SET last_heartbeat = 0")
        .await
        .expect("an old heartbeat");
    let again = run("import", into.path(), stream).await;
    assert!(again.ok, "{}", again.stderr);

    // Export from a database without a queue says so.
    cluster.sql("CREATE DATABASE empty OWNER coax").await;
    let empty = pg_target(&cluster, "empty");
    let export = run("export", empty.path(), "").await;
    assert!(!export.ok);
    assert!(export.stderr.contains("no queue"), "{}", export.stderr);
}

#[tokio::test]
async fn postgres_export_is_one_snapshot_while_others_write() {
    use coax_scheduler::store::postgres::transfer::PgSnapshot;
    let cluster = PgCluster::start().await;
    let into = pg_target(&cluster, postgres::DATABASE);
    let header = r#"{"format":"coax-scheduler-export","version":1,"schema":10,"exported_at":"2026-03-02T12:00:00.000Z"}"#;
    let imported = run(
        "import",
        into.path(),
        &format!("{header}\n{{\"type\":\"end\",\"jobs\":0,\"schedules\":0}}\n"),
    )
    .await;
    assert!(imported.ok, "{}", imported.stderr);
    let client = cluster.superuser(postgres::DATABASE).await;
    let insert =
        "INSERT INTO jobs (kind, channel, scheduled_at, state, created_at, updated_at, payload)
                  VALUES ('message', 'sms', 1, 'scheduled', 1, 1, '{}')";
    client.batch_execute(insert).await.expect("a job");

    // The snapshot is taken when the export opens; a job written after
    // that, before a line is written, is not in it.
    let config = cluster.load("");
    let (opened, written) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let (opened_tx, opened_rx) = opened;
    let (written_tx, written_rx) = written;
    let export = std::thread::spawn(move || {
        let mut snapshot = PgSnapshot::open(&config).expect("a snapshot");
        opened_tx.send(()).expect("opened");
        written_rx.recv().expect("written");
        let mut out = Vec::new();
        let end =
            coax_scheduler::transfer::export_from(&mut snapshot, &mut out, 0).expect("export");
        (end, String::from_utf8(out).expect("UTF-8"))
    });
    tokio::task::spawn_blocking(move || opened_rx.recv())
        .await
        .expect("thread")
        .expect("opened");
    client.batch_execute(insert).await.expect("a second job");
    written_tx.send(()).expect("go on");
    let (end, text) = tokio::task::spawn_blocking(move || export.join())
        .await
        .expect("thread")
        .expect("export thread");
    assert_eq!(end.jobs, 1, "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 2);
}
