//! The wire types of the control socket, shared by the daemon and the CLI.
//!
//! One request is one JSON object on one line; it gets exactly one response
//! line, in order. This module owns parsing a request line into a
//! [`Request`] (with the error code a bad line earns) and the shapes of the
//! answers. It does not validate jobs (see [`crate::job`]) or touch storage.
//!
//! ```text
//! client                                   daemon
//!   │ {"op":"enqueue","job":{…}}\n           │
//!   │ ─────────────────────────────────────► │ validate, commit
//!   │ {"ok":true,"id":7,…,"duplicate":false}\n
//!   │ ◄───────────────────────────────────── │
//!   │ {"op":"bogus"}\n                       │
//!   │ ─────────────────────────────────────► │
//!   │ {"ok":false,"error":{"code":"unknown_op",…}}\n
//!   │ ◄───────────────────────────────────── │
//! ```

use crate::job::State;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The longest request line the daemon reads, newline included.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// The most children a job's view lists.
pub const MAX_CHILDREN_SHOWN: usize = 1_000;
/// How many jobs `list` returns when no limit is given.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// The most jobs one `list` returns.
pub const MAX_LIST_LIMIT: u32 = 10_000;
/// The longest answer line the daemon writes, newline included: `list`
/// stops early to stay within it, and a job whose view alone would not fit
/// is shown without its payload.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// The order of `list`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListOrder {
    /// Oldest `scheduled_at` first (`"order":"due"`, the default).
    #[default]
    Due,
    /// Most recently updated first (`"order":"recent"`): the latest
    /// failures, say, however many older ones there are.
    Recent,
}

/// Where a `list` answer stopped: its order and the last job it holds.
/// Clients see it only as an opaque string (`"next"`, given back as
/// `"after"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub order: ListOrder,
    /// The last job's `scheduled_at` (order `due`) or `updated_at` (`recent`).
    pub at: i64,
    pub id: i64,
}

impl ListCursor {
    /// The cursor as clients see it, e.g. `d1767225600000.42`.
    pub fn encode(&self) -> String {
        let order = match self.order {
            ListOrder::Due => 'd',
            ListOrder::Recent => 'r',
        };
        format!("{order}{}.{}", self.at, self.id)
    }

