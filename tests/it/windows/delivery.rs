//! Every route to sending keeps to the window: a retry whose backoff lands
//! after closing, a 429 or auth pause or an open breaker that ends at
//! night, a job recovered after a crash; a job whose window opens only
//! after its expiry expires unsent; and `coax_schedule` follows only a
//! window it names.

use super::*;
use crate::helpers::daemon::DaemonProcess;
use crate::helpers::edit_db;

/// Open 09:00-20:00 UTC every day.
fn daytime() -> String {
    daily("day", "09:00-20:00")
}

fn in_day(marker: &str) -> Value {
    sms(marker, json!({"window": "day"}))
}

fn id_of(answer: &Value) -> i64 {
    answer["id"].as_i64().expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_backoff_lands_after_closing_waits_for_the_opening_using_no_attempt() {
    let coax = accepting_coax().await;
    coax.push(Reply::status(503));
    // A backoff of 30 to 60 minutes from 19:45 lands after 20:00.
    let config = config(&coax, "", &daytime())
        .replace("base_delay = \"50ms\"", "base_delay = \"1h\"")
        .replace("max_delay = \"200ms\"", "max_delay = \"1h\"");
    let (daemon, clock) = start_at(&config, "2026-12-02T19:45:00Z").await;
    let id = id_of(&enqueue(&daemon, in_day("retried")).await);
    let view = wait_until("the first try to be recorded", PATIENCE, || async {
        let view = daemon.get(id).await;
        (view["state"] == "scheduled" && view["history"].as_array().is_some_and(|h| h.len() == 1))
            .then_some(view)
    })
    .await;
    let retry_at = at(view["scheduled_at"].as_str().expect("scheduled_at"));
    assert!(
        retry_at >= at("2026-12-02T20:00:00Z"),
        "the backoff should land after closing: {view}"
    );
    assert_due(&view, "2026-12-03T09:00:00Z");
    assert_eq!(view["attempts"], 1, "{view}");
    assert_eq!(view["history"][0]["decision"], "retry", "{view}");

    clock.set(retry_at + MINUTE_MS);
    send_a_windowless_job(&daemon, &coax, "at night").await;
    assert_eq!(sends_of(&coax, "retried"), 1);
    let view = daemon.get(id).await;
    assert_due(&view, "2026-12-03T09:00:00Z");
    assert_eq!(view["attempts"], 1, "{view}");

    clock.set(at("2026-12-03T09:00:00Z"));
    let view = daemon.wait_for_state(id, "sent").await;
    assert_eq!(sends_of(&coax, "retried"), 2);
    assert_eq!(view["attempts"], 2, "only the real tries count: {view}");
    let history = view["history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "only the real tries are listed: {view}");
    assert!(
        at(history[1]["started_at"].as_str().expect("started_at")) >= at("2026-12-03T09:00:00Z"),
        "{view}"
    );
    daemon.stop().await;
}

/// A daemon stopped by a pause or an open breaker at 19:00, with the
/// clock then stepped to 21:00, past closing.
struct Stopped {
    coax: CoaxStub,
    daemon: TestDaemon,
    clock: Arc<TestClock>,
    id: i64,
    /// The job's sends before closing.
    sends: usize,
}

/// Starts a daemon at 19:00 UTC whose answers from Coax begin with
/// `first`, sends a job in the daytime window into it, waits until the
/// dispatcher is `stopped`, and steps the clock to 21:00, past closing.
async fn stopped_at_seven(first: &[Reply], extra: &str, stopped: &str) -> Stopped {
    let coax = accepting_coax().await;
    for reply in first {
        coax.push(reply.clone());
    }
    let config = format!("{}{extra}", config(&coax, "", &daytime()))
        .replace("auth_pause = \"300ms\"", "auth_pause = \"2s\"");
    let (daemon, clock) = start_at(&config, "2026-12-02T19:00:00Z").await;
    let id = id_of(&enqueue(&daemon, in_day("paused")).await);
    wait_for_dispatch_state(&daemon, stopped).await;
    clock.set(at("2026-12-02T21:00:00Z"));
    coax.clear_replies();
    let sends = sends_of(&coax, "paused");
    Stopped {
        coax,
        daemon,
        clock,
        id,
        sends,
    }
}

/// Once sending resumes at night, the job waits for the opening, then goes.
async fn waits_for_the_opening(stopped: Stopped) {
    let Stopped {
        coax,
        daemon,
        clock,
        id,
        sends,
    } = stopped;
    // The windowless job goes out only once the pause or breaker is over.
    send_a_windowless_job(&daemon, &coax, "after the pause").await;
    assert_eq!(sends_of(&coax, "paused"), sends, "sent after closing");
    assert_due(&daemon.get(id).await, "2026-12-03T09:00:00Z");
    clock.set(at("2026-12-03T08:59:00Z"));
    send_a_windowless_job(&daemon, &coax, "before the opening").await;
    assert_eq!(sends_of(&coax, "paused"), sends, "sent before the opening");
    clock.set(at("2026-12-03T09:00:00Z"));
    daemon.wait_for_state(id, "sent").await;
    assert_eq!(sends_of(&coax, "paused"), sends + 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pause_that_ends_after_closing_sends_nothing_until_the_opening() {
    let stopped = stopped_at_seven(
        &[Reply::status(429).with_header("Retry-After", "2")],
        "",
        "paused_rate_limit",
    )
    .await;
    waits_for_the_opening(stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_pause_that_ends_after_closing_sends_nothing_until_the_opening() {
    // Two 401s: the job may be tried twice before the pause takes hold
    // (see a_job_refused_with_401_is_not_sent_again_before_the_auth_pause).
    let stopped =
        stopped_at_seven(&[Reply::status(401), Reply::status(401)], "", "paused_auth").await;
    waits_for_the_opening(stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_that_closes_after_closing_sends_nothing_until_the_opening() {
    let stopped = stopped_at_seven(
        &[Reply::status(503)],
        "[breaker]\nfailures = 1\nmax_probe_interval = \"1s\"\n",
        "breaker_open",
    )
    .await;
    waits_for_the_opening(stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_window_opens_after_its_expiry_expires_unsent() {
    let coax = accepting_coax().await;
    let (daemon, clock) = start_at(&config(&coax, "", &daytime()), "2026-12-02T22:00:00Z").await;
    let mut job = in_day("short-lived");
    job["ttl"] = json!("1h");
    let answer = enqueue(&daemon, job).await;
    let id = id_of(&answer);
    let view = daemon.wait_for_state(id, "expired").await;
    assert!(
        view["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("window")),
        "{view}"
    );
    clock.set(at("2026-12-03T09:00:00Z"));
    send_a_windowless_job(&daemon, &coax, "morning").await;
    assert_eq!(sends_of(&coax, "short-lived"), 0);
    assert_eq!(daemon.get(id).await["state"], "expired");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reschedule_into_a_shut_stretch_lasting_past_expiry_is_a_conflict() {
    let coax = accepting_coax().await;
    let (daemon, _clock) = start_at(&config(&coax, "", &daytime()), "2026-12-02T12:00:00Z").await;
    let mut job = in_day("rescheduled");
    job["scheduled_at"] = json!("2026-12-02T13:00:00Z");
    job["expires_at"] = json!("2026-12-02T21:00:00Z");
    let id = id_of(&enqueue(&daemon, job).await);
    let answer = daemon
        .request(json!({"op": "reschedule", "id": id, "scheduled_at": "2026-12-02T20:30:00Z"}))
        .await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"]["code"], "conflict", "{answer}");
    let view = daemon.get(id).await;
    assert_due(&view, "2026-12-02T13:00:00Z");
    // Within the window and before expiry it is allowed.
    let answer = daemon
        .request(json!({"op": "reschedule", "id": id, "scheduled_at": "2026-12-02T19:30:00Z"}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_due(&answer["job"], "2026-12-02T19:30:00Z");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coax_schedule_ignores_the_default_window_but_obeys_a_named_one() {
    let coax = accepting_coax().await;
    let config = config(&coax, "default_window = \"day\"", &daytime());
    let (daemon, _clock) = start_at(&config, "2026-12-02T22:00:00Z").await;
    let schedule = |marker: &str| {
        json!({
            "kind": "coax_schedule", "channel": "sms",
            "payload": {"message": format!("Hello <{marker}>"), "phone": "+15550100",
                        "scheduled_at": "2026-12-03T09:30:00Z"}
        })
    };
    let message = enqueue(&daemon, sms("message", json!({}))).await;
    assert_due(&message, "2026-12-03T09:00:00Z");
    let mut named = schedule("named");
    named["window"] = json!("day");
    let named = enqueue(&daemon, named).await;
    assert_due(&named, "2026-12-03T09:00:00Z");
    let unnamed = id_of(&enqueue(&daemon, schedule("unnamed")).await);
    daemon.wait_for_state(unnamed, "sent").await;
    send_a_windowless_job(&daemon, &coax, "night").await;
    assert_eq!(sends_of(&coax, "named"), 0);
    assert_eq!(sends_of(&coax, "message"), 0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_recovered_while_its_window_is_shut_waits_for_the_opening() {
    let coax = accepting_coax().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (windows, opening) = shut_now("later");
    let config = config(&coax, "", &windows);
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let answer = daemon
        .request(json!({"op": "enqueue", "job": sms("interrupted", json!({"window": "later"}))}))
        .await;
    let id = id_of(&answer);
    daemon.terminate().await;
    // As a kill -9 mid-send leaves it: in `sending`, its try open, due a
    // minute ago.
    let minute_ago = time::now() - MINUTE_MS;
    edit_db(
        &dir.path().join("queue.db"),
        &format!(
            "UPDATE jobs SET state = 'sending', attempts = 1, scheduled_at = {minute_ago},
                    due_at = {minute_ago} WHERE id = {id};
             INSERT INTO attempts (job_id, seq, started_at) VALUES ({id}, 1, {minute_ago});"
        ),
    );

    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    daemon
        .wait_for_log_line("the recovered job", |l| {
            l.contains("possible duplicate") && l.contains(&format!("job_id={id}"))
        })
        .await;
    let view = daemon.request(json!({"op": "get", "id": id})).await["job"].clone();
    assert_due(&view, &time::format(opening));
    assert_eq!(view["history"][0]["ambiguous"], true, "{view}");
    let now = daemon
        .request(json!({"op": "enqueue", "job": sms("windowless", json!({"window": "none"}))}))
        .await;
    wait_until("the windowless job to be sent", PATIENCE, || async {
        let j = daemon
            .request(json!({"op": "get", "id": id_of(&now)}))
            .await;
        (j["job"]["state"] == "sent").then_some(())
    })
    .await;
    assert_eq!(sends_of(&coax, "interrupted"), 0);
    daemon.terminate().await;

    // The same queue on a clock at the opening: now it goes.
    let clock = TestClock::at(opening);
    let daemon = restart_in(dir, &config, clock).await;
    daemon.wait_for_state(id, "sent").await;
    assert_eq!(sends_of(&coax, "interrupted"), 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_refused_with_401_is_not_sent_again_before_the_auth_pause() {
    // The attempt gives the job back (due at once) in the store before the
    // dispatcher's loop hears of the 401; a loop turn in between claims it
    // again and sends it with the rejected key. No window is involved. A
    // race, so the test tries several times.
    for round in 0..10 {
        let coax = accepting_coax().await;
        coax.push(Reply::status(401));
        coax.push(Reply::status(401));
        let config = config(&coax, "", "").replace("auth_pause = \"300ms\"", "auth_pause = \"5s\"");
        let daemon = TestDaemon::start_with(&config).await;
        let id = id_of(&enqueue(&daemon, sms("refused", json!({}))).await);
        wait_for_dispatch_state(&daemon, "paused_auth").await;
        let view = daemon.get(id).await;
        assert_eq!(
            sends_of(&coax, "refused"),
            1,
            "round {round}: sent again during the pause: {view}"
        );
        daemon.stop().await;
    }
}
