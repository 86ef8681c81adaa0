//! What to do with a Coax answer: pure functions of (attempt, answer, now).
//!
//! [`classify`] reads an answer into an [`Outcome`] in the domain's words,
//! and [`decide`] turns an outcome into a [`Decision`] using the retry policy.
//! Nothing here performs I/O or reads a clock, so every row of the outcome
//! table is tested without tokio; the dispatcher carries the decisions out.
//!
//! | Coax answer                                   | outcome          | decision             |
//! |-----------------------------------------------|------------------|----------------------|
//! | 2xx, success, "campaign is paused"            | `CampaignPaused` | skipped              |
//! | 2xx, success                                  | `Delivered`      | sent                 |
//! | 2xx, success false                            | `Refused`        | failed               |
//! | 401, 403                                      | `KeyRejected`    | back to scheduled    |
//! | 408, 425, 429, 5xx but 501/505, transport     | `Transient`      | retry, then failed   |
//! | 2xx that is not a Coax envelope               | `Transient`      | retry (ambiguous)    |
//! | anything else                                 | `Rejected`       | failed               |

use crate::config::{OnAmbiguous, RetryConfig};
use crate::time::{self, Millis};
use serde_json::Value;
use std::time::Duration;

/// The most of an answer's body that is read and kept.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What came back from one request to Coax.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// An HTTP response arrived.
    Http {
        status: u16,
        /// The `Retry-After` header, already turned into a wait.
        retry_after: Option<Duration>,
        body: Body,
    },
    /// No response: the request failed in transport.
    Transport(TransportError),
}

/// The body of an HTTP answer, as far as it could be read.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A Coax envelope.
    Envelope {
        success: Option<bool>,
        message: Option<String>,
        body: Option<Value>,
    },
    /// Not JSON, or JSON that is not an object; the text is a short excerpt.
    NotJson(String),
    /// The body ended early or broke off.
    Incomplete(String),
    /// The body was longer than [`MAX_BODY_BYTES`].
    TooLarge,
}

/// A request that got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    /// True when the request certainly never reached Coax (connection
    /// refused, DNS, TLS handshake), so sending again cannot duplicate.
    pub never_sent: bool,
    /// True when the request timed out.
    pub timeout: bool,
    pub detail: String,
}

/// An answer read in the domain's words.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        message: Option<String>,
    },
    CampaignPaused {
        message: String,
    },
    /// Coax answered `success: false`: it understood and declined.
    Refused {
        message: String,
    },
    /// The API key was not accepted; not the job's fault.
    KeyRejected {
        status: u16,
    },
    /// Worth another try later.
    Transient {
        reason: String,
        /// The request may have reached Coax, so another try may duplicate it.
        ambiguous: bool,
        retry_after: Option<Duration>,
    },
    /// Will never succeed as it is.
    Rejected {
        reason: String,
    },
}

/// What the dispatcher does next with the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Sent,
    Skipped {
        reason: String,
    },
    Failed {
        reason: String,
    },
    Retry {
        at: Millis,
        reason: String,
    },
    /// Back to `scheduled` without using an attempt, and pause all sending.
    PauseForKey,
    /// Ambiguous under `on_ambiguous = "hold"`: wait for a person.
    Hold {
        reason: String,
    },
    /// The next try would come after the job's expiry.
    Expired {
        reason: String,
    },
}

impl Decision {
    /// Why, for every decision that is not plainly `sent` or a key pause.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Decision::Skipped { reason }
            | Decision::Failed { reason }
            | Decision::Retry { reason, .. }
            | Decision::Hold { reason }
            | Decision::Expired { reason } => Some(reason),
            Decision::Sent | Decision::PauseForKey => None,
        }
    }

    /// The word logged and recorded in the attempt history.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Sent => "sent",
            Decision::Skipped { .. } => "skipped",
            Decision::Failed { .. } => "failed",
            Decision::Retry { .. } => "retry",
            Decision::PauseForKey => "paused_auth",
            Decision::Hold { .. } => "held",
            Decision::Expired { .. } => "expired",
        }
    }
}

/// The message Coax gives when a campaign is paused and nothing was sent.
fn is_paused_campaign(message: &str) -> bool {
    message.to_ascii_lowercase().contains("campaign is paused")
}

fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429)
        || (500..600).contains(&status) && !matches!(status, 501 | 505)
}

/// Reads an answer into an outcome.
pub fn classify(answer: &Answer) -> Outcome {
    let (status, retry_after, body) = match answer {
        Answer::Transport(e) => {
            let what = if e.timeout { "timed out" } else { "failed" };
            return Outcome::Transient {
                reason: format!("request {what}: {}", e.detail),
                ambiguous: !e.never_sent,
                retry_after: None,
            };
        }
        Answer::Http {
            status,
            retry_after,
            body,
        } => (*status, *retry_after, body),
    };

    if (200..300).contains(&status) {
        return classify_success_status(status, body);
    }
    if matches!(status, 401 | 403) {
        return Outcome::KeyRejected { status };
    }
    let reason = format!("HTTP {status}{}", describe(body));
    if is_retryable_status(status) {
        Outcome::Transient {
            reason,
            ambiguous: false,
            retry_after,
        }
    } else {
        Outcome::Rejected { reason }
    }
}