    pub fn parse(text: &str) -> Option<ListCursor> {
        let order = match text.get(..1)? {
            "d" => ListOrder::Due,
            "r" => ListOrder::Recent,
            _ => return None,
        };
        let (at, id) = text.get(1..)?.split_once('.')?;
        Some(ListCursor {
            order,
            at: at.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `job` or `jobs`, still to be validated one by one.
    Enqueue(Enqueue),
    Get(Lookup),
    List {
        state: Option<State>,
        limit: u32,
        order: ListOrder,
        /// Continue after this job (the `next` of the answer before).
        after: Option<ListCursor>,
        /// Only scheduled jobs whose `due_at` is before this instant.
        due_before: Option<Millis>,
        /// Only jobs with this tag.
        tag: Option<String>,
    },
    Cancel {
        id: i64,
    },
    /// Cancels every scheduled or held job with the tag.
    CancelTag {
        tag: String,
    },
    Reschedule {
        id: i64,
        scheduled_at: String,
    },
    /// Moves every scheduled job with the tag by a signed duration.
    RescheduleTag {
        tag: String,
        by_ms: i64,
    },
    Requeue {
        id: i64,
    },
    Stats,
    Ping,
    /// End a 429 pause, an auth pause or an open breaker at once.
    Resume,
    /// Delete finished jobs older than `older_than` (default `store.retention`).
    Prune {
        older_than: Option<String>,
        dry_run: bool,
    },
    /// `schedule_put`, `schedule_get`, `schedule_list`, `schedule_delete`.
    Schedule(crate::schedule::wire::ScheduleOp),
}

/// Every op of the protocol, as requests name them.
pub const OPS: [&str; 14] = [
    "enqueue",
    "get",
    "list",
    "cancel",
    "reschedule",
    "requeue",
    "stats",
    "ping",
    "resume",
    "prune",
    "schedule_put",
    "schedule_get",
    "schedule_list",
    "schedule_delete",
];

impl Request {
    /// The op's name, one of [`OPS`].
    pub fn op(&self) -> &'static str {
        match self {
            Request::Enqueue(_) => "enqueue",
            Request::Get(_) => "get",
            Request::List { .. } => "list",
            Request::Cancel { .. } | Request::CancelTag { .. } => "cancel",
            Request::Reschedule { .. } | Request::RescheduleTag { .. } => "reschedule",
            Request::Requeue { .. } => "requeue",
            Request::Stats => "stats",
            Request::Ping => "ping",
            Request::Resume => "resume",
            Request::Prune { .. } => "prune",
            Request::Schedule(op) => op.op(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Enqueue {
    One(Value),
    Batch(Vec<Value>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Id(i64),
    Key(String),
}

/// The error codes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownOp,
    InvalidJob,
    NotFound,
    Conflict,
    Internal,
    /// The peer is not in `socket.allowed_uids` or `socket.allowed_gids`.
    Forbidden,
}

impl ErrorCode {
    /// The code as answers write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidJob => "invalid_job",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// A failure answer: `{"ok":false,"error":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub index: Option<usize>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
            field: None,
            index: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ErrorBody {
        ErrorBody::new(ErrorCode::BadRequest, message)
    }

    /// The response line for this error, without the newline.
    pub fn to_line(&self) -> String {
        // Echoed input is cut where it is written (see [`shown`]); this is
        // the backstop for any message that still came out long.
        if self.message.len() > MAX_MESSAGE_BYTES {
            let mut short = self.clone();
            short.message = shown(&self.message, MAX_MESSAGE_BYTES / 4).into_owned();
            return json!({"ok": false, "error": short}).to_string();
        }
        json!({"ok": false, "error": self}).to_string()
    }
}

/// The most of a client's input an error message echoes, in characters.
pub const MAX_ECHO_CHARS: usize = 200;

/// The longest error message sent as it is; a longer one is cut.
const MAX_MESSAGE_BYTES: usize = 4096;

/// `text` cut to `max` characters, with "…" when cut: an error names the
/// offending input without sending back a megabyte of it.
pub fn shown(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((end, _)) => format!("{}…", &text[..end]).into(),
    }
}

/// A client's string for an error message: quoted and escaped like `{:?}`,
/// cut to [`MAX_ECHO_CHARS`] with "…" after the closing quote when cut.
pub fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}…", &text[..end]),
    }
}

/// One job as `get` and `list` show it.
///
/// The payload and result are kept as the JSON text stored, not parsed into
/// a tree (which costs many times the text's size). A row that cannot be
/// read still shows: `kind` as the text stored, `payload` null when it is
/// not JSON text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    pub id: i64,
    pub key: Option<String>,
    pub kind: String,
    pub channel: String,
    pub enquiry_id: Option<String>,
    pub scheduled_at: String,
    /// When the daemon will next try the job: `scheduled_at`, or its
    /// window's next opening after that. Only a `scheduled` job has one.
    #[serde(default)]
    pub due_at: Option<String>,
    /// The zone its window and local times are read in.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Its send window's name, or `none` for any hour.
    #[serde(default)]
    pub window: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The job it follows (`after`), by id.
    #[serde(default)]
    pub after: Option<i64>,
    /// The jobs that follow it, by id, at most
    /// [`MAX_CHILDREN_SHOWN`] of them.
    #[serde(default)]
    pub children: Vec<i64>,
    /// After this the job is `expired` instead of sent.
    pub expires_at: Option<String>,
    pub state: State,
    /// Tries counted against `retry.max_attempts`.
    pub attempts: i64,
    pub created_at: String,
    pub updated_at: String,
    pub last_error: Option<String>,
    /// The final answer: `{"status":…,"message":…,"body":…}`.
    pub result: Option<Box<RawValue>>,
    pub payload: Box<RawValue>,
    /// Set, to the payload's size in bytes, when the payload is left out
    /// (`payload` is then null) because the view would not fit in one
    /// answer line of [`MAX_ANSWER_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_omitted: Option<u64>,
    pub history: Vec<AttemptView>,
}

/// One try at delivering a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    /// 1-based sequence number of the try, counting every try.
    pub attempt: u32,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: Option<u16>,
    /// What went wrong in transport, or the reason for the decision.
    pub error: Option<String>,
    pub decision: Option<String>,
    /// The request may have reached Coax without its answer being recorded.
    pub ambiguous: bool,
    pub latency_ms: Option<u64>,
    /// The `node.name` of the daemon that made it; `null` for attempts
    /// made before schema version 10 recorded it.
    #[serde(default)]
    pub node: Option<String>,
}

