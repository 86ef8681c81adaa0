//! An outside attack on `export`, `import` and node names (issue 12): the
//! real binary fed crafted streams, interrupted, starved of disk, and run
//! on a host with an odd name. Each test named after a defect is ignored
//! until that defect is fixed; the others hold what the attack failed to
//! break ([`held`]).

use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{DaemonProcess, TestDaemon, binary, config_text};
use crate::helpers::{PATIENCE, edit_db, wait_until};
use coax_scheduler::time::{self, Millis};
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod held;

/// A job record as an export writes it: a customer SMS due at `at`.
fn job(id: i64, at: Millis) -> Value {
    json!({"type": "job", "id": id, "key": format!("k{id}"), "kind": "message",
           "channel": "sms", "enquiry_id": null, "state": "scheduled",
           "scheduled_at": at, "due_at": at, "expires_at": null, "timezone": null,
           "window": null, "after": null, "after_delay_ms": null, "after_ttl_ms": null,
           "attempts": 0, "created_at": at, "updated_at": at, "last_error": null,
           "result": null, "payload": r#"{"message":"hi","phone":"+15550100"}"#,
           "tags": [], "history": []})
}

/// `record` with the fields of `changes` replaced.
fn with(mut record: Value, changes: Value) -> Value {
    if let (Some(record), Value::Object(changes)) = (record.as_object_mut(), changes) {
        record.extend(changes);
    }
    record
}

/// A schedule record due at `next_at`, every day at 09:00 UTC.
fn schedule(name: &str, catch_up: &str, job: &str, next_at: Millis) -> Value {
    json!({"type": "schedule", "name": name, "cron": "0 0 9 * * *", "timezone": "UTC",
           "catch_up": catch_up, "job": job, "next_at": next_at, "revision": 1,
           "created_at": next_at, "updated_at": next_at})
}

/// A whole stream: header, `records` (jobs first), and the end line.
fn stream(records: &[Value]) -> String {
    let count = |kind: &str| records.iter().filter(|r| r["type"] == kind).count();
    let mut text = json!({"format": "coax-scheduler-export", "version": 1, "schema": 10,
                          "exported_at": "2026-11-30T00:00:00Z"})
    .to_string();
    for record in records {
        text.push('\n');
        text.push_str(&record.to_string());
    }
    let end = json!({"type": "end", "jobs": count("job"), "schedules": count("schedule")});
    text + "\n" + &end.to_string() + "\n"
}

/// A new dir holding `config` as config.toml, for a store to import into.
fn target(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.toml"), config).expect("write config");
    dir
}

/// `coax-scheduler ARGS --config dir/config.toml` with `stdin`, as an
/// operator runs it (without the API key in its environment).
async fn cli(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut command = Command::new(binary());
    command
        .args(args)
        .arg("--config")
        .arg(dir.join("config.toml"));
    run(command, stdin).await
}

async fn run(mut command: Command, stdin: &[u8]) -> Output {
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .env_remove("COAX_API_KEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the coax-scheduler binary");
        let mut input = child.stdin.take().expect("piped stdin");
        // A command that refuses early closes its stdin; that is its answer.
        let _ = input.write_all(&stdin);
        drop(input);
        child.wait_with_output().expect("wait for the binary")
    })
    .await
    .expect("binary thread")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Imports `records` into a new store with the test config; returns the
/// dir, the config and the import's output.
async fn import(coax: &CoaxStub, records: &[Value]) -> (tempfile::TempDir, String, Output) {
    let config = config_text(&coax.base_url(), "", "");
    let dir = target(&config);
    let output = cli(dir.path(), &["import"], stream(records).as_bytes()).await;
    (dir, config, output)
}

/// A schedule row the daemon cannot read (a `catch_up` it does not know),
/// due now, made the schedule task loop without waiting: about 800 WARN
/// lines a second, and a core kept busy, for as long as the daemon runs.
#[tokio::test]
#[ignore = "defect: an unreadable schedule row that is due spins the schedule task and floods the log"]
async fn unreadable_imported_schedule_floods_the_log() {
    let coax = CoaxStub::start().await;
    let now = time::now();
    let template =
        r#"{"kind":"message","channel":"sms","payload":{"message":"hi","phone":"+15550100"}}"#;
    let (dir, config, output) = import(
        &coax,
        &[
            // Due a little after start-up: its send marks time passing.
            job(1, now + 1_500),
            schedule("broken", "maybe", template, now),
        ],
    )
    .await;
    assert!(output.status.success(), "import: {}", stderr(&output));
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    wait_until("job 1 to be sent", PATIENCE, || async {
        let answer = daemon.request(json!({"op": "get", "id": 1})).await;
        (answer["job"]["state"] == "sent").then_some(())
    })
    .await;
    let warnings = daemon
        .logs()
        .matches("a schedule's row cannot be read")
        .count();
    assert!(
        warnings <= 10,
        "the unreadable schedule was reported {warnings} times in about 1.5 s"
    );
}

