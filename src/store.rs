//! The durable queue. This module is the only one that touches the
//! database: [`Store`] is one interface over two backends, SQLite (one
//! daemon, described here) and PostgreSQL (several nodes sharing one queue,
//! see [`postgres`]). The dispatcher, the server and the policy call the
//! same methods on either and do not learn which it is.
//!
//! rusqlite is blocking, so one dedicated thread owns the connection and
//! everything else talks to it through [`Store`], an async handle. Each call
//! becomes a closure run on that thread inside a savepoint of a shared
//! transaction: the thread takes every call that is waiting, runs them all,
//! commits once, and only then answers each caller. That is group commit:
//! many enqueues share one fsync, and no caller hears "done" before its
//! change is durable. A call that fails rolls back its own savepoint and
//! leaves the others alone; a failed commit fails every call in the group.
//! When SQLite abandons the whole transaction mid-group (a full disk during a
//! statement), every call in it so far is told that nothing was written, and
//! the rest of the group goes on in a new transaction.
//!
//! Counts per state live in a table kept in step with every change (schema
//! version 3), so `stats` costs the same at any queue size; start-up checks
//! them against the jobs and corrects them, with a WARN, after a hand edit.
//!
//! Reads that could be large go in bounded steps, each its own call, so the
//! calls behind them are answered in between: a prune, a `list` (which also
//! stops at one answer line's byte budget, see [`listing`]) and the sweep
//! for unreadable rows after start-up (see [`quarantine`]). A storage
//! outage is logged once, not once per call (see [`outage`]).
//!
//! It does not decide what happens to a job; [`crate::dispatch`] and
//! [`crate::server`] call the operations in [`queries`] with their decisions.

mod calendar;
mod chain;
#[cfg(test)]
mod chain_tests;
mod changes;
pub(crate) mod deferral;
mod delivery;
mod group;
mod identity;
pub(crate) mod listing;
mod outage;
pub mod postgres;
mod prune;
mod quarantine;
mod queries;
mod schedules;
mod schema;
mod sharing;
mod tags;
#[cfg(test)]
mod tests;
pub mod transfer;
mod view;
mod walk;
#[cfg(test)]
mod window_tests;

pub use chain::UnknownParent;
pub use delivery::{Claimed, ClaimedJob, Finish};
pub use queries::{Lookup, NodeStatus, Pruned, Recount, Refusal, Summary};
pub use schedules::Firing;
pub use schema::SCHEMA_VERSION;
pub use sharing::{Allowance, PauseKind, PauseShare, SharedPause};
pub use tags::Moved;

use crate::config::OnAmbiguous;
use crate::time::Millis;
use crate::time::{Clock, SystemClock};
use crate::window::Calendar;
use group::{Call, Completion, Work};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What went wrong with the store, in words an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the queue database {path} is in use by another coax-scheduler (lock file {lock} is held); stop the other daemon or point store.path elsewhere"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("cannot open the queue database {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error(
        "{path} is not a coax-scheduler queue database ({detail}); it was left untouched. Move it away or point store.path elsewhere"
    )]
    Foreign { path: PathBuf, detail: String },
    #[error(
        "the queue database {path} has schema version {found}, newer than this build understands ({supported}); run a newer coax-scheduler"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("storage failure while {during}: {detail}")]
    Sqlite {
        during: &'static str,
        detail: String,
    },
    /// Storage itself failed (a full disk, I/O, a read-only or locked
    /// file), not the call: an outage, logged once by the store.
    #[error("storage failure while {during}: {detail}")]
    Unavailable {
        during: &'static str,
        detail: String,
    },
    /// PostgreSQL refused or failed a call (see [`postgres`]); the detail
    /// never holds the password.
    #[error("PostgreSQL failure while {during}: {detail}")]
    Postgres {
        during: &'static str,
        detail: String,
    },
    #[error("the store has shut down")]
    Closed,
}

impl StoreError {
    pub(crate) fn sqlite(during: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |e| {
            let detail = describe_sqlite(&e);
            if is_outage(&e) {
                StoreError::Unavailable { during, detail }
            } else {
                StoreError::Sqlite { during, detail }
            }
        }
    }

