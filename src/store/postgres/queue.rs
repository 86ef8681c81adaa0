//! The daemon's store on PostgreSQL: the queue that several nodes share.
//!
//! [`Queue::open`] migrates the schema, makes this node known in `nodes`
//! and takes its locks, then puts back in line what this node's name left
//! in `sending` (a crash of this node) and what dead nodes' leases let go.
//! Each store call is one transaction on a connection of the [`Pool`];
//! PostgreSQL groups concurrent commits itself, so there is no store
//! thread here.
//!
//! [`Queue::keep`] runs beside the daemon's other tasks, once a second (a
//! third of `store.lease` when that is shorter):
//! - it writes this node's heartbeat and the count of its jobs in flight;
//! - it renews the lease on this node's `sending` jobs, so that a request
//!   in flight longer than `store.lease` stays this node's;
//! - it recovers any `sending` job whose lease has run out (its node died
//!   or lost PostgreSQL for longer than the lease), within a second of the
//!   lease's end, once this node has reached PostgreSQL for a whole lease
//!   (after an outage every lease looks run out, though its node lives);
//! - it keeps one connection open that listens for `coax_due`, which an
//!   enqueue or a reschedule on any node sends when a job falls due soon,
//!   and wakes this node's dispatcher on it. The same connection holds the
//!   shared daemon lock (which `import` takes exclusively) and this node's
//!   name lock, so that two daemons cannot run under one name. A node that
//!   dies lets both go with its connection.

use super::group::{Grouper, NewOne};
use super::group_finish::{Finished, Recorder};
use super::pool::{Pool, Tx};
use super::shared::DB_NOW;
use super::{StoreError, pg_error, schema};
use crate::config::{OnAmbiguous, PostgresConfig};
use crate::store::{Opened, Options, Recovered};
use crate::time::{Clock, Millis};
use crate::window::Calendar;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio_postgres::Client;

/// The channel an enqueue or reschedule notifies when a job falls due soon.
pub(super) const DUE_CHANNEL: &str = "coax_due";

/// How often [`Queue::keep`] beats, renews and recovers.
const BEAT: Duration = Duration::from_secs(1);

/// The advisory lock class of node names (`pg_try_advisory_lock(class,
/// hashtext(name))`): "Coax" in ASCII as an int4.
const NODE_LOCK_CLASS: i32 = 0x436f_6178;

/// How long a daemon starting under a name that beat lately watches for
/// another beat under it before it takes the name: over two [`BEAT`]s.
const NAME_WATCH: Duration = Duration::from_millis(2_500);

/// The queue on PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    pub(super) pool: Pool,
    /// `node.name`: written on each claim and attempt.
    pub(super) node: Arc<str>,
    /// `store.lease` in milliseconds.
    pub(super) lease_ms: Millis,
    pub(super) on_ambiguous: OnAmbiguous,
    pub(super) max_attempts: u32,
    /// Where single enqueues wait to be stored together.
    pub(super) enqueues: Grouper<NewOne>,
    /// Where attempts' outcomes wait to be recorded together.
    pub(super) finishes: Grouper<Finished>,
    /// Fired when a notification says a job fell due.
    woken: Arc<Notify>,
    /// The listening connection [`Queue::open`] made, until
    /// [`Queue::keep`] takes it over.
    listener: Arc<tokio::sync::Mutex<Option<Listener>>>,
}

impl Queue {
    /// Connects, migrates, registers this node and recovers claims that no
    /// node holds any more.
    pub async fn open(
        config: PostgresConfig,
        options: &Options,
        now: Millis,
    ) -> Result<(Queue, Opened), StoreError> {
        let lease_ms = Millis::try_from(config.lease.as_millis()).unwrap_or(Millis::MAX);
        let database = config.describe();
        let pool = Pool::new(config);
        {
            let mut client = pool.get().await?;
            schema::migrate(&mut client, &database).await?;
        }
        let node: Arc<str> = Arc::from(options.node.as_str());
        let queue = Queue {
            enqueues: Grouper::start(pool.clone()),
            finishes: Grouper::start(Recorder {
                pool: pool.clone(),
                node: node.clone(),
            }),
            pool,
            node,
            lease_ms,
            on_ambiguous: options.on_ambiguous,
            max_attempts: options.max_attempts,
            woken: Arc::new(Notify::new()),
            listener: Arc::new(tokio::sync::Mutex::new(None)),
        };
        // First, so that a second daemon under this node's name is refused
        // before it touches the queue.
        let listener = queue.listen().await?;
        queue.name_unused().await?;
        *queue.listener.lock().await = Some(listener);
        queue.beat().await?;
        let recovered = queue.recover(&options.calendar, now, true).await?;
        let (recounted, deferred) = queue.reconcile_counts().await?;
        for r in &recounted {
            tracing::warn!(
                state = r.state,
                kept = r.kept,
                counted = r.counted,
                "the count of jobs in a state disagreed with the jobs (was the database edited by hand?); corrected"
            );
        }
        if let Some((kept, counted)) = deferred {
            tracing::warn!(
                kept,
                counted,
                "the count of deferred jobs disagreed with the jobs (was the database edited by hand?); corrected"
            );
        }
        Ok((
            queue,
            Opened {
                recovered,
                recounted,
            },
        ))
    }

