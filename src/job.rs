//! Jobs in the domain's words: their kinds, their states, and the rules a
//! job must pass before the daemon accepts it.
//!
//! This module owns validation of a caller's JOB object, including the
//! per-route lists of payload fields that Coax documents. It does not know
//! about SQLite or HTTP: the store keeps a [`NewJob`] and the Coax client
//! turns one into a request.
//!
//! A job moves through these states:
//!
//! ```text
//!             enqueue
//!                │
//!                ▼      reschedule
//!   ┌──────► scheduled ◄────────┐
//!   │            │ │ cancel     │
//!   │      claim │ └──────► cancelled
//!   │            ▼
//!   │ retry,  sending ──────► sent | skipped
//!   │ 401/403    │ │
//!   └────────────┘ └──────► failed ──requeue──► scheduled
//! ```
//!
//! A job enqueued with `after` starts `waiting` instead, and leaves it when
//! its parent ends: `scheduled` if the parent was `sent`, else `cancelled`
//! (see [`crate::store`]'s `chain`).

mod payload;

use crate::protocol::quoted;
use crate::time::{self, Millis};
use crate::window::{self, Calendar, Rule, RuleError};
pub use payload::payload_field_allowed;
use payload::{check_payload_size, validate_payload};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What Coax is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Send a message now (routes 1 and 2).
    Message,
    /// Send a review request (routes 5 and 6).
    ReviewRequest,
    /// Hand a schedule to Coax, which delivers at `payload.scheduled_at` (routes 3 and 4).
    CoaxSchedule,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Message, Kind::ReviewRequest, Kind::CoaxSchedule];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::ReviewRequest => "review_request",
            Kind::CoaxSchedule => "coax_schedule",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is in its life. See the module documentation for the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Scheduled,
    Sending,
    Sent,
    Skipped,
    Failed,
    Cancelled,
    /// An ambiguous send under `on_ambiguous = "hold"`: waits for a person.
    Held,
    /// Not delivered by its `expires_at`, so never sent.
    Expired,
    /// Enqueued with `after`: waits for its parent to end.
    Waiting,
}

impl State {
    pub const ALL: [State; 9] = [
        State::Scheduled,
        State::Sending,
        State::Sent,
        State::Skipped,
        State::Failed,
        State::Cancelled,
        State::Held,
        State::Expired,
        State::Waiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Sending => "sending",
            State::Sent => "sent",
            State::Skipped => "skipped",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Held => "held",
            State::Expired => "expired",
            State::Waiting => "waiting",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated job, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub key: Option<String>,
    pub kind: Kind,
    pub channel: String,
    pub enquiry_id: Option<String>,
    pub scheduled_at: Millis,
    /// After this the job is `expired` instead of sent.
    pub expires_at: Option<Millis>,
    /// The Coax request body, exactly as it will be sent.
    pub payload: Map<String, Value>,
    /// The zone and send window the job named; `None` for the config's
    /// default, resolved when used so that a reload reaches queued jobs.
    pub timezone: Option<String>,
    pub window: Option<String>,
    /// Labels to find, cancel or move the job by, in the order given,
    /// each once.
    pub tags: Vec<String>,
    /// The job it follows (`after`): it then starts `waiting`, and
    /// `scheduled_at` is only the earliest it could be due.
    pub after: Option<After>,
}

/// A follow-up's parent and its times, counted from the parent's send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub parent: crate::protocol::Lookup,
    /// `delay`: from the parent's send to the child's `scheduled_at`.
    pub delay_ms: i64,
    /// `ttl` (or `dispatch.default_ttl`): from the child's `scheduled_at`
    /// to its expiry, once it is known. An `expires_at` is kept as given.
    pub ttl_ms: Option<i64>,
}

/// Why a JOB object was refused, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    pub field: String,
    pub message: String,
}

impl JobError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> JobError {
        JobError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

const JOB_FIELDS: &[&str] = &[
    "kind",
    "channel",
    "enquiry_id",
    "scheduled_at",
    "delay",
    "expires_at",
    "ttl",
    "key",
    "payload",
    "timezone",
    "window",
    "tags",
    "after",
];

/// The earliest instant a job may name: 1970-01-01T00:00:00Z.
pub const EARLIEST: Millis = 0;
/// The latest instant a job may name, 9999-12-31T23:59:59.999Z: past it a
/// time no longer has the four-digit year RFC 3339 requires.
pub const LATEST: Millis = 253_402_300_799_999;

/// How a daemon's config shapes the jobs it accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// `dispatch.default_ttl`: an expiry for jobs that bring none.
    pub default_ttl: Option<Duration>,
    /// `socket.max_job_bytes`: the longest payload, as compact JSON.
    pub max_job_bytes: usize,
    /// The send windows and the default zone: which `timezone` and
    /// `window` names exist, and the zone a local `scheduled_at` is read in.
    pub calendar: Arc<Calendar>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            default_ttl: None,
            max_job_bytes: DEFAULT_MAX_JOB_BYTES,
            calendar: Arc::new(Calendar::none()),
        }
    }
}

