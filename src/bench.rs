//! `coax-scheduler bench`: what the daemon carries on this machine, shown
//! beside what the machine itself allows.
//!
//! In one temporary directory it measures the machine's raw limits
//! ([`limits`]: durable SQLite commits, batched rows, loopback HTTP), then
//! runs the simulator and the daemon in-process on a multi-thread runtime
//! for the enqueue ([`enqueue`]) and dispatch ([`dispatch`]) figures, and
//! finally runs the daemon as a child process on a queue of a million jobs
//! ([`scale`]). It prints the machine and one table ([`report`]), and the
//! same figures as JSON with `--json`. Logging is at `warn`, so log lines do
//! not distort the figures.
//!
//! ```text
//! limits ─► enqueue: 1 conn, 16 conns, batches ─► dispatch at 0 ms, 20 ms
//!   ─► lateness: spread, burst ─► metrics off and on ([`metrics`](mod@metrics))
//!   ─► scale: child daemon on 1M jobs ─► table
//!   [--backend postgres: ─► PostgreSQL's commit rate, enqueue, dispatch on
//!    1 and 3 nodes, lateness on 3 nodes ([`pg`]) ─► a second table]
//! ```
//!
//! With `--backend postgres` the PostgreSQL server is the one at
//! `--postgres-url`, or a throwaway cluster ([`pg_server`]) that the bench
//! starts after SQLite's phases and stops before it prints.
//!
//! `--scale small` shrinks every count about a hundredfold so that a test
//! can run the whole sequence in seconds; its figures mean little. The
//! benchmark asserts nothing: a missed target is shown as `MISSED`, and the
//! command still exits 0.

mod dispatch;
mod enqueue;
mod fixture;
mod limits;
mod metrics;
mod pg;
mod pg_server;
mod picture;
mod report;
mod scale;

use crate::config::{LogConfig, LogFormat};
use anyhow::Context as _;
use enqueue::Shape;
use report::{Figure, Limit, Machine, Target, Unit};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// The flags of `coax-scheduler bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// How big a run: `full` (a few minutes) or `small` (seconds, for tests)
    #[arg(long, value_enum, default_value_t = Size::Full)]
    pub scale: Size,
    /// Where to write the picture: the lateness distribution and the sends
    /// per second over the dispatch runs, as SVG
    #[arg(long, value_name = "FILE", default_value = "coax-scheduler-bench.svg")]
    pub svg: std::path::PathBuf,
    /// The store to measure: `sqlite`, or `postgres` for PostgreSQL's
    /// figures in a second table after SQLite's
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    pub backend: Backend,
    /// With `--backend postgres`: the server to use (its role needs CREATEDB;
    /// the password as the daemon takes it); without, a throwaway cluster
    /// is started from the installed PostgreSQL binaries
    #[arg(long, value_name = "URL")]
    pub postgres_url: Option<String>,
}

/// Which store a benchmark run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How big a benchmark run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    Small,
    Full,
}

/// The counts and windows of a run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    limit_window: Duration,
    single: Shape,
    parallel: Shape,
    batched: Shape,
    dispatch: usize,
    spread: usize,
    spread_over: Duration,
    burst: usize,
    /// Rounds of enqueue and dispatch on each side, metrics off and on.
    metrics_rounds: usize,
    queued: usize,
    idle: Duration,
}

impl Plan {
    fn new(size: Size) -> Plan {
        let full = Plan {
            limit_window: Duration::from_secs(2),
            single: Shape {
                connections: 1,
                jobs: 5_000,
                batch: 1,
            },
            parallel: Shape {
                connections: 16,
                jobs: 50_000,
                batch: 1,
            },
            batched: Shape {
                connections: 4,
                jobs: 200_000,
                batch: 500,
            },
            dispatch: 50_000,
            spread: 5_000,
            spread_over: Duration::from_secs(10),
            burst: 20_000,
            metrics_rounds: 5,
            queued: 1_000_000,
            idle: Duration::from_secs(30),
        };
        match size {
            Size::Full => full,
            Size::Small => Plan {
                limit_window: Duration::from_millis(200),
                single: Shape {
                    jobs: 50,
                    ..full.single
                },
                parallel: Shape {
                    jobs: 500,
                    ..full.parallel
                },
                batched: Shape {
                    jobs: 2_000,
                    ..full.batched
                },
                dispatch: 500,
                spread: 50,
                spread_over: Duration::from_secs(1),
                burst: 200,
                metrics_rounds: 1,
                queued: 10_000,
                idle: Duration::from_secs(2),
            },
        }
    }
}

