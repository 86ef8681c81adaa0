//! Running under systemd, with the real binary: the `sd_notify` messages
//! (READY=1 with a STATUS= line once the socket answers, STATUS= summaries,
//! WATCHDOG=1 pings when asked for, STOPPING=1 on SIGTERM) sent to a
//! datagram socket standing in for `NOTIFY_SOCKET`; socket activation through
//! `systemd-socket-activate` (a client queued in the backlog before the
//! daemon exists is answered, the socket is left to its owner at exit, a
//! passed socket of the wrong kind is refused); the periodic "queue
//! summary" log line in text and JSON; and text lines without their own
//! timestamp when `JOURNAL_STREAM` says journald is stamping them.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{DaemonProcess, TEST_KEY, binary, config_text, request_at};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::client::Client;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// The variables through which systemd talks to a service; cleared for every
/// daemon here so the tests behave the same when `cargo test` itself runs
/// under systemd.
const SYSTEMD_VARS: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JOURNAL_STREAM",
    "RUST_LOG",
];

const ACTIVATOR: &str = "/usr/bin/systemd-socket-activate";

/// Like `DaemonProcess::spawn`, with extra environment variables.
fn spawn_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> DaemonProcess {
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut command = Command::new(binary());
    command.args(["run", "--config"]).arg(&config_path);
    launch(dir, command, env)
}

/// Starts `command` with the test key, the systemd variables cleared except
/// `env`, and stdout + stderr appended to a log file in `dir`.
/// An env value replaced by "device:inode" of the daemon's stdout.
const STDOUT_STREAM: &str = "<stdout>";