/// `import` into a store that holds jobs refuses, saying it wrote nothing;
/// but it migrated the store first, so a store of an older schema is left
/// at this build's, and the build that used it no longer opens it.
#[tokio::test]
#[ignore = "defect: a refused import has already migrated an older store to this build's schema"]
async fn refused_import_migrates_an_older_store() {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let daemon = TestDaemon::start_with(&config).await;
    daemon
        .enqueue(json!({"kind": "message", "channel": "sms", "delay": "1h",
                        "payload": {"message": "hi", "phone": "+15550100"}}))
        .await;
    let db = daemon.db.clone();
    let dir = daemon.stop().await;
    released(dir.path()).await;
    // What the previous release (schema 9) left.
    edit_db(
        &db,
        "ALTER TABLE attempts DROP COLUMN node; PRAGMA user_version = 9;",
    );

    let output = cli(
        dir.path(),
        &["import"],
        stream(&[job(5, time::now())]).as_bytes(),
    )
    .await;
    assert!(!output.status.success(), "import into a store with jobs");
    assert!(stderr(&output).contains("not empty"), "{}", stderr(&output));
    let conn = rusqlite::Connection::open(&db).expect("open the queue");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, 9, "the refused import migrated the store");
}

/// Waits until the daemon that ran in `dir` has let go of its lock.
async fn released(dir: &Path) {
    let lock = dir.join("queue.db.lock");
    wait_until(
        "the stopped daemon to let go of its store",
        PATIENCE,
        || {
            let lock = lock.clone();
            async move {
                let file = std::fs::File::open(&lock).ok()?;
                file.try_lock().ok()
            }
        },
    )
    .await;
}

/// A prune ends with `PRAGMA wal_checkpoint(TRUNCATE)` on the store
/// thread, alone; TRUNCATE waits (up to the 5 s busy timeout) for every
/// reader, and an export is one, holding its snapshot while its reader is
/// slow. Meanwhile no call is answered: stats, enqueues, claims all wait.
/// The bound asserted is half the busy timeout.
#[tokio::test]
#[ignore = "defect: a prune while an export holds its snapshot stalls every store call for the busy timeout"]
async fn prune_during_a_held_export_stalls_the_daemon() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    // Well over a pipe's 64 KiB, so that the export blocks mid-snapshot.
    let message = "x".repeat(1000);
    let jobs: Vec<Value> = (0..200)
        .map(|_| {
            json!({"kind": "message", "channel": "sms", "delay": "1h",
                        "payload": {"message": message, "phone": "+15550100"}})
        })
        .collect();
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");

    let mut export = Command::new(binary())
        .args(["export", "--config"])
        .arg(daemon.dir.path().join("config.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start export");
    let mut stdout = export.stdout.take().expect("piped stdout");
    // Its first bytes mean its snapshot is open; the rest is left unread.
    let mut first = [0u8; 1];
    let unread = tokio::task::spawn_blocking(move || {
        stdout
            .read_exact(&mut first)
            .expect("the export's first byte");
        stdout
    })
    .await
    .expect("reader thread");
    daemon.enqueue(crate::helpers::sms_job("after", "1h")).await;

    let socket = daemon.socket.clone();
    let prune = tokio::spawn(async move {
        crate::helpers::daemon::request_at(&socket, json!({"op": "prune", "older_than": "1s"}))
            .await
    });
    let mut slowest = Duration::ZERO;
    while !prune.is_finished() {
        let asked = Instant::now();
        let stats = daemon.request(json!({"op": "stats"})).await;
        assert_eq!(stats["ok"], true, "{stats}");
        slowest = slowest.max(asked.elapsed());
    }
    let pruned = prune.await.expect("prune task");
    assert_eq!(pruned["ok"], true, "{pruned}");
    let _ = export.kill();
    let _ = export.wait();
    drop(unread);
    assert!(
        slowest < Duration::from_millis(2_500),
        "stats took {slowest:?} while a prune waited for the export's snapshot"
    );
}

