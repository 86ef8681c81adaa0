//! Recurring sends: named schedules that turn a job template into an
//! ordinary job at each occurrence of a cron read in a time zone.
//!
//! This module owns what a schedule is and the rules it must pass
//! ([`check`]), the job one occurrence becomes ([`occurrence_job`]), the
//! `schedule_*` ops ([`wire`] parses them, [`answer`] carries them out) and
//! the daemon task that creates occurrences ([`task`]). When a schedule
//! fires and what a downtime costs is [`recurrence`]'s; the SQL is in
//! `store::schedules`.
//!
//! ```text
//! schedule_put ──► schedules row (next_at = first occurrence after now)
//!                        │ task sleeps until the earliest next_at
//!                        ▼
//!        one store call: next_at moves on, and the occurrence's job is
//!        enqueued with key schedule:NAME:<time>, tag schedule:NAME
//! ```
//!
//! The key makes creation idempotent: a restart, a crash between two
//! calls, or two daemons on copies of a schedule never create one
//! occurrence twice. The next occurrence is stored, so a restart finds
//! where each schedule stands in the store, not in a timer.

pub mod answer;
pub mod recurrence;
pub mod task;
pub mod wire;

use crate::job::{self, JobError, NewJob, Rules};
use crate::time::{self, Millis};
use recurrence::{Recurrence, RecurrenceError};
use serde_json::{Map, Value};

/// The longest schedule name: `schedule:NAME` must be a tag (64 at most).
pub const MAX_NAME_LEN: usize = 55;

/// What happens to occurrences missed while the daemon was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Create none of them (the default).
    #[default]
    Skip,
    /// Create only the most recent.
    Latest,
    /// Create them all, up to [`recurrence::MAX_CATCH_UP`] (the most recent).
    All,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
        }
    }

    pub fn parse(text: &str) -> Option<CatchUp> {
        [CatchUp::Skip, CatchUp::Latest, CatchUp::All]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

/// A schedule that passed [`check`].
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub name: String,
    /// Six fields, seconds first, read in `timezone`.
    pub cron: String,
    /// An IANA name, as chrono-tz writes it.
    pub timezone: String,
    pub catch_up: CatchUp,
    /// The job template: a JOB object without `scheduled_at`, `delay`,
    /// `key`, `after` or `expires_at`.
    pub job: Map<String, Value>,
}

impl Schedule {
    pub fn recurrence(&self) -> Result<Recurrence, RecurrenceError> {
        Recurrence::parse(&self.cron, &self.timezone)
    }
}

/// A schedule as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub schedule: Schedule,
    /// The next occurrence still to create; `None` when the cron has none
    /// left before 9999.
    pub next_at: Option<Millis>,
    /// Bumped by every put: a firing planned from an older put is dropped.
    pub revision: i64,
}

/// A row the daemon cannot fire (a hand edit or an import put a column of
/// the wrong type or nonsense in it): what of it can be shown, so that an
/// operator can find it and put it again or delete it. It has no next
/// occurrence: the task sets its `next_at` to null when it meets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    /// The name as stored (bytes that are not UTF-8 shown as U+FFFD).
    pub name: String,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub catch_up: Option<String>,
    /// The template as stored: its JSON, else its text, else null.
    pub job: Value,
    /// What is wrong with the row.
    pub why: String,
}

/// A schedule row as read: a schedule, or a row that cannot be one.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Readable(Stored),
    Unreadable(Unreadable),
}

impl Row {
    pub fn name(&self) -> &str {
        match self {
            Row::Readable(s) => &s.schedule.name,
            Row::Unreadable(u) => &u.name,
        }
    }
}

/// A `schedule_put` as the client sent it, its fields still unchecked.
#[derive(Debug, Clone, PartialEq)]
pub struct Put {
    pub name: String,
    pub cron: String,
    pub timezone: Option<String>,
    pub catch_up: Option<String>,
    pub job: Value,
}

/// Why a schedule was refused: a bad argument (`bad_request`) or a bad
/// template (`invalid_job`, with `field` as `job.NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub invalid_job: bool,
    pub field: String,
    pub message: String,
}

