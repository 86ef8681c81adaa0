//! A storage outage is logged once: one ERROR line when storage starts
//! failing, however many jobs are in flight and requests fail, and one INFO
//! line with the count of failed calls when a write succeeds again.
//!
//! Counting log lines needs a global log subscriber, which would also catch
//! every other test's lines; so the scenario runs in a child process (this
//! test binary again, running only the ignored `outage_scenario`).

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{TEST_KEY, config_text, request_at};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::config::Config;
use coax_scheduler::daemon::Daemon;
use coax_scheduler::store::{Store, StoreError};
use serde_json::{Value, json};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

const CHILD: &str = "COAX_TEST_OUTAGE_CHILD";
const IN_FLIGHT: usize = 4;
const FAILED_ENQUEUES: usize = 3;

#[test]
fn a_storage_outage_logs_one_error_line_and_one_recovery_line_with_the_count() {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "outage::outage_scenario",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the scenario");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the scenario failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 passed"),
        "the scenario did not run:\n{text}"
    );
}

/// Log lines, kept for the scenario to read back.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        std::io::stdout().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
    fn matching(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

async fn set_room(store: &Store, room: Option<i64>) {
    store
        .call(move |c| {
            let err = |e: rusqlite::Error| StoreError::Sqlite {
                during: "a test's pragma",
                detail: e.to_string(),
            };
            let pages: i64 = c
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(err)?;
            let max = room.map_or(1_000_000_000, |room| pages + room);
            c.query_row(&format!("PRAGMA max_page_count = {max}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(err)
        })
        .await
        .expect("set max_page_count");
}

fn job(key: &str, message: &str, delay: &str) -> Value {
    json!({
        "kind": "message", "channel": "sms", "key": key, "delay": delay,
        "payload": {"message": message, "phone": "+15550100"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_storage_outage_logs_one_error_line_and_one_recovery_line_with_the_count"]
async fn outage_scenario() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let lines = Lines::default();
    let writer = lines.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .init();

    // Coax answers slowly, with a body large enough that recording it
    // needs new pages in the database.
    let coax = CoaxStub::start().await;
    let blob = "b".repeat(40_000);
    coax.set_default(
        Reply::json(
            200,
            json!({"success": true, "message": "Message sent successfully", "body": {"blob": blob}}),
        )
        .with_delay(Duration::from_millis(500)),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text(&coax.base_url(), "", "")).expect("write config");
    let config = Config::load_with_env(&path, &|n| (n == "COAX_API_KEY").then(|| TEST_KEY.into()))
        .expect("test config");
    let socket = config.socket.path.clone();
    let daemon = Daemon::open(config.clone()).await.expect("daemon opens");
    let store = daemon.store();
    let listener = coax_scheduler::socket::bind(&socket, config.socket.mode).expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(listener, async move {
        let _ = stopped.await;
    }));

    let batch: Vec<Value> = (0..IN_FLIGHT)
        .map(|i| job(&format!("due-{i}"), "hi", "0s"))
        .collect();
    let answer = request_at(&socket, json!({"op": "enqueue", "jobs": batch})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    coax.wait_for_requests(IN_FLIGHT, PATIENCE).await;

    // The disk fills while every job is in flight.
    set_room(&store, Some(0)).await;
    for i in 0..FAILED_ENQUEUES {
        let big = job(&format!("big-{i}"), &"y".repeat(30_000), "1h");
        let answer = request_at(&socket, json!({"op": "enqueue", "job": big})).await;
        assert_eq!(answer["error"]["code"], "internal", "{answer}");
    }
    wait_until("every job in flight to fail to record", PATIENCE, || {
        let failing = lines.matching("cannot record an attempt's outcome").len();
        async move { (failing >= IN_FLIGHT).then_some(()) }
    })
    .await;

    set_room(&store, None).await;
    // The outage ends once writes have gone on succeeding for a while, so
    // each look writes too.
    let nudges = std::sync::atomic::AtomicUsize::new(0);
    let recovered = wait_until("the recovery line", PATIENCE, || {
        let found = lines.matching(": storage recovered").pop();
        let n = nudges.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = socket.clone();
        async move {
            if found.is_none() {
                let nudge = job(&format!("nudge-{n}"), "hi", "1h");
                request_at(&socket, json!({"op": "enqueue", "job": nudge})).await;
            }
            found
        }
    })
    .await;
    for i in 0..IN_FLIGHT {
        wait_until(&format!("due-{i} to be sent"), PATIENCE, || {
            let socket = socket.clone();
            async move {
                let got =
                    request_at(&socket, json!({"op": "get", "key": format!("due-{i}")})).await;
                (got["job"]["state"] == "sent").then_some(())
            }
        })
        .await;
    }
    let _ = stop.send(());
    task.await
        .expect("daemon task")
        .expect("daemon ran cleanly");

    let errors = lines.matching(" ERROR ");
    assert_eq!(errors.len(), 1, "ERROR lines:\n{}", errors.join("\n"));
    assert!(errors[0].contains("storage is failing"), "{}", errors[0]);
    assert!(recovered.contains(" INFO "), "{recovered}");
    let count: u64 = recovered
        .split("failed_calls=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {recovered}"));
    assert!(
        count >= (IN_FLIGHT + FAILED_ENQUEUES) as u64,
        "failed_calls={count}: {recovered}"
    );
}