/// `import` reads each line whole before looking at it, so one line
/// without an end (a binary file, `/dev/zero`, a stream that is not an
/// export) grows the importer's memory until the kernel kills it: 400 MiB
/// of one line took 830 MiB. A line of an export is a job with its
/// history, a few MiB at most; 160 MiB here, against a 96 MiB bound.
#[tokio::test]
#[ignore = "defect: import holds a line of any length in memory"]
// The importer is reaped by `wait4`, which also reports its peak memory.
#[allow(clippy::zombie_processes)]
async fn import_holds_an_unbounded_line_in_memory() {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let dir = target(&config);
    let config_path = dir.path().join("config.toml");
    let (peak_kib, stderr) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(binary())
            .args(["import", "--config"])
            .arg(&config_path)
            .env_remove("COAX_API_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start import");
        let mut input = child.stdin.take().expect("piped stdin");
        let chunk = vec![b'a'; 1 << 20];
        let mut feed = || -> std::io::Result<()> {
            input.write_all(b"{\"format\":\"coax-scheduler-export\",\"version\":1}\n")?;
            for _ in 0..160 {
                input.write_all(&chunk)?;
            }
            Ok(())
        };
        // An importer that gives up early closes its stdin.
        let _ = feed();
        drop(input);
        let peak_kib = peak_rss_kib(child.id());
        let mut stderr = String::new();
        let _ = child
            .stderr
            .take()
            .expect("piped stderr")
            .read_to_string(&mut stderr);
        (peak_kib, stderr)
    })
    .await
    .expect("import thread");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert!(
        peak_kib < 96 * 1024,
        "the importer peaked at {} MiB for a 160 MiB line",
        peak_kib / 1024
    );
}

/// Reaps the child `pid` and returns its peak resident set, in KiB.
fn peak_rss_kib(pid: u32) -> i64 {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; the pointers are to locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid as libc::pid_t, "wait4 on the importer");
    usage.ru_maxrss
}

/// `get`, `cancel` and the other commands take ids from 1 up, but import
/// stores ids 0 and below as they come: such a job is sent, listed and
/// counted, yet nothing can cancel, reschedule or show it by its id.
#[tokio::test]
#[ignore = "defect: import accepts job ids below 1, which no command can address"]
async fn import_accepts_ids_no_command_can_address() {
    let coax = CoaxStub::start().await;
    let later = time::now() + 3_600_000;
    let (dir, config, output) = import(&coax, &[job(0, later), job(-5, later)]).await;
    if !output.status.success() {
        // Refused at the door: what the fix may do.
        assert!(stderr(&output).contains("line 2"), "{}", stderr(&output));
        return;
    }
    let daemon = TestDaemon::start_in(dir, &config).await;
    for id in [0, -5] {
        let answer = daemon.request(json!({"op": "cancel", "id": id})).await;
        assert_eq!(answer["ok"], true, "cancel of imported job {id}: {answer}");
    }
}

/// A stream with job id i64::MAX - 1 imports, and the importer says "new
/// jobs get ids above it"; one new job does, and then there is no id left
/// above, so SQLite picks each new id at random, below the imported ones:
/// ids no longer follow enqueue order (nor does `list` by id).
#[tokio::test]
#[ignore = "defect: import accepts the largest id, after which new jobs get random ids"]
async fn import_of_the_largest_id_makes_new_ids_random() {
    let coax = CoaxStub::start().await;
    let later = time::now() + 3_600_000;
    let (dir, config, output) = import(&coax, &[job(i64::MAX - 1, later)]).await;
    if !output.status.success() {
        assert!(stderr(&output).contains("line 2"), "{}", stderr(&output));
        return;
    }
    let daemon = TestDaemon::start_in(dir, &config).await;
    let first = daemon.enqueue(crate::helpers::sms_job("new-1", "1h")).await;
    let second = daemon.enqueue(crate::helpers::sms_job("new-2", "1h")).await;
    assert!(
        first < second,
        "new ids after an import of id {}: {first}, then {second}",
        i64::MAX - 1
    );
}

