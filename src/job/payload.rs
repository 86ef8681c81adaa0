//! The payload rules: which body fields each Coax route takes (as Coax
//! documents them), what a payload must hold for its route, and how large
//! it may be. [`super::validate`] calls these; nothing else here knows
//! about the rest of a job.

use super::{JobError, Kind};
use serde_json::{Map, Value};

/// Body fields of route 2, which every other route's list includes.
const ENQUIRY_MESSAGE_FIELDS: &[&str] = &[
    "message",
    "type",
    "sub_type",
    "attachment_ids",
    "contact_id",
    "contact_ids",
    "team_user_id",
    "business_location_id",
    "location_id",
    "createActivity",
    "activity_type",
    "activity_description",
    "is_bot",
];

/// Fields that route 1 adds to route 2's: the customer to find or create.
const CUSTOMER_MESSAGE_EXTRA: &[&str] = &[
    "enquiry_id",
    "enquiry_status",
    "campaign_id",
    "name",
    "email",
    "phone",
    "avatar",
    "company_name",
    "address",
    "do_not_update",
    "suppress_socket_events",
];

const ENQUIRY_REVIEW_FIELDS: &[&str] = &[
    "channel",
    "message",
    "review_types",
    "business_location_id",
    "location_id",
    "createActivity",
    "activity_type",
    "activity_description",
];

const CUSTOMER_REVIEW_EXTRA: &[&str] = &[
    "enquiry_id",
    "email",
    "phone",
    "name",
    "company_name",
    "address",
    "avatar",
    "do_not_update",
    "customer_id",
];

/// At least one of these identifies the customer on a customer route.
const CUSTOMER_IDS: &[&str] = &["phone", "email", "customer_id", "contact_id", "contact_ids"];

/// Whether `field` may appear in the body of the route for `kind`.
pub fn payload_field_allowed(kind: Kind, on_enquiry: bool, field: &str) -> bool {
    let has = |list: &[&str]| list.contains(&field);
    match (kind, on_enquiry) {
        (Kind::Message, true) => has(ENQUIRY_MESSAGE_FIELDS),
        (Kind::Message, false) => has(ENQUIRY_MESSAGE_FIELDS) || has(CUSTOMER_MESSAGE_EXTRA),
        (Kind::CoaxSchedule, true) => has(ENQUIRY_MESSAGE_FIELDS) || field == "scheduled_at",
        (Kind::CoaxSchedule, false) => {
            has(ENQUIRY_MESSAGE_FIELDS)
                || has(CUSTOMER_MESSAGE_EXTRA)
                || field == "scheduled_at"
                || field == "customer_id"
        }
        (Kind::ReviewRequest, true) => has(ENQUIRY_REVIEW_FIELDS),
        (Kind::ReviewRequest, false) => has(ENQUIRY_REVIEW_FIELDS) || has(CUSTOMER_REVIEW_EXTRA),
    }
}

/// Refuses a payload longer than `max` bytes as compact JSON, the form
/// the store keeps and Coax receives.
pub(super) fn check_payload_size(payload: &Map<String, Value>, max: usize) -> Result<(), JobError> {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut size = Counter(0);
    serde_json::to_writer(&mut size, payload)
        .map_err(|e| JobError::new("payload", format!("cannot be serialised: {e}")))?;
    if size.0 > max {
        return Err(JobError::new(
            "payload",
            format!(
                "is {} bytes as JSON, over the cap of {max} bytes (socket.max_job_bytes)",
                size.0
            ),
        ));
    }
    Ok(())
}

pub(super) fn validate_payload(
    kind: Kind,
    channel: &str,
    on_enquiry: bool,
    mut payload: Map<String, Value>,
) -> Result<Map<String, Value>, JobError> {
    let route = route_name(kind, on_enquiry);
    if let Some(unknown) = payload
        .keys()
        .find(|k| !payload_field_allowed(kind, on_enquiry, k))
    {
        return Err(JobError::new(
            format!("payload.{unknown}"),
            format!("is not a body field of the {route} route"),
        ));
    }

    match payload.get("message") {
        Some(Value::String(m)) if !m.trim().is_empty() => {}
        Some(Value::String(_)) => {
            return Err(JobError::new("payload.message", "must not be empty"));
        }
        Some(_) => return Err(JobError::new("payload.message", "must be a string")),
        None if kind != Kind::ReviewRequest => {
            return Err(JobError::new("payload.message", "is required"));
        }
        None => {}
    }

    for field in ["phone", "email"] {
        match payload.get(field) {
            None | Some(Value::String(_)) => {}
            Some(_) => {
                return Err(JobError::new(
                    format!("payload.{field}"),
                    "must be a string",
                ));
            }
        }
    }

    if !on_enquiry && !CUSTOMER_IDS.iter().any(|f| is_given(payload.get(*f))) {
        let allowed: Vec<&str> = CUSTOMER_IDS
            .iter()
            .copied()
            .filter(|f| payload_field_allowed(kind, false, f))
            .collect();
        return Err(JobError::new(
            "payload",
            format!(
                "the {route} route needs a customer: give one of {}",
                allowed.join(", ")
            ),
        ));
    }

    if kind == Kind::CoaxSchedule && !is_given(payload.get("scheduled_at")) {
        return Err(JobError::new(
            "payload.scheduled_at",
            "is required: it is when Coax delivers the message",
        ));
    }

    if kind == Kind::ReviewRequest {
        // The review routes carry the channel in the body, not the path.
        match payload.get("channel") {
            None => {
                payload.insert("channel".into(), Value::String(channel.to_owned()));
            }
            Some(Value::String(c)) if c == channel => {}
            Some(_) => {
                return Err(JobError::new(
                    "payload.channel",
                    "differs from the job's channel; give it once, as the job's channel",
                ));
            }
        }
    }
    Ok(payload)
}

fn is_given(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

fn route_name(kind: Kind, on_enquiry: bool) -> String {
    let target = if on_enquiry { "enquiry" } else { "customer" };
    format!("{kind} ({target})")
}
