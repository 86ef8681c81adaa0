//! Dispatch throughput and lateness, measured where Coax would see them:
//! at the simulator.
//!
//! - Throughput: the queue is filled with jobs due now through the store's
//!   batch enqueue before the daemon runs, then the clock runs from the
//!   daemon's start until every send reached the simulator and the daemon's
//!   `stats` counts every job `sent`, so outcomes are durably recorded.
//! - Lateness: jobs are enqueued through the socket ahead of their times;
//!   the simulator's arrival hook subtracts each job's `scheduled_at` (read
//!   from its message text) from the moment the request's head was read.
//!   Early arrivals would be negative and are counted.

use super::fixture::{self, Conn, InProcess};
use crate::config::Config;
use crate::daemon::Daemon;
use crate::job::State;
use crate::simulate::{ArrivalHook, Reply, SimOptions, Simulator};
use crate::time::{self, Millis};
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// How often progress is polled. Reading the simulator's counters is a few
/// atomic loads, so polling does not disturb what is measured.
const POLL: Duration = Duration::from_millis(1);
/// How often the count of sends is noted for the picture.
const MARK_EVERY: Duration = Duration::from_millis(20);

/// Sends per second for `jobs` jobs due now, against a simulator that waits
/// `latency` before each answer; and how many had been sent at moments
/// along the way (seconds since the daemon started), for the picture.
pub async fn throughput(
    dir: &Path,
    jobs: usize,
    latency: Duration,
) -> anyhow::Result<(f64, Vec<(f64, u64)>)> {
    throughput_with(dir, jobs, latency, "").await
}

/// [`throughput`], with `extra` appended to the daemon's config.
pub async fn throughput_with(
    dir: &Path,
    jobs: usize,
    latency: Duration,
    extra: &str,
) -> anyhow::Result<(f64, Vec<(f64, u64)>)> {
    throughput_on(jobs, latency, &|base_url| {
        Ok(vec![fixture::config_with(dir, base_url, extra)?])
    })
    .await
}

/// The daemons' configs for a simulator at the given base URL: one per
/// node, all on one queue.
pub type Nodes<'a> = &'a dyn Fn(&str) -> anyhow::Result<Vec<Config>>;