/// The answer to `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub counts: BTreeMap<String, u64>,
    pub next_due: Option<String>,
}

/// The answer to one enqueued job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enqueued {
    pub id: i64,
    pub state: State,
    pub scheduled_at: String,
    /// When it will be tried, if it is `scheduled` (see [`JobView::due_at`]).
    pub due_at: Option<String>,
    pub duplicate: bool,
}

/// A success line: `{"ok":true}` merged with `fields`.
pub fn ok_line(fields: Value) -> String {
    let mut out = Map::new();
    out.insert("ok".into(), Value::Bool(true));
    if let Value::Object(map) = fields {
        out.extend(map);
    }
    Value::Object(out).to_string()
}

/// The answer line to a `get` or a change: `{"ok":true,"job":VIEW}`.
pub fn job_line(job: &JobView) -> String {
    format!(r#"{{"ok":true,"job":{}}}"#, view_text(job))
}

/// The answer line to a `cancel`: `{"ok":true,"job":VIEW,
/// "cancelled_children":N}`, N counting every follower cancelled with it.
pub fn cancel_line(job: &JobView, cancelled_children: u64) -> String {
    format!(
        r#"{{"ok":true,"job":{},"cancelled_children":{cancelled_children}}}"#,
        view_text(job)
    )
}

/// The answer line to a `list`: `{"ok":true,"jobs":[...],"next":CURSOR|null}`.
/// The views are written as they are, without building a tree of them.
pub fn list_line(jobs: &[JobView], next: Option<ListCursor>) -> String {
    let mut line = String::from(r#"{"ok":true,"jobs":["#);
    for (i, job) in jobs.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&view_text(job));
    }
    line.push_str(r#"],"next":"#);
    match next {
        Some(cursor) => line.push_str(&json!(cursor.encode()).to_string()),
        None => line.push_str("null"),
    }
    line.push('}');
    line
}

fn view_text(job: &JobView) -> String {
    // Serialising a struct of strings, numbers and raw JSON cannot fail.
    serde_json::to_string(job).unwrap_or_else(|_| "null".into())
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, ErrorBody> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| ErrorBody::bad_request(format!("the line is not JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(ErrorBody::bad_request(
            "a request must be a JSON object such as {\"op\":\"ping\"}",
        ));
    };
    let op = match fields.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => return Err(ErrorBody::bad_request("\"op\" must be a string")),
        None => return Err(ErrorBody::bad_request("the request has no \"op\"")),
    };
    let mut args = Args { op: &op, fields };
    let request = match op.as_str() {
        "enqueue" => Request::Enqueue(args.enqueue()?),
        "get" => Request::Get(args.lookup()?),
        "list" => {
            let (state, limit, order) = (args.state()?, args.limit()?, args.order()?);
            Request::List {
                state,
                limit,
                order,
                after: args.after(order)?,
                due_before: args.due_before(order)?,
                tag: args.tag()?,
            }
        }
        "cancel" => match args.tag_instead_of_id()? {
            Some(tag) => Request::CancelTag { tag },
            None => Request::Cancel { id: args.id()? },
        },
        "reschedule" => match args.tag_instead_of_id()? {
            Some(tag) => Request::RescheduleTag {
                tag,
                by_ms: args.signed_duration("by")?,
            },
            None => Request::Reschedule {
                id: args.id()?,
                scheduled_at: args.string("scheduled_at")?,
            },
        },
        "requeue" => Request::Requeue { id: args.id()? },
        "stats" => Request::Stats,
        "ping" => Request::Ping,
        "resume" => Request::Resume,
        "prune" => Request::Prune {
            older_than: args.optional_string("older_than")?,
            dry_run: args.flag("dry_run")?,
        },
        op if crate::schedule::wire::OPS.contains(&op) => {
            Request::Schedule(crate::schedule::wire::parse(op, &mut args.fields)?)
        }
        _ => {
            return Err(ErrorBody::new(
                ErrorCode::UnknownOp,
                format!("unknown op {}; known ops: {}", quoted(&op), OPS.join(", ")),
            ));
        }
    };
    args.finish()?;
    Ok(request)
}

/// The arguments of one request, taken out field by field so that any
/// left over can be reported as unknown.
struct Args<'a> {
    op: &'a str,
    fields: Map<String, Value>,
}