    /// Refuses this node's name while another daemon still beats under it.
    ///
    /// The name's advisory lock lives on the listening connection, and a
    /// running node loses it for a moment whenever that connection drops
    /// (a server restart, `pg_terminate_backend`): a daemon started under
    /// the same name just then gets the lock. A live node beats each
    /// [`BEAT`] on its other connections, so a heartbeat that moves while
    /// this one watches is another daemon's. A crashed node's heartbeat
    /// stands still: its restart waits at most [`NAME_WATCH`].
    async fn name_unused(&self) -> Result<(), StoreError> {
        let during = "checking that no other daemon runs as this node";
        let beat = || async {
            let client = self.pool.get().await?;
            let row = client
                .query_opt(
                    &format!(
                        "SELECT last_heartbeat, {DB_NOW} - last_heartbeat
                         FROM nodes WHERE name = $1"
                    ),
                    &[&&*self.node],
                )
                .await
                .map_err(pg_error(during))?;
            Ok::<_, StoreError>(row.map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))))
        };
        let watch = Millis::try_from(NAME_WATCH.as_millis()).unwrap_or(Millis::MAX);
        // No row (a clean stop removes it) or a beat long past: no node.
        let Some((first, age)) = beat().await? else {
            return Ok(());
        };
        if age > watch {
            return Ok(());
        }
        let until = tokio::time::Instant::now() + NAME_WATCH;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(BEAT / 5).await;
            if beat().await?.is_some_and(|(last, _)| last != first) {
                return Err(name_taken(&self.node));
            }
        }
        Ok(())
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Waits until a notification says a job fell due.
    pub async fn woken(&self) {
        self.woken.notified().await
    }

    /// Writes this node's heartbeat and count of requests in flight. The
    /// heartbeat is the database's time, which every node (and `import`)
    /// judges it by, so a node whose clock is off is neither dropped from
    /// `stats` nor kept in it too long.
    async fn beat(&self) -> Result<(), StoreError> {
        let during = "writing this node's heartbeat";
        let client = self.pool.get().await?;
        client
            .execute(
                &format!(
                    "INSERT INTO nodes (name, started_at, last_heartbeat, in_flight)
                     VALUES ($1, {DB_NOW}, {DB_NOW},
                             (SELECT count(*) FROM jobs WHERE state = 'sending' AND node = $1))
                     ON CONFLICT (name) DO UPDATE
                     SET last_heartbeat = excluded.last_heartbeat, in_flight = excluded.in_flight"
                ),
                &[&&*self.node],
            )
            .await
            .map_err(pg_error(during))?;
        Ok(())
    }

    /// Beats, renews and recovers every [`BEAT`], and wakes the
    /// dispatcher on each `coax_due`, until `stop` turns true. A failure
    /// goes to `report` (the store's outage report, which logs an outage
    /// once) and is tried again a beat later.
    pub async fn keep(
        self,
        calendar: impl Fn() -> Arc<Calendar> + Send,
        clock: Arc<dyn Clock>,
        report: impl Fn(Result<(), StoreError>) + Send + Sync,
        stop: watch::Receiver<bool>,
    ) {
        let beating = async {
            let mut stop = stop.clone();
            // A lease is renewed well before it runs out, however short:
            // renewed only once per lease, it would run out for a moment
            // before each renewal, and another node could take the job.
            let period = BEAT.min(Duration::from_millis(self.lease_ms.max(3) as u64 / 3));
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let lease = Duration::from_millis(u64::try_from(self.lease_ms).unwrap_or(0));
            // Since when this upkeep has reached PostgreSQL without a break.
            let mut reached_since = Some(tokio::time::Instant::now());
            let mut failing = false;
            while !*stop.borrow() {
                tokio::select! {
                    _ = stop.changed() => continue,
                    _ = ticks.tick() => {}
                }
                let now = clock.wall();
                let result: Result<(), StoreError> = async {
                    self.beat().await?;
                    self.renew().await?;
                    self.analyze_grown().await?;
                    // After an outage every claim's lease looks run out,
                    // yet the nodes holding them live, and renew within a
                    // beat of the server's return: others' claims are taken
                    // only once this node has reached it for a whole lease.
                    let since = *reached_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() < lease {
                        return Ok(());
                    }
                    let recovered = self.recover(&calendar(), now, false).await?;
                    log_recovered(&recovered, "its node's lease ran out");
                    if !recovered.is_empty() {
                        self.woken.notify_one();
                    }
                    Ok(())
                }
                .await;
                match &result {
                    Err(e) => {
                        reached_since = None;
                        // An outage is reported by `report`, once; any other
                        // failure is logged here, once until upkeep works.
                        if !e.is_unavailable() && !failing {
                            tracing::warn!(error = %e, "the queue's upkeep failed; retrying each beat");
                        }
                        failing = true;
                    }
                    Ok(()) => failing = false,
                }
                report(result);
            }
        };
        let listening = async {
            let mut stop = stop.clone();
            let mut listener = self.listener.lock().await.take();
            while !*stop.borrow() {
                let Some(l) = listener.as_mut() else {
                    tokio::select! {
                        _ = stop.changed() => continue,
                        _ = tokio::time::sleep(BEAT) => {}
                    }
                    listener = match self.listen().await {
                        Ok(l) => {
                            // Whatever fell due while it was away.
                            self.woken.notify_one();
                            Some(l)
                        }
                        Err(e) => {
                            report(Err(e));
                            None
                        }
                    };
                    continue;
                };
                tokio::select! {
                    _ = stop.changed() => {}
                    heard = l.notices.recv() => match heard {
                        Some(_) => self.woken.notify_one(),
                        // The connection ended: listen anew.
                        None => listener = None,
                    },
                }
            }
        };
        tokio::join!(beating, listening);
        // A node that stopped is not live: stats stops listing it, and an
        // import need not wait out its lease.
        if let Ok(client) = self.pool.get().await
            && let Err(e) = client
                .execute("DELETE FROM nodes WHERE name = $1", &[&&*self.node])
                .await
        {
            tracing::debug!(error = %e, "cannot remove this node from nodes");
        }
        self.pool.close();
    }

    /// Opens the listening connection, takes the daemon's shared lock and
    /// this node's name lock on it, and listens for [`DUE_CHANNEL`].
    async fn listen(&self) -> Result<Listener, StoreError> {
        let during = "listening for due jobs";
        let (tx, notices) = mpsc::unbounded_channel();
        let client = super::connect_listening(self.pool.config(), tx).await?;
        let taken: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&NODE_LOCK_CLASS, &&*self.node],
            )
            .await
            .map_err(pg_error(during))?
            .get(0);
        if !taken {
            return Err(name_taken(&self.node));
        }
        client
            .execute(
                "SELECT pg_advisory_lock_shared($1)",
                &[&super::transfer::DAEMON_LOCK],
            )
            .await
            .map_err(pg_error(during))?;
        client
            .batch_execute(&format!("LISTEN {DUE_CHANNEL}"))
            .await
            .map_err(pg_error(during))?;
        Ok(Listener {
            _client: client,
            notices,
        })
    }
}

