//! Send windows: the hours, in a job's own time zone, at which a message may
//! reach a customer. It owns the `[windows.*]` tables and the
//! `dispatch.default_timezone`/`default_window` keys once checked (a
//! [`Calendar`]), the rule one job follows ([`Rule`]), when that rule next
//! opens and when a job will therefore be tried ([`Plan`]), and reading a
//! local `scheduled_at` ([`parse_local`]).
//!
//! It does not own storing `due_at`, claiming, expiry or logging deferrals:
//! the store and dispatcher call [`Rule::plan`] and act on its answer.
//!
//! Every zone and DST computation goes through jiff and its bundled tz
//! database, so the answers do not depend on the host's `/usr/share/zoneinfo`.
//! Wall-clock semantics: a window is open when the clock on the customer's
//! wall shows an open time on a non-holiday date. So in a DST fold an
//! "00:00-01:30" window is open twice through 01:00-01:30, and a range that
//! starts inside a DST gap is open from the moment the clock jumps into it.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone, TimeZoneDatabase};
use serde::Deserialize;

use crate::job::Kind;
use crate::time::Millis;

mod rule;
mod spec;
#[cfg(test)]
pub(crate) mod tests;

pub use rule::HORIZON_DAYS;
pub use spec::RawWindow;
use spec::{DAY_MINUTES, Window};

/// The window name that means "any hour".
pub const NO_WINDOW: &str = "none";

/// A window or default that the config (or `from_toml` text) gets wrong.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CalendarError {
    /// Not TOML, or a key or value of the wrong form; the message says where.
    #[error("{0}")]
    Parse(String),
    /// `key` is dotted, e.g. `windows.business.wed`; `message` completes the
    /// sentence.
    #[error("{key} {message}")]
    Invalid { key: String, message: String },
}

impl CalendarError {
    fn invalid(key: &str, message: String) -> CalendarError {
        CalendarError::Invalid {
            key: key.to_owned(),
            message,
        }
    }
}

/// Why a job's `timezone` or `window` cannot be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("unknown time zone {0:?}; use an IANA name such as \"Europe/London\" or \"UTC\"")]
    UnknownZone(String),
    #[error("unknown window {name:?}; the config has: {}", known_list(known))]
    UnknownWindow { name: String, known: Vec<String> },
}

fn known_list(known: &[String]) -> String {
    let mut names: Vec<String> = known.iter().map(|n| format!("{n:?}")).collect();
    names.push(format!("{NO_WINDOW:?}"));
    names.join(", ")
}

/// The tz database windows are computed with: the one compiled into the
/// binary, so every host agrees.
fn zones() -> &'static TimeZoneDatabase {
    static DB: OnceLock<TimeZoneDatabase> = OnceLock::new();
    DB.get_or_init(TimeZoneDatabase::bundled)
}

/// An IANA zone by name (any ASCII case). jiff caches parsed zones, so a
/// second lookup of the same name is a binary search under a read lock.
fn zone(name: &str) -> Result<TimeZone, RuleError> {
    match zones().get(name) {
        // "Etc/Unknown" is in the database but names no place.
        Ok(tz) if tz.iana_name().is_some() => Ok(tz),
        _ => Err(RuleError::UnknownZone(name.to_owned())),
    }
}

/// Every send window of the config, and the defaults jobs fall back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    default_zone: TimeZone,
    default_window: Option<Arc<Window>>,
    windows: BTreeMap<String, Arc<Window>>,
}

/// What [`Calendar::from_toml`] reads; everything else in the text is ignored.
#[derive(Deserialize, Default)]
struct CalendarText {
    #[serde(default)]
    dispatch: DispatchText,
    #[serde(default)]
    windows: BTreeMap<String, RawWindow>,
}

#[derive(Deserialize, Default)]
struct DispatchText {
    default_timezone: Option<String>,
    default_window: Option<String>,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar::none()
    }
}

impl Calendar {
    /// Default zone UTC, no default window, no windows: the default config.
    pub fn none() -> Calendar {
        Calendar {
            default_zone: TimeZone::UTC,
            default_window: None,
            windows: BTreeMap::new(),
        }
    }