/// Runs the benchmark and prints the table (and JSON with `json`).
pub fn run(args: &BenchArgs, json: bool) -> anyhow::Result<()> {
    crate::logging::init(&LogConfig {
        format: LogFormat::Text,
        level: "warn".to_owned(),
        summary_interval: None,
    })?;
    match args.backend {
        Backend::Sqlite if args.postgres_url.is_some() => {
            anyhow::bail!("--postgres-url needs --backend postgres");
        }
        Backend::Sqlite => {}
        // Found out now rather than after SQLite's few minutes.
        Backend::Postgres => pg_server::check(args.postgres_url.as_deref())?,
    }
    let plan = Plan::new(args.scale);
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("coax-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let machine = machine(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    say("measuring the machine's limits");
    let sqlite = limits::sqlite(dir.path(), plan.limit_window)?;
    quiesce(&dir.path().join("limits"));
    let (figures, drawn) = runtime.block_on(measure(dir.path(), plan, sqlite))?;
    picture::write(&args.svg, &drawn.title, &drawn.lateness_ms, &drawn.runs)?;
    // A failed PostgreSQL run still leaves SQLite's figures to print.
    let postgres = match args.backend {
        Backend::Sqlite => Ok(None),
        Backend::Postgres => postgres(&runtime, args, &dir.path().join("postgres"), plan).map(Some),
    };

    println!("Machine: {}", machine.describe());
    println!(
        "Command: coax-scheduler bench --scale {}{} ({:.0} s)",
        match args.scale {
            Size::Small => "small",
            Size::Full => "full",
        },
        match args.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " --backend postgres",
        },
        started.elapsed().as_secs_f64()
    );
    println!("Picture: {}", args.svg.display());
    println!();
    print!("{}", report::table(&figures));
    if let Ok(Some((server, figures))) = &postgres {
        println!();
        println!("PostgreSQL: {server}");
        println!();
        print!("{}", report::table(figures));
    }
    if json {
        let figures: Vec<_> = figures.iter().map(Figure::to_json).collect();
        let mut out = json!({"machine": machine.to_json(), "figures": figures});
        if let Ok(Some((server, figures))) = &postgres {
            let figures: Vec<_> = figures.iter().map(Figure::to_json).collect();
            out["postgres"] = json!({"server": server, "figures": figures});
        }
        println!("{out}");
    }
    postgres
        .map(drop)
        .context("the PostgreSQL benchmark failed; SQLite's figures are above")
}

/// The PostgreSQL phases ([`pg`]) on the server `args` names, or on a
/// throwaway cluster: what they ran on, and their figures. The scratch
/// databases are dropped whether or not the phases succeeded.
fn postgres(
    runtime: &tokio::runtime::Runtime,
    args: &BenchArgs,
    dir: &Path,
    plan: Plan,
) -> anyhow::Result<(String, Vec<Figure>)> {
    if args.postgres_url.is_none() {
        say("starting a throwaway PostgreSQL cluster");
    }
    // Started on this thread, outside the runtime: the server is killed if
    // the thread that started it goes, and this one lasts the whole run.
    let server = pg_server::Server::start(args.postgres_url.as_deref())?;
    let described = runtime.block_on(server.describe())?;
    let measured = runtime.block_on(pg::measure(&server, dir, plan));
    let cleaned = runtime.block_on(server.clean());
    drop(server);
    let measured = measured?;
    cleaned?;
    Ok((described, pg::figures(&measured, plan)))
}

/// Progress for the person waiting, on stderr so the table stays clean.
fn say(text: &str) {
    eprintln!("bench: {text}");
}

