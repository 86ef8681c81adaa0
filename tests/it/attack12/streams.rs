//! Crafted streams that import takes though it should not (ids no command
//! can address or that leave no room, a waiting job that can never be
//! released, a line of any length), and a refusal that has already
//! migrated the store it refused.

use super::{cli, import, job, released, stderr, stream, target, with};
use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{TestDaemon, binary, config_text};
use crate::helpers::{edit_db, wait_until};
use coax_scheduler::time;
use serde_json::json;
use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `import` into a store that holds jobs refuses, saying it wrote nothing;
/// but it migrated the store first, so a store of an older schema is left
/// at this build's, and the build that used it no longer opens it.
#[tokio::test]
async fn refused_import_migrates_an_older_store() {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let daemon = TestDaemon::start_with(&config).await;
    daemon
        .enqueue(json!({"kind": "message", "channel": "sms", "delay": "1h",
                        "payload": {"message": "hi", "phone": "+15550100"}}))
        .await;
    let db = daemon.db().to_owned();
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

/// `import` reads each line whole before looking at it, so one line
/// without an end (a binary file, `/dev/zero`, a stream that is not an
/// export) grows the importer's memory until the kernel kills it: 400 MiB
/// of one line took 830 MiB. A line of an export is a job with its
/// history, a few MiB at most; 160 MiB here, against a 96 MiB bound.
#[tokio::test]
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
/// stores one that follows a job not in the stream, itself, or a job
/// already sent, and the daemon leaves it waiting for ever, without a word.
#[tokio::test]
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
            with(job(3, now), json!({"state": "sent", "attempts": 1})),
            with(
                job(4, now),
                json!({"state": "waiting", "after": 3, "after_delay_ms": 0}),
            ),
        ],
    )
    .await;
    if !output.status.success() {
        assert!(stderr(&output).contains("line 2"), "{}", stderr(&output));
        return;
    }
    let daemon = TestDaemon::start_in(dir, &config).await;
    for id in [1, 2, 4] {
        wait_until(
            &format!("orphaned job {id} to leave waiting"),
            Duration::from_secs(5),
            || async { (daemon.get(id).await["state"] != "waiting").then_some(()) },
        )
        .await;
    }
}

/// A newer build adds a column as one more field of the same version-1
/// stream (as `node` was added); this build refuses such a stream with
/// "unknown field `…`", never saying that a newer build wrote it (its
/// header says schema 11) nor to import with that build.
#[tokio::test]
async fn a_stream_from_a_newer_build_is_refused_without_saying_so() {
    let config = config_text("http://127.0.0.1:9", "", "");
    let dir = target(&config);
    let newer = stream(&[with(job(1, time::now()), json!({"priority": 5}))]).replacen(
        "\"schema\":10",
        "\"schema\":11",
        1,
    );
    assert!(newer.contains("\"schema\":11"), "{newer}");
    let output = cli(dir.path(), &["import"], newer.as_bytes()).await;
    assert!(!output.status.success(), "import of an unknown field");
    let text = stderr(&output);
    assert!(text.contains("newer"), "{text}");
}
