//! What the simulator answers: the Coax envelope for each request, decided
//! from the route, the method, the token and the body.
//!
//! This module owns the order of the checks and the texts of the answers.
//! It does no I/O: the HTTP layer in the parent module reads the request,
//! asks [`Behaviour`] for an [`Answer`], waits out the injected latency and
//! writes it. For a PUT to one of the six routes the checks run in this
//! order, the first that fails giving the answer:
//!
//! ```text
//! fail_rate draw ─► Bearer token ─► body size ─► JSON object ─► channel,
//!   503               401             413          422          enquiry id
//!                                                                 422
//! ─► body fields ─► paused campaign ─► fail_first_for ─► sent
//!      422            200, no body       503 once         200 + enquiry
//! ```
//!
//! A random fault comes first because a real outage answers before anything
//! is checked; a `fail_first_for` fault comes last because it is keyed on
//! the customer or enquiry the body names.

use super::routes::{Captures, Route, Table};
use super::stats::Reply;
use super::{Arrival, ArrivalHook, SimError, SimOptions};
use crate::job::{is_path_safe, payload_field_allowed};
use hyper::Method;
use serde_json::{Map, Value, json};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The message Coax gives for a sent message (routes 1 to 4).
pub const SENT_MESSAGE: &str = "Message sent successfully";
/// The message Coax gives for a sent review request (routes 5 and 6).
pub const REVIEW_MESSAGE: &str = "Sent review request!";
/// The message Coax gives when the campaign is paused and nothing was sent.
pub const PAUSED_MESSAGE: &str = "Campaign is paused, message not sent.";

const MAX_CHANNEL_LEN: usize = 64;
/// Customer-created enquiries are numbered from here, far from the small
/// ids people type, so a made-up id and a created one are told apart.
const FIRST_NEW_ENQUIRY: u64 = 100_001;

/// One answer: its kind (which sets the status) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub reply: Reply,
    pub body: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Answer {
    fn new(reply: Reply, body: String) -> Answer {
        Answer {
            reply,
            body,
            allow: None,
        }
    }

    fn failure(reply: Reply, message: &str) -> Answer {
        Answer::new(
            reply,
            json!({"success": false, "message": message}).to_string(),
        )
    }
}

/// How the `Authorization` header is checked.
#[derive(Debug)]
enum Auth {
    /// Exactly `Bearer KEY`.
    Key(String),
    /// Any non-empty Bearer token.
    AnyBearer,
}

/// The request-independent part of the simulator: options compiled for the
/// hot path, and the little state that answers share.
pub struct Behaviour {
    table: Table,
    auth: Auth,
    pub(super) latency: Duration,
    pub(super) jitter: Duration,
    fail_rate: f64,
    paused_campaign: Option<String>,
    /// Each customer or enquiry and whether its one 503 was given. A short
    /// list scanned without a lock; the flag flips once.
    fail_first: Vec<(String, AtomicBool)>,
    next_enquiry: AtomicU64,
    on_arrival: Option<ArrivalHook>,
}

impl Behaviour {
    pub fn new(options: SimOptions) -> Result<Behaviour, SimError> {
        options.check()?;
        Ok(Behaviour {
            table: Table::new(&options.routes),
            auth: match options.api_key {
                Some(key) => Auth::Key(key),
                None => Auth::AnyBearer,
            },
            latency: options.latency,
            jitter: options.jitter,
            fail_rate: options.fail_rate,
            paused_campaign: options.paused_campaign,
            fail_first: options
                .fail_first_for
                .into_iter()
                .map(|id| (id, AtomicBool::new(false)))
                .collect(),
            next_enquiry: AtomicU64::new(FIRST_NEW_ENQUIRY),
            on_arrival: options.on_arrival,
        })
    }