fn launch(dir: &Path, mut command: Command, env: &[(&str, &str)]) -> DaemonProcess {
    let log = dir.join("daemon.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("log file");
    command.env("COAX_API_KEY", TEST_KEY);
    for name in SYSTEMD_VARS {
        command.env_remove(name);
    }
    for (name, value) in env {
        if *value == STDOUT_STREAM {
            // What systemd sets: the device and inode of stdout.
            use std::os::unix::fs::MetadataExt as _;
            let meta = out.metadata().expect("log file metadata");
            command.env(name, format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            command.env(name, value);
        }
    }
    let child = command
        .stdout(Stdio::from(out.try_clone().expect("log file")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start the daemon");
    DaemonProcess {
        child,
        socket: dir.join("coax.sock"),
        log,
    }
}

/// One ping on a fresh connection; `true` if it was answered `ok`.
async fn ping_once(socket: &Path) -> bool {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        Client::connect(&socket)
            .and_then(|mut c| c.send_line(r#"{"op":"ping"}"#))
            .is_ok_and(|line| line.contains(r#""ok":true"#))
    })
    .await
    .unwrap_or(false)
}

/// Like `DaemonProcess::start`, with extra environment variables.
async fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> DaemonProcess {
    let daemon = spawn_with_env(dir, config, env);
    let socket = daemon.socket.clone();
    wait_until("the daemon to answer on its socket", PATIENCE, || {
        let socket = socket.clone();
        async move { ping_once(&socket).await.then_some(()) }
    })
    .await;
    daemon
}

async fn enqueue(socket: &Path, job: Value) -> i64 {
    let answer = request_at(socket, json!({"op": "enqueue", "job": job})).await;
    assert_eq!(answer["ok"], true, "enqueue failed: {answer}");
    answer["id"].as_i64().expect("id")
}

async fn wait_for_state(socket: &Path, id: i64, state: &str) -> Value {
    wait_until(&format!("job {id} to be {state}"), PATIENCE, || async {
        let answer = request_at(socket, json!({"op": "get", "id": id})).await;
        (answer["job"]["state"] == state).then(|| answer["job"].clone())
    })
    .await
}

/// A message job; `delay` as the protocol takes it (`None`: due now).
fn sms(key: &str, delay: Option<&str>) -> Value {
    let mut job = json!({
        "kind": "message", "channel": "sms", "key": key,
        "payload": {"message": "Hello", "phone": "+15550100", "business_location_id": 3}
    });
    if let Some(delay) = delay {
        job["delay"] = json!(delay);
    }
    job
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

/// `YYYY-MM-DDT` at the start of the line.
fn starts_with_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() >= 11
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && b[10] == b'T'
}

/// The value of `name=` in a text log line (`None` if absent), without the
/// quotes the text format puts around strings.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(prefix.as_str()))
        .map(|value| value.trim_matches('"'))
}

fn number(line: &str, name: &str) -> u64 {
    field(line, name)
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{name}= is not a number in {line:?}: {e}"))
}

/// A stand-in for systemd's notification socket: a datagram socket at a
/// path, recording every message it receives in order.
struct Notifications {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).expect("bind the notify socket");
        Notifications {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    fn env_value(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temp path")
    }

    /// Receives one message if one arrives before `deadline`.
    async fn receive_until(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut buf = vec![0u8; 8192];
        match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                true
            }
            Ok(Err(e)) => panic!("reading the notify socket: {e}"),
            Err(_) => false,
        }
    }

    /// The first message (already received or arriving within PATIENCE)
    /// that satisfies `pred`.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_count(what, 1, 0, &pred).await;
        self.seen.iter().find(|m| pred(m)).cloned().expect("found")
    }

    /// Waits until `n` messages from the `from`th received on satisfy `pred`.
    async fn wait_for_count(
        &mut self,
        what: &str,
        n: usize,
        from: usize,
        pred: impl Fn(&str) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.seen[from..].iter().filter(|m| pred(m)).count() < n {
            if !self.receive_until(deadline).await {
                panic!(
                    "timed out after {PATIENCE:?} waiting for {n} notification(s) {what}; got {:?}",
                    self.seen
                );
            }
        }
    }

    /// Records whatever arrives during `window` (to show something does not).
    async fn collect_for(&mut self, window: Duration) {
        let deadline = tokio::time::Instant::now() + window;
        while self.receive_until(deadline).await {}
    }

    fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.seen.iter().filter(|m| pred(m)).count()
    }
}

/// The assignments in one notification, one per line.
fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

fn status_of(message: &str) -> Option<&str> {
    message.lines().find_map(|l| l.strip_prefix("STATUS="))
}

// ---------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ready_watchdog_status_and_stopping_reach_the_notify_socket() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut notify = Notifications::bind(dir.path());
    let env = [
        ("NOTIFY_SOCKET", notify.env_value().to_owned()),
        ("WATCHDOG_USEC", "200000".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = spawn_with_env(dir.path(), &config_text(&coax.base_url(), "", ""), &env);

    // READY=1 comes with a status line, once the socket already answers: a
    // single attempt right after it must succeed.
    let ready = notify
        .wait_for("with READY=1", |m| has_line(m, "READY=1"))
        .await;
    assert!(
        ping_once(&daemon.socket).await,
        "the socket did not answer right after READY=1; logs:\n{}",
        daemon.logs()
    );
    let status = status_of(&ready).unwrap_or_else(|| panic!("READY=1 without STATUS=: {ready:?}"));
    assert!(
        status.contains("0 scheduled"),
        "the READY status line: {status:?}"
    );

    // The watchdog is pinged every WATCHDOG_USEC / 2 while the daemon runs.
    let after_ready = notify.seen.len();
    notify
        .wait_for_count("with WATCHDOG=1 after READY=1", 3, after_ready, |m| {
            has_line(m, "WATCHDOG=1")
        })
        .await;

    // The summary's status line (sent at start and every few seconds).
    let summary = notify
        .wait_for("with a summary STATUS=", |m| {
            !has_line(m, "READY=1") && status_of(m).is_some_and(|s| s.contains("scheduled ("))
        })
        .await;
    let summary = status_of(&summary).unwrap();
    assert!(
        summary.contains("0 scheduled (0 due, 0 deferred)")
            && summary.contains("dispatcher running"),
        "the summary status line: {summary:?}"
    );

    daemon.signal("TERM");
    let stopping = notify
        .wait_for("with STOPPING=1", |m| has_line(m, "STOPPING=1"))
        .await;
    assert_eq!(status_of(&stopping), Some("stopping"));
    let code = daemon.wait_exit(PATIENCE).await;
    assert_eq!(
        code,
        Some(0),
        "exit after SIGTERM; logs:\n{}",
        daemon.logs()
    );
    assert_eq!(
        notify.count(|m| has_line(m, "READY=1")),
        1,
        "READY=1 is sent once: {:?}",
        notify.seen
    );
    let stop_at = notify
        .seen
        .iter()
        .position(|m| has_line(m, "STOPPING=1"))
        .unwrap();
    let ready_at = notify
        .seen
        .iter()
        .position(|m| has_line(m, "READY=1"))
        .unwrap();
    assert!(ready_at < stop_at, "order: {:?}", notify.seen);
}

#[tokio::test]
async fn no_watchdog_pings_when_watchdog_pid_names_another_process() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut notify = Notifications::bind(dir.path());
    let path = notify.env_value().to_owned();
    // pid 1 is never the daemon.
    let env = [
        ("NOTIFY_SOCKET", path.as_str()),
        ("WATCHDOG_USEC", "200000"),
        ("WATCHDOG_PID", "1"),
    ];
    let mut daemon = spawn_with_env(dir.path(), &config_text(&coax.base_url(), "", ""), &env);
    notify
        .wait_for("with READY=1", |m| has_line(m, "READY=1"))
        .await;
    // Ten ping intervals' worth of silence.
    notify.collect_for(Duration::from_secs(1)).await;
    daemon.signal("TERM");
    notify
        .wait_for("with STOPPING=1", |m| has_line(m, "STOPPING=1"))
        .await;
    assert_eq!(daemon.wait_exit(PATIENCE).await, Some(0));
    assert_eq!(
        notify.count(|m| has_line(m, "WATCHDOG=1")),
        0,
        "watchdog pings for another pid: {:?}",
        notify.seen
    );
}

#[tokio::test]
async fn an_unreachable_notify_socket_does_not_stop_delivery() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody-listens.sock");
    let env = [
        ("NOTIFY_SOCKET", missing.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ];
    let mut daemon = start_with_env(dir.path(), &config_text(&coax.base_url(), "", ""), &env).await;
    let id = enqueue(&daemon.socket, sms("unreachable-notify", None)).await;
    wait_for_state(&daemon.socket, id, "sent").await;
    daemon.terminate().await;
}

// ---------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------

/// `systemd-socket-activate -l SOCKET [extra] coax-scheduler run --config CFG`,
/// or `None` (with a note) where the tool is missing.
fn activate(dir: &Path, config: &str, extra: &[&str]) -> Option<DaemonProcess> {
    if !Path::new(ACTIVATOR).exists() {
        eprintln!("note: {ACTIVATOR} is missing; socket activation is not tested");
        return None;
    }
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut command = Command::new(ACTIVATOR);
    command
        .arg("-l")
        .arg(dir.join("coax.sock"))
        .args(extra)
        // The activator passes the child only the variables it is told to.
        .arg(format!("--setenv=COAX_API_KEY={TEST_KEY}"))
        .arg(binary())
        .args(["run", "--config"])
        .arg(&config_path);
    Some(launch(dir, command, &[]))
}

#[tokio::test]
async fn under_socket_activation_a_queued_client_is_answered_and_the_socket_is_left_in_place() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(mut daemon) = activate(dir.path(), &config_text(&coax.base_url(), "", ""), &[]) else {
        return;
    };
    let socket = daemon.socket.clone();
    wait_until("the activator to listen", PATIENCE, || async {
        is_socket(&socket).then_some(())
    })
    .await;
    assert!(
        !daemon.logs().contains("coax-scheduler"),
        "the daemon started before any client came; logs:\n{}",
        daemon.logs()
    );

    // The activator starts the daemon on this first connection; the ping
    // waits in the listening socket's backlog until the daemon accepts it.
    let answer = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + PATIENCE;
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                // Bound but not yet listening: a short window at start.
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("connect: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot connect to the activated socket: {e}"),
            }
        };
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        (&stream).write_all(b"{\"op\":\"ping\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .expect("an answer to the queued ping");
        line
    })
    .await
    .unwrap();
    let answer: Value = serde_json::from_str(answer.trim())
        .unwrap_or_else(|e| panic!("{answer:?} is not JSON: {e}; logs:\n{}", daemon.logs()));
    assert_eq!(answer["ok"], true, "{answer}");

    daemon
        .wait_for_log_line("the passed socket", |l| {
            l.contains("using the socket passed by systemd")
        })
        .await;
    let id = enqueue(&daemon.socket, sms("activated-1", None)).await;
    wait_for_state(&daemon.socket, id, "sent").await;
    assert_eq!(coax.requests().len(), 1);

    // The activator exec'd the daemon in its own process: the pid is the daemon's.
    daemon.terminate().await;
    assert!(
        is_socket(&daemon.socket),
        "the activator's socket was removed at exit"
    );
    assert!(
        !daemon.logs().contains("Address already in use"),
        "logs:\n{}",
        daemon.logs()
    );
}