    /// Test/programmatic constructor, validating like the config loader;
    /// errors name the key. Reads `[dispatch]` `default_timezone` and
    /// `default_window` and the `[windows.*]` tables; other keys are ignored.
    pub fn from_toml(text: &str) -> Result<Calendar, CalendarError> {
        let raw: CalendarText = toml::from_str(text).map_err(|mut e| {
            // Without the input, toml names the table instead of quoting it.
            e.set_input(None);
            CalendarError::Parse(e.to_string().trim().replace('\n', "; "))
        })?;
        Calendar::from_parts(
            raw.dispatch.default_timezone.as_deref().unwrap_or("UTC"),
            raw.dispatch.default_window.as_deref(),
            raw.windows,
        )
    }

    /// Checks the config's pieces: `dispatch.default_timezone`,
    /// `dispatch.default_window` and the `[windows.*]` tables.
    pub fn from_parts(
        default_timezone: &str,
        default_window: Option<&str>,
        windows: BTreeMap<String, RawWindow>,
    ) -> Result<Calendar, CalendarError> {
        let default_zone = zone(default_timezone).map_err(|e| {
            CalendarError::invalid("dispatch.default_timezone", format!("has an {e}"))
        })?;
        let windows: BTreeMap<String, Arc<Window>> = spec::check_windows(windows)?
            .into_iter()
            .map(|(name, w)| (name, Arc::new(w)))
            .collect();
        let default_window = match default_window {
            None => None,
            Some(name) => match windows.get(name) {
                Some(w) => Some(Arc::clone(w)),
                None => {
                    let known: Vec<String> = windows.keys().map(|n| format!("{n:?}")).collect();
                    let has = if known.is_empty() {
                        "there are no [windows.*] tables".to_owned()
                    } else {
                        format!("the config has {}", known.join(", "))
                    };
                    return Err(CalendarError::invalid(
                        "dispatch.default_window",
                        format!("names {name:?}, which is not a [windows.NAME] table; {has}"),
                    ));
                }
            },
        };
        Ok(Calendar {
            default_zone,
            default_window,
            windows,
        })
    }

    /// The IANA name of `dispatch.default_timezone`.
    pub fn default_zone_name(&self) -> &str {
        self.default_zone.iana_name().unwrap_or("UTC")
    }

    /// The name of `dispatch.default_window`, if set.
    pub fn default_window_name(&self) -> Option<&str> {
        self.default_window.as_deref().map(|w| w.name.as_str())
    }

    /// The rule for a job: `timezone` and `window` as the job named them
    /// (None = not named). None zone → default_timezone. None window →
    /// default_window, except for [`Kind::CoaxSchedule`], which reaches no
    /// customer when sent and so gets no window unless it names one.
    /// `Some("none")` → no window.
    pub fn rule(
        &self,
        timezone: Option<&str>,
        window: Option<&str>,
        kind: Kind,
    ) -> Result<Rule, RuleError> {
        let tz = match timezone {
            None => self.default_zone.clone(),
            Some(name) => zone(name)?,
        };
        let window = match window {
            Some(NO_WINDOW) => None,
            Some(name) => match self.windows.get(name) {
                Some(w) => Some(Arc::clone(w)),
                None => {
                    return Err(RuleError::UnknownWindow {
                        name: name.to_owned(),
                        known: self.windows.keys().cloned().collect(),
                    });
                }
            },
            None if kind == Kind::CoaxSchedule => None,
            None => self.default_window.clone(),
        };
        Ok(Rule { tz, window })
    }

    /// The names of the windows, for error messages.
    pub fn window_names(&self) -> impl Iterator<Item = &str> {
        self.windows.keys().map(String::as_str)
    }

