//! The dispatcher: wakes when jobs fall due, sends them, and records how
//! each attempt ended.
//!
//! It owns the sending loop and its pauses. It sleeps until the earliest due
//! job (never longer than `poll_interval`), is woken early by a [`Notify`]
//! that enqueue and reschedule fire, and claims at most `concurrency` jobs
//! at a time. Each claimed job is sent on its own task, which asks
//! [`policy`] what the answer means and records the decision before the
//! slot is freed. A claim is committed before its request leaves, so a crash
//! mid-send leaves the job in `sending`, where start-up finds it.
//!
//! ```text
//!            ┌──────────── 401/403 ──────────────┐
//!            ▼                                   │
//!   running ───────────────────────────────► paused_auth
//!      ▲            auth_pause elapsed           │
//!      └─────────────────────────────────────────┘
//! ```

use crate::coax::CoaxClient;
use crate::config::{OnAmbiguous, RetryConfig};
use crate::policy::{self, Answer, Decision};
use crate::store::{ClaimedJob, Finish, Next, Store};
use crate::time::{self, Millis};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The knobs the dispatcher runs by.
#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: usize,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
    pub auth_pause: Duration,
    pub on_ambiguous: OnAmbiguous,
    pub retry: RetryConfig,
}

/// Whether the dispatcher is sending, for `stats` and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Running,
    /// Coax rejected the key; sending resumes at `until`.
    PausedAuth {
        until: Millis,
    },
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Running => "running",
            Mode::PausedAuth { .. } => "paused_auth",
        }
    }

    pub fn until(self) -> Option<Millis> {
        match self {
            Mode::Running => None,
            Mode::PausedAuth { until } => Some(until),
        }
    }
}

/// What the rest of the daemon shares with the dispatcher.
#[derive(Clone)]
pub struct Handle {
    wake: Arc<Notify>,
    mode: Arc<Mutex<Mode>>,
}

impl Default for Handle {
    fn default() -> Self {
        Handle {
            wake: Arc::new(Notify::new()),
            mode: Arc::new(Mutex::new(Mode::Running)),
        }
    }
}

impl Handle {
    /// Tells the dispatcher that the earliest due time may have moved.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn mode(&self) -> Mode {
        self.mode.lock().map(|m| *m).unwrap_or(Mode::Running)
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
    settings: Settings,
}

/// What an attempt task reports back to the loop.
struct Report {
    key_rejected: bool,
}

pub struct Dispatcher {
    ctx: Arc<Context>,
    handle: Handle,
}

impl Dispatcher {
    pub fn new(store: Store, coax: CoaxClient, settings: Settings, handle: Handle) -> Dispatcher {
        Dispatcher {
            ctx: Arc::new(Context {
                store,
                coax,
                settings,
            }),
            handle,
        }
    }

