//! Assembles the daemon: store, dispatcher and socket server, and runs them
//! until told to stop.
//!
//! [`Daemon::open`] does everything that can fail before the daemon is
//! useful (lock, migrate, recover); [`Daemon::run`] takes the listener and a
//! shutdown future from its caller, so a test can start the daemon on a temp
//! dir and stop it. Signals and socket binding belong to the caller.

pub mod fds;

use crate::coax::CoaxClient;
use crate::config::Config;
use crate::dispatch::{Dispatcher, Handle};
use crate::server::{self, Service};
use crate::store::{self, Recovered, Store};
use crate::time::{self, Clock};
use anyhow::Context as _;
use std::future::Future;
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// An opened daemon, not yet serving.
pub struct Daemon {
    config: Config,
    store: Store,
    recovered: Vec<Recovered>,
    reloads: Option<mpsc::Receiver<()>>,
    clock: Option<Arc<dyn Clock>>,
}

impl Daemon {
    /// Opens the store: takes its lock, migrates it, and puts jobs that a
    /// crash left in `sending` back in line.
    pub async fn open(config: Config) -> Result<Daemon, store::StoreError> {
        let options = store::Options {
            path: config.store.path.clone(),
            on_ambiguous: config.dispatch.on_ambiguous,
            max_attempts: config.retry.max_attempts,
            calendar: config.calendar.clone(),
            node: config.node.name.clone(),
        };
        let (store, opened) = match &config.store.postgres {
            Some(postgres) => Store::open_postgres(postgres.clone(), &options).await?,
            None => Store::open(&options)?,
        };
        Ok(Daemon {
            config,
            store,
            recovered: opened.recovered,
            reloads: None,
            clock: None,
        })
    }

    /// Re-reads the config file (see [`crate::reload`]) on each message.
    pub fn reload_on(mut self, reloads: mpsc::Receiver<()>) -> Daemon {
        self.reloads = Some(reloads);
        self
    }

    /// Has the dispatcher and the store read the time from `clock` instead
    /// of the system's clocks (a test that steps the wall clock, or needs a
    /// particular moment).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Daemon {
        self.store = self.store.with_clock(clock.clone());
        self.clock = Some(clock);
        self
    }

    /// A handle on the store, for callers that embed the daemon.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Serves `listener` and sends due jobs until `shutdown` completes, then
    /// finishes the requests in flight (up to `dispatch.shutdown_timeout`).
    pub async fn run(
        self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Daemon {
            config,
            store,
            recovered,
            reloads,
            clock,
        } = self;
        for job in &recovered {
            tracing::warn!(
                job_id = job.id,
                key = job.key.as_deref().unwrap_or(""),
                attempt = job.attempt,
                held = job.held,
                failed = job.failed,
                "found in 'sending' at start-up: its last request may have reached Coax; a possible duplicate"
            );
        }
        let coax = CoaxClient::new(
            config.coax.base_url.clone(),
            &config.coax.api_key,
            config.coax.request_timeout,
            config.coax.routes.clone(),
        )
        .context("cannot set up the Coax client")?;
        let settings = crate::reload::settings_of(&config);
        let dispatch = match clock {
            Some(clock) => Handle::with_clock(settings, clock),
            None => Handle::new(settings),
        };
        // Every start-up check before the dispatcher starts: a start that
        // fails must not have claimed (and perhaps sent) a job first.
        let summary = store.stats().await.context("cannot read the queue")?;
        let (summary_interval, summary_every) = watch::channel(config.log.summary_interval);
        let metrics = crate::metrics::Exporter::start(&config, &store, &dispatch).await?;
        let tasks = Tasks::spawn(&config, &store, &coax, &dispatch, listener, summary_every);
        announce(&config, &summary, recovered.len());

        let live = crate::reload::Live {
            config,
            coax,
            dispatch,
            summary_interval,
            store,
            stopped: tasks.stop.subscribe(),
        };
        serve_until(shutdown, reloads, live).await;

        crate::systemd::stopping();
        tracing::info!("shutting down: no new jobs are claimed");
        tasks.stop().await;
        metrics.stop().await;
        tracing::info!("coax-scheduler stopped");
        Ok(())
    }
}

/// The daemon's long-running tasks, and the switch that stops them.
struct Tasks {
    stop: watch::Sender<bool>,
    /// Stops the store's upkeep, after the dispatcher: it renews the leases
    /// of the requests the dispatcher waits for.
    stop_keeping: watch::Sender<bool>,
    dispatching: JoinHandle<()>,
    serving: JoinHandle<()>,
    summarising: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
    recurring: JoinHandle<()>,
    keeping: JoinHandle<()>,
}

