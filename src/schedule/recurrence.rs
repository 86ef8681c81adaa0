//! When a schedule fires: its six-field cron read in its IANA zone, and
//! what to do about the occurrences that came due since it was last looked
//! at. Pure functions of (cron, zone, next_at, now, catch_up), so they are
//! tested without a daemon.
//!
//! The cron is croner's, with seconds, as `store.prune_schedule` reads it;
//! the zone is chrono-tz's. croner resolves DST itself: a time a change
//! skips fires at the first instant after the gap, a time that happens
//! twice fires once, at the earlier.

use super::CatchUp;
use crate::job::LATEST;
use crate::time::Millis;
use chrono::{DateTime, TimeZone as _};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use std::collections::VecDeque;

/// The most occurrences `catch_up = "all"` creates after one downtime.
pub const MAX_CATCH_UP: usize = 100;

/// How late an occurrence may be and still be created as usual: a restart
/// or a slow wake-up within this is not downtime.
pub const MISSED_AFTER_MS: i64 = 60_000;

/// How many missed occurrences are counted one by one; past it the count
/// of skipped ones is a lower bound (a cron every second, down for a year).
const MAX_COUNTED: u64 = 100_000;

/// A parsed cron and the zone it is read in.
#[derive(Debug, Clone)]
pub struct Recurrence {
    cron: Cron,
    tz: Tz,
}

/// The longest stretch of local time a DST change repeats, in minutes,
/// with room to spare (the longest in the tz database is an hour).
const FOLD_MINUTES: i64 = 120;

impl Recurrence {
    /// Parses `cron` (six fields, seconds first) to be read in `zone`.
    pub fn parse(cron: &str, zone: &str) -> Result<Recurrence, RecurrenceError> {
        if cron.split_whitespace().count() != 6 {
            return Err(RecurrenceError::Cron(format!(
                "{} has {} fields; give six, seconds first, such as \"0 0 9 * * MON\"",
                crate::protocol::quoted(cron),
                cron.split_whitespace().count()
            )));
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .dom_and_dow(true)
            .build()
            .parse(cron)
            .map_err(|e| {
                RecurrenceError::Cron(format!(
                    "{} is not a cron with seconds such as \"0 0 9 * * MON\" ({e})",
                    crate::protocol::quoted(cron)
                ))
            })?;
        let tz: Tz = zone
            .parse()
            .map_err(|_| RecurrenceError::Zone(zone.to_owned()))?;
        Ok(Recurrence { cron: parsed, tz })
    }

    /// The first occurrence strictly after `t`, or `None` when there is
    /// none before [`LATEST`].
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        // Occurrences fall on whole seconds: the first after the second
        // holding `t` is also the first after `t`. croner cannot search
        // well from inside an hour a DST change repeats (the local time
        // names two instants), so from there the search starts a minute
        // later, and again, until it is out of the fold (two hours at
        // most): an occurrence is not made twice for a wall time the clock
        // shows twice, as with cron.
        let second = t.div_euclid(1000);
        for minute in 0..=FOLD_MINUTES {
            let from = second.saturating_add(minute * 60);
            let start = DateTime::from_timestamp(from, 0)?.with_timezone(&self.tz);
            // From inside a fold croner may also answer the wall time's
            // first instant, before `t`: that is searched past too.
            if let Ok(next) = self.cron.find_next_occurrence(&start, false) {
                let at = next.timestamp_millis();
                if at > t {
                    return (at <= LATEST).then_some(at);
                }
            }
        }
        None
    }

    /// Up to `n` occurrences strictly before `t`, oldest first.
    fn last_before(&self, t: Millis, n: usize) -> Vec<Millis> {
        let mut out = Vec::with_capacity(n);
        let mut before = t;
        while out.len() < n {
            let second = before.saturating_add(999).div_euclid(1000);
            let Some(start) = DateTime::from_timestamp(second, 0) else {
                break;
            };
            let start = start.with_timezone(&self.tz);
            match self.cron.find_previous_occurrence(&start, false) {
                Ok(prev) if prev.timestamp_millis() < before => {
                    before = prev.timestamp_millis();
                    out.push(before);
                }
                // Inside a repeated hour (see `next_after`): go on from a
                // minute earlier, while that stays within a fold's length.
                Err(_) if (t - before) / 60_000 <= FOLD_MINUTES * (out.len() as i64 + 1) => {
                    before = before.saturating_sub(60_000);
                }
                _ => break,
            }
        }
        out.reverse();
        out
    }

