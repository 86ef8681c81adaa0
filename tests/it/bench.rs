//! `coax-scheduler bench --scale small` as the real binary runs it: it must
//! finish, exit 0, print the machine and a table row for every figure, and
//! write its picture.
//! Speeds are not checked; at this size they mean little.

use serde_json::Value;
use std::time::Duration;
use tokio::process::Command;

/// Every figure the benchmark reports, by its JSON id.
const FIGURES: &[&str] = &[
    "limit_sqlite_commits",
    "limit_sqlite_batched_rows",
    "limit_http_puts",
    "enqueue_1_connection",
    "enqueue_16_connections",
    "enqueue_batches",
    "dispatch_0ms",
    "dispatch_20ms",
    "lateness_p50",
    "lateness_p99",
    "lateness_max",
    "lateness_early",
    "burst_last_sent",
    "metrics_off_enqueue",
    "metrics_on_enqueue",
    "metrics_off_dispatch",
    "metrics_on_dispatch",
    "metrics_calls_enqueue",
    "metrics_calls_dispatch",
    "scale_fill",
    "scale_settle",
    "scale_startup",
    "scale_idle_rss",
    "scale_idle_cpu",
    "scale_stats",
    "scale_cancel_tag",
    "scale_enqueue",
];

#[tokio::test]
async fn the_small_benchmark_prints_every_figure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let svg = dir.path().join("bench.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_coax-scheduler"))
        .args(["bench", "--scale", "small", "--json", "--svg"])
        .arg(&svg)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), output)
        .await
        .expect("the small benchmark finishes within 3 minutes")
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Machine: "), "{stdout}");
    let picture = std::fs::read_to_string(&svg).expect("the picture is written");
    assert!(picture.starts_with("<svg"), "{picture}");
    for caption in ["Lateness at the simulator", "Sends per second"] {
        assert!(picture.contains(caption), "no {caption:?} in the picture");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("| Figure") && l.contains("Measured")),
        "no table header:\n{stdout}"
    );

    let json: Value = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line:\n{stdout}"));
    assert!(json["machine"]["cpus"].as_u64().unwrap_or(0) >= 1, "{json}");
    let figures = json["figures"].as_array().expect("a figures array");
    let ids: Vec<&str> = figures.iter().filter_map(|f| f["id"].as_str()).collect();
    assert_eq!(ids, FIGURES, "the figures changed");
    for figure in figures {
        let name = figure["name"].as_str().expect("a name");
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("| {name} "))),
            "no table row for {name:?}:\n{stdout}"
        );
        assert!(
            figure["value"].is_number(),
            "{name:?} has no measured value: {figure}"
        );
    }
}

#[tokio::test]
async fn a_postgres_url_needs_the_postgres_backend() {
    let output = Command::new(env!("CARGO_BIN_EXE_coax-scheduler"))
        .args(["bench", "--scale", "small", "--postgres-url"])
        .arg("postgres://coax@127.0.0.1:9/coax")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("--postgres-url needs --backend postgres"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing is measured");
}

#[tokio::test]
async fn a_postgres_url_the_daemon_would_refuse_is_refused_before_measuring() {
    // A password in the URL: the daemon refuses it, and so does the bench,
    // at once rather than after SQLite's phases.
    let output = Command::new(env!("CARGO_BIN_EXE_coax-scheduler"))
        .args(["bench", "--scale", "small", "--backend", "postgres"])
        .args(["--postgres-url", "postgres://coax:hunter2@127.0.0.1:9/coax"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("refused at once")
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--postgres-url will not do"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the password is not repeated: {stderr}"
    );
    assert!(
        !stderr.contains("measuring"),
        "nothing is measured: {stderr}"
    );
}
