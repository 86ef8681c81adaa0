//! The dispatcher: wakes when jobs fall due, sends them, and records how
//! each attempt ended.
//!
//! It owns the sending loop. It sleeps until the earliest due job (never
//! longer than `poll_interval`), is woken early by a
//! [`Notify`](tokio::sync::Notify) that enqueue and reschedule fire, and
//! claims at most `concurrency` jobs at a time, as many as the [`gate`]
//! admits. Each claimed job is sent on its own task
//! ([`attempt`]), which records the decision before the slot is freed. A
//! claim is committed before its request leaves, so a crash mid-send leaves
//! the job in `sending`, where start-up finds it. While the breaker is open
//! the loop probes `GET /health` on the gate's schedule.
//!
//! It reads both clocks from the [`Clock`] its [`Handle`] was given: the
//! wall clock for claims (is a job due), the monotonic clock for the gate.
//! The gate sits in the handle, so that `stats` reports its real mode and
//! `resume` acts on it directly.

mod attempt;
pub mod gate;
mod handle;

pub use handle::{Handle, Resumed, Status};

use crate::coax::CoaxClient;
use crate::config::{BreakerConfig, OnAmbiguous, RateLimit, RetryConfig};
use crate::store::Store;
use crate::time::{self, Clock, Mono};
use gate::{Gate, Mode};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The knobs the dispatcher runs by.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub concurrency: usize,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
    pub auth_pause: Duration,
    pub max_pause: Duration,
    pub on_ambiguous: OnAmbiguous,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub rate_limit: Option<RateLimit>,
}

impl Settings {
    fn gate(&self) -> gate::Settings {
        gate::Settings {
            breaker_failures: self.breaker.failures,
            max_probe_interval: self.breaker.max_probe_interval,
            auth_pause: self.auth_pause,
            max_pause: self.max_pause,
            rate_limit: self.rate_limit,
        }
    }
}

/// Everything an attempt task needs.
struct Context {
    store: Store,
    coax: CoaxClient,
    handle: Handle,
}

impl Context {
    fn settings(&self) -> Settings {
        self.handle.settings()
    }

    fn clock(&self) -> &dyn Clock {
        self.handle.clock.as_ref()
    }

    /// Changes the gate by `f` and logs the change it reports, once;
    /// returns that change.
    fn transition(&self, f: impl FnOnce(&mut Gate) -> Option<Mode>) -> Option<Mode> {
        let (previous, changed) = self.handle.with_gate(|g| {
            let previous = g.mode();
            (previous, f(g))
        });
        if let Some(mode) = changed {
            self.changed(previous, mode);
        }
        changed
    }

    /// Logs a change of the gate's mode.
    fn changed(&self, previous: Mode, mode: Mode) {
        crate::metrics::dispatch_changed(previous.name(), mode.name());
        let until = self
            .handle
            .status(mode)
            .until()
            .map(time::format)
            .unwrap_or_default();
        // Only a lower max_pause (a reload) brings a 429 pause's end nearer.
        let shortened = matches!(
            (previous, mode),
            (Mode::PausedRateLimit { until: old }, Mode::PausedRateLimit { until: new }) if new < old
        );
        match mode {
            Mode::Running => {
                tracing::info!(
                    from = previous.name(),
                    "dispatcher running: sending resumed"
                )
            }
            Mode::PausedAuth { .. } => tracing::error!(
                pause = %humantime::format_duration(self.settings().auth_pause),
                until,
                "Coax rejected the API key; all sending is paused. Check the key, then reload or wait"
            ),
            Mode::PausedRateLimit { .. } if shortened => {
                tracing::warn!(
                    until,
                    max_pause = %humantime::format_duration(self.settings().max_pause),
                    "the pause for HTTP 429 now ends earlier, at dispatch.max_pause"
                )
            }
            Mode::PausedRateLimit { .. } => tracing::warn!(
                until,
                "Coax is throttling this key (HTTP 429); all sending is paused until then"
            ),
            Mode::BreakerOpen { .. } if matches!(previous, Mode::BreakerOpen { .. }) => {
                tracing::info!(
                    next_probe = until,
                    "Coax /health still failing; breaker stays open"
                )
            }
            Mode::BreakerOpen { .. } => tracing::error!(
                failures = self.settings().breaker.failures,
                next_probe = until,
                "Coax keeps failing; breaker open: sending stopped, probing /health"
            ),
            Mode::Trial => tracing::info!("Coax /health answers; one trial send before resuming"),
        }
    }
}

pub struct Dispatcher {
    ctx: Arc<Context>,
    handle: Handle,
}