/// Removes a finished phase's files and flushes the disk, so that the
/// kernel writing back one phase's pages does not stall the next phase's
/// fsyncs (seen as lateness spikes of a few hundred ms without it).
fn quiesce(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        say(&format!("cannot remove {}: {e}", dir.display()));
    }
    // sync(2) has no std wrapper; the command does the same.
    let _ = std::process::Command::new("sync").status();
}

/// What the picture shows.
struct Drawn {
    title: String,
    lateness_ms: Vec<f64>,
    runs: Vec<picture::Run>,
}

/// Everything after the SQLite limits, which `sqlite` holds as (durable
/// single-row commits/s, rows/s in batched commits).
async fn measure(
    dir: &Path,
    plan: Plan,
    sqlite: (f64, f64),
) -> anyhow::Result<(Vec<Figure>, Drawn)> {
    let mut figures = Vec::new();
    let (commits, rows) = sqlite;
    let http = limits::http(plan.limit_window).await?;
    figures.push(Figure::new(
        "limit_sqlite_commits",
        "Limit: SQLite single-row commits (WAL, synchronous=FULL)",
        commits,
        Unit::PerSecond,
    ));
    figures.push(Figure::new(
        "limit_sqlite_batched_rows",
        "Limit: SQLite rows in commits of 500",
        rows,
        Unit::PerSecond,
    ));
    figures.push(Figure::new(
        "limit_http_puts",
        "Limit: loopback HTTP PUTs, 64 connections",
        http,
        Unit::PerSecond,
    ));

    say("measuring enqueue throughput");
    figures.extend(enqueue_figures(&dir.join("enqueue"), plan, commits, rows).await?);
    quiesce(&dir.join("enqueue"));

    say(&format!(
        "dispatching {} jobs at 0 ms latency",
        plan.dispatch
    ));
    let (fast, fast_sent) =
        dispatch::throughput(&dir.join("dispatch-0ms"), plan.dispatch, Duration::ZERO).await?;
    quiesce(&dir.join("dispatch-0ms"));
    figures.push(
        Figure::new(
            "dispatch_0ms",
            format!("Dispatch, {} due now, 0 ms latency", count(plan.dispatch)),
            fast,
            Unit::PerSecond,
        )
        .target(Target::at_least(fast, 10_000.0, Unit::PerSecond))
        .limit(Limit::rate(fast, http, "loopback PUTs")),
    );
    say(&format!(
        "dispatching {} jobs at 20 ms latency",
        plan.dispatch
    ));
    let latency = Duration::from_millis(20);
    let (slow, slow_sent) =
        dispatch::throughput(&dir.join("dispatch-20ms"), plan.dispatch, latency).await?;
    quiesce(&dir.join("dispatch-20ms"));
    let allowed = fixture::CONCURRENCY as f64 / latency.as_secs_f64();
    figures.push(
        Figure::new(
            "dispatch_20ms",
            format!(
                "Dispatch, {} due now, 20 ms latency, concurrency {}",
                count(plan.dispatch),
                fixture::CONCURRENCY
            ),
            slow,
            Unit::PerSecond,
        )
        .target(Target::at_least(slow, 2_500.0, Unit::PerSecond))
        .limit(Limit::rate(slow, allowed, "concurrency / latency")),
    );

    say(&format!(
        "lateness: {} jobs over {} s, then {} due at one instant",
        plan.spread,
        plan.spread_over.as_secs_f64(),
        plan.burst
    ));
    let lateness = dispatch::lateness(
        &dir.join("lateness"),
        plan.spread,
        plan.spread_over,
        plan.burst,
    )
    .await?;
    figures.extend(lateness_figures(&lateness, plan, http));
    quiesce(&dir.join("lateness"));

    say("enqueue and dispatch again, with metrics off and on in turn");
    let cost = metrics::cost(
        &dir.join("metrics"),
        plan.parallel,
        plan.dispatch,
        plan.metrics_rounds,
    )
    .await?;
    figures.extend(metrics::figures(&cost, plan.parallel, plan.dispatch));
    quiesce(&dir.join("metrics"));

    let scale = scale::run(
        &dir.join("scale"),
        plan.queued,
        plan.idle,
        plan.parallel,
        &say,
    )
    .await?;
    figures.extend(scale_figures(&scale, plan, rows));
    let drawn = Drawn {
        title: format!(
            "{} jobs due over {} s",
            count(plan.spread),
            plan.spread_over.as_secs_f64()
        ),
        lateness_ms: lateness.spread_ms,
        runs: vec![
            picture::Run {
                name: format!("{} due now, 0 ms latency", count(plan.dispatch)),
                sent: fast_sent,
            },
            picture::Run {
                name: format!("{} due now, 20 ms latency", count(plan.dispatch)),
                sent: slow_sent,
            },
        ],
    };
    Ok((figures, drawn))
}