    /// Whether storage itself failed, rather than this one call.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// Failures of the storage under the database, as opposed to a call's own.
fn is_outage(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DiskFull
                | ErrorCode::ReadOnly
                | ErrorCode::SystemIoFailure
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::OutOfMemory
        )
    )
}

/// SQLite's own words are terse; the commonest runtime failures get a hint.
fn describe_sqlite(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => format!("the disk is full ({e})"),
        Some(ErrorCode::ReadOnly) => format!("the database is read-only ({e})"),
        Some(ErrorCode::SystemIoFailure) => format!("disk I/O error ({e})"),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            format!("the database is locked by another process ({e})")
        }
        _ => e.to_string(),
    }
}

/// What opening the store found and put right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Jobs a crash left in `sending`, now back in line (or held).
    pub recovered: Vec<Recovered>,
    /// Counts per state that disagreed with the jobs and were corrected.
    pub recounted: Vec<Recount>,
}

/// One page of a `list`.
#[derive(Debug)]
pub struct ListPage {
    pub jobs: Vec<crate::protocol::JobView>,
    /// Where the next page starts; `None` when this page reaches the end.
    pub next: Option<crate::protocol::ListCursor>,
}

/// A job found in `sending` at start-up: its last request may have reached Coax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub id: i64,
    pub key: Option<String>,
    pub attempt: u32,
    /// The state it was put back in: `scheduled`, or `held` under `hold`.
    pub held: bool,
    /// It had used up `retry.max_attempts`, so went to `failed` instead.
    pub failed: bool,
}

/// How many finished jobs one call of a prune examines at most.
const PRUNE_STEP: usize = 1_000;

/// How many jobs one call of a list reads at most.
const LIST_STEP: usize = 200;

/// How many ids one call of the unreadable-row sweep spans at most.
const SWEEP_SPAN: i64 = 2_000;

/// Folds the WAL back into the database and truncates it, if no reader
/// holds an older snapshot; SQLite then optimises. It never waits for a
/// reader: an `export` may hold its snapshot for minutes, and every call
/// queues behind this one. The WAL is then truncated at a later prune.
fn checkpoint(c: &Connection) -> Result<(), StoreError> {
    let during = "checkpointing";
    c.busy_timeout(std::time::Duration::ZERO)
        .map_err(StoreError::sqlite(during))?;
    // A reader in the way makes the pragma answer "busy" in its row, which
    // execute_batch passes over: the frames it could fold are folded.
    let done = c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA optimize;");
    c.busy_timeout(schema::BUSY_TIMEOUT)
        .map_err(StoreError::sqlite(during))?;
    done.map_err(StoreError::sqlite(during))
}

/// An async handle to the store: the store thread of a SQLite queue, or a
/// PostgreSQL queue that several nodes share. Cheap to clone. Callers do
/// not learn which it is.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    outage: std::sync::Arc<outage::Outage>,
    /// The send windows due times are settled under; a reload replaces it.
    calendar: calendar::CalendarCell,
    /// Where calls read the wall clock: the system's, or a test's.
    clock: Arc<dyn Clock>,
    /// `node.name`: written on each attempt this daemon makes.
    node: Arc<str>,
}

/// Where the queue lives.
#[derive(Clone)]
enum Backend {
    /// The store thread that owns the SQLite connection.
    Sqlite(mpsc::Sender<Call>),
    Postgres(postgres::Queue),
}

/// Settings for opening the store.
#[derive(Debug, Clone)]
pub struct Options {
    pub path: PathBuf,
    pub on_ambiguous: OnAmbiguous,
    /// `retry.max_attempts`: a job recovered with none left is `failed`.
    pub max_attempts: u32,
    /// The send windows: a recovered job waits for its window.
    pub calendar: Arc<Calendar>,
    /// `node.name`, the daemon that opens the store.
    pub node: String,
}

