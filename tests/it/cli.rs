//! The command line as a user runs it: the real `coax-scheduler` binary,
//! spawned as a client against an in-process daemon. Covers `check-config`
//! (valid, unknown key, missing file, `$COAX_SCHEDULER_CONFIG`, the API key
//! never printed), `enqueue` from a file or stdin in its three input forms,
//! `get`, `list`, `cancel`, `reschedule`, `requeue`, `stats` and `ping` in
//! human and `--json` form, finding the socket through `--config`, and the
//! exit statuses: 0 on `ok:true`, 1 on `ok:false`, 2 when the daemon cannot be
//! reached or the command line is wrong.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{TestDaemon, binary, config_text};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::time;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncWriteExt as _;

/// A distinctive API key for the `check-config` runs; it must never be printed.
const CLI_KEY: &str = "ck_cli_LEAKCHECK_93b1e0";

/// What one run of the binary produced.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with the whole output unless the exit status is `code`.
    fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit status {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The single stdout line of a `--json` run, parsed.
    fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one raw answer line: {:?}",
            self.stdout
        );
        serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {:?}", lines[0]))
    }
}

/// One invocation of the binary, with a clean environment for the variables
/// it reads (so the caller's shell cannot change the outcome).
struct Cli {
    cmd: tokio::process::Command,
    stdin: Option<String>,
}

fn cli() -> Cli {
    let mut cmd = tokio::process::Command::new(binary());
    cmd.env_remove("COAX_API_KEY")
        .env_remove("COAX_SCHEDULER_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true);
    Cli { cmd, stdin: None }
}

/// A client invocation talking to `daemon` through `--socket`.
fn client(daemon: &TestDaemon) -> Cli {
    let mut c = cli();
    c.cmd.arg("--socket").arg(&daemon.socket);
    c
}

impl Cli {
    fn args<I, S>(mut self, args: I) -> Cli
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Cli {
        self.cmd.arg(arg);
        self
    }

    fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Cli {
        self.cmd.env(name, value);
        self
    }

    fn current_dir(mut self, dir: &Path) -> Cli {
        self.cmd.current_dir(dir);
        self
    }

    fn stdin(mut self, text: &str) -> Cli {
        self.stdin = Some(text.to_owned());
        self
    }

    async fn run(mut self) -> Run {
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("start the coax-scheduler binary");
        if let Some(text) = self.stdin.take() {
            let mut input = child.stdin.take().expect("piped stdin");
            input.write_all(text.as_bytes()).await.expect("write stdin");
            drop(input);
        }
        let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("the binary finished in time")
            .expect("wait for the binary");
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A daemon with a Coax stand-in that accepts everything. The jobs these
/// tests enqueue are due in an hour, so nothing is sent unless a test asks.
async fn daemon() -> (CoaxStub, TestDaemon) {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    let daemon = TestDaemon::start(&coax.base_url()).await;
    (coax, daemon)
}

/// A valid job due in an hour, with a marker in its message.
fn job(marker: &str) -> Value {
    job_in("1h", marker)
}

fn job_in(delay: &str, marker: &str) -> Value {
    json!({
        "kind": "message", "channel": "sms", "delay": delay,
        "payload": {"message": format!("Hello {marker}"), "phone": "+15550100", "business_location_id": 3}
    })
}

/// A job the daemon must refuse: its channel tries to escape the route.
fn bad_job() -> Value {
    json!({
        "kind": "message", "channel": "../admin", "delay": "1h",
        "payload": {"message": "Hello", "phone": "+15550100"}
    })
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

/// The `counts` of the daemon's stats, asked over the socket directly.
async fn counts(daemon: &TestDaemon) -> Value {
    let answer = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(answer["ok"], true, "stats failed: {answer}");
    answer["counts"].clone()
}

async fn total_jobs(daemon: &TestDaemon) -> u64 {
    let counts = counts(daemon).await;
    counts
        .as_object()
        .expect("counts object")
        .values()
        .map(|n| n.as_u64().expect("count"))
        .sum()
}

/// Every id (`N`) that appears as `job N` or in `ids N, M` in human output.
fn numbers_in(text: &str) -> Vec<i64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------

#[tokio::test]
async fn check_config_accepts_a_valid_file_and_says_ok() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(
        dir.path(),
        "config.toml",
        &config_text("http://127.0.0.1:9", "", ""),
    );

    let run = cli()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .env("COAX_API_KEY", CLI_KEY)
        .run()
        .await;

    run.expect_code(0);
    assert!(run.stdout.contains("OK"), "no OK in {:?}", run.stdout);
    assert!(
        run.stdout.contains(&path.display().to_string()),
        "the file checked is not named: {:?}",
        run.stdout
    );
    assert!(!run.all().contains(CLI_KEY), "the API key was printed");
}

#[tokio::test]
async fn check_config_rejects_an_unknown_key_and_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text("http://127.0.0.1:9", "concurrenc = 3", "");
    let path = write(dir.path(), "config.toml", &text);

    let run = cli()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("COAX_API_KEY", CLI_KEY)
        .run()
        .await;

    assert_ne!(run.code, Some(0), "an unknown key was accepted");
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("concurrenc"),
        "the unknown key is not named: {:?}",
        run.stderr
    );
    assert!(!run.stdout.contains("OK"), "said OK: {:?}", run.stdout);
    assert!(!run.all().contains(CLI_KEY), "the API key was printed");
}

#[tokio::test]
async fn check_config_on_a_missing_file_says_it_cannot_read_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nowhere.toml");

    let run = cli()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("COAX_API_KEY", CLI_KEY)
        .run()
        .await;

    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("cannot read config file"),
        "unclear message: {:?}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&path.display().to_string()),
        "the missing path is not named: {:?}",
        run.stderr
    );
    assert!(!run.all().contains(CLI_KEY), "the API key was printed");
}

