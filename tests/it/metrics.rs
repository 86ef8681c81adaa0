//! The metrics endpoint: every counter and gauge by value after a known
//! sequence against the Coax stand-in, `/health`, and the endpoint's
//! limits (GET only, two paths, a capped head, timeouts, a connection cap).
//!
//! The daemon runs as its own process here: the recorder is per process,
//! and the other tests' in-process daemons would add to its counters.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{DaemonProcess, TEST_KEY, config_text};
use crate::helpers::{PATIENCE, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The test config with `[metrics] listen` and extra `[breaker]` lines.
pub fn config_with_metrics(coax_url: &str, listen: &str, breaker: &str) -> String {
    format!(
        "{}\n[breaker]\n{breaker}\n\n[metrics]\nlisten = {listen:?}\n",
        config_text(coax_url, "", "")
    )
}

/// A daemon process serving metrics on a free loopback port.
pub async fn start_with_metrics(
    dir: &Path,
    coax: &CoaxStub,
    breaker: &str,
) -> (DaemonProcess, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let daemon =
        DaemonProcess::start(dir, &config_with_metrics(&coax.base_url(), &addr, breaker)).await;
    (daemon, format!("http://{addr}"))
}

/// GET `url`: the status and the body.
pub async fn get(url: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// The samples of a text exposition, keyed by name and labels.
pub struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    pub fn parse(text: &str) -> Samples {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').expect("closing brace");
                    let labels = rest
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").expect("label");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Samples(samples)
    }

    /// The value of the series `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
    }

    /// Like [`Samples::value`], failing the test when the series is missing.
    pub fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
    }
}

async fn scrape(base: &str) -> Samples {
    let (status, body) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200, "{body}");
    Samples::parse(&body)
}

/// Scrapes until `name{labels}` has `value`, and returns that scrape.
async fn wait_for_value(base: &str, name: &str, labels: &[(&str, &str)], value: f64) -> Samples {
    wait_until(
        &format!("{name}{labels:?} to be {value}"),
        PATIENCE,
        || async {
            let samples = scrape(base).await;
            (samples.value(name, labels) == Some(value)).then_some(samples)
        },
    )
    .await
}

fn message(channel: &str) -> Value {
    json!({"kind": "message", "channel": channel,
           "payload": {"message": "Your table is ready", "phone": "+15550100"}})
}

const ATTEMPTS: &str = "coax_scheduler_attempts_total";