#[tokio::test]
async fn a_passed_socket_that_is_not_a_unix_stream_listener_is_refused() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A datagram socket: the daemon cannot serve clients on it.
    let Some(mut daemon) = activate(
        dir.path(),
        &config_text(&coax.base_url(), "", ""),
        &["--datagram"],
    ) else {
        return;
    };
    let socket = daemon.socket.clone();
    wait_until("the activator to listen", PATIENCE, || async {
        is_socket(&socket).then_some(())
    })
    .await;
    // Any datagram wakes the activator, which then starts the daemon.
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    wait_until("the activator to take a datagram", PATIENCE, || async {
        sender.send_to(b"wake", &socket).is_ok().then_some(())
    })
    .await;
    let code = daemon.wait_exit(PATIENCE).await;
    let logs = daemon.logs();
    assert_ne!(code, Some(0), "started on a datagram socket; logs:\n{logs}");
    assert!(
        logs.contains("cannot use the socket passed by systemd"),
        "logs:\n{logs}"
    );
}

// ---------------------------------------------------------------------------
// The queue summary log line
// ---------------------------------------------------------------------------

/// The default test config at `level`, with the summary every 300 ms and
/// `log_extra` lines in `[log]` (the last section).
fn summary_config(coax_url: &str, level: &str, log_extra: &str) -> String {
    let config = config_text(coax_url, "", "")
        .replace("level = \"debug\"", &format!("level = \"{level}\""))
        // One slot, so a slow send keeps a due job waiting.
        .replace("concurrency = 4", "concurrency = 1")
        .replace("request_timeout = \"2s\"", "request_timeout = \"10s\"");
    format!("{config}summary_interval = \"300ms\"\n{log_extra}\n")
}

