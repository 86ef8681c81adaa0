//! The PostgreSQL figures of `bench --backend postgres`, each shown as a
//! share of PostgreSQL's own single-row commit rate measured in the same
//! run, on the same server.
//!
//! ```text
//! limits: single-row commits, 1 connection, then 16 ─► enqueue, 16 conns,
//!   1 node ─► dispatch at 0 ms: 1 node, 3 nodes ─► lateness, 3 nodes:
//!   spread, then the burst
//! ```
//!
//! Each phase has a scratch database of its own on the [`Server`], dropped
//! when the phase is over, and in-process daemons named `bench-1`..
//! `bench-3`, each with its own directory and socket, on that one database.
//! The enqueue target is 0.8 of what the server's commits allow with 16
//! connections: the single-row commit rate times how many commits the
//! server groups into one flush (the 16-connection rate over the single).

use super::dispatch::{self, Lateness, Lead};
use super::enqueue::{self, Shape};
use super::fixture;
use super::limits;
use super::pg_server::Server;
use super::report::{Figure, Limit, Target, Unit};
use super::{Plan, count, say};
use anyhow::Context as _;
use std::path::Path;
use std::time::Duration;

/// The daemons' nodes in the phases with several.
const NODES: usize = 3;

/// Enough lead to enqueue at a pessimistic 2,500 jobs/s: slower than on
/// SQLite, since every batch is a round trip to the server.
fn lead(spread: usize) -> Lead {
    let per_job = Duration::from_micros(400);
    Lead {
        spread: Duration::from_secs(1) + per_job * u32::try_from(spread).unwrap_or(u32::MAX),
        burst_per_job: per_job,
    }
}

/// What the PostgreSQL phases measured.
pub struct Measured {
    /// Single-row commits per second, one connection.
    pub single: f64,
    /// The same in total over 16 connections.
    pub grouped: f64,
    pub enqueue: f64,
    pub dispatch_one: f64,
    pub dispatch_three: f64,
    pub lateness: Lateness,
}

/// Runs every PostgreSQL phase on `server`, with directories under `dir`.
pub async fn measure(server: &Server, dir: &Path, plan: Plan) -> anyhow::Result<Measured> {
    say("measuring PostgreSQL's single-row commit rate");
    let url = server.scratch("limits").await?;
    let (single, grouped) =
        limits::postgres(&fixture::postgres_store(&url)?, plan.limit_window).await?;
    server.clean().await?;
    say(&format!(
        "PostgreSQL commits {single:.0} single rows/s from 1 connection, {grouped:.0}/s from {}",
        limits::PG_CONNECTIONS
    ));

    say("measuring enqueue throughput on PostgreSQL");
    let url = server.scratch("enqueue").await?;
    let enqueue = enqueue_rate(&dir.join("enqueue"), &url, plan.parallel).await?;
    server.clean().await?;

    let mut dispatched = [0.0; 2];
    for (rate, nodes) in dispatched.iter_mut().zip([1, NODES]) {
        say(&format!(
            "dispatching {} jobs at 0 ms latency on PostgreSQL, {nodes} node(s)",
            plan.dispatch
        ));
        let url = server.scratch(&format!("dispatch_{nodes}")).await?;
        let here = dir.join(format!("dispatch-{nodes}"));
        let configs = |base_url: &str| node_configs(&here, base_url, &url, nodes);
        (*rate, _) = dispatch::throughput_on(plan.dispatch, Duration::ZERO, &configs).await?;
        server.clean().await?;
    }

    say(&format!(
        "lateness on PostgreSQL, {NODES} nodes: {} jobs over {} s, then {} due at one instant",
        plan.spread,
        plan.spread_over.as_secs_f64(),
        plan.burst
    ));
    let url = server.scratch("lateness").await?;
    let here = dir.join("lateness");
    let configs = |base_url: &str| node_configs(&here, base_url, &url, NODES);
    let lateness = dispatch::lateness_on(
        plan.spread,
        plan.spread_over,
        plan.burst,
        lead(plan.spread),
        &configs,
    )
    .await?;
    server.clean().await?;
    Ok(Measured {
        single,
        grouped,
        enqueue,
        dispatch_one: dispatched[0],
        dispatch_three: dispatched[1],
        lateness,
    })
}

