//! The dispatcher's handle: what the rest of the daemon shares with the
//! sending loop.
//!
//! It carries the wake-ups (enqueue, reschedule, reload), the settings in
//! force, the counters for the summary line, the clock the loop reads, and
//! the gate itself, so that `stats` reports the gate's real mode and an
//! operator's `resume` acts on it at once. The loop is the gate's only other
//! user; neither holds it across an await.

use super::Settings;
use super::gate::{Gate, Mode};
use crate::time::{Clock, Millis, SystemClock};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;

/// The gate's mode as the rest of the daemon sees it, with the time it ends
/// by itself shown on the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    mode: Mode,
    until: Option<Millis>,
}

impl Status {
    /// The name `stats` and the logs use.
    pub fn name(self) -> &'static str {
        self.mode.name()
    }

    /// When the mode next changes by itself, on the wall clock as it reads
    /// now (the gate itself counts on the monotonic clock).
    pub fn until(self) -> Option<Millis> {
        self.until
    }

    pub fn mode(self) -> Mode {
        self.mode
    }
}

/// What an operator's `resume` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// The mode before; `running` when nothing was paused.
    pub was: Status,
    pub now: Status,
}

impl Resumed {
    /// Whether a pause or an open breaker was ended.
    pub fn ended_something(&self) -> bool {
        self.was.mode != Mode::Running
    }
}

/// What the rest of the daemon shares with the dispatcher.
#[derive(Clone)]
pub struct Handle {
    pub(super) wake: Arc<Notify>,
    pub(super) clock: Arc<dyn Clock>,
    /// Shared with the loop, which is its only other user.
    gate: Arc<Mutex<Gate>>,
    pub(super) sent: Arc<AtomicU64>,
    pub(super) failed: Arc<AtomicU64>,
    settings: Arc<RwLock<Settings>>,
    /// The earliest due time the loop last read (`i64::MAX`: none, or a
    /// claim under way), so that an enqueue for later need not wake it.
    pub(super) next_due: Arc<AtomicI64>,
    /// Set by [`Handle::reconfigure`], taken by the loop.
    pub(super) reconfigured: Arc<AtomicBool>,
    pub(super) key_changed: Arc<AtomicBool>,
}

impl Handle {
    /// A handle on the system's clocks.
    pub fn new(settings: Settings) -> Handle {
        Handle::with_clock(settings, Arc::new(SystemClock::new()))
    }

    /// A handle whose dispatcher reads the time from `clock`.
    pub fn with_clock(settings: Settings, clock: Arc<dyn Clock>) -> Handle {
        let gate = Gate::new(settings.gate(), clock.mono());
        Handle {
            wake: Arc::new(Notify::new()),
            clock,
            gate: Arc::new(Mutex::new(gate)),
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
    pub fn mode(&self) -> Status {
        let mode = self.with_gate(|g| g.mode());
        self.status(mode)
    }

    /// Ends a 429 pause, an auth pause or an open breaker at once (an
    /// operator's `resume`). Nothing paused is not an error.
    pub fn resume(&self) -> Resumed {
        let (was, now) = self.with_gate(|g| {
            let was = g.resume().unwrap_or(g.mode());
            (was, g.mode())
        });
        if was != now {
            self.wake();
        }
        Resumed {
            was: self.status(was),
            now: self.status(now),
        }
    }

    pub(super) fn status(&self, mode: Mode) -> Status {
        Status {
            mode,
            until: mode.until().map(|at| self.clock.wall_at(at)),
        }
    }

    /// Runs `f` on the gate; never held across an await. A poisoned lock is
    /// used as it is: no gate method panics between two of its changes, and
    /// a dispatcher that stops sending over a poisoned lock would be worse.
    pub(super) fn with_gate<R>(&self, f: impl FnOnce(&mut Gate) -> R) -> R {
        match self.gate.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Jobs sent and failed since the last call, for the summary line.
    pub fn take_interval_counts(&self) -> (u64, u64) {
        (
            self.sent.swap(0, Ordering::Relaxed),
            self.failed.swap(0, Ordering::Relaxed),
        )
    }
}
