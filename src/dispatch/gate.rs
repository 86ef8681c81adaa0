//! The gate: whether the dispatcher may start sends now, and how many.
//!
//! A pure state machine of (now, event), so every transition is tested
//! without tokio. The dispatcher asks [`Gate::admit`] before claiming, tells
//! the gate how each attempt ended ([`Gate::record`]) and how each health
//! probe went ([`Gate::probe_result`]), and logs the transitions it returns.
//!
//! Every time here is monotonic ([`Mono`]): a step of the wall clock neither
//! stretches a pause nor stops the token bucket. Whether a job is due is not
//! the gate's question.
//!
//! ```text
//!                 401/403                          auth_pause over
//!   running ────────────────────► paused_auth ─────────────────► running
//!   running ──── 429 ───────────► paused_rate_limit ── until ──► running
//!   running ── N transient ─────► breaker_open ── /health ok ──► trial
//!   trial ──── answer ok ───────► running
//!   trial ──── transient ───────► breaker_open (next probe waits twice as long)
//!   any ────── resume ──────────► running   (an operator's `resume`)
//! ```
//!
//! A 429's pause lasts its `Retry-After`, but never more than `max_pause`
//! from the 429 that set it; a reload that lowers `max_pause` shortens the
//! pause in force by the same rule.
//!
//! While the gate is shut no job is claimed, so no job uses an attempt. A
//! token bucket enforces `dispatch.rate_limit` on every send, the trial too.

use crate::config::RateLimit;
use crate::time::Mono;
use std::time::Duration;

/// The first wait between health probes after the breaker opens.
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(1);

/// Where the gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Running,
    /// Coax rejected the key; sending resumes at `until`.
    PausedAuth {
        until: Mono,
    },
    /// Coax said 429; sending resumes at `until`.
    PausedRateLimit {
        until: Mono,
    },
    /// Too many transient failures in a row; `/health` is probed at `probe_at`.
    BreakerOpen {
        probe_at: Mono,
    },
    /// Coax looks healthy again; one trial send decides.
    Trial,
}

impl Mode {
    /// The name `stats` and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Running => "running",
            Mode::PausedAuth { .. } => "paused_auth",
            Mode::PausedRateLimit { .. } => "paused_rate_limit",
            Mode::BreakerOpen { .. } | Mode::Trial => "breaker_open",
        }
    }

    /// When the mode next changes by itself, if it does.
    pub fn until(self) -> Option<Mono> {
        match self {
            Mode::Running | Mode::Trial => None,
            Mode::PausedAuth { until } | Mode::PausedRateLimit { until } => Some(until),
            Mode::BreakerOpen { probe_at } => Some(probe_at),
        }
    }
}

/// How an attempt ended, as far as the gate cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Coax answered and the answer was not a transient failure.
    Answered,
    /// A transient failure: 5xx, timeout, refused connection...
    Transient,
    KeyRejected,
    /// 429: no sends for `pause` from `from`, when the answer was read
    /// (capped at `max_pause`).
    Throttled {
        from: Mono,
        pause: Duration,
    },
}

/// The gate's settings; can change on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub breaker_failures: u32,
    pub max_probe_interval: Duration,
    pub auth_pause: Duration,
    /// The longest a 429 pauses sending, whatever its `Retry-After`.
    pub max_pause: Duration,
    pub rate_limit: Option<RateLimit>,
}

/// What [`Gate::admit`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Sends that may start now.
    pub count: usize,
    /// When to ask again if fewer than wanted were allowed and time alone
    /// will change that.
    pub retry_at: Option<Mono>,
}

#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    per_ms: f64,
    last: Mono,
}

impl Bucket {
    fn new(limit: RateLimit, now: Mono) -> Bucket {
        let per_second = limit.per_second();
        // A burst of up to one second's worth, and at least one send.
        let capacity = per_second.max(1.0);
        Bucket {
            tokens: capacity,
            capacity,
            per_ms: per_second / 1000.0,
            last: now,
        }
    }

    fn refill(&mut self, now: Mono) {
        let elapsed = self.last.until(now).as_millis() as f64;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last = now.max(self.last);
    }

    fn available(&self) -> usize {
        self.tokens.floor().max(0.0) as usize
    }

