//! The property test's inputs: random calendars (ranges per day, holidays,
//! spread, default zone and window), jobs, and sequences of events with a
//! clock that only moves forward, often across a DST change.

use super::run::Run;
use super::*;
use proptest::prelude::*;
use proptest::sample::Index;

const ZONES: [&str; 5] = [
    "Australia/Sydney",
    "America/New_York",
    "Asia/Kathmandu",      // +05:45
    "Australia/Lord_Howe", // a 30-minute DST change
    "UTC",
];

/// The DST changes of 2026 in the zones that have them, from the tz
/// database windows are computed with.
fn transitions() -> Vec<Millis> {
    let zones = jiff::tz::TimeZoneDatabase::bundled();
    let from = jiff::Timestamp::from_millisecond(FROM).expect("an instant");
    ZONES
        .iter()
        .filter_map(|name| zones.get(name).ok())
        .flat_map(|tz| {
            tz.following(from)
                .take_while(|t| t.timestamp().as_millisecond() < FROM + 365 * DAY)
                .map(|t| t.timestamp().as_millisecond())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// 2026-01-01T00:00:00Z.
const FROM: Millis = 1_767_225_600_000;

/// One `[windows.NAME]` table: seven days, holidays as days after the
/// start of the run, and a spread in seconds.
#[derive(Debug, Clone)]
pub(super) struct WindowSpec {
    days: Vec<String>,
    holidays: Vec<i64>,
    spread: Option<u32>,
}

/// A calendar: its default zone, which of the windows "a" and "b" it has
/// (a bit each), and whether the first of them is the default.
#[derive(Debug, Clone)]
pub(super) struct CalendarSpec {
    zone: &'static str,
    has: u8,
    default: bool,
    windows: [WindowSpec; 2],
}

impl CalendarSpec {
    fn toml(&self, start: Millis) -> String {
        let names = ["a", "b"];
        let present: Vec<usize> = (0..2).filter(|i| self.has & (1 << i) != 0).collect();
        let mut text = format!("[dispatch]\ndefault_timezone = {:?}\n", self.zone);
        if let Some(first) = present.first().filter(|_| self.default) {
            text.push_str(&format!("default_window = {:?}\n", names[*first]));
        }
        let first_day = jiff::civil::date(1970, 1, 1)
            .checked_add(jiff::Span::new().days(start.div_euclid(DAY)))
            .expect("a date");
        for i in present {
            let w = &self.windows[i];
            text.push_str(&format!("[windows.{}]\n", names[i]));
            for (key, ranges) in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
                .iter()
                .zip(&w.days)
            {
                text.push_str(&format!("{key} = {ranges:?}\n"));
            }
            let holidays: Vec<String> = w
                .holidays
                .iter()
                .filter_map(|d| first_day.checked_add(jiff::Span::new().days(*d)).ok())
                .map(|d| format!("\"{d}\""))
                .collect();
            text.push_str(&format!("holidays = [{}]\n", holidays.join(", ")));
            if let Some(spread) = w.spread {
                text.push_str(&format!("spread = \"{spread}s\"\n"));
            }
        }
        text
    }

    pub(super) fn calendar(&self, start: Millis) -> Calendar {
        let text = self.toml(start);
        Calendar::from_toml(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
    }
}

fn window_spec() -> impl Strategy<Value = WindowSpec> {
    (
        prop::collection::vec(
            prop_oneof![
                crate::window::tests::props::day_on(30),
                crate::window::tests::props::day_on(60)
            ],
            7,
        ),
        prop::collection::vec(-2i64..40, 0..4),
        prop::option::of(1u32..=3600),
    )
        .prop_map(|(mut days, holidays, spread)| {
            // A window that never opens is refused by the config.
            if days.iter().all(|d| d == "closed") {
                days[4] = "09:00-17:00".to_owned();
            }
            WindowSpec {
                days,
                holidays,
                spread,
            }
        })
}

fn calendar_spec() -> impl Strategy<Value = CalendarSpec> {
    (
        prop::sample::select(&ZONES[..]),
        // Mostly both windows: a job that names a missing one is only held.
        prop_oneof![1 => 0u8..3, 2 => Just(3u8)],
        any::<bool>(),
        window_spec(),
        window_spec(),
    )
        .prop_map(|(zone, has, default, a, b)| CalendarSpec {
            zone,
            has,
            default,
            windows: [a, b],
        })
}

/// A job to enqueue: `at` and `ttl` are from the moment it is enqueued.
#[derive(Debug, Clone)]
pub(super) struct JobSpec {
    pub(super) kind: Kind,
    pub(super) zone: Option<&'static str>,
    pub(super) window: Option<&'static str>,
    pub(super) at: Millis,
    pub(super) ttl: Option<Millis>,
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        prop::sample::select(&[Kind::Message, Kind::ReviewRequest, Kind::CoaxSchedule][..]),
        prop::option::of(prop::sample::select(&ZONES[..])),
        prop_oneof![
            3 => Just(None),
            1 => Just(Some("none")),
            2 => Just(Some("a")),
            2 => Just(Some("b")),
        ],
        -2 * DAY..7 * DAY,
        prop::option::of(MINUTE..4 * DAY),
    )
        .prop_map(|(kind, zone, window, at, ttl)| JobSpec {
            kind,
            zone,
            window,
            at,
            ttl,
        })
}

/// How an attempt ends.
#[derive(Debug, Clone)]
pub(super) enum End {
    /// A retry this long after the attempt ended.
    Retry(Millis),
    Sent,
    Failed,
    PauseForKey,
}

#[derive(Debug, Clone)]
pub(super) enum Event {
    Advance(Millis),
    Claim(usize),
    Finish(Index, End),
    Requeue(Index),
    Reschedule(Index, Millis),
    Cancel(Index),
    Recover,
    Enqueue(Vec<JobSpec>),
    /// A new calendar, then resettle steps: all of them, or at most this many.
    NewCalendar(CalendarSpec, Option<usize>),
}

/// From seconds to days.
fn step() -> impl Strategy<Value = Millis> {
    prop_oneof![1_000..MINUTE, MINUTE..HOUR, HOUR..DAY, DAY..4 * DAY]
}

fn event() -> impl Strategy<Value = Event> {
    let end = prop_oneof![
        3 => (1_000..6 * HOUR).prop_map(End::Retry),
        2 => Just(End::Sent),
        1 => Just(End::Failed),
        1 => Just(End::PauseForKey),
    ];
    prop_oneof![
        5 => step().prop_map(Event::Advance),
        6 => (1usize..6).prop_map(Event::Claim),
        4 => (any::<Index>(), end).prop_map(|(i, end)| Event::Finish(i, end)),
        1 => any::<Index>().prop_map(Event::Requeue),
        1 => (any::<Index>(), -HOUR..5 * DAY).prop_map(|(i, at)| Event::Reschedule(i, at)),
        1 => any::<Index>().prop_map(Event::Cancel),
        1 => Just(Event::Recover),
        1 => prop::collection::vec(job_spec(), 1..3).prop_map(Event::Enqueue),
        1 => (calendar_spec(), prop::option::of(1usize..3))
            .prop_map(|(c, steps)| Event::NewCalendar(c, steps)),
    ]
}

/// A run's start: near one of the DST changes, or anywhere in 2026-2027.
fn start() -> impl Strategy<Value = Millis> {
    prop_oneof![
        (prop::sample::select(transitions()), 0..3 * DAY).prop_map(|(t, back)| t - back),
        FROM..FROM + 2 * 365 * DAY,
    ]
}

proptest! {
    // About 3 s in a debug build.
    #![proptest_config(ProptestConfig {
        cases: 100,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_claim_is_ever_outside_the_window_or_before_scheduled_at(
        start in start(),
        calendar in calendar_spec(),
        jobs in prop::collection::vec(job_spec(), 1..8),
        events in prop::collection::vec(event(), 10..40),
    ) {
        let mut run = Run::new(start, calendar.calendar(start));
        run.apply(&Event::Enqueue(jobs))?;
        for event in &events {
            run.apply(event)?;
        }
        run.drain()?;
    }
}

#[test]
fn the_runs_start_near_each_dst_change_of_2026() {
    let utc: Vec<String> = transitions().into_iter().map(format).collect();
    assert_eq!(
        utc,
        [
            "2026-04-04T16:00:00.000Z", // Sydney back
            "2026-10-03T16:00:00.000Z", // Sydney forward
            "2026-03-08T07:00:00.000Z", // New York forward
            "2026-11-01T06:00:00.000Z", // New York back
            "2026-04-04T15:00:00.000Z", // Lord Howe back half an hour
            "2026-10-03T15:30:00.000Z", // Lord Howe forward half an hour
        ]
    );
}