impl Refused {
    fn argument(field: &str, message: impl Into<String>) -> Refused {
        Refused {
            invalid_job: false,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn template(e: JobError) -> Refused {
        Refused {
            invalid_job: true,
            message: format!("job.{}: {}", e.field, e.message),
            field: format!("job.{}", e.field),
        }
    }
}

/// Whether `text` can name a schedule: 1 to 55 of `A-Z a-z 0-9 : . _ -`,
/// so that `schedule:NAME` is a tag.
pub fn is_name(text: &str) -> bool {
    text.len() <= MAX_NAME_LEN && job::is_tag(text)
}

/// The tag every job of schedule `name` carries.
pub fn tag(name: &str) -> String {
    format!("schedule:{name}")
}

/// The idempotency key of the occurrence of `name` at `at`.
pub fn occurrence_key(name: &str, at: Millis) -> String {
    format!("schedule:{name}:{}", time::format(at))
}

/// Template fields an occurrence sets itself, and `expires_at`, which as
/// an instant would expire every occurrence after it (`ttl` is per job).
const REFUSED_FIELDS: [(&str, &str); 5] = [
    (
        "scheduled_at",
        "each occurrence is scheduled at its own time",
    ),
    ("delay", "each occurrence is scheduled at its own time"),
    ("key", "each occurrence gets the key schedule:NAME:TIME"),
    ("after", "a schedule's jobs follow no other job"),
    (
        "expires_at",
        "an instant would expire every later occurrence; use ttl",
    ),
];

/// Checks a `schedule_put` and works out its first occurrence after `now`.
pub fn check(put: Put, now: Millis, rules: &Rules) -> Result<(Schedule, Millis), Refused> {
    if !is_name(&put.name) {
        return Err(Refused::argument(
            "name",
            format!(
                "{} is not a schedule name: 1 to {MAX_NAME_LEN} letters, digits, ':', '.', '_' or '-'",
                crate::protocol::quoted(&put.name)
            ),
        ));
    }
    let timezone = put
        .timezone
        .unwrap_or_else(|| rules.calendar.default_zone_name().to_owned());
    // The calendar's zone names (jiff) and the cron's (chrono-tz) must
    // both know it, so that the jobs it makes are accepted too.
    if let Err(e) = rules
        .calendar
        .rule(Some(&timezone), Some("none"), job::Kind::Message)
    {
        return Err(Refused::argument("timezone", e.to_string()));
    }
    let catch_up = match put.catch_up.as_deref() {
        None => CatchUp::Skip,
        Some(text) => CatchUp::parse(text).ok_or_else(|| {
            Refused::argument(
                "catch_up",
                format!(
                    "{} is not one of \"skip\", \"latest\", \"all\"",
                    crate::protocol::quoted(text)
                ),
            )
        })?,
    };
    let recurrence = Recurrence::parse(&put.cron, &timezone).map_err(|e| match e {
        RecurrenceError::Cron(m) => Refused::argument("cron", m),
        RecurrenceError::Zone(_) => Refused::argument("timezone", e.to_string()),
    })?;
    let Value::Object(template) = put.job else {
        return Err(Refused {
            invalid_job: true,
            field: "job".into(),
            message: "job must be a JSON object".into(),
        });
    };
    if let Some((field, why)) = REFUSED_FIELDS
        .iter()
        .find(|(f, _)| template.contains_key(*f))
    {
        return Err(Refused::template(JobError {
            field: (*field).to_owned(),
            message: format!("not allowed in a schedule's job: {why}"),
        }));
    }
    let first = recurrence.next_after(now).ok_or_else(|| {
        Refused::argument(
            "cron",
            format!(
                "{} has no occurrence after now",
                crate::protocol::quoted(&put.cron)
            ),
        )
    })?;
    let schedule = Schedule {
        name: put.name,
        cron: put.cron,
        timezone,
        catch_up,
        job: template,
    };
    occurrence_job(&schedule, first, now, rules).map_err(Refused::template)?;
    Ok((schedule, first))
}

/// The job the occurrence of `schedule` at `at` becomes: the template,
/// scheduled at `at`, with the occurrence's key, the schedule's tag after
/// the template's, and the schedule's zone unless the template names one.
/// Checked as any enqueued job is.
pub fn occurrence_job(
    schedule: &Schedule,
    at: Millis,
    now: Millis,
    rules: &Rules,
) -> Result<NewJob, JobError> {
    let mut job = schedule.job.clone();
    job.insert("scheduled_at".into(), Value::String(time::format(at)));
    if matches!(job.get("timezone"), None | Some(Value::Null)) {
        job.insert("timezone".into(), Value::String(schedule.timezone.clone()));
    }
    let mut job = job::validate(&Value::Object(job), now, rules)?;
    // The key and the tag are in the namespace a client's job may not use
    // (see `job::RESERVED_PREFIX`), so they are set once it is checked.
    if job.tags.len() >= job::MAX_TAGS {
        return Err(JobError {
            field: "tags".into(),
            message: format!(
                "at most {} tags: the schedule adds its own",
                job::MAX_TAGS - 1
            ),
        });
    }
    job.key = Some(occurrence_key(&schedule.name, at));
    job.tags.push(tag(&schedule.name));
    Ok(job)
}
