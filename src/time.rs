//! Wall-clock instants as the daemon stores and prints them.
//!
//! Every time the daemon keeps is a count of milliseconds since the Unix
//! epoch in UTC ([`Millis`]), because SQLite compares integers cheaply and a
//! millisecond is finer than any promise the daemon makes. Times are written
//! back out as RFC 3339 in UTC. Monotonic waiting is not this module's job;
//! the dispatcher converts a due time into a tokio sleep.

use chrono::{DateTime, SecondsFormat, Utc};
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
            format!("{text:?} is not an RFC 3339 time with an offset, such as 2026-01-31T09:00:00Z ({e})")
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
}