fn summary_lines(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains("queue summary"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_queue_summary_line_counts_the_queue_and_what_was_sent_in_each_interval() {
    let coax = CoaxStub::start().await;
    // The first send takes a while, so the next due job waits for the slot.
    coax.push(Reply::sent().with_delay(Duration::from_secs(2)));
    let dir = tempfile::tempdir().unwrap();
    let mut daemon =
        DaemonProcess::start(dir.path(), &summary_config(&coax.base_url(), "info", "")).await;
    for n in 0..3 {
        enqueue(&daemon.socket, sms(&format!("later-{n}"), Some("1h"))).await;
    }
    let slow = enqueue(&daemon.socket, sms("slow", None)).await;
    coax.wait_for_requests(1, PATIENCE).await;
    let waiting = enqueue(&daemon.socket, sms("waiting", None)).await;

    let line = daemon
        .wait_for_log_line("a summary with a due job", |l| {
            l.contains("queue summary") && field(l, "due_now") == Some("1")
        })
        .await;
    assert_eq!(number(&line, "scheduled"), 4, "{line}");
    assert_eq!(number(&line, "sending"), 1, "{line}");
    assert_eq!(number(&line, "sent_total"), 0, "{line}");
    assert_eq!(field(&line, "dispatch"), Some("running"), "{line}");
    let overdue = number(&line, "oldest_overdue_ms");
    assert!(overdue < 60_000, "oldest_overdue_ms={overdue} in {line}");

    wait_for_state(&daemon.socket, slow, "sent").await;
    wait_for_state(&daemon.socket, waiting, "sent").await;
    let line = daemon
        .wait_for_log_line("a summary after both sends", |l| {
            l.contains("queue summary") && field(l, "sent_total") == Some("2")
        })
        .await;
    assert_eq!(number(&line, "scheduled"), 3, "{line}");
    assert_eq!(number(&line, "due_now"), 0, "{line}");
    assert_eq!(number(&line, "oldest_overdue_ms"), 0, "{line}");
    assert_eq!(number(&line, "sending"), 0, "{line}");

    // Each send is counted in exactly one interval.
    let sum = |name: &str| -> u64 {
        summary_lines(&daemon.logs())
            .iter()
            .map(|l| number(l, name))
            .sum()
    };
    wait_until("the summaries to count both sends", PATIENCE, || async {
        (sum("sent_in_interval") >= 2).then_some(())
    })
    .await;
    assert_eq!(sum("sent_in_interval"), 2, "logs:\n{}", daemon.logs());
    assert_eq!(sum("failed_in_interval"), 0, "logs:\n{}", daemon.logs());
    daemon.terminate().await;
}

#[tokio::test]
async fn the_queue_summary_is_one_flat_json_object_in_json_format() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = summary_config(&coax.base_url(), "info", "format = \"json\"");
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    for n in 0..2 {
        enqueue(&daemon.socket, sms(&format!("later-{n}"), Some("1h"))).await;
    }
    let now = enqueue(&daemon.socket, sms("now", None)).await;
    wait_for_state(&daemon.socket, now, "sent").await;

    let parse = |l: &str| serde_json::from_str::<Value>(l).ok();
    let line = daemon
        .wait_for_log_line("a JSON summary after the send", |l| {
            parse(l).is_some_and(|v| v["message"] == "queue summary" && v["sent_total"] == 1)
        })
        .await;
    let summary = parse(&line).unwrap();
    assert_eq!(summary["level"], "INFO", "{summary}");
    assert_eq!(summary["scheduled"], 2, "{summary}");
    assert_eq!(summary["due_now"], 0, "{summary}");
    assert!(summary["due_now"].is_u64(), "{summary}");
    assert!(summary["oldest_overdue_ms"].is_u64(), "{summary}");
    assert!(summary["sent_in_interval"].is_u64(), "{summary}");
    assert_eq!(summary["dispatch"], "running", "{summary}");
    assert!(summary.get("fields").is_none(), "not flattened: {summary}");

    daemon.terminate().await;
    let logs = daemon.logs();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            parse(line).is_some_and(|v| v.is_object()),
            "a log line that is not a JSON object: {line:?}"
        );
    }
    let sent: u64 = logs
        .lines()
        .filter_map(parse)
        .filter(|v| v["message"] == "queue summary")
        .map(|v| v["sent_in_interval"].as_u64().expect("a number"))
        .sum();
    assert!(sent <= 1, "the one send was counted {sent} times");
}

