//! The daemon with a large queue: start-up, idle memory and CPU, `stats`,
//! and enqueue throughput, with the daemon as a child process
//! (`coax-scheduler run`) so that its memory and CPU time are its own.
//! Every job is under a send window ([`fixture::WINDOWS`]), so these are the
//! figures with windows in force.
//!
//! ```text
//! child on an empty db ─► enqueue rate (empty, warm-up + median of 3) ─► stop
//!   ─► fill N jobs due in 1–31 days through the store ─► settle them anew
//!      (what a change of windows costs) ─► wait for its lock
//!   ─► start child: time until it answers ping ─► settle ─► idle window:
//!      utime+stime and VmRSS from /proc ─► `stats` ×5 ─► enqueue rate
//!      (full, warm-up + median of 3)
//!   ─► stop
//! ```

use super::enqueue::{self, Shape};
use super::fixture::{self, ChildDaemon, Conn};
use crate::config::OnAmbiguous;
use crate::simulate::{SimOptions, Simulator};
use crate::store::{self, Store};
use crate::time;
use anyhow::{Context as _, bail};
use std::fs::{OpenOptions, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

/// How many times `stats` is asked; the median is reported.
const STATS_SAMPLES: usize = 5;
/// How many times each enqueue rate is measured; the median is reported.
pub const ENQUEUE_RUNS: usize = 3;

/// What the scale phase measured.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub fill_rate: f64,
    /// Settling every queued job's due time anew, as after a change of
    /// windows (with nothing to move: the cost of the walk itself).
    pub settle: Duration,
    pub startup: Duration,
    pub rss_mib: f64,
    pub cpu_seconds: f64,
    pub cpu_percent: f64,
    pub stats: Duration,
    /// One `cancel` by tag of the jobs tagged [`fixture::TAGGED`] (one in
    /// a hundred), and how many it cancelled.
    pub cancel_tag: Duration,
    pub cancelled: u64,
    pub empty_rate: f64,
    pub full_rate: f64,
}

/// Runs the phase in `dir` with `jobs` scheduled jobs, an idle window of
/// `idle`, and enqueue rates measured with `shape`.
pub async fn run(
    dir: &Path,
    jobs: usize,
    idle: Duration,
    shape: Shape,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Scale> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let simulator = Simulator::start("127.0.0.1:0", SimOptions::default())
        .await
        .context("cannot start the simulator")?;
    let base_url = simulator.base_url();

    let child = ChildDaemon::spawn(dir, &base_url)?;
    fixture::wait_ready(&child.socket).await?;
    let empty_rate =
        enqueue::median_rate(&child.socket, shape, "scale-empty", ENQUEUE_RUNS).await?;
    child.stop().await?;

    progress(&format!("filling the queue with {jobs} jobs"));
    let filled = Instant::now();
    let settle = fill(&dir.join("queue.db"), jobs).await?;
    let fill_rate = jobs as f64 / filled.elapsed().saturating_sub(settle).as_secs_f64();

    let started = Instant::now();
    let child = ChildDaemon::spawn(dir, &base_url)?;
    fixture::wait_ready(&child.socket).await?;
    let startup = started.elapsed();

    progress(&format!(
        "idle for {} s with {jobs} jobs queued",
        idle.as_secs_f64()
    ));
    // Start-up work (recovery, the first summary) is not idling.
    tokio::time::sleep(idle.mul_f64(0.1).min(Duration::from_secs(2))).await;
    let before = cpu_ticks(child.pid())?;
    let window = Instant::now();
    tokio::time::sleep(idle).await;
    let ticks = cpu_ticks(child.pid())?.saturating_sub(before);
    let window = window.elapsed().as_secs_f64();
    let cpu_seconds = ticks as f64 / clock_ticks_per_second() as f64;
    let rss_mib = rss_kib(child.pid())? as f64 / 1024.0;

    let mut conn = Conn::connect(&child.socket).await?;
    let mut samples = Vec::with_capacity(STATS_SAMPLES);
    for _ in 0..STATS_SAMPLES {
        let asked = Instant::now();
        conn.ask(r#"{"op":"stats"}"#).await?;
        samples.push(asked.elapsed());
    }
    drop(conn);
    samples.sort();
    let stats = samples[samples.len() / 2];

    let full_rate = enqueue::median_rate(&child.socket, shape, "scale-full", ENQUEUE_RUNS).await?;

    let mut conn = Conn::connect(&child.socket).await?;
    let asked = Instant::now();
    let answer = conn
        .ask(&format!(r#"{{"op":"cancel","tag":"{}"}}"#, fixture::TAGGED))
        .await?;
    let cancel_tag = asked.elapsed();
    drop(conn);
    let cancelled = answer["cancelled"]
        .as_u64()
        .with_context(|| format!("the cancel by tag answered {answer}"))?;
    child.stop().await?;
    simulator
        .stop()
        .await
        .context("the simulator did not stop cleanly")?;
    Ok(Scale {
        fill_rate,
        settle,
        startup,
        rss_mib,
        cpu_seconds,
        cpu_percent: cpu_seconds / window * 100.0,
        stats,
        cancel_tag,
        cancelled,
        empty_rate,
        full_rate,
    })
}

/// Fills the database at `db` with `jobs` jobs through the store's batch
/// enqueue, due one every 2.5 s from a day ahead, under the daemon's send
/// windows; settles them all anew, as a change of windows would, and
/// returns how long that took (which also records the calendar, so the
/// daemon starts without a walk); then waits until the store has let go of
/// the database.
async fn fill(db: &Path, jobs: usize) -> anyhow::Result<Duration> {
    let (store, _) = Store::open(&store::Options {
        path: db.to_owned(),
        on_ambiguous: OnAmbiguous::Retry,
        max_attempts: 5,
        calendar: std::sync::Arc::new(fixture::windows_calendar()?),
        node: "bench".to_owned(),
    })
    .context("cannot open the queue to fill it")?;
    let base = time::add(time::now(), Duration::from_secs(86_400));
    let at = |i: usize| base + i as i64 * 2_500;
    fixture::fill(&store, "scale", jobs, 10_000, at).await?;
    let settling = Instant::now();
    let (_keep, never) = tokio::sync::watch::channel(false);
    store
        .settle_all(never)
        .await
        .context("cannot settle the filled queue")?;
    let settle = settling.elapsed();
    drop(store);
    // The store thread ends once every handle is gone, and its lock with it.
    let lock = store::lock_path(db);
    let file = OpenOptions::new()
        .write(true)
        .open(&lock)
        .with_context(|| format!("cannot open {}", lock.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(settle),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(TryLockError::WouldBlock) => bail!("the filled store did not let go of its lock"),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock.display()));
            }
        }
    }
}

/// utime + stime of `pid`, in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_cpu_ticks(&text).with_context(|| format!("cannot read the CPU times in {path}"))
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses; fields resume after
    // the last ')'. Field 3 (state) is the first; utime and stime are 14, 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of `pid` in KiB, from /proc/PID/status.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_rss_kib(&text).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The kernel's USER_HZ, in which /proc reports CPU time: `getconf
/// CLK_TCK`, or 100, its value on every mainstream Linux architecture.
fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (coax (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 17 5 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\tcoax\nVmPeak:\t 9999 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(parse_rss_kib(status), Some(12_345));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        cpu_ticks(pid).unwrap();
    }
}
