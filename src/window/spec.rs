//! A `[windows.NAME]` table as written, and the checks that turn it into a
//! [`Window`]: day ranges, holidays and spread. Every refusal names its key,
//! e.g. `windows.business.wed`, so `check-config` can say what to change.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::civil::Date;
use serde::Deserialize;

use super::CalendarError;

/// The longest `spread` accepted: a deferred job is meant to go out near its
/// opening, not a day later.
const MAX_SPREAD: Duration = Duration::from_secs(24 * 3600);
/// Minutes in a day; a range may end at "24:00".
pub(super) const DAY_MINUTES: u16 = 24 * 60;
/// Day keys, Monday first, in the order of [`Window::days`].
pub(super) const DAY_KEYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One `[windows.NAME]` table as written. Shared by the config loader and
/// [`super::Calendar::from_toml`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    mon: Option<String>,
    tue: Option<String>,
    wed: Option<String>,
    thu: Option<String>,
    fri: Option<String>,
    sat: Option<String>,
    sun: Option<String>,
    #[serde(default)]
    holidays: Vec<String>,
    spread: Option<String>,
}

/// Local times of day `[start, end)` in minutes since midnight; `end` may be
/// [`DAY_MINUTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Range {
    pub(super) start: u16,
    pub(super) end: u16,
}

/// A checked send window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) name: String,
    /// Monday first; each day's ranges sorted, disjoint and not touching
    /// (touching ones are merged).
    pub(super) days: [Vec<Range>; 7],
    /// Sorted, without duplicates.
    pub(super) holidays: Vec<Date>,
    /// For each holiday, the last day of the run of consecutive holidays it
    /// is in, so a search for an opening steps over a run in one go.
    pub(super) run_ends: Vec<Date>,
    /// Milliseconds; zero for no spread.
    pub(super) spread_ms: i64,
}

impl Window {
    pub(super) fn is_holiday(&self, date: Date) -> bool {
        self.holidays.binary_search(&date).is_ok()
    }

    /// The last day of the run of consecutive holidays `date` is in, if it
    /// is a holiday.
    pub(super) fn holidays_until(&self, date: Date) -> Option<Date> {
        let i = self.holidays.binary_search(&date).ok()?;
        self.run_ends.get(i).copied()
    }

    /// The ranges of `date`'s weekday.
    pub(super) fn ranges(&self, date: Date) -> &[Range] {
        &self.days[usize::from(date.weekday().to_monday_zero_offset().unsigned_abs())]
    }

    /// Appends a canonical description of everything that decides when the
    /// window is open, for [`super::Calendar::fingerprint`].
    pub(super) fn describe(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = write!(out, "window {:?} spread {}ms;", self.name, self.spread_ms);
        for (key, ranges) in DAY_KEYS.iter().zip(&self.days) {
            let _ = write!(out, " {key}");
            for r in ranges {
                let _ = write!(out, " {}-{}", r.start, r.end);
            }
            out.push(';');
        }
        out.push_str(" holidays");
        for d in &self.holidays {
            let _ = write!(out, " {d}");
        }
        out.push_str(";\n");
    }
}

/// Checks the window `name`, naming the key of whatever is wrong.
pub(super) fn check_window(name: &str, raw: RawWindow) -> Result<Window, CalendarError> {
    let key = |sub: &str| format!("windows.{name}.{sub}");
    if name.is_empty() {
        return Err(CalendarError::invalid(
            "windows",
            "has a window with an empty name".to_owned(),
        ));
    }
    if name.eq_ignore_ascii_case("none") {
        return Err(CalendarError::invalid(
            &format!("windows.{name}"),
            "is a reserved name: a job's window \"none\" means any hour; choose another name"
                .to_owned(),
        ));
    }
    let texts = [
        raw.mon, raw.tue, raw.wed, raw.thu, raw.fri, raw.sat, raw.sun,
    ];
    let mut days: [Vec<Range>; 7] = Default::default();
    for ((day, text), slot) in DAY_KEYS.iter().zip(texts).zip(days.iter_mut()) {
        if let Some(text) = text {
            *slot = parse_day(&text).map_err(|m| CalendarError::invalid(&key(day), m))?;
        }
    }
    if days.iter().all(Vec::is_empty) {
        return Err(CalendarError::invalid(
            &format!("windows.{name}"),
            "never opens: every day is closed or absent; give at least one day a range \
             such as mon = \"09:00-17:00\""
                .to_owned(),
        ));
    }
    let mut holidays = Vec::with_capacity(raw.holidays.len());
    for text in &raw.holidays {
        holidays.push(parse_date(text).map_err(|m| CalendarError::invalid(&key("holidays"), m))?);
    }
    holidays.sort_unstable();
    holidays.dedup();
    let mut run_ends = holidays.clone();
    for i in (0..run_ends.len().saturating_sub(1)).rev() {
        if run_ends[i].tomorrow().ok() == Some(holidays[i + 1]) {
            run_ends[i] = run_ends[i + 1];
        }
    }
    let spread_ms = match &raw.spread {
        None => 0,
        Some(text) => parse_spread(text).map_err(|m| CalendarError::invalid(&key("spread"), m))?,
    };
    Ok(Window {
        name: name.to_owned(),
        days,
        holidays,
        run_ends,
        spread_ms,
    })
}

