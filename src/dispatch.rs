//! The dispatcher: wakes when jobs fall due, sends them, and records how
//! each attempt ended.
//!
//! It owns the sending loop. It sleeps until the earliest due job (never
//! longer than `poll_interval`), is woken early by a [`Notify`] that enqueue
//! and reschedule fire, and claims at most `concurrency` jobs at a time, as
//! many as the [`gate`] admits. Each claimed job is sent on its own task
//! ([`attempt`]), which records the decision before the slot is freed. A
//! claim is committed before its request leaves, so a crash mid-send leaves
//! the job in `sending`, where start-up finds it. While the breaker is open
//! the loop probes `GET /health` on the gate's schedule.

mod attempt;
pub mod gate;

use crate::coax::CoaxClient;
use crate::config::{BreakerConfig, OnAmbiguous, RateLimit, RetryConfig};
use crate::store::Store;
use crate::time::{self, Millis};
use gate::{Gate, Mode};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The knobs the dispatcher runs by.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub concurrency: usize,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
    pub auth_pause: Duration,
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
            rate_limit: self.rate_limit,
        }
    }
}

/// What the rest of the daemon shares with the dispatcher.
#[derive(Clone)]
pub struct Handle {
    wake: Arc<Notify>,
    mode: Arc<Mutex<Mode>>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    settings: Arc<RwLock<Settings>>,
    /// The earliest due time the loop last read (`i64::MAX`: none, or a
    /// claim under way), so that an enqueue for later need not wake it.
    next_due: Arc<AtomicI64>,
    /// Set by [`Handle::reconfigure`], taken by the loop.
    reconfigured: Arc<AtomicBool>,
    key_changed: Arc<AtomicBool>,
}