/// `socket.max_job_bytes` when the config names none: Coax messages are
/// text, and a payload this size is already a very long one.
pub const DEFAULT_MAX_JOB_BYTES: usize = 64 * 1024;

const MAX_KEY_LEN: usize = 200;
/// The longest `timezone` or `window` name (IANA names are far shorter).
const MAX_NAME_LEN: usize = 64;
const MAX_CHANNEL_LEN: usize = 64;
const MAX_ENQUIRY_ID_LEN: usize = 20;

/// A channel or enquiry id becomes a URL path segment, so only a safe
/// alphabet is allowed: nothing that could climb out of the route.
pub fn is_path_safe(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `text` is a channel: 1 to 64 letters, digits, `_` or `-`. It
/// becomes a path segment, so this holds for a stored job as for a new one.
pub fn is_channel(text: &str) -> bool {
    text.len() <= MAX_CHANNEL_LEN && is_path_safe(text)
}

/// Whether `text` is an enquiry id: 1 to 20 digits, a path segment too.
pub fn is_enquiry_id(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_ENQUIRY_ID_LEN && text.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a caller's JOB object and turns it into a [`NewJob`].
///
/// `now` resolves a missing `scheduled_at` or a `delay`; `rules` give an
/// expiry to a job that brings none and cap the payload's size.
pub fn validate(job: &Value, now: Millis, rules: &Rules) -> Result<NewJob, JobError> {
    let Value::Object(fields) = job else {
        return Err(JobError::new("job", "must be a JSON object"));
    };
    if let Some(unknown) = fields.keys().find(|k| !JOB_FIELDS.contains(&k.as_str())) {
        return Err(JobError::new(
            unknown.as_str(),
            format!("unknown job field; allowed: {}", JOB_FIELDS.join(", ")),
        ));
    }

    let kind = match fields.get("kind") {
        None => return Err(JobError::new("kind", "is required")),
        Some(Value::String(s)) => Kind::parse(s).ok_or_else(|| {
            JobError::new(
                "kind",
                format!(
                    "{} is not one of message, review_request, coax_schedule",
                    quoted(s)
                ),
            )
        })?,
        Some(_) => return Err(JobError::new("kind", "must be a string")),
    };
    let channel = validate_channel(fields.get("channel"))?;
    let enquiry_id = validate_enquiry_id(fields.get("enquiry_id"))?;
    let timezone = optional_name(fields.get("timezone"), "timezone")?;
    let window = optional_name(fields.get("window"), "window")?;
    let tags = validate_tags(fields.get("tags"))?;
    let rule = rules
        .calendar
        .rule(timezone.as_deref(), window.as_deref(), kind)
        .map_err(|e| match e {
            RuleError::UnknownZone(_) => JobError::new("timezone", e.to_string()),
            RuleError::UnknownWindow { .. } => JobError::new("window", e.to_string()),
        })?;
    let parent = validate_after(fields.get("after"))?;
    if parent.is_some() && fields.get("scheduled_at").is_some() {
        return Err(JobError::new(
            "scheduled_at",
            "is refused with after: a follow-up is due its delay after its parent is sent",
        ));
    }
    let scheduled_at = validate_when(fields.get("scheduled_at"), fields.get("delay"), now, &rule)?;
    let expires_at = validate_expiry(
        fields.get("expires_at"),
        fields.get("ttl"),
        scheduled_at,
        rules.default_ttl,
    )?;
    // A follow-up's times are known only once its parent is sent: the
    // delay, and an expiry from a ttl, are kept as spans until then.
    let (expires_at, after) = match parent {
        None => (expires_at, None),
        Some(parent) => {
            let ttl_ms = expires_at
                .filter(|_| fields.get("expires_at").is_none())
                .map(|at| at - scheduled_at);
            let after = After {
                parent,
                delay_ms: scheduled_at - now,
                ttl_ms,
            };
            (expires_at.filter(|_| ttl_ms.is_none()), Some(after))
        }
    };
    let key = validate_key(fields.get("key"))?;
    let payload = match fields.get("payload") {
        None => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err(JobError::new("payload", "must be a JSON object")),
    };
    check_payload_size(&payload, rules.max_job_bytes)?;
    let payload = validate_payload(kind, &channel, enquiry_id.is_some(), payload)?;

    Ok(NewJob {
        key,
        kind,
        channel,
        enquiry_id,
        scheduled_at,
        expires_at,
        payload,
        timezone,
        window,
        tags,
        after,
    })
}

/// `after`: `{"id":N}` or `{"key":K}`, the job this one follows.
fn validate_after(value: Option<&Value>) -> Result<Option<crate::protocol::Lookup>, JobError> {
    use crate::protocol::Lookup;
    let shape = || JobError::new("after", "must be {\"id\":N} or {\"key\":K}");
    let fields = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(fields)) if fields.len() == 1 => fields,
        Some(_) => return Err(shape()),
    };
    match (fields.get("id"), fields.get("key")) {
        (Some(id), None) => match id.as_i64() {
            Some(id) if id > 0 => Ok(Some(Lookup::Id(id))),
            _ => Err(JobError::new("after", "id must be a positive integer")),
        },
        (None, Some(key)) => match validate_key(Some(key))
            .map_err(|e| JobError::new("after", format!("key {}", e.message)))?
        {
            Some(key) => Ok(Some(Lookup::Key(key))),
            None => Err(shape()),
        },
        _ => Err(shape()),
    }
}

