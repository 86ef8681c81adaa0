//! Beside a running daemon and on its host: a prune while an export holds
//! its snapshot stalls the daemon, and a host name that is no node name
//! stops commands that never use one.

use super::{import, job, run, stderr};
use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{TestDaemon, binary};
use coax_scheduler::time;
use serde_json::{Value, json};
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A prune ends with `PRAGMA wal_checkpoint(TRUNCATE)` on the store
/// thread, alone; TRUNCATE waits (up to the 5 s busy timeout) for every
/// reader, and an export is one, holding its snapshot while its reader is
/// slow. Meanwhile no call is answered: stats, enqueues, claims all wait.
/// The bound asserted is half the busy timeout.
#[tokio::test]
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

/// With `[node]` unset the node name is the host name, and a host name
/// that is no node name (a space, an accent) is refused by the config. The
/// daemon saying so is by design; but `export`, `import` and the client
/// commands refuse too, though none of them uses the node name.
#[tokio::test]
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