    /// Runs until `shutdown` turns true, then waits up to `shutdown_timeout`
    /// for the requests in flight and records their outcomes.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let settings = &self.ctx.settings;
        let mut in_flight: JoinSet<Report> = JoinSet::new();
        let mut claim_failing = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = time::now();
            let paused_until = self.resume_if_due(now);
            let free = settings.concurrency.saturating_sub(in_flight.len());
            let mut wait = settings.poll_interval;
            if let Some(until) = paused_until {
                wait = time::until(until, now).max(Duration::from_millis(1));
            } else if free > 0 {
                match self.ctx.store.claim(now, free).await {
                    Ok(claimed) => {
                        if claim_failing {
                            tracing::info!("claiming due jobs works again");
                            claim_failing = false;
                        }
                        for job in claimed.jobs {
                            in_flight.spawn(attempt(self.ctx.clone(), job));
                        }
                        // With every slot busy, a finishing attempt wakes
                        // the loop; the next due time matters only with room.
                        if let Some(due) = claimed.next_due
                            && in_flight.len() < settings.concurrency
                        {
                            wait = wait.min(time::until(due, time::now()));
                        }
                    }
                    Err(e) => {
                        if !claim_failing {
                            tracing::error!(error = %e, "cannot claim due jobs; retrying every poll_interval");
                            claim_failing = true;
                        }
                    }
                }
            }
            let deadline = Instant::now() + wait;
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    self.absorb(done);
                }
                _ = self.handle.wake.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        self.drain(in_flight).await;
    }

    /// Ends a pause whose time has come; returns the pause still in force.
    fn resume_if_due(&self, now: Millis) -> Option<Millis> {
        match self.handle.mode() {
            Mode::PausedAuth { until } if until <= now => {
                tracing::info!("auth pause over; sending resumes");
                self.handle.set_mode(Mode::Running);
                None
            }
            Mode::PausedAuth { until } => Some(until),
            Mode::Running => None,
        }
    }

    fn absorb(&self, done: Result<Report, tokio::task::JoinError>) {
        match done {
            Ok(report) if report.key_rejected => {
                if self.handle.mode() == Mode::Running {
                    let pause = self.ctx.settings.auth_pause;
                    let until = time::add(time::now(), pause);
                    tracing::error!(
                        pause = %humantime::format_duration(pause),
                        until = %time::format(until),
                        "Coax rejected the API key; all sending is paused. Check the key, then reload or wait"
                    );
                    self.handle.set_mode(Mode::PausedAuth { until });
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "an attempt task failed"),
        }
    }

    async fn drain(&self, mut in_flight: JoinSet<Report>) {
        if in_flight.is_empty() {
            return;
        }
        let timeout = self.ctx.settings.shutdown_timeout;
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

/// Sends one claimed job and records the outcome.
async fn attempt(ctx: Arc<Context>, job: ClaimedJob) -> Report {
    let started = Instant::now();
    let answer = ctx.coax.send(&job).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let now = time::now();
    let outcome = policy::classify(&answer);
    let settings = &ctx.settings;
    let decision = policy::decide(
        job.attempt,
        &outcome,
        &settings.retry,
        settings.on_ambiguous,
        now,
        fastrand::f64(),
    );
    let ambiguous = matches!(
        outcome,
        policy::Outcome::Transient {
            ambiguous: true,
            ..
        }
    );
    let (status, transport) = match &answer {
        Answer::Http { status, .. } => (Some(*status), None),
        Answer::Transport(e) => (None, Some(e.detail.clone())),
    };
    log_attempt(&ctx, &job, status, latency_ms, &decision, ambiguous);

    let key_rejected = decision == Decision::PauseForKey;
    let finish = Finish {
        id: job.id,
        seq: job.seq,
        finished_at: now,
        status,
        error: transport,
        ambiguous,
        latency_ms,
        result: result_of(&answer),
        next: next_of(decision, status),
    };
    record(&ctx.store, finish).await;
    Report { key_rejected }
}

fn next_of(decision: Decision, status: Option<u16>) -> Next {
    match decision {
        Decision::Sent => Next::Sent,
        Decision::Skipped { reason } => Next::Skipped { reason },
        Decision::Failed { reason } => Next::Failed { reason },
        Decision::Retry { at, reason } => Next::Retry { at, reason },
        Decision::Hold { reason } => Next::Held { reason },
        Decision::PauseForKey => Next::Unclaim {
            reason: format!(
                "Coax rejected the API key (HTTP {}); not counted as an attempt",
                status.unwrap_or(0)
            ),
        },
    }
}

/// `{"status":…,"message":…,"body":…}` of an HTTP answer, kept on the job.
fn result_of(answer: &Answer) -> Option<Value> {
    let Answer::Http { status, body, .. } = answer else {
        return None;
    };
    let (message, body) = match body {
        policy::Body::Envelope { message, body, .. } => (message.clone(), body.clone()),
        _ => (None, None),
    };
    Some(json!({"status": status, "message": message, "body": body}))
}

/// Keeps trying to record an outcome: until it is written, the job stays in
/// `sending` and a restart would send it again.
async fn record(store: &Store, finish: Finish) {
    let mut delay = Duration::from_millis(100);
    let mut logged = false;
    loop {
        match store.finish(finish.clone()).await {
            Ok(()) => {
                if logged {
                    tracing::info!(
                        job_id = finish.id,
                        "outcome recorded after storage recovered"
                    );
                }
                return;
            }
            Err(crate::store::StoreError::Closed) => return,
            Err(e) => {
                if !logged {
                    tracing::error!(
                        job_id = finish.id,
                        error = %e,
                        "cannot record an attempt's outcome; retrying until storage recovers"
                    );
                    logged = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn log_attempt(
    ctx: &Context,
    job: &ClaimedJob,
    status: Option<u16>,
    latency_ms: u64,
    decision: &Decision,
    ambiguous: bool,
) {
    let route = ctx.coax.path(job);
    let key = job.key.as_deref().unwrap_or("");
    let reason = match decision {
        Decision::Skipped { reason }
        | Decision::Failed { reason }
        | Decision::Retry { reason, .. }
        | Decision::Hold { reason } => reason.as_str(),
        Decision::Sent | Decision::PauseForKey => "",
    };
    let retry_at = match decision {
        Decision::Retry { at, .. } => time::format(*at),
        _ => String::new(),
    };
    macro_rules! line {
        ($level:ident, $msg:literal) => {
            tracing::$level!(
                job_id = job.id,
                key,
                kind = %job.kind,
                route,
                attempt = job.attempt,
                status = status.map(i64::from).unwrap_or(-1),
                latency_ms,
                decision = decision.label(),
                ambiguous,
                reason,
                retry_at,
                $msg
            )
        };
    }
    match decision {
        Decision::Sent | Decision::Skipped { .. } => line!(info, "attempt"),
        Decision::Retry { .. } if ambiguous => {
            line!(warn, "attempt; sending again, a possible duplicate")
        }
        Decision::Retry { .. } | Decision::Failed { .. } | Decision::Hold { .. } => {
            line!(warn, "attempt")
        }
        Decision::PauseForKey => line!(error, "attempt"),
    }
}