    /// When one whole token will be there after `taking` more are spent.
    fn next_token_at(&self, taking: usize) -> Mono {
        let missing = (1.0 - (self.tokens - taking as f64)).max(0.0);
        self.last + Duration::from_millis((missing / self.per_ms).ceil() as u64)
    }

    /// Up to `wanted` sends now, and when to ask again if fewer.
    fn admit(&mut self, now: Mono, wanted: usize) -> Admission {
        self.refill(now);
        let count = wanted.min(self.available());
        let retry_at = (count < wanted).then(|| self.next_token_at(count));
        Admission { count, retry_at }
    }
}

#[derive(Debug, Clone)]
pub struct Gate {
    mode: Mode,
    failures: u32,
    probe_wait: Duration,
    trial_out: bool,
    /// When the 429 that set the rate-limit pause in force was read.
    throttled_at: Mono,
    bucket: Option<Bucket>,
    settings: Settings,
}

impl Gate {
    pub fn new(settings: Settings, now: Mono) -> Gate {
        Gate {
            mode: Mode::Running,
            failures: 0,
            probe_wait: FIRST_PROBE_WAIT.min(settings.max_probe_interval),
            trial_out: false,
            throttled_at: now,
            bucket: settings.rate_limit.map(|l| Bucket::new(l, now)),
            settings,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Takes new settings. A changed rate limit starts a fresh bucket. A
    /// lower `max_pause` shortens a 429 pause in force to the new cap from
    /// the 429 that set it; that change is returned.
    pub fn reconfigure(&mut self, settings: Settings, now: Mono) -> Option<Mode> {
        if settings.rate_limit != self.settings.rate_limit {
            self.bucket = settings.rate_limit.map(|l| Bucket::new(l, now));
        }
        self.probe_wait = self.probe_wait.min(settings.max_probe_interval);
        let cap = self.throttled_at + settings.max_pause;
        self.settings = settings;
        match self.mode {
            Mode::PausedRateLimit { until } if until > cap => {
                self.set(Mode::PausedRateLimit { until: cap })
            }
            _ => None,
        }
    }

    /// Ends a pause or an open breaker at once (an operator's `resume`);
    /// returns the mode that was ended, if any.
    pub fn resume(&mut self) -> Option<Mode> {
        let was = self.mode;
        self.set(Mode::Running).map(|_| was)
    }

    /// Ends a pause for a rejected key at once (a new key was loaded).
    pub fn key_changed(&mut self) -> Option<Mode> {
        match self.mode {
            Mode::PausedAuth { .. } => self.set(Mode::Running),
            _ => None,
        }
    }

    /// Lets pauses whose time has come end; returns the new mode if it changed.
    pub fn tick(&mut self, now: Mono) -> Option<Mode> {
        match self.mode {
            Mode::PausedAuth { until } | Mode::PausedRateLimit { until } if until <= now => {
                self.set(Mode::Running)
            }
            _ => None,
        }
    }

    /// How many of `wanted` sends may start at `now`.
    pub fn admit(&mut self, now: Mono, wanted: usize) -> Admission {
        match self.mode {
            Mode::PausedAuth { until } | Mode::PausedRateLimit { until } => Admission {
                count: 0,
                retry_at: Some(until),
            },
            Mode::BreakerOpen { probe_at } => Admission {
                count: 0,
                retry_at: Some(probe_at),
            },
            Mode::Trial if self.trial_out => Admission {
                count: 0,
                retry_at: None,
            },
            // The trial, like any send, waits for the rate limit.
            Mode::Trial => match &mut self.bucket {
                None => Admission {
                    count: wanted.min(1),
                    retry_at: None,
                },
                Some(bucket) => bucket.admit(now, wanted.min(1)),
            },
            Mode::Running => match &mut self.bucket {
                None => Admission {
                    count: wanted,
                    retry_at: None,
                },
                Some(bucket) => bucket.admit(now, wanted),
            },
        }
    }

    /// Counts `n` sends as started (after a claim returned them).
    pub fn started(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.mode == Mode::Trial {
            self.trial_out = true;
        }
        if let Some(bucket) = &mut self.bucket {
            bucket.tokens -= n as f64;
        }
    }

    /// Takes in how an attempt ended; returns the new mode if it changed.
    pub fn record(&mut self, now: Mono, signal: Signal) -> Option<Mode> {
        match signal {
            Signal::Answered => {
                self.failures = 0;
                if self.mode == Mode::Trial {
                    return self.set(Mode::Running);
                }
                None
            }
            Signal::Transient => {
                self.failures = self.failures.saturating_add(1);
                match self.mode {
                    Mode::Trial => self.open(now),
                    Mode::Running if self.failures >= self.settings.breaker_failures => {
                        self.open(now)
                    }
                    _ => None,
                }
            }
            Signal::KeyRejected => match self.mode {
                Mode::PausedAuth { .. } => None,
                _ => self.set(Mode::PausedAuth {
                    until: now + self.settings.auth_pause,
                }),
            },
            Signal::Throttled { from, pause } => {
                let until = from + pause.min(self.settings.max_pause);
                match self.mode {
                    Mode::PausedAuth { .. } => None,
                    Mode::PausedRateLimit { until: current } if current >= until => None,
                    _ => {
                        self.throttled_at = from;
                        self.set(Mode::PausedRateLimit { until })
                    }
                }
            }
        }
    }

    /// Takes in a pause another node sharing the queue entered, lasting
    /// `left` from `now` (at most `max_pause`); returns the new mode if it
    /// changed. A rejected key's pause outranks a 429's, as in
    /// [`Gate::record`].
    pub fn shared_pause(&mut self, now: Mono, auth: bool, left: Duration) -> Option<Mode> {
        let until = now + left.min(self.settings.max_pause);
        match (self.mode, auth) {
            (Mode::PausedAuth { until: current }, true) if current >= until => None,
            (_, true) => self.set(Mode::PausedAuth { until }),
            (Mode::PausedAuth { .. }, false) => None,
            (Mode::PausedRateLimit { until: current }, false) if current >= until => None,
            (_, false) => {
                self.throttled_at = now;
                self.set(Mode::PausedRateLimit { until })
            }
        }
    }

    /// Whether a `/health` probe is due.
    pub fn probe_due(&self, now: Mono) -> bool {
        matches!(self.mode, Mode::BreakerOpen { probe_at } if probe_at <= now)
    }

    /// Takes in a probe's result; returns the new mode if it changed.
    pub fn probe_result(&mut self, now: Mono, healthy: bool) -> Option<Mode> {
        if !matches!(self.mode, Mode::BreakerOpen { .. }) {
            return None;
        }
        if healthy {
            self.trial_out = false;
            self.set(Mode::Trial)
        } else {
            self.open(now)
        }
    }

    /// Opens (or keeps open) the breaker with the next probe after the current
    /// wait, which doubles up to `max_probe_interval`.
    fn open(&mut self, now: Mono) -> Option<Mode> {
        let probe_at = now + self.probe_wait;
        self.probe_wait = (self.probe_wait * 2).min(self.settings.max_probe_interval);
        self.set(Mode::BreakerOpen { probe_at })
    }

    fn set(&mut self, mode: Mode) -> Option<Mode> {
        if mode == self.mode {
            return None;
        }
        if mode == Mode::Running {
            // Back to normal, by whatever path: the next outage starts afresh.
            self.failures = 0;
            self.probe_wait = FIRST_PROBE_WAIT.min(self.settings.max_probe_interval);
        }
        self.mode = mode;
        Some(mode)
    }
}

/// The gate's reading of one attempt whose answer was read at `now`.
///
/// A 429 pauses everyone for its whole `Retry-After` (the job's own retry
/// may be capped at `max_delay`; the pause is capped only at `max_pause`),
/// or for `fallback` (the job's backoff) when Coax gave none, whether or not
/// this job may retry.
pub fn signal(
    status: Option<u16>,
    outcome: &crate::policy::Outcome,
    now: Mono,
    fallback: Duration,
) -> Signal {
    use crate::policy::Outcome;
    match outcome {
        Outcome::KeyRejected { .. } => Signal::KeyRejected,
        Outcome::Transient { retry_after, .. } if status == Some(429) => Signal::Throttled {
            from: now,
            pause: retry_after.unwrap_or(fallback),
        },
        Outcome::Transient { .. } => Signal::Transient,
        _ => Signal::Answered,
    }
}

#[cfg(test)]
mod tests;