impl Handle {
    pub fn new(settings: Settings) -> Handle {
        Handle {
            wake: Arc::new(Notify::new()),
            mode: Arc::new(Mutex::new(Mode::Running)),
            sent: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            settings: Arc::new(RwLock::new(settings)),
            next_due: Arc::new(AtomicI64::new(i64::MAX)),
            reconfigured: Arc::new(AtomicBool::new(false)),
            key_changed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Wakes the loop if a job due at `at` comes before the earliest due
    /// time it knows of. A later job changes nothing the loop will do
    /// before its next claim, which reads the queue again anyway.
    pub fn wake_if_before(&self, at: Millis) {
        if at < self.next_due.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts new settings in force (a reload). `key_changed` ends a pause
    /// for a rejected key at once.
    pub fn reconfigure(&self, settings: Settings, key_changed: bool) {
        match self.settings.write() {
            Ok(mut s) => *s = settings,
            Err(poisoned) => *poisoned.into_inner() = settings,
        }
        self.reconfigured.store(true, Ordering::SeqCst);
        if key_changed {
            self.key_changed.store(true, Ordering::SeqCst);
        }
        self.wake();
    }

    /// Tells the dispatcher that the earliest due time may have moved.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The gate's mode, for `stats`.
    pub fn mode(&self) -> Mode {
        self.mode.lock().map(|m| *m).unwrap_or(Mode::Running)
    }

    /// Jobs sent and failed since the last call, for the summary line.
    pub fn take_interval_counts(&self) -> (u64, u64) {
        (
            self.sent.swap(0, Ordering::Relaxed),
            self.failed.swap(0, Ordering::Relaxed),
        )
    }

    fn set_mode(&self, mode: Mode) {
        if let Ok(mut m) = self.mode.lock() {
            *m = mode;
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
}

pub struct Dispatcher {
    ctx: Arc<Context>,
    handle: Handle,
}

/// What the loop carries from one turn to the next.
struct Turn {
    gate: Gate,
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
            gate: Gate::new(self.ctx.settings().gate(), time::now()),
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
            let now = time::now();
            let settings = self.ctx.settings();
            self.steer(&mut turn, &settings, now);
            let mut wait = self.start_due(&mut turn, &settings, now).await;
            if let Some(every) = watchdog {
                wait = wait.min(every);
            }
            let deadline = Instant::now() + wait;
            let Turn {
                gate,
                in_flight,
                probe,
                ..
            } = &mut turn;
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    self.absorb(gate, done);
                    // Take every attempt that has finished meanwhile, so the
                    // next claim fills all the free slots in one transaction.
                    while let Some(done) = in_flight.try_join_next() {
                        self.absorb(gate, done);
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
                    if let Some(mode) = gate.probe_result(time::now(), healthy) {
                        self.changed(mode);
                    }
                }
                _ = self.handle.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        if let Some(probe) = turn.probe.take() {
            probe.abort();
        }
        self.drain(&mut turn.gate, turn.in_flight).await;
    }

    /// Brings the gate up to date: a reload, a new key, a pause that has
    /// ended, a health probe that is due.
    fn steer(&self, turn: &mut Turn, settings: &Settings, now: Millis) {
        if self.handle.reconfigured.swap(false, Ordering::SeqCst) {
            turn.gate.reconfigure(settings.gate(), now);
        }
        if self.handle.key_changed.swap(false, Ordering::SeqCst)
            && let Some(mode) = turn.gate.key_changed()
        {
            tracing::info!("a new API key was loaded; the pause for the rejected key ends");
            self.changed(mode);
        }
        if let Some(mode) = turn.gate.tick(now) {
            self.changed(mode);
        }
        if turn.probe.is_none() && turn.gate.probe_due(now) {
            let coax = self.ctx.coax.clone();
            turn.probe = Some(tokio::spawn(async move { coax.healthy().await }));
        }
    }

    /// Claims as many due jobs as there are free slots and the gate admits,
    /// starts their attempts, and returns how long the loop may sleep.
    async fn start_due(&self, turn: &mut Turn, settings: &Settings, now: Millis) -> Duration {
        let mut wait = settings.poll_interval;
        let free = settings.concurrency.saturating_sub(turn.in_flight.len());
        if free == 0 {
            // A finishing attempt wakes the loop.
            return wait;
        }
        let admission = turn.gate.admit(now, free);
        if let Some(at) = admission.retry_at {
            wait = wait.min(time::until(at, now).max(Duration::from_millis(1)));
        }
        if admission.count == 0 {
            return wait;
        }
        // While the claim reads the queue, any enqueue must wake the loop:
        // the claim may not see it.
        self.handle.next_due.store(i64::MAX, Ordering::SeqCst);
        let claimed = match self.ctx.store.claim(now, admission.count).await {
            Ok(claimed) => claimed,
            Err(e) => {
                if !turn.claim_failing && e.is_unavailable() {
                    // The store has logged the outage.
                    tracing::warn!(error = %e, "cannot claim due jobs; retrying every poll_interval");
                    turn.claim_failing = true;
                } else if !turn.claim_failing {
                    tracing::error!(error = %e, "cannot claim due jobs; retrying every poll_interval");
                    turn.claim_failing = true;
                }
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
        turn.gate.started(claimed.jobs.len());
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
            wait = wait.min(time::until(due, time::now()));
        }
        wait
    }

    fn absorb(&self, gate: &mut Gate, done: Result<attempt::Report, tokio::task::JoinError>) {
        match done {
            Ok(report) => {
                match report.decision {
                    "sent" => self.handle.sent.fetch_add(1, Ordering::Relaxed),
                    "failed" => self.handle.failed.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                if let Some(mode) = gate.record(time::now(), report.signal) {
                    self.changed(mode);
                }
            }
            Err(e) => tracing::error!(error = %e, "an attempt task failed"),
        }
    }

    /// Publishes a new gate mode and logs it once.
    fn changed(&self, mode: Mode) {
        let previous = self.handle.mode();
        self.handle.set_mode(mode);
        let until = mode.until().map(time::format).unwrap_or_default();
        match mode {
            Mode::Running => {
                tracing::info!(
                    from = previous.name(),
                    "dispatcher running: sending resumed"
                )
            }
            Mode::PausedAuth { .. } => tracing::error!(
                pause = %humantime::format_duration(self.ctx.settings().auth_pause),
                until,
                "Coax rejected the API key; all sending is paused. Check the key, then reload or wait"
            ),
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
                failures = self.ctx.settings().breaker.failures,
                next_probe = until,
                "Coax keeps failing; breaker open: sending stopped, probing /health"
            ),
            Mode::Trial => tracing::info!("Coax /health answers; one trial send before resuming"),
        }
    }

    async fn drain(&self, gate: &mut Gate, mut in_flight: JoinSet<attempt::Report>) {
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
                self.absorb(gate, done);
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