    /// A hash of everything that can change a job's due time (windows and
    /// defaults), the same in every process and build: FNV-1a over a
    /// canonical description, so it can be stored and compared at start-up.
    pub fn fingerprint(&self) -> u64 {
        let mut text = format!(
            "default_timezone {:?}; default_window {:?};\n",
            self.default_zone_name(),
            self.default_window_name()
        );
        for window in self.windows.values() {
            window.describe(&mut text);
        }
        fnv1a(text.as_bytes())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// One job's zone and window. Cheap to clone: both are reference-counted.
#[derive(Debug, Clone)]
pub struct Rule {
    tz: TimeZone,
    window: Option<Arc<Window>>,
}

/// When a job will be tried, from [`Rule::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The window is open: the job is due at its `scheduled_at`.
    Due,
    /// The window is closed: the job waits for `opening`, and is tried at
    /// `due_at`, within the window's spread after it.
    Deferred { opening: Millis, due_at: Millis },
    /// The window does not open again (within a search bounded by its
    /// holidays; in practice only past the end of the calendar, year 9999).
    Never,
}

/// A local date and time without an offset, "2026-12-01T09:00" or
/// "2026-12-01T09:00:00" (fractional seconds optional), read in the rule's
/// zone: a time a DST change skips is moved forward by the gap's length
/// (02:30 → 03:30), a time that happens twice is the earlier of the two
/// (jiff's `Disambiguation::Compatible`). None when `text` is not of that
/// form (so the caller can read it as RFC 3339 with an offset) or is not a
/// real date.
pub fn parse_local(text: &str, rule: &Rule) -> Option<Millis> {
    read_local(text, rule).ok().flatten()
}

/// [`parse_local`], saying why a text of the local form is no time: `None`
/// when `text` is not of that form at all, an error when it is but names
/// no real date and time, or one past the last the tz database reaches
/// (9999-12-30, as UTC).
pub fn read_local(text: &str, rule: &Rule) -> Result<Option<Millis>, String> {
    if !is_local_shape(text.as_bytes()) {
        return Ok(None);
    }
    // A leap second, "23:59:60", is read as RFC 3339 times are: the second
    // after :59 (jiff's civil parser would fold it into :59).
    let (civil, leap) = match text.get(17..19) {
        Some("60") => (format!("{}59{}", &text[..17], &text[19..]), 1_000),
        _ => (text.to_owned(), 0),
    };
    let dt: DateTime = civil
        .parse()
        .map_err(|e| format!("{text:?} is not a real local date and time ({e})"))?;
    let at = rule
        .tz
        .to_ambiguous_timestamp(dt)
        .compatible()
        .map_err(|_| {
            format!(
                "{text:?} in {} is past the last local time this daemon can compute \
                 (9999-12-30); give a time with an offset",
                rule.zone_name()
            )
        })?;
    Ok(Some(at.as_millisecond() + leap))
}

/// `YYYY-MM-DDTHH:MM`, then optionally `:SS` and `.` with 1 to 9 digits, and
/// nothing else. jiff's own parser is more lenient (it would take and drop an
/// offset), so the form is checked first.
fn is_local_shape(b: &[u8]) -> bool {
    let digits = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
    if b.len() < 16
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
    {
        return false;
    }
    let rest = &b[16..];
    if rest.is_empty() {
        return true;
    }
    if rest.len() < 3 || rest[0] != b':' || !rest[1..3].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let fraction = &rest[3..];
    fraction.is_empty()
        || (fraction[0] == b'.'
            && (2..=10).contains(&fraction.len())
            && fraction[1..].iter().all(u8::is_ascii_digit))
}

/// Local midnight at the start of `date`.
fn midnight(date: Date) -> DateTime {
    date.to_datetime(Time::midnight())
}

/// The instants at which the wall clock shows `dt`: one, two in a fold, or,
/// in a gap, the transition at which the clock jumps past it.
fn instants_of(tz: &TimeZone, dt: DateTime) -> [Option<Timestamp>; 2] {
    let ambiguous = tz.to_ambiguous_timestamp(dt);
    match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { .. } => [ambiguous.compatible().ok(), None],
        AmbiguousOffset::Fold { .. } => [ambiguous.earlier().ok(), ambiguous.later().ok()],
        AmbiguousOffset::Gap { .. } => {
            // `earlier` lies before the transition; the next one is the jump.
            let transition = ambiguous
                .earlier()
                .ok()
                .and_then(|before| tz.following(before).next())
                .map(|t| t.timestamp());
            [transition, None]
        }
    }
}

/// splitmix64: spreads consecutive job ids evenly.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
