//! The Coax simulator over real HTTP, started in-process on loopback, and
//! the `simulate` and `demo` commands as the real binary runs them.

use coax_scheduler::simulate::{
    PAUSED_MESSAGE, REVIEW_MESSAGE, Reply, Route, SENT_MESSAGE, SimOptions, Simulator,
};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const KEY: &str = "sim-test-key";
/// How long a test waits for anything before it counts as a failure.
const PATIENCE: Duration = Duration::from_secs(30);

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_coax-scheduler")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .expect("http client")
}

async fn start(options: SimOptions) -> Simulator {
    Simulator::start("127.0.0.1:0", options)
        .await
        .expect("simulator starts")
}

fn keyed() -> SimOptions {
    SimOptions {
        api_key: Some(KEY.into()),
        ..SimOptions::default()
    }
}

/// PUTs `body` to `path` with `token` and returns the status and the JSON.
async fn put(sim: &Simulator, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = client()
        .put(format!("{}{path}", sim.base_url()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("answer");
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

async fn json_of(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.expect("a body");
    serde_json::from_slice(&bytes).expect("a JSON envelope")
}

#[tokio::test]
async fn each_route_answers_success_with_its_message() {
    let sim = start(keyed()).await;
    let cases = [
        (
            "/api/v2/message/send/sms",
            json!({"message": "hi", "phone": "+1555"}),
            SENT_MESSAGE,
            None,
        ),
        (
            "/api/v2/message/42/send/sms",
            json!({"message": "hi"}),
            SENT_MESSAGE,
            Some(42),
        ),
        (
            "/api/v2/message/schedule/email",
            json!({"message": "hi", "email": "a@b.c", "scheduled_at": "2030-01-01 09:00"}),
            SENT_MESSAGE,
            None,
        ),
        (
            "/api/v2/message/7/schedule/email",
            json!({"message": "hi", "scheduled_at": "2030-01-01 09:00"}),
            SENT_MESSAGE,
            Some(7),
        ),
        (
            "/api/v2/message/ask-for-review",
            json!({"channel": "sms", "phone": "+1555"}),
            REVIEW_MESSAGE,
            None,
        ),
        (
            "/api/v2/message/9/ask-for-review",
            json!({"channel": "sms"}),
            REVIEW_MESSAGE,
            Some(9),
        ),
    ];
    for (path, body, message, enquiry) in cases {
        let (status, answer) = put(&sim, path, Some(KEY), &body.to_string()).await;
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(answer["success"], true, "{path}");
        assert_eq!(answer["message"], message, "{path}");
        let id = &answer["body"]["enquiry"]["id"];
        assert!(id.is_u64(), "{path}: {answer}");
        if let Some(expected) = enquiry {
            assert_eq!(*id, expected, "{path}");
        }
    }
    let stats = sim.stats();
    assert_eq!(stats.reply_total(Reply::Sent), 6);
    assert_eq!(stats.count(Route::ReviewOnEnquiry, Reply::Sent), 1);
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn health_needs_no_key() {
    let sim = start(keyed()).await;
    let response = client()
        .get(format!("{}/health", sim.base_url()))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    let answer = json_of(response).await;
    assert_eq!(answer["success"], true);
    assert_eq!(sim.stats().count(Route::Health, Reply::Healthy), 1);
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_401() {
    let sim = start(keyed()).await;
    let body = r#"{"message":"hi","phone":"+1555"}"#;
    for token in [Some("not-the-key"), None] {
        let (status, answer) = put(&sim, "/api/v2/message/send/sms", token, body).await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(answer["success"], false);
    }
    // Without --api-key any Bearer token is accepted.
    let open = start(SimOptions::default()).await;
    let (status, _) = put(&open, "/api/v2/message/send/sms", Some("anything"), body).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_unknown_body_field_is_422_and_named() {
    let sim = start(keyed()).await;
    let body = r#"{"message":"hi","phone":"+1555","colour":"red"}"#;
    let (status, answer) = put(&sim, "/api/v2/message/send/sms", Some(KEY), body).await;
    assert_eq!(status, 422);
    assert_eq!(answer["success"], false);
    assert!(
        answer["message"].as_str().unwrap_or("").contains("colour"),
        "{answer}"
    );
    // Route 2 takes no customer fields.
    let body = r#"{"message":"hi","phone":"+1555"}"#;
    let (status, answer) = put(&sim, "/api/v2/message/5/send/sms", Some(KEY), body).await;
    assert_eq!(status, 422);
    assert!(
        answer["message"].as_str().unwrap_or("").contains("phone"),
        "{answer}"
    );
    let (status, _) = put(&sim, "/api/v2/message/send/sms", Some(KEY), "not json").await;
    assert_eq!(status, 422);
    let (status, _) = put(&sim, "/api/v2/message/x1/send/sms", Some(KEY), "{}").await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn a_paused_campaign_answers_success_without_a_body() {
    let sim = start(SimOptions {
        paused_campaign: Some("77".into()),
        ..keyed()
    })
    .await;
    let body = r#"{"message":"hi","phone":"+1555","campaign_id":77}"#;
    let (status, answer) = put(&sim, "/api/v2/message/send/sms", Some(KEY), body).await;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"success": true, "message": PAUSED_MESSAGE}));
    assert_eq!(sim.stats().count(Route::Send, Reply::Paused), 1);
}

#[tokio::test]
async fn fail_rate_one_answers_503_every_time() {
    let sim = start(SimOptions {
        fail_rate: 1.0,
        ..keyed()
    })
    .await;
    for _ in 0..5 {
        let (status, answer) = put(&sim, "/api/v2/message/9/ask-for-review", Some(KEY), "{}").await;
        assert_eq!(status, 503);
        assert_eq!(answer["success"], false);
    }
    assert_eq!(sim.stats().reply_total(Reply::Unavailable), 5);
}

#[tokio::test]
async fn fail_first_for_answers_503_once() {
    let sim = start(SimOptions {
        fail_first_for: vec!["+1555".into()],
        ..keyed()
    })
    .await;
    let body = r#"{"message":"hi","phone":"+1555"}"#;
    let (first, _) = put(&sim, "/api/v2/message/send/sms", Some(KEY), body).await;
    let (second, _) = put(&sim, "/api/v2/message/send/sms", Some(KEY), body).await;
    assert_eq!((first, second), (503, 200));
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let sim = start(keyed()).await;
    let (status, answer) = put(&sim, "/api/v3/nothing", Some(KEY), "{}").await;
    assert_eq!(status, 404);
    assert_eq!(answer["success"], false);
    let response = client()
        .post(format!("{}/api/v2/message/send/sms", sim.base_url()))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "PUT");
}

#[tokio::test]
async fn latency_is_added_before_answering() {
    let sim = start(SimOptions {
        latency: Duration::from_millis(100),
        jitter: Duration::from_millis(20),
        ..keyed()
    })
    .await;
    let started = Instant::now();
    let (status, _) = put(&sim, "/api/v2/message/9/ask-for-review", Some(KEY), "{}").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_keep_alive_requests_are_all_counted() {
    let sim = start(keyed()).await;
    let http = client();
    let url = format!("{}/api/v2/message/9/ask-for-review", sim.base_url());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (http, url) = (http.clone(), url.clone());
        tasks.spawn(async move {
            for _ in 0..25 {
                let response = http.put(&url).bearer_auth(KEY).body("{}").send().await;
                assert_eq!(response.expect("answer").status(), 200);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("sender");
    }
    assert_eq!(sim.stats().count(Route::ReviewOnEnquiry, Reply::Sent), 800);
    tokio::time::timeout(PATIENCE, sim.stop())
        .await
        .expect("stops with idle keep-alive connections open")
        .expect("clean stop");
}

#[tokio::test]
async fn the_simulate_command_serves_until_sigterm() {
    let mut child = Command::new(binary())
        .args(["simulate", "--listen", "127.0.0.1:0", "--api-key", KEY])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the binary");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let base_url = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(rest) = line.split("base_url=").nth(1) {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("the simulator reports its address")
    .expect("a base_url in the start-up line");
    let health = client()
        .get(format!("{base_url}/health"))
        .send()
        .await
        .expect("answer");
    assert_eq!(health.status(), 200);

    let pid = child.id().expect("pid").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await;
    assert!(killed.expect("kill").success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_simulate_command_refuses_a_bad_fail_rate() {
    let output = Command::new(binary())
        .args(["simulate", "--listen", "127.0.0.1:0", "--fail-rate", "1.5"])
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("exits at once")
        .expect("run the binary");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("fail-rate"));
}

#[tokio::test]
async fn the_demo_runs_every_job_to_its_end() {
    let output = Command::new(binary())
        .arg("demo")
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the demo finishes")
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = table_rows(&stdout);
    let row = |key: &str| {
        rows.iter()
            .find(|r| r.key == key)
            .unwrap_or_else(|| panic!("no row for {key} in\n{stdout}"))
    };
    assert_eq!(rows.len(), 11, "{stdout}");
    // A follow-up chain: the review request went after the first message;
    // the follow-up to the skipped message was cancelled with it.
    assert_eq!(row("demo-follow-up").state, "sent");
    assert_eq!(row("demo-follow-up-skipped").state, "cancelled");
    assert_eq!(row("demo-now").state, "sent");
    assert_eq!(row("demo-in-5s").state, "sent");
    assert_eq!(row("demo-paused-campaign").state, "skipped");
    assert_eq!(row("demo-review").state, "sent");
    assert_eq!(row("demo-on-enquiry").state, "sent");
    // An appointment's two reminders, cancelled by their tag in one go.
    assert_eq!(row("demo-reminder-day").state, "cancelled");
    assert_eq!(row("demo-reminder-hours").state, "cancelled");
    assert!(stdout.contains("cancelled 2 reminders"), "{stdout}");
    // Shut out by its send window until tomorrow, shown, then cancelled.
    assert_eq!(row("demo-deferred").state, "cancelled");
    assert!(
        stdout.contains("its window is shut now, so it is due at 20"),
        "{stdout}"
    );
    let retried = row("demo-retried");
    assert_eq!(
        (retried.state.as_str(), retried.tries.as_str()),
        ("sent", "2")
    );
    assert!(
        stdout.contains("demo: every job ended as planned"),
        "{stdout}"
    );
}

/// One row of the CLI's job table.
struct Row {
    state: String,
    tries: String,
    key: String,
}

/// Reads the job table from the demo's output. Columns are found by the
/// header's offsets, since the SCHEDULED column holds spaces.
fn table_rows(stdout: &str) -> Vec<Row> {
    let mut lines = stdout
        .lines()
        .skip_while(|l| !(l.starts_with("ID ") && l.contains("TRIES")));
    let Some(header) = lines.next() else {
        panic!("no job table in\n{stdout}");
    };
    let at = |name: &str| {
        header
            .find(name)
            .unwrap_or_else(|| panic!("no {name} column"))
    };
    let (state, tries, key) = (at("STATE"), at("TRIES"), at("KEY"));
    let cell = |line: &str, start: usize| {
        line.get(start..)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("")
            .to_owned()
    };
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| Row {
            state: cell(l, state),
            tries: cell(l, tries),
            key: cell(l, key),
        })
        .collect()
}
