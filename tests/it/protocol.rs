//! The socket protocol end to end, against an in-process daemon: every kind
//! of bad input (malformed, oversized, garbage, each job validation rule)
//! earns one clear error line, leaves the daemon serving and stores nothing;
//! batches are all or nothing; idempotency keys; many requests on one
//! connection answered in order; `list`, `cancel`, `reschedule`, `requeue`
//! and `stats`; and the connection limits (many idle clients, the idle
//! timeout, `max_connections`).

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::TestDaemon;
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::protocol::MAX_LINE_BYTES;
use serde_json::{Value, json};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// A whole config text, so socket and dispatch settings can be chosen freely.
fn whole_config(
    coax_url: &str,
    request_timeout: &str,
    poll_interval: &str,
    socket_extra: &str,
    dispatch_extra: &str,
) -> String {
    format!(
        r#"
[coax]
base_url = "{coax_url}"
request_timeout = "{request_timeout}"

[store]
path = "queue.db"

[socket]
path = "coax.sock"
{socket_extra}

[dispatch]
poll_interval = "{poll_interval}"
concurrency = 4
shutdown_timeout = "5s"
auth_pause = "300ms"
{dispatch_extra}

[retry]
max_attempts = 3
base_delay = "50ms"
max_delay = "200ms"

[log]
level = "debug"
"#
    )
}

/// A stub whose default answer is a successful send.
async fn stub() -> CoaxStub {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    coax
}

/// One long-lived client connection; every read is bounded by `PATIENCE`.
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Conn {
    async fn open(socket: &Path) -> Conn {
        let stream = UnixStream::connect(socket).await.expect("connect");
        let (read, writer) = stream.into_split();
        Conn {
            reader: BufReader::new(read),
            writer,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
        self.writer.flush().await.expect("flush");
    }

    /// The next answer line (without its newline), or `None` at EOF.
    async fn read_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let n = tokio::time::timeout(PATIENCE, self.reader.read_until(b'\n', &mut line))
            .await
            .expect("the daemon answered within PATIENCE")
            .expect("read");
        if n == 0 {
            return None;
        }
        assert_eq!(
            line.last(),
            Some(&b'\n'),
            "an answer line ends with a newline: {:?}",
            String::from_utf8_lossy(&line)
        );
        line.pop();
        Some(String::from_utf8(line).expect("answers are UTF-8"))
    }

    /// The next answer line, parsed; panics at EOF.
    async fn answer(&mut self) -> Value {
        let line = self
            .read_line()
            .await
            .expect("an answer line, not the end of the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?} is not JSON: {e}"))
    }

    async fn raw(&mut self, line: &[u8]) -> Value {
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        self.send(&bytes).await;
        self.answer().await
    }

    async fn request(&mut self, request: Value) -> Value {
        self.raw(request.to_string().as_bytes()).await
    }

    /// Asserts the daemon closes the connection (EOF) within `PATIENCE`,
    /// and returns anything it wrote first.
    async fn expect_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, self.reader.read_to_end(&mut rest))
            .await
            .expect("the daemon closed the connection within PATIENCE")
            .expect("read to EOF");
        rest
    }
}

/// A fresh connection that has been served a ping, or `None` if the daemon
/// refused or closed it.
async fn try_served(socket: &Path) -> Option<Conn> {
    let stream = UnixStream::connect(socket).await.ok()?;
    let (read, mut writer) = stream.into_split();
    writer.write_all(b"{\"op\":\"ping\"}\n").await.ok()?;
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    let n = tokio::time::timeout(PATIENCE, reader.read_line(&mut line))
        .await
        .ok()?
        .ok()?;
    let pong = n > 0 && serde_json::from_str::<Value>(&line).ok() == Some(json!({"ok": true}));
    pong.then_some(Conn { reader, writer })
}

/// Whether a fresh connection answers a ping.
async fn try_ping(socket: &Path) -> bool {
    try_served(socket).await.is_some()
}

/// Asserts `answer` is a failure with `code` and a non-empty message, and
/// returns its `error` object.
fn assert_error<'a>(answer: &'a Value, code: &str) -> &'a Value {
    assert_eq!(answer["ok"], false, "expected a failure: {answer}");
    let error = &answer["error"];
    assert_eq!(error["code"], code, "wrong error code: {answer}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        !message.trim().is_empty(),
        "error without a message: {answer}"
    );
    error
}

fn assert_pong(answer: &Value) {
    assert_eq!(answer, &json!({"ok": true}), "ping answer");
}

/// Asserts the queue holds no job at all.
async fn assert_nothing_stored(daemon: &TestDaemon) {
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "{stats}");
    let counts = stats["counts"].as_object().expect("counts object");
    assert!(
        counts.values().all(|n| n == 0),
        "nothing may be stored: {stats}"
    );
    assert_eq!(stats["next_due"], Value::Null, "{stats}");
    let list = daemon.request(json!({"op": "list"})).await;
    assert_eq!(list["jobs"], json!([]), "{list}");
}

/// `job` with its field `name` set to `value`.
fn set(job: &Value, name: &str, value: Value) -> Value {
    let mut job = job.clone();
    job[name] = value;
    job
}

/// `job` without its field `name`.
fn unset(job: &Value, name: &str) -> Value {
    let mut job = job.clone();
    job.as_object_mut().expect("job object").remove(name);
    job
}

/// `job` with its payload field `name` set to `value`.
fn set_p(job: &Value, name: &str, value: Value) -> Value {
    let mut job = job.clone();
    job["payload"][name] = value;
    job
}

/// `job` without its payload field `name`.
fn unset_p(job: &Value, name: &str) -> Value {
    let mut job = job.clone();
    job["payload"]
        .as_object_mut()
        .expect("payload object")
        .remove(name);
    job
}