fn classify_success_status(status: u16, body: &Body) -> Outcome {
    match body {
        Body::Envelope {
            success: Some(true),
            message,
            ..
        } => match message {
            Some(m) if is_paused_campaign(m) => Outcome::CampaignPaused { message: m.clone() },
            _ => Outcome::Delivered {
                message: message.clone(),
            },
        },
        Body::Envelope {
            success: Some(false),
            message,
            ..
        } => Outcome::Refused {
            message: message
                .clone()
                .unwrap_or_else(|| "Coax answered success: false without a message".into()),
        },
        // A 2xx that is not Coax's envelope (a proxy's page, a cut-off body)
        // may or may not mean the message went out.
        Body::Envelope { success: None, .. } => Outcome::Transient {
            reason: format!("HTTP {status} without a \"success\" field"),
            ambiguous: true,
            retry_after: None,
        },
        other => Outcome::Transient {
            reason: format!("HTTP {status}{}", describe(other)),
            ambiguous: true,
            retry_after: None,
        },
    }
}

fn describe(body: &Body) -> String {
    match body {
        Body::Envelope {
            message: Some(m), ..
        } => format!(": {m}"),
        Body::Envelope { message: None, .. } => String::new(),
        Body::NotJson(excerpt) if excerpt.is_empty() => ", empty body".into(),
        Body::NotJson(excerpt) => format!(", not JSON: {excerpt}"),
        Body::Incomplete(detail) => format!(", body incomplete: {detail}"),
        Body::TooLarge => format!(", body larger than {MAX_BODY_BYTES} bytes"),
    }
}

/// How long to wait before try `attempt + 1`, after `attempt` tries (1-based).
///
/// `min(max_delay, base_delay * 2^(attempt-1))`, scaled by `jitter` mapped
/// into [½, 1] so that jobs failing together spread out.
pub fn backoff(attempt: u32, retry: &RetryConfig, jitter: f64) -> Duration {
    // In nanoseconds as u128, so that no realistic config can overflow
    // before the cap applies.
    let full = 1u128
        .checked_shl(attempt.saturating_sub(1))
        .map(|factor| retry.base_delay.as_nanos().saturating_mul(factor))
        .filter(|nanos| *nanos < retry.max_delay.as_nanos())
        .and_then(|nanos| u64::try_from(nanos).ok())
        .map_or(retry.max_delay, Duration::from_nanos);
    let jitter = if jitter.is_nan() {
        1.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    full.mul_f64(0.5 + jitter / 2.0)
}

/// Decides the next step after try number `attempt` (1-based) ended in `outcome` at `now`.
///
/// `jitter` is a number in [0, 1] supplied by the caller so this stays pure.
pub fn decide(
    attempt: u32,
    outcome: &Outcome,
    retry: &RetryConfig,
    on_ambiguous: OnAmbiguous,
    now: Millis,
    jitter: f64,
) -> Decision {
    match outcome {
        Outcome::Delivered { .. } => Decision::Sent,
        Outcome::CampaignPaused { message } => Decision::Skipped {
            reason: message.clone(),
        },
        Outcome::Refused { message } => Decision::Failed {
            reason: format!("Coax refused: {message}"),
        },
        Outcome::Rejected { reason } => Decision::Failed {
            reason: reason.clone(),
        },
        Outcome::KeyRejected { .. } => Decision::PauseForKey,
        Outcome::Transient {
            reason,
            ambiguous: true,
            ..
        } if on_ambiguous == OnAmbiguous::Hold => Decision::Hold {
            reason: format!("{reason}; it may have been sent, so it is held"),
        },
        Outcome::Transient {
            reason,
            retry_after,
            ..
        } => {
            if attempt >= retry.max_attempts {
                return Decision::Failed {
                    reason: format!("gave up after {attempt} attempts: {reason}"),
                };
            }
            let wait = match retry_after {
                Some(d) => (*d).min(retry.max_delay),
                None => backoff(attempt, retry, jitter),
            };
            Decision::Retry {
                at: time::add(now, wait),
                reason: reason.clone(),
            }
        }
    }
}

/// A retry at or after the job's expiry becomes [`Decision::Expired`]: a
/// message must never go out late.
pub fn bound_by_expiry(decision: Decision, expires_at: Option<Millis>) -> Decision {
    match (decision, expires_at) {
        (Decision::Retry { at, reason }, Some(expiry)) if at >= expiry => Decision::Expired {
            reason: format!(
                "{reason}; the next try would come after its expiry at {}",
                time::format(expiry)
            ),
        },
        (decision, _) => decision,
    }
}

/// Reads a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests;