/// [`throughput`] with a daemon for each config `nodes` gives, all sending
/// from one queue; the queue is filled through the first.
pub async fn throughput_on(
    jobs: usize,
    latency: Duration,
    nodes: Nodes<'_>,
) -> anyhow::Result<(f64, Vec<(f64, u64)>)> {
    let simulator = Simulator::start(
        "127.0.0.1:0",
        SimOptions {
            latency,
            ..SimOptions::default()
        },
    )
    .await
    .context("cannot start the simulator")?;
    let daemons = open(nodes(&simulator.base_url())?).await?;
    let store = daemons[0].1.store();
    let now = time::now();
    fixture::fill(&store, "dispatch", jobs, 1_000, |_| now).await?;

    let started = Instant::now();
    let running = start(daemons)?;
    let stats = simulator.stats();
    let deadline = started + patience(jobs);
    let target = jobs as u64;
    let mut timeline = Vec::new();
    let mut next_mark = Duration::ZERO;
    while stats.reply_total(Reply::Sent) < target {
        if started.elapsed() >= next_mark {
            timeline.push((
                started.elapsed().as_secs_f64(),
                stats.reply_total(Reply::Sent),
            ));
            next_mark += MARK_EVERY;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {jobs} jobs were sent within {} s",
                stats.reply_total(Reply::Sent),
                patience(jobs).as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    loop {
        let summary = store
            .stats()
            .await
            .context("cannot read the daemon's stats")?;
        if summary.counts.get(&State::Sent).copied().unwrap_or(0) >= target {
            break;
        }
        if Instant::now() > deadline {
            bail!("the daemon did not record every outcome in time");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    timeline.push((elapsed.as_secs_f64(), target));
    stop(running).await?;
    simulator
        .stop()
        .await
        .context("the simulator did not stop cleanly")?;
    Ok((jobs as f64 / elapsed.as_secs_f64(), timeline))
}

/// Opens a daemon for each config (in order, so that the first migrates
/// a shared database alone).
async fn open(configs: Vec<Config>) -> anyhow::Result<Vec<(Config, Daemon)>> {
    let mut daemons = Vec::with_capacity(configs.len());
    for config in configs {
        let daemon = Daemon::open(config.clone())
            .await
            .context("cannot open the benchmark daemon")?;
        daemons.push((config, daemon));
    }
    if daemons.is_empty() {
        bail!("a phase needs at least one daemon");
    }
    Ok(daemons)
}

fn start(daemons: Vec<(Config, Daemon)>) -> anyhow::Result<Vec<InProcess>> {
    daemons
        .into_iter()
        .map(|(config, daemon)| InProcess::start(&config, daemon))
        .collect()
}

/// Stops every daemon, then answers for the first that failed.
async fn stop(running: Vec<InProcess>) -> anyhow::Result<()> {
    let mut failure = None;
    for daemon in running {
        if let Err(e) = daemon.stop().await {
            failure.get_or_insert(e);
        }
    }
    failure.map_or(Ok(()), Err)
}

/// A generous bound on how long `jobs` sends may take, against hangs.
fn patience(jobs: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(2) * u32::try_from(jobs).unwrap_or(u32::MAX)
}

/// Lateness per job index, in microseconds, as the simulator saw it.
struct Arrivals {
    lateness_us: Vec<AtomicI64>,
    unexpected: AtomicU64,
}

/// A slot no request has filled yet.
const UNSEEN: i64 = i64::MIN;

impl Arrivals {
    fn new(capacity: usize) -> Arc<Arrivals> {
        Arc::new(Arrivals {
            lateness_us: (0..capacity).map(|_| AtomicI64::new(UNSEEN)).collect(),
            unexpected: AtomicU64::new(0),
        })
    }

    fn hook(self: &Arc<Arrivals>) -> ArrivalHook {
        let arrivals = self.clone();
        ArrivalHook::new(move |arrival| {
            let received_us = arrival
                .received_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            let parsed = arrival
                .body
                .get("message")
                .and_then(Value::as_str)
                .and_then(fixture::parse_message);
            let slot = parsed.and_then(|(i, at)| Some((arrivals.lateness_us.get(i)?, at)));
            match slot {
                Some((slot, at)) => {
                    let lateness = received_us.saturating_sub(at.saturating_mul(1_000));
                    // Only the first arrival counts; a second is a duplicate.
                    if slot
                        .compare_exchange(UNSEEN, lateness, Ordering::Relaxed, Ordering::Relaxed)
                        .is_err()
                    {
                        arrivals.unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    arrivals.unexpected.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    }

    fn arrived_in(&self, range: std::ops::Range<usize>) -> usize {
        self.lateness_us[range]
            .iter()
            .filter(|l| l.load(Ordering::Relaxed) != UNSEEN)
            .count()
    }

    /// The lateness of the jobs in `range` that arrived, in ms, sorted.
    fn sorted_ms(&self, range: std::ops::Range<usize>) -> Vec<f64> {
        let mut values: Vec<f64> = self.lateness_us[range]
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .filter(|&l| l != UNSEEN)
            .map(|l| l as f64 / 1_000.0)
            .collect();
        values.sort_by(f64::total_cmp);
        values
    }
}

/// Lateness over a spread of jobs, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub early: usize,
}

/// The nearest-rank percentile of sorted `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// What the lateness phase measured.
pub struct Lateness {
    pub spread: Spread,
    /// Each spread job's lateness in ms, sorted, for the picture.
    pub spread_ms: Vec<f64>,
    /// From the instant all burst jobs were due until the last reached Coax.
    pub burst: Duration,
}

/// How far ahead of their times the lateness phase enqueues its jobs: the
/// first spread job is due `spread_lead` after the phase starts, and the
/// burst `burst_per_job` per job (plus a second) after it is enqueued.
#[derive(Debug, Clone, Copy)]
pub struct Lead {
    pub spread: Duration,
    pub burst_per_job: Duration,
}

/// Enough lead to enqueue at a pessimistic 10,000 jobs/s.
const SQLITE_LEAD: Lead = Lead {
    spread: Duration::from_secs(1),
    burst_per_job: Duration::from_micros(100),
};

/// `spread` jobs due evenly over `over`, then `burst` jobs due at one
/// instant, against one daemon and a simulator that answers at once.
pub async fn lateness(
    dir: &Path,
    spread: usize,
    over: Duration,
    burst: usize,
) -> anyhow::Result<Lateness> {
    lateness_on(spread, over, burst, SQLITE_LEAD, &|base_url| {
        Ok(vec![fixture::config(dir, base_url)?])
    })
    .await
}

/// [`lateness`] with a daemon for each config `nodes` gives, all sending
/// from one queue; the jobs are enqueued through the first.
pub async fn lateness_on(
    spread: usize,
    over: Duration,
    burst: usize,
    lead: Lead,
    nodes: Nodes<'_>,
) -> anyhow::Result<Lateness> {
    let arrivals = Arrivals::new(spread + burst);
    let simulator = Simulator::start(
        "127.0.0.1:0",
        SimOptions {
            on_arrival: Some(arrivals.hook()),
            ..SimOptions::default()
        },
    )
    .await
    .context("cannot start the simulator")?;
    let running = start(open(nodes(&simulator.base_url())?).await?)?;
    for daemon in &running {
        fixture::wait_ready(&daemon.socket).await?;
    }
    let mut conn = Conn::connect(&running[0].socket).await?;

    let start = time::add(time::now(), lead.spread);
    let step_us = over.as_micros() as f64 / spread.max(1) as f64;
    let times: Vec<Millis> = (0..spread)
        .map(|i| start + (i as f64 * step_us / 1_000.0) as Millis)
        .collect();
    enqueue_at(&mut conn, 0, &times, start).await?;
    let settle = Duration::from_secs(30);
    wait_for(&arrivals, 0..spread, time::add(start, over + settle)).await?;
    let values = arrivals.sorted_ms(0..spread);
    let spread_figures = Spread {
        p50: percentile(&values, 0.50),
        p99: percentile(&values, 0.99),
        max: values.last().copied().unwrap_or(f64::NAN),
        early: values.iter().filter(|&&l| l < 0.0).count(),
    };

    let lead = Duration::from_secs(1) + lead.burst_per_job * burst as u32;
    let due = time::add(time::now(), lead);
    enqueue_at(&mut conn, spread, &vec![due; burst], due).await?;
    wait_for(&arrivals, spread..spread + burst, time::add(due, settle)).await?;
    let last = arrivals
        .sorted_ms(spread..spread + burst)
        .last()
        .copied()
        .unwrap_or(f64::NAN);

    let unexpected = arrivals.unexpected.load(Ordering::Relaxed);
    drop(conn);
    stop(running).await?;
    simulator
        .stop()
        .await
        .context("the simulator did not stop cleanly")?;
    if unexpected > 0 {
        bail!("the simulator saw {unexpected} duplicate or unknown requests");
    }
    Ok(Lateness {
        spread: spread_figures,
        spread_ms: values,
        burst: Duration::from_secs_f64(last.max(0.0) / 1_000.0),
    })
}

/// Enqueues one job per entry of `times` (indices from `first`) in batches
/// of 500, and checks that it finished before `deadline` (a job's time).
async fn enqueue_at(
    conn: &mut Conn,
    first: usize,
    times: &[Millis],
    deadline: Millis,
) -> anyhow::Result<()> {
    for (n, chunk) in times.chunks(500).enumerate() {
        let jobs: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(k, &at)| {
                let i = first + n * 500 + k;
                fixture::job_json(&format!("lateness-{i}"), i, at)
            })
            .collect();
        conn.ask(&json!({"op": "enqueue", "jobs": jobs}).to_string())
            .await?;
    }
    let now = time::now();
    if now >= deadline {
        bail!(
            "enqueueing took until {} ms after the first job was due; lateness would be wrong",
            now - deadline
        );
    }
    Ok(())
}

/// Waits until every job in `range` reached the simulator, or `deadline`.
async fn wait_for(
    arrivals: &Arrivals,
    range: std::ops::Range<usize>,
    deadline: Millis,
) -> anyhow::Result<()> {
    let wanted = range.len();
    loop {
        let arrived = arrivals.arrived_in(range.clone());
        if arrived >= wanted {
            return Ok(());
        }
        if time::now() > deadline {
            bail!("only {arrived} of {wanted} jobs reached the simulator in time");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.50), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[3.0], 0.5), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