/// The most tags a job may carry.
pub const MAX_TAGS: usize = 16;
/// The longest tag.
const MAX_TAG_LEN: usize = 64;

/// Whether `text` is a tag: 1 to 64 of `A-Z a-z 0-9 : . _ -`.
pub fn is_tag(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_TAG_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
}

/// `tags`: an array of at most [`MAX_TAGS`] tags; a tag given twice counts once.
fn validate_tags(value: Option<&Value>) -> Result<Vec<String>, JobError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(JobError::new("tags", "must be an array of strings")),
    };
    let mut tags: Vec<String> = Vec::with_capacity(items.len().min(MAX_TAGS));
    for item in items {
        let Value::String(tag) = item else {
            return Err(JobError::new("tags", "must be an array of strings"));
        };
        if tag.starts_with(RESERVED_PREFIX) {
            return Err(JobError::new(
                "tags",
                format!(
                    "{}: tags starting with {RESERVED_PREFIX:?} are kept for recurring sends",
                    quoted(tag)
                ),
            ));
        }
        if !is_tag(tag) {
            return Err(JobError::new(
                "tags",
                format!(
                    "{} is not a tag: 1 to {MAX_TAG_LEN} letters, digits, ':', '.', '_' or '-'",
                    quoted(tag)
                ),
            ));
        }
        if !tags.contains(tag) {
            tags.push(tag.clone());
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(JobError::new(
            "tags",
            format!("at most {MAX_TAGS} tags (got {})", tags.len()),
        ));
    }
    Ok(tags)
}

/// A `timezone` or `window` name: a string, or absent (null too).
fn optional_name(value: Option<&Value>, field: &str) -> Result<Option<String>, JobError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_NAME_LEN => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(JobError::new(
            field,
            format!("must be 1 to {MAX_NAME_LEN} bytes long"),
        )),
        Some(_) => Err(JobError::new(field, "must be a string")),
    }
}

fn validate_expiry(
    at: Option<&Value>,
    ttl: Option<&Value>,
    scheduled_at: Millis,
    default_ttl: Option<Duration>,
) -> Result<Option<Millis>, JobError> {
    let expires_at = match (at, ttl) {
        (Some(_), Some(_)) => {
            return Err(JobError::new("ttl", "give expires_at or ttl, not both"));
        }
        (Some(Value::String(s)), None) => {
            time::parse_rfc3339(s).map_err(|e| JobError::new("expires_at", e))?
        }
        (Some(_), None) => {
            return Err(JobError::new(
                "expires_at",
                "must be an RFC 3339 string such as 2026-01-31T18:00:00Z",
            ));
        }
        (None, Some(Value::String(s))) => humantime::parse_duration(s)
            .ok()
            .filter(|d| !d.is_zero())
            .map(|d| time::add(scheduled_at, d))
            .ok_or_else(|| {
                JobError::new(
                    "ttl",
                    format!("{} is not a positive duration such as \"6h\"", quoted(s)),
                )
            })?,
        (None, Some(_)) => {
            return Err(JobError::new(
                "ttl",
                "must be a duration string such as \"6h\"",
            ));
        }
        (None, None) => match default_ttl {
            Some(d) => time::add(scheduled_at, d),
            None => return Ok(None),
        },
    };
    let field = if ttl.is_some() { "ttl" } else { "expires_at" };
    check_instant(field, expires_at)?;
    if expires_at <= scheduled_at {
        return Err(JobError::new(
            "expires_at",
            format!(
                "{} is not after scheduled_at {}",
                time::format(expires_at),
                time::format(scheduled_at)
            ),
        ));
    }
    Ok(Some(expires_at))
}

