//! What recording metrics costs: the enqueue and dispatch figures measured
//! with metrics off and on, in the same run.
//!
//! Off is a daemon without `[metrics]` and recording off; on is a daemon
//! serving `[metrics]` on a Unix socket in its directory, scraped every
//! second as Prometheus would, with every counter and histogram recorded.
//! The two alternate, round after round (off first in even rounds, on
//! first in odd ones), so that a drift of the machine over the run falls
//! on both sides alike, and each side's figure is the median of its
//! rounds.

use super::dispatch;
use super::enqueue::{self, Shape};
use super::fixture::{self, InProcess};
use super::report::{Figure, Limit, Target, Unit};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `[metrics]` section of the "on" side.
const METRICS_ON: &str = "\n[metrics]\nlisten = \"./metrics.sock\"\n";
/// How often the "on" side is scraped.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// Medians of both sides, in jobs per second, and what the recording
/// calls of one job cost, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub enqueue_off: f64,
    pub enqueue_on: f64,
    pub dispatch_off: f64,
    pub dispatch_on: f64,
    pub rounds: usize,
    pub enqueue_calls_ns: f64,
    pub dispatch_calls_ns: f64,
}

/// How many times the recording calls of one job are timed.
const CALLS: u32 = 200_000;

/// Measures `rounds` rounds of enqueue (`shape`) and dispatch (`jobs` due
/// now, 0 ms latency) on each side.
pub async fn cost(dir: &Path, shape: Shape, jobs: usize, rounds: usize) -> anyhow::Result<Cost> {
    let rounds = rounds.max(1);
    let (mut enqueue_off, mut enqueue_on) = (Vec::new(), Vec::new());
    let (mut dispatch_off, mut dispatch_on) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            let side = dir.join(format!("round-{round}-{}", if on { "on" } else { "off" }));
            let (enqueued, dispatched) = side_once(&side, shape, jobs, on).await?;
            super::say(&format!(
                "round {}, metrics {}: enqueue {enqueued:.0}/s, dispatch {dispatched:.0}/s",
                round + 1,
                if on { "on" } else { "off" }
            ));
            if on {
                enqueue_on.push(enqueued);
                dispatch_on.push(dispatched);
            } else {
                enqueue_off.push(enqueued);
                dispatch_off.push(dispatched);
            }
            super::quiesce(&side);
        }
    }
    // The recording calls alone, as an enqueue and an attempt make them;
    // the rounds above installed the recorder.
    crate::metrics::set_recording(true);
    let (enqueue_calls_ns, dispatch_calls_ns) = recording_calls_ns();
    // Later phases run as before: recording off.
    crate::metrics::set_recording(false);
    Ok(Cost {
        enqueue_calls_ns,
        dispatch_calls_ns,
        enqueue_off: median(enqueue_off),
        enqueue_on: median(enqueue_on),
        dispatch_off: median(dispatch_off),
        dispatch_on: median(dispatch_on),
        rounds,
    })
}

/// One enqueue and one dispatch figure on one side.
async fn side_once(dir: &Path, shape: Shape, jobs: usize, on: bool) -> anyhow::Result<(f64, f64)> {
    let extra = if on { METRICS_ON } else { "" };
    crate::metrics::set_recording(false);

    let simulator =
        crate::simulate::Simulator::start("127.0.0.1:0", crate::simulate::SimOptions::default())
            .await
            .context("cannot start the simulator")?;
    let enqueue_dir = dir.join("enqueue");
    let config = fixture::config_with(&enqueue_dir, &simulator.base_url(), extra)?;
    let daemon = crate::daemon::Daemon::open(config.clone())
        .await
        .context("cannot open the benchmark daemon")?;
    let running = InProcess::start(&config, daemon)?;
    fixture::wait_ready(&running.socket).await?;
    let scraper = on.then(|| scrape_every(enqueue_dir.join("metrics.sock")));
    let enqueued = enqueue::median_rate(&running.socket, shape, "metrics", 1).await?;
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    running.stop().await?;
    simulator
        .stop()
        .await
        .context("the simulator did not stop cleanly")?;

    let dispatch_dir = dir.join("dispatch");
    std::fs::create_dir_all(&dispatch_dir)
        .with_context(|| format!("cannot create {}", dispatch_dir.display()))?;
    let scraper = on.then(|| scrape_every(dispatch_dir.join("metrics.sock")));
    let dispatched = dispatch::throughput_with(&dispatch_dir, jobs, Duration::ZERO, extra)
        .await
        .map(|(rate, _)| rate);
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    crate::metrics::set_recording(false);
    Ok((enqueued, dispatched?))
}