#[tokio::test]
async fn metrics_count_a_known_sequence_by_value() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (daemon, base) = start_with_metrics(dir.path(), &coax, "").await;

    // A plain send; a 503 that is retried; a paused campaign.
    coax.push_for("/send/retry", Reply::status(503));
    coax.push_for("/send/paused", Reply::paused());
    let mut ids = Vec::new();
    for channel in ["plain", "retry", "paused"] {
        let answer = daemon
            .request(json!({"op": "enqueue", "job": message(channel)}))
            .await;
        ids.push(answer["id"].as_i64().expect("an id"));
    }
    let keyed = json!({"kind": "message", "channel": "plain", "key": "k-1",
                       "payload": {"message": "hi", "phone": "+15550100"}});
    for _ in 0..2 {
        let answer = daemon.request(json!({"op": "enqueue", "job": keyed})).await;
        assert_eq!(answer["ok"], true, "{answer}");
    }
    let samples = wait_for_value(&base, "coax_scheduler_jobs", &[("state", "sent")], 3.0).await;
    let samples = if samples.must("coax_scheduler_jobs", &[("state", "skipped")]) == 1.0 {
        samples
    } else {
        wait_for_value(&base, "coax_scheduler_jobs", &[("state", "skipped")], 1.0).await
    };
    let attempts =
        |decision| samples.must(ATTEMPTS, &[("kind", "message"), ("decision", decision)]);
    assert_eq!(attempts("sent"), 3.0);
    assert_eq!(attempts("retry"), 1.0);
    assert_eq!(attempts("skipped"), 1.0);
    assert_eq!(attempts("failed"), 0.0);
    assert_eq!(samples.must("coax_scheduler_enqueued_total", &[]), 4.0);
    assert_eq!(samples.must("coax_scheduler_duplicates_total", &[]), 1.0);
    // Four first attempts; five requests to Coax.
    assert_eq!(
        samples.must("coax_scheduler_lateness_seconds_count", &[]),
        4.0
    );
    assert_eq!(
        samples.must(
            "coax_scheduler_request_duration_seconds_count",
            &[("kind", "message")]
        ),
        5.0
    );
    assert_eq!(
        samples.must(
            "coax_scheduler_socket_requests_total",
            &[("op", "enqueue"), ("result", "ok")]
        ),
        5.0
    );
    assert_eq!(
        samples.must(
            "coax_scheduler_store_call_duration_seconds_count",
            &[("op", "enqueue")]
        ),
        5.0
    );
    assert_eq!(samples.must("coax_scheduler_due_now", &[]), 0.0);
    assert_eq!(
        samples.must("coax_scheduler_oldest_overdue_seconds", &[]),
        0.0
    );
    assert_eq!(
        samples.must(
            "coax_scheduler_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        get(&format!("{base}/health")).await,
        (200, "{\"status\":\"running\"}\n".into())
    );

    // A 429 pauses all sending; a job due a minute ago then waits.
    coax.push_for(
        "/send/throttled",
        Reply::status(429).with_header("Retry-After", "3600"),
    );
    daemon
        .request(json!({"op": "enqueue", "job": message("throttled")}))
        .await;
    let samples = wait_for_value(
        &base,
        "coax_scheduler_dispatch_state",
        &[("state", "paused_rate_limit")],
        1.0,
    )
    .await;
    assert_eq!(
        samples.must("coax_scheduler_dispatch_state", &[("state", "running")]),
        0.0
    );
    assert_eq!(
        samples.must("coax_scheduler_pauses_total", &[("reason", "rate_limit")]),
        1.0
    );
    assert_eq!(
        samples.must("coax_scheduler_pauses_total", &[("reason", "auth")]),
        0.0
    );
    let (status, body) = get(&format!("{base}/health")).await;
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "paused_rate_limit");
    assert!(
        health["until"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{health}"
    );

    let minute_ago = chrono::Utc::now() - chrono::Duration::seconds(60);
    let mut late = message("late");
    late["scheduled_at"] = json!(minute_ago.to_rfc3339());
    daemon.request(json!({"op": "enqueue", "job": late})).await;
    // The throttled job's retry falls due too (retry.max_delay is 200ms).
    let samples = wait_for_value(&base, "coax_scheduler_due_now", &[], 2.0).await;
    let oldest = samples.must("coax_scheduler_oldest_overdue_seconds", &[]);
    assert!((60.0..120.0).contains(&oldest), "oldest overdue {oldest}");
    assert_eq!(
        samples.must("coax_scheduler_jobs", &[("state", "scheduled")]),
        2.0
    );

    // Errors are counted under their op, or `invalid` without a usable one.
    let _ = daemon.request(json!({"op": "get", "id": 999})).await;
    let _ = daemon.request(json!({"op": "frobnicate"})).await;
    let _ = daemon.request(json!({"no": "op"})).await;
    let resumed = daemon.request(json!({"op": "resume"})).await;
    assert_eq!(resumed["resumed"], true, "{resumed}");
    let samples = wait_for_value(&base, "coax_scheduler_jobs", &[("state", "sent")], 5.0).await;
    let requests = |op, result| {
        samples.must(
            "coax_scheduler_socket_requests_total",
            &[("op", op), ("result", result)],
        )
    };
    assert_eq!(requests("get", "not_found"), 1.0);
    assert_eq!(requests("invalid", "unknown_op"), 1.0);
    assert_eq!(requests("invalid", "bad_request"), 1.0);
    assert_eq!(requests("resume", "ok"), 1.0);
    assert_eq!(
        samples.must("coax_scheduler_dispatch_state", &[("state", "running")]),
        1.0
    );
    let attempts =
        |decision| samples.must(ATTEMPTS, &[("kind", "message"), ("decision", decision)]);
    assert_eq!(attempts("sent"), 5.0);
    assert_eq!(attempts("retry"), 2.0);
    assert_eq!(
        samples.must("coax_scheduler_lateness_seconds_count", &[]),
        6.0
    );
    // The late job's first attempt was a minute late, and only the
    // buckets from 60 s up hold it.
    assert_eq!(
        samples.must("coax_scheduler_lateness_seconds_bucket", &[("le", "30")]),
        5.0
    );
    assert_eq!(
        samples.must("coax_scheduler_lateness_seconds_bucket", &[("le", "300")]),
        6.0
    );
    assert_eq!(samples.must("coax_scheduler_due_now", &[]), 0.0);
    assert_eq!(samples.must("coax_scheduler_breaker_opens_total", &[]), 0.0);

    // One connection held open is one in the gauge.
    let socket = daemon.socket.clone();
    let held = tokio::task::spawn_blocking(move || {
        let mut client = coax_scheduler::client::Client::connect(&socket).expect("connect");
        client.send_line(r#"{"op":"ping"}"#).expect("answer");
        client
    })
    .await
    .expect("client thread");
    wait_for_value(&base, "coax_scheduler_socket_connections", &[], 1.0).await;
    drop(held);
    wait_for_value(&base, "coax_scheduler_socket_connections", &[], 0.0).await;

    let (_, text) = get(&format!("{base}/metrics")).await;
    for secret in ["+15550100", "Your table is ready", TEST_KEY] {
        assert!(!text.contains(secret), "/metrics shows {secret:?}");
    }
}

#[tokio::test]
async fn metrics_count_the_breaker_opening_and_health_answers_503() {
    let coax = CoaxStub::start().await;
    coax.set_health(503);
    coax.push_for("/send/", Reply::status(503));
    let dir = tempfile::tempdir().expect("temp dir");
    let (daemon, base) = start_with_metrics(dir.path(), &coax, "failures = 1").await;
    daemon
        .request(json!({"op": "enqueue", "job": message("down")}))
        .await;
    let samples = wait_for_value(
        &base,
        "coax_scheduler_dispatch_state",
        &[("state", "breaker_open")],
        1.0,
    )
    .await;
    assert_eq!(samples.must("coax_scheduler_breaker_opens_total", &[]), 1.0);
    assert_eq!(
        samples.must("coax_scheduler_pauses_total", &[("reason", "rate_limit")]),
        0.0
    );
    let (status, body) = get(&format!("{base}/health")).await;
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "breaker_open");
    assert!(health["until"].is_string(), "{health}");
}

