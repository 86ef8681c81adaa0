//! Reliability: how the daemon protects Coax, its callers and itself when
//! things go wrong. Jobs that must not go out late expire (`ttl`,
//! `expires_at`, `default_ttl`); a 429 pauses all sending; repeated transient
//! failures open the breaker, which `/health` probes and one trial send close
//! again; `rate_limit` caps sends; bad answers from Coax (not JSON, no
//! `success`, cut off, oversized, slow, a proxy's HTML 502) are classified and
//! recorded in words a person understands; socket peers are admitted by uid or
//! gid; the API key is loaded safely and never shown. Property tests check
//! that request parsing and job validation never panic on arbitrary input and
//! only accept path-safe channels and enquiry ids.

use crate::helpers::coax::{Behaviour, CoaxStub, Recorded, Reply};
use crate::helpers::daemon::{TestDaemon, request_at};
use crate::helpers::{PATIENCE, wait_until};
use chrono::{DateTime, Utc};
use coax_scheduler::config::Config;
use serde_json::{Value, json};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// A whole config text; every section is spelled out so a test can set any
/// key without clashing with a default line.
struct Cfg<'a> {
    coax_url: String,
    request_timeout: &'a str,
    socket: &'a str,
    dispatch: &'a str,
    concurrency: usize,
    max_attempts: u32,
    base_delay: &'a str,
    max_delay: &'a str,
    breaker: &'a str,
}

impl<'a> Cfg<'a> {
    fn new(coax: &CoaxStub) -> Cfg<'a> {
        Cfg {
            coax_url: coax.base_url(),
            request_timeout: "2s",
            socket: "",
            dispatch: "",
            concurrency: 4,
            max_attempts: 3,
            base_delay: "50ms",
            max_delay: "200ms",
            breaker: "",
        }
    }

    fn text(&self) -> String {
        format!(
            r#"
[coax]
base_url = "{url}"
request_timeout = "{request_timeout}"

[store]
path = "queue.db"

[socket]
path = "coax.sock"
{socket}

[dispatch]
poll_interval = "1s"
concurrency = {concurrency}
shutdown_timeout = "5s"
auth_pause = "300ms"
{dispatch}

[retry]
max_attempts = {max_attempts}
base_delay = "{base_delay}"
max_delay = "{max_delay}"

[breaker]
{breaker}

[log]
level = "debug"
"#,
            url = self.coax_url,
            request_timeout = self.request_timeout,
            socket = self.socket,
            concurrency = self.concurrency,
            dispatch = self.dispatch,
            max_attempts = self.max_attempts,
            base_delay = self.base_delay,
            max_delay = self.max_delay,
            breaker = self.breaker,
        )
    }
}

/// A customer-route SMS job due now whose message is `tag`, so the stub's
/// requests can be told apart.
fn sms(tag: &str) -> Value {
    json!({
        "kind": "message", "channel": "sms", "key": tag,
        "payload": {"message": tag, "phone": "+15550100"}
    })
}

