//! `coax-scheduler demo`: a first run that needs no Coax account.
//!
//! In a temporary directory it starts the simulator on a free loopback port
//! and the daemon in-process, enqueues a handful of jobs through the socket
//! as any client would, shows the daemon's log lines as they happen, and
//! prints the final table of jobs. It fails, with the reason, when a job
//! ends in another state than planned or is still pending at the deadline.
//!
//! ```text
//! start simulator ─► start daemon ─► enqueue jobs ─► poll `get` until every
//! job is settled (or the deadline) ─► print `list` ─► check ─► stop both
//! ```
//!
//! What the jobs are and how each must end is in [`plan`]; this module owns
//! the sequence and the narration.

mod plan;

use crate::cli::show;
use crate::client::Client;
use crate::config::{Config, LogConfig, LogFormat};
use crate::daemon::Daemon;
use crate::job::State;
use crate::simulate::Simulator;
use crate::time;
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the jobs may take, counted from the last enqueue. The latest is
/// due after 5 s; the rest is slack for a slow machine.
const DEADLINE: Duration = Duration::from_secs(12);
/// How often job states are read while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Runs the demo; an error says which job did not end as planned.
pub fn run() -> anyhow::Result<()> {
    crate::logging::init(&LogConfig {
        format: LogFormat::Text,
        level: "info".to_owned(),
        summary_interval: None,
    })?;
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("coax-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let simulator = runtime
        .block_on(Simulator::start("127.0.0.1:0", plan::simulator_options()))
        .context("cannot start the Coax simulator")?;
    let config = plan::config(dir.path(), &simulator.base_url())?;
    let socket = config.socket.path.clone();
    say(&format!(
        "working in {}; the simulated Coax is at {}",
        dir.path().display(),
        simulator.base_url()
    ));

    let (stop, stopped) = oneshot::channel::<()>();
    let daemon = runtime.block_on(start_daemon(config, stopped))?;
    let outcome = drive(&socket);

    let _ = stop.send(());
    let daemon_ran = runtime.block_on(daemon);
    crate::socket::remove(&socket);
    let stats = simulator.stats();
    let simulator_ran = runtime.block_on(simulator.stop());
    say(&format!("the simulator answered {}", stats.summary()));

    // The table comes after both have stopped, so no log line splits it.
    report(&outcome?)?;
    daemon_ran.context("the daemon task failed")??;
    simulator_ran.context("the simulator did not stop cleanly")?;
    say(&format!(
        "done in {:.1} s. To try your own client, run `coax-scheduler simulate --listen 127.0.0.1:8080` \
         and point coax.base_url at http://127.0.0.1:8080",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Narration, set apart from the daemon's log lines.
fn say(text: &str) {
    println!("demo: {text}");
}

async fn start_daemon(
    config: Config,
    stopped: oneshot::Receiver<()>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let socket = config.socket.path.clone();
    let mode = config.socket.mode;
    let daemon = Daemon::open(config)
        .await
        .context("cannot open the demo daemon")?;
    let listener = crate::socket::bind(&socket, mode)?;
    Ok(tokio::spawn(daemon.run(listener, async move {
        let _ = stopped.await;
    })))
}

/// How the jobs ended, read from the daemon before it stopped.
struct Finished {
    planned: Vec<plan::Planned>,
    ids: Vec<i64>,
    /// The ids still scheduled or sending at the deadline.
    pending: Vec<i64>,
    /// The `list` answer's jobs.
    jobs: Vec<Value>,
}

/// Enqueues the planned jobs and waits until they settle or the deadline
/// passes. Blocking: it is a client like the CLI.
fn drive(socket: &Path) -> anyhow::Result<Finished> {
    let mut client = Client::connect(socket)?;
    let planned = plan::jobs();
    let mut ids = Vec::with_capacity(planned.len());
    for job in &planned {
        let answer = ask(&mut client, json!({"op": "enqueue", "job": job.job}))?;
        let id = answer["id"]
            .as_i64()
            .context("the daemon's enqueue answer has no id")?;
        say(&format!("enqueued job {id}: {}", job.what));
        if job.deferred {
            say(&format!(
                "  its window is shut now, so it is due at {} instead of {}; \
                 the demo cancels it rather than wait",
                answer["due_at"].as_str().unwrap_or("?"),
                answer["scheduled_at"].as_str().unwrap_or("?"),
            ));
            ask(&mut client, json!({"op": "cancel", "id": id}))?;
        }
        ids.push(id);
    }
    let answer = ask(
        &mut client,
        json!({"op": "cancel", "tag": plan::APPOINTMENT}),
    )?;
    say(&format!(
        "the appointment is called off: one cancel by its tag {} cancelled {} reminders",
        plan::APPOINTMENT,
        answer["cancelled"]
    ));
    let deadline = Instant::now() + DEADLINE;
    let pending = wait_until_settled(&mut client, &ids, deadline)?;
    let list = ask(&mut client, json!({"op": "list", "limit": 100}))?;
    let jobs = list["jobs"].as_array().cloned().unwrap_or_default();
    Ok(Finished {
        planned,
        ids,
        pending,
        jobs,
    })
}

/// Prints the final table and checks each job's ending against the plan.
fn report(finished: &Finished) -> anyhow::Result<()> {
    say("the final table of jobs:");
    println!();
    show::table(&finished.jobs, time::now());
    println!();
    if !finished.pending.is_empty() {
        bail!(
            "jobs {:?} were still pending {} s after they were enqueued",
            finished.pending,
            DEADLINE.as_secs()
        );
    }
    check(&finished.planned, &finished.ids, &finished.jobs)?;
    say("every job ended as planned");
    Ok(())
}

/// Sends one request; an `ok:false` answer is an error.
fn ask(client: &mut Client, request: Value) -> anyhow::Result<Value> {
    let (_, answer) = client.request(&request)?;
    if answer["ok"] != true {
        bail!(
            "the daemon refused {}: {}",
            request["op"],
            show::error(&answer)
        );
    }
    Ok(answer)
}

/// Polls until no job is scheduled, sending or waiting, or `deadline` passes;
/// returns the ids still unsettled.
fn wait_until_settled(
    client: &mut Client,
    ids: &[i64],
    deadline: Instant,
) -> anyhow::Result<Vec<i64>> {
    loop {
        let mut pending = Vec::new();
        for &id in ids {
            let answer = ask(client, json!({"op": "get", "id": id}))?;
            let state = answer["job"]["state"].as_str().and_then(State::parse);
            if matches!(
                state,
                Some(State::Scheduled | State::Sending | State::Waiting) | None
            ) {
                pending.push(id);
            }
        }
        if pending.is_empty() || Instant::now() >= deadline {
            return Ok(pending);
        }
        std::thread::sleep(POLL);
    }
}

/// Compares each job's state and attempts with the plan.
fn check(planned: &[plan::Planned], ids: &[i64], jobs: &[Value]) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (plan, id) in planned.iter().zip(ids) {
        let Some(job) = jobs.iter().find(|j| j["id"] == *id) else {
            problems.push(format!("job {id} ({}) is missing from the list", plan.what));
            continue;
        };
        let state = job["state"].as_str().unwrap_or("?");
        let attempts = job["attempts"].as_u64().unwrap_or(0);
        if state != plan.state.as_str() || attempts != u64::from(plan.attempts) {
            problems.push(format!(
                "job {id} ({}) ended {state} after {attempts} attempt(s); expected {} after {}",
                plan.what, plan.state, plan.attempts
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("; "))
    }
}