/// The configs of `nodes` daemons, `bench-1`.., in `dir/node-N`.
fn node_configs(
    dir: &Path,
    base_url: &str,
    url: &str,
    nodes: usize,
) -> anyhow::Result<Vec<crate::config::Config>> {
    (1..=nodes)
        .map(|n| {
            let here = dir.join(format!("node-{n}"));
            fixture::postgres_config(&here, base_url, url, &format!("bench-{n}"))
        })
        .collect()
}

/// Jobs per second enqueued by `shape.connections` clients of one daemon
/// on the database at `url`, after a warm-up a tenth the size that also
/// opens the daemon's pool.
async fn enqueue_rate(dir: &Path, url: &str, shape: Shape) -> anyhow::Result<f64> {
    let simulator =
        crate::simulate::Simulator::start("127.0.0.1:0", crate::simulate::SimOptions::default())
            .await
            .context("cannot start the simulator")?;
    let config = fixture::postgres_config(dir, &simulator.base_url(), url, "bench-1")?;
    let daemon = crate::daemon::Daemon::open(config.clone())
        .await
        .context("cannot open the benchmark daemon")?;
    let running = fixture::InProcess::start(&config, daemon)?;
    fixture::wait_ready(&running.socket).await?;
    let warm_up = Shape {
        jobs: (shape.jobs / 10).max(shape.connections),
        ..shape
    };
    let measured = async {
        enqueue::rate(&running.socket, warm_up, "pg-warm-up").await?;
        enqueue::rate(&running.socket, shape, "pg-parallel").await
    }
    .await;
    running.stop().await?;
    simulator
        .stop()
        .await
        .context("the simulator did not stop cleanly")?;
    measured
}

