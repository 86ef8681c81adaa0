//! Assembles the daemon: store, dispatcher and socket server, and runs them
//! until told to stop.
//!
//! [`Daemon::open`] does everything that can fail before the daemon is
//! useful (lock, migrate, recover); [`Daemon::run`] takes the listener and a
//! shutdown future from its caller, so a test can start the daemon on a temp
//! dir and stop it. Signals and socket binding belong to the caller.

use crate::coax::CoaxClient;
use crate::config::Config;
use crate::dispatch::{Dispatcher, Handle};
use crate::server::{self, Service};
use crate::store::{self, Recovered, Store};
use crate::time;
use anyhow::Context as _;
use std::future::Future;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

/// An opened daemon, not yet serving.
pub struct Daemon {
    config: Config,
    store: Store,
    recovered: Vec<Recovered>,
    reloads: Option<mpsc::Receiver<()>>,
}

impl Daemon {
    /// Opens the store: takes its lock, migrates it, and puts jobs that a
    /// crash left in `sending` back in line.
    pub fn open(config: Config) -> Result<Daemon, store::StoreError> {
        let (store, recovered) = Store::open(&store::Options {
            path: config.store.path.clone(),
            on_ambiguous: config.dispatch.on_ambiguous,
        })?;
        Ok(Daemon {
            config,
            store,
            recovered,
            reloads: None,
        })
    }

    /// Re-reads the config file (see [`crate::reload`]) on each message.
    pub fn reload_on(mut self, reloads: mpsc::Receiver<()>) -> Daemon {
        self.reloads = Some(reloads);
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
            mut reloads,
        } = self;
        for job in &recovered {
            tracing::warn!(
                job_id = job.id,
                key = job.key.as_deref().unwrap_or(""),
                attempt = job.attempt,
                held = job.held,
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
        let handle = Handle::new(crate::reload::settings_of(&config));
        let (stop, stopped) = watch::channel(false);
        let handle_for_summary = handle.clone();
        let dispatcher = Dispatcher::new(store.clone(), coax.clone(), handle.clone());
        let dispatching = tokio::spawn(dispatcher.run(stopped.clone()));
        let service = Service {
            store: store.clone(),
            dispatch: handle.clone(),
            default_ttl: config.dispatch.default_ttl,
            retention: config.store.retention,
        };
        let serving = tokio::spawn(server::serve(
            listener,
            service,
            config.socket.clone(),
            stopped,
        ));

        let (summary_interval, summary_every) = watch::channel(config.log.summary_interval);
        let summarising = tokio::spawn(crate::summary::run(
            store.clone(),
            handle_for_summary,
            summary_every,
            stop.subscribe(),
        ));
        let housekeeping = tokio::spawn({
            let run = crate::housekeeping::run(
                store.clone(),
                config.store.prune_schedule.clone(),
                config.store.retention,
                stop.subscribe(),
            );
            async move {
                if let Err(e) = run.await {
                    tracing::error!(error = %e, "housekeeping is not running");
                }
            }
        });
        let summary = store.stats().await.context("cannot read the queue")?;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            socket = %config.socket.path.display(),
            database = %config.store.path.display(),
            coax = %config.coax.base_url,
            scheduled = summary.counts.get(&crate::job::State::Scheduled).copied().unwrap_or(0),
            recovered = recovered.len(),
            next_due = %summary.next_due.map(time::format).unwrap_or_else(|| "none".into()),
            "coax-scheduler started"
        );
        crate::systemd::ready(&format!(
            "{} scheduled; listening on {}",
            summary
                .counts
                .get(&crate::job::State::Scheduled)
                .copied()
                .unwrap_or(0),
            config.socket.path.display()
        ));

        let mut live = crate::reload::Live {
            config,
            coax,
            dispatch: handle,
            summary_interval,
        };
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
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
        crate::systemd::stopping();
        tracing::info!("shutting down: no new jobs are claimed");
        let _ = stop.send(true);
        let _ = summarising.await;
        let _ = housekeeping.await;
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "the socket server failed");
        }
        if let Err(e) = dispatching.await {
            tracing::error!(error = %e, "the dispatcher failed");
        }
        tracing::info!("coax-scheduler stopped");
        Ok(())
    }
}
