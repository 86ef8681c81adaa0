//! One job's [`Rule`]: whether its window is open at an instant, when it
//! next opens, and the [`Plan`] for trying the job.

use super::*;

/// How far ahead, in days, a search for a window's next opening looks:
/// about ten years. A window that the holidays keep shut longer is taken
/// as not opening again, and its jobs are held.
pub const HORIZON_DAYS: i64 = 3_660;

impl Rule {
    /// The zone's IANA name, e.g. "Australia/Sydney".
    pub fn zone_name(&self) -> &str {
        self.tz.iana_name().unwrap_or("UTC")
    }

    /// The window's spread in milliseconds; 0 with none (or no window).
    pub fn spread_ms(&self) -> i64 {
        self.window.as_deref().map_or(0, |w| w.spread_ms)
    }

    /// The window's name, or "none".
    pub fn window_name(&self) -> &str {
        self.window
            .as_deref()
            .map_or(NO_WINDOW, |w| w.name.as_str())
    }

    /// Whether a send may go out at `at`. Always true with no window; false
    /// for an instant outside the calendar (beyond year ±9999).
    pub fn is_open(&self, at: Millis) -> bool {
        let Some(window) = &self.window else {
            return true;
        };
        match Timestamp::from_millisecond(at) {
            Ok(ts) => open_at(window, self.tz.to_datetime(ts)),
            Err(_) => false,
        }
    }

    /// The earliest instant >= `at` at which the window is open (`at` itself
    /// when open). None if it does not open within [`HORIZON_DAYS`].
    ///
    /// The search runs day by day from the day before `at`'s local date (a
    /// fold across midnight can bring an earlier date back), stepping over
    /// each run of consecutive holidays in one go, and stops the day after
    /// the first opening it finds. Every open weekday comes round once a
    /// week, so only holidays, and DST gaps that remove a range, keep a
    /// window shut longer; the horizon bounds the work of one search
    /// however many holidays the config lists.
    pub fn next_opening(&self, at: Millis) -> Option<Millis> {
        let Some(window) = &self.window else {
            return Some(at);
        };
        let after = Timestamp::from_millisecond(at).ok()?;
        let local = self.tz.to_datetime(after);
        if open_at(window, local) {
            return Some(at);
        }
        let horizon = local
            .date()
            .checked_add(jiff::Span::new().days(HORIZON_DAYS))
            .ok();
        let mut date = local.date().yesterday().unwrap_or(local.date());
        let mut found: Option<Timestamp> = None;
        let mut stop_after: Option<Date> = None;
        loop {
            if horizon.is_some_and(|h| date > h) || stop_after.is_some_and(|s| date > s) {
                break;
            }
            if let Some(last) = window.holidays_until(date) {
                date = match last.tomorrow() {
                    Ok(d) => d,
                    Err(_) => break,
                };
                continue;
            }
            if let Some(t) = self.first_opening_on(window, date, after) {
                // The next date is looked at too: a fold across midnight can
                // make one of its instants come first.
                if found.is_none() {
                    stop_after = Some(date.tomorrow().unwrap_or(date));
                }
                if found.is_none_or(|f| t < f) {
                    found = Some(t);
                }
            }
            date = match date.tomorrow() {
                Ok(d) => d,
                Err(_) => break,
            };
        }
        found.map(|t| t.as_millisecond())
    }

    /// When job `id`, due by its own rules at `scheduled_at`, will be tried,
    /// judged at `now`. Open at max(scheduled_at, now): due as scheduled.
    /// Closed: deferred to the next opening, plus a fixed point within the
    /// window's spread chosen by hashing `id`; the point is clipped to the
    /// open range that starts at the opening, so `due_at` is always open.
    pub fn plan(&self, id: i64, scheduled_at: Millis, now: Millis) -> Plan {
        let base = scheduled_at.max(now);
        if self.is_open(base) {
            return Plan::Due;
        }
        let Some(opening) = self.next_opening(base) else {
            return Plan::Never;
        };
        let due_at = opening.saturating_add(self.spread_offset(id, opening));
        if self.is_open(due_at) {
            Plan::Deferred { opening, due_at }
        } else {
            // Only a DST change inside the stretch can get here.
            Plan::Deferred {
                opening,
                due_at: opening,
            }
        }
    }

