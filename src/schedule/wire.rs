//! The `schedule_*` requests: their fields, taken out of the request
//! object (what is left over is reported as unknown by the protocol), and
//! the shape of a schedule in answers.
//!
//! ```text
//! {"op":"schedule_put","name":N,"cron":C,"timezone":Z,"job":JOB,"catch_up":P}
//! {"op":"schedule_get","name":N}   {"op":"schedule_list"}   {"op":"schedule_delete","name":N}
//! ```

use super::{Put, Row};
use crate::protocol::{ErrorBody, ErrorCode, quoted};
use crate::time::{self, Millis};
use serde_json::{Map, Value, json};

/// The schedule ops, as requests name them.
pub const OPS: [&str; 4] = [
    "schedule_put",
    "schedule_get",
    "schedule_list",
    "schedule_delete",
];

/// A parsed `schedule_*` request.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleOp {
    Put(Put),
    Get {
        name: String,
    },
    /// The schedules named after `after`, in name order (a page).
    List {
        after: Option<String>,
    },
    Delete {
        name: String,
    },
}

impl ScheduleOp {
    /// The op's name, one of [`OPS`].
    pub fn op(&self) -> &'static str {
        match self {
            ScheduleOp::Put(_) => "schedule_put",
            ScheduleOp::Get { .. } => "schedule_get",
            ScheduleOp::List { .. } => "schedule_list",
            ScheduleOp::Delete { .. } => "schedule_delete",
        }
    }
}

fn bad(field: &str, message: String) -> ErrorBody {
    let mut e = ErrorBody::new(ErrorCode::BadRequest, message);
    e.field = Some(field.to_owned());
    e
}

fn string(op: &str, fields: &mut Map<String, Value>, name: &str) -> Result<String, ErrorBody> {
    match fields.remove(name) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(bad(name, format!("op {op:?} needs \"{name}\""))),
        Some(_) => Err(bad(name, format!("\"{name}\" must be a string"))),
    }
}

fn optional(fields: &mut Map<String, Value>, name: &str) -> Result<Option<String>, ErrorBody> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(name, format!("\"{name}\" must be a string"))),
    }
}

/// A schedule name, checked here so that get and delete refuse it too.
fn name(op: &str, fields: &mut Map<String, Value>) -> Result<String, ErrorBody> {
    let name = string(op, fields, "name")?;
    if !super::is_name(&name) {
        return Err(bad(
            "name",
            format!(
                "{} is not a schedule name: 1 to {} letters, digits, ':', '.', '_' or '-'",
                quoted(&name),
                super::MAX_NAME_LEN
            ),
        ));
    }
    Ok(name)
}

/// Takes the fields of `op` (one of [`OPS`]) out of `fields`.
pub fn parse(op: &str, fields: &mut Map<String, Value>) -> Result<ScheduleOp, ErrorBody> {
    Ok(match op {
        "schedule_put" => {
            let name = name(op, fields)?;
            let cron = string(op, fields, "cron")?;
            let timezone = optional(fields, "timezone")?;
            let catch_up = optional(fields, "catch_up")?;
            let job = match fields.remove("job") {
                None | Some(Value::Null) => {
                    return Err(bad("job", format!("op {op:?} needs \"job\"")));
                }
                Some(job) => job,
            };
            ScheduleOp::Put(Put {
                name,
                cron,
                timezone,
                catch_up,
                job,
            })
        }
        "schedule_get" => ScheduleOp::Get {
            name: name(op, fields)?,
        },
        "schedule_delete" => ScheduleOp::Delete {
            name: name(op, fields)?,
        },
        _ => ScheduleOp::List {
            after: match fields.remove("after") {
                None | Some(Value::Null) => None,
                Some(Value::String(after)) => Some(after),
                Some(_) => {
                    return Err(bad(
                        "after",
                        "must be a string, the \"next\" of a schedule_list answer".into(),
                    ));
                }
            },
        },
    })
}

/// One recent occurrence: its job's id, state and scheduled time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub id: i64,
    pub state: String,
    pub at: Millis,
}

/// A schedule as `schedule_get` and `schedule_list` show it; a row that
/// cannot be read shows what it can, `next_at` null, and `unreadable`
/// saying why.
pub fn view(row: &Row, recent: &[Occurrence]) -> Value {
    let recent: Vec<Value> = recent
        .iter()
        .map(|o| json!({"id": o.id, "state": o.state, "at": time::format(o.at)}))
        .collect();
    match row {
        Row::Readable(stored) => {
            let s = &stored.schedule;
            json!({
                "name": s.name,
                "cron": s.cron,
                "timezone": s.timezone,
                "catch_up": s.catch_up.as_str(),
                "job": Value::Object(s.job.clone()),
                "next_at": stored.next_at.map(time::format),
                "recent": recent,
            })
        }
        Row::Unreadable(u) => json!({
            "name": u.name,
            "cron": u.cron,
            "timezone": u.timezone,
            "catch_up": u.catch_up,
            "job": u.job,
            "next_at": null,
            "recent": recent,
            "unreadable": u.why,
        }),
    }
}