// ---------------------------------------------------------------------------
// JOURNAL_STREAM
// ---------------------------------------------------------------------------

/// Starts a daemon with `env`, waits for its start-up line, stops it, and
/// returns its log lines.
async fn text_log_lines(env: &[(&str, &str)]) -> Vec<String> {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_with_env(dir.path(), &config_text(&coax.base_url(), "", ""), env).await;
    daemon
        .wait_for_log_line("the start-up line", |l| {
            l.contains("coax-scheduler started")
        })
        .await;
    daemon.terminate().await;
    let lines: Vec<String> = daemon.logs().lines().map(str::to_owned).collect();
    assert!(
        lines.iter().any(|l| l.contains("coax-scheduler stopped")),
        "{lines:#?}"
    );
    lines
}

#[tokio::test]
async fn under_journald_text_lines_carry_no_timestamp_of_their_own() {
    let lines = text_log_lines(&[("JOURNAL_STREAM", STDOUT_STREAM)]).await;
    for line in &lines {
        assert!(
            !starts_with_timestamp(line),
            "a timestamp under journald: {line:?}"
        );
        assert!(!line.contains('\u{1b}'), "colour under journald: {line:?}");
    }
    let started = lines
        .iter()
        .find(|l| l.contains("coax-scheduler started"))
        .unwrap();
    assert!(
        started.trim_start().starts_with("INFO"),
        "the level leads the line: {started:?}"
    );
}

/// Regression: an inherited JOURNAL_STREAM that names some other stream
/// (the daemon's output was redirected to a file) dropped the timestamps.
#[tokio::test]
async fn an_inherited_journal_stream_that_is_not_stdout_keeps_timestamps() {
    let lines = text_log_lines(&[("JOURNAL_STREAM", "8:1234")]).await;
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        assert!(starts_with_timestamp(line), "no timestamp: {line:?}");
    }
}

#[tokio::test]
async fn outside_journald_text_lines_start_with_a_timestamp() {
    let lines = text_log_lines(&[]).await;
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        assert!(starts_with_timestamp(line), "no timestamp: {line:?}");
    }
}

// ---------------------------------------------------------------------------
// housekeeping on its schedule
// ---------------------------------------------------------------------------

/// The prune runs on `store.prune_schedule` by itself (here every second,
/// with a one-second retention), removes finished jobs only, and says so.
#[tokio::test]
async fn the_scheduled_prune_removes_finished_jobs_and_logs_it() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(&coax.base_url(), "", "").replace(
        "path = \"queue.db\"",
        "path = \"queue.db\"\nprune_schedule = \"* * * * * *\"\nretention = \"1s\"",
    );
    let mut daemon = start_with_env(dir.path(), &config, &[]).await;
    let sent = enqueue(&daemon.socket, sms("goes-now", None)).await;
    wait_for_state(&daemon.socket, sent, "sent").await;
    let waiting = enqueue(&daemon.socket, sms("waits", Some("1h"))).await;

    wait_until("the sent job to be pruned", PATIENCE, || async {
        let answer = request_at(&daemon.socket, json!({"op": "get", "id": sent})).await;
        (answer["error"]["code"] == "not_found").then_some(())
    })
    .await;
    let answer = request_at(&daemon.socket, json!({"op": "get", "id": waiting})).await;
    assert_eq!(answer["job"]["state"], "scheduled", "{answer}");
    let line = daemon
        .wait_for_log_line("the prune line", |l| {
            l.contains("pruned finished jobs") && l.contains("jobs=1")
        })
        .await;
    assert!(line.contains("attempts=1"), "{line}");
    daemon.terminate().await;
}