/// Sends raw bytes and reads the answer until the server closes.
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    read.expect("the server answers and closes").ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn metrics_endpoint_serves_get_on_two_paths_and_bounds_its_clients() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_daemon, base) = start_with_metrics(dir.path(), &coax, "").await;
    let addr = base.trim_start_matches("http://").to_owned();

    for path in [
        "/",
        "/metrics/",
        "/metrics.txt",
        "/healthz",
        "/api/v2/message/send/sms",
    ] {
        assert_eq!(get(&format!("{base}{path}")).await.0, 404, "{path}");
    }
    let answer = raw(
        &addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: get"),
        "{answer}"
    );
    let answer = raw(
        &addr,
        b"HEAD /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");

    // A head over the cap is refused, not buffered.
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend(b"\r\n\r\n");
    let answer = raw(&addr, &big).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A client that sends nothing is closed after the head timeout.
    let mut silent = TcpStream::connect(&addr).await.expect("connect");
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, silent.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a silent client was never closed");

    // Over the connection cap, one more is closed at once; the others, and
    // later clients, are still served.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let mut extra = TcpStream::connect(&addr).await.expect("connect");
    let mut buf = Vec::new();
    let n = tokio::time::timeout(PATIENCE, extra.read_to_end(&mut buf))
        .await
        .expect("the extra connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the extra connection was served");
    let first = idle.first_mut().expect("a connection");
    first
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    first.read_to_end(&mut answer).await.expect("read");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    drop(idle);
    wait_until("the endpoint to serve again", PATIENCE, || async {
        let (status, _) = get(&format!("{base}/health")).await;
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_serve_on_a_unix_socket_path() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_with_metrics(&coax.base_url(), "./metrics.sock", "");
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let path = dir.path().join("metrics.sock");
    let mut stream = tokio::net::UnixStream::connect(&path)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("coax_scheduler_dispatch_state{state=\"running\"} 1"),
        "{answer}"
    );
    daemon.terminate().await;
    assert!(!path.exists(), "the metrics socket is removed at shutdown");
}