async fn enqueue_figures(
    dir: &Path,
    plan: Plan,
    commits: f64,
    rows: f64,
) -> anyhow::Result<Vec<Figure>> {
    let simulator =
        crate::simulate::Simulator::start("127.0.0.1:0", crate::simulate::SimOptions::default())
            .await
            .context("cannot start the simulator")?;
    let config = fixture::config(dir, &simulator.base_url())?;
    let daemon = crate::daemon::Daemon::open(config.clone())
        .await
        .context("cannot open the benchmark daemon")?;
    let running = fixture::InProcess::start(&config, daemon)?;
    fixture::wait_ready(&running.socket).await?;
    let single = enqueue::rate(&running.socket, plan.single, "single").await?;
    let parallel = enqueue::rate(&running.socket, plan.parallel, "parallel").await?;
    let batched = enqueue::rate(&running.socket, plan.batched, "batched").await?;
    running.stop().await?;
    simulator
        .stop()
        .await
        .context("the simulator did not stop cleanly")?;
    Ok(vec![
        Figure::new(
            "enqueue_1_connection",
            "Enqueue, 1 connection, one job per request",
            single,
            Unit::PerSecond,
        )
        .limit(Limit::rate(single, commits, "single-row commits")),
        Figure::new(
            "enqueue_16_connections",
            "Enqueue, 16 connections, one job per request",
            parallel,
            Unit::PerSecond,
        )
        .target(Target::at_least(parallel, 20_000.0, Unit::PerSecond))
        .limit(Limit::rate(parallel, rows, "batched rows")),
        Figure::new(
            "enqueue_batches",
            format!(
                "Enqueue, batches of {}, {} connections",
                plan.batched.batch, plan.batched.connections
            ),
            batched,
            Unit::PerSecond,
        )
        .target(Target::at_least(batched, 60_000.0, Unit::PerSecond))
        .limit(Limit::rate(batched, rows, "batched rows")),
    ])
}

fn lateness_figures(lateness: &dispatch::Lateness, plan: Plan, http: f64) -> Vec<Figure> {
    let spread = lateness.spread;
    let over = format!(
        "{} jobs over {} s",
        count(plan.spread),
        plan.spread_over.as_secs_f64()
    );
    let burst = lateness.burst.as_secs_f64();
    // Sending the burst can take no less than the machine's raw PUT rate allows.
    let fastest = plan.burst as f64 / http;
    vec![
        Figure::new(
            "lateness_p50",
            format!("Lateness p50, {over}"),
            spread.p50,
            Unit::Millis,
        )
        .target(Target::at_most(spread.p50, 2.0, Unit::Millis)),
        Figure::new(
            "lateness_p99",
            format!("Lateness p99, {over}"),
            spread.p99,
            Unit::Millis,
        )
        .target(Target::at_most(spread.p99, 10.0, Unit::Millis)),
        Figure::new(
            "lateness_max",
            format!("Lateness max, {over}"),
            spread.max,
            Unit::Millis,
        ),
        Figure::new(
            "lateness_early",
            format!("Sent early, {over}"),
            spread.early as f64,
            Unit::Count,
        )
        .target(Target::at_most(spread.early as f64, 0.0, Unit::Count)),
        Figure::new(
            "burst_last_sent",
            format!("{} due at one instant: last sent after", count(plan.burst)),
            burst,
            Unit::Seconds,
        )
        .target(Target::at_most(burst, 3.0, Unit::Seconds))
        .limit(Limit::duration(
            burst,
            fastest,
            Unit::Seconds,
            "at the loopback PUT rate",
        )),
    ]
}

