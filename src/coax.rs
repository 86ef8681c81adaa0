//! The Coax HTTP client: turns a claimed job into one PUT and reads the
//! answer into a [`crate::policy::Answer`].
//!
//! It owns route rendering, authentication and the bounded reading of
//! answers. It does not decide what an answer means; that is
//! [`crate::policy`]. The API key is sent as a sensitive header, so neither
//! reqwest's nor our logs can show it.

use crate::config::{ApiKey, Routes};
use crate::job::Kind;
use crate::policy::{Answer, Body, MAX_BODY_BYTES, TransportError, parse_retry_after};
use crate::store::ClaimedJob;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Client, Url};
use serde_json::Value;
use std::error::Error as _;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CoaxError {
    #[error("the API key contains characters that cannot go in an HTTP header")]
    KeyNotAHeader,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// A client for one Coax account.
#[derive(Clone)]
pub struct CoaxClient {
    http: Client,
    base: Url,
    /// Shared by every clone, so a reload's new key reaches them all.
    auth: Arc<RwLock<HeaderValue>>,
    routes: Routes,
}

impl std::fmt::Debug for CoaxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoaxClient")
            .field("base", &self.base.as_str())
            .field("auth", &"<redacted>")
            .finish()
    }
}

impl CoaxClient {
    pub fn new(
        base: Url,
        key: &ApiKey,
        request_timeout: Duration,
        routes: Routes,
    ) -> Result<CoaxClient, CoaxError> {
        let http = Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("coax-scheduler/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CoaxError::Client(e.to_string()))?;
        Ok(CoaxClient {
            http,
            base,
            auth: Arc::new(RwLock::new(bearer(key)?)),
            routes,
        })
    }

    /// Uses `key` from now on; true if it differs from the key in use.
    pub fn set_key(&self, key: &ApiKey) -> Result<bool, CoaxError> {
        let new = bearer(key)?;
        let mut auth = match self.auth.write() {
            Ok(auth) => auth,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = *auth != new;
        *auth = new;
        Ok(changed)
    }

    fn auth(&self) -> HeaderValue {
        match self.auth.read() {
            Ok(auth) => auth.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The route a job goes to, as a path under the base URL.
    pub fn path(&self, job: &ClaimedJob) -> String {
        route_path(
            &self.routes,
            job.kind,
            &job.channel,
            job.enquiry_id.as_deref(),
        )
    }

    /// Sends the job once and reads the answer.
    pub async fn send(&self, job: &ClaimedJob) -> Answer {
        let url = join(&self.base, &self.path(job));
        let body = Value::Object(job.payload.clone()).to_string();
        let request = self
            .http
            .put(url)
            .header(AUTHORIZATION, self.auth())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        match request.send().await {
            Ok(response) => read_answer(response).await,
            Err(e) => Answer::Transport(transport_error(&e)),
        }
    }

    /// Asks `GET /health`, which needs no key. True when Coax says it is up.
    pub async fn healthy(&self) -> bool {
        match self.http.get(join(&self.base, "/health")).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }
}

fn bearer(key: &ApiKey) -> Result<HeaderValue, CoaxError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
        .map_err(|_| CoaxError::KeyNotAHeader)?;
    value.set_sensitive(true);
    Ok(value)
}

/// Fills a route template. Channel and enquiry id were validated as safe
/// path segments when the job was accepted.
pub fn route_path(routes: &Routes, kind: Kind, channel: &str, enquiry_id: Option<&str>) -> String {
    let template = match (kind, enquiry_id.is_some()) {
        (Kind::Message, false) => &routes.message,
        (Kind::Message, true) => &routes.message_enquiry,
        (Kind::CoaxSchedule, false) => &routes.coax_schedule,
        (Kind::CoaxSchedule, true) => &routes.coax_schedule_enquiry,
        (Kind::ReviewRequest, false) => &routes.review_request,
        (Kind::ReviewRequest, true) => &routes.review_request_enquiry,
    };
    template
        .replace("{channel}", channel)
        .replace("{enquiry_id}", enquiry_id.unwrap_or(""))
}

/// Appends `path` to the base URL's own path, so that a base URL such as
/// `https://host/coax` keeps its prefix.
fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

async fn read_answer(mut response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut bytes = Vec::new();
    let body = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                    break Body::TooLarge;
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break parse_body(&bytes),
            Err(e) => break Body::Incomplete(error_chain(&e)),
        }
    };
    Answer::Http {
        status,
        retry_after,
        body,
    }
}

/// Reads a Coax envelope, or says briefly what came instead.
pub fn parse_body(bytes: &[u8]) -> Body {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(mut map)) => Body::Envelope {
            success: map.get("success").and_then(Value::as_bool),
            message: match map.remove("message") {
                Some(Value::String(m)) => Some(m),
                _ => None,
            },
            body: map.remove("body").filter(|b| !b.is_null()),
        },
        _ => Body::NotJson(excerpt(bytes)),
    }
}

/// The first line of a body, shortened, for a `last_error` a person reads.
fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX * 4)]);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > MAX {
        format!("{}…", flat.chars().take(MAX).collect::<String>())
    } else {
        flat
    }
}

fn transport_error(e: &reqwest::Error) -> TransportError {
    TransportError {
        // reqwest reports refused connections, DNS and TLS handshake
        // failures as connect errors: nothing was written to Coax.
        never_sent: e.is_connect(),
        timeout: e.is_timeout(),
        detail: error_chain(e),
    }
}

/// An error and its causes in one line, without the URL (which the log
/// line already carries).
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_fill_their_templates() {
        let r = Routes::default();
        assert_eq!(
            route_path(&r, Kind::Message, "sms", None),
            "/api/v2/message/send/sms"
        );
        assert_eq!(
            route_path(&r, Kind::Message, "sms", Some("42")),
            "/api/v2/message/42/send/sms"
        );
        assert_eq!(
            route_path(&r, Kind::CoaxSchedule, "email", None),
            "/api/v2/message/schedule/email"
        );
        assert_eq!(
            route_path(&r, Kind::CoaxSchedule, "email", Some("7")),
            "/api/v2/message/7/schedule/email"
        );
        assert_eq!(
            route_path(&r, Kind::ReviewRequest, "sms", None),
            "/api/v2/message/ask-for-review"
        );
        assert_eq!(
            route_path(&r, Kind::ReviewRequest, "sms", Some("9")),
            "/api/v2/message/9/ask-for-review"
        );
    }

    #[test]
    fn base_url_prefix_is_kept() {
        let base = Url::parse("https://h.example/coax/").unwrap();
        assert_eq!(
            join(&base, "/api/v2/x").as_str(),
            "https://h.example/coax/api/v2/x"
        );
        let base = Url::parse("http://127.0.0.1:9").unwrap();
        assert_eq!(join(&base, "/health").as_str(), "http://127.0.0.1:9/health");
    }

    #[test]
    fn bodies_are_read_into_envelopes() {
        assert_eq!(
            parse_body(br#"{"success":true,"message":"ok","body":{"id":1}}"#),
            Body::Envelope {
                success: Some(true),
                message: Some("ok".into()),
                body: Some(serde_json::json!({"id":1}))
            }
        );
        assert_eq!(
            parse_body(b"<html>\n<h1>502   Bad Gateway</h1></html>"),
            Body::NotJson("<html> <h1>502 Bad Gateway</h1></html>".into())
        );
        assert_eq!(parse_body(b""), Body::NotJson(String::new()));
        assert!(matches!(parse_body(&[b'x'; 2000]), Body::NotJson(e) if e.chars().count() == 121));
    }
}