#[test]
fn metrics_listen_is_checked_and_off_by_default() {
    use coax_scheduler::config::{Config, MetricsListen};
    let env = |name: &str| (name == "COAX_API_KEY").then(|| TEST_KEY.to_owned());
    let load = |text: &str| Config::from_toml(text, Path::new("/etc/coax/config.toml"), &env);
    let base = config_text("http://127.0.0.1:1", "", "");
    assert_eq!(load(&base).expect("valid").metrics.listen, None);
    let with = |listen: &str| format!("{base}\n[metrics]\nlisten = {listen:?}\n");
    assert_eq!(
        load(&with("127.0.0.1:9464")).expect("valid").metrics.listen,
        Some(MetricsListen::Tcp("127.0.0.1:9464".parse().expect("addr")))
    );
    assert_eq!(
        load(&with("run/metrics.sock"))
            .expect("valid")
            .metrics
            .listen,
        Some(MetricsListen::Unix("/etc/coax/run/metrics.sock".into()))
    );
    let err = load(&with("localhost"))
        .expect_err("not an address")
        .to_string();
    assert!(err.contains("metrics.listen"), "{err}");
    let err = load(&format!("{base}\n[metrics]\nport = 1\n"))
        .expect_err("unknown key")
        .to_string();
    assert!(err.contains("port"), "{err}");
}

/// The config key of tomorrow's weekday in UTC (`mon`, `tue`, ...): a
/// window open only then is shut whenever the test runs.
fn tomorrow_key() -> &'static str {
    use chrono::Datelike;
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let tomorrow = chrono::Utc::now().weekday().succ();
    DAYS[tomorrow.num_days_from_monday() as usize]
}

#[tokio::test]
async fn deferred_jobs_gauge_counts_jobs_waiting_for_their_window() {
    let coax = CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "{}\n[windows.tomorrow]\n{} = \"09:00-17:00\"\n",
        config_with_metrics(&coax.base_url(), &addr, ""),
        tomorrow_key()
    );
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    let base = format!("http://{addr}");
    for _ in 0..3 {
        let mut job = message("sms");
        job["window"] = json!("tomorrow");
        let answer = daemon.request(json!({"op": "enqueue", "job": job})).await;
        assert_eq!(answer["ok"], true, "{answer}");
        assert_ne!(answer["due_at"], answer["scheduled_at"], "{answer}");
    }
    // One without a window goes at once and is not counted.
    daemon
        .request(json!({"op": "enqueue", "job": message("sms")}))
        .await;
    coax.wait_for_requests(1, PATIENCE).await;
    let samples = wait_for_value(&base, "coax_scheduler_jobs", &[("state", "sent")], 1.0).await;
    assert_eq!(samples.must("coax_scheduler_deferred_jobs", &[]), 3.0);
    assert_eq!(
        samples.must("coax_scheduler_jobs", &[("state", "scheduled")]),
        3.0
    );
    assert_eq!(samples.must("coax_scheduler_due_now", &[]), 0.0);
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["deferred"], 3, "{stats}");
    assert_eq!(
        coax.requests().len(),
        1,
        "only the job without a window is sent"
    );
}