/// A waiting job is released only when the job it follows is sent; import
/// stores one that follows a job not in the stream (or itself), and the
/// daemon leaves it waiting for ever, without a word.
#[tokio::test]
#[ignore = "defect: import accepts a waiting job whose parent is missing, and it waits for ever"]
async fn import_accepts_a_waiting_job_that_can_never_be_released() {
    let coax = CoaxStub::start().await;
    let now = time::now();
    let (dir, config, output) = import(
        &coax,
        &[
            with(
                job(1, now),
                json!({"state": "waiting", "after": 999, "after_delay_ms": 0}),
            ),
            with(
                job(2, now),
                json!({"state": "waiting", "after": 2, "after_delay_ms": 0}),
            ),
        ],
    )
    .await;
    if !output.status.success() {
        assert!(stderr(&output).contains("line 2"), "{}", stderr(&output));
        return;
    }
    let daemon = TestDaemon::start_in(dir, &config).await;
    for id in [1, 2] {
        wait_until(
            &format!("orphaned job {id} to leave waiting"),
            Duration::from_secs(5),
            || async { (daemon.get(id).await["state"] != "waiting").then_some(()) },
        )
        .await;
    }
}

/// With `[node]` unset the node name is the host name, and a host name
/// that is no node name (a space, an accent) is refused by the config. The
/// daemon saying so is by design; but `export`, `import` and the client
/// commands refuse too, though none of them uses the node name.
#[tokio::test]
#[ignore = "defect: commands that use no node name refuse to run on a host whose name is not one"]
async fn commands_that_need_no_node_name_refuse_on_an_odd_host_name() {
    let coax = CoaxStub::start().await;
    let (dir, _config, output) = import(&coax, &[job(1, time::now() + 3_600_000)]).await;
    assert!(output.status.success(), "import: {}", stderr(&output));
    // A host name of its own, in a UTS namespace (root only).
    let odd_host = |args: &[&str]| {
        let mut command = Command::new("unshare");
        command
            .args(["-u", "sh", "-c"])
            .arg(r#"printf %s 'odd host' > /proc/sys/kernel/hostname && exec "$@""#)
            .arg("sh")
            .arg(binary())
            .args(args)
            .arg("--config")
            .arg(dir.path().join("config.toml"));
        command
    };
    let mut probe = Command::new("unshare");
    probe.args([
        "-u",
        "sh",
        "-c",
        "printf %s 'odd host' > /proc/sys/kernel/hostname",
    ]);
    let probe = run(probe, b"").await;
    if !probe.status.success() {
        eprintln!("skipped: cannot set a host name here: {}", stderr(&probe));
        return;
    }
    let export = run(odd_host(&["export"]), b"").await;
    assert!(export.status.success(), "export: {}", stderr(&export));
    let stats = run(odd_host(&["stats"]), b"").await;
    assert!(
        !stderr(&stats).contains("node.name"),
        "stats (no daemon runs): {}",
        stderr(&stats)
    );
}

/// A schedule row whose `next_at` is not an integer (1.5 here; text or
/// bytes do the same) is not set aside as other unreadable rows are: the
/// schedule task fails on it every second ("cannot create recurring sends
/// now"), so no other schedule fires, and `stats` and `schedule_list`
/// answer an internal error.
#[tokio::test]
#[ignore = "defect: one schedule with a non-integer next_at stops every schedule and fails stats"]
async fn schedule_with_a_non_integer_next_at_stops_every_schedule_and_stats() {
    let coax = CoaxStub::start().await;
    let now = time::now();
    let template =
        r#"{"kind":"message","channel":"sms","payload":{"message":"hi","phone":"+15550100"}}"#;
    let every_second = with(
        schedule("good", "skip", template, now + 1_000),
        json!({"cron": "* * * * * *"}),
    );
    let odd = with(
        schedule("odd", "skip", template, now),
        json!({"next_at": 1.5}),
    );
    let (dir, config, output) = import(&coax, &[every_second, odd]).await;
    assert!(output.status.success(), "import: {}", stderr(&output));
    let daemon = TestDaemon::start_in(dir, &config).await;
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "stats: {stats}");
    let listed = daemon.request(json!({"op": "schedule_list"})).await;
    assert_eq!(listed["ok"], true, "schedule_list: {listed}");
    wait_until(
        "the healthy schedule to create an occurrence",
        Duration::from_secs(5),
        || async {
            let answer = daemon
                .request(json!({"op": "list", "tag": "schedule:good"}))
                .await;
            let jobs = answer["jobs"].as_array().map_or(0, Vec::len);
            (jobs > 0).then_some(())
        },
    )
    .await;
}
