//! Random windows, zones and times: a plan never sends outside its window.

use super::*;
use proptest::prelude::*;

const ZONES: [&str; 5] = [
    "Australia/Sydney",
    "America/New_York",
    "Asia/Kathmandu",      // +05:45
    "Australia/Lord_Howe", // a 30-minute DST change
    "UTC",
];

/// 2026-01-01T00:00:00Z and two years after it.
const FROM: Millis = 1_767_225_600_000;
const SPAN: Millis = 2 * 365 * 86_400_000;
const MINUTE: Millis = 60_000;

fn clock(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// A day: up to three ranges from sorted, distinct boundaries on a grid of
/// `step` minutes (a coarse grid often puts a boundary on a DST change);
/// "24:00" may end one. The store's property test builds windows with it
/// too.
pub(crate) fn day_on(step: u16) -> impl Strategy<Value = String> {
    prop::collection::btree_set(0..=DAY_MINUTES / step, 0..=6).prop_map(move |points| {
        let points: Vec<u16> = points.into_iter().map(|p| p * step).collect();
        let ranges: Vec<String> = points
            .chunks_exact(2)
            .map(|pair| format!("{}-{}", clock(pair[0]), clock(pair[1])))
            .collect();
        if ranges.is_empty() {
            "closed".to_owned()
        } else {
            ranges.join(", ")
        }
    })
}

fn day() -> impl Strategy<Value = String> {
    prop_oneof![day_on(5), day_on(30)]
}

fn window() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(day(), 7),
        prop::collection::vec(0i64..730, 0..8),
        0u32..=7200,
    )
        .prop_map(|(days, holidays, spread)| {
            let mut body = String::new();
            for (key, ranges) in spec::DAY_KEYS.iter().zip(&days) {
                body.push_str(&format!("{key} = {ranges:?}\n"));
            }
            if days.iter().all(|d| d == "closed") {
                body.push_str("fri = \"09:00-17:00\"\n");
                body = body.replacen("fri = \"closed\"\n", "", 1);
            }
            let holidays: Vec<String> = holidays
                .iter()
                .map(|offset| {
                    let date = jiff::civil::date(2026, 1, 1)
                        .checked_add(jiff::Span::new().days(*offset))
                        .unwrap_or(jiff::civil::date(2026, 1, 1));
                    format!("\"{date}\"")
                })
                .collect();
            body.push_str(&format!(
                "holidays = [{}]\nspread = \"{spread}s\"\n",
                holidays.join(", ")
            ));
            body
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_plan_is_never_outside_the_window(
        body in window(),
        zone in prop::sample::select(&ZONES[..]),
        id in any::<i64>(),
        scheduled in 0..SPAN,
        lateness in -10 * 86_400_000i64..10 * 86_400_000,
        near in prop::option::of((0usize..4, -90 * MINUTE..15 * MINUTE)),
        samples in prop::collection::vec(0u64..u64::MAX, 20),
    ) {
        let r = rule(zone, &body);
        // Half the cases start up to 90 minutes before one of the zone's next
        // four DST changes, where gaps and folds are.
        let transition = near.and_then(|(which, offset)| {
            let tz = zones().get(zone).ok()?;
            let from = Timestamp::from_millisecond(FROM).ok()?;
            let t = tz.following(from).nth(which)?.timestamp().as_millisecond();
            Some(t + offset)
        });
        let (scheduled_at, now) = match transition {
            Some(t) => (t, t - lateness.abs()),
            None => (FROM + scheduled, FROM + scheduled + lateness),
        };
        let base = scheduled_at.max(now);
        match r.plan(id, scheduled_at, now) {
            Plan::Due => {
                prop_assert!(r.is_open(base));
                prop_assert_eq!(r.next_opening(base), Some(base));
            }
            Plan::Never => prop_assert!(false, "a window that opens weekly never opened"),
            Plan::Deferred { opening, due_at } => {
                prop_assert!(!r.is_open(base));
                prop_assert_eq!(r.next_opening(base), Some(opening));
                prop_assert!(opening > base);
                prop_assert!(r.is_open(opening));
                prop_assert!(r.is_open(due_at), "due_at {} closed", crate::time::format(due_at));
                prop_assert!(due_at >= opening && due_at - opening <= 7200 * 1000);
                prop_assert_eq!(r.plan(id, scheduled_at, now), Plan::Deferred { opening, due_at });
                // Nothing between base and the opening is open.
                let mut probes = vec![opening - 1, opening - MINUTE];
                let gap = u64::try_from(opening - base).unwrap_or(1).max(1);
                probes.extend(samples.iter().map(|s| base + i64::try_from(s % gap).unwrap_or(0)));
                // Within two days, every minute: ranges and DST changes
                // fall on whole minutes.
                if opening - base <= 2 * 86_400_000 {
                    probes.extend((base..opening).step_by(60_000));
                }
                for p in probes.into_iter().filter(|&p| p >= base && p < opening) {
                    prop_assert!(!r.is_open(p), "open at {} before the opening {}",
                        crate::time::format(p), crate::time::format(opening));
                }
            }
        }
    }
}