/// The refusal of a name another daemon runs under.
fn name_taken(node: &str) -> StoreError {
    StoreError::Postgres {
        during: "listening for due jobs",
        detail: format!(
            "another daemon is running as node {node:?} on this database; give each node its \
             own node.name"
        ),
    }
}

/// The connection that listens, and what it hears.
struct Listener {
    /// Held for its locks and its `LISTEN`; dropping it closes them.
    _client: Client,
    notices: mpsc::UnboundedReceiver<String>,
}

/// Logs each recovered job as a possible duplicate.
pub(crate) fn log_recovered(recovered: &[Recovered], why: &str) {
    for job in recovered {
        tracing::warn!(
            job_id = job.id,
            key = job.key.as_deref().unwrap_or(""),
            attempt = job.attempt,
            held = job.held,
            failed = job.failed,
            "found in 'sending' after {why}: its last request may have reached Coax; a possible duplicate"
        );
    }
}

/// Tells every node listening (this one too) that a job may have fallen
/// due, at `tx`'s commit: call it in any transaction that makes a job
/// `scheduled` or moves a scheduled job's due time earlier. PostgreSQL
/// sends one notification per transaction however often it is called.
pub(super) async fn notify_due(tx: &Tx<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, '')", &[&DUE_CHANNEL])
        .await
        .map_err(pg_error("waking the other nodes"))?;
    Ok(())
}
