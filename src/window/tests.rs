use super::*;
use crate::time::parse_rfc3339;

fn utc(text: &str) -> Millis {
    parse_rfc3339(text).expect("a valid RFC 3339 time")
}

fn calendar(text: &str) -> Calendar {
    Calendar::from_toml(text).expect("a valid calendar")
}

/// The rule of a message job in `zone` under the window `[windows.w]` with
/// the given body.
fn rule(zone: &str, body: &str) -> Rule {
    calendar(&format!("[windows.w]\n{body}"))
        .rule(Some(zone), Some("w"), Kind::Message)
        .expect("a known zone and window")
}

fn no_window(zone: &str) -> Rule {
    Calendar::none()
        .rule(Some(zone), None, Kind::Message)
        .expect("a known zone")
}

fn opening(rule: &Rule, at: &str) -> Option<String> {
    rule.next_opening(utc(at)).map(crate::time::format)
}

/// `at` is closed and `expected` is where the window opens: open there and
/// closed a millisecond before.
fn assert_opens(rule: &Rule, at: &str, expected: &str) {
    assert!(!rule.is_open(utc(at)), "{at} should be closed");
    assert_eq!(
        opening(rule, at),
        Some(crate::time::format(utc(expected))),
        "from {at}"
    );
    assert!(rule.is_open(utc(expected)), "{expected} should be open");
    assert!(!rule.is_open(utc(expected) - 1), "just before {expected}");
}

const EVERY_DAY_9_TO_5: &str = r#"
mon = "09:00-17:00"
tue = "09:00-17:00"
wed = "09:00-17:00"
thu = "09:00-17:00"
fri = "09:00-17:00"
sat = "09:00-17:00"
sun = "09:00-17:00"
"#;

#[test]
fn parse_local_moves_a_skipped_time_forward_by_the_gap() {
    // Sydney springs forward 2026-10-04 02:00 AEST (+10) to 03:00 AEDT (+11).
    let sydney = no_window("Australia/Sydney");
    assert_eq!(
        parse_local("2026-10-04T02:30", &sydney),
        Some(utc("2026-10-03T16:30:00Z")) // 03:30 AEDT
    );
    // New York springs forward 2026-03-08 02:00 EST (-5) to 03:00 EDT (-4).
    let new_york = no_window("America/New_York");
    assert_eq!(
        parse_local("2026-03-08T02:30:00", &new_york),
        Some(utc("2026-03-08T07:30:00Z")) // 03:30 EDT
    );
}

#[test]
fn parse_local_takes_the_earlier_of_a_repeated_time() {
    // Sydney falls back 2026-04-05 03:00 AEDT to 02:00 AEST.
    let sydney = no_window("Australia/Sydney");
    assert_eq!(
        parse_local("2026-04-05T02:30", &sydney),
        Some(utc("2026-04-04T15:30:00Z")) // 02:30 AEDT
    );
    // New York falls back 2026-11-01 02:00 EDT to 01:00 EST.
    let new_york = no_window("America/New_York");
    assert_eq!(
        parse_local("2026-11-01T01:30", &new_york),
        Some(utc("2026-11-01T05:30:00Z")) // 01:30 EDT
    );
}

#[test]
fn parse_local_reads_seconds_and_fractions_and_refuses_anything_else() {
    let sydney = no_window("Australia/Sydney");
    assert_eq!(
        parse_local("2026-12-01T09:00:00.5", &sydney),
        Some(utc("2026-11-30T22:00:00.500Z"))
    );
    assert_eq!(
        parse_local("2026-12-01T09:00:07", &no_window("UTC")),
        Some(utc("2026-12-01T09:00:07Z"))
    );
    for not_local in [
        "2026-12-01T09:00Z",
        "2026-12-01T09:00:00+02:00",
        "2026-12-01T09:00:00.000-05:00",
        "2026-12-01",
        "2026-12-01 09:00",
        "2026-12-01T9:00",
        "2026-12-01T09:00:",
        "2026-12-01T09:00:00.",
        "2026-02-30T09:00",
        "2026-12-01T24:00",
        "",
        "tomorrow",
    ] {
        assert_eq!(parse_local(not_local, &sydney), None, "{not_local:?}");
    }
}