    /// Milliseconds (whole seconds) after `opening` for job `id`.
    fn spread_offset(&self, id: i64, opening: Millis) -> i64 {
        let Some(window) = &self.window else {
            return 0;
        };
        if window.spread_ms == 0 {
            return 0;
        }
        let Some(end) = self.stretch_end(window, opening) else {
            return 0;
        };
        let span_secs = window.spread_ms.min(end.saturating_sub(opening)) / 1000;
        if span_secs <= 0 {
            return 0;
        }
        let pick = splitmix64(id as u64) % span_secs.unsigned_abs();
        // pick < span_secs, which is an i64.
        i64::try_from(pick).unwrap_or(0) * 1000
    }

    /// Where the open range holding `opening` ends, following a range that
    /// ends at 24:00 into one that starts at 00:00 the next day.
    fn stretch_end(&self, window: &Window, opening: Millis) -> Option<Millis> {
        let local = self
            .tz
            .to_datetime(Timestamp::from_millisecond(opening).ok()?);
        let minute = minute_of_day(local);
        let mut date = local.date();
        let mut end = window
            .ranges(date)
            .iter()
            .find(|r| r.start <= minute && minute < r.end)?
            .end;
        // A week of 24:00/00:00 hand-overs at most: the stretch is long enough.
        for _ in 0..7 {
            if end != DAY_MINUTES {
                break;
            }
            let next = date.tomorrow().ok()?;
            match window.ranges(next).first() {
                Some(first) if first.start == 0 && !window.is_holiday(next) => {
                    date = next;
                    end = first.end;
                }
                _ => break,
            }
        }
        let end_local = if end == DAY_MINUTES {
            midnight(date.tomorrow().ok()?)
        } else {
            date.to_datetime(
                Time::new(
                    i8::try_from(end / 60).ok()?,
                    i8::try_from(end % 60).ok()?,
                    0,
                    0,
                )
                .ok()?,
            )
        };
        let end = self
            .tz
            .to_ambiguous_timestamp(end_local)
            .compatible()
            .ok()?;
        Some(end.as_millisecond())
    }

    /// The earliest instant >= `after` on local `date` at which the window
    /// is open and was not a moment before: a range's start (both times in a
    /// fold, the jump in a gap), or a DST transition that moves the clock
    /// back into a range.
    fn first_opening_on(&self, window: &Window, date: Date, after: Timestamp) -> Option<Timestamp> {
        if window.is_holiday(date) {
            return None;
        }
        let ranges = window.ranges(date);
        if ranges.is_empty() {
            return None;
        }
        let mut best: Option<Timestamp> = None;
        let mut consider = |t: Timestamp| {
            if t >= after && best.is_none_or(|b| t < b) && open_at(window, self.tz.to_datetime(t)) {
                best = Some(t);
            }
        };
        for range in ranges {
            let Ok(start) = Time::new(
                i8::try_from(range.start / 60).unwrap_or(0),
                i8::try_from(range.start % 60).unwrap_or(0),
                0,
                0,
            ) else {
                continue;
            };
            for t in instants_of(&self.tz, date.to_datetime(start))
                .into_iter()
                .flatten()
            {
                consider(t);
            }
        }
        // A fold sets the clock back, possibly into a range already passed.
        let day_start = self
            .tz
            .to_ambiguous_timestamp(midnight(date))
            .earlier()
            .ok()?;
        let day_end = date
            .tomorrow()
            .ok()
            .and_then(|d| self.tz.to_ambiguous_timestamp(midnight(d)).later().ok());
        for transition in self.tz.following(day_start) {
            let t = transition.timestamp();
            if day_end.is_none_or(|end| t >= end) {
                break;
            }
            consider(t);
        }
        best
    }
}

fn minute_of_day(local: DateTime) -> u16 {
    // hour() is 0..=23 and minute() 0..=59.
    (local.hour().unsigned_abs() as u16) * 60 + local.minute().unsigned_abs() as u16
}

/// Whether `window` is open when the local clock shows `local`.
fn open_at(window: &Window, local: DateTime) -> bool {
    let date = local.date();
    if window.is_holiday(date) {
        return false;
    }
    let minute = minute_of_day(local);
    window
        .ranges(date)
        .iter()
        .any(|r| r.start <= minute && minute < r.end)
}