fn validate_channel(value: Option<&Value>) -> Result<String, JobError> {
    match value {
        None => Err(JobError::new("channel", "is required")),
        Some(Value::String(s)) if is_channel(s) => Ok(s.clone()),
        Some(Value::String(s)) => Err(JobError::new(
            "channel",
            format!(
                "{} is not a channel: use 1 to {MAX_CHANNEL_LEN} letters, digits, '_' or '-'",
                quoted(s)
            ),
        )),
        Some(_) => Err(JobError::new("channel", "must be a string")),
    }
}

fn validate_enquiry_id(value: Option<&Value>) -> Result<Option<String>, JobError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(_) => return Err(JobError::new("enquiry_id", "must be a string of digits")),
    };
    if !is_enquiry_id(&text) {
        return Err(JobError::new(
            "enquiry_id",
            format!("{} is not an enquiry id: use digits only", quoted(&text)),
        ));
    }
    Ok(Some(text))
}

fn validate_when(
    at: Option<&Value>,
    delay: Option<&Value>,
    now: Millis,
    rule: &Rule,
) -> Result<Millis, JobError> {
    let field = if delay.is_some() {
        "delay"
    } else {
        "scheduled_at"
    };
    check_instant(field, when(at, delay, now, rule)?)
}

/// Refuses an instant outside the years 1970 to 9999, naming `field`:
/// later ones cannot be written as RFC 3339 and earlier ones are mistakes.
pub fn check_instant(field: &str, at: Millis) -> Result<Millis, JobError> {
    if (EARLIEST..=LATEST).contains(&at) {
        return Ok(at);
    }
    let side = if at < EARLIEST {
        "before 1970"
    } else {
        "after the year 9999"
    };
    Err(JobError::new(
        field,
        format!("lands {side}; give a time between 1970-01-01 and 9999-12-31 (UTC)"),
    ))
}

/// When a job is due: `scheduled_at` (an instant with an offset, or a
/// local date and time read in the job's zone), `now` plus `delay`, or now.
fn when(
    at: Option<&Value>,
    delay: Option<&Value>,
    now: Millis,
    rule: &Rule,
) -> Result<Millis, JobError> {
    match (at, delay) {
        (Some(_), Some(_)) => Err(JobError::new(
            "delay",
            "give scheduled_at or delay, not both",
        )),
        (Some(Value::String(s)), None) => match window::read_local(s, rule) {
            Ok(Some(at)) => Ok(at),
            Err(e) => Err(JobError::new("scheduled_at", e)),
            Ok(None) => time::parse_rfc3339(s).map_err(|e| {
                JobError::new(
                    "scheduled_at",
                    format!(
                        "{e}; or give a local time such as 2026-01-31T09:00, read in {}",
                        rule.zone_name()
                    ),
                )
            }),
        },
        (Some(_), None) => Err(JobError::new(
            "scheduled_at",
            "must be an RFC 3339 string such as 2026-01-31T09:00:00Z, \
             or a local time such as 2026-01-31T09:00",
        )),
        (None, Some(Value::String(s))) => humantime::parse_duration(s)
            .map(|d| time::add(now, d))
            .map_err(|e| {
                JobError::new(
                    "delay",
                    format!(
                        "{} is not a duration such as \"90s\" or \"2h\" ({e})",
                        quoted(s)
                    ),
                )
            }),
        (None, Some(_)) => Err(JobError::new(
            "delay",
            "must be a duration string such as \"2h\"",
        )),
        (None, None) => Ok(now),
    }
}

/// Keys and tags that start with this belong to recurring sends: an
/// occurrence's key and its schedule's tag. A client's job may not use
/// them, or it could take an occurrence's place.
pub const RESERVED_PREFIX: &str = "schedule:";

fn validate_key(value: Option<&Value>) -> Result<Option<String>, JobError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.starts_with(RESERVED_PREFIX) => Err(JobError::new(
            "key",
            format!("keys starting with {RESERVED_PREFIX:?} are kept for recurring sends"),
        )),
        // PostgreSQL text cannot hold NUL: refused on both stores alike.
        Some(Value::String(s)) if s.contains('\0') => {
            Err(JobError::new("key", "must not contain NUL (\\u0000)"))
        }
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_KEY_LEN => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(JobError::new(
            "key",
            format!("must be 1 to {MAX_KEY_LEN} bytes long"),
        )),
        Some(_) => Err(JobError::new("key", "must be a string")),
    }
}

#[cfg(test)]
mod tests;
