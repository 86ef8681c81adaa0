//! One test per defect found by attacking the daemon from outside, each
//! named for what broke. The defects that belong to a larger area (the
//! store, the gate, the socket) are tested beside that area's tests.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{TestDaemon, config_text};
use serde_json::{Value, json};

fn sms_with(payload: Value) -> Value {
    json!({"kind": "message", "channel": "sms", "payload": payload})
}

fn assert_invalid(answer: &Value, field: &str, says: &str) {
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_job", "{answer}");
    assert_eq!(answer["error"]["field"], field, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(says), "{says:?} not in {message:?}");
}

/// Every payload number reached Coax re-typed through f64: a 30-digit
/// integer as `1.2345678901234568e+29`, `-0` as `-0.0`, `1e2` as `100.0`.
/// Now every digit goes out as written; only an exponent gains its sign.
#[tokio::test]
async fn payload_numbers_reach_coax_exactly_as_written() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    let daemon = TestDaemon::start(&coax.base_url()).await;
    // Written by hand, not through json!, so that the numbers' text is ours.
    let line = r#"{"op":"enqueue","job":{"kind":"message","channel":"sms","payload":{"message":"hi","phone":"+15550100","contact_id":123456789012345678901234567890,"location_id":-0,"business_location_id":1e2,"team_user_id":0.1000000000000000055511151231257827}}}"#;
    let answer: Value = serde_json::from_str(&daemon.raw(line).await).expect("JSON answer");
    assert_eq!(answer["ok"], true, "{answer}");
    let id = answer["id"].as_i64().expect("id");
    daemon.wait_for_state(id, "sent").await;
    let requests = coax.requests();
    assert_eq!(requests.len(), 1);
    let body = requests[0].body_text();
    for exact in [
        r#""contact_id":123456789012345678901234567890"#,
        r#""location_id":-0,"#,
        // serde_json writes an exponent with its sign: same digits, same value.
        r#""business_location_id":1e+2,"#,
        r#""team_user_id":0.1000000000000000055511151231257827"#,
    ] {
        assert!(body.contains(exact), "{exact} not in the body {body}");
    }
    // `get` shows the payload as it was written too.
    let view = daemon.request(json!({"op": "get", "id": id})).await;
    let text = view.to_string();
    assert!(text.contains("123456789012345678901234567890"), "{text}");
    daemon.stop().await;
}

/// `delay: "10000y"` was accepted and answered `"+12027-…"`; larger delays
/// answered an integer instead of a time.
#[tokio::test]
async fn times_outside_the_years_1970_to_9999_are_refused() {
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let base = sms_with(json!({"message": "hi", "phone": "+15550100"}));
    let with = |name: &str, value: &str| {
        let mut job = base.clone();
        job[name] = json!(value);
        json!({"op": "enqueue", "job": job})
    };
    for (name, value) in [
        ("delay", "10000y"),
        ("delay", "500000000y"),
        ("scheduled_at", "0001-01-01T00:00:00Z"),
        ("scheduled_at", "1969-12-31T23:59:59Z"),
        ("ttl", "9000y"),
        ("expires_at", "0100-01-01T00:00:00+01:00"),
    ] {
        let answer = daemon.request(with(name, value)).await;
        assert_invalid(&answer, name, "1970");
    }
    // The edges themselves are fine.
    let answer = daemon
        .request(with("scheduled_at", "9999-12-31T23:59:59Z"))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["scheduled_at"], "9999-12-31T23:59:59.000Z");
    let id = answer["id"].as_i64().expect("id");

    // reschedule takes the same bounds.
    let answer = daemon
        .request(json!({"op": "reschedule", "id": id, "scheduled_at": "0900-01-01T00:00:00Z"}))
        .await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"]["field"], "scheduled_at", "{answer}");
    daemon.stop().await;
}

/// A 1 MiB payload was stored and parsed whole on every `list`; a job's
/// payload is now capped by `socket.max_job_bytes`.
#[tokio::test]
async fn a_payload_over_max_job_bytes_is_invalid_job_naming_the_cap() {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "").replace(
        "path = \"coax.sock\"",
        "path = \"coax.sock\"\nmax_job_bytes = 2048",
    );
    let daemon = TestDaemon::start_with(&config).await;
    let payload = |len: usize| json!({"message": "x".repeat(len), "phone": "+15550100"});
    // {"message":"…","phone":"+15550100"} is 34 bytes around the text.
    let fits = daemon
        .request(json!({"op": "enqueue", "job": sms_with(payload(2048 - 34))}))
        .await;
    assert_eq!(fits["ok"], true, "a payload of exactly the cap: {fits}");
    let over = daemon
        .request(json!({"op": "enqueue", "job": sms_with(payload(2048 - 33))}))
        .await;
    assert_invalid(&over, "payload", "2048");
    // In a batch, the error names the job.
    let batch = daemon
        .request(json!({"op": "enqueue", "jobs": [sms_with(payload(10)), sms_with(payload(4000))]}))
        .await;
    assert_invalid(&batch, "payload", "socket.max_job_bytes");
    assert_eq!(batch["error"]["index"], 1, "{batch}");
    let stats = daemon.request(json!({"op": "stats"})).await;
    let stored: u64 = stats["counts"]
        .as_object()
        .map(|counts| counts.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(stored, 1, "only the job that fits: {stats}");
    daemon.stop().await;
}

/// `coax-scheduler stats | head -1` panicked with "failed printing to
/// stdout: Broken pipe" and a backtrace once `head` had gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_ends_quietly_when_its_output_pipe_closes() {
    use std::os::unix::process::ExitStatusExt;
    let coax = CoaxStub::start().await;
    let daemon = TestDaemon::start(&coax.base_url()).await;
    let socket = daemon.socket.clone();
    for args in [vec!["stats"], vec!["list"], vec!["status"]] {
        let socket = socket.clone();
        let output = tokio::task::spawn_blocking(move || {
            // A pipe whose reader is gone before the CLI writes a byte.
            let (reader, writer) = std::io::pipe().expect("a pipe");
            drop(reader);
            std::process::Command::new(crate::helpers::daemon::binary())
                .arg("--socket")
                .arg(&socket)
                .args(&args)
                .stdout(writer)
                .output()
                .expect("run the CLI")
        })
        .await
        .expect("CLI thread");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(
            output.status.signal(),
            Some(13),
            "ended by SIGPIPE, as Unix tools do: {:?} {stderr}",
            output.status
        );
    }
    daemon.stop().await;
}

/// An embedded daemon that has stopped lets go of its queue: the same
/// process can open it again (the housekeeping schedule's job kept a handle
/// on the store, and with it the lock, after the daemon stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_daemon_that_stopped_lets_go_of_its_queue() {
    use coax_scheduler::config::OnAmbiguous;
    use coax_scheduler::store::{Options, Store};
    let coax = crate::helpers::coax::CoaxStub::start().await;
    let daemon = crate::helpers::daemon::TestDaemon::start(&coax.base_url()).await;
    let db = daemon.db().to_owned();
    let dir = daemon.stop().await;
    let options = Options {
        path: db,
        on_ambiguous: OnAmbiguous::Retry,
        max_attempts: 3,
        calendar: std::sync::Arc::new(coax_scheduler::window::Calendar::none()),
        node: "test".to_owned(),
    };
    let opened = crate::helpers::wait_until(
        "the stopped daemon's store to let go of its lock",
        crate::helpers::PATIENCE,
        || {
            let options = options.clone();
            async move { Store::open(&options).ok() }
        },
    )
    .await;
    drop(opened);
    drop(dir);
}