/// What the loop carries from one turn to the next.
struct Turn {
    in_flight: JoinSet<attempt::Report>,
    /// A `/health` probe under way while the breaker is open.
    probe: Option<JoinHandle<bool>>,
    /// Whether the last claim failed, so a storage outage is logged once.
    claim_failing: bool,
}

impl Dispatcher {
    pub fn new(store: Store, coax: CoaxClient, handle: Handle) -> Dispatcher {
        Dispatcher {
            ctx: Arc::new(Context {
                store,
                coax,
                handle: handle.clone(),
            }),
            handle,
        }
    }

    /// Runs until `shutdown` turns true, then waits up to `shutdown_timeout`
    /// for the requests in flight and records their outcomes.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut turn = Turn {
            in_flight: JoinSet::new(),
            probe: None,
            claim_failing: false,
        };
        // Pinged from this loop, so a hung dispatcher stops the pings.
        let watchdog = crate::systemd::watchdog_interval();
        let mut last_ping = Instant::now();
        while !*shutdown.borrow() {
            if let Some(every) = watchdog
                && last_ping.elapsed() >= every
            {
                crate::systemd::watchdog_ping();
                last_ping = Instant::now();
            }
            let settings = self.ctx.settings();
            self.steer(&mut turn, &settings, self.ctx.clock().mono());
            let mut wait = self.start_due(&mut turn, &settings).await;
            if let Some(every) = watchdog {
                wait = wait.min(every);
            }
            let deadline = Instant::now() + wait;
            let Turn {
                in_flight, probe, ..
            } = &mut turn;
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    self.absorb(done);
                    // Take every attempt that has finished meanwhile, so the
                    // next claim fills all the free slots in one transaction.
                    while let Some(done) = in_flight.try_join_next() {
                        self.absorb(done);
                    }
                }
                Some(healthy) = async {
                    match probe.as_mut() {
                        Some(p) => Some(p.await),
                        None => None,
                    }
                } => {
                    *probe = None;
                    let healthy = healthy.unwrap_or(false);
                    tracing::debug!(healthy, "health probe");
                    let now = self.ctx.clock().mono();
                    self.transition(|g| g.probe_result(now, healthy));
                }
                _ = self.handle.wake.notified() => {}
                // Another node sharing the queue enqueued a job due now.
                _ = self.ctx.store.woken() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        if let Some(probe) = turn.probe.take() {
            probe.abort();
        }
        self.drain(turn.in_flight).await;
    }

    /// Brings the gate up to date: a reload, a new key, a pause that has
    /// ended, a health probe that is due.
    fn steer(&self, turn: &mut Turn, settings: &Settings, now: Mono) {
        if self.handle.reconfigured.swap(false, Ordering::SeqCst) {
            self.transition(|g| g.reconfigure(settings.gate(), now));
        }
        if self.handle.key_changed.swap(false, Ordering::SeqCst) {
            self.transition(|g| {
                let ended = g.key_changed();
                if ended.is_some() {
                    tracing::info!("a new API key was loaded; the pause for the rejected key ends");
                }
                ended
            });
            // The other nodes try their own keys again; one that is still
            // rejected pauses them anew.
            let store = self.ctx.store.clone();
            tokio::spawn(async move {
                store.clear_pauses(&[crate::store::PauseKind::Auth]).await;
            });
        }
        self.transition(|g| g.tick(now));
        if turn.probe.is_none() && self.handle.with_gate(|g| g.probe_due(now)) {
            let coax = self.ctx.coax.clone();
            turn.probe = Some(tokio::spawn(async move { coax.healthy().await }));
        }
    }

    /// Claims as many due jobs as there are free slots and the gate admits,
    /// starts their attempts, and returns how long the loop may sleep.
    async fn start_due(&self, turn: &mut Turn, settings: &Settings) -> Duration {
        let mut wait = settings.poll_interval;
        let free = settings.concurrency.saturating_sub(turn.in_flight.len());
        if free == 0 {
            // A finishing attempt wakes the loop.
            return wait;
        }
        let mono = self.ctx.clock().mono();
        let admission = self.handle.with_gate(|g| g.admit(mono, free));
        if let Some(at) = admission.retry_at {
            wait = wait.min(mono.until(at).max(Duration::from_millis(1)));
        }
        if admission.count == 0 {
            return wait;
        }
        // While the claim reads the queue, any enqueue must wake the loop:
        // the claim may not see it.
        self.handle.next_due.store(i64::MAX, Ordering::SeqCst);
        let count = match self.allowance(turn, settings, admission.count).await {
            Ok(count) => count,
            Err(retry) => return wait.min(retry),
        };
        let now = self.ctx.clock().wall();
        let claimed = match self.ctx.store.claim(now, count).await {
            Ok(claimed) => claimed,
            Err(e) => {
                self.claim_failed(turn, &e);
                return wait;
            }
        };
        if turn.claim_failing {
            tracing::info!("claiming due jobs works again");
            turn.claim_failing = false;
        }
        for job in &claimed.expired {
            tracing::warn!(
                job_id = job.id,
                key = job.key.as_deref().unwrap_or(""),
                expires_at = %job.expires_at.map(time::format).unwrap_or_default(),
                "expired before it could be sent; it will not be sent"
            );
        }
        self.handle.with_gate(|g| g.started(claimed.jobs.len()));
        for job in claimed.jobs {
            turn.in_flight
                .spawn(attempt::attempt(self.ctx.clone(), job));
        }
        self.handle
            .next_due
            .store(claimed.next_due.unwrap_or(i64::MAX), Ordering::SeqCst);
        // With every slot busy, a finishing attempt wakes the loop; the next
        // due time matters only with room.
        if let Some(due) = claimed.next_due
            && turn.in_flight.len() < settings.concurrency
        {
            wait = wait.min(time::until(due, self.ctx.clock().wall()));
        }
        wait
    }

    fn absorb(&self, done: Result<attempt::Report, tokio::task::JoinError>) {
        match done {
            Ok(report) => {
                match report.decision {
                    "sent" => self.handle.sent.fetch_add(1, Ordering::Relaxed),
                    "failed" => self.handle.failed.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
            }
            Err(e) => tracing::error!(error = %e, "an attempt task failed"),
        }
    }

    /// Changes the gate by `f` and logs the change it reports, once.
    fn transition(&self, f: impl FnOnce(&mut Gate) -> Option<Mode>) {
        self.ctx.transition(f);
    }

    /// Asks the queue as a whole how many of `wanted` sends may start: a
    /// pause another node shared pauses this node's gate too (logged as
    /// its own pause is), and the rest of the shared rate limit caps the
    /// count. `Err` carries how long to wait before asking again.
    async fn allowance(
        &self,
        turn: &mut Turn,
        settings: &Settings,
        wanted: usize,
    ) -> Result<usize, Duration> {
        // No node writes a pause longer than this; a longer one is a hand
        // edit or a clock far off.
        let longest = settings.max_pause.max(settings.auth_pause);
        let allowance = match self
            .ctx
            .store
            .allowance(wanted, settings.rate_limit, longest)
            .await
        {
            Ok(allowance) => allowance,
            Err(e) => {
                self.claim_failed(turn, &e);
                return Err(settings.poll_interval);
            }
        };
        if let Some(pause) = allowance.pause {
            let left = pause.left;
            let auth = pause.kind == crate::store::PauseKind::Auth;
            let mono = self.ctx.clock().mono();
            if self
                .ctx
                .transition(|g| g.shared_pause(mono, auth, left))
                .is_some()
            {
                tracing::info!(node = %pause.node, "the pause was set by another node sharing the queue");
            }
            return Err(left.max(Duration::from_millis(1)));
        }
        match allowance.retry_in {
            Some(retry) if allowance.count == 0 => Err(retry),
            _ => Ok(allowance.count),
        }
    }

    /// Logs a failed claim once, until one succeeds.
    fn claim_failed(&self, turn: &mut Turn, e: &crate::store::StoreError) {
        if !turn.claim_failing && e.is_unavailable() {
            // The store has logged the outage.
            tracing::warn!(error = %e, "cannot claim due jobs; retrying every poll_interval");
            turn.claim_failing = true;
        } else if !turn.claim_failing {
            tracing::error!(error = %e, "cannot claim due jobs; retrying every poll_interval");
            turn.claim_failing = true;
        }
    }

    async fn drain(&self, mut in_flight: JoinSet<attempt::Report>) {
        if in_flight.is_empty() {
            return;
        }
        let timeout = self.ctx.settings().shutdown_timeout;
        tracing::info!(
            in_flight = in_flight.len(),
            timeout = %humantime::format_duration(timeout),
            "waiting for requests in flight"
        );
        let waited = tokio::time::timeout(timeout, async {
            while let Some(done) = in_flight.join_next().await {
                self.absorb(done);
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                abandoned = in_flight.len(),
                "shutdown_timeout passed with requests in flight; they stay in 'sending' and are sent again at start-up as possible duplicates"
            );
            in_flight.abort_all();
        }
    }
}