    /// The zone's offset name at `at`, for logs.
    pub fn local(&self, at: Millis) -> String {
        match self.tz.timestamp_millis_opt(at).single() {
            Some(t) => t.format("%Y-%m-%d %H:%M:%S %Z").to_string(),
            None => at.to_string(),
        }
    }
}

/// Why a cron or zone cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecurrenceError {
    #[error("{0}")]
    Cron(String),
    #[error(
        "unknown time zone {0:?} for a cron; write the IANA name as the tz database does, such as \"Australia/Sydney\""
    )]
    Zone(String),
}

/// What to do with the occurrences from `next_at` up to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The occurrences to create as jobs, oldest first.
    pub create: Vec<Millis>,
    /// Occurrences more than [`MISSED_AFTER_MS`] late: the daemon was down.
    pub missed: u64,
    /// Of those, how many `catch_up` left out.
    pub skipped: u64,
    /// The counts stopped at their bound: there were more.
    pub more: bool,
    /// The new next occurrence, after `now`.
    pub next_at: Option<Millis>,
}

/// What the occurrences from `next_at` (itself one) to `now` come to under
/// `catch_up`. Occurrences at most [`MISSED_AFTER_MS`] late are created in
/// any case; older ones were missed, and `catch_up` chooses among them:
/// none, the most recent, or the most recent [`MAX_CATCH_UP`].
pub fn plan(recurrence: &Recurrence, next_at: Millis, now: Millis, catch_up: CatchUp) -> Plan {
    let keep = match catch_up {
        CatchUp::Skip => 0,
        CatchUp::Latest => 1,
        CatchUp::All => MAX_CATCH_UP,
    };
    let missed_before = now.saturating_sub(MISSED_AFTER_MS);
    let mut kept: VecDeque<Millis> = VecDeque::new();
    let mut create = Vec::new();
    let (mut missed, mut more) = (0_u64, false);
    let mut at = Some(next_at);
    while let Some(o) = at.filter(|o| *o <= now) {
        if o < missed_before {
            missed += 1;
            if keep > 0 {
                if kept.len() == keep {
                    kept.pop_front();
                }
                kept.push_back(o);
            }
            if missed >= MAX_COUNTED {
                // Jump to the last stretch; what lies between was missed
                // too, and the ones to keep are the latest of it.
                more = true;
                kept = recurrence.last_before(missed_before, keep).into();
                at = recurrence.next_after(missed_before.saturating_sub(1));
                continue;
            }
        } else {
            create.push(o);
        }
        at = recurrence.next_after(o);
    }
    let skipped = missed - kept.len() as u64;
    let mut all: Vec<Millis> = kept.into_iter().collect();
    all.extend(create);
    Plan {
        create: all,
        missed,
        skipped,
        more,
        next_at: at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn t(text: &str) -> Millis {
        parse_rfc3339(text).expect("a time")
    }

    fn sydney_monday_nine() -> Recurrence {
        Recurrence::parse("0 0 9 * * MON", "Australia/Sydney").expect("valid")
    }

    #[test]
    fn monday_nine_in_sydney_is_nine_local_on_both_sides_of_dst() {
        let r = sydney_monday_nine();
        // DST starts on Sunday 2026-10-04 (AEST +10 → AEDT +11).
        let before = r.next_after(t("2026-09-27T12:00:00Z")).expect("one");
        assert_eq!(before, t("2026-09-28T09:00:00+10:00"));
        let after = r.next_after(before).expect("one");
        assert_eq!(after, t("2026-10-05T09:00:00+11:00"));
        assert_eq!(after - before, 7 * 86_400_000 - 3_600_000);
        // DST ends on Sunday 2027-04-04 (AEDT +11 → AEST +10).
        let a = r.next_after(t("2027-03-28T12:00:00Z")).expect("one");
        assert_eq!(a, t("2027-03-29T09:00:00+11:00"));
        let b = r.next_after(a).expect("one");
        assert_eq!(b, t("2027-04-05T09:00:00+10:00"));
    }

    #[test]
    fn five_fields_a_year_and_nonsense_are_refused() {
        for bad in [
            "0 9 * * MON",
            "0 0 9 * * MON 2027",
            "0 0 25 * * *",
            "every monday",
            "",
        ] {
            assert!(
                matches!(Recurrence::parse(bad, "UTC"), Err(RecurrenceError::Cron(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Recurrence::parse("0 0 9 * * MON", "Mars/Olympus"),
            Err(RecurrenceError::Zone(_))
        ));
    }

    /// Berlin's clocks go back at 03:00 CEST on 2026-10-25, so 02:00-03:00
    /// local happens twice; 01:10Z is inside the second pass.
    #[test]
    fn next_after_from_inside_a_repeated_hour_finds_the_next_occurrence() {
        let from = t("2026-10-25T01:10:00Z");
        for (cron, expected) in [
            ("0 0 9 * * MON", "2026-10-26T08:00:00Z"),
            ("0 30 2 * * *", "2026-10-26T01:30:00Z"),
            ("0 0 4 * * *", "2026-10-25T03:00:00Z"),
        ] {
            let r = Recurrence::parse(cron, "Europe/Berlin").expect("valid");
            assert_eq!(r.next_after(from), Some(t(expected)), "{cron}");
        }
        let every_quarter = Recurrence::parse("0 */15 * * * *", "Europe/Berlin").expect("valid");
        let next = every_quarter.next_after(from).expect("an occurrence");
        assert!(next > from && next <= t("2026-10-25T02:15:00Z"), "{next}");
        let before = every_quarter.last_before(t("2026-10-25T02:20:00Z"), 3);
        assert_eq!(before.len(), 3, "{before:?}");
        assert!(before.windows(2).all(|w| w[0] < w[1]), "{before:?}");
    }

    #[test]
    fn next_after_is_strictly_after_even_within_the_second() {
        let r = Recurrence::parse("* * * * * *", "UTC").expect("valid");
        assert_eq!(r.next_after(1_000), Some(2_000));
        assert_eq!(r.next_after(1_500), Some(2_000));
    }

    #[test]
    fn a_slightly_late_occurrence_is_created_whatever_catch_up_says() {
        let r = Recurrence::parse("0 0 * * * *", "UTC").expect("valid");
        let o = t("2026-12-01T10:00:00Z");
        let p = plan(&r, o, o + 30_000, CatchUp::Skip);
        assert_eq!(p.create, vec![o]);
        assert_eq!((p.missed, p.skipped), (0, 0));
        assert_eq!(p.next_at, Some(o + 3_600_000));
        let early = plan(&r, o, o - 1, CatchUp::All);
        assert!(early.create.is_empty());
        assert_eq!(early.next_at, Some(o));
    }

    #[test]
    fn catch_up_chooses_among_missed_occurrences() {
        let r = Recurrence::parse("0 0 * * * *", "UTC").expect("valid");
        let first = t("2026-12-01T00:00:00Z");
        let now = t("2026-12-01T05:30:00Z");
        let skip = plan(&r, first, now, CatchUp::Skip);
        assert!(skip.create.is_empty());
        assert_eq!((skip.missed, skip.skipped), (6, 6));
        assert_eq!(skip.next_at, Some(t("2026-12-01T06:00:00Z")));
        let latest = plan(&r, first, now, CatchUp::Latest);
        assert_eq!(latest.create, vec![t("2026-12-01T05:00:00Z")]);
        assert_eq!(latest.skipped, 5);
        let all = plan(&r, first, now, CatchUp::All);
        assert_eq!(all.create.len(), 6);
        assert_eq!(all.create[0], first);
        assert_eq!(all.skipped, 0);
    }

    #[test]
    fn a_very_long_downtime_is_counted_up_to_a_bound_and_keeps_the_latest() {
        let r = Recurrence::parse("* * * * * *", "UTC").expect("valid");
        let first = t("2026-12-01T00:00:00Z");
        let now = t("2026-12-03T00:00:00Z");
        let p = plan(&r, first, now, CatchUp::Latest);
        assert!(p.more);
        assert!(p.missed >= MAX_COUNTED);
        // The latest missed second, then the minute's worth still due.
        assert_eq!(p.create[0], now - MISSED_AFTER_MS - 1_000);
        assert_eq!(p.create.len(), 1 + 61);
        assert_eq!(p.next_at, Some(now + 1_000));
        let all = plan(&r, first, now, CatchUp::All);
        assert_eq!(all.create[MAX_CATCH_UP - 1], now - MISSED_AFTER_MS - 1_000);
        assert_eq!(all.create[0], now - MISSED_AFTER_MS - 100_000);
    }

    #[test]
    fn catch_up_all_stops_at_the_most_recent_hundred() {
        let r = Recurrence::parse("0 * * * * *", "UTC").expect("valid");
        let first = t("2026-12-01T00:00:00Z");
        // Minutes 0 to 149 were missed; minute 150 is 45 s late, so due.
        let now = first + 150 * 60_000 + 45_000;
        let p = plan(&r, first, now, CatchUp::All);
        assert_eq!(p.create.len(), MAX_CATCH_UP + 1);
        assert_eq!(p.missed, 150);
        assert_eq!(p.skipped, 50);
        assert_eq!(p.create[0], first + 50 * 60_000);
        assert!(p.create.windows(2).all(|w| w[0] < w[1]));
    }
}
