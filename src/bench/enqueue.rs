//! Enqueue throughput with durable acks, measured as a client sees it.
//!
//! `connections` clients each send their share of request lines one after
//! another, waiting for each answer, which the daemon writes only after the
//! job is committed. The lines are built before the clock starts, and every
//! connection is open before the first line is sent. Jobs are due far in
//! the future, so the dispatcher stays idle and only the write path is
//! measured. The same function serves the in-process daemon and the child
//! process of the scale phase.

use super::fixture::{self, Conn};
use crate::time::{self, Millis};
use anyhow::Context as _;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// How far ahead enqueued jobs are due: far enough never to be sent.
const FAR_AHEAD: Duration = Duration::from_secs(30 * 86_400);

/// One enqueue measurement.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub connections: usize,
    pub jobs: usize,
    /// Jobs per request; 1 sends `{"op":"enqueue","job":…}`.
    pub batch: usize,
}

/// Builds each connection's request lines; job keys are `{prefix}-{i}`.
fn lines(shape: Shape, prefix: &str, at: Millis) -> Vec<Vec<String>> {
    let batch = shape.batch.max(1);
    let requests: Vec<String> = (0..shape.jobs)
        .step_by(batch)
        .map(|start| {
            let end = (start + batch).min(shape.jobs);
            let job = |i: usize| fixture::job_json(&format!("{prefix}-{i}"), i, at);
            if shape.batch <= 1 {
                json!({"op": "enqueue", "job": job(start)}).to_string()
            } else {
                let jobs: Vec<Value> = (start..end).map(job).collect();
                json!({"op": "enqueue", "jobs": jobs}).to_string()
            }
        })
        .collect();
    let connections = shape.connections.max(1);
    let mut shares = vec![Vec::new(); connections];
    for (i, line) in requests.into_iter().enumerate() {
        shares[i % connections].push(line);
    }
    shares
}

/// Jobs per second acknowledged by the daemon at `socket`.
pub async fn rate(socket: &Path, shape: Shape, prefix: &str) -> anyhow::Result<f64> {
    let at = time::add(time::now(), FAR_AHEAD);
    let shares = lines(shape, prefix, at);
    let mut conns = Vec::with_capacity(shares.len());
    for _ in 0..shares.len() {
        conns.push(Conn::connect(socket).await?);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (mut conn, share) in conns.into_iter().zip(shares) {
        tasks.spawn(async move {
            for line in &share {
                conn.ask(line).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("an enqueue client failed")?
            .context("an enqueue was refused")?;
    }
    Ok(shape.jobs as f64 / started.elapsed().as_secs_f64())
}

/// The median of `runs` measurements of [`rate`], each with its own keys
/// (`{prefix}-{run}-{i}`), after one run that is not counted: the first
/// run after start-up also warms the daemon and its caches, and one
/// measurement of a second or so moves with whatever else the machine is
/// doing.
pub async fn median_rate(
    socket: &Path,
    shape: Shape,
    prefix: &str,
    runs: usize,
) -> anyhow::Result<f64> {
    rate(socket, shape, &format!("{prefix}-warm-up")).await?;
    let mut rates = Vec::with_capacity(runs.max(1));
    for run in 0..runs.max(1) {
        rates.push(rate(socket, shape, &format!("{prefix}-{run}")).await?);
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_shared_round_robin() {
        let single = lines(
            Shape {
                connections: 3,
                jobs: 7,
                batch: 1,
            },
            "k",
            0,
        );
        assert_eq!(single.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2, 2]);
        assert!(single[0][0].contains(r#""job":"#));
        let batched = lines(
            Shape {
                connections: 2,
                jobs: 1001,
                batch: 500,
            },
            "k",
            0,
        );
        assert_eq!(batched.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
        assert!(batched[1][0].contains(r#""jobs":"#));
    }
}