#[test]
fn a_range_starting_in_a_dst_gap_opens_when_the_clock_jumps_into_it() {
    // 02:30 does not exist on these Sundays; the clock jumps from 02:00 to
    // 03:00, inside the range, so that jump is the opening.
    let sydney = rule("Australia/Sydney", r#"sun = "02:30-05:00""#);
    assert_opens(&sydney, "2026-10-03T14:00:00Z", "2026-10-03T16:00:00Z");
    let new_york = rule("America/New_York", r#"sun = "02:30-05:00""#);
    assert_opens(&new_york, "2026-03-08T05:00:00Z", "2026-03-08T07:00:00Z");
    // A range lying wholly in the gap does not happen that day.
    let skipped = rule("America/New_York", r#"sun = "02:00-02:45""#);
    assert_opens(&skipped, "2026-03-08T05:00:00Z", "2026-03-15T06:00:00Z");
}

#[test]
fn a_window_reopens_when_a_fold_sets_the_clock_back_into_it() {
    // New York: 01:00-02:00 EDT, then 01:00-02:00 EST again.
    let new_york = rule("America/New_York", r#"sun = "00:00-01:30""#);
    assert!(new_york.is_open(utc("2026-11-01T05:15:00Z"))); // 01:15 EDT
    assert_opens(&new_york, "2026-11-01T05:45:00Z", "2026-11-01T06:00:00Z");
    assert!(new_york.is_open(utc("2026-11-01T06:29:59Z"))); // 01:29:59 EST
    assert_opens(&new_york, "2026-11-01T06:30:00Z", "2026-11-08T05:00:00Z");
    // Sydney: 02:00-03:00 AEDT, then 02:00-03:00 AEST again.
    let sydney = rule("Australia/Sydney", r#"sun = "00:00-02:30""#);
    assert_opens(&sydney, "2026-04-04T15:45:00Z", "2026-04-04T16:00:00Z");
    // A range starting inside the fold opens at both of its starts.
    let late = rule("America/New_York", r#"sun = "01:15-01:30""#);
    assert_opens(&late, "2026-11-01T04:00:00Z", "2026-11-01T05:15:00Z");
    assert_opens(&late, "2026-11-01T05:30:00Z", "2026-11-01T06:15:00Z");
}

#[test]
fn openings_the_day_after_a_dst_change_are_at_local_nine() {
    let sydney = rule("Australia/Sydney", EVERY_DAY_9_TO_5);
    // Monday after spring forward: 09:00 AEDT (+11).
    assert_opens(&sydney, "2026-10-04T08:00:00Z", "2026-10-04T22:00:00Z");
    // Monday after falling back: 09:00 AEST (+10).
    assert_opens(&sydney, "2026-04-05T08:00:00Z", "2026-04-05T23:00:00Z");
    let new_york = rule("America/New_York", EVERY_DAY_9_TO_5);
    // 09:00 EDT (-4), then 09:00 EST (-5).
    assert_opens(&new_york, "2026-03-08T23:00:00Z", "2026-03-09T13:00:00Z");
    assert_opens(&new_york, "2026-11-01T23:00:00Z", "2026-11-02T14:00:00Z");
}

#[test]
fn holidays_are_dates_in_the_jobs_zone() {
    let body = r#"
mon = "00:00-24:00"
tue = "00:00-24:00"
wed = "00:00-24:00"
thu = "00:00-24:00"
fri = "00:00-24:00"
sat = "00:00-24:00"
sun = "00:00-24:00"
holidays = ["2026-12-25"]
"#;
    let sydney = rule("Australia/Sydney", body);
    // Still the 24th in UTC, already Christmas in Sydney.
    assert!(sydney.is_open(utc("2026-12-24T12:59:59Z")));
    assert_opens(&sydney, "2026-12-24T14:00:00Z", "2026-12-25T13:00:00Z");
    // The same instant is open under the same window in UTC.
    assert!(rule("UTC", body).is_open(utc("2026-12-24T14:00:00Z")));
    assert!(!rule("UTC", body).is_open(utc("2026-12-25T14:00:00Z")));
}

#[test]
fn a_range_that_splits_a_day_reopens_after_the_break() {
    let r = rule("UTC", r#"wed = "09:00-12:00, 13:00-20:00""#);
    // 2026-12-02 is a Wednesday.
    assert!(r.is_open(utc("2026-12-02T11:59:59.999Z")));
    assert_opens(&r, "2026-12-02T12:30:00Z", "2026-12-02T13:00:00Z");
    assert_opens(&r, "2026-12-02T20:00:00Z", "2026-12-09T09:00:00Z");
}

#[test]
fn closed_and_unlisted_days_are_skipped() {
    let r = rule(
        "UTC",
        r#"tue = "09:00-17:00"
sat = "10:00-16:00"
sun = "closed""#,
    );
    // Saturday 2026-12-05 after closing: Sunday closed, Monday unlisted.
    assert_opens(&r, "2026-12-05T16:00:00Z", "2026-12-08T09:00:00Z");
}

#[test]
fn a_range_may_end_at_24_00_and_continue_after_midnight() {
    let r = rule(
        "UTC",
        r#"mon = "20:00-24:00"
tue = "00:00-08:00"
spread = "24h""#,
    );
    // 2026-11-30 is a Monday.
    assert!(r.is_open(utc("2026-11-30T23:59:59.999Z")));
    assert!(r.is_open(utc("2026-12-01T00:00:00Z")));
    assert_eq!(
        r.plan(1, utc("2026-11-30T22:00:00Z"), utc("2026-11-30T21:00:00Z")),
        Plan::Due
    );
    assert_opens(&r, "2026-11-30T19:59:00Z", "2026-11-30T20:00:00Z");
    // The spread runs over the whole stretch, across midnight, not past it.
    let mut after_midnight = 0;
    for id in 0..200 {
        let Plan::Deferred { opening, due_at } = r.plan(id, utc("2026-11-30T12:00:00Z"), 0) else {
            panic!("deferred");
        };
        assert_eq!(opening, utc("2026-11-30T20:00:00Z"));
        assert!(due_at < utc("2026-12-01T08:00:00Z") && r.is_open(due_at));
        after_midnight += usize::from(due_at >= utc("2026-12-01T00:00:00Z"));
    }
    assert!(
        after_midnight > 50,
        "{after_midnight} of 200 after midnight"
    );
}

#[test]
fn next_opening_is_at_itself_when_open_and_plan_keeps_the_schedule() {
    let r = rule("UTC", EVERY_DAY_9_TO_5);
    let at = utc("2026-12-02T10:00:00.123Z");
    assert_eq!(r.next_opening(at), Some(at));
    assert_eq!(r.plan(7, at, at - 5_000), Plan::Due);
    // Overdue but open now: still due as scheduled.
    assert_eq!(r.plan(7, at - 86_400_000, at), Plan::Due);
    // No window: always open, always due.
    let any = no_window("Australia/Sydney");
    assert!(any.is_open(utc("2026-12-02T03:00:00Z")));
    assert_eq!(any.plan(7, 0, 0), Plan::Due);
    assert_eq!(any.window_name(), "none");
}

#[test]
fn spread_gives_each_job_its_own_fixed_point_after_the_opening() {
    let r = rule("UTC", &format!("{EVERY_DAY_9_TO_5}\nspread = \"20m\""));
    let (scheduled, now) = (utc("2026-12-02T03:00:00Z"), utc("2026-12-02T02:00:00Z"));
    let opening = utc("2026-12-02T09:00:00Z");
    let mut points = std::collections::BTreeSet::new();
    for id in 0..1000 {
        let plan = r.plan(id, scheduled, now);
        assert_eq!(
            plan,
            r.plan(id, scheduled, now),
            "the same job, the same point"
        );
        let Plan::Deferred { opening: o, due_at } = plan else {
            panic!("deferred: {plan:?}");
        };
        assert_eq!(o, opening);
        assert!(
            (opening..opening + 20 * 60_000).contains(&due_at),
            "{due_at}"
        );
        assert!(r.is_open(due_at));
        points.insert(due_at);
    }
    // 1,000 jobs over 1,200 whole seconds: most get a second of their own.
    assert!(points.len() > 500, "{} distinct points", points.len());
    assert!(points.first().is_some_and(|&p| p < opening + 2 * 60_000));
    assert!(points.last().is_some_and(|&p| p > opening + 18 * 60_000));
}

#[test]
fn spread_is_clipped_to_a_short_range() {
    let r = rule(
        "UTC",
        "wed = \"09:00-09:05, 15:00-16:00\"\nspread = \"20m\"",
    );
    for id in 0..300 {
        let Plan::Deferred { opening, due_at } =
            r.plan(id, utc("2026-12-02T08:00:00Z"), utc("2026-12-02T08:00:00Z"))
        else {
            panic!("deferred");
        };
        assert_eq!(opening, utc("2026-12-02T09:00:00Z"));
        assert!(due_at < utc("2026-12-02T09:05:00Z") && r.is_open(due_at));
    }
    // No spread: exactly at the opening.
    let exact = rule("UTC", "wed = \"09:00-17:00\"\nspread = \"0s\"");
    assert_eq!(
        exact.plan(42, utc("2026-12-02T08:00:00Z"), 0),
        Plan::Deferred {
            opening: utc("2026-12-02T09:00:00Z"),
            due_at: utc("2026-12-02T09:00:00Z")
        }
    );
}

#[test]
fn next_opening_skips_a_year_of_holiday_mondays() {
    let mondays: Vec<String> = (0..52)
        .map(|week| {
            let date = jiff::civil::date(2027, 1, 4)
                .checked_add(jiff::Span::new().days(7 * week))
                .expect("a date");
            format!("\"{date}\"")
        })
        .collect();
    let body = format!("mon = \"09:00-10:00\"\nholidays = [{}]", mondays.join(", "));
    let r = rule("UTC", &body);
    // Every Monday of 2027 is a holiday; the next opening is in 2028.
    assert_opens(&r, "2027-01-01T00:00:00Z", "2028-01-03T09:00:00Z");
}

#[test]
fn plan_is_never_when_the_remaining_days_are_all_holidays() {
    // The calendar ends with 9999; its last two Mondays are holidays.
    let r = rule(
        "UTC",
        "mon = \"09:00-10:00\"\nholidays = [\"9999-12-20\", \"9999-12-27\"]",
    );
    let at = utc("9999-12-19T00:00:00Z");
    assert_eq!(r.next_opening(at), None);
    assert_eq!(r.plan(1, at, at), Plan::Never);
    // Without the holidays it opens.
    let open = rule("UTC", "mon = \"09:00-10:00\"");
    assert_eq!(open.next_opening(at), Some(utc("9999-12-20T09:00:00Z")));
    // Beyond the calendar nothing is open.
    assert!(!open.is_open(i64::MAX));
    assert_eq!(open.plan(1, i64::MAX, 0), Plan::Never);
}

mod config;
pub(crate) mod props;

/// Figures for the report, not a check: run with
/// `cargo test --release --lib window_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run it in release"]
fn window_cost() {
    use std::time::Instant;
    const N: i64 = 100_000;
    let c = calendar(&format!(
        "[dispatch]\ndefault_window = \"w\"\n[windows.w]\n{EVERY_DAY_9_TO_5}\nspread = \"20m\"\n\
         holidays = [\"2026-12-25\", \"2026-12-28\", \"2027-01-01\"]"
    ));
    let start = Instant::now();
    let mut rules = Vec::with_capacity(N as usize);
    for i in 0..N {
        let zone = ["Australia/Sydney", "America/New_York"][(i % 2) as usize];
        rules.push(c.rule(Some(zone), None, Kind::Message).expect("rule"));
    }
    let per_rule = start.elapsed().as_nanos() / N as u128;
    let from = utc("2026-12-01T00:00:00Z");
    let start = Instant::now();
    let open = (0..N)
        .filter(|&i| rules[i as usize].is_open(from + i * 37_000))
        .count();
    let per_open = start.elapsed().as_nanos() / N as u128;
    let start = Instant::now();
    let deferred = (0..N)
        .filter(|&i| {
            matches!(
                rules[i as usize].plan(i, from + i * 37_000, from),
                Plan::Deferred { .. }
            )
        })
        .count();
    let per_plan = start.elapsed().as_nanos() / N as u128;
    println!(
        "rule {per_rule} ns, is_open {per_open} ns, plan {per_plan} ns \
         ({open} open, {deferred} deferred of {N})"
    );
    assert_eq!(open + deferred, N as usize);
}