impl Store {
    /// Opens (or creates) the database, takes the lock, migrates, recovers
    /// jobs left in `sending` by a crash, and checks the counts per state.
    pub fn open(options: &Options) -> Result<(Store, Opened), StoreError> {
        schema::check(&options.path)?;
        let lock = schema::lock(&options.path)?;
        let conn = schema::open(&options.path)?;
        let now = crate::time::now();
        let recovered = delivery::recover(
            &conn,
            &options.calendar,
            now,
            options.on_ambiguous,
            options.max_attempts,
        )?;
        let recounted = queries::reconcile_counts(&conn, now)?;
        for r in &recounted {
            tracing::warn!(
                state = r.state,
                kept = r.kept,
                counted = r.counted,
                "the count of jobs in a state disagreed with the jobs (was the database edited by hand?); corrected"
            );
        }
        if let Some((kept, counted)) = deferral::recount(&conn)? {
            tracing::warn!(
                kept,
                counted,
                "the count of deferred jobs disagreed with the jobs (was the database edited by hand?); corrected"
            );
        }
        let (tx, rx) = mpsc::channel(group::MAX_GROUP * 4);
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || group::serve(conn, lock, rx))
            .map_err(|e| StoreError::Open {
                path: options.path.clone(),
                detail: format!("cannot start the store thread: {e}"),
            })?;
        Ok((
            Store {
                backend: Backend::Sqlite(tx),
                outage: std::sync::Arc::new(outage::Outage::new(options.path.clone())),
                calendar: calendar::CalendarCell::new(options.calendar.clone()),
                clock: Arc::new(SystemClock::new()),
                node: Arc::from(options.node.as_str()),
            },
            Opened {
                recovered,
                recounted,
            },
        ))
    }

    /// Opens a PostgreSQL queue (see [`postgres::Queue::open`]).
    pub async fn open_postgres(
        config: crate::config::PostgresConfig,
        options: &Options,
    ) -> Result<(Store, Opened), StoreError> {
        let where_ = std::path::PathBuf::from(config.describe());
        let (queue, opened) = postgres::Queue::open(config, options, crate::time::now()).await?;
        Ok((
            Store {
                backend: Backend::Postgres(queue),
                outage: std::sync::Arc::new(outage::Outage::new(where_)),
                calendar: calendar::CalendarCell::new(options.calendar.clone()),
                clock: Arc::new(SystemClock::new()),
                node: Arc::from(options.node.as_str()),
            },
            opened,
        ))
    }

    /// The PostgreSQL queue's upkeep (heartbeats, leases, recovery,
    /// wake-ups; see [`postgres::Queue::keep`]) until `stop` turns true;
    /// nothing for a SQLite queue, whose one daemon holds its lock.
    pub async fn keep(&self, stop: tokio::sync::watch::Receiver<bool>) {
        let Backend::Postgres(queue) = &self.backend else {
            return;
        };
        let (calendar, outage) = (self.calendar.clone(), self.outage.clone());
        queue
            .clone()
            .keep(
                move || calendar.get(),
                self.clock.clone(),
                move |result| outage.observe(&result, result.is_ok()),
                stop,
            )
            .await
    }

    /// Waits until another node says a job fell due (never, on SQLite,
    /// where every enqueue goes through this daemon).
    pub async fn woken(&self) {
        match &self.backend {
            Backend::Sqlite(_) => std::future::pending().await,
            Backend::Postgres(queue) => queue.woken().await,
        }
    }

    /// Notes how a PostgreSQL call ended, for the outage report.
    fn observed<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.outage.observe(&result, result.is_ok());
        result
    }

    /// Has calls read the wall clock from `clock` (a test that needs a
    /// particular moment).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Store {
        self.clock = clock;
        self
    }

    /// The wall-clock time, as the store's calls read it.
    pub fn now(&self) -> Millis {
        self.clock.wall()
    }

    /// Runs `op` on the store thread inside the next group transaction and
    /// answers once that transaction has committed. SQLite only: on
    /// PostgreSQL it fails.
    pub async fn call<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.send(op, Call::Grouped).await
    }

    /// Runs `op` on the store thread outside any transaction, between groups.
    async fn call_alone<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.send(op, Call::Alone).await
    }

    async fn send<T, F>(&self, op: F, kind: fn(Work) -> Call) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let Backend::Sqlite(work_queue) = &self.backend else {
            return Err(StoreError::Postgres {
                during: "a SQLite call",
                detail: "this queue is on PostgreSQL".to_owned(),
            });
        };
        let (reply, answer) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let (result, wrote) = match conn {
                Ok(conn) => {
                    let before = conn.total_changes();
                    let result = op(conn);
                    (result, conn.total_changes() != before)
                }
                Err(e) => (Err(e.clone()), false),
            };
            let succeeded = result.is_ok();
            let completion: Completion = Box::new(move |commit: Result<(), StoreError>| {
                // The caller may have gone away; its answer is then unneeded.
                let _ = reply.send((result.and_then(|value| commit.map(|()| value)), wrote));
            });
            (succeeded, completion)
        });
        work_queue
            .send(kind(work))
            .await
            .map_err(|_| StoreError::Closed)?;
        let (result, wrote) = answer.await.map_err(|_| StoreError::Closed)?;
        self.outage.observe(&result, wrote);
        result
    }

    /// Stores new jobs, first checking that each `after` names a job
    /// (stored, or earlier in `jobs` by key): when one does not, nothing
    /// is stored and the answer says which.
    pub async fn enqueue_checked(
        &self,
        jobs: Vec<crate::job::NewJob>,
    ) -> Result<Result<Vec<crate::protocol::Enqueued>, UnknownParent>, StoreError> {
        let _timed = crate::metrics::store_call("enqueue");
        let (calendar, now) = (self.calendar.clone(), self.now());
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.enqueue(&calendar.get(), jobs, true, now).await);
        }
        self.call(move |c| match chain::unknown_parent(c, &jobs)? {
            Some(unknown) => Ok(Err(unknown)),
            None => queries::enqueue(c, &calendar.get(), &jobs, now).map(Ok),
        })
        .await
    }

    /// Stores new jobs; a job whose `after` names no job fails the call
    /// (see [`Store::enqueue_checked`]).
    pub async fn enqueue(
        &self,
        jobs: Vec<crate::job::NewJob>,
    ) -> Result<Vec<crate::protocol::Enqueued>, StoreError> {
        let _timed = crate::metrics::store_call("enqueue");
        let (calendar, now) = (self.calendar.clone(), self.now());
        if let Backend::Postgres(q) = &self.backend {
            let stored = q.enqueue(&calendar.get(), jobs, false, now).await;
            return self.observed(stored.and_then(|r| {
                r.map_err(|unknown| StoreError::Postgres {
                    during: "enqueueing",
                    detail: format!("job {} follows a job that is not stored", unknown.index),
                })
            }));
        }
        self.call(move |c| queries::enqueue(c, &calendar.get(), &jobs, now))
            .await
    }

    pub async fn get(
        &self,
        lookup: Lookup,
    ) -> Result<Option<crate::protocol::JobView>, StoreError> {
        let _timed = crate::metrics::store_call("get");
        let (calendar, now) = (self.calendar.clone(), self.now());
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.get(&calendar.get(), lookup, now).await);
        }
        self.call(move |c| queries::get(c, &calendar.get(), &lookup, now))
            .await
    }

    /// Up to `limit` jobs after `after` (from the start when `None`), in
    /// `order`, of `state` or of every state (only scheduled jobs due
    /// before `due_before`, when given), within one answer line's byte
    /// budget; and where the next page starts, or `None` at the end.
    ///
    /// It goes in steps of [`LIST_STEP`] jobs, each its own call, so a
    /// long list does not hold up the calls behind it, and it stops early
    /// when the next job's view would not fit in the answer line.
    pub async fn list(
        &self,
        state: Option<crate::job::State>,
        limit: u32,
        order: crate::protocol::ListOrder,
        after: Option<crate::protocol::ListCursor>,
        due_before: Option<Millis>,
        tag: Option<String>,
    ) -> Result<ListPage, StoreError> {
        let _timed = crate::metrics::store_call("list");
        let limit = limit as usize;
        let mut page = ListPage {
            jobs: Vec::new(),
            next: None,
        };
        let mut bytes = 0;
        let mut cursor = after.unwrap_or_else(|| listing::start(order));
        loop {
            let rows = LIST_STEP.min(limit - page.jobs.len());
            let budget =
                listing::VIEWS_BUDGET.saturating_sub(bytes + usize::from(!page.jobs.is_empty()));
            let first = page.jobs.is_empty();
            let (calendar, now) = (self.calendar.clone(), self.now());
            let filter = listing::Filter {
                state,
                due_before,
                tag: tag.clone(),
            };
            let step = match &self.backend {
                Backend::Postgres(q) => self.observed(
                    q.list_step(&calendar.get(), filter, cursor, rows, budget, first, now)
                        .await,
                )?,
                Backend::Sqlite(_) => {
                    self.call(move |c| {
                        listing::step(c, &calendar.get(), filter, cursor, rows, budget, first, now)
                    })
                    .await?
                }
            };
            bytes += step.bytes + usize::from(!first && !step.jobs.is_empty());
            page.jobs.extend(step.jobs);
            cursor = step.last;
            if step.end {
                return Ok(page);
            }
            if step.full || page.jobs.len() >= limit {
                page.next = Some(cursor);
                return Ok(page);
            }
        }
    }

    /// Cancels job `id` and its waiting followers, in one transaction: the
    /// job, and how many followers were cancelled.
    pub async fn cancel(
        &self,
        id: i64,
    ) -> Result<Result<(crate::protocol::JobView, u64), Refusal>, StoreError> {
        let _timed = crate::metrics::store_call("cancel");
        let (calendar, now) = (self.calendar.clone(), self.now());
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.cancel(&calendar.get(), id, now).await);
        }
        self.call(move |c| queries::cancel(c, &calendar.get(), id, now))
            .await
    }

    pub async fn reschedule(
        &self,
        id: i64,
        at: Millis,
    ) -> Result<Result<crate::protocol::JobView, Refusal>, StoreError> {
        let _timed = crate::metrics::store_call("reschedule");
        let (calendar, now) = (self.calendar.clone(), self.now());
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.reschedule(&calendar.get(), id, at, now).await);
        }
        self.call(move |c| queries::reschedule(c, &calendar.get(), id, at, now))
            .await
    }

    /// Cancels every scheduled, held and waiting job with `tag`, and the
    /// waiting followers of each, in one transaction; how many of each.
    pub async fn cancel_tag(&self, tag: String) -> Result<(u64, u64), StoreError> {
        let _timed = crate::metrics::store_call("cancel");
        let (calendar, now) = (self.calendar.clone(), self.now());
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.cancel_tag(&calendar.get(), tag, now).await);
        }
        self.call(move |c| tags::cancel(c, &calendar.get(), &tag, now))
            .await
    }

    /// Moves every scheduled job with `tag` by `by_ms`, in one transaction.
    /// The id of a job the move would take past 9999-12-31, if any, in
    /// which case none was moved.
    pub async fn reschedule_tag(
        &self,
        tag: String,
        by_ms: i64,
    ) -> Result<Result<Moved, i64>, StoreError> {
        let _timed = crate::metrics::store_call("reschedule");
        let (calendar, now) = (self.calendar.clone(), self.now());
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.reschedule_tag(&calendar.get(), tag, by_ms, now).await);
        }
        self.call(move |c| tags::reschedule(c, &calendar.get(), &tag, by_ms, now))
            .await
    }

    pub async fn requeue(
        &self,
        id: i64,
    ) -> Result<Result<crate::protocol::JobView, Refusal>, StoreError> {
        let _timed = crate::metrics::store_call("requeue");
        let (calendar, now) = (self.calendar.clone(), self.now());
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.requeue(&calendar.get(), id, now).await);
        }
        self.call(move |c| queries::requeue(c, &calendar.get(), id, now))
            .await
    }

    pub async fn stats(&self) -> Result<Summary, StoreError> {
        let _timed = crate::metrics::store_call("stats");
        let (now, node) = (self.now(), self.node.clone());
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.summary(now).await);
        }
        self.call(move |c| queries::summary(c, &node, now)).await
    }

    /// Moves up to `limit` jobs due at `now` to `sending`, opening an attempt for each.
    pub async fn claim(&self, now: Millis, limit: usize) -> Result<Claimed, StoreError> {
        let _timed = crate::metrics::store_call("claim");
        let (calendar, node) = (self.calendar.clone(), self.node.clone());
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.claim(&calendar.get(), now, limit).await);
        }
        self.call(move |c| delivery::claim(c, &calendar.get(), &node, now, limit))
            .await
    }

    /// Records how an attempt ended and moves its job on.
    pub async fn finish(&self, finish: Finish) -> Result<(), StoreError> {
        let _timed = crate::metrics::store_call("finish");
        let calendar = self.calendar.clone();
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.finish(calendar.get(), finish, None).await);
        }
        self.call(move |c| delivery::finish(c, &calendar.get(), &finish))
            .await
    }

    /// Counts per state, plus how many jobs are due at `now` and the oldest
    /// due time among them.
    pub async fn overview(
        &self,
        now: Millis,
    ) -> Result<(Summary, u64, Option<Millis>), StoreError> {
        let _timed = crate::metrics::store_call("overview");
        let node = self.node.clone();
        if let Backend::Postgres(q) = &self.backend {
            let read = async { Ok((q.summary(now).await?, q.overdue(now).await?)) };
            return self.observed(
                read.await
                    .map(|(summary, (due, oldest))| (summary, due, oldest)),
            );
        }
        self.call(move |c| {
            let summary = queries::summary(c, &node, now)?;
            let (due, oldest) = delivery::overdue(c, now)?;
            Ok((summary, due, oldest))
        })
        .await
    }

    /// Deletes finished jobs last updated before `before` (or only counts
    /// them, on a dry run); after a real prune, checkpoints the WAL and lets
    /// SQLite optimise.
    ///
    /// The prune goes in steps, each its own call that examines at most
    /// [`PRUNE_STEP`] finished jobs: calls waiting behind a large prune are
    /// answered between steps, and the undo SQLite keeps in memory for a
    /// call stays small. A failure stops the prune; the steps before it
    /// stay done.
    pub async fn prune(&self, before: Millis, dry_run: bool) -> Result<Pruned, StoreError> {
        let _timed = crate::metrics::store_call("prune");
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.prune(before, dry_run).await);
        }
        let mut total = Pruned::default();
        let mut from = Some(walk::Cursor::START);
        while let Some(cursor) = from {
            let step = self
                .call(move |c| queries::prune_step(c, before, cursor, PRUNE_STEP, dry_run))
                .await?;
            total.jobs += step.pruned.jobs;
            total.attempts += step.pruned.attempts;
            from = step.next;
        }
        if dry_run {
            return Ok(total);
        }
        self.call_alone(checkpoint).await?;
        Ok(total)
    }

    /// Checks every scheduled and held job's row, in steps of
    /// [`SWEEP_SPAN`] ids, and quarantines those that cannot be read; the
    /// claim checks due rows too, but a bad row not yet due would otherwise
    /// wait unnoticed. Stops early when `stop` turns true. Returns how many
    /// it quarantined.
    pub async fn sweep_unreadable(&self, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
        let mut total = 0;
        let mut from = Some(0);
        while let Some(after) = from {
            if *stop.borrow() {
                break;
            }
            let now = self.now();
            let step = match &self.backend {
                Backend::Postgres(q) => self.observed(q.sweep_step(after, SWEEP_SPAN, now).await),
                Backend::Sqlite(_) => {
                    self.call(move |c| quarantine::sweep_step(c, after, SWEEP_SPAN, now))
                        .await
                }
            };
            match step {
                Ok((quarantined, next)) => {
                    total += quarantined;
                    from = next;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the queue for unreadable rows");
                    break;
                }
            }
        }
        total
    }

    /// The earliest `due_at` among scheduled jobs.
    pub async fn next_due(&self) -> Result<Option<Millis>, StoreError> {
        let _timed = crate::metrics::store_call("next_due");
        if let Backend::Postgres(q) = &self.backend {
            return self.observed(q.next_due().await);
        }
        self.call(delivery::next_due).await
    }
}

/// Runs `work` in a transaction of its own, for the start-up steps that run
/// before the store thread (and its group transactions) exist.
fn in_transaction<T>(
    conn: &Connection,
    during: &'static str,
    work: impl FnOnce() -> rusqlite::Result<T>,
) -> Result<T, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(StoreError::sqlite(during))?;
    match work() {
        Ok(value) => {
            conn.execute_batch("COMMIT")
                .map_err(StoreError::sqlite(during))?;
            Ok(value)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(StoreError::sqlite(during)(e))
        }
    }
}

/// The path of the lock file that guards `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}
