//! Chaos and load against the real `coax-scheduler run` binary.
//!
//! The chaos tests enqueue 2,000 jobs (spread over a few seconds, some with a
//! `ttl`) while the Coax stand-in answers at random with 503s, replies that
//! come too late for `request_timeout`, connection resets and successes, and
//! SIGKILL the daemon at five random moments, restarting it on the same
//! directory each time. At the end every job must be in a final state, every
//! `sent` job must have had a successful reply, every extra delivery of a job
//! must be matched by an attempt recorded as ambiguous (none at all under
//! `on_ambiguous = "hold"`), and no attempt may start before its job's
//! `scheduled_at` or at/after its expiry. The load test has 200 clients
//! enqueue one job per request while 5,000 due jobs are being sent, and
//! checks that every enqueue is acknowledged and counted, ids are unique,
//! each due job is delivered exactly once, and the daemon's peak RSS stays
//! bounded.
//!
//! The random choices come from a seed printed at the start of each test;
//! `COAX_CHAOS_SEED=N` replays one. The figures measured are printed, so run
//! with `cargo test --test it chaos:: -- --nocapture` to see them. The tests
//! in this file take a shared lock so that they never compete with each other
//! for the CPU.

use crate::helpers::coax::{CoaxStub, Recorded, Reply};
use crate::helpers::daemon::{DaemonProcess, request_at};
use crate::helpers::{PATIENCE, memory_kib, wait_until};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use coax_scheduler::client::Client;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keeps the tests of this file from running at the same time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// Sizes and knobs
// ---------------------------------------------------------------------------

const CHAOS_JOBS: usize = 2_000;
/// Jobs per `enqueue` batch.
const CHAOS_BATCH: usize = 250;
/// `scheduled_at` is spread over this window, starting a little after now.
const CHAOS_SPREAD_MS: i64 = 4_000;
const CHAOS_START_MS: i64 = 300;
/// One job in this many gets a `ttl` of 30 ms to 1.5 s.
const TTL_ONE_IN: u32 = 4;
const KILLS: usize = 5;
/// The daemon's `coax.request_timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// How late a "timeout" reply comes: well past `REQUEST_TIMEOUT`.
const LATE_REPLY: Duration = Duration::from_secs(1);
/// Fault mix, in per cent of route requests.
const P_503: f64 = 0.10;
const P_TIMEOUT: f64 = 0.05;
const P_RESET: f64 = 0.02;
/// How long the queue may take to settle after the last restart.
const SETTLE: Duration = Duration::from_secs(90);
/// A request claimed just before its job's expiry reaches Coax a little
/// after it; this bounds how much after (the claim itself must precede the
/// expiry exactly).
const WIRE_SLACK: TimeDelta = TimeDelta::seconds(5);

const LOAD_DUE: usize = 5_000;
const LOAD_DUE_BATCH: usize = 500;
const LOAD_CLIENTS: usize = 200;
/// Enqueues per client, one per request. 500 gives the full 100,000.
const LOAD_PER_CLIENT: usize = 500;
/// Peak RSS allowed to the daemon: a boundedness check, not a tight budget.
const LOAD_RSS_LIMIT_KIB: u64 = 256 * 1024;

/// Where a job can end up. `held` only exists under `on_ambiguous = "hold"`.
const FINAL_STATES: &[&str] = &["sent", "skipped", "failed", "cancelled", "expired"];

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// The seed for this run: `COAX_CHAOS_SEED` if set, else fresh.
fn seed() -> u64 {
    match std::env::var("COAX_CHAOS_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("COAX_CHAOS_SEED={text:?} is not a u64")),
        Err(_) => fastrand::u64(..),
    }
}

/// Sends `request` to the daemon on a fresh connection, asserting `ok`.
async fn ask(socket: &Path, request: Value) -> Value {
    let answer = request_at(socket, request.clone()).await;
    assert_eq!(answer["ok"], true, "{request} failed: {answer}");
    answer
}

async fn stats(socket: &Path) -> BTreeMap<String, u64> {
    let answer = ask(socket, json!({"op": "stats"})).await;
    serde_json::from_value(answer["counts"].clone())
        .unwrap_or_else(|e| panic!("stats counts are not a map of numbers ({e}): {answer}"))
}