fn scale_figures(scale: &scale::Scale, plan: Plan, rows: f64) -> Vec<Figure> {
    let n = count(plan.queued);
    let startup = scale.startup.as_secs_f64();
    let stats = scale.stats.as_secs_f64() * 1_000.0;
    let idle = plan.idle.as_secs_f64();
    vec![
        Figure::new(
            "scale_fill",
            format!("{n} queued: filled through the store's batch enqueue"),
            scale.fill_rate,
            Unit::PerSecond,
        )
        .limit(Limit::rate(scale.fill_rate, rows, "batched rows")),
        Figure::new(
            "scale_settle",
            format!("{n} queued: due times settled anew, as after a change of windows"),
            scale.settle.as_secs_f64(),
            Unit::Seconds,
        ),
        Figure::new(
            "scale_startup",
            format!("{n} queued: start-up until ping answers"),
            startup,
            Unit::Seconds,
        )
        .target(Target::at_most(startup, 1.0, Unit::Seconds)),
        Figure::new(
            "scale_idle_rss",
            format!("{n} queued: idle RSS of the daemon"),
            scale.rss_mib,
            Unit::MiB,
        )
        .target(Target::at_most(scale.rss_mib, 64.0, Unit::MiB)),
        Figure::new(
            "scale_idle_cpu",
            format!(
                "{n} queued: idle CPU over {idle} s ({:.2} CPU s)",
                scale.cpu_seconds
            ),
            scale.cpu_percent,
            Unit::Percent,
        )
        .target(Target::at_most(scale.cpu_percent, 1.0, Unit::Percent)),
        Figure::new(
            "scale_stats",
            format!("{n} queued: `stats` round trip (median of 5)"),
            stats,
            Unit::Millis,
        )
        .target(Target::at_most(stats, 50.0, Unit::Millis)),
        Figure::new(
            "scale_cancel_tag",
            format!(
                "{n} queued: cancel the {} jobs of one tag, one request",
                count(scale.cancelled as usize)
            ),
            scale.cancel_tag.as_secs_f64(),
            Unit::Seconds,
        )
        .target(Target::at_most(
            scale.cancel_tag.as_secs_f64(),
            1.0,
            Unit::Seconds,
        )),
        Figure::new(
            "scale_enqueue",
            format!(
                "{n} queued: enqueue, {} connections, one job per request (median of {})",
                plan.parallel.connections,
                scale::ENQUEUE_RUNS
            ),
            scale.full_rate,
            Unit::PerSecond,
        )
        .target(Target::at_least(
            scale.full_rate,
            0.8 * scale.empty_rate,
            Unit::PerSecond,
        ))
        .limit(Limit::rate(
            scale.full_rate,
            scale.empty_rate,
            "same, empty queue",
        )),
    ]
}

/// A count for a figure's name: 1000000 → "1,000,000".
fn count(n: usize) -> String {
    report::thousands(n as f64)
}

/// The machine, from /proc and the temporary directory's mount.
fn machine(dir: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        model,
        ram_gib: ram_kib / 1024.0 / 1024.0,
        filesystem: filesystem(dir),
    }
}

/// The type of the filesystem holding `dir`: the longest mount point in
/// /proc/mounts that is a prefix of it.
fn filesystem(dir: &Path) -> String {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(point)
                .then(|| (point.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
        .unwrap_or_else(|| "an unknown filesystem".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_small_plan_is_a_hundredth() {
        let (full, small) = (Plan::new(Size::Full), Plan::new(Size::Small));
        assert_eq!(small.queued * 100, full.queued);
        assert_eq!(small.dispatch * 100, full.dispatch);
        assert_eq!(small.parallel.connections, full.parallel.connections);
        assert!(small.idle < full.idle);
    }

    #[test]
    fn the_machine_is_described() {
        let m = machine(Path::new("/"));
        assert!(m.cpus >= 1);
        assert!(!m.filesystem.is_empty());
    }
}
