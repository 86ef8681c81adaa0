//! Live reload: SIGHUP re-reads the config file and applies what can change
//! without a restart.
//!
//! Applied at once: the API key (a new key also ends a pause for a rejected
//! one), the rate limit, concurrency, the retry policy, the breaker, the
//! pauses (a lower `max_pause` shortens a 429 pause in force), the send
//! windows and default zone (queued jobs' due times are settled anew in the
//! background), the log level and the summary interval. Other changes (paths, the Coax URL and
//! routes, socket limits, the log format, housekeeping) are logged as needing
//! a restart. A file that does not load leaves the daemon on the config it
//! has, with one ERROR line naming the problem.

use crate::coax::CoaxClient;
use crate::config::Config;
use crate::dispatch::{Handle, Settings};
use crate::store::Store;
use std::time::Duration;
use tokio::sync::watch;

/// The dispatcher settings a config asks for.
pub fn settings_of(config: &Config) -> Settings {
    Settings {
        concurrency: config.dispatch.concurrency,
        poll_interval: config.dispatch.poll_interval,
        shutdown_timeout: config.dispatch.shutdown_timeout,
        auth_pause: config.dispatch.auth_pause,
        max_pause: config.dispatch.max_pause,
        on_ambiguous: config.dispatch.on_ambiguous,
        retry: config.retry.clone(),
        breaker: config.breaker.clone(),
        rate_limit: config.dispatch.rate_limit,
    }
}

/// What a reload can reach in the running daemon.
pub struct Live {
    pub config: Config,
    pub coax: CoaxClient,
    pub dispatch: Handle,
    pub summary_interval: watch::Sender<Option<Duration>>,
    /// The store settles due times under the calendar in force.
    pub store: Store,
    /// Turns true at shutdown; stops a resettle in progress.
    pub stopped: watch::Receiver<bool>,
}

/// When to settle the queue's due times anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// At start-up: unless the queue was last settled under this calendar.
    IfChanged,
    /// After a reload changed the calendar: always, since a reload back to
    /// the calendar recorded may cut short a walk under another.
    Always,
}

/// Settles the queue's due times under the store's calendar, in the
/// background, and wakes the dispatcher once done: jobs may now be due
/// sooner than it planned.
pub fn resettle(store: Store, dispatch: Handle, stopped: watch::Receiver<bool>, when: Settle) {
    tokio::spawn(async move {
        let settled = match when {
            Settle::IfChanged => store.resettle(stopped).await,
            Settle::Always => store.settle_all(stopped).await,
        };
        match settled {
            Ok(_) => dispatch.wake(),
            Err(e) => tracing::error!(
                error = %e,
                "cannot settle the queue's due times under the send windows; \
                 the claim still keeps every job inside its window"
            ),
        }
    });
}

impl Live {
    /// Re-reads the config file and applies it.
    pub fn reload(&mut self) {
        match Config::load(&self.config.source) {
            // A concurrency the descriptor limit cannot carry would fail
            // request by request; refuse it whole, as start-up does.
            Ok(new) => match crate::daemon::fds::ensure(&new) {
                Ok(_) => self.apply(new),
                Err(e) => tracing::error!(
                    error = %e,
                    "reload failed; still running on the previous config"
                ),
            },
            Err(e) => tracing::error!(
                error = %e,
                "reload failed; still running on the previous config"
            ),
        }
    }

    /// Applies `new` over the config in force.
    pub fn apply(&mut self, new: Config) {
        let old = &self.config;
        let mut applied: Vec<&str> = Vec::new();
        let key_changed = match self.coax.set_key(&new.coax.api_key) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; still running on the previous config");
                return;
            }
        };
        if key_changed {
            applied.push("coax API key");
        }
        let settings = settings_of(&new);
        let current = settings_of(old);
        for (changed, name) in [
            (
                settings.concurrency != current.concurrency,
                "dispatch.concurrency",
            ),
            (
                settings.rate_limit != current.rate_limit,
                "dispatch.rate_limit",
            ),
            (
                settings.poll_interval != current.poll_interval,
                "dispatch.poll_interval",
            ),
            (
                settings.shutdown_timeout != current.shutdown_timeout,
                "dispatch.shutdown_timeout",
            ),
            (
                settings.auth_pause != current.auth_pause,
                "dispatch.auth_pause",
            ),
            (
                settings.max_pause != current.max_pause,
                "dispatch.max_pause",
            ),
            (
                settings.on_ambiguous != current.on_ambiguous,
                "dispatch.on_ambiguous",
            ),
            (settings.retry != current.retry, "retry"),
            (settings.breaker != current.breaker, "breaker"),
        ] {
            if changed {
                applied.push(name);
            }
        }
        self.dispatch.reconfigure(settings, key_changed);
        // From here on, every enqueue, claim and change uses the new
        // windows; the queued jobs' due times follow in the background.
        if self.store.set_calendar(new.calendar.clone()) {
            applied.push("send windows");
            resettle(
                self.store.clone(),
                self.dispatch.clone(),
                self.stopped.clone(),
                Settle::Always,
            );
        }

        if new.log.level != old.log.level {
            match crate::logging::set_level(&new.log.level) {
                Ok(crate::logging::LevelChange::PinnedByEnv) => tracing::warn!(
                    "log.level changed, but RUST_LOG was set at start-up and still wins"
                ),
                Ok(_) => applied.push("log.level"),
                Err(e) => tracing::error!(error = %e, "cannot apply log.level"),
            }
        }
        if new.log.summary_interval != old.log.summary_interval {
            let _ = self.summary_interval.send(new.log.summary_interval);
            applied.push("log.summary_interval");
        }

        for (changed, name) in [
            (new.store != old.store, "[store]"),
            (new.socket != old.socket, "[socket]"),
            (new.coax.base_url != old.coax.base_url, "coax.base_url"),
            (new.coax.routes != old.coax.routes, "coax.routes"),
            (
                new.coax.request_timeout != old.coax.request_timeout,
                "coax.request_timeout",
            ),
            (new.log.format != old.log.format, "log.format"),
            (new.metrics != old.metrics, "[metrics]"),
            (new.node != old.node, "node.name"),
            (
                new.dispatch.default_ttl != old.dispatch.default_ttl,
                "dispatch.default_ttl",
            ),
        ] {
            if changed {
                tracing::warn!(
                    setting = name,
                    "changed in the config file; it needs a restart to take effect"
                );
            }
        }
        tracing::info!(
            applied = %if applied.is_empty() { "nothing changed".to_owned() } else { applied.join(", ") },
            "config reloaded"
        );
        self.config = new;
    }
}