impl Args<'_> {
    fn finish(self) -> Result<(), ErrorBody> {
        match self.fields.keys().next() {
            None => Ok(()),
            Some(extra) => Err(ErrorBody::bad_request(format!(
                "op {:?} takes no field {}",
                self.op,
                quoted(extra)
            ))),
        }
    }

    fn id(&mut self) -> Result<i64, ErrorBody> {
        match self.fields.remove("id") {
            Some(Value::Number(n)) => n.as_i64().filter(|id| *id > 0).ok_or_else(|| {
                ErrorBody::bad_request(format!(
                    "\"id\" must be a positive integer, not {}",
                    shown(&n.to_string(), MAX_ECHO_CHARS)
                ))
            }),
            Some(_) => Err(ErrorBody::bad_request("\"id\" must be a positive integer")),
            None => Err(ErrorBody::bad_request(format!(
                "op {:?} needs an \"id\"",
                self.op
            ))),
        }
    }

    fn string(&mut self, name: &str) -> Result<String, ErrorBody> {
        match self.fields.remove(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(ErrorBody::bad_request(format!(
                "\"{name}\" must be a string"
            ))),
            None => Err(ErrorBody::bad_request(format!(
                "op {:?} needs \"{name}\"",
                self.op
            ))),
        }
    }

    fn optional_string(&mut self, name: &str) -> Result<Option<String>, ErrorBody> {
        match self.fields.get(name) {
            None => Ok(None),
            Some(Value::Null) => {
                // Null means absent, so it must not be left over as unknown.
                self.fields.remove(name);
                Ok(None)
            }
            Some(_) => self.string(name).map(Some),
        }
    }

    /// Drops `name` if it is null: for every optional field, null means absent.
    fn drop_null(&mut self, name: &str) {
        if self.fields.get(name) == Some(&Value::Null) {
            self.fields.remove(name);
        }
    }

    fn flag(&mut self, name: &str) -> Result<bool, ErrorBody> {
        match self.fields.remove(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(_) => Err(ErrorBody::bad_request(format!(
                "\"{name}\" must be true or false"
            ))),
        }
    }

    fn lookup(&mut self) -> Result<Lookup, ErrorBody> {
        self.drop_null("key");
        self.drop_null("id");
        if self.fields.contains_key("key") {
            if self.fields.contains_key("id") {
                return Err(ErrorBody::bad_request("give \"id\" or \"key\", not both"));
            }
            return self.string("key").map(Lookup::Key);
        }
        self.id().map(Lookup::Id)
    }

    fn state(&mut self) -> Result<Option<State>, ErrorBody> {
        match self.fields.remove("state") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => State::parse(&s).map(Some).ok_or_else(|| {
                let known: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
                ErrorBody::bad_request(format!(
                    "unknown state {}; states are {}",
                    quoted(&s),
                    known.join(", ")
                ))
            }),
            Some(_) => Err(ErrorBody::bad_request("\"state\" must be a string")),
        }
    }

    fn order(&mut self) -> Result<ListOrder, ErrorBody> {
        match self.fields.remove("order") {
            None | Some(Value::Null) => Ok(ListOrder::Due),
            Some(Value::String(s)) if s == "due" => Ok(ListOrder::Due),
            Some(Value::String(s)) if s == "recent" => Ok(ListOrder::Recent),
            Some(other) => Err(ErrorBody::bad_request(format!(
                "\"order\" must be \"due\" or \"recent\", not {}",
                shown(&other.to_string(), MAX_ECHO_CHARS)
            ))),
        }
    }

    fn after(&mut self, order: ListOrder) -> Result<Option<ListCursor>, ErrorBody> {
        let bad = |message: &str| {
            let mut e = ErrorBody::bad_request(message);
            e.field = Some("after".into());
            e
        };
        match self.fields.remove("after") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => match ListCursor::parse(&s) {
                Some(cursor) if cursor.order == order => Ok(Some(cursor)),
                Some(_) => Err(bad(
                    "\"after\" comes from a list in another order; give the same \"order\"",
                )),
                None => Err(bad(
                    "\"after\" is not a cursor; give the \"next\" of a list answer",
                )),
            },
            Some(_) => Err(bad(
                "\"after\" must be a string, the \"next\" of a list answer",
            )),
        }
    }

    /// An optional `tag`, which must be a tag.
    fn tag(&mut self) -> Result<Option<String>, ErrorBody> {
        let Some(tag) = self.optional_string("tag")? else {
            return Ok(None);
        };
        if !crate::job::is_tag(&tag) {
            let mut e = ErrorBody::bad_request(format!(
                "{} is not a tag: 1 to 64 letters, digits, ':', '.', '_' or '-'",
                quoted(&tag)
            ));
            e.field = Some("tag".into());
            return Err(e);
        }
        Ok(Some(tag))
    }

    /// For an op that takes an `id` or a `tag`: the tag, if one is given.
    fn tag_instead_of_id(&mut self) -> Result<Option<String>, ErrorBody> {
        self.drop_null("id");
        let tag = self.tag()?;
        if tag.is_some() && self.fields.contains_key("id") {
            return Err(ErrorBody::bad_request("give \"id\" or \"tag\", not both"));
        }
        Ok(tag)
    }

    /// A signed duration such as `"2h"` or `"-30m"`, in milliseconds.
    fn signed_duration(&mut self, name: &str) -> Result<i64, ErrorBody> {
        let text = self.string(name)?;
        let (sign, magnitude) = match text.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, text.strip_prefix('+').unwrap_or(&text)),
        };
        let bad = |detail: String| {
            let mut e = ErrorBody::bad_request(format!(
                "\"{name}\" must be a duration such as \"2h\" or \"-30m\": {detail}"
            ));
            e.field = Some(name.to_owned());
            e
        };
        let d = humantime::parse_duration(magnitude.trim()).map_err(|e| bad(e.to_string()))?;
        i64::try_from(d.as_millis())
            .map(|ms| sign * ms)
            .map_err(|_| bad("too long".into()))
    }

    /// `due_before`: an RFC 3339 instant. It walks the due-time index, so
    /// it lists in order `due` only.
    fn due_before(&mut self, order: ListOrder) -> Result<Option<Millis>, ErrorBody> {
        let bad = |message: String| {
            let mut e = ErrorBody::bad_request(message);
            e.field = Some("due_before".into());
            e
        };
        let Some(text) = self.optional_string("due_before")? else {
            return Ok(None);
        };
        if order != ListOrder::Due {
            return Err(bad(
                "\"due_before\" lists in order \"due\"; leave out \"order\" or give \"due\"".into(),
            ));
        }
        crate::time::parse_rfc3339(&text)
            .map(Some)
            .map_err(|e| bad(format!("\"due_before\": {e}")))
    }

    fn limit(&mut self) -> Result<u32, ErrorBody> {
        match self.fields.remove("limit") {
            None | Some(Value::Null) => Ok(DEFAULT_LIST_LIMIT),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|l| (1..=u64::from(MAX_LIST_LIMIT)).contains(l))
                .and_then(|l| u32::try_from(l).ok())
                .ok_or_else(|| {
                    ErrorBody::bad_request(format!(
                        "\"limit\" must be between 1 and {MAX_LIST_LIMIT}"
                    ))
                }),
            Some(_) => Err(ErrorBody::bad_request("\"limit\" must be a number")),
        }
    }

    fn enqueue(&mut self) -> Result<Enqueue, ErrorBody> {
        self.drop_null("job");
        self.drop_null("jobs");
        match (self.fields.remove("job"), self.fields.remove("jobs")) {
            (Some(job), None) => Ok(Enqueue::One(job)),
            (None, Some(Value::Array(jobs))) if !jobs.is_empty() => Ok(Enqueue::Batch(jobs)),
            (None, Some(Value::Array(_))) => {
                Err(ErrorBody::bad_request("\"jobs\" must not be empty"))
            }
            (None, Some(_)) => Err(ErrorBody::bad_request("\"jobs\" must be an array")),
            (Some(_), Some(_)) => Err(ErrorBody::bad_request("give \"job\" or \"jobs\", not both")),
            (None, None) => Err(ErrorBody::bad_request(
                "op \"enqueue\" needs \"job\" or \"jobs\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_names_a_known_op_and_every_code_its_wire_name() {
        let requests = [
            Request::Enqueue(Enqueue::Batch(Vec::new())),
            Request::Get(Lookup::Id(1)),
            Request::Cancel { id: 1 },
            Request::Requeue { id: 1 },
            Request::Stats,
            Request::Ping,
            Request::Resume,
        ];
        for request in &requests {
            assert!(OPS.contains(&request.op()), "{request:?}");
        }
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::UnknownOp,
            ErrorCode::InvalidJob,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::Internal,
            ErrorCode::Forbidden,
        ] {
            assert_eq!(serde_json::to_value(code).ok(), Some(json!(code.as_str())));
        }
    }

    fn code(line: &str) -> ErrorCode {
        parse_request(line.as_bytes()).unwrap_err().code
    }

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request(br#"{"op":"ping"}"#), Ok(Request::Ping));
        assert_eq!(parse_request(br#"{"op":"resume"}"#), Ok(Request::Resume));
        assert_eq!(
            parse_request(br#"{"op":"get","key":"k1"}"#),
            Ok(Request::Get(Lookup::Key("k1".into())))
        );
        assert_eq!(
            parse_request(br#"{"op":"list","state":"failed"}"#),
            Ok(Request::List {
                state: Some(State::Failed),
                limit: DEFAULT_LIST_LIMIT,
                order: ListOrder::Due,
                after: None,
                due_before: None,
                tag: None
            })
        );
        assert_eq!(
            parse_request(br#"{"op":"list","order":"recent","limit":5}"#),
            Ok(Request::List {
                state: None,
                limit: 5,
                order: ListOrder::Recent,
                after: None,
                due_before: None,
                tag: None
            })
        );
        assert_eq!(
            parse_request(br#"{"op":"reschedule","id":3,"scheduled_at":"x"}"#),
            Ok(Request::Reschedule {
                id: 3,
                scheduled_at: "x".into()
            })
        );
    }

    #[test]
    fn bad_lines_are_bad_requests() {
        assert_eq!(code("not json"), ErrorCode::BadRequest);
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"id":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":7}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"get","id":"1"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"get","id":-1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"list","limit":0}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"op":"list","state":"lost"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"op":"enqueue","jobs":[]}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"ping","extra":1}"#), ErrorCode::BadRequest);
        assert_eq!(code("\u{0}\u{1}"), ErrorCode::BadRequest);
    }

    #[test]
    fn prune_takes_optional_arguments() {
        assert_eq!(
            parse_request(br#"{"op":"prune"}"#),
            Ok(Request::Prune {
                older_than: None,
                dry_run: false
            })
        );
        assert_eq!(
            parse_request(br#"{"op":"prune","older_than":"7d","dry_run":true}"#),
            Ok(Request::Prune {
                older_than: Some("7d".into()),
                dry_run: true
            })
        );
        assert_eq!(
            code(r#"{"op":"prune","dry_run":"yes"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"prune","older_than":7}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn list_after_takes_a_cursor_of_the_same_order() {
        let cursor = ListCursor {
            order: ListOrder::Recent,
            at: -5,
            id: 42,
        };
        assert_eq!(ListCursor::parse(&cursor.encode()), Some(cursor));
        let line = format!(
            r#"{{"op":"list","order":"recent","after":"{}"}}"#,
            cursor.encode()
        );
        assert!(matches!(
            parse_request(line.as_bytes()),
            Ok(Request::List { after: Some(c), .. }) if c == cursor
        ));
        for bad in [
            r#"{"op":"list","after":"nonsense"}"#,
            r#"{"op":"list","after":"d12"}"#,
            r#"{"op":"list","after":7}"#,
            r#"{"op":"list","after":"r5.3"}"#,
        ] {
            let e = parse_request(bad.as_bytes()).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
            assert_eq!(e.field.as_deref(), Some("after"), "{bad}");
        }
    }

    #[test]
    fn unknown_op_is_its_own_code() {
        assert_eq!(code(r#"{"op":"explode"}"#), ErrorCode::UnknownOp);
    }

    #[test]
    fn error_lines_carry_field_and_index_only_when_set() {
        let line = ErrorBody::new(ErrorCode::NotFound, "no job 9").to_line();
        assert_eq!(
            line,
            r#"{"ok":false,"error":{"code":"not_found","message":"no job 9"}}"#
        );
        let mut e = ErrorBody::new(ErrorCode::InvalidJob, "bad");
        e.field = Some("channel".into());
        e.index = Some(2);
        let v: Value = serde_json::from_str(&e.to_line()).unwrap();
        assert_eq!(v["error"]["field"], "channel");
        assert_eq!(v["error"]["index"], 2);
    }
}