    pub fn find<'p>(&self, path: &'p str) -> (Route, Captures<'p>) {
        self.table.find(path)
    }

    /// The answer decided before the body is read: 404, 405, `/health`, or
    /// `None` for a PUT to one of the six routes.
    pub fn before_body(&self, route: Route, method: &Method) -> Option<Answer> {
        match route {
            Route::Unknown => Some(Answer::failure(Reply::NotFound, "Not found: no such route")),
            Route::Health if method == Method::GET => Some(Answer::new(
                Reply::Healthy,
                r#"{"success":true,"message":"ok"}"#.to_owned(),
            )),
            Route::Health => Some(wrong_method("GET")),
            _ if method != Method::PUT => Some(wrong_method("PUT")),
            _ => None,
        }
    }

    /// The answer to a PUT on one of the six routes. `body` is `None` when
    /// it was larger than the simulator reads.
    pub fn answer_put(
        &self,
        route: Route,
        captures: Captures<'_>,
        authorization: Option<&[u8]>,
        body: Option<&[u8]>,
        received_at: SystemTime,
    ) -> Answer {
        if self.fail_rate > 0.0 && fastrand::f64() < self.fail_rate {
            return unavailable();
        }
        if !self.authorized(authorization) {
            return Answer::failure(Reply::Unauthorized, "Unauthenticated.");
        }
        let Some(body) = body else {
            return Answer::failure(Reply::TooLarge, "The request body is too large.");
        };
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
            return Answer::failure(Reply::Invalid, "The request body must be a JSON object.");
        };
        let answer = self.judge(route, captures, &fields);
        if let Some(hook) = &self.on_arrival {
            (hook.0)(&Arrival {
                received_at,
                route,
                channel: captures.channel,
                enquiry_id: captures.enquiry_id,
                body: &fields,
                reply: answer.reply,
            });
        }
        answer
    }

    /// How long to wait before answering: latency plus uniform jitter.
    pub fn delay(&self) -> Duration {
        if self.jitter.is_zero() {
            self.latency
        } else {
            self.latency + self.jitter.mul_f64(fastrand::f64())
        }
    }

    fn authorized(&self, header: Option<&[u8]>) -> bool {
        let Some(header) = header else {
            return false;
        };
        // The scheme is case-insensitive (RFC 9110); the token is not.
        let token = match header.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token,
            _ => return false,
        };
        match &self.auth {
            Auth::Key(key) => token == key.as_bytes(),
            Auth::AnyBearer => !token.iter().all(u8::is_ascii_whitespace),
        }
    }

    fn judge(&self, route: Route, captures: Captures<'_>, fields: &Map<String, Value>) -> Answer {
        let Some((kind, on_enquiry)) = route.api() else {
            return Answer::failure(Reply::NotFound, "Not found: no such route");
        };
        if let Some(channel) = captures.channel
            && (channel.len() > MAX_CHANNEL_LEN || !is_path_safe(channel))
        {
            return Answer::failure(
                Reply::Invalid,
                &format!("The channel {channel:?} is not valid: use letters, digits, '_' or '-'."),
            );
        }
        let enquiry = match captures.enquiry_id.map(parse_enquiry_id) {
            Some(Err(text)) => {
                return Answer::failure(
                    Reply::Invalid,
                    &format!("The enquiry id {text:?} is not valid: use digits only."),
                );
            }
            Some(Ok(id)) => Some(id),
            None => None,
        };
        if let Some(field) = fields
            .keys()
            .find(|f| !payload_field_allowed(kind, on_enquiry, f))
        {
            return Answer::failure(
                Reply::Invalid,
                &format!(
                    "The field {field:?} is not accepted on the {} route.",
                    route.name()
                ),
            );
        }
        if self.campaign_is_paused(fields) {
            return Answer::new(
                Reply::Paused,
                json!({"success": true, "message": PAUSED_MESSAGE}).to_string(),
            );
        }
        if self.first_for(captures.enquiry_id, fields) {
            return unavailable();
        }
        let id = enquiry.unwrap_or_else(|| self.next_enquiry.fetch_add(1, Ordering::Relaxed));
        let message = if route == Route::Review || route == Route::ReviewOnEnquiry {
            REVIEW_MESSAGE
        } else {
            SENT_MESSAGE
        };
        Answer::new(
            Reply::Sent,
            format!(
                r#"{{"success":true,"message":"{message}","body":{{"enquiry":{{"id":{id}}}}}}}"#
            ),
        )
    }

    fn campaign_is_paused(&self, fields: &Map<String, Value>) -> bool {
        let Some(paused) = &self.paused_campaign else {
            return false;
        };
        match fields.get("campaign_id") {
            Some(Value::String(id)) => id == paused,
            Some(Value::Number(id)) => id.to_string() == *paused,
            _ => false,
        }
    }

    /// True once for each `fail_first_for` entry that the path's enquiry id
    /// or the body's phone or email names.
    fn first_for(&self, enquiry_id: Option<&str>, fields: &Map<String, Value>) -> bool {
        if self.fail_first.is_empty() {
            return false;
        }
        let names = [
            enquiry_id,
            fields.get("phone").and_then(Value::as_str),
            fields.get("email").and_then(Value::as_str),
        ];
        self.fail_first.iter().any(|(id, failed)| {
            names.contains(&Some(id.as_str())) && !failed.swap(true, Ordering::AcqRel)
        })
    }
}

fn parse_enquiry_id(text: &str) -> Result<u64, &str> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().map_err(|_| text)
    } else {
        Err(text)
    }
}

fn unavailable() -> Answer {
    Answer::failure(
        Reply::Unavailable,
        "Service unavailable (injected by the simulator).",
    )
}

fn wrong_method(allow: &'static str) -> Answer {
    Answer {
        allow: Some(allow),
        ..Answer::failure(Reply::WrongMethod, "Method not allowed.")
    }
}

#[cfg(test)]
mod tests;
