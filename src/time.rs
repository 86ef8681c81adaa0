//! The daemon's two clocks, and wall-clock instants as it stores and prints
//! them.
//!
//! Every time the daemon keeps is a count of milliseconds since the Unix
//! epoch in UTC ([`Millis`]), because SQLite compares integers cheaply and a
//! millisecond is finer than any promise the daemon makes. Times are written
//! back out as RFC 3339 in UTC.
//!
//! The wall clock answers "is this job due"; it can step (an NTP
//! correction, a VM restore). The monotonic clock ([`Mono`]) answers "how
//! long since": pauses, probe schedules and the rate limit run on it, so a
//! step of the wall clock cannot stretch or cut them. The two are distinct
//! types so that the compiler keeps them apart. Code that reads a clock is
//! given a [`Clock`], so a test can step either one.

use chrono::{DateTime, SecondsFormat, Utc};
use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// The current wall-clock time.
pub fn now() -> Millis {
    Utc::now().timestamp_millis()
}

/// Parses an RFC 3339 timestamp, which must carry an offset (`Z` or `+02:00`).
pub fn parse_rfc3339(text: &str) -> Result<Millis, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!(
                "{} is not an RFC 3339 time with an offset, such as 2026-01-31T09:00:00Z ({e})",
                crate::protocol::quoted(text)
            )
        })
}

/// Formats as RFC 3339 in UTC with milliseconds, e.g. `2026-01-31T09:00:00.000Z`.
pub fn format(ms: Millis) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// `ms` moved later by `d`, saturating rather than overflowing.
pub fn add(ms: Millis, d: Duration) -> Millis {
    ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long from `now` until `at`; zero if `at` has passed.
pub fn until(at: Millis, now: Millis) -> Duration {
    Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
}

/// Milliseconds on a monotonic clock, from an arbitrary origin. Only the
/// difference between two of them means anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mono(u64);

impl Mono {
    pub const fn from_millis(ms: u64) -> Mono {
        Mono(ms)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// How long from `self` until `later`; zero if `later` has passed.
    pub fn until(self, later: Mono) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }
}

impl Add<Duration> for Mono {
    type Output = Mono;
    /// Saturates rather than overflowing: a wait of centuries is just long.
    fn add(self, d: Duration) -> Mono {
        Mono(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for Mono {
    type Output = Mono;
    fn sub(self, d: Duration) -> Mono {
        Mono(
            self.0
                .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Mono> for Mono {
    type Output = Duration;
    /// How long from `earlier` to `self`; zero if `earlier` is later.
    fn sub(self, earlier: Mono) -> Duration {
        earlier.until(self)
    }
}

impl fmt::Display for Mono {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mono+{}ms", self.0)
    }
}

/// Where the daemon reads the time. The daemon uses [`SystemClock`]; tests
/// give one that they can step.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The wall clock, for "is this due".
    fn wall(&self) -> Millis;
    /// The monotonic clock, for "how long since".
    fn mono(&self) -> Mono;

    /// The wall-clock time at which `at` will come, if the wall clock does
    /// not step meanwhile: for showing a monotonic deadline to people.
    fn wall_at(&self, at: Mono) -> Millis {
        add(self.wall(), self.mono().until(at))
    }
}

/// The system's clocks. The monotonic one is tokio's, so that a test that
/// pauses tokio's time moves it too.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn wall(&self) -> Millis {
        now()
    }

    fn mono(&self) -> Mono {
        Mono(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_normalised_to_utc() {
        let a = parse_rfc3339("2026-01-31T10:00:00+01:00").unwrap();
        let b = parse_rfc3339("2026-01-31T09:00:00Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(format(a), "2026-01-31T09:00:00.000Z");
    }

    #[test]
    fn a_time_without_offset_is_refused() {
        let err = parse_rfc3339("2026-01-31T09:00:00").unwrap_err();
        assert!(err.contains("offset"), "{err}");
    }

    #[test]
    fn until_never_goes_negative() {
        assert_eq!(until(1_000, 2_000), Duration::ZERO);
        assert_eq!(until(2_500, 2_000), Duration::from_millis(500));
        assert_eq!(add(i64::MAX - 1, Duration::from_secs(10)), i64::MAX);
    }

    #[test]
    fn mono_arithmetic_saturates() {
        let t = Mono::from_millis(5_000);
        assert_eq!(t + Duration::from_millis(250), Mono::from_millis(5_250));
        assert_eq!(t - Duration::from_secs(10), Mono::from_millis(0));
        assert_eq!(t + Duration::MAX, Mono::from_millis(u64::MAX));
        assert_eq!(t.until(Mono::from_millis(4_000)), Duration::ZERO);
        assert_eq!(t.until(Mono::from_millis(6_000)), Duration::from_secs(1));
    }

    /// A clock whose wall time is fixed, for the conversion below.
    #[derive(Debug)]
    struct Fixed(Millis, Mono);
    impl Clock for Fixed {
        fn wall(&self) -> Millis {
            self.0
        }
        fn mono(&self) -> Mono {
            self.1
        }
    }

    #[test]
    fn a_monotonic_deadline_is_shown_as_wall_now_plus_what_remains() {
        let c = Fixed(1_700_000_000_000, Mono::from_millis(10_000));
        assert_eq!(c.wall_at(Mono::from_millis(12_500)), 1_700_000_002_500);
        assert_eq!(c.wall_at(Mono::from_millis(9_000)), 1_700_000_000_000);
    }
}
