//! What the demo does: the daemon's config, the simulator's options, and
//! the jobs with the state each must end in.
//!
//! The jobs and the simulator are set up together so every ending is
//! certain: the retried job's phone is on the simulator's `fail_first_for`
//! list, and the skipped job names the campaign the simulator calls paused.

use crate::config::{API_KEY_ENV, Config, ConfigError};
use crate::job::State;
use crate::simulate::SimOptions;
use serde_json::{Value, json};
use std::path::Path;

/// The key the demo daemon sends and the demo simulator requires. It opens
/// nothing but the simulator.
const DEMO_KEY: &str = "demo-key-for-the-simulator-only";
/// A campaign the simulator answers as paused.
const PAUSED_CAMPAIGN: u64 = 2024;
/// A customer whose first request the simulator answers 503.
const FLAKY_PHONE: &str = "+15550100003";

/// One job the demo enqueues, and how it must end.
pub struct Planned {
    /// What the job shows, for the narration.
    pub what: &'static str,
    pub job: Value,
    pub state: State,
    pub attempts: u32,
    /// Its send window is shut until tomorrow: the demo shows its due
    /// time, then cancels it rather than wait.
    pub deferred: bool,
}

/// The demo's send window: open only tomorrow (UTC), so it is shut
/// whenever the demo runs.
const WINDOW: &str = "tomorrow";

/// The tag of an appointment's reminders, which the demo cancels together
/// as a client would when the appointment is called off.
pub const APPOINTMENT: &str = "appointment:8812";

pub fn jobs() -> Vec<Planned> {
    vec![
        Planned {
            what: "a message, sent now",
            job: json!({
                "key": "demo-now", "kind": "message", "channel": "sms",
                "payload": {"message": "Hi Ada, your table is booked for 7pm.", "phone": "+15550100001", "name": "Ada"}
            }),
            state: State::Sent,
            attempts: 1,
            deferred: false,
        },
        Planned {
            what: "a message due in 5 s",
            job: json!({
                "key": "demo-in-5s", "kind": "message", "channel": "email", "delay": "5s",
                "payload": {"message": "A reminder: see you at 7pm.", "email": "grace@example.com", "name": "Grace"}
            }),
            state: State::Sent,
            attempts: 1,
            deferred: false,
        },
        Planned {
            what: "a message that meets a 503 and is retried",
            job: json!({
                "key": "demo-retried", "kind": "message", "channel": "sms",
                "payload": {"message": "Your order is ready.", "phone": FLAKY_PHONE}
            }),
            state: State::Sent,
            attempts: 2,
            deferred: false,
        },
        Planned {
            what: "a message for a paused campaign, which Coax does not send",
            job: json!({
                "key": "demo-paused-campaign", "kind": "message", "channel": "sms",
                "payload": {"message": "Spring sale!", "phone": "+15550100004", "campaign_id": PAUSED_CAMPAIGN}
            }),
            state: State::Skipped,
            attempts: 1,
            deferred: false,
        },
        Planned {
            what: "a review request",
            job: json!({
                "key": "demo-review", "kind": "review_request", "channel": "email",
                "payload": {"email": "linus@example.com", "name": "Linus"}
            }),
            state: State::Sent,
            attempts: 1,
            deferred: false,
        },
        Planned {
            what: "a message on enquiry 4242",
            job: json!({
                "key": "demo-on-enquiry", "kind": "message", "channel": "whatsapp", "enquiry_id": "4242",
                "payload": {"message": "Thanks for your question; the answer is yes."}
            }),
            state: State::Sent,
            attempts: 1,
            deferred: false,
        },
        Planned {
            what: "a review request that follows the first message, 2 s after it is sent",
            job: json!({
                "key": "demo-follow-up", "kind": "review_request", "channel": "sms",
                "after": {"key": "demo-now"}, "delay": "2s",
                "payload": {"phone": "+15550100001", "name": "Ada"}
            }),
            state: State::Sent,
            attempts: 1,
            deferred: false,
        },
        Planned {
            what: "a follow-up to the paused-campaign message, which goes only if that is sent",
            job: json!({
                "key": "demo-follow-up-skipped", "kind": "message", "channel": "sms",
                "after": {"key": "demo-paused-campaign"},
                "payload": {"message": "Did you see our sale?", "phone": "+15550100004"}
            }),
            state: State::Cancelled,
            attempts: 0,
            deferred: false,
        },
        Planned {
            what: "a reminder a day before an appointment, tagged with it",
            job: json!({
                "key": "demo-reminder-day", "kind": "message", "channel": "sms", "delay": "1d",
                "tags": [APPOINTMENT],
                "payload": {"message": "See you tomorrow at 10am.", "phone": "+15550100006"}
            }),
            state: State::Cancelled,
            attempts: 0,
            deferred: false,
        },
        Planned {
            what: "a reminder two hours before the same appointment",
            job: json!({
                "key": "demo-reminder-hours", "kind": "message", "channel": "sms", "delay": "26h",
                "tags": [APPOINTMENT],
                "payload": {"message": "See you at 10am.", "phone": "+15550100006"}
            }),
            state: State::Cancelled,
            attempts: 0,
            deferred: false,
        },
        Planned {
            what: "a message whose send window is shut until tomorrow",
            job: json!({
                "key": "demo-deferred", "kind": "message", "channel": "sms", "window": WINDOW,
                "payload": {"message": "Good morning! Your appointment is at 10am.", "phone": "+15550100005"}
            }),
            state: State::Cancelled,
            attempts: 0,
            deferred: true,
        },
    ]
}