#[tokio::test]
async fn check_config_reads_the_file_named_by_coax_scheduler_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = write(
        dir.path(),
        "good.toml",
        &config_text("http://127.0.0.1:9", "", ""),
    );
    let bad = write(
        dir.path(),
        "bad.toml",
        &config_text("http://127.0.0.1:9", "concurrenc = 3", ""),
    );

    let run = cli()
        .arg("check-config")
        .env("COAX_SCHEDULER_CONFIG", &good)
        .env("COAX_API_KEY", CLI_KEY)
        .run()
        .await;
    run.expect_code(0);
    assert!(
        run.stdout.contains(&good.display().to_string()) && run.stdout.contains("OK"),
        "did not check {}: {:?}",
        good.display(),
        run.stdout
    );

    // The same variable pointing at a bad file fails on that file's key.
    let run = cli()
        .arg("check-config")
        .env("COAX_SCHEDULER_CONFIG", &bad)
        .env("COAX_API_KEY", CLI_KEY)
        .run()
        .await;
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("concurrenc"), "{:?}", run.stderr);

    // --config wins over the variable.
    let run = cli()
        .args(["check-config", "--config"])
        .arg(&good)
        .env("COAX_SCHEDULER_CONFIG", &bad)
        .env("COAX_API_KEY", CLI_KEY)
        .run()
        .await;
    run.expect_code(0);
    assert!(!run.all().contains(CLI_KEY), "the API key was printed");
}

#[tokio::test]
async fn check_config_never_prints_the_api_key_even_when_rejecting_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(
        dir.path(),
        "config.toml",
        &config_text("http://127.0.0.1:9", "", ""),
    );
    // A key with a line break in it is refused; the refusal must not quote it.
    let broken = format!("{CLI_KEY}\nsecond-line");

    let run = cli()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("COAX_API_KEY", &broken)
        .run()
        .await;

    assert_eq!(run.code, Some(1), "a two-line key was accepted");
    assert!(
        run.stderr.contains("COAX_API_KEY") || run.stderr.contains("API key"),
        "the message does not say the key is the problem: {:?}",
        run.stderr
    );
    assert!(!run.all().contains(CLI_KEY), "the API key was printed");
    assert!(
        !run.all().contains("second-line"),
        "the API key was printed"
    );

    // No key at all is also a clear error, not a crash.
    let run = cli()
        .args(["check-config", "--config"])
        .arg(&path)
        .run()
        .await;
    assert_eq!(run.code, Some(1), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("COAX_API_KEY"), "{:?}", run.stderr);
}