/// A valid message to a customer, due in an hour.
fn later_message(key: &str) -> Value {
    json!({
        "kind": "message", "channel": "sms", "key": key, "delay": "1h",
        "payload": {"message": "Hello", "phone": "+15550100"}
    })
}

fn message_on(channel: &str) -> Value {
    json!({
        "kind": "message", "channel": channel,
        "payload": {"message": "Hello", "phone": "+15550100"}
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn parse_ms(text: &Value) -> i64 {
    let text = text.as_str().expect("a time string");
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .expect("valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

// ---------------------------------------------------------------------------
// 1. Bad input
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_get_one_error_line_and_the_connection_keeps_serving() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let mut conn = Conn::open(&daemon.socket).await;

    let cases: Vec<(&str, &[u8], &str)> = vec![
        ("not JSON", b"this is not json", "bad_request"),
        ("truncated JSON", br#"{"op":"ping""#, "bad_request"),
        ("JSON array", b"[1,2,3]", "bad_request"),
        ("JSON string", br#""ping""#, "bad_request"),
        ("JSON number", b"42", "bad_request"),
        ("JSON null", b"null", "bad_request"),
        ("missing op", br#"{"id":1}"#, "bad_request"),
        ("op not a string", br#"{"op":7}"#, "bad_request"),
        ("unknown op", br#"{"op":"explode"}"#, "unknown_op"),
        ("op in the wrong case", br#"{"op":"PING"}"#, "unknown_op"),
        (
            "unknown request field",
            br#"{"op":"ping","x":1}"#,
            "bad_request",
        ),
        ("enqueue without job", br#"{"op":"enqueue"}"#, "bad_request"),
        (
            "enqueue with empty jobs",
            br#"{"op":"enqueue","jobs":[]}"#,
            "bad_request",
        ),
        (
            "enqueue with jobs not an array",
            br#"{"op":"enqueue","jobs":{}}"#,
            "bad_request",
        ),
        (
            "enqueue with job and jobs",
            br#"{"op":"enqueue","job":{},"jobs":[{}]}"#,
            "bad_request",
        ),
        ("get without id", br#"{"op":"get"}"#, "bad_request"),
        (
            "get with a string id",
            br#"{"op":"get","id":"1"}"#,
            "bad_request",
        ),
        (
            "get with a negative id",
            br#"{"op":"get","id":-1}"#,
            "bad_request",
        ),
        (
            "invalid UTF-8",
            b"\xff\xfe\xfd{\"op\":\"ping\"}\xc3\x28",
            "bad_request",
        ),
        ("NUL bytes", b"\x00\x00\x00\x00", "bad_request"),
        (
            "binary garbage",
            b"\x00\x01\x02\x7f\x80\x9f\xa0\xff garbage \x1b[31m\x00",
            "bad_request",
        ),
        (
            "NUL inside a request",
            b"{\"op\":\"pi\x00ng\"}",
            "bad_request",
        ),
    ];
    for (what, line, code) in cases {
        let answer = conn.raw(line).await;
        assert_error(&answer, code);
        // Exactly one line was written for the bad one: the next line on the
        // same connection is the answer to this ping.
        let pong = conn.request(json!({"op": "ping"})).await;
        assert_eq!(pong, json!({"ok": true}), "after {what}: {pong}");
    }
    drop(conn);

    assert_pong(&daemon.request(json!({"op": "ping"})).await);
    assert_nothing_stored(&daemon).await;
    assert!(coax.requests().is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_are_ignored_without_an_answer() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let mut conn = Conn::open(&daemon.socket).await;

    conn.send(b"\n\r\n   \n\t\n{\"op\":\"ping\"}\n").await;
    assert_pong(&conn.answer().await);
    // Had any blank line been answered, this would read that answer instead.
    conn.send(b"\n{\"op\":\"stats\"}\n").await;
    let stats = conn.answer().await;
    assert_eq!(stats["ok"], true, "{stats}");
    assert!(
        stats.get("counts").is_some(),
        "stats answer expected: {stats}"
    );

    drop(conn);
    assert_nothing_stored(&daemon).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_line_endings_are_accepted() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let mut conn = Conn::open(&daemon.socket).await;
    conn.send(b"{\"op\":\"ping\"}\r\n").await;
    assert_pong(&conn.answer().await);
    conn.send(b"  {\"op\":\"stats\"}  \r\n").await;
    assert_eq!(conn.answer().await["ok"], true);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_gets_every_answer_then_eof() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    // What `printf ... | socat - UNIX-CONNECT:coax.sock` does: write, then
    // shut the write side, the last request without a newline.
    let mut conn = Conn::open(&daemon.socket).await;
    conn.send(b"{\"op\":\"ping\"}\n{\"op\":\"nope\"}\n{\"op\":\"stats\"}")
        .await;
    conn.writer.shutdown().await.expect("half-close");
    assert_pong(&conn.answer().await);
    assert_error(&conn.answer().await, "unknown_op");
    let stats = conn.answer().await;
    assert_eq!(stats["ok"], true, "{stats}");
    assert_eq!(conn.read_line().await, None, "then the daemon closes");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_line_is_refused_and_its_connection_closed() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let conn = Conn::open(&daemon.socket).await;
    let Conn {
        mut reader,
        mut writer,
    } = conn;

    // A start that would be a valid enqueue, then far more than the cap, and
    // never a newline.
    let mut big = br#"{"op":"enqueue","job":{"kind":"message","channel":"sms","payload":{"phone":"+15550100","message":""#.to_vec();
    big.resize(MAX_LINE_BYTES + 64 * 1024, b'a');
    let sender = tokio::spawn(async move {
        // The daemon may close before reading it all; that is fine.
        let _ = writer.write_all(&big).await;
        writer
    });

    let mut first = Vec::new();
    tokio::time::timeout(PATIENCE, reader.read_until(b'\n', &mut first))
        .await
        .expect("an answer within PATIENCE")
        .expect("read");
    let answer: Value = serde_json::from_slice(&first)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&first)));
    let error = assert_error(&answer, "bad_request");
    assert!(
        error["message"].as_str().unwrap().contains("longer"),
        "the message says the line is too long: {answer}"
    );
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, reader.read_to_end(&mut rest))
        .await
        .expect("the daemon closed the connection within PATIENCE")
        .ok();
    assert!(
        rest.is_empty(),
        "nothing after the error line: {:?}",
        String::from_utf8_lossy(&rest)
    );
    let _ = tokio::time::timeout(PATIENCE, sender).await;

    assert_pong(&daemon.request(json!({"op": "ping"})).await);
    assert_nothing_stored(&daemon).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_exactly_the_cap_is_read_and_one_byte_more_is_refused() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;

    // MAX_LINE_BYTES counts the newline: a ping padded to exactly the cap.
    let mut line = br#"{"op":"ping"}"#.to_vec();
    line.resize(MAX_LINE_BYTES - 1, b' ');
    line.push(b'\n');
    assert_eq!(line.len(), MAX_LINE_BYTES);
    let mut conn = Conn::open(&daemon.socket).await;
    conn.send(&line).await;
    assert_pong(&conn.answer().await);
    assert_pong(&conn.request(json!({"op": "ping"})).await);
    drop(conn);

    let mut line = br#"{"op":"ping"}"#.to_vec();
    line.resize(MAX_LINE_BYTES, b' ');
    line.push(b'\n');
    let conn = Conn::open(&daemon.socket).await;
    let Conn {
        mut reader,
        mut writer,
    } = conn;
    let sender = tokio::spawn(async move {
        let _ = writer.write_all(&line).await;
        writer
    });
    let mut first = Vec::new();
    tokio::time::timeout(PATIENCE, reader.read_until(b'\n', &mut first))
        .await
        .expect("an answer within PATIENCE")
        .expect("read");
    let answer: Value = serde_json::from_slice(&first).expect("JSON answer");
    assert_error(&answer, "bad_request");
    let _ = tokio::time::timeout(PATIENCE, sender).await;

    assert_pong(&daemon.request(json!({"op": "ping"})).await);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_validation_rule_is_invalid_job_naming_the_field() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;

    let customer = message_on("sms");
    let enquiry = json!({
        "kind": "message", "channel": "sms", "enquiry_id": "77",
        "payload": {"message": "Hello"}
    });
    let schedule = json!({
        "kind": "coax_schedule", "channel": "sms",
        "payload": {"message": "Hello", "phone": "+15550100", "scheduled_at": "2031-01-01T09:00:00Z"}
    });
    let review = json!({
        "kind": "review_request", "channel": "email",
        "payload": {"email": "ann@example.com"}
    });

    let cases: Vec<(&str, Value, &[&str])> = vec![
        ("missing kind", unset(&customer, "kind"), &["kind"]),
        (
            "unknown kind",
            set(&customer, "kind", json!("fax")),
            &["kind"],
        ),
        (
            "kind not a string",
            set(&customer, "kind", json!(1)),
            &["kind"],
        ),
        ("missing channel", unset(&customer, "channel"), &["channel"]),
        (
            "channel ../admin",
            set(&customer, "channel", json!("../admin")),
            &["channel"],
        ),
        (
            "channel with slashes",
            set(&customer, "channel", json!("sms/../../admin")),
            &["channel"],
        ),
        (
            "channel with a query",
            set(&customer, "channel", json!("sms?x=1")),
            &["channel"],
        ),
        (
            "empty channel",
            set(&customer, "channel", json!("")),
            &["channel"],
        ),
        (
            "enquiry_id ../admin",
            set(&enquiry, "enquiry_id", json!("../admin")),
            &["enquiry_id"],
        ),
        (
            "enquiry_id 12a",
            set(&enquiry, "enquiry_id", json!("12a")),
            &["enquiry_id"],
        ),
        (
            "negative enquiry_id",
            set(&enquiry, "enquiry_id", json!(-3)),
            &["enquiry_id"],
        ),
        (
            "scheduled_at without offset that is no local time",
            set(
                &customer,
                "scheduled_at",
                json!("2031-01-01T09:00:00 tomorrow"),
            ),
            &["scheduled_at"],
        ),
        (
            "scheduled_at without offset on a day that does not exist",
            set(&customer, "scheduled_at", json!("2031-02-30T09:00")),
            &["scheduled_at"],
        ),
        (
            "scheduled_at not a time",
            set(&customer, "scheduled_at", json!("tomorrow")),
            &["scheduled_at"],
        ),
        (
            "scheduled_at and delay",
            set(
                &set(&customer, "scheduled_at", json!("2031-01-01T09:00:00Z")),
                "delay",
                json!("2h"),
            ),
            &["delay", "scheduled_at"],
        ),
        (
            "bad delay",
            set(&customer, "delay", json!("soon")),
            &["delay"],
        ),
        (
            "delay a number",
            set(&customer, "delay", json!(60)),
            &["delay"],
        ),
        (
            "unknown job field",
            set(&customer, "when", json!("now")),
            &["when"],
        ),
        (
            "unknown payload field",
            set_p(&customer, "colour", json!("red")),
            &["payload.colour"],
        ),
        (
            "phone on the enquiry variant",
            set_p(&enquiry, "phone", json!("+15550100")),
            &["payload.phone"],
        ),
        (
            "customer_id on the message customer route",
            set_p(&customer, "customer_id", json!(9)),
            &["payload.customer_id"],
        ),
        (
            "payload not an object",
            set(&customer, "payload", json!("hi")),
            &["payload"],
        ),
        (
            "empty message",
            set_p(&customer, "message", json!("")),
            &["payload.message"],
        ),
        (
            "blank message",
            set_p(&customer, "message", json!("   ")),
            &["payload.message"],
        ),
        (
            "message not a string",
            set_p(&customer, "message", json!(5)),
            &["payload.message"],
        ),
        (
            "message missing (message)",
            unset_p(&customer, "message"),
            &["payload.message"],
        ),
        (
            "message missing (enquiry)",
            unset_p(&enquiry, "message"),
            &["payload.message"],
        ),
        (
            "message missing (coax_schedule)",
            unset_p(&schedule, "message"),
            &["payload.message"],
        ),
        (
            "no customer (message)",
            unset_p(&customer, "phone"),
            &["payload"],
        ),
        (
            "blank phone is no customer",
            set_p(&customer, "phone", json!("  ")),
            &["payload"],
        ),
        (
            "empty contact_ids is no customer",
            set_p(&unset_p(&customer, "phone"), "contact_ids", json!([])),
            &["payload"],
        ),
        (
            "no customer (coax_schedule)",
            unset_p(&schedule, "phone"),
            &["payload"],
        ),
        (
            "no customer (review_request)",
            unset_p(&review, "email"),
            &["payload"],
        ),
        (
            "coax_schedule without payload.scheduled_at",
            unset_p(&schedule, "scheduled_at"),
            &["payload.scheduled_at"],
        ),
        (
            "key not a string",
            set(&customer, "key", json!(42)),
            &["key"],
        ),
        ("empty key", set(&customer, "key", json!("")), &["key"]),
        (
            "key over 200 bytes",
            set(&customer, "key", json!("k".repeat(201))),
            &["key"],
        ),
        (
            "review channel differs",
            set_p(&review, "channel", json!("sms")),
            &["payload.channel"],
        ),
        ("job not an object", json!("send it"), &["job"]),
    ];

    let mut conn = Conn::open(&daemon.socket).await;
    for (what, job, fields) in &cases {
        let answer = conn.request(json!({"op": "enqueue", "job": job})).await;
        let error = assert_error(&answer, "invalid_job");
        let field = error["field"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: the error names no field: {answer}"));
        assert!(
            fields.contains(&field),
            "{what}: expected field {fields:?}, got {field:?}: {answer}"
        );
        assert!(
            error.get("index").is_none(),
            "{what}: no index for one job: {answer}"
        );
        assert_pong(&conn.request(json!({"op": "ping"})).await);
    }
    drop(conn);

    assert_pong(&daemon.request(json!({"op": "ping"})).await);
    assert_nothing_stored(&daemon).await;
    assert!(coax.requests().is_empty(), "nothing reached Coax");

    // Each refusal was for its one change: the unchanged jobs are accepted.
    for base in [&customer, &enquiry, &schedule, &review] {
        let answer = daemon
            .request(json!({"op": "enqueue", "job": set(base, "delay", json!("1h"))}))
            .await;
        assert_eq!(answer["ok"], true, "{base} is valid: {answer}");
    }
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Batches
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_invalid_job_stores_none_of_it() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;

    let bad = set(&later_message("b2"), "channel", json!("../admin"));
    let answer = daemon
        .request(json!({"op": "enqueue", "jobs": [
            later_message("b0"), later_message("b1"), bad, later_message("b3")
        ]}))
        .await;
    let error = assert_error(&answer, "invalid_job");
    assert_eq!(error["index"], 2, "{answer}");
    assert_eq!(error["field"], "channel", "{answer}");

    assert_nothing_stored(&daemon).await;
    for key in ["b0", "b1", "b3"] {
        let got = daemon.request(json!({"op": "get", "key": key})).await;
        assert_error(&got, "not_found");
    }
    // A batch of jobs due now, with a bad last one: nothing reaches Coax either.
    let answer = daemon
        .request(json!({"op": "enqueue", "jobs": [message_on("sms"), message_on("sms"), {"kind": "message"}]}))
        .await;
    assert_eq!(assert_error(&answer, "invalid_job")["index"], 2);
    assert_nothing_stored(&daemon).await;
    assert!(coax.requests().is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_batch_answers_results_in_order() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;

    let keys = ["first", "second", "third", "fourth"];
    let jobs: Vec<Value> = keys.iter().map(|k| later_message(k)).collect();
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), keys.len(), "{answer}");
    let mut ids = Vec::new();
    for (result, key) in results.iter().zip(keys) {
        assert_eq!(result["duplicate"], false, "{answer}");
        let id = result["id"].as_i64().expect("id");
        let job = daemon.get(id).await;
        assert_eq!(job["key"], key, "result order follows the batch: {answer}");
        assert_eq!(job["state"], "scheduled");
        ids.push(id);
    }
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "distinct ids: {ids:?}");

    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["scheduled"], 4, "{stats}");
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Idempotency
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_key_returns_the_same_job_as_a_duplicate() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;

    let first = daemon
        .request(json!({"op": "enqueue", "job": later_message("order-1")}))
        .await;
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["duplicate"], false);
    assert_eq!(first["state"], "scheduled");

    // The same key with a different schedule and text: the first job stands.
    let again = set(
        &set(&later_message("order-1"), "delay", json!("5h")),
        "payload",
        json!({"message": "Other", "phone": "+15550199"}),
    );
    let second = daemon.request(json!({"op": "enqueue", "job": again})).await;
    assert_eq!(second["ok"], true, "{second}");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["state"], "scheduled");
    assert_eq!(second["scheduled_at"], first["scheduled_at"]);

    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["scheduled"], 1, "nothing new: {stats}");
    let job = daemon.get(first["id"].as_i64().unwrap()).await;
    assert_eq!(job["payload"]["message"], "Hello", "unchanged: {job}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_repeated_in_a_batch_or_already_stored_is_a_duplicate() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let existing = daemon.enqueue(later_message("old")).await;

    let answer = daemon
        .request(json!({"op": "enqueue", "jobs": [
            later_message("x"), later_message("y"), later_message("x"), later_message("old")
        ]}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    let r = answer["results"].as_array().expect("results");
    assert_eq!(r.len(), 4);
    assert_eq!(r[0]["duplicate"], false, "{answer}");
    assert_eq!(r[1]["duplicate"], false, "{answer}");
    assert_eq!(r[2]["duplicate"], true, "{answer}");
    assert_eq!(r[2]["id"], r[0]["id"], "{answer}");
    assert_ne!(r[1]["id"], r[0]["id"], "{answer}");
    assert_eq!(r[3]["duplicate"], true, "{answer}");
    assert_eq!(r[3]["id"], existing, "{answer}");

    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["scheduled"], 3, "old, x, y: {stats}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_finds_a_job_by_id_or_key() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon.enqueue(later_message("by-key")).await;
    daemon.enqueue(later_message("other")).await;

    let by_key = daemon.request(json!({"op": "get", "key": "by-key"})).await;
    assert_eq!(by_key["ok"], true, "{by_key}");
    assert_eq!(by_key["job"]["id"], id);
    let by_id = daemon.get(id).await;
    assert_eq!(by_key["job"], by_id);
    for field in [
        "id",
        "key",
        "kind",
        "channel",
        "enquiry_id",
        "scheduled_at",
        "state",
        "attempts",
        "created_at",
        "updated_at",
        "last_error",
        "result",
        "payload",
        "history",
    ] {
        assert!(by_id.get(field).is_some(), "VIEW has {field}: {by_id}");
    }

    assert_error(
        &daemon.request(json!({"op": "get", "key": "nope"})).await,
        "not_found",
    );
    assert_error(
        &daemon.request(json!({"op": "get", "id": 999_999})).await,
        "not_found",
    );
    assert_error(
        &daemon
            .request(json!({"op": "get", "id": id, "key": "by-key"}))
            .await,
        "bad_request",
    );
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Pipelining
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_written_at_once_are_answered_in_order() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let jobs: Vec<Value> = (0..50).map(|i| later_message(&format!("p-{i}"))).collect();
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    let ids: Vec<i64> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 50);

    // 50 gets in a scrambled order, with an unknown op after every fifth.
    enum Expect {
        Job(usize),
        UnknownOp,
    }
    let mut text = String::new();
    let mut expected = Vec::new();
    for n in 0..50 {
        let i = (n * 7) % 50;
        text.push_str(&json!({"op": "get", "id": ids[i]}).to_string());
        text.push('\n');
        expected.push(Expect::Job(i));
        if n % 5 == 4 {
            text.push_str("{\"op\":\"nope\"}\n");
            expected.push(Expect::UnknownOp);
        }
    }
    let mut conn = Conn::open(&daemon.socket).await;
    conn.send(text.as_bytes()).await;
    for (n, expect) in expected.iter().enumerate() {
        let answer = conn.answer().await;
        match expect {
            Expect::Job(i) => {
                assert_eq!(answer["ok"], true, "line {n}: {answer}");
                assert_eq!(answer["job"]["id"], ids[*i], "line {n}: {answer}");
                assert_eq!(answer["job"]["key"], format!("p-{i}"), "line {n}");
            }
            Expect::UnknownOp => {
                assert_error(&answer, "unknown_op");
            }
        }
    }
    // Nothing more than one answer per request.
    assert_pong(&conn.request(json!({"op": "ping"})).await);
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// 5. list
// ---------------------------------------------------------------------------

/// The ids in a successful `list` answer, in its order.
fn listed_ids(answer: &Value) -> Vec<i64> {
    assert_eq!(answer["ok"], true, "{answer}");
    answer["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_orders_oldest_first_and_filters_by_state_and_limit() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let at = |key: &str, when: &str| {
        set(
            &unset(&later_message(key), "delay"),
            "scheduled_at",
            json!(when),
        )
    };
    // Enqueued out of order; the offset form must sort by the instant.
    let c = daemon.enqueue(at("c", "2031-03-03T00:00:00Z")).await;
    let a = daemon.enqueue(at("a", "2031-01-01T00:00:00Z")).await;
    let d = daemon.enqueue(at("d", "2031-04-04T00:00:00Z")).await;
    let b = daemon.enqueue(at("b", "2031-02-02T05:00:00+05:00")).await;

    let all = daemon.request(json!({"op": "list"})).await;
    assert_eq!(listed_ids(&all), vec![a, b, c, d]);
    assert_eq!(all["jobs"][0]["scheduled_at"], "2031-01-01T00:00:00.000Z");

    let two = daemon.request(json!({"op": "list", "limit": 2})).await;
    assert_eq!(listed_ids(&two), vec![a, b]);

    let cancelled = daemon.request(json!({"op": "cancel", "id": b})).await;
    assert_eq!(cancelled["ok"], true, "{cancelled}");
    let scheduled = daemon
        .request(json!({"op": "list", "state": "scheduled"}))
        .await;
    assert_eq!(listed_ids(&scheduled), vec![a, c, d]);
    let only = daemon
        .request(json!({"op": "list", "state": "cancelled", "limit": 10}))
        .await;
    assert_eq!(listed_ids(&only), vec![b]);
    let none = daemon.request(json!({"op": "list", "state": "sent"})).await;
    assert_eq!(listed_ids(&none), Vec::<i64>::new());
    let scheduled_one = daemon
        .request(json!({"op": "list", "state": "scheduled", "limit": 1}))
        .await;
    assert_eq!(listed_ids(&scheduled_one), vec![a]);

    for bad in [
        json!({"op": "list", "state": "lost"}),
        json!({"op": "list", "state": 3}),
        json!({"op": "list", "limit": 0}),
        json!({"op": "list", "limit": "ten"}),
    ] {
        assert_error(&daemon.request(bad).await, "bad_request");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_order_recent_puts_the_most_recently_changed_first() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let mut ids = Vec::new();
    for key in ["w", "x", "y", "z"] {
        ids.push(daemon.enqueue(later_message(key)).await);
    }
    // Changed from the newest job to the oldest, each in a later millisecond
    // than the one before, so that neither id order nor due order matches.
    for &id in ids.iter().rev() {
        let changed = daemon
            .request(json!({"op": "reschedule", "id": id, "scheduled_at": "2031-05-05T00:00:00Z"}))
            .await;
        assert_eq!(changed["ok"], true, "{changed}");
        let stamp = changed["job"]["updated_at"].clone();
        wait_until("the clock to pass the change", PATIENCE, || {
            let stamp = stamp.clone();
            async move {
                let now = coax_scheduler::time::format(coax_scheduler::time::now());
                (stamp != now.as_str()).then_some(())
            }
        })
        .await;
    }
    let cancelled = daemon.request(json!({"op": "cancel", "id": ids[2]})).await;
    assert_eq!(cancelled["ok"], true, "{cancelled}");

    let recent = daemon
        .request(json!({"op": "list", "order": "recent"}))
        .await;
    assert_eq!(listed_ids(&recent), vec![ids[2], ids[0], ids[1], ids[3]]);
    let scheduled = daemon
        .request(json!({"op": "list", "state": "scheduled", "order": "recent", "limit": 2}))
        .await;
    assert_eq!(listed_ids(&scheduled), vec![ids[0], ids[1]]);
    let due = daemon.request(json!({"op": "list", "order": "due"})).await;
    assert_eq!(listed_ids(&due), ids);

    for bad in [
        json!({"op": "list", "order": "oldest"}),
        json!({"op": "list", "order": 1}),
    ] {
        let answer = daemon.request(bad).await;
        assert_error(&answer, "bad_request");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("\"recent\"")),
            "{answer}"
        );
    }
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// 6. cancel, reschedule, requeue
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_applies_only_to_scheduled_jobs() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon.enqueue(later_message("to-cancel")).await;

    let answer = daemon.request(json!({"op": "cancel", "id": id})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["job"]["state"], "cancelled");
    assert_eq!(daemon.get(id).await["state"], "cancelled");

    let again = daemon.request(json!({"op": "cancel", "id": id})).await;
    assert_error(&again, "conflict");
    assert_error(
        &daemon.request(json!({"op": "cancel", "id": 424_242})).await,
        "not_found",
    );

    let sent = daemon.enqueue(message_on("sms")).await;
    daemon.wait_for_state(sent, "sent").await;
    assert_error(
        &daemon.request(json!({"op": "cancel", "id": sent})).await,
        "conflict",
    );
    assert_eq!(daemon.get(sent).await["state"], "sent");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedule_moves_a_scheduled_job_and_refuses_bad_times() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let id = daemon.enqueue(later_message("move-me")).await;

    let answer = daemon
        .request(json!({"op": "reschedule", "id": id, "scheduled_at": "2031-05-01T10:00:00+02:00"}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["job"]["scheduled_at"], "2031-05-01T08:00:00.000Z");
    let view = daemon.get(id).await;
    assert_eq!(view["scheduled_at"], "2031-05-01T08:00:00.000Z");
    assert_eq!(view["state"], "scheduled");

    for bad in [
        "next tuesday",
        "2031-05-01T10:00:61",
        "2031-13-01T10:00",
        "",
    ] {
        let answer = daemon
            .request(json!({"op": "reschedule", "id": id, "scheduled_at": bad}))
            .await;
        assert_eq!(answer["ok"], false, "{bad:?}: {answer}");
        assert_eq!(
            answer["error"]["field"], "scheduled_at",
            "{bad:?}: {answer}"
        );
    }
    assert_eq!(
        daemon.get(id).await["scheduled_at"],
        "2031-05-01T08:00:00.000Z",
        "a refused reschedule changes nothing"
    );
    assert_error(
        &daemon.request(json!({"op": "reschedule", "id": id})).await,
        "bad_request",
    );
    assert_error(
        &daemon
            .request(
                json!({"op": "reschedule", "id": 777_777, "scheduled_at": "2031-05-01T10:00:00Z"}),
            )
            .await,
        "not_found",
    );

    let cancelled = daemon.request(json!({"op": "cancel", "id": id})).await;
    assert_eq!(cancelled["ok"], true, "{cancelled}");
    assert_error(
        &daemon
            .request(json!({"op": "reschedule", "id": id, "scheduled_at": "2031-06-01T10:00:00Z"}))
            .await,
        "conflict",
    );
    assert_eq!(daemon.get(id).await["state"], "cancelled");
    assert!(coax.requests().is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescheduling_to_now_wakes_the_dispatcher() {
    let coax = stub().await;
    // With an hour-long poll interval, only a wake-up sends the job in time.
    let daemon = TestDaemon::start_with(&whole_config(&coax.base_url(), "2s", "1h", "", "")).await;
    let id = daemon.enqueue(later_message("wake-up")).await;
    assert_pong(&daemon.request(json!({"op": "ping"})).await);
    assert!(coax.requests().is_empty(), "not due yet");

    let answer = daemon
        .request(json!({"op": "reschedule", "id": id, "scheduled_at": format_ms(now_ms())}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    let job = daemon.wait_for_state(id, "sent").await;
    assert_eq!(job["attempts"], 1);
    assert_eq!(coax.wait_for_requests(1, PATIENCE).await.len(), 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_puts_a_failed_or_held_job_back_due_now_keeping_its_history() {
    let coax = stub().await;
    coax.push_for("send/gone", Reply::status(404));
    coax.push_for(
        "send/proxy",
        Reply::raw(200, "text/html", "<html>proxy error</html>"),
    );
    // An hour-long poll interval: requeue must wake the dispatcher itself.
    let daemon = TestDaemon::start_with(&whole_config(
        &coax.base_url(),
        "2s",
        "1h",
        "",
        "on_ambiguous = \"hold\"",
    ))
    .await;

    let scheduled = daemon.enqueue(later_message("still-scheduled")).await;
    assert_error(
        &daemon
            .request(json!({"op": "requeue", "id": scheduled}))
            .await,
        "conflict",
    );
    assert_eq!(daemon.get(scheduled).await["state"], "scheduled");
    assert_error(
        &daemon.request(json!({"op": "requeue", "id": 31_337})).await,
        "not_found",
    );

    let failed = daemon.enqueue(message_on("gone")).await;
    let before = daemon.wait_for_state(failed, "failed").await;
    assert_eq!(before["history"].as_array().unwrap().len(), 1, "{before}");
    assert_eq!(before["history"][0]["status"], 404);

    let t0 = now_ms();
    let answer = daemon.request(json!({"op": "requeue", "id": failed})).await;
    let t1 = now_ms();
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["job"]["state"], "scheduled", "{answer}");
    assert_eq!(answer["job"]["attempts"], 0, "{answer}");
    let due = parse_ms(&answer["job"]["scheduled_at"]);
    assert!(
        t0 - 1 <= due && due <= t1 + 1,
        "due now: {due} not within [{t0}, {t1}]"
    );

    let after = daemon.wait_for_state(failed, "sent").await;
    let history = after["history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "history kept and grown: {after}");
    assert_eq!(history[0]["status"], 404);
    assert_eq!(history[0]["decision"], "failed");
    assert_eq!(history[1]["status"], 200);
    assert_eq!(history[1]["decision"], "sent");
    assert_eq!(after["attempts"], 1);
    assert_error(
        &daemon.request(json!({"op": "requeue", "id": failed})).await,
        "conflict",
    );

    let held = daemon.enqueue(message_on("proxy")).await;
    daemon.wait_for_state(held, "held").await;
    let answer = daemon.request(json!({"op": "requeue", "id": held})).await;
    assert_eq!(answer["ok"], true, "{answer}");
    let after = daemon.wait_for_state(held, "sent").await;
    assert_eq!(after["history"].as_array().unwrap().len(), 2, "{after}");
    assert_eq!(coax.requests_to("send/proxy").len(), 2);
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// 7. stats
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_counts_every_state_and_reports_the_next_due_time() {
    let coax = stub().await;
    coax.push_for("send/hang", Reply::hang());
    coax.push_for("send/paused", Reply::paused());
    coax.push_for("send/gone", Reply::status(404));
    coax.push_for(
        "send/proxy",
        Reply::raw(200, "text/html", "<html>proxy error</html>"),
    );
    // A long request timeout keeps the hung job in `sending` while we look.
    let daemon = TestDaemon::start_with(&whole_config(
        &coax.base_url(),
        "60s",
        "1s",
        "",
        "on_ambiguous = \"hold\"",
    ))
    .await;

    let later = set(&later_message("later"), "delay", json!("2h"));
    daemon.enqueue(later).await;
    let earliest = daemon
        .request(json!({"op": "enqueue", "job": later_message("earliest")}))
        .await;
    assert_eq!(earliest["ok"], true, "{earliest}");
    let cancelled = daemon
        .enqueue(set(&later_message("cancelled"), "delay", json!("30m")))
        .await;
    let answer = daemon
        .request(json!({"op": "cancel", "id": cancelled}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");

    let sending = daemon.enqueue(message_on("hang")).await;
    let sent = daemon.enqueue(message_on("sms")).await;
    let skipped = daemon.enqueue(message_on("paused")).await;
    let failed = daemon.enqueue(message_on("gone")).await;
    let held = daemon.enqueue(message_on("proxy")).await;
    daemon.wait_for_state(sent, "sent").await;
    daemon.wait_for_state(skipped, "skipped").await;
    daemon.wait_for_state(failed, "failed").await;
    daemon.wait_for_state(held, "held").await;
    daemon.wait_for_state(sending, "sending").await;
    coax.wait_for_requests(5, PATIENCE).await;

    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "{stats}");
    let counts = stats["counts"].as_object().expect("counts");
    let expected = [
        ("scheduled", 2),
        ("sending", 1),
        ("sent", 1),
        ("skipped", 1),
        ("failed", 1),
        ("cancelled", 1),
        ("held", 1),
    ];
    for (state, n) in expected {
        assert_eq!(counts.get(state), Some(&json!(n)), "{state}: {stats}");
    }
    // Any further state the daemon reports holds none of these jobs.
    for (state, n) in counts {
        if !expected.iter().any(|(s, _)| s == state) {
            assert_eq!(n, 0, "{state}: {stats}");
        }
    }
    assert_eq!(
        stats["next_due"], earliest["scheduled_at"],
        "next_due is the earliest scheduled job, not the cancelled one: {stats}"
    );
    assert_eq!(stats["dispatch"]["state"], "running", "{stats}");

    // Release the hung request so the daemon stops without waiting on it.
    coax.shutdown().await;
    wait_until("the hung job to leave sending", PATIENCE, || async {
        (daemon.get(sending).await["state"] != "sending").then_some(())
    })
    .await;
    daemon.stop().await;
}

// ---------------------------------------------------------------------------
// 8–10. Connection limits
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_connections_do_not_keep_out_a_new_client() {
    let coax = stub().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;

    let mut idle = Vec::with_capacity(200);
    for _ in 0..200 {
        idle.push(Conn::open(&daemon.socket).await);
    }

    assert_pong(&daemon.request(json!({"op": "ping"})).await);
    let id = daemon.enqueue(message_on("sms")).await;
    daemon.wait_for_state(id, "sent").await;

    // Every idle connection was accepted and served, not refused.
    for conn in &mut idle {
        assert_pong(&conn.request(json!({"op": "ping"})).await);
    }
    drop(idle);

    assert_pong(&daemon.request(json!({"op": "ping"})).await);
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["counts"]["sent"], 1, "{stats}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_idle_timeout() {
    let coax = stub().await;
    let daemon = TestDaemon::start_with(&whole_config(
        &coax.base_url(),
        "2s",
        "1s",
        "idle_timeout = \"300ms\"",
        "",
    ))
    .await;

    let mut silent = Conn::open(&daemon.socket).await;
    let written = silent.expect_closed().await;
    let written = String::from_utf8_lossy(&written);
    assert!(
        written.is_empty() || written.lines().count() == 1,
        "at most one farewell line: {written:?}"
    );

    // After a request, the connection is idle again and is closed again.
    let mut used = Conn::open(&daemon.socket).await;
    assert_pong(&used.request(json!({"op": "ping"})).await);
    used.expect_closed().await;

    assert_pong(&daemon.request(json!({"op": "ping"})).await);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_max_connections_gets_one_error_line_and_is_closed() {
    let coax = stub().await;
    let daemon = TestDaemon::start_with(&whole_config(
        &coax.base_url(),
        "2s",
        "1s",
        "max_connections = 2",
        "",
    ))
    .await;

    // Served once each, so both hold their slot.
    let mut first = Conn::open(&daemon.socket).await;
    assert_pong(&first.request(json!({"op": "ping"})).await);
    let mut second = Conn::open(&daemon.socket).await;
    assert_pong(&second.request(json!({"op": "ping"})).await);
    // Then a reserved slot, which still answers ping; one process holds
    // at most one, so this process's next connection is refused.
    let mut reserved = Conn::open(&daemon.socket).await;
    assert_pong(&reserved.request(json!({"op": "ping"})).await);

    let mut third = Conn::open(&daemon.socket).await;
    let line = third
        .read_line()
        .await
        .expect("the refused client gets an error line");
    let answer: Value = serde_json::from_str(&line).expect("JSON error line");
    assert_eq!(answer["ok"], false, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("connections"),
        "the message says why: {answer}"
    );
    let rest = third.expect_closed().await;
    assert!(
        rest.is_empty(),
        "one line only: {:?}",
        String::from_utf8_lossy(&rest)
    );

    // The held connections still work, and a freed slot is usable again.
    assert_pong(&first.request(json!({"op": "ping"})).await);
    assert_pong(&second.request(json!({"op": "ping"})).await);
    drop(second);
    let socket = daemon.socket.clone();
    wait_until("a freed slot to accept a client", PATIENCE, || {
        let socket = socket.clone();
        async move { try_ping(&socket).await.then_some(()) }
    })
    .await;
    drop(first);
    drop(reserved);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_does_not_hold_a_slot_forever() {
    let coax = stub().await;
    let daemon = TestDaemon::start_with(&whole_config(
        &coax.base_url(),
        "2s",
        "1s",
        "idle_timeout = \"300ms\"\nmax_connections = 1",
        "",
    ))
    .await;
    let jobs: Vec<Value> = (0..100).map(|i| later_message(&format!("s-{i}"))).collect();
    let answer = daemon.request(json!({"op": "enqueue", "jobs": jobs})).await;
    assert_eq!(answer["ok"], true, "{answer}");

    // Retried: the enqueue connection's slot is freed asynchronously.
    let socket = daemon.socket.clone();
    let mut stalled = wait_until("a connection to be served", PATIENCE, || {
        let socket = socket.clone();
        async move { try_served(&socket).await }
    })
    .await;
    // 200 requests whose answers (~60 KB each) overflow the socket buffer;
    // the client never reads them, so the daemon's write blocks.
    stalled
        .send("{\"op\":\"list\",\"limit\":100}\n".repeat(200).as_bytes())
        .await;

    // Long after idle_timeout, the one slot should be free again.
    wait_until("the stalled client's slot to be freed", PATIENCE, || {
        let socket = socket.clone();
        async move { try_ping(&socket).await.then_some(()) }
    })
    .await;
    drop(stalled);
    daemon.stop().await;
}

/// Error answers echoed the offending input whole: a 1 MB number in `id`
/// came back as a 1 MB answer. Echoed input is now cut to 200 characters.
#[tokio::test]
async fn error_answers_echo_at_most_200_characters_of_the_input() {
    let daemon = TestDaemon::start("http://127.0.0.1:9").await;
    let long = "7".repeat(900_000);
    let word = "x".repeat(900_000);
    let job = |field: &str, value: &str| {
        let mut job = json!({"kind": "message", "channel": "sms", "delay": "1h",
            "payload": {"message": "hi", "phone": "+15550100"}});
        job[field] = json!(value);
        json!({"op": "enqueue", "job": job}).to_string()
    };
    let lines = [
        format!(r#"{{"op":"get","id":{long}}}"#),
        format!(r#"{{"op":"get","key":"{word}"}}"#),
        format!(r#"{{"op":"{word}"}}"#),
        format!(r#"{{"op":"ping","{word}":1}}"#),
        format!(r#"{{"op":"list","state":"{word}"}}"#),
        format!(r#"{{"op":"list","order":"{word}"}}"#),
        format!(r#"{{"op":"reschedule","id":1,"scheduled_at":"{word}"}}"#),
        format!(r#"{{"op":"prune","older_than":"{word}"}}"#),
        job("kind", &word),
        job("channel", &word),
        job("enquiry_id", &long),
        job("delay", &word),
    ];
    for line in lines {
        let answer = daemon.raw(&line).await;
        assert!(
            answer.len() < 1024,
            "a {} byte answer to {}…: {}…",
            answer.len(),
            &line[..40],
            &answer[..200.min(answer.len())]
        );
        let answer: Value = serde_json::from_str(&answer).expect("an answer line");
        assert_eq!(answer["ok"], false, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains('…'), "{message}");
    }
    daemon.stop().await;
}