/// Scrapes `GET /metrics` on the Unix socket at `path` every second, as
/// Prometheus would; a socket not there yet is tried again next time.
fn scrape_every(path: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SCRAPE_EVERY);
        loop {
            every.tick().await;
            let Ok(mut stream) = tokio::net::UnixStream::connect(&path).await else {
                continue;
            };
            let request = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
            if stream.write_all(request).await.is_ok() {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer).await;
            }
        }
    })
}

/// Nanoseconds per job of the recording calls an enqueue makes (its
/// request, its store call, the count) and an attempt makes (lateness, the
/// decision and request time, its claim and finish store calls), timed
/// over many calls. Unlike the rates, this does not move with whatever
/// else the machine is doing.
fn recording_calls_ns() -> (f64, f64) {
    use crate::metrics as m;
    let done = [crate::protocol::Enqueued {
        id: 1,
        state: crate::job::State::Scheduled,
        scheduled_at: String::new(),
        due_at: None,
        duplicate: false,
    }];
    let started = std::time::Instant::now();
    for _ in 0..CALLS {
        let _timed = m::store_call("enqueue");
        m::enqueued(&done);
        m::socket_request("enqueue", None);
    }
    let enqueue = started.elapsed().as_nanos() as f64 / f64::from(CALLS);
    let started = std::time::Instant::now();
    for _ in 0..CALLS {
        drop(m::store_call("claim"));
        m::lateness(2);
        m::attempt(crate::job::Kind::Message, "sent", Duration::from_millis(2));
        drop(m::store_call("finish"));
    }
    let dispatch = started.elapsed().as_nanos() as f64 / f64::from(CALLS);
    (enqueue, dispatch)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The four rows: each side's enqueue and dispatch rate, the "on" rows
/// held to 95% of the "off" ones.
pub fn figures(cost: &Cost, shape: Shape, jobs: usize) -> Vec<Figure> {
    let runs = format!("median of {} rounds", cost.rounds);
    let enqueue = format!(
        "Enqueue, {} connections, one job per request",
        shape.connections
    );
    let dispatch = format!("Dispatch, {} due now, 0 ms latency", super::count(jobs));
    let on = |id, what: &str, measured: f64, off: f64| {
        Figure::new(
            id,
            format!("{what}, metrics on, scraped every 1 s ({runs})"),
            measured,
            Unit::PerSecond,
        )
        .target(Target::at_least(measured, 0.95 * off, Unit::PerSecond))
        .limit(Limit::rate(measured, off, "same, metrics off"))
    };
    // The recording calls' share of one job's time at the "off" rate: the
    // figure that holds still on a busy machine.
    let share = |id, what: &str, ns: f64, off: f64| {
        let percent = ns * off / 1e9 * 100.0;
        Figure::new(
            id,
            format!("{what}: recording calls per job ({ns:.0} ns), share of a job's time at the metrics-off rate"),
            percent,
            Unit::Percent,
        )
        .target(Target::at_most(percent, 5.0, Unit::Percent))
    };
    vec![
        Figure::new(
            "metrics_off_enqueue",
            format!("{enqueue}, metrics off ({runs})"),
            cost.enqueue_off,
            Unit::PerSecond,
        ),
        on(
            "metrics_on_enqueue",
            &enqueue,
            cost.enqueue_on,
            cost.enqueue_off,
        ),
        Figure::new(
            "metrics_off_dispatch",
            format!("{dispatch}, metrics off ({runs})"),
            cost.dispatch_off,
            Unit::PerSecond,
        ),
        on(
            "metrics_on_dispatch",
            &dispatch,
            cost.dispatch_on,
            cost.dispatch_off,
        ),
        share(
            "metrics_calls_enqueue",
            "Enqueue",
            cost.enqueue_calls_ns,
            cost.enqueue_off,
        ),
        share(
            "metrics_calls_dispatch",
            "Dispatch",
            cost.dispatch_calls_ns,
            cost.dispatch_off,
        ),
    ]
}
