//! Dispatch outcomes, with the daemon in-process against the Coax stub: the
//! six routes (method, path, key, body), every row of the outcome table
//! (paused campaign, success, `success:false`, 401/403 auth pause,
//! retryable and final statuses, exhausted retries, `Retry-After`, and the
//! transport failures: refused, timeout, reset, proxy HTML, non-JSON 2xx),
//! the per-attempt history, and `on_ambiguous = "hold"` with requeue and
//! cancel of a held job.

use crate::helpers::coax::{CoaxStub, Recorded, Reply};
use crate::helpers::daemon::{TEST_KEY, TestDaemon, config_text};
use crate::helpers::{PATIENCE, wait_until};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::net::TcpSocket;

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// A customer message job on the `sms` channel.
fn sms(text: &str) -> Value {
    json!({
        "kind": "message", "channel": "sms",
        "payload": {"message": text, "phone": "+15550100"}
    })
}

/// `base` with the line `key = ...` replaced by `key = "value"`. Panics if
/// the key is not present exactly once, so a changed default config cannot
/// silently make a test meaningless.
fn with_setting(base: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key} = ");
    let mut found = 0;
    let lines: Vec<String> = base
        .lines()
        .map(|line| {
            if line.trim_start().starts_with(&prefix) {
                found += 1;
                format!("{key} = \"{value}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(
        found, 1,
        "config key {key} appears {found} times in:\n{base}"
    );
    lines.join("\n")
}

/// Milliseconds since the epoch of an RFC 3339 time in a view.
fn ms(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("expected an RFC 3339 string, got {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

fn utc(value: &Value) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms(value)).expect("time in range")
}

async fn stats(daemon: &TestDaemon) -> Value {
    let answer = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(answer["ok"], true, "stats failed: {answer}");
    answer
}

fn history(view: &Value) -> &Vec<Value> {
    view["history"]
        .as_array()
        .unwrap_or_else(|| panic!("history is not an array: {view}"))
}

/// Checks one attempt record: its number, decision, times and latency, and
/// that it carries either an HTTP status or a transport error.
fn check_entry(entry: &Value, attempt: u64, decision: &str) {
    assert_eq!(entry["attempt"], attempt, "attempt number in {entry}");
    assert_eq!(entry["decision"], decision, "decision in {entry}");
    let started = ms(&entry["started_at"]);
    let finished = ms(&entry["finished_at"]);
    assert!(finished >= started, "finished before it started: {entry}");
    let latency = entry["latency_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("latency_ms missing in {entry}"));
    assert!(
        (0..=finished - started + 5).contains(&latency),
        "latency_ms {latency} does not fit between started_at and finished_at: {entry}"
    );
    let has_status = entry["status"].is_u64();
    let has_error = entry["error"].as_str().is_some_and(|e| !e.is_empty());
    assert!(
        has_status || has_error,
        "an attempt needs a status or an error: {entry}"
    );
}

/// Checks that `request` is the PUT the daemon should make to `path`.
fn assert_put(request: &Recorded, path: &str, body: &Value) {
    assert_eq!(request.method, "PUT");
    assert_eq!(request.path, path);
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
    let content_type = request.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    assert_eq!(&request.json(), body, "body sent to {path}");
}

/// Enqueues `job` on a fresh daemon whose Coax answers `reply`, waits until
/// it is sent, and returns the one request made and the job's view.
async fn deliver(job: Value, reply: Reply) -> (Recorded, Value) {
    let coax = CoaxStub::start().await;
    coax.set_default(reply);
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon.enqueue(job).await;
    let view = daemon.wait_for_state(id, "sent").await;
    let requests = coax.requests();
    assert_eq!(requests.len(), 1, "exactly one request: {requests:?}");
    daemon.stop().await;
    (requests[0].clone(), view)
}

/// The first answer is `first`, then Coax accepts: the job must be retried
/// once and sent, the retry no earlier than the recorded retry time.
/// Returns the view of the sent job.
async fn retried_then_sent(config: impl FnOnce(&str) -> String, first: Reply) -> Value {
    let coax = CoaxStub::start().await;
    coax.push(first);
    let daemon = TestDaemon::start_with(&config(&coax.base_url())).await;
    let id = daemon.enqueue(sms("retry me")).await;
    let view = daemon.wait_for_state(id, "sent").await;
    let requests = coax.requests();
    assert_eq!(requests.len(), 2, "one failed try and one retry");
    assert_eq!(
        requests[0].json(),
        requests[1].json(),
        "the same body again"
    );
    assert_eq!(requests[0].path, requests[1].path);
    assert_eq!(view["attempts"], 2, "{view}");
    let h = history(&view);
    assert_eq!(h.len(), 2, "{view}");
    check_entry(&h[0], 1, "retry");
    check_entry(&h[1], 2, "sent");
    assert_eq!(h[1]["status"], 200);
    // After a retry the job's scheduled_at is the retry time, and the second
    // request must not leave before it.
    assert!(
        requests[1].received_at >= utc(&view["scheduled_at"]),
        "retry sent at {} before its time {}",
        requests[1].received_at,
        view["scheduled_at"]
    );
    daemon.stop().await;
    view
}

fn default_config(url: &str) -> String {
    config_text(url, "", "")
}

/// A config with a shorter request timeout, so timeouts are quicker. 1s
/// rather than less: the retry that follows must not itself time out on a
/// loaded machine.
fn quick_timeout_config(url: &str, dispatch: &str) -> String {
    with_setting(&config_text(url, dispatch, ""), "request_timeout", "1s")
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_customer_message_is_put_to_the_send_route() {
    let payload = json!({"message": "Hello", "phone": "+15550100", "business_location_id": 3});
    let (request, view) = deliver(
        json!({"kind": "message", "channel": "sms", "payload": payload}),
        Reply::sent(),
    )
    .await;
    assert_put(&request, "/api/v2/message/send/sms", &payload);
    assert_eq!(view["result"]["message"], "Message sent successfully");
}

#[tokio::test]
async fn an_enquiry_message_is_put_to_the_enquiry_send_route() {
    let payload = json!({"message": "Following up", "team_user_id": 5, "type": "text"});
    let (request, _) = deliver(
        json!({"kind": "message", "channel": "whatsapp", "enquiry_id": "8812", "payload": payload}),
        Reply::sent(),
    )
    .await;
    assert_put(&request, "/api/v2/message/8812/send/whatsapp", &payload);
}

#[tokio::test]
async fn a_customer_coax_schedule_passes_scheduled_at_through_unchanged() {
    // An odd but plausible format: the daemon must not normalise it.
    let payload = json!({
        "message": "See you tomorrow", "email": "ann@example.com",
        "customer_id": 77, "scheduled_at": "2030-05-01 09:30:00 +0200"
    });
    let (request, _) = deliver(
        json!({"kind": "coax_schedule", "channel": "email", "payload": payload}),
        Reply::sent(),
    )
    .await;
    assert_put(&request, "/api/v2/message/schedule/email", &payload);
    assert_eq!(request.json()["scheduled_at"], "2030-05-01 09:30:00 +0200");
}

#[tokio::test]
async fn an_enquiry_coax_schedule_passes_scheduled_at_through_unchanged() {
    let payload = json!({"message": "Reminder", "scheduled_at": "2030-05-01T07:30:00.000+00:00"});
    let (request, _) = deliver(
        json!({"kind": "coax_schedule", "channel": "sms", "enquiry_id": 31, "payload": payload}),
        Reply::sent(),
    )
    .await;
    assert_put(&request, "/api/v2/message/31/schedule/sms", &payload);
    assert_eq!(
        request.json()["scheduled_at"],
        "2030-05-01T07:30:00.000+00:00"
    );
}

#[tokio::test]
async fn a_customer_review_request_carries_the_channel_in_the_body() {
    let payload = json!({"phone": "+15550199", "name": "Bo", "review_types": ["google"]});
    let (request, view) = deliver(
        json!({"kind": "review_request", "channel": "sms", "payload": payload}),
        Reply::review_sent(),
    )
    .await;
    let mut body = payload.clone();
    body["channel"] = json!("sms");
    assert_put(&request, "/api/v2/message/ask-for-review", &body);
    assert_eq!(view["result"]["message"], "Sent review request!");
    assert_eq!(view["result"]["body"]["enquiry"]["id"], 4242);
}

#[tokio::test]
async fn an_enquiry_review_request_carries_the_channel_in_the_body() {
    let payload = json!({"message": "How did we do?", "business_location_id": 2});
    let (request, _) = deliver(
        json!({"kind": "review_request", "channel": "email", "enquiry_id": "907", "payload": payload}),
        Reply::review_sent(),
    )
    .await;
    let mut body = payload.clone();
    body["channel"] = json!("email");
    assert_put(&request, "/api/v2/message/907/ask-for-review", &body);
}

// ---------------------------------------------------------------------------
// 2xx answers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_paused_campaign_is_skipped_with_the_reason_and_not_retried() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::paused());
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon
        .enqueue(json!({
            "kind": "message", "channel": "sms",
            "payload": {"message": "Promo", "phone": "+15550100", "campaign_id": 12}
        }))
        .await;
    let view = daemon.wait_for_state(id, "skipped").await;
    let last_error = view["last_error"].as_str().unwrap_or("");
    assert!(
        last_error.contains("Campaign is paused"),
        "the reason is recorded: {view}"
    );
    assert_eq!(view["attempts"], 1);
    let h = history(&view);
    assert_eq!(h.len(), 1, "{view}");
    check_entry(&h[0], 1, "skipped");
    assert_eq!(h[0]["status"], 200);
    assert_eq!(
        view["result"]["message"],
        "Campaign is paused, message not sent."
    );
    assert_eq!(coax.requests().len(), 1, "no retry");
    let s = stats(&daemon).await;
    assert_eq!(s["counts"]["skipped"], 1, "{s}");
    assert_eq!(s["counts"]["sent"], 0, "{s}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_2xx_success_is_sent_and_keeps_status_message_and_body() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::json(
        201,
        json!({
            "success": true, "message": "Message sent successfully",
            "body": {"enquiry": {"id": 9001, "status": "open"}, "customer": {"id": 55}}
        }),
    ));
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon.enqueue(sms("Hi")).await;
    let view = daemon.wait_for_state(id, "sent").await;
    assert_eq!(
        view["result"],
        json!({
            "status": 201,
            "message": "Message sent successfully",
            "body": {"enquiry": {"id": 9001, "status": "open"}, "customer": {"id": 55}}
        })
    );
    assert_eq!(view["attempts"], 1);
    let h = history(&view);
    assert_eq!(h.len(), 1);
    check_entry(&h[0], 1, "sent");
    assert_eq!(h[0]["status"], 201);
    assert_eq!(h[0]["ambiguous"], false);
    assert_eq!(coax.requests().len(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn a_2xx_with_success_false_fails_without_retry_naming_coax_message() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::refused("The customer has opted out of SMS"));
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon.enqueue(sms("Hi")).await;
    let view = daemon.wait_for_state(id, "failed").await;
    let last_error = view["last_error"].as_str().unwrap_or("");
    assert!(
        last_error.contains("The customer has opted out of SMS"),
        "last_error names Coax's message: {view}"
    );
    assert_eq!(view["attempts"], 1);
    let h = history(&view);
    assert_eq!(h.len(), 1);
    check_entry(&h[0], 1, "failed");
    assert_eq!(view["result"]["status"], 200);
    assert_eq!(coax.requests().len(), 1, "no retry");
    daemon.stop().await;
}

#[tokio::test]
async fn a_2xx_that_is_not_json_is_retried_as_ambiguous() {
    let view = retried_then_sent(default_config, Reply::raw(200, "text/plain", "OK")).await;
    let first = &history(&view)[0];
    assert_eq!(first["status"], 200);
    assert_eq!(first["ambiguous"], true, "{first}");
}

#[tokio::test]
async fn a_2xx_with_a_cut_off_body_is_retried_as_ambiguous() {
    let view = retried_then_sent(default_config, Reply::truncated()).await;
    let first = &history(&view)[0];
    assert_eq!(first["status"], 200);
    assert_eq!(first["ambiguous"], true, "{first}");
}

// ---------------------------------------------------------------------------
// 401 / 403: the key was rejected
// ---------------------------------------------------------------------------

/// A rejected key: the job goes back without using an attempt, sending
/// pauses for `auth_pause` (2s here so the pause is observable on a loaded
/// machine), a job due during the pause waits, and both go out after it.
async fn key_rejection_pauses_sending(code: u16) {
    let coax = CoaxStub::start().await;
    coax.push(Reply::status(code));
    let config = with_setting(&default_config(&coax.base_url()), "auth_pause", "2s");
    let daemon = TestDaemon::start_with(&config).await;
    let first = daemon.enqueue(sms("first")).await;
    coax.wait_for_requests(1, PATIENCE).await;

    let until = wait_until("dispatch to pause for auth", PATIENCE, || async {
        let s = stats(&daemon).await;
        (s["dispatch"]["state"] == "paused_auth").then(|| s["dispatch"]["until"].clone())
    })
    .await;
    let until_ms = ms(&until);

    // The gate pauses as the answer is read, and the job is given back
    // in the store call that follows.
    let view = wait_until("the job to be given back", PATIENCE, || async {
        let view = daemon.get(first).await;
        (view["state"] != "sending").then_some(view)
    })
    .await;
    assert_eq!(view["state"], "scheduled", "{view}");
    assert_eq!(view["attempts"], 0, "no attempt used: {view}");
    let h = history(&view);
    assert_eq!(h.len(), 1, "{view}");
    check_entry(&h[0], 1, "paused_auth");
    assert_eq!(h[0]["status"], code);

    let second = daemon.enqueue(sms("second")).await;
    let second_view = daemon.get(second).await;
    assert!(
        ms(&second_view["created_at"]) < until_ms,
        "the second job must be enqueued during the pause (created {}, pause until {until})",
        second_view["created_at"]
    );
    // Counted before asking, so if the pause is still on, nothing new can
    // have gone out when the count was taken.
    let count = coax.requests().len();
    let s = stats(&daemon).await;
    if s["dispatch"]["state"] == "paused_auth" {
        assert_eq!(count, 1, "nothing is sent during the pause");
    }

    let first_view = daemon.wait_for_state(first, "sent").await;
    daemon.wait_for_state(second, "sent").await;
    let requests = coax.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let until_utc = utc(&until);
    for r in &requests[1..] {
        assert!(
            r.received_at >= until_utc,
            "a request at {} went out during the pause (until {until})",
            r.received_at
        );
    }
    assert_eq!(first_view["attempts"], 1, "{first_view}");
    let h = history(&first_view);
    assert_eq!(h.len(), 2);
    check_entry(&h[1], 2, "sent");
    let s = stats(&daemon).await;
    assert_eq!(s["dispatch"]["state"], "running", "{s}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_pauses_sending_without_using_an_attempt() {
    key_rejection_pauses_sending(401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_pauses_sending_without_using_an_attempt() {
    key_rejection_pauses_sending(403).await;
}

// ---------------------------------------------------------------------------
// Other statuses
// ---------------------------------------------------------------------------

async fn status_is_retried_then_sent(code: u16) {
    let view = retried_then_sent(default_config, Reply::status(code)).await;
    let first = &history(&view)[0];
    assert_eq!(first["status"], code);
    assert_eq!(first["ambiguous"], false, "{first}");
    // Backoff for the first retry: base_delay 50ms jittered into [25, 50].
    let wait = ms(&view["scheduled_at"]) - ms(&first["finished_at"]);
    assert!(
        (25..=50).contains(&wait),
        "retry {wait}ms after the answer: {view}"
    );
    let last_error = view["last_error"].as_str().unwrap_or("");
    assert!(last_error.contains(&code.to_string()), "{view}");
}

async fn status_fails_after_one_request(code: u16) {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::status(code));
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon.enqueue(sms("doomed")).await;
    let view = daemon.wait_for_state(id, "failed").await;
    assert_eq!(coax.requests().len(), 1, "no retry after {code}");
    assert_eq!(view["attempts"], 1);
    let h = history(&view);
    assert_eq!(h.len(), 1);
    check_entry(&h[0], 1, "failed");
    assert_eq!(h[0]["status"], code);
    let last_error = view["last_error"].as_str().unwrap_or("");
    assert!(last_error.contains(&code.to_string()), "{view}");
    assert_eq!(view["result"]["status"], code);
    daemon.stop().await;
}

macro_rules! retried {
    ($($name:ident: $code:expr,)*) => {$(
        #[tokio::test]
        async fn $name() {
            status_is_retried_then_sent($code).await;
        }
    )*};
}

macro_rules! final_failure {
    ($($name:ident: $code:expr,)*) => {$(
        #[tokio::test]
        async fn $name() {
            status_fails_after_one_request($code).await;
        }
    )*};
}

retried! {
    a_408_is_retried_then_sent: 408,
    a_425_is_retried_then_sent: 425,
    a_429_is_retried_then_sent: 429,
    a_500_is_retried_then_sent: 500,
    a_502_is_retried_then_sent: 502,
    a_503_is_retried_then_sent: 503,
    a_504_is_retried_then_sent: 504,
}

final_failure! {
    a_501_fails_without_retry: 501,
    a_505_fails_without_retry: 505,
    a_400_fails_without_retry: 400,
    a_404_fails_without_retry: 404,
    a_422_fails_without_retry: 422,
}

#[tokio::test]
async fn exhausting_max_attempts_fails_saying_it_gave_up() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::status(503));
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon.enqueue(sms("never")).await;
    let view = daemon.wait_for_state(id, "failed").await;
    assert_eq!(coax.requests().len(), 3, "max_attempts = 3");
    assert_eq!(view["attempts"], 3);
    let last_error = view["last_error"].as_str().unwrap_or("");
    assert!(
        last_error.contains("gave up") && last_error.contains("503"),
        "last_error says it gave up: {view}"
    );
    let h = history(&view);
    assert_eq!(h.len(), 3);
    check_entry(&h[0], 1, "retry");
    check_entry(&h[1], 2, "retry");
    check_entry(&h[2], 3, "failed");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// Retry-After
// ---------------------------------------------------------------------------

#[tokio::test]
async fn retry_after_on_a_429_sets_the_retry_delay() {
    // max_delay high enough for the header's 1s; base_delay stays 50ms, so
    // a 1s wait can only come from the header.
    let coax = CoaxStub::start().await;
    coax.push(Reply::status(429).with_header("Retry-After", "1"));
    let config = with_setting(&default_config(&coax.base_url()), "max_delay", "5s");
    let daemon = TestDaemon::start_with(&config).await;
    let id = daemon.enqueue(sms("slow down")).await;
    let view = daemon.wait_for_state(id, "sent").await;
    let requests = coax.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].received_at - requests[0].received_at;
    assert!(
        gap.num_milliseconds() >= 990,
        "the retry came {}ms after the 429",
        gap.num_milliseconds()
    );
    let h = history(&view);
    check_entry(&h[0], 1, "retry");
    assert_eq!(h[0]["status"], 429);
    assert_eq!(
        ms(&view["scheduled_at"]) - ms(&h[0]["finished_at"]),
        1000,
        "retry time is the answer's time plus Retry-After: {view}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn retry_after_is_capped_at_max_delay() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::status(503).with_header("Retry-After", "60"));
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon.enqueue(sms("capped")).await;
    let view = daemon.wait_for_state(id, "sent").await;
    let h = history(&view);
    assert_eq!(
        ms(&view["scheduled_at"]) - ms(&h[0]["finished_at"]),
        200,
        "Retry-After 60s is capped at max_delay 200ms: {view}"
    );
    assert_eq!(coax.requests().len(), 2);
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// Transport failures
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_connection_is_retried_and_not_marked_ambiguous() {
    // A socket bound but not listening: connections are refused, and the
    // port stays ours so no other test's stub can take it meanwhile.
    let closed = TcpSocket::new_v4().expect("socket");
    closed
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("local_addr"));
    let daemon = TestDaemon::start(&url).await;
    let id = daemon.enqueue(sms("nobody home")).await;
    let view = daemon.wait_for_state(id, "failed").await;
    assert_eq!(view["attempts"], 3, "retried up to max_attempts: {view}");
    let h = history(&view);
    assert_eq!(h.len(), 3);
    for (i, decision) in ["retry", "retry", "failed"].iter().enumerate() {
        check_entry(&h[i], i as u64 + 1, decision);
        assert!(h[i]["status"].is_null(), "{}", h[i]);
        assert_eq!(h[i]["ambiguous"], false, "nothing reached Coax: {}", h[i]);
    }
    let error = h[0]["error"].as_str().unwrap_or("").to_lowercase();
    assert!(
        error.contains("refused"),
        "transport error recorded: {}",
        h[0]
    );
    assert!(view["result"].is_null(), "{view}");
    daemon.stop().await;
    drop(closed);
}

#[tokio::test]
async fn a_timeout_is_retried_and_recorded_as_ambiguous() {
    let view = retried_then_sent(|url| quick_timeout_config(url, ""), Reply::hang()).await;
    let first = &history(&view)[0];
    assert!(first["status"].is_null(), "{first}");
    assert_eq!(first["ambiguous"], true, "{first}");
    let last_error = view["last_error"].as_str().unwrap_or("");
    assert!(last_error.contains("timed out"), "{view}");
}

#[tokio::test]
async fn a_reset_connection_is_retried_and_recorded_as_ambiguous() {
    let view = retried_then_sent(default_config, Reply::reset()).await;
    let first = &history(&view)[0];
    assert!(first["status"].is_null(), "{first}");
    assert_eq!(first["ambiguous"], true, "{first}");
}

#[tokio::test]
async fn an_html_502_from_a_proxy_is_retried_with_a_readable_error() {
    let view = retried_then_sent(
        default_config,
        Reply::raw(
            502,
            "text/html",
            "<html>\n  <body>Bad Gateway</body>\n</html>\n",
        ),
    )
    .await;
    let first = &history(&view)[0];
    assert_eq!(first["status"], 502);
    assert_eq!(first["ambiguous"], false, "{first}");
    for error in [&first["error"], &view["last_error"]] {
        let text = error.as_str().unwrap_or("");
        assert!(
            text.contains("502") && text.contains("Bad Gateway"),
            "readable error: {error}"
        );
        assert!(
            !text.contains('\n') && text.len() < 300,
            "one short line: {error}"
        );
    }
}

// ---------------------------------------------------------------------------
// The attempt history
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_history_has_one_entry_per_attempt_in_order() {
    let coax = CoaxStub::start().await;
    coax.push(Reply::status(503));
    coax.push(Reply::status(500));
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon.enqueue(sms("third time lucky")).await;
    let view = daemon.wait_for_state(id, "sent").await;
    let requests = coax.requests();
    assert_eq!(requests.len(), 3);
    let h = history(&view);
    assert_eq!(h.len(), 3, "{view}");
    check_entry(&h[0], 1, "retry");
    check_entry(&h[1], 2, "retry");
    check_entry(&h[2], 3, "sent");
    assert_eq!(
        h.iter().map(|e| e["status"].clone()).collect::<Vec<_>>(),
        [json!(503), json!(500), json!(200)]
    );
    for pair in h.windows(2) {
        assert!(
            ms(&pair[1]["started_at"]) >= ms(&pair[0]["finished_at"]),
            "attempts do not overlap: {pair:?}"
        );
    }
    // Each request went out within its attempt's window.
    for (entry, request) in h.iter().zip(&requests) {
        let at = request.received_at.timestamp_millis();
        assert!(
            ms(&entry["started_at"]) <= at && at <= ms(&entry["finished_at"]),
            "request at {} outside {entry}",
            request.received_at
        );
    }
    // Second retry: base_delay·2 = 100ms, jittered into [50, 100].
    let wait = ms(&h[2]["started_at"]) - ms(&h[1]["finished_at"]);
    assert!(wait >= 50, "second retry after {wait}ms: {view}");
    assert_eq!(view["attempts"], 3);
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// on_ambiguous = "hold"
// ---------------------------------------------------------------------------

async fn held_after_a_timeout(coax: &CoaxStub) -> (TestDaemon, i64, Value) {
    coax.push(Reply::hang());
    let config = quick_timeout_config(&coax.base_url(), "on_ambiguous = \"hold\"");
    let daemon = TestDaemon::start_with(&config).await;
    let id = daemon.enqueue(sms("did it go?")).await;
    let view = daemon.wait_for_state(id, "held").await;
    (daemon, id, view)
}

#[tokio::test]
async fn under_hold_a_timeout_holds_the_job_without_retrying() {
    let coax = CoaxStub::start().await;
    let (daemon, _, view) = held_after_a_timeout(&coax).await;
    assert_eq!(coax.requests().len(), 1, "not retried");
    assert_eq!(view["attempts"], 1);
    let h = history(&view);
    assert_eq!(h.len(), 1, "{view}");
    check_entry(&h[0], 1, "held");
    assert_eq!(h[0]["ambiguous"], true, "{view}");
    let last_error = view["last_error"].as_str().unwrap_or("");
    assert!(last_error.contains("timed out"), "{view}");
    let s = stats(&daemon).await;
    assert_eq!(s["counts"]["held"], 1, "{s}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_held_job_is_sent_after_requeue_keeping_its_history() {
    let coax = CoaxStub::start().await;
    let (daemon, id, _) = held_after_a_timeout(&coax).await;
    let answer = daemon.request(json!({"op": "requeue", "id": id})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    let view = daemon.wait_for_state(id, "sent").await;
    assert_eq!(coax.requests().len(), 2);
    let h = history(&view);
    assert_eq!(h.len(), 2, "{view}");
    check_entry(&h[0], 1, "held");
    check_entry(&h[1], 2, "sent");
    daemon.stop().await;
}

#[tokio::test]
async fn a_held_job_can_be_cancelled() {
    let coax = CoaxStub::start().await;
    let (daemon, id, _) = held_after_a_timeout(&coax).await;
    let answer = daemon.request(json!({"op": "cancel", "id": id})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["job"]["state"], "cancelled", "{answer}");
    let view = daemon.get(id).await;
    assert_eq!(view["state"], "cancelled");
    // A cancelled job cannot be requeued.
    let answer = daemon.request(json!({"op": "requeue", "id": id})).await;
    assert_eq!(answer["error"]["code"], "conflict", "{answer}");
    assert_eq!(coax.requests().len(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn under_hold_an_unambiguous_failure_is_still_retried() {
    let view = retried_then_sent(
        |url| config_text(url, "on_ambiguous = \"hold\"", ""),
        Reply::status(503),
    )
    .await;
    assert_eq!(history(&view)[0]["ambiguous"], false);
}
