//! The machine's raw limits, measured without the daemon, so that every
//! figure can be shown as a share of what the hardware allows.
//!
//! - Durable single-row commits: a plain rusqlite loop, one INSERT per
//!   transaction, WAL with `synchronous = FULL`, on the benchmark's own
//!   temporary directory (the same disk the daemon writes to).
//! - Rows in batched commits: the same table, 500 rows per transaction.
//! - Loopback HTTP: PUTs to the simulator's send route from 64 tasks on
//!   one pooled reqwest client, the body the daemon would send.
//!
//! - PostgreSQL's single-row commits (with `--backend postgres`):
//!   autocommit INSERTs from one connection, then from
//!   [`PG_CONNECTIONS`] at once, whose total over the single rate is how
//!   many commits the server groups into one flush.
//!
//! The SQLite table has the shape that matters for cost (a rowid, a unique
//! text key, an indexed time and a payload of the size of a job's) but is
//! not the daemon's schema; SQL for the queue itself stays in
//! [`crate::store`].

use crate::config::PostgresConfig;
use crate::simulate::{SimOptions, Simulator};
use anyhow::Context as _;
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Rows per transaction in the batched measurement, as in an enqueue batch.
const BATCH_ROWS: usize = 500;
/// Concurrent HTTP connections, as the dispatcher's concurrency.
const HTTP_CONNECTIONS: usize = 64;

fn open(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("cannot create a scratch database at {}", path.display()))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE rows (
             id      INTEGER PRIMARY KEY,
             key     TEXT UNIQUE,
             at      INTEGER NOT NULL,
             payload TEXT NOT NULL
         );
         CREATE INDEX rows_by_at ON rows (at, id);",
    )
    .context("cannot set up the scratch database")?;
    Ok(conn)
}

/// A payload the size of a job's.
const PAYLOAD: &str = r#"{"message":"bench 123456 1767225600000","phone":"+15550100000"}"#;

/// Inserts `rows` rows per transaction for `window`; returns (transactions, rows) per second.
fn insert_for(
    conn: &Connection,
    rows: usize,
    window: Duration,
    offset: &mut u64,
) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let mut transactions = 0u64;
    let mut insert = conn.prepare("INSERT INTO rows (key, at, payload) VALUES (?1, ?2, ?3)")?;
    while started.elapsed() < window {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for _ in 0..rows {
            *offset += 1;
            let n = *offset;
            insert.execute(params![format!("limit-{n:09}"), n as i64, PAYLOAD])?;
        }
        conn.execute_batch("COMMIT")?;
        transactions += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rows = transactions * rows as u64;
    Ok((transactions as f64 / seconds, rows as f64 / seconds))
}

/// Durable single-row commits per second, then rows per second in
/// transactions of 500, each measured for `window`, in `dir/limits`.
pub fn sqlite(dir: &Path, window: Duration) -> anyhow::Result<(f64, f64)> {
    let dir = dir.join("limits");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let conn = open(&dir.join("limits.db"))?;
    let mut offset = 0;
    let (commits, _) = insert_for(&conn, 1, window, &mut offset)
        .context("the single-row commit measurement failed")?;
    let (_, rows) = insert_for(&conn, BATCH_ROWS, window, &mut offset)
        .context("the batched commit measurement failed")?;
    Ok((commits, rows))
}

/// Loopback HTTP PUTs per second against a fresh simulator, 64 at a time,
/// measured for `window` after every connection has made one request.
pub async fn http(window: Duration) -> anyhow::Result<f64> {
    let simulator = Simulator::start("127.0.0.1:0", SimOptions::default())
        .await
        .context("cannot start the simulator")?;
    let url = format!("{}/api/v2/message/send/sms", simulator.base_url());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(HTTP_CONNECTIONS)
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build an HTTP client")?;
    let done = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(HTTP_CONNECTIONS + 1));
    let stop_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..HTTP_CONNECTIONS {
        let (client, url, done, barrier, stop_at) = (
            client.clone(),
            url.clone(),
            done.clone(),
            barrier.clone(),
            stop_at.clone(),
        );
        tasks.spawn(async move {
            let put = || async {
                let response = client
                    .put(&url)
                    .bearer_auth("bench")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(PAYLOAD)
                    .send()
                    .await?;
                let ok = response.status().is_success();
                response.bytes().await?;
                anyhow::Ok(ok)
            };
            // The warm-up opens this task's connection outside the window.
            let warm = put().await;
            barrier.wait().await;
            warm?;
            while stop_at.get().is_none_or(|at| Instant::now() < *at) {
                if put().await? {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let _ = stop_at.set(started + window);
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(e.into()),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    simulator
        .stop()
        .await
        .context("the simulator did not stop cleanly")?;
    if let Some(e) = failure {
        return Err(e.context("a loopback PUT failed"));
    }
    Ok(done.load(Ordering::Relaxed) as f64 / seconds)
}

/// Concurrent connections in PostgreSQL's grouped commit rate, as many as
/// the enqueue figure uses.
pub const PG_CONNECTIONS: usize = 16;

/// PostgreSQL's single-row commits per second: from one connection, then
/// in total from [`PG_CONNECTIONS`] connections at once, each for `window`,
/// in a scratch table of the database `store` names.
pub async fn postgres(store: &PostgresConfig, window: Duration) -> anyhow::Result<(f64, f64)> {
    let setup = crate::store::postgres::connect(store)
        .await
        .context("cannot connect to PostgreSQL for its commit rate")?;
    setup
        .batch_execute(
            "CREATE TABLE rows (
                 id      BIGSERIAL PRIMARY KEY,
                 key     TEXT UNIQUE,
                 at      BIGINT NOT NULL,
                 payload TEXT NOT NULL
             );
             CREATE INDEX rows_by_at ON rows (at, id);",
        )
        .await
        .context("cannot create PostgreSQL's scratch table")?;
    let next = Arc::new(AtomicU64::new(0));
    let single = pg_commits(store, 1, window, &next)
        .await
        .context("the PostgreSQL single-row commit measurement failed")?;
    let grouped = pg_commits(store, PG_CONNECTIONS, window, &next)
        .await
        .context("the PostgreSQL grouped commit measurement failed")?;
    Ok((single, grouped))
}

/// Autocommit single-row INSERTs from `connections` connections for
/// `window`, after every one is open; commits per second in total.
async fn pg_commits(
    store: &PostgresConfig,
    connections: usize,
    window: Duration,
    next: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = crate::store::postgres::connect(store).await?;
        let insert = client
            .prepare("INSERT INTO rows (key, at, payload) VALUES ($1, $2, $3)")
            .await?;
        clients.push((client, insert));
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + window;
    let mut tasks = tokio::task::JoinSet::new();
    for (client, insert) in clients {
        let (done, next) = (done.clone(), next.clone());
        tasks.spawn(async move {
            while Instant::now() < stop_at {
                let n = next.fetch_add(1, Ordering::Relaxed) + 1;
                let at = i64::try_from(n).unwrap_or(i64::MAX);
                client
                    .execute(&insert, &[&format!("limit-{n:09}"), &at, &PAYLOAD])
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a commit task failed")??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