/// The figures, each beside the single-row commit rate, with the issue's
/// targets for PostgreSQL.
pub fn figures(m: &Measured, plan: Plan) -> Vec<Figure> {
    let single = m.single;
    let commit_ms = if single > 0.0 {
        1_000.0 / single
    } else {
        f64::NAN
    };
    let commits = "single-row commits";
    let grouping = if single > 0.0 {
        m.grouped / single
    } else {
        f64::NAN
    };
    let enqueue_target = 0.8 * single * grouping;
    let spread = m.lateness.spread;
    let over = format!(
        "{} jobs over {} s, {NODES} nodes",
        count(plan.spread),
        plan.spread_over.as_secs_f64()
    );
    let burst = m.lateness.burst.as_secs_f64();
    let one_commit = |value: f64| Limit::duration(value, commit_ms, Unit::Millis, "one commit");
    vec![
        Figure::new(
            "limit_pg_commits",
            "Limit: PostgreSQL single-row commits, 1 connection (fsync on)",
            single,
            Unit::PerSecond,
        ),
        Figure::new(
            "limit_pg_grouped_commits",
            format!(
                "Limit: PostgreSQL single-row commits, {} connections (grouped ×{grouping:.1})",
                limits::PG_CONNECTIONS
            ),
            m.grouped,
            Unit::PerSecond,
        )
        .limit(Limit::rate(m.grouped, single, commits)),
        Figure::new(
            "pg_enqueue_16_connections",
            format!(
                "Enqueue, {} connections, one job per request",
                plan.parallel.connections
            ),
            m.enqueue,
            Unit::PerSecond,
        )
        .target(Target::at_least(m.enqueue, enqueue_target, Unit::PerSecond))
        .limit(Limit::rate(m.enqueue, single, commits)),
        Figure::new(
            "pg_dispatch_0ms_1_node",
            format!(
                "Dispatch, {} due now, 0 ms latency, 1 node",
                count(plan.dispatch)
            ),
            m.dispatch_one,
            Unit::PerSecond,
        )
        .limit(Limit::rate(m.dispatch_one, single, commits)),
        Figure::new(
            "pg_dispatch_0ms_3_nodes",
            format!(
                "Dispatch, {} due now, 0 ms latency, {NODES} nodes",
                count(plan.dispatch)
            ),
            m.dispatch_three,
            Unit::PerSecond,
        )
        .limit(Limit::rate(m.dispatch_three, single, commits)),
        Figure::new(
            "pg_lateness_p50",
            format!("Lateness p50, {over}"),
            spread.p50,
            Unit::Millis,
        )
        .limit(one_commit(spread.p50)),
        Figure::new(
            "pg_lateness_p99",
            format!("Lateness p99, {over}"),
            spread.p99,
            Unit::Millis,
        )
        .target(Target::at_most(spread.p99, 20.0, Unit::Millis))
        .limit(one_commit(spread.p99)),
        Figure::new(
            "pg_lateness_early",
            format!("Sent early, {over}"),
            spread.early as f64,
            Unit::Count,
        )
        .target(Target::at_most(spread.early as f64, 0.0, Unit::Count)),
        Figure::new(
            "pg_burst_last_sent",
            format!(
                "{} due at one instant, {NODES} nodes: last sent after",
                count(plan.burst)
            ),
            burst,
            Unit::Seconds,
        )
        .target(Target::at_most(burst, 5.0, Unit::Seconds))
        .limit(Limit::duration(
            burst,
            plan.burst as f64 / single,
            Unit::Seconds,
            &format!("{} {commits}", count(plan.burst)),
        )),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Size;

    fn measured(enqueue: f64, p99: f64, burst: f64) -> Measured {
        Measured {
            single: 500.0,
            grouped: 4_000.0,
            enqueue,
            dispatch_one: 1_000.0,
            dispatch_three: 2_500.0,
            lateness: Lateness {
                spread: dispatch::Spread {
                    p50: 2.0,
                    p99,
                    max: 40.0,
                    early: 0,
                },
                spread_ms: Vec::new(),
                burst: Duration::from_secs_f64(burst),
            },
        }
    }

    fn find<'a>(figures: &'a [Figure], id: &str) -> &'a Figure {
        figures
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no figure {id}"))
    }

    #[test]
    fn every_figure_is_a_share_of_the_single_commit_rate() {
        let plan = Plan::new(Size::Full);
        let figures = figures(&measured(3_000.0, 12.0, 4.0), plan);
        let enqueue = find(&figures, "pg_enqueue_16_connections");
        // 0.8 × 500/s × (4,000 / 500) grouped = 3,200/s.
        let target = enqueue.target.as_ref().expect("a target");
        assert_eq!(target.text, "≥ 3,200/s");
        assert!(!target.met);
        let limit = enqueue.limit.as_ref().expect("a limit");
        assert!((limit.ratio - 6.0).abs() < 1e-9, "{limit:?}");
        assert!(limit.text.contains("500/s"), "{limit:?}");
        let grouped = find(&figures, "limit_pg_grouped_commits");
        assert!(grouped.name.contains("×8.0"), "{}", grouped.name);
        assert!(
            (find(&figures, "pg_dispatch_0ms_3_nodes")
                .limit
                .as_ref()
                .unwrap()
                .ratio
                - 5.0)
                .abs()
                < 1e-9
        );
        // A commit takes 2 ms; a p99 of 12 ms is a sixth of that.
        let p99 = find(&figures, "pg_lateness_p99");
        assert!(p99.target.as_ref().unwrap().met);
        assert!((p99.limit.as_ref().unwrap().ratio - 2.0 / 12.0).abs() < 1e-9);
        // 20,000 commits take 40 s; the burst took 4 s.
        let burst = find(&figures, "pg_burst_last_sent");
        assert_eq!(burst.target.as_ref().unwrap().text, "≤ 5.00 s");
        assert!(burst.target.as_ref().unwrap().met);
        assert!((burst.limit.as_ref().unwrap().ratio - 10.0).abs() < 1e-9);
    }

    #[test]
    fn missed_targets_are_shown_in_the_table() {
        let plan = Plan::new(Size::Full);
        let figures = figures(&measured(3_500.0, 25.0, 6.0), plan);
        let text = super::super::report::table(&figures);
        let row = |id: &str| {
            let name = &find(&figures, id).name;
            text.lines()
                .find(|l| l.contains(name.as_str()))
                .unwrap_or_else(|| panic!("no row for {id}:\n{text}"))
                .to_owned()
        };
        assert!(row("pg_enqueue_16_connections").contains("| met"), "{text}");
        assert!(row("pg_lateness_p99").contains("MISSED"), "{text}");
        assert!(row("pg_burst_last_sent").contains("MISSED"), "{text}");
        assert!(row("pg_lateness_p99").contains("≤ 20.0 ms"), "{text}");
        assert_eq!(text.lines().count(), figures.len() + 2);
    }

    #[test]
    fn the_lead_grows_with_the_jobs() {
        assert_eq!(lead(0).spread, Duration::from_secs(1));
        assert_eq!(lead(5_000).spread, Duration::from_secs(3));
        assert_eq!(lead(5_000).burst_per_job, Duration::from_micros(400));
    }
}