fn ms(text: &Value) -> i64 {
    let text = text
        .as_str()
        .unwrap_or_else(|| panic!("expected a time string, got {text}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .expect("representable time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The `message` of a recorded request's JSON body.
fn tag(r: &Recorded) -> String {
    r.json()["message"].as_str().unwrap_or_default().to_owned()
}

async fn stats(daemon: &TestDaemon) -> Value {
    let answer = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(answer["ok"], true, "stats failed: {answer}");
    answer
}

/// Waits until `stats` reports the dispatcher in `state`; returns the answer.
async fn wait_for_dispatch(daemon: &TestDaemon, state: &str) -> Value {
    wait_until(&format!("dispatch state {state}"), PATIENCE, || async {
        let s = stats(daemon).await;
        (s["dispatch"]["state"] == state).then_some(s)
    })
    .await
}

/// Enqueues, expecting a refusal; returns the error object.
async fn enqueue_refused(daemon: &TestDaemon, job: Value) -> Value {
    let answer = daemon.request(json!({"op": "enqueue", "job": job})).await;
    assert_eq!(answer["ok"], false, "expected a refusal: {answer}");
    answer["error"].clone()
}

// ---------------------------------------------------------------------------
// 1. Expiry
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_expires_and_is_never_tried_after_its_expiry() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::status(503));
    let mut cfg = Cfg::new(&coax);
    cfg.max_attempts = 1000;
    // Keep the breaker out of the way: this test is about expiry alone.
    cfg.breaker = "failures = 100000";
    let daemon = TestDaemon::start_with(&cfg.text()).await;

    let mut job = sms("ttl-1");
    job["ttl"] = json!("1s");
    let id = daemon.enqueue(job).await;
    let job = daemon.wait_for_state(id, "expired").await;

    // Retries move scheduled_at; the expiry stays where the first due time put it.
    let expires = ms(&job["expires_at"]);
    let created = ms(&job["created_at"]);
    assert!(
        (200..=1000).contains(&(expires - created)),
        "ttl = 1s counts from the first due time: created {created}, expires {expires}"
    );
    assert!(ms(&job["scheduled_at"]) < expires, "{job:#}");
    let history = job["history"].as_array().expect("history");
    assert!(
        history.len() >= 2,
        "503s within the ttl are retried: {job:#}"
    );
    for attempt in history {
        assert!(
            ms(&attempt["started_at"]) < expires,
            "an attempt started at or after the expiry: {attempt}"
        );
    }
    for attempt in &history[..history.len() - 1] {
        assert_eq!(attempt["decision"], "retry", "{attempt}");
        assert_eq!(attempt["status"], 503, "{attempt}");
    }
    // Either the last 503 found the next try past the expiry, or the
    // dispatcher found the due retry already expired; both are `expired`
    // with a reason that says so.
    let last_error = job["last_error"].as_str().expect("last_error");
    assert!(last_error.contains("expir"), "{last_error}");
    assert_eq!(job["attempts"].as_u64(), Some(history.len() as u64));

    // The job is terminal: every request the stub saw is one of its
    // attempts, and each left before the expiry (plus the time to cross
    // loopback from a claim made just before it).
    let requests = coax.requests();
    assert_eq!(requests.len(), history.len(), "one request per attempt");
    for r in &requests {
        assert!(
            r.received_at.timestamp_millis() < expires + 500,
            "a request reached Coax long after the expiry: {}",
            r.received_at
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_already_past_its_expiry_expires_without_any_request() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;

    let now = now_ms();
    let mut job = sms("stale");
    job["scheduled_at"] = json!(rfc3339(now - 2000));
    job["expires_at"] = json!(rfc3339(now - 1000));
    let id = daemon.enqueue(job).await;
    // A job enqueued after it proves the dispatcher ran past the stale one.
    let fresh = daemon.enqueue(sms("fresh")).await;

    let job = daemon.wait_for_state(id, "expired").await;
    daemon.wait_for_state(fresh, "sent").await;
    assert_eq!(job["attempts"], 0, "{job:#}");
    assert_eq!(job["history"], json!([]), "{job:#}");
    assert!(
        job["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("expired")),
        "{job:#}"
    );
    let requests = coax.requests();
    assert_eq!(requests.len(), 1, "only the fresh job is sent");
    assert_eq!(tag(&requests[0]), "fresh");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ttl_gives_an_expiry_to_jobs_without_their_own() {
    let coax = CoaxStub::start().await;
    let mut cfg = Cfg::new(&coax);
    cfg.dispatch = r#"default_ttl = "1h""#;
    let daemon = TestDaemon::start_with(&cfg.text()).await;

    let mut plain = sms("plain");
    plain["delay"] = json!("10m");
    let plain = daemon.get(daemon.enqueue(plain).await).await;
    assert_eq!(
        ms(&plain["expires_at"]) - ms(&plain["scheduled_at"]),
        3_600_000,
        "default_ttl counts from scheduled_at: {plain:#}"
    );

    let mut own = sms("own");
    own["delay"] = json!("10m");
    own["ttl"] = json!("5m");
    let own = daemon.get(daemon.enqueue(own).await).await;
    assert_eq!(
        ms(&own["expires_at"]) - ms(&own["scheduled_at"]),
        300_000,
        "a job's own ttl wins over default_ttl: {own:#}"
    );

    let at = now_ms() + 7_200_000;
    let mut explicit = sms("explicit");
    explicit["delay"] = json!("10m");
    explicit["expires_at"] = json!(rfc3339(at));
    let explicit = daemon.get(daemon.enqueue(explicit).await).await;
    assert_eq!(ms(&explicit["expires_at"]), at, "{explicit:#}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescheduling_to_or_past_the_expiry_is_a_conflict() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;

    let mut job = sms("resched");
    job["delay"] = json!("10m");
    job["ttl"] = json!("30m");
    let id = daemon.enqueue(job).await;
    let view = daemon.get(id).await;
    let expires = ms(&view["expires_at"]);

    for at in [expires, expires + 3_600_000] {
        let answer = daemon
            .request(json!({"op": "reschedule", "id": id, "scheduled_at": rfc3339(at)}))
            .await;
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(answer["error"]["code"], "conflict", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("expires")),
            "the refusal names the expiry: {answer}"
        );
    }
    let unchanged = daemon.get(id).await;
    assert_eq!(unchanged["scheduled_at"], view["scheduled_at"]);

    // Before the expiry is fine.
    let earlier = expires - 60_000;
    let answer = daemon
        .request(json!({"op": "reschedule", "id": id, "scheduled_at": rfc3339(earlier)}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(ms(&answer["job"]["scheduled_at"]), earlier);
    assert_eq!(ms(&answer["job"]["expires_at"]), expires);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_expiry_fields_are_refused_naming_the_field() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;

    let cases: [(&str, Value, &str); 6] = [
        ("ttl", json!("soon"), "ttl"),
        ("ttl", json!("0s"), "ttl"),
        ("ttl", json!(3600), "ttl"),
        ("expires_at", json!("tomorrow"), "expires_at"),
        (
            "expires_at",
            json!(rfc3339(now_ms() - 60_000)),
            "expires_at",
        ),
        ("expires_at", json!(17), "expires_at"),
    ];
    for (field, value, named) in cases {
        let mut job = sms("bad-expiry");
        job[field] = value.clone();
        let error = enqueue_refused(&daemon, job).await;
        assert_eq!(error["code"], "invalid_job", "{field}={value}: {error}");
        assert_eq!(error["field"], named, "{field}={value}: {error}");
    }

    let mut both = sms("both");
    both["ttl"] = json!("1h");
    both["expires_at"] = json!(rfc3339(now_ms() + 3_600_000));
    let error = enqueue_refused(&daemon, both).await;
    assert_eq!(error["code"], "invalid_job", "{error}");
    assert_eq!(error["field"], "ttl", "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("expires_at") && message.contains("ttl"),
        "the message names both fields: {error}"
    );

    assert!(coax.requests().is_empty());
    let listed = daemon.request(json!({"op": "list"})).await;
    assert_eq!(listed["jobs"], json!([]), "nothing was stored");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// 2. 429
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_all_sending_until_retry_after_without_using_attempts() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::status(429).with_header("Retry-After", "1"));
    let mut cfg = Cfg::new(&coax);
    cfg.max_delay = "5s";
    let daemon = TestDaemon::start_with(&cfg.text()).await;

    let first = daemon.enqueue(sms("first")).await;
    let paused = wait_for_dispatch(&daemon, "paused_rate_limit").await;
    let until = ms(&paused["dispatch"]["until"]);
    let throttled = coax.requests();
    assert_eq!(throttled.len(), 1);
    let pause_began = throttled[0].received_at.timestamp_millis();
    assert!(
        (900..=3000).contains(&(until - pause_began)),
        "the pause lasts about Retry-After (1s): until {until}, 429 at {pause_began}"
    );

    // A second job falls due during the pause.
    let second = daemon.enqueue(sms("second")).await;
    let during = daemon.get(second).await;
    if now_ms() < until {
        assert_eq!(during["state"], "scheduled", "{during:#}");
        assert_eq!(during["attempts"], 0, "{during:#}");
        let s = stats(&daemon).await;
        assert_eq!(s["dispatch"]["state"], "paused_rate_limit", "{s}");
        // `until` is the monotonic deadline shown on the wall clock, read
        // anew for each answer, so it may move by a millisecond or two.
        let again = ms(&s["dispatch"]["until"]);
        assert!((again - until).abs() <= 5, "{again} against {until}: {s}");
    }

    let second = daemon.wait_for_state(second, "sent").await;
    let first = daemon.wait_for_state(first, "sent").await;
    let requests = coax.requests();
    assert_eq!(requests.len(), 3, "the 429, then one send each");
    for r in &requests[1..] {
        assert!(
            r.received_at.timestamp_millis() >= until,
            "{} was sent at {} during the pause (until {})",
            tag(r),
            r.received_at,
            rfc3339(until)
        );
    }
    let mut tags: Vec<String> = requests[1..].iter().map(tag).collect();
    tags.sort();
    assert_eq!(tags, ["first", "second"]);

    assert_eq!(second["attempts"], 1, "waiting out a pause is no attempt");
    assert_eq!(second["history"].as_array().map(Vec::len), Some(1));
    assert_eq!(first["attempts"], 2, "the 429 itself was an attempt");
    assert_eq!(first["history"][0]["status"], 429);
    assert_eq!(first["history"][0]["decision"], "retry");
    assert_eq!(first["history"][0]["ambiguous"], false);

    let s = stats(&daemon).await;
    assert_eq!(s["dispatch"], json!({"state": "running", "until": null}));
    daemon.stop().await;
}

/// Enqueues a job that meets a 429 with `Retry-After: 2` and returns how
/// long sending stays paused after it, as `stats` reports it (None if it
/// never pauses), plus when the 429 was answered.
async fn pause_after_a_429(cfg: &Cfg<'_>, coax: &CoaxStub) -> (Option<i64>, i64) {
    coax.push(Reply::status(429).with_header("Retry-After", "2"));
    let daemon = TestDaemon::start_with(&cfg.text()).await;
    let id = daemon.enqueue(sms("throttled")).await;
    let job = wait_until("the 429 to be recorded", PATIENCE, || async {
        let job = daemon.get(id).await;
        (job["history"][0]["finished_at"].is_string()).then_some(job)
    })
    .await;
    let answered = ms(&job["history"][0]["finished_at"]);
    // The dispatcher takes in the answer just after recording it; give it
    // a moment, but no longer than a pause that ignored Retry-After lasts.
    let until = wait_until("stats to settle", PATIENCE, || async {
        let s = stats(&daemon).await;
        if s["dispatch"]["state"] == "paused_rate_limit" {
            Some(Some(ms(&s["dispatch"]["until"])))
        } else {
            (now_ms() > answered + 1000).then_some(None)
        }
    })
    .await;
    daemon.stop().await;
    (until, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_a_jobs_last_attempt_still_pauses_sending() {
    let coax = CoaxStub::start().await;
    let mut cfg = Cfg::new(&coax);
    cfg.max_attempts = 1;
    cfg.max_delay = "5s";
    let (until, answered) = pause_after_a_429(&cfg, &coax).await;
    let until = until.expect("sending is paused after a 429, whatever the job's attempts left");
    assert!(until - answered >= 1900, "paused until Retry-After");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pause_lasts_its_whole_retry_after() {
    let coax = CoaxStub::start().await;
    // max_delay (200ms) is shorter than Retry-After (2s): the job's own
    // retry may be capped, but the key stays throttled for 2s.
    let cfg = Cfg::new(&coax);
    let (until, answered) = pause_after_a_429(&cfg, &coax).await;
    let until = until.expect("sending is paused after a 429");
    assert!(
        until - answered >= 1900,
        "paused for {} ms after a 429 with Retry-After: 2",
        until - answered
    );
}

// ---------------------------------------------------------------------------
// 3. Breaker
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_open_the_breaker_until_health_and_one_trial_send() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::status(503));
    coax.set_health(503);
    let mut cfg = Cfg::new(&coax);
    // One attempt each, so the three failures never come back as retries
    // racing the breaker; a 503 still counts towards it.
    cfg.max_attempts = 1;
    cfg.breaker = "failures = 3\nmax_probe_interval = \"1s\"";
    let daemon = TestDaemon::start_with(&cfg.text()).await;

    let answer = daemon
        .request(json!({"op": "enqueue", "jobs": [sms("fail-1"), sms("fail-2"), sms("fail-3")]}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    let open = wait_for_dispatch(&daemon, "breaker_open").await;
    assert!(open["dispatch"]["until"].is_string(), "{open}");
    for result in answer["results"].as_array().expect("results") {
        let job = daemon
            .wait_for_state(result["id"].as_i64().expect("id"), "failed")
            .await;
        assert_eq!(job["history"][0]["status"], 503);
    }

    // Jobs due while the breaker is open are not attempted.
    let waiting: Vec<i64> = {
        let mut ids = Vec::new();
        for i in 1..=4 {
            ids.push(daemon.enqueue(sms(&format!("later-{i}"))).await);
        }
        ids
    };
    let probes = coax.health_checks();
    coax.wait_for_health_checks(probes + 2, PATIENCE).await;
    assert_eq!(
        coax.requests().len(),
        3,
        "nothing is sent while the breaker is open"
    );
    for id in &waiting {
        let job = daemon.get(*id).await;
        assert_eq!(job["state"], "scheduled", "{job:#}");
        assert_eq!(job["attempts"], 0, "{job:#}");
    }
    let s = stats(&daemon).await;
    assert_eq!(s["dispatch"]["state"], "breaker_open", "{s}");

    // Coax recovers.
    coax.set_default(Reply::sent());
    coax.set_health(200);
    let mut sent = Vec::new();
    for id in &waiting {
        sent.push(daemon.wait_for_state(*id, "sent").await);
    }
    let requests = coax.requests();
    assert_eq!(requests.len(), 7, "three failures, then one send each");
    let trial = &requests[3];
    let trial_job = sent
        .iter()
        .find(|j| j["payload"]["message"] == tag(trial).as_str())
        .expect("the trial request belongs to a waiting job");
    let trial_done = ms(&trial_job["history"][0]["finished_at"]);
    for r in &requests[4..] {
        assert!(
            r.received_at.timestamp_millis() >= trial_done,
            "{} went out at {} before the trial send was answered ({})",
            tag(r),
            r.received_at,
            rfc3339(trial_done)
        );
    }
    for job in &sent {
        assert_eq!(job["attempts"], 1, "{job:#}");
    }
    let s = wait_for_dispatch(&daemon, "running").await;
    assert_eq!(s["dispatch"]["until"], Value::Null, "{s}");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Rate limit
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_caps_sends_to_a_burst_then_the_rate() {
    let coax = CoaxStub::start().await;
    let mut cfg = Cfg::new(&coax);
    cfg.dispatch = r#"rate_limit = "5/s""#;
    cfg.concurrency = 16;
    let daemon = TestDaemon::start_with(&cfg.text()).await;

    let jobs: Vec<Value> = (0..15).map(|i| sms(&format!("rl-{i}"))).collect();
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    let requests = coax.wait_for_requests(15, PATIENCE).await;
    assert_eq!(requests.len(), 15);

    // Token bucket: at most 5 at once, then 5 more per second. Arrival
    // times carry loopback jitter, so allow 100 ms of slack.
    let first = requests[0].received_at;
    for (i, r) in requests.iter().enumerate() {
        let elapsed = (r.received_at - first).as_seconds_f64();
        let allowed = 5.0 + 5.0 * (elapsed + 0.1);
        assert!(
            (i + 1) as f64 <= allowed,
            "{} requests had arrived {elapsed:.3}s after the first; at most {allowed:.1} allowed",
            i + 1
        );
    }
    let spread = (requests[14].received_at - first).as_seconds_f64();
    assert!(spread >= 1.9, "15 sends at 5/s took only {spread:.3}s");

    for result in answer["results"].as_array().expect("results") {
        daemon
            .wait_for_state(result["id"].as_i64().expect("id"), "sent")
            .await;
    }
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Coax answering badly
// ---------------------------------------------------------------------------

/// Sends one job whose first answer is `bad` and whose retry succeeds;
/// returns the job once sent.
async fn first_answer_then_sent(cfg: &Cfg<'_>, coax: &CoaxStub, bad: Reply) -> Value {
    coax.push(bad);
    let daemon = TestDaemon::start_with(&cfg.text()).await;
    let id = daemon.enqueue(sms("bad-answer")).await;
    let job = daemon.wait_for_state(id, "sent").await;
    daemon.stop().await;
    assert_eq!(job["attempts"], 2, "retried once: {job:#}");
    assert_eq!(job["history"][0]["decision"], "retry", "{job:#}");
    assert_eq!(job["history"][1]["decision"], "sent", "{job:#}");
    assert_eq!(coax.requests().len(), 2);
    let last_error = job["last_error"].as_str().unwrap_or_default();
    let first_error = job["history"][0]["error"].as_str().unwrap_or_default();
    assert!(
        !first_error.is_empty() && last_error.contains(first_error),
        "last_error keeps the first attempt's reason: {job:#}"
    );
    assert!(
        last_error.len() < 400,
        "last_error is a sentence, not a dump: {last_error:?}"
    );
    job
}

fn last_error(job: &Value) -> &str {
    job["last_error"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_html_page_is_retried_as_ambiguous() {
    let coax = CoaxStub::start().await;
    let page = format!(
        "<!DOCTYPE html>\n<html><head><title>Welcome</title></head>\n<body>{}</body></html>",
        "<p>Maintenance portal</p>".repeat(200)
    );
    let job =
        first_answer_then_sent(&Cfg::new(&coax), &coax, Reply::raw(200, "text/html", page)).await;
    assert_eq!(job["history"][0]["status"], 200);
    assert_eq!(job["history"][0]["ambiguous"], true, "{job:#}");
    let e = last_error(&job);
    assert!(e.contains("200") && e.contains("not JSON"), "{e}");
    assert!(e.contains("<html>"), "an excerpt of what came: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_without_success_is_retried_as_ambiguous() {
    let coax = CoaxStub::start().await;
    let job = first_answer_then_sent(
        &Cfg::new(&coax),
        &coax,
        Reply::json(200, json!({"message": "queued", "body": {"id": 1}})),
    )
    .await;
    assert_eq!(job["history"][0]["ambiguous"], true, "{job:#}");
    let e = last_error(&job);
    assert!(e.contains("200") && e.contains("success"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_is_retried_as_ambiguous() {
    let coax = CoaxStub::start().await;
    let job = first_answer_then_sent(&Cfg::new(&coax), &coax, Reply::truncated()).await;
    assert_eq!(job["history"][0]["ambiguous"], true, "{job:#}");
    let e = last_error(&job);
    assert!(e.contains("200") && e.contains("incomplete"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_1_mib_is_recorded_as_too_large() {
    let coax = CoaxStub::start().await;
    let body = vec![b' '; 2 * 1024 * 1024];
    let job = first_answer_then_sent(
        &Cfg::new(&coax),
        &coax,
        Reply::raw(200, "application/json", body),
    )
    .await;
    assert_eq!(job["history"][0]["ambiguous"], true, "{job:#}");
    let e = last_error(&job);
    assert!(e.contains("larger than") && e.contains("1048576"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_an_oversized_body_stops_after_1_mib() {
    // 2 MiB of a 4 MiB body arrive, then the server goes silent. A reader
    // that stops at 1 MiB reports "too large" at once; one that read on
    // would hang until request_timeout and report a timeout instead.
    let coax = CoaxStub::start().await;
    let mut cfg = Cfg::new(&coax);
    cfg.request_timeout = "10s";
    let body = vec![b' '; 4 * 1024 * 1024];
    let job = first_answer_then_sent(
        &cfg,
        &coax,
        Reply::raw(200, "application/json", body).with_behaviour(Behaviour::StallBody),
    )
    .await;
    let e = last_error(&job);
    assert!(e.contains("larger than"), "{e}");
    assert!(!e.contains("timed out"), "{e}");
    let latency = job["history"][0]["latency_ms"].as_u64().expect("latency");
    assert!(
        latency < 10_000,
        "the read stopped before request_timeout: {latency} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_slower_than_request_timeout_are_an_ambiguous_timeout() {
    let coax = CoaxStub::start().await;
    let mut cfg = Cfg::new(&coax);
    cfg.request_timeout = "300ms";
    let job = first_answer_then_sent(
        &cfg,
        &coax,
        Reply::sent().with_delay(Duration::from_secs(3)),
    )
    .await;
    assert_eq!(job["history"][0]["status"], Value::Null, "{job:#}");
    assert_eq!(job["history"][0]["ambiguous"], true, "{job:#}");
    let e = last_error(&job);
    assert!(e.contains("timed out"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_502_from_a_proxy_is_retried_and_not_ambiguous() {
    let coax = CoaxStub::start().await;
    let page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
                <center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n\
                </body>\r\n</html>\r\n";
    let job =
        first_answer_then_sent(&Cfg::new(&coax), &coax, Reply::raw(502, "text/html", page)).await;
    assert_eq!(job["history"][0]["status"], 502);
    assert_eq!(job["history"][0]["ambiguous"], false, "{job:#}");
    let e = last_error(&job);
    assert!(e.contains("502"), "{e}");
    assert!(e.contains("Bad Gateway"), "{e}");
}

// ---------------------------------------------------------------------------
// 6. Socket peers
// ---------------------------------------------------------------------------

/// Our effective uid and gid, from /proc/self/status (no libc here).
fn our_ids() -> (u32, u32) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| -> u32 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line"));
        // Real, effective, saved, filesystem: SO_PEERCRED reports the effective.
        line.split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad {name} line: {line}"))
    };
    (field("Uid:"), field("Gid:"))
}

fn some_other_id(ours: u32) -> u32 {
    if ours == 4242 { 4243 } else { 4242 }
}

/// Connects, sends nothing, and reads everything until the daemon closes.
async fn read_until_closed(socket: &Path) -> String {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        let mut out = String::new();
        stream
            .read_to_string(&mut out)
            .expect("the daemon answers and closes");
        out
    })
    .await
    .expect("client thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_not_in_allowed_uids_gets_forbidden_and_is_closed() {
    let coax = CoaxStub::start().await;
    let (uid, gid) = our_ids();
    let mut cfg = Cfg::new(&coax);
    let socket = format!(
        "allowed_uids = [{}]\nallowed_gids = [{}]",
        some_other_id(uid),
        some_other_id(gid)
    );
    cfg.socket = &socket;
    let daemon = TestDaemon::start_with(&cfg.text()).await;

    let out = read_until_closed(&daemon.socket).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line, then closed: {out:?}");
    let answer: Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("uid={uid}"))),
        "the refusal names the peer: {answer}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_uid_or_gid_is_listed_is_served() {
    let coax = CoaxStub::start().await;
    let (uid, gid) = our_ids();

    let by_uid = format!("allowed_uids = [{}, {uid}]", some_other_id(uid));
    let by_gid = format!(
        "allowed_uids = [{}]\nallowed_gids = [{gid}]",
        some_other_id(uid)
    );
    for socket in [by_uid, by_gid] {
        let mut cfg = Cfg::new(&coax);
        cfg.socket = &socket;
        let daemon = TestDaemon::start_with(&cfg.text()).await;
        let answer = request_at(&daemon.socket, json!({"op": "ping"})).await;
        assert_eq!(answer, json!({"ok": true}), "with {socket}");
        let id = daemon.enqueue(sms("allowed")).await;
        daemon.wait_for_state(id, "sent").await;
        daemon.stop().await;
    }
}

// ---------------------------------------------------------------------------
// 7. Secrets
// ---------------------------------------------------------------------------

const FILE_KEY: &str = "ck_live_FILEKEY_d41d8cd98f00b204";
const CRED_KEY: &str = "ck_live_CREDKEY_9e107d9d372bb682";

fn key_config(dir: &Path, api_key_file: Option<&str>) -> std::path::PathBuf {
    let key_line = api_key_file
        .map(|f| format!("api_key_file = \"{f}\""))
        .unwrap_or_default();
    let text = format!(
        r#"
[coax]
base_url = "http://127.0.0.1:9"
{key_line}

[store]
path = "queue.db"

[socket]
path = "coax.sock"
"#
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn write_key(path: &Path, key: &str, mode: u32) {
    std::fs::write(path, format!("{key}\n")).expect("write key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_key_file_readable_by_others_is_refused_without_showing_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_key(&dir.path().join("api-key"), FILE_KEY, 0o644);
    let config = key_config(dir.path(), Some("api-key"));
    let no_env = |_: &str| None;

    let err = Config::load_with_env(&config, &no_env).expect_err("mode 0644 is refused");
    let shown = err.to_string();
    assert!(shown.contains("chmod 600"), "{shown}");
    assert!(shown.contains("api-key"), "names the file: {shown}");
    assert!(!shown.contains(FILE_KEY), "{shown}");
    assert!(!format!("{err:?}").contains(FILE_KEY), "{err:?}");

    for mode in [0o640, 0o604, 0o660] {
        std::fs::set_permissions(
            dir.path().join("api-key"),
            std::fs::Permissions::from_mode(mode),
        )
        .expect("chmod");
        let err = Config::load_with_env(&config, &no_env).expect_err("group/other bits refused");
        assert!(err.to_string().contains("chmod 600"), "{mode:o}: {err}");
    }

    std::fs::set_permissions(
        dir.path().join("api-key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let loaded = Config::load_with_env(&config, &no_env).expect("mode 0600 loads");
    assert_eq!(loaded.coax.api_key.expose(), FILE_KEY);
    let debug = format!("{loaded:?}");
    assert!(!debug.contains(FILE_KEY), "{debug}");
}

#[test]
fn the_systemd_credential_is_used_and_never_shown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = tempfile::tempdir().expect("credentials dir");
    write_key(&creds.path().join("coax-api-key"), CRED_KEY, 0o600);
    let creds_path = creds.path().to_str().expect("utf-8 path").to_owned();
    let env = move |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| creds_path.clone());

    // Alone.
    let config = key_config(dir.path(), None);
    let loaded = Config::load_with_env(&config, &env).expect("credential loads");
    assert_eq!(loaded.coax.api_key.expose(), CRED_KEY);
    assert!(!format!("{loaded:?}").contains(CRED_KEY));

    // It wins over a key file.
    write_key(&dir.path().join("api-key"), FILE_KEY, 0o600);
    let config = key_config(dir.path(), Some("api-key"));
    let loaded = Config::load_with_env(&config, &env).expect("credential loads");
    assert_eq!(loaded.coax.api_key.expose(), CRED_KEY);
    let debug = format!("{loaded:?}");
    assert!(
        !debug.contains(CRED_KEY) && !debug.contains(FILE_KEY),
        "{debug}"
    );

    // The environment variable wins over both.
    let creds_path = creds.path().to_str().expect("utf-8 path").to_owned();
    let env_key = move |name: &str| match name {
        "COAX_API_KEY" => Some("ck_env_key".to_owned()),
        "CREDENTIALS_DIRECTORY" => Some(creds_path.clone()),
        _ => None,
    };
    let loaded = Config::load_with_env(&config, &env_key).expect("env key loads");
    assert_eq!(loaded.coax.api_key.expose(), "ck_env_key");

    // A credential that is not a usable key is reported without its text.
    let bad = "ck_two\nlines_SECRETPART";
    std::fs::write(creds.path().join("coax-api-key"), bad).expect("write");
    let err = Config::load_with_env(&config, &env).expect_err("two-line key refused");
    let shown = format!("{err} {err:?}");
    assert!(
        shown.contains("coax-api-key"),
        "names the credential: {shown}"
    );
    assert!(
        !shown.contains("SECRETPART") && !shown.contains("ck_two"),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------
// 8. Property tests
// ---------------------------------------------------------------------------

mod properties {
    use coax_scheduler::job::{self, Kind};
    use coax_scheduler::protocol::parse_request;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use serde_json::{Map, Value};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const CASES: u32 = 512;

    fn runner() -> TestRunner {
        TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        })
    }

    /// Strings that mean something to the validator, mixed with noise.
    fn interesting_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,24}",
            "[A-Za-z0-9_-]{0,70}",
            "[0-9]{0,25}",
            "[0-9]{1,22}(ns|ms|s|m|h|d|w|y|min|sec)",
            "[0-9]{1,5}(-[0-9]{1,3}){2}T[0-9]{1,2}(:[0-9]{1,2}){2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?",
            prop::sample::select(vec![
                "",
                " ",
                "sms",
                "email",
                "whatsapp",
                "../admin",
                "a/b",
                "%2e",
                "message",
                "review_request",
                "coax_schedule",
                "fax",
                "1h",
                "0s",
                "6h",
                "90s",
                "2026-01-31T09:00:00Z",
                "9999-12-31T23:59:59Z",
                "0000-01-01T00:00:00Z",
                "1970-01-01T00:00:00+23:59",
                "18446744073709551615s",
                "99999999999y",
                "campaign is paused",
                "\u{0}",
                "é",
                "١٢٣",
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (0u64..100_000).prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ]
    }

    /// Arbitrary JSON, nested a few levels at most.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number(),
            interesting_string().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((interesting_string(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    const JOB_FIELDS: &[&str] = &[
        "kind",
        "channel",
        "enquiry_id",
        "scheduled_at",
        "delay",
        "expires_at",
        "ttl",
        "key",
        "payload",
    ];

    const PAYLOAD_FIELDS: &[&str] = &[
        "message",
        "type",
        "sub_type",
        "attachment_ids",
        "contact_id",
        "contact_ids",
        "team_user_id",
        "business_location_id",
        "location_id",
        "createActivity",
        "activity_type",
        "activity_description",
        "is_bot",
        "enquiry_id",
        "enquiry_status",
        "campaign_id",
        "name",
        "email",
        "phone",
        "avatar",
        "company_name",
        "address",
        "do_not_update",
        "suppress_socket_events",
        "channel",
        "review_types",
        "customer_id",
        "scheduled_at",
        "colour",
    ];

    /// A value for a field: often a plausible one, sometimes anything.
    fn field_value(field: &'static str) -> BoxedStrategy<Value> {
        let plausible: BoxedStrategy<Value> = match field {
            "kind" => prop::sample::select(vec!["message", "review_request", "coax_schedule"])
                .prop_map(Value::from)
                .boxed(),
            "channel" => prop_oneof![
                4 => prop::sample::select(vec!["sms", "email", "whatsapp"]).prop_map(Value::from),
                1 => interesting_string().prop_map(Value::String),
            ]
            .boxed(),
            "enquiry_id" => prop_oneof![
                "[0-9]{1,21}".prop_map(Value::String),
                any::<u64>().prop_map(Value::from),
                Just(Value::Null),
            ]
            .boxed(),
            "payload" => (
                prop::option::weighted(0.8, interesting_string()),
                prop::option::weighted(0.6, interesting_string()),
                prop::collection::vec(
                    (
                        prop::sample::select(PAYLOAD_FIELDS),
                        prop_oneof![
                            3 => interesting_string().prop_map(Value::String),
                            1 => json_value(),
                        ],
                    ),
                    0..4,
                ),
            )
                .prop_map(|(message, phone, extra)| {
                    let mut map: Map<String, Value> =
                        extra.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                    if let Some(m) = message {
                        map.insert("message".into(), Value::String(m));
                    }
                    if let Some(p) = phone {
                        map.insert("phone".into(), Value::String(p));
                    }
                    Value::Object(map)
                })
                .boxed(),
            "scheduled_at" | "expires_at" => prop_oneof![
                3 => (1_577_836_800_000i64..4_102_444_800_000).prop_map(|ms| {
                    Value::String(
                        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                            .expect("in range")
                            .to_rfc3339(),
                    )
                }),
                1 => interesting_string().prop_map(Value::String),
            ]
            .boxed(),
            "delay" | "ttl" => prop_oneof![
                3 => "[0-9]{1,4}(ms|s|m|h|d)".prop_map(Value::String),
                1 => interesting_string().prop_map(Value::String),
            ]
            .boxed(),
            "key" => prop_oneof![
                3 => "[a-z0-9-]{1,30}".prop_map(Value::String),
                1 => interesting_string().prop_map(Value::String),
            ]
            .boxed(),
            _ => interesting_string().prop_map(Value::String).boxed(),
        };
        prop_oneof![9 => plausible, 1 => json_value()].boxed()
    }

    /// Objects built from the real job field names.
    fn job_object() -> impl Strategy<Value = Value> {
        let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = JOB_FIELDS
            .iter()
            .map(|f| {
                let present = match *f {
                    "kind" | "channel" | "payload" => 0.97,
                    _ => 0.2,
                };
                prop::option::weighted(present, field_value(f))
                    .prop_map(move |v| v.map(|v| (f.to_string(), v)))
                    .boxed()
            })
            .collect();
        fields.prop_map(|kv| Value::Object(kv.into_iter().flatten().collect()))
    }

    fn now() -> impl Strategy<Value = i64> {
        prop_oneof![
            8 => 0i64..4_102_444_800_000,
            1 => any::<i64>(),
            1 => Just(i64::MAX),
        ]
    }

    fn default_ttl() -> impl Strategy<Value = Option<Duration>> {
        prop::option::of(prop_oneof![
            (1u64..86_400_000).prop_map(Duration::from_millis),
            any::<u64>().prop_map(Duration::from_secs),
        ])
    }

    fn safe(text: &str) -> bool {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    /// Checks what an accepted job promises; returns a description of the
    /// first broken promise.
    fn accepted_job_is_sound(v: &Value, job: &job::NewJob) -> Result<(), String> {
        if !safe(&job.channel) || job.channel.len() > 64 {
            return Err(format!("unsafe channel {:?} from {v}", job.channel));
        }
        if let Some(e) = &job.enquiry_id
            && (e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!("enquiry_id {e:?} is not digits, from {v}"));
        }
        if let Some(at) = job.expires_at
            && at <= job.scheduled_at
        {
            return Err(format!("expires_at {at} not after scheduled_at, from {v}"));
        }
        let on_enquiry = job.enquiry_id.is_some();
        if let Some(k) = job
            .payload
            .keys()
            .find(|k| !job::payload_field_allowed(job.kind, on_enquiry, k))
        {
            return Err(format!(
                "payload field {k:?} not allowed on its route, from {v}"
            ));
        }
        if job.kind == Kind::ReviewRequest
            && job.payload.get("channel") != Some(&Value::String(job.channel.clone()))
        {
            return Err(format!("review payload channel differs, from {v}"));
        }
        Ok(())
    }

    #[test]
    fn parse_request_never_panics_on_arbitrary_bytes() {
        runner()
            .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
                let _ = parse_request(&bytes);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn parse_request_never_panics_on_request_shaped_json() {
        let ops = prop::sample::select(vec![
            "enqueue",
            "get",
            "list",
            "cancel",
            "reschedule",
            "requeue",
            "stats",
            "ping",
            "bogus",
        ]);
        let arg = prop::sample::select(vec![
            "id",
            "key",
            "job",
            "jobs",
            "state",
            "limit",
            "scheduled_at",
            "extra",
        ]);
        let request =
            (ops, prop::collection::vec((arg, json_value()), 0..4)).prop_map(|(op, args)| {
                let mut map = Map::new();
                map.insert("op".into(), Value::from(op));
                for (k, v) in args {
                    map.insert(k.to_owned(), v);
                }
                Value::Object(map).to_string()
            });
        runner()
            .run(&request, |line| {
                let _ = parse_request(line.as_bytes());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn validate_never_panics_on_arbitrary_json() {
        runner()
            .run(&(json_value(), now()), |(v, now)| {
                if let Ok(job) = job::validate(&v, now, &job::Rules::default()) {
                    accepted_job_is_sound(&v, &job).map_err(TestCaseError::fail)?;
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn validate_accepts_only_path_safe_jobs_built_from_real_fields() {
        let accepted = AtomicUsize::new(0);
        runner()
            .run(&(job_object(), now(), default_ttl()), |(v, now, ttl)| {
                for default_ttl in [None, ttl] {
                    if let Ok(job) = job::validate(
                        &v,
                        now,
                        &job::Rules {
                            default_ttl,
                            ..Default::default()
                        },
                    ) {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        accepted_job_is_sound(&v, &job).map_err(TestCaseError::fail)?;
                    }
                }
                Ok(())
            })
            .unwrap();
        // The generator must reach the accepting paths for the property to
        // mean anything.
        assert!(
            accepted.load(Ordering::Relaxed) >= 20,
            "only {} of {} generated jobs were accepted",
            accepted.load(Ordering::Relaxed),
            2 * CASES
        );
    }
}