// ---------------------------------------------------------------------------
// enqueue
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_reads_one_object_from_a_file_and_names_the_new_id() {
    let (_coax, daemon) = daemon().await;
    let file = write(daemon.dir.path(), "job.json", &job("one").to_string());

    let run = client(&daemon).arg("enqueue").arg(&file).run().await;

    run.expect_code(0);
    assert!(run.stdout.contains("scheduled at"), "{:?}", run.stdout);
    let ids = numbers_in(run.stdout.split("scheduled").next().unwrap_or(""));
    assert_eq!(
        ids.len(),
        1,
        "expected `job N scheduled at …`: {:?}",
        run.stdout
    );
    let stored = daemon.get(ids[0]).await;
    assert_eq!(stored["state"], "scheduled");
    assert_eq!(stored["payload"]["message"], "Hello one");
    assert_eq!(total_jobs(&daemon).await, 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_reads_an_array_as_one_batch() {
    let (_coax, daemon) = daemon().await;
    let text = serde_json::to_string_pretty(&json!([job("a"), job("b")])).expect("json");
    let file = write(daemon.dir.path(), "jobs.json", &text);

    let run = client(&daemon).arg("enqueue").arg(&file).run().await;

    run.expect_code(0);
    assert!(run.stdout.contains("enqueued 2 jobs"), "{:?}", run.stdout);
    let ids = numbers_in(run.stdout.split("ids").nth(1).unwrap_or(""));
    assert_eq!(ids.len(), 2, "expected two ids: {:?}", run.stdout);
    assert_eq!(daemon.get(ids[0]).await["payload"]["message"], "Hello a");
    assert_eq!(daemon.get(ids[1]).await["payload"]["message"], "Hello b");
    assert_eq!(counts(&daemon).await["scheduled"], 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_reads_ndjson_one_job_per_line() {
    let (_coax, daemon) = daemon().await;
    let text = format!("{}\n\n{}\n{}\n", job("x"), job("y"), job("z"));
    let file = write(daemon.dir.path(), "jobs.ndjson", &text);

    let run = client(&daemon).arg("enqueue").arg(&file).run().await;

    run.expect_code(0);
    assert!(run.stdout.contains("enqueued 3 jobs"), "{:?}", run.stdout);
    let ids = numbers_in(run.stdout.split("ids").nth(1).unwrap_or(""));
    assert_eq!(ids.len(), 3, "{:?}", run.stdout);
    for (id, marker) in ids.iter().zip(["x", "y", "z"]) {
        assert_eq!(
            daemon.get(*id).await["payload"]["message"],
            format!("Hello {marker}")
        );
    }
    assert_eq!(total_jobs(&daemon).await, 3);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_reads_stdin_given_a_dash_or_no_file() {
    let (_coax, daemon) = daemon().await;

    let run = client(&daemon)
        .args(["enqueue", "-"])
        .stdin(&job("piped").to_string())
        .run()
        .await;
    run.expect_code(0);
    assert!(run.stdout.contains("scheduled at"), "{:?}", run.stdout);

    // NDJSON through the pipe, with no FILE argument at all.
    let run = client(&daemon)
        .arg("enqueue")
        .stdin(&format!("{}\n{}\n", job("p1"), job("p2")))
        .run()
        .await;
    run.expect_code(0);
    assert!(run.stdout.contains("enqueued 2 jobs"), "{:?}", run.stdout);

    let list = daemon.request(json!({"op": "list"})).await;
    let mut messages: Vec<String> = list["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["payload"]["message"].as_str().unwrap_or("").to_owned())
        .collect();
    messages.sort();
    assert_eq!(messages, ["Hello p1", "Hello p2", "Hello piped"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_with_json_prints_the_raw_answer_line() {
    let (_coax, daemon) = daemon().await;

    let run = client(&daemon)
        .args(["--json", "enqueue", "-"])
        .stdin(&job("raw").to_string())
        .run()
        .await;

    run.expect_code(0);
    let answer = run.json();
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["duplicate"], false, "{answer}");
    assert_eq!(answer["state"], "scheduled", "{answer}");
    let id = answer["id"].as_i64().expect("numeric id");
    let stored = daemon.get(id).await;
    assert_eq!(stored["payload"]["message"], "Hello raw");
    assert_eq!(answer["scheduled_at"], stored["scheduled_at"]);
    assert!(run.stderr.is_empty(), "stderr: {:?}", run.stderr);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueueing_an_existing_key_says_so_and_creates_nothing() {
    let (_coax, daemon) = daemon().await;
    let mut keyed = job("keyed");
    keyed["key"] = json!("welcome-7");
    let id = daemon.enqueue(keyed.clone()).await;

    let run = client(&daemon)
        .args(["enqueue", "-"])
        .stdin(&keyed.to_string())
        .run()
        .await;

    run.expect_code(0);
    assert!(run.stdout.contains("already exists"), "{:?}", run.stdout);
    assert!(
        run.stdout.contains(&format!("job {id} ")),
        "the existing id {id} is not named: {:?}",
        run.stdout
    );
    assert_eq!(total_jobs(&daemon).await, 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_job_exits_1_naming_the_code_and_field_and_enqueues_nothing() {
    let (_coax, daemon) = daemon().await;

    let run = client(&daemon)
        .args(["enqueue", "-"])
        .stdin(&bad_job().to_string())
        .run()
        .await;

    run.expect_code(1);
    assert!(run.stderr.contains("invalid_job"), "{:?}", run.stderr);
    assert!(
        run.stderr.contains("[field channel]"),
        "the field is not named: {:?}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "stdout: {:?}", run.stdout);
    assert_eq!(total_jobs(&daemon).await, 0);

    // With --json the raw failure line goes to stdout, still exiting 1.
    let run = client(&daemon)
        .args(["--json", "enqueue", "-"])
        .stdin(&bad_job().to_string())
        .run()
        .await;
    run.expect_code(1);
    let answer = run.json();
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["error"]["code"], "invalid_job");
    assert_eq!(answer["error"]["field"], "channel");
    assert_eq!(total_jobs(&daemon).await, 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_job_names_its_index_and_enqueues_nothing() {
    let (_coax, daemon) = daemon().await;
    let text = json!([job("good-0"), job("good-1"), bad_job(), job("good-3")]).to_string();
    let file = write(daemon.dir.path(), "batch.json", &text);

    let run = client(&daemon).arg("enqueue").arg(&file).run().await;

    run.expect_code(1);
    assert!(run.stderr.contains("invalid_job"), "{:?}", run.stderr);
    assert!(run.stderr.contains("[field channel]"), "{:?}", run.stderr);
    assert!(
        run.stderr.contains("[job #2 of the batch]"),
        "the index is not shown: {:?}",
        run.stderr
    );
    assert_eq!(total_jobs(&daemon).await, 0, "a partial batch was enqueued");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_input_that_cannot_be_read_is_refused_before_sending() {
    let (_coax, daemon) = daemon().await;

    // A line that is not JSON: the CLI says which, and sends nothing.
    let run = client(&daemon)
        .args(["enqueue", "-"])
        .stdin(&format!("{}\nnot json at all\n", job("ok")))
        .run()
        .await;
    assert_eq!(run.code, Some(2), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("line 2"), "{:?}", run.stderr);

    // Empty input.
    let run = client(&daemon)
        .args(["enqueue", "-"])
        .stdin("\n  \n")
        .run()
        .await;
    assert_eq!(run.code, Some(2), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("no jobs"), "{:?}", run.stderr);

    // A file that does not exist.
    let missing = daemon.dir.path().join("missing.json");
    let run = client(&daemon).arg("enqueue").arg(&missing).run().await;
    assert_eq!(run.code, Some(2), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("cannot read") && run.stderr.contains("missing.json"),
        "{:?}",
        run.stderr
    );

    assert_eq!(total_jobs(&daemon).await, 0);
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// get
// ---------------------------------------------------------------------------

/// The value printed after `name` in `get`'s `name  value` rows.
fn field<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        rest.starts_with(' ').then(|| rest.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_the_state_and_the_attempt_history() {
    let (coax, daemon) = daemon().await;
    let id = daemon.enqueue(job_in("0s", "now")).await;
    daemon.wait_for_state(id, "sent").await;
    coax.wait_for_requests(1, PATIENCE).await;

    let run = client(&daemon).arg("get").arg(id.to_string()).run().await;

    run.expect_code(0);
    assert_eq!(field(&run.stdout, "id"), Some(id.to_string().as_str()));
    assert_eq!(field(&run.stdout, "state"), Some("sent"), "{}", run.stdout);
    assert_eq!(field(&run.stdout, "attempts"), Some("1"), "{}", run.stdout);
    assert_eq!(field(&run.stdout, "channel"), Some("sms"), "{}", run.stdout);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let history = lines
        .iter()
        .position(|l| l.trim_end() == "history")
        .unwrap_or_else(|| panic!("no history section:\n{}", run.stdout));
    let header = lines.get(history + 1).expect("history header");
    for column in ["#", "STARTED", "STATUS", "NODE", "DECISION"] {
        assert!(header.contains(column), "history header {header:?}");
    }
    let attempt = lines.get(history + 2).expect("one attempt row");
    let cells: Vec<&str> = attempt.split_whitespace().collect();
    assert_eq!(cells.first(), Some(&"1"), "attempt row {attempt:?}");
    assert!(cells.contains(&"200"), "no HTTP status in {attempt:?}");
    assert!(cells.contains(&"sent"), "no decision in {attempt:?}");
    let host = coax_scheduler::config::host_name().expect("host name");
    assert!(cells.contains(&host.as_str()), "no node in {attempt:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_of_a_job_never_tried_says_its_history_is_empty() {
    let (_coax, daemon) = daemon().await;
    let id = daemon.enqueue(job("later")).await;

    let run = client(&daemon).arg("get").arg(id.to_string()).run().await;

    run.expect_code(0);
    assert_eq!(field(&run.stdout, "state"), Some("scheduled"));
    assert_eq!(
        field(&run.stdout, "history"),
        Some("none"),
        "{}",
        run.stdout
    );
    let scheduled = field(&run.stdout, "scheduled_at").expect("scheduled_at row");
    assert!(
        scheduled.contains("(in "),
        "no relative time: {scheduled:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_by_key_finds_the_job() {
    let (_coax, daemon) = daemon().await;
    let mut keyed = job("keyed");
    keyed["key"] = json!("order-31-reminder");
    let id = daemon.enqueue(keyed).await;
    daemon.enqueue(job("other")).await;

    let run = client(&daemon)
        .args(["get", "--key", "order-31-reminder"])
        .run()
        .await;
    run.expect_code(0);
    assert_eq!(field(&run.stdout, "id"), Some(id.to_string().as_str()));
    assert_eq!(field(&run.stdout, "key"), Some("order-31-reminder"));

    let run = client(&daemon)
        .args(["--json", "get", "--key", "order-31-reminder"])
        .run()
        .await;
    run.expect_code(0);
    assert_eq!(run.json()["job"]["id"], id);

    let run = client(&daemon)
        .args(["get", "--key", "no-such-key"])
        .run()
        .await;
    run.expect_code(1);
    assert!(run.stderr.contains("not_found"), "{:?}", run.stderr);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_of_an_unknown_id_exits_1_with_not_found() {
    let (_coax, daemon) = daemon().await;

    let run = client(&daemon).args(["get", "999"]).run().await;
    run.expect_code(1);
    assert!(run.stderr.contains("error (not_found)"), "{:?}", run.stderr);
    assert!(run.stdout.is_empty(), "stdout: {:?}", run.stdout);

    let run = client(&daemon).args(["--json", "get", "999"]).run().await;
    run.expect_code(1);
    let answer = run.json();
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["error"]["code"], "not_found");

    // Neither an id nor a key is a usage error.
    let run = client(&daemon).arg("get").run().await;
    run.expect_code(2);
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// list
// ---------------------------------------------------------------------------

/// Splits `list` output into the header and data rows, asserting that every
/// row has each cell starting at its header's column.
fn table(stdout: &str) -> (String, Vec<String>) {
    let mut lines = stdout.lines().map(str::to_owned);
    let header = lines.next().expect("a header row");
    let rows: Vec<String> = lines.collect();
    for column in [
        "ID",
        "STATE",
        "KIND",
        "CHANNEL",
        "SCHEDULED",
        "TRIES",
        "KEY",
    ] {
        assert!(header.contains(column), "header {header:?} lacks {column}");
    }
    assert!(header.starts_with("ID "), "header {header:?}");
    (header, rows)
}

/// The cell of `row` under the column headed `column`.
fn cell<'a>(header: &str, row: &'a str, column: &str) -> &'a str {
    let start = header
        .find(&format!(" {column} "))
        .map(|i| i + 1)
        .or_else(|| header.starts_with(column).then_some(0))
        .unwrap_or_else(|| panic!("no column {column} in {header:?}"));
    assert!(
        start == 0 || row.as_bytes().get(start - 1) == Some(&b' '),
        "row {row:?} is not aligned under {column} in {header:?}"
    );
    let rest = row.get(start..).unwrap_or("");
    rest.split("  ").next().unwrap_or("").trim()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_prints_an_aligned_table_oldest_first() {
    let (_coax, daemon) = daemon().await;
    let late = daemon.enqueue(job_in("3h", "late")).await;
    let mut early = job_in("1h", "early");
    early["key"] = json!("early-key");
    let early = daemon.enqueue(early).await;
    let mut mid = job_in("2h", "mid");
    mid["channel"] = json!("whatsapp");
    let mid = daemon.enqueue(mid).await;

    let run = client(&daemon).arg("list").run().await;

    run.expect_code(0);
    let (header, rows) = table(&run.stdout);
    assert_eq!(rows.len(), 3, "{}", run.stdout);
    let ids: Vec<String> = rows.iter().map(|r| cell(&header, r, "ID").into()).collect();
    assert_eq!(
        ids,
        [early.to_string(), mid.to_string(), late.to_string()],
        "not oldest scheduled_at first:\n{}",
        run.stdout
    );
    for row in &rows {
        assert_eq!(cell(&header, row, "STATE"), "scheduled", "{row:?}");
        assert_eq!(cell(&header, row, "KIND"), "message", "{row:?}");
        assert_eq!(cell(&header, row, "TRIES"), "0", "{row:?}");
        assert!(cell(&header, row, "SCHEDULED").contains("(in "), "{row:?}");
    }
    assert_eq!(cell(&header, &rows[0], "KEY"), "early-key");
    assert_eq!(cell(&header, &rows[1], "KEY"), "-");
    assert_eq!(cell(&header, &rows[1], "CHANNEL"), "whatsapp");
    assert_eq!(cell(&header, &rows[2], "CHANNEL"), "sms");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_state() {
    let (_coax, daemon) = daemon().await;
    let kept = daemon.enqueue(job_in("1h", "kept")).await;
    let dropped = daemon.enqueue(job_in("2h", "dropped")).await;
    let answer = daemon.request(json!({"op": "cancel", "id": dropped})).await;
    assert_eq!(answer["ok"], true, "{answer}");

    let run = client(&daemon)
        .args(["list", "--state", "scheduled"])
        .run()
        .await;
    run.expect_code(0);
    let (header, rows) = table(&run.stdout);
    assert_eq!(rows.len(), 1, "{}", run.stdout);
    assert_eq!(cell(&header, &rows[0], "ID"), kept.to_string());

    let run = client(&daemon)
        .args(["list", "--state", "cancelled"])
        .run()
        .await;
    run.expect_code(0);
    let (header, rows) = table(&run.stdout);
    assert_eq!(rows.len(), 1, "{}", run.stdout);
    assert_eq!(cell(&header, &rows[0], "ID"), dropped.to_string());
    assert_eq!(cell(&header, &rows[0], "STATE"), "cancelled");

    let run = client(&daemon)
        .args(["list", "--state", "sent"])
        .run()
        .await;
    run.expect_code(0);
    assert_eq!(run.stdout.trim(), "no jobs");

    let run = client(&daemon)
        .args(["list", "--state", "lost"])
        .run()
        .await;
    run.expect_code(1);
    assert!(run.stderr.contains("bad_request"), "{:?}", run.stderr);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_limit_1_prints_one_row_the_earliest() {
    let (_coax, daemon) = daemon().await;
    daemon.enqueue(job_in("2h", "second")).await;
    let first = daemon.enqueue(job_in("1h", "first")).await;

    let run = client(&daemon).args(["list", "--limit", "1"]).run().await;

    run.expect_code(0);
    let (header, rows) = table(&run.stdout);
    assert_eq!(rows.len(), 1, "{}", run.stdout);
    assert_eq!(cell(&header, &rows[0], "ID"), first.to_string());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_recent_puts_the_most_recently_changed_job_first() {
    let (_coax, daemon) = daemon().await;
    let changed = daemon.enqueue(job_in("2h", "changed-last")).await;
    let earliest = daemon.enqueue(job_in("1h", "due-first")).await;
    let created = time::now();
    wait_until("the clock to pass the enqueue", PATIENCE, || async {
        (time::now() > created).then_some(())
    })
    .await;
    let run = client(&daemon)
        .args(["cancel", &changed.to_string()])
        .run()
        .await;
    run.expect_code(0);

    for (args, first) in [
        (vec!["list", "--limit", "1"], earliest),
        (vec!["list", "--limit", "1", "--recent"], changed),
    ] {
        let run = client(&daemon).args(&args).run().await;
        run.expect_code(0);
        let (header, rows) = table(&run.stdout);
        assert_eq!(rows.len(), 1, "{args:?}: {}", run.stdout);
        assert_eq!(cell(&header, &rows[0], "ID"), first.to_string(), "{args:?}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_with_json_prints_the_raw_answer_line() {
    let (_coax, daemon) = daemon().await;
    let a = daemon.enqueue(job_in("1h", "a")).await;
    let b = daemon.enqueue(job_in("2h", "b")).await;

    let run = client(&daemon).args(["--json", "list"]).run().await;

    run.expect_code(0);
    let answer = run.json();
    assert_eq!(answer["ok"], true);
    let jobs = answer["jobs"].as_array().expect("jobs array");
    let ids: Vec<i64> = jobs.iter().map(|j| j["id"].as_i64().expect("id")).collect();
    assert_eq!(ids, [a, b]);
    assert_eq!(jobs[0]["payload"]["message"], "Hello a");
    assert!(jobs[0]["history"].is_array(), "{}", jobs[0]);

    let run = client(&daemon)
        .args(["list", "--json", "--limit", "1"])
        .run()
        .await;
    run.expect_code(0);
    assert_eq!(run.json()["jobs"].as_array().map(Vec::len), Some(1));
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// cancel, reschedule, requeue
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_twice_exits_1_with_conflict() {
    let (_coax, daemon) = daemon().await;
    let id = daemon.enqueue(job("cancel-me")).await;

    let run = client(&daemon)
        .arg("cancel")
        .arg(id.to_string())
        .run()
        .await;
    run.expect_code(0);
    assert!(
        run.stdout.contains(&format!("job {id} is cancelled")),
        "{:?}",
        run.stdout
    );
    assert_eq!(daemon.get(id).await["state"], "cancelled");

    let run = client(&daemon)
        .arg("cancel")
        .arg(id.to_string())
        .run()
        .await;
    run.expect_code(1);
    assert!(run.stderr.contains("error (conflict)"), "{:?}", run.stderr);
    assert_eq!(daemon.get(id).await["state"], "cancelled");

    let run = client(&daemon).args(["cancel", "999"]).run().await;
    run.expect_code(1);
    assert!(run.stderr.contains("not_found"), "{:?}", run.stderr);
    daemon.stop().await;
}

fn millis(v: &Value) -> i64 {
    let text = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    time::parse_rfc3339(text).unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_in_2h_moves_the_job_two_hours_ahead() {
    let (_coax, daemon) = daemon().await;
    let id = daemon.enqueue(job_in("10m", "move-me")).await;

    let before = time::now();
    let run = client(&daemon)
        .arg("reschedule")
        .arg(id.to_string())
        .args(["--in", "2h"])
        .run()
        .await;
    let after = time::now();

    run.expect_code(0);
    assert!(
        run.stdout.contains(&format!("job {id} is scheduled")),
        "{:?}",
        run.stdout
    );
    let run = client(&daemon)
        .args(["--json", "get"])
        .arg(id.to_string())
        .run()
        .await;
    run.expect_code(0);
    let at = millis(&run.json()["job"]["scheduled_at"]);
    let two_hours = 2 * 3600 * 1000;
    // The CLI computes now + 2h between `before` and `after`; a second of
    // slack covers timestamps printed at second precision.
    assert!(
        at >= before + two_hours - 1000 && at <= after + two_hours + 1000,
        "scheduled_at {at} is not 2h after [{before}, {after}]"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_at_a_time_sets_that_time() {
    let (_coax, daemon) = daemon().await;
    let id = daemon.enqueue(job("move-me")).await;

    let run = client(&daemon)
        .arg("reschedule")
        .arg(id.to_string())
        .args(["--at", "2030-01-01T00:00:00Z"])
        .run()
        .await;

    run.expect_code(0);
    let job = daemon.get(id).await;
    assert_eq!(job["state"], "scheduled");
    assert_eq!(
        millis(&job["scheduled_at"]),
        time::parse_rfc3339("2030-01-01T00:00:00Z").expect("time")
    );

    // A time without an offset is read in the job's zone (UTC by default).
    client(&daemon)
        .arg("reschedule")
        .arg(id.to_string())
        .args(["--at", "2031-01-01T00:00:00"])
        .run()
        .await
        .expect_code(0);
    assert_eq!(
        daemon.get(id).await["scheduled_at"],
        "2031-01-01T00:00:00.000Z"
    );
    // One that is no time at all is refused by the daemon, and changes nothing.
    let run = client(&daemon)
        .arg("reschedule")
        .arg(id.to_string())
        .args(["--at", "2031-01-01T25:00"])
        .run()
        .await;
    run.expect_code(1);
    assert_eq!(
        daemon.get(id).await["scheduled_at"],
        "2031-01-01T00:00:00.000Z"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_needs_exactly_one_of_at_and_in() {
    let (_coax, daemon) = daemon().await;
    let id = daemon.enqueue(job("stay")).await;
    let scheduled_at = daemon.get(id).await["scheduled_at"].clone();

    let run = client(&daemon)
        .arg("reschedule")
        .arg(id.to_string())
        .run()
        .await;
    run.expect_code(2);
    assert!(
        run.stderr.contains("--at") || run.stderr.contains("--in"),
        "the usage error does not say what is missing: {:?}",
        run.stderr
    );

    let run = client(&daemon)
        .arg("reschedule")
        .arg(id.to_string())
        .args(["--at", "2030-01-01T00:00:00Z", "--in", "2h"])
        .run()
        .await;
    run.expect_code(2);

    let run = client(&daemon)
        .arg("reschedule")
        .arg(id.to_string())
        .args(["--in", "soon"])
        .run()
        .await;
    run.expect_code(2);
    assert!(run.stderr.contains("soon"), "{:?}", run.stderr);

    assert_eq!(daemon.get(id).await["scheduled_at"], scheduled_at);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_of_a_scheduled_job_exits_1_with_conflict() {
    let (_coax, daemon) = daemon().await;
    let id = daemon.enqueue(job("waiting")).await;
    let before = daemon.get(id).await;

    let run = client(&daemon)
        .arg("requeue")
        .arg(id.to_string())
        .run()
        .await;

    run.expect_code(1);
    assert!(run.stderr.contains("error (conflict)"), "{:?}", run.stderr);
    let after = daemon.get(id).await;
    assert_eq!(after["state"], "scheduled");
    assert_eq!(after["scheduled_at"], before["scheduled_at"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_of_a_failed_job_puts_it_back_in_line() {
    let (coax, daemon) = daemon().await;
    coax.push(Reply::status(400));
    let id = daemon.enqueue(job_in("0s", "fails-once")).await;
    daemon.wait_for_state(id, "failed").await;

    let run = client(&daemon)
        .arg("requeue")
        .arg(id.to_string())
        .run()
        .await;

    run.expect_code(0);
    assert!(
        run.stdout.contains(&format!("job {id} is scheduled")),
        "{:?}",
        run.stdout
    );
    // The stub's default reply accepts it the second time round.
    let job = daemon.wait_for_state(id, "sent").await;
    assert_eq!(job["history"].as_array().map(Vec::len), Some(2), "{job}");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// stats, ping
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_prints_a_count_for_every_state_and_the_dispatch_state() {
    let (_coax, daemon) = daemon().await;
    daemon.enqueue(job_in("1h", "a")).await;
    daemon.enqueue(job_in("2h", "b")).await;
    let c = daemon.enqueue(job_in("3h", "c")).await;
    let answer = daemon.request(json!({"op": "cancel", "id": c})).await;
    assert_eq!(answer["ok"], true, "{answer}");

    let run = client(&daemon).arg("stats").run().await;

    run.expect_code(0);
    let count = |state: &str| -> Option<String> {
        run.stdout.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(state)).then(|| words.collect::<Vec<_>>().join(" "))
        })
    };
    for (state, n) in [
        ("scheduled", "2"),
        ("sending", "0"),
        ("sent", "0"),
        ("skipped", "0"),
        ("failed", "0"),
        ("cancelled", "1"),
    ] {
        assert_eq!(
            count(state).as_deref(),
            Some(n),
            "count of {state} in:\n{}",
            run.stdout
        );
    }
    assert_eq!(
        count("dispatch").as_deref(),
        Some("running"),
        "{}",
        run.stdout
    );
    let next = run
        .stdout
        .lines()
        .find(|l| l.starts_with("next due"))
        .unwrap_or_else(|| panic!("no next due line:\n{}", run.stdout));
    assert!(next.contains("(in "), "{next:?}");

    let run = client(&daemon).args(["--json", "stats"]).run().await;
    run.expect_code(0);
    let answer = run.json();
    assert_eq!(answer["counts"]["scheduled"], 2);
    assert_eq!(answer["counts"]["cancelled"], 1);
    assert_eq!(answer["dispatch"]["state"], "running");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_says_the_daemon_is_answering() {
    let (_coax, daemon) = daemon().await;

    let run = client(&daemon).arg("ping").run().await;
    run.expect_code(0);
    assert_eq!(run.stdout.trim(), "the daemon is answering");

    let run = client(&daemon).args(["ping", "--json"]).run().await;
    run.expect_code(0);
    assert_eq!(run.json(), json!({"ok": true}));
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// finding the daemon
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_finds_the_socket_through_the_config_without_an_api_key() {
    let (_coax, daemon) = daemon().await;
    let config = daemon.dir.path().join("config.toml");
    // Run from elsewhere so the relative socket.path must resolve against
    // the config file's directory, not the working directory.
    let elsewhere = tempfile::tempdir().expect("temp dir");

    let run = cli()
        .arg("--config")
        .arg(&config)
        .arg("ping")
        .current_dir(elsewhere.path())
        .run()
        .await;
    run.expect_code(0);
    assert_eq!(run.stdout.trim(), "the daemon is answering");

    let run = cli()
        .args(["--json", "enqueue", "-"])
        .arg("--config")
        .arg(&config)
        .stdin(&job("via-config").to_string())
        .current_dir(elsewhere.path())
        .run()
        .await;
    run.expect_code(0);
    let id = run.json()["id"].as_i64().expect("id");
    assert_eq!(
        daemon.get(id).await["payload"]["message"],
        "Hello via-config"
    );

    // $COAX_SCHEDULER_CONFIG works the same way when --config is absent.
    let run = cli()
        .args(["get", &id.to_string()])
        .env("COAX_SCHEDULER_CONFIG", &config)
        .current_dir(elsewhere.path())
        .run()
        .await;
    run.expect_code(0);
    assert_eq!(field(&run.stdout, "state"), Some("scheduled"));
    daemon.stop().await;
}

#[tokio::test]
async fn a_socket_where_nothing_listens_exits_2_saying_it_cannot_connect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("nobody.sock");

    let run = cli().arg("--socket").arg(&socket).arg("ping").run().await;
    run.expect_code(2);
    assert!(run.stderr.contains("cannot connect"), "{:?}", run.stderr);
    assert!(
        run.stderr.contains(&socket.display().to_string()),
        "the socket path is not named: {:?}",
        run.stderr
    );

    // A stale socket file left behind by a dead daemon: same answer.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let run = cli()
        .arg("--socket")
        .arg(&stale)
        .args(["enqueue", "-"])
        .stdin(&job("lost").to_string())
        .run()
        .await;
    run.expect_code(2);
    assert!(run.stderr.contains("cannot connect"), "{:?}", run.stderr);
}

#[tokio::test]
async fn a_client_without_socket_or_readable_config_exits_2_saying_how_to_fix_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("absent.toml");

    let run = cli().arg("--config").arg(&missing).arg("stats").run().await;

    run.expect_code(2);
    assert!(
        run.stderr.contains("--socket") && run.stderr.contains("absent.toml"),
        "{:?}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------
// prune, status, completions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_only_finished_jobs_and_a_dry_run_removes_nothing() {
    let (coax, daemon) = daemon().await;
    coax.push(Reply::status(400));
    let failed = daemon.enqueue(job_in("0s", "fails")).await;
    daemon.wait_for_state(failed, "failed").await;
    let sent = daemon.enqueue(job_in("0s", "goes")).await;
    daemon.wait_for_state(sent, "sent").await;
    let cancelled = daemon.enqueue(job_in("1h", "cancelled")).await;
    let answer = daemon
        .request(json!({"op": "cancel", "id": cancelled}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    let waiting = daemon.enqueue(job_in("1h", "waiting")).await;

    // The default retention (30 days) keeps everything this young.
    let run = client(&daemon).args(["prune", "--dry-run"]).run().await;
    run.expect_code(0);
    assert!(
        run.stdout.contains("would remove 0 finished jobs"),
        "{}",
        run.stdout
    );

    let run = client(&daemon)
        .args(["--json", "prune", "--older-than", "0s", "--dry-run"])
        .run()
        .await;
    run.expect_code(0);
    let answer: Value = serde_json::from_str(run.stdout.trim()).expect("JSON answer");
    assert_eq!(answer["jobs"], 3, "{answer}");
    assert_eq!(answer["dry_run"], true);
    assert_eq!(total_jobs(&daemon).await, 4, "a dry run removes nothing");

    let run = client(&daemon)
        .args(["prune", "--older-than", "0s"])
        .run()
        .await;
    run.expect_code(0);
    assert!(
        run.stdout.contains("removed 3 finished jobs"),
        "{}",
        run.stdout
    );
    assert_eq!(total_jobs(&daemon).await, 1);
    for gone in [failed, sent, cancelled] {
        let answer = daemon.request(json!({"op": "get", "id": gone})).await;
        assert_eq!(answer["error"]["code"], "not_found", "{answer}");
    }
    assert_eq!(daemon.get(waiting).await["state"], "scheduled");

    let run = client(&daemon)
        .args(["prune", "--older-than", "soon"])
        .run()
        .await;
    run.expect_code(1);
    assert!(run.stderr.contains("bad_request"), "{}", run.stderr);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_dispatcher_counts_next_job_and_last_errors() {
    let (coax, daemon) = daemon().await;
    coax.push(Reply::refused("number is blocked"));
    let failed = daemon.enqueue(job_in("0s", "blocked")).await;
    daemon.wait_for_state(failed, "failed").await;
    let next = daemon.enqueue(job_in("1h", "next-one")).await;

    let run = client(&daemon).arg("status").run().await;

    run.expect_code(0);
    let out = &run.stdout;
    assert!(out.contains("dispatcher  running"), "{out}");
    assert!(
        out.contains("scheduled 1") && out.contains("failed 1"),
        "{out}"
    );
    assert!(out.contains(&format!("next due    job {next} ")), "{out}");
    assert!(out.contains("number is blocked"), "{out}");
    let host = coax_scheduler::config::host_name().expect("host name");
    assert!(
        out.contains(&format!("node        {host} (0 in flight)")),
        "{out}"
    );
    assert!(out.lines().count() <= 24, "fits one screen: {out}");
    daemon.stop().await;
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete"),
        ("zsh", "#compdef"),
        ("fish", "complete -c"),
    ] {
        let run = cli().args(["completions", shell]).run().await;
        run.expect_code(0);
        assert!(run.stdout.contains(marker), "{shell}: {}", run.stdout);
        assert!(
            run.stdout.contains("reschedule"),
            "{shell} lists the subcommands"
        );
    }
}