fn count(counts: &BTreeMap<String, u64>, state: &str) -> u64 {
    counts.get(state).copied().unwrap_or(0)
}

/// Waits until nothing is `scheduled` or `sending`, and returns the counts.
async fn wait_until_settled(socket: &Path, timeout: Duration) -> BTreeMap<String, u64> {
    let mut last = BTreeMap::new();
    let settled = tokio::time::timeout(timeout, async {
        loop {
            last = stats(socket).await;
            if count(&last, "scheduled") == 0 && count(&last, "sending") == 0 {
                return last.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    settled.unwrap_or_else(|_| {
        panic!("the queue did not settle within {timeout:?}; last counts: {last:?}")
    })
}

/// The key a request carries: its body's `message` is the job's key.
fn key_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<no message in {:?}>", String::from_utf8_lossy(body)))
}

fn sms_payload(key: &str) -> Value {
    json!({"message": key, "phone": "+15550100", "business_location_id": 3})
}

// ---------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------

/// What the stand-in did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    /// 200 `success:true`.
    Ok,
    /// 503: certainly not processed.
    Unavailable,
    /// A reply too late for `request_timeout`.
    Timeout,
    /// A TCP reset after the request was read.
    Reset,
}

impl Fault {
    /// Whether Coax may have acted on the request (anything but a 503).
    fn maybe_processed(self) -> bool {
        self != Fault::Unavailable
    }
}

#[derive(Clone, Debug)]
struct Delivery {
    key: String,
    fault: Fault,
    at: DateTime<Utc>,
}

type DeliveryLog = Arc<Mutex<Vec<Delivery>>>;

/// Installs a chooser on `stub` that answers with the fault mix and logs
/// every request with the fault it got.
fn inject_faults(stub: &CoaxStub, seed: u64) -> DeliveryLog {
    let log: DeliveryLog = Arc::default();
    let rng = Mutex::new(fastrand::Rng::with_seed(seed));
    let sink = log.clone();
    stub.set_chooser(Arc::new(move |r: &Recorded| {
        let roll = rng.lock().unwrap_or_else(|e| e.into_inner()).f64();
        let (fault, reply) = if roll < P_503 {
            (Fault::Unavailable, Reply::status(503))
        } else if roll < P_503 + P_TIMEOUT {
            (Fault::Timeout, Reply::sent().with_delay(LATE_REPLY))
        } else if roll < P_503 + P_TIMEOUT + P_RESET {
            (Fault::Reset, Reply::reset())
        } else {
            (Fault::Ok, Reply::sent())
        };
        sink.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Delivery {
                key: key_of(&r.body),
                fault,
                at: r.received_at,
            });
        reply
    }));
    log
}

// ---------------------------------------------------------------------------
// Chaos
// ---------------------------------------------------------------------------

fn chaos_config(coax_url: &str, on_ambiguous: &str) -> String {
    let timeout = humantime::format_duration(REQUEST_TIMEOUT);
    format!(
        r#"
[coax]
base_url = "{coax_url}"
request_timeout = "{timeout}"

[store]
path = "queue.db"

[socket]
path = "coax.sock"

[dispatch]
poll_interval = "1s"
concurrency = 16
shutdown_timeout = "5s"
auth_pause = "300ms"
on_ambiguous = "{on_ambiguous}"

[breaker]
failures = 1000

[retry]
max_attempts = 20
base_delay = "20ms"
max_delay = "200ms"

[log]
level = "info"
"#
    )
}

/// One job as the test planned it.
struct Planned {
    key: String,
    scheduled_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    job: Value,
}

fn plan_jobs(rng: &mut fastrand::Rng, policy: &str, base: DateTime<Utc>) -> Vec<Planned> {
    (0..CHAOS_JOBS)
        .map(|i| {
            let key = format!("chaos-{policy}-{i:04}");
            let offset = CHAOS_START_MS + rng.i64(0..CHAOS_SPREAD_MS);
            let scheduled_at = base + TimeDelta::milliseconds(offset);
            let mut job = json!({
                "kind": "message", "channel": "sms", "key": key,
                "scheduled_at": rfc3339(scheduled_at),
                "payload": sms_payload(&key),
            });
            let mut expires_at = None;
            if rng.u32(0..TTL_ONE_IN) == 0 {
                let ttl = rng.i64(30..1_500);
                job["ttl"] = json!(format!("{ttl}ms"));
                expires_at = Some(scheduled_at + TimeDelta::milliseconds(ttl));
            }
            Planned {
                key,
                scheduled_at,
                expires_at,
                job,
            }
        })
        .collect()
}

/// What one chaos run measured, for the summary line.
#[derive(Default)]
struct Figures {
    requests: usize,
    by_fault: BTreeMap<String, usize>,
    ambiguous_attempts: usize,
    /// Attempts cut short by a kill -9, found in `sending` at start-up.
    interrupted: usize,
    keys_delivered_twice: usize,
    extra_deliveries: usize,
    late_on_wire: usize,
    max_wire_lateness_ms: i64,
}

async fn chaos(on_ambiguous: &str) {
    let _serial = SERIAL.lock().await;
    let hold = on_ambiguous == "hold";
    let seed = seed();
    println!("chaos[{on_ambiguous}]: seed {seed} (COAX_CHAOS_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();

    let stub = CoaxStub::start().await;
    let log = inject_faults(&stub, rng.u64(..));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = chaos_config(&stub.base_url(), on_ambiguous);
    let mut daemon = DaemonProcess::start(dir.path(), &config).await;
    let socket = daemon.socket.clone();

    // Enqueue everything in batches; the first jobs fall due while the
    // last ones are still arriving.
    // Whole milliseconds, as the daemon keeps times.
    let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("now");
    let plan = plan_jobs(&mut rng, on_ambiguous, now);
    let enqueue_started = Instant::now();
    let mut ids = HashMap::new();
    for chunk in plan.chunks(CHAOS_BATCH) {
        let jobs: Vec<Value> = chunk.iter().map(|p| p.job.clone()).collect();
        let answer = ask(&socket, json!({"op": "enqueue", "jobs": jobs})).await;
        let results = answer["results"].as_array().expect("results");
        assert_eq!(results.len(), chunk.len(), "{answer}");
        for (p, r) in chunk.iter().zip(results) {
            assert_eq!(r["duplicate"], false, "{} was new: {r}", p.key);
            ids.insert(p.key.clone(), r["id"].as_i64().expect("id"));
        }
    }
    let enqueue_ms = enqueue_started.elapsed().as_millis();
    assert_eq!(ids.len(), CHAOS_JOBS, "every key got its own job");

    // Kill -9 at five random moments, measured in requests Coax has seen so
    // that each lands while jobs are being sent, however fast the machine.
    // Jobs without a ttl are each sent at least once, which bounds the range.
    let untimed = plan.iter().filter(|p| p.expires_at.is_none()).count();
    let mut kill_at: Vec<usize> = (0..KILLS)
        .map(|_| rng.usize(untimed / 50..untimed * 17 / 20))
        .collect();
    kill_at.sort_unstable();
    println!("chaos[{on_ambiguous}]: kill -9 after {kill_at:?} requests");
    let mut restart_ms = Vec::new();
    for &n in &kill_at {
        stub.wait_for_requests(n, PATIENCE).await;
        daemon.signal("KILL");
        let code = daemon.wait_exit(PATIENCE).await;
        assert_eq!(code, None, "the daemon died of SIGKILL, not an exit");
        let restart = Instant::now();
        daemon = DaemonProcess::start(dir.path(), &config).await;
        restart_ms.push(restart.elapsed().as_millis());
    }

    let counts = wait_until_settled(&socket, SETTLE).await;
    let elapsed = started.elapsed();

    // Every job, with its history, through the socket.
    let answer = ask(&socket, json!({"op": "list", "limit": 10_000})).await;
    let views = answer["jobs"].as_array().expect("jobs").clone();
    assert_eq!(views.len(), CHAOS_JOBS, "list returns every job");
    let by_key: HashMap<String, Value> = views
        .into_iter()
        .map(|v| (v["key"].as_str().expect("key").to_owned(), v))
        .collect();
    let deliveries = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(
        deliveries.len(),
        stub.requests().len(),
        "the chooser saw every request"
    );
    let mut per_key: HashMap<&str, Vec<&Delivery>> = HashMap::new();
    for d in &deliveries {
        per_key.entry(d.key.as_str()).or_default().push(d);
    }

    let mut figures = Figures {
        requests: deliveries.len(),
        ..Figures::default()
    };
    for d in &deliveries {
        *figures
            .by_fault
            .entry(format!("{:?}", d.fault))
            .or_default() += 1;
    }
    let mut problems = Vec::new();
    for key in per_key.keys() {
        if !by_key.contains_key(*key) {
            problems.push(format!("Coax got a request for unknown key {key:?}"));
        }
    }
    for p in &plan {
        let Some(view) = by_key.get(&p.key) else {
            problems.push(format!("{} was lost: list does not return it", p.key));
            continue;
        };
        let state = view["state"].as_str().expect("state");
        let history = view["history"].as_array().expect("history");
        let got = per_key.get(p.key.as_str()).cloned().unwrap_or_default();
        let ambiguous = history.iter().filter(|a| a["ambiguous"] == true).count();
        figures.ambiguous_attempts += ambiguous;
        figures.interrupted += history
            .iter()
            .filter(|a| {
                a["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("interrupted"))
            })
            .count();

        assert_eq!(view["id"], ids[&p.key], "{}", p.key);
        assert_eq!(
            view["expires_at"].as_str().map(parse_time),
            p.expires_at,
            "{}: expires_at = scheduled_at + ttl",
            p.key
        );

        // 1. Final.
        if !(FINAL_STATES.contains(&state) || hold && state == "held") {
            problems.push(format!("{} ended {state}, which is not final", p.key));
        }
        // 2. Sent means Coax said so at least once.
        if state == "sent" && !got.iter().any(|d| d.fault == Fault::Ok) {
            problems.push(format!(
                "{} is sent but Coax never answered it with success: {got:?}",
                p.key
            ));
        }
        // 3. Every request left after a committed claim, so it has an attempt.
        if got.len() > history.len() {
            problems.push(format!(
                "{}: {} requests but only {} attempts recorded",
                p.key,
                got.len(),
                history.len()
            ));
        }
        // 4. Extra deliveries only where an attempt was recorded ambiguous.
        let maybe_processed = got.iter().filter(|d| d.fault.maybe_processed()).count();
        if maybe_processed > 1 {
            figures.keys_delivered_twice += 1;
            figures.extra_deliveries += maybe_processed - 1;
        }
        if maybe_processed > 1 + ambiguous {
            problems.push(format!(
                "{}: {maybe_processed} requests Coax may have processed, but only {ambiguous} ambiguous attempts; history {history:?}; requests {got:?}",
                p.key
            ));
        }
        if hold && maybe_processed > 1 {
            problems.push(format!(
                "{}: under hold, {maybe_processed} requests Coax may have processed: {got:?}",
                p.key
            ));
        }
        // 5. Never early, never after expiry.
        for a in history {
            let at = parse_time(a["started_at"].as_str().expect("started_at"));
            if at < p.scheduled_at {
                problems.push(format!(
                    "{}: attempt {} started at {at}, before scheduled_at {}",
                    p.key, a["attempt"], p.scheduled_at
                ));
            }
            if p.expires_at.is_some_and(|e| at >= e) {
                problems.push(format!(
                    "{}: attempt {} started at {at}, at/after its expiry {:?}",
                    p.key, a["attempt"], p.expires_at
                ));
            }
        }
        for d in &got {
            if d.at < p.scheduled_at {
                problems.push(format!(
                    "{}: request arrived at {}, before scheduled_at {}",
                    p.key, d.at, p.scheduled_at
                ));
            }
            if let Some(expiry) = p.expires_at
                && d.at >= expiry
            {
                let late = d.at - expiry;
                figures.late_on_wire += 1;
                figures.max_wire_lateness_ms =
                    figures.max_wire_lateness_ms.max(late.num_milliseconds());
                if late > WIRE_SLACK {
                    problems.push(format!(
                        "{}: request arrived at {}, {late} after its expiry {expiry}",
                        p.key, d.at
                    ));
                }
            }
        }
        // Held jobs are held for a reason.
        if state == "held" && !history.last().is_some_and(|a| a["ambiguous"] == true) {
            problems.push(format!(
                "{} is held but its last attempt is not ambiguous: {history:?}",
                p.key
            ));
        }
    }

    println!(
        "chaos[{on_ambiguous}]: {CHAOS_JOBS} jobs enqueued in {enqueue_ms} ms; settled {:.1} s after start; restarts took {restart_ms:?} ms",
        elapsed.as_secs_f64()
    );
    println!("chaos[{on_ambiguous}]: final counts {counts:?}");
    println!(
        "chaos[{on_ambiguous}]: {} requests {:?}; {} ambiguous attempts ({} of them interrupted by a kill); {} keys delivered more than once ({} extra deliveries); {} requests reached Coax at/after their expiry (latest by {} ms; each was claimed before it)",
        figures.requests,
        figures.by_fault,
        figures.ambiguous_attempts,
        figures.interrupted,
        figures.keys_delivered_twice,
        figures.extra_deliveries,
        figures.late_on_wire,
        figures.max_wire_lateness_ms,
    );
    assert!(
        problems.is_empty(),
        "{} problem(s) with seed {seed}:\n{}\n--- daemon logs (tail) ---\n{}",
        problems.len(),
        problems
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        tail(&daemon.logs(), 60)
    );
    // Sanity: the faults really happened and most jobs got through.
    assert!(figures.by_fault.len() == 4, "{:?}", figures.by_fault);
    assert!(
        count(&counts, "sent") >= CHAOS_JOBS as u64 / 2,
        "most jobs are sent: {counts:?}"
    );
    assert!(
        figures.interrupted > 0,
        "the kills caught sends in flight, so recovery was exercised"
    );
    if !hold {
        assert!(
            figures.ambiguous_attempts > 0,
            "timeouts and resets were recorded ambiguous"
        );
    }

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(PATIENCE).await, Some(0), "clean exit");
    let logs = daemon.logs();
    assert!(!logs.contains("panicked"), "the daemon panicked:\n{logs}");
    stub.shutdown().await;
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_9_under_faults_loses_nothing_and_duplicates_only_ambiguous_sends() {
    chaos("retry").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_9_under_faults_with_hold_never_sends_twice() {
    chaos("hold").await;
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

fn load_config(coax_url: &str) -> String {
    format!(
        r#"
[coax]
base_url = "{coax_url}"
request_timeout = "30s"

[store]
path = "queue.db"

[socket]
path = "coax.sock"

[dispatch]
poll_interval = "1s"
concurrency = 16
shutdown_timeout = "5s"

[retry]
max_attempts = 3
base_delay = "50ms"
max_delay = "200ms"

[log]
level = "info"
"#
    )
}

/// One client: its own connection, `n` enqueues one per request, each
/// acknowledged; returns the ids.
fn enqueue_one_by_one(socket: PathBuf, client: usize, n: usize) -> Vec<i64> {
    let mut conn = Client::connect(&socket).expect("connect");
    (0..n)
        .map(|i| {
            let key = format!("load-{client}-{i}");
            let request = json!({"op": "enqueue", "job": {
                "kind": "message", "channel": "sms", "key": key, "delay": "1h",
                "payload": sms_payload(&key),
            }});
            let (line, answer) = conn
                .request(&request)
                .unwrap_or_else(|e| panic!("client {client}, enqueue {i}: {e}"));
            assert_eq!(answer["ok"], true, "client {client}, enqueue {i}: {line}");
            assert_eq!(answer["duplicate"], false, "{line}");
            answer["id"].as_i64().expect("id")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_200_clients_enqueue_while_5000_due_jobs_are_sent() {
    let _serial = SERIAL.lock().await;
    let stub = CoaxStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut daemon = DaemonProcess::start(dir.path(), &load_config(&stub.base_url())).await;
    let socket = daemon.socket.clone();
    let pid = daemon.child.id();

    let mut ids: Vec<i64> = Vec::with_capacity(LOAD_DUE + LOAD_CLIENTS * LOAD_PER_CLIENT);
    let due_started = Instant::now();
    for batch in 0..LOAD_DUE / LOAD_DUE_BATCH {
        let jobs: Vec<Value> = (0..LOAD_DUE_BATCH)
            .map(|i| {
                let key = format!("due-{}", batch * LOAD_DUE_BATCH + i);
                json!({"kind": "message", "channel": "sms", "key": key, "payload": sms_payload(&key)})
            })
            .collect();
        let answer = ask(&socket, json!({"op": "enqueue", "jobs": jobs})).await;
        let results = answer["results"].as_array().expect("results");
        assert_eq!(results.len(), LOAD_DUE_BATCH);
        ids.extend(results.iter().map(|r| r["id"].as_i64().expect("id")));
    }
    let due_ms = due_started.elapsed().as_millis();

    // 200 clients at once, while the due jobs go out.
    let clients_started = Instant::now();
    let threads: Vec<_> = (0..LOAD_CLIENTS)
        .map(|c| {
            let socket = socket.clone();
            std::thread::spawn(move || enqueue_one_by_one(socket, c, LOAD_PER_CLIENT))
        })
        .collect();
    let client_ids = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| t.join().expect("a client thread panicked"))
            .collect::<Vec<_>>()
    })
    .await
    .expect("joining the clients");
    let enqueue_secs = clients_started.elapsed().as_secs_f64();
    let sent_meanwhile = stub.requests().len();
    for got in client_ids {
        assert_eq!(got.len(), LOAD_PER_CLIENT);
        ids.extend(got);
    }

    let total = LOAD_DUE + LOAD_CLIENTS * LOAD_PER_CLIENT;
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), total, "every enqueue got its own id");

    let counts = wait_until("every due job to be sent", PATIENCE * 6, || {
        let socket = socket.clone();
        async move {
            let counts = stats(&socket).await;
            (count(&counts, "sent") >= LOAD_DUE as u64).then_some(counts)
        }
    })
    .await;
    let (peak_kib, rss_kib) = memory_kib(pid);
    assert_eq!(
        counts.values().sum::<u64>(),
        total as u64,
        "stats counts every job: {counts:?}"
    );
    assert_eq!(count(&counts, "sent"), LOAD_DUE as u64, "{counts:?}");
    assert_eq!(
        count(&counts, "scheduled"),
        (total - LOAD_DUE) as u64,
        "{counts:?}"
    );
    let requests = stub.requests();
    let keys: HashSet<String> = requests.iter().map(|r| key_of(&r.body)).collect();
    assert_eq!(requests.len(), LOAD_DUE, "each due job was sent once");
    assert_eq!(keys.len(), LOAD_DUE);
    assert!(
        keys.iter().all(|k| k.starts_with("due-")),
        "only due jobs went out"
    );

    let enqueues = LOAD_CLIENTS * LOAD_PER_CLIENT;
    println!(
        "load: {LOAD_DUE} due jobs enqueued in {due_ms} ms (batches of {LOAD_DUE_BATCH}); {LOAD_CLIENTS} clients x {LOAD_PER_CLIENT} = {enqueues} single enqueues in {enqueue_secs:.1} s = {:.0}/s, while {sent_meanwhile} due jobs were sent; daemon peak RSS (VmHWM) {:.1} MiB, RSS at the end {:.1} MiB",
        enqueues as f64 / enqueue_secs,
        peak_kib as f64 / 1024.0,
        rss_kib as f64 / 1024.0,
    );
    assert!(
        peak_kib < LOAD_RSS_LIMIT_KIB,
        "the daemon's peak RSS {peak_kib} KiB is over {LOAD_RSS_LIMIT_KIB} KiB"
    );

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(PATIENCE).await, Some(0), "clean exit");
    let logs = daemon.logs();
    assert!(!logs.contains("panicked"), "the daemon panicked:\n{logs}");
    stub.shutdown().await;
}