impl Tasks {
    fn spawn(
        config: &Config,
        store: &Store,
        coax: &CoaxClient,
        dispatch: &Handle,
        listener: UnixListener,
        summary_every: watch::Receiver<Option<std::time::Duration>>,
    ) -> Tasks {
        let (stop, stopped) = watch::channel(false);
        let connections = std::sync::Arc::new(server::ConnectionCounts::default());
        let dispatcher = Dispatcher::new(store.clone(), coax.clone(), dispatch.clone());
        let schedules = Arc::new(tokio::sync::Notify::new());
        let service = Service {
            store: store.clone(),
            dispatch: dispatch.clone(),
            rules: crate::job::Rules {
                default_ttl: config.dispatch.default_ttl,
                max_job_bytes: config.socket.max_job_bytes,
                calendar: store.calendar(),
            },
            retention: config.store.retention,
            schedules: schedules.clone(),
        };
        let recurring = crate::schedule::task::run(
            store.clone(),
            service.rules.clone(),
            dispatch.clone(),
            schedules,
            config.dispatch.poll_interval,
            stopped.clone(),
        );
        let housekeeping = crate::housekeeping::run(
            store.clone(),
            config.store.prune_schedule.clone(),
            config.store.retention,
            stopped.clone(),
        );
        let sweep = {
            let (store, stopped) = (store.clone(), stopped.clone());
            async move {
                store.sweep_unreadable(stopped).await;
            }
        };
        // A config changed while the daemon was down moves due times as a
        // reload would.
        crate::reload::resettle(
            store.clone(),
            dispatch.clone(),
            stopped.clone(),
            crate::reload::Settle::IfChanged,
        );
        let (stop_keeping, keeping_stopped) = watch::channel(false);
        let keeping = {
            let store = store.clone();
            tokio::spawn(async move { store.keep(keeping_stopped).await })
        };
        Tasks {
            keeping,
            stop_keeping,
            dispatching: tokio::spawn(dispatcher.run(stopped.clone())),
            recurring: tokio::spawn(recurring),
            serving: tokio::spawn(server::serve(
                listener,
                service,
                config.socket.clone(),
                connections.clone(),
                stopped.clone(),
            )),
            summarising: tokio::spawn(crate::summary::run(
                store.clone(),
                dispatch.clone(),
                connections,
                summary_every,
                stopped,
            )),
            housekeeping: tokio::spawn(async move {
                // The start-up check for unreadable rows goes in steps after
                // start, beside the schedule, so a large queue delays neither.
                let ((), housekeeping) = tokio::join!(sweep, housekeeping);
                if let Err(e) = housekeeping {
                    tracing::error!(error = %e, "housekeeping is not running");
                }
            }),
            stop,
        }
    }

    /// Stops accepting and claiming, and waits for the dispatcher to finish
    /// the requests in flight.
    async fn stop(self) {
        let _ = self.stop.send(true);
        for (name, task) in [
            ("the summary", self.summarising),
            ("housekeeping", self.housekeeping),
            ("recurring sends", self.recurring),
            ("the socket server", self.serving),
            ("the dispatcher", self.dispatching),
        ] {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "{name} failed");
            }
        }
        let _ = self.stop_keeping.send(true);
        if let Err(e) = self.keeping.await {
            tracing::error!(error = %e, "the store's upkeep failed");
        }
    }
}

/// Logs the start-up line and tells systemd the daemon is ready.
fn announce(config: &Config, summary: &store::Summary, recovered: usize) {
    let scheduled = summary
        .counts
        .get(&crate::job::State::Scheduled)
        .copied()
        .unwrap_or(0);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %config.node.name,
        socket = %config.socket.path.display(),
        database = %match &config.store.postgres {
            Some(postgres) => postgres.describe(),
            None => config.store.path.display().to_string(),
        },
        coax = %config.coax.base_url,
        scheduled,
        recovered,
        next_due = %summary.next_due.map(time::format).unwrap_or_else(|| "none".into()),
        "coax-scheduler started"
    );
    crate::systemd::ready(&format!(
        "{scheduled} scheduled; listening on {}",
        config.socket.path.display()
    ));
}

/// Waits for `shutdown`, reloading the config on each message from `reloads`.
async fn serve_until(
    shutdown: impl Future<Output = ()>,
    mut reloads: Option<mpsc::Receiver<()>>,
    mut live: crate::reload::Live,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            Some(()) = async {
                match reloads.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!("reloading the config");
                live.reload();
            }
        }
    }
}
