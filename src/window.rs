//! TEMPORARY STUB: replaced by the real calendar module.
use crate::job::Kind;
use crate::time::Millis;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    default_zone: String,
    default_window: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("unknown time zone {0:?}")]
    UnknownZone(String),
    #[error("unknown window {name:?}")]
    UnknownWindow { name: String },
}

#[derive(Debug, Clone)]
pub struct Rule {
    zone: String,
    window: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Due,
    Deferred { opening: Millis, due_at: Millis },
    Never,
}

impl Calendar {
    pub fn none() -> Calendar {
        Calendar {
            default_zone: "UTC".into(),
            default_window: None,
        }
    }
    pub fn rule(
        &self,
        timezone: Option<&str>,
        window: Option<&str>,
        _kind: Kind,
    ) -> Result<Rule, RuleError> {
        Ok(Rule {
            zone: timezone.unwrap_or(&self.default_zone).to_owned(),
            window: window.filter(|w| *w != "none").map(Arc::from),
        })
    }
    pub fn window_names(&self) -> impl Iterator<Item = &str> {
        self.default_window.iter().map(String::as_str)
    }
    pub fn fingerprint(&self) -> u64 {
        0
    }
}

impl Rule {
    pub fn zone_name(&self) -> &str {
        &self.zone
    }
    pub fn window_name(&self) -> &str {
        self.window.as_deref().unwrap_or("none")
    }
    pub fn is_open(&self, _at: Millis) -> bool {
        true
    }
    pub fn next_opening(&self, at: Millis) -> Option<Millis> {
        Some(at)
    }
    pub fn plan(&self, _id: i64, _scheduled_at: Millis, _now: Millis) -> Plan {
        Plan::Due
    }
}

pub fn parse_local(_text: &str, _rule: &Rule) -> Option<Millis> {
    None
}