/// Checks every window of a config.
pub(super) fn check_windows(
    raw: BTreeMap<String, RawWindow>,
) -> Result<BTreeMap<String, Window>, CalendarError> {
    raw.into_iter()
        .map(|(name, window)| check_window(&name, window).map(|w| (name, w)))
        .collect()
}

/// Reads "closed" or comma-separated "HH:MM-HH:MM" ranges. Overlapping ranges
/// are refused (they are most likely a typo); touching ones are merged.
pub(super) fn parse_day(text: &str) -> Result<Vec<Range>, String> {
    let text = text.trim();
    if text == "closed" {
        return Ok(Vec::new());
    }
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let bad = || {
            format!(
                r#"has {part:?}, which is not a range such as "09:00-17:00"; write "HH:MM-HH:MM" ranges separated by commas, or "closed""#
            )
        };
        let (start, end) = part.split_once('-').ok_or_else(bad)?;
        let start = parse_clock(start.trim(), false).ok_or_else(bad)?;
        let end = parse_clock(end.trim(), true).ok_or_else(bad)?;
        if end <= start {
            return Err(format!(
                r#"has {part:?}, which ends before or when it starts; a range must lie within one day (use "24:00" to end at midnight, and continue on the next day from "00:00")"#
            ));
        }
        ranges.push(Range { start, end });
    }
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start < last.end => {
                return Err(format!(
                    "has overlapping ranges {} and {}; list each time once",
                    show(*last),
                    show(r)
                ));
            }
            Some(last) if r.start == last.end => last.end = r.end,
            _ => merged.push(r),
        }
    }
    Ok(merged)
}

/// "HH:MM" with two digits each, as minutes since midnight; "24:00" only
/// when `end` is set.
fn parse_clock(text: &str, end: bool) -> Option<u16> {
    let b = text.as_bytes();
    if b.len() != 5 || b[2] != b':' || ![b[0], b[1], b[3], b[4]].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hour = u16::from(b[0] - b'0') * 10 + u16::from(b[1] - b'0');
    let minute = u16::from(b[3] - b'0') * 10 + u16::from(b[4] - b'0');
    match (hour, minute) {
        (24, 0) if end => Some(DAY_MINUTES),
        (0..=23, 0..=59) => Some(hour * 60 + minute),
        _ => None,
    }
}

fn show(r: Range) -> String {
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        r.start / 60,
        r.start % 60,
        r.end / 60,
        r.end % 60
    )
}

/// "YYYY-MM-DD", a real date.
fn parse_date(text: &str) -> Result<Date, String> {
    let b = text.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    let bad = || format!(r#"has {text:?}, which is not a date such as "2026-12-25""#);
    if !shaped {
        return Err(bad());
    }
    text.parse::<Date>().map_err(|_| bad())
}

fn parse_spread(text: &str) -> Result<i64, String> {
    let spread = humantime::parse_duration(text).map_err(|err| {
        format!(r#"{text:?} is not a duration ({err}); write e.g. "20m", or "0s" for none"#)
    })?;
    if spread > MAX_SPREAD {
        return Err(format!(
            "{text:?} is longer than 24h; a spread is meant to smooth the first minutes \
             of an opening, e.g. \"20m\""
        ));
    }
    // At most a day, so it fits.
    Ok(i64::try_from(spread.as_millis()).unwrap_or(i64::MAX))
}