pub fn simulator_options() -> SimOptions {
    SimOptions {
        api_key: Some(DEMO_KEY.to_owned()),
        paused_campaign: Some(PAUSED_CAMPAIGN.to_string()),
        fail_first_for: vec![FLAKY_PHONE.to_owned()],
        ..SimOptions::default()
    }
}

/// The daemon's config, as if read from `dir/config.toml`. Retry delays are
/// short so that the retried job finishes within a second.
pub fn config(dir: &Path, base_url: &str) -> Result<Config, ConfigError> {
    let text = format!(
        r#"
[coax]
base_url = "{base_url}"
request_timeout = "5s"

[store]
path = "queue.db"

[socket]
path = "coax.sock"

[dispatch]
concurrency = 8
shutdown_timeout = "3s"

[retry]
max_attempts = 3
base_delay = "1s"
max_delay = "2s"

[log]
format = "text"
level = "info"

[windows.{WINDOW}]
{tomorrow} = "09:00-17:00"
"#,
        tomorrow = tomorrow_key(),
    );
    let env = |name: &str| (name == API_KEY_ENV).then(|| DEMO_KEY.to_owned());
    Config::from_toml(&text, &dir.join("config.toml"), &env)
}

/// The config key of tomorrow's weekday in UTC (`mon`, `tue`, ...).
fn tomorrow_key() -> &'static str {
    use chrono::Datelike;
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let tomorrow = chrono::Utc::now().weekday().succ();
    DAYS[tomorrow.num_days_from_monday() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_planned_job_is_valid() {
        let config = config(Path::new("/tmp/coax-demo"), "http://127.0.0.1:9").unwrap();
        let rules = crate::job::Rules {
            calendar: config.calendar.clone(),
            ..Default::default()
        };
        for planned in jobs() {
            crate::job::validate(&planned.job, 0, &rules)
                .unwrap_or_else(|e| panic!("{}: {e}", planned.what));
        }
    }

    #[test]
    fn the_config_is_valid() {
        let config = config(Path::new("/tmp/coax-demo"), "http://127.0.0.1:9").unwrap();
        assert_eq!(config.socket.path, Path::new("/tmp/coax-demo/coax.sock"));
        assert_eq!(config.coax.api_key.expose(), DEMO_KEY);
    }

    #[test]
    fn the_demo_window_is_shut_now_and_opens_tomorrow() {
        let config = config(Path::new("/tmp/coax-demo"), "http://127.0.0.1:9").unwrap();
        let rule = config
            .calendar
            .rule(None, Some(WINDOW), crate::job::Kind::Message)
            .unwrap();
        let now = crate::time::now();
        assert!(!rule.is_open(now));
        let opening = rule.next_opening(now).unwrap();
        assert!(
            opening > now && opening - now <= 48 * 3_600_000,
            "{opening}"
        );
    }
}
