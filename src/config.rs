//! Configuration: reads the TOML config file, checks every value, resolves
//! relative paths against the file's directory, and loads the Coax API key
//! (environment, systemd credential or key file), producing a [`Config`] that
//! the rest of the daemon can use without re-checking anything.
//!
//! It does not own anything that happens after loading: `RUST_LOG` overriding
//! `log.level`, command-line flags, creating the store or socket, applying
//! `socket.mode`, building the HTTP client, or filling in route templates all
//! belong to the modules that do those things.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::window::Calendar;

/// Where the config is read from when nothing else is said.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/coax-scheduler/config.toml";
/// Environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_PATH_ENV: &str = "COAX_SCHEDULER_CONFIG";
/// Environment variable holding the API key; wins over every other source.
pub const API_KEY_ENV: &str = "COAX_API_KEY";
/// Name of the systemd credential (`LoadCredential=coax-api-key:...`).
pub const API_KEY_CREDENTIAL: &str = "coax-api-key";

const CREDENTIALS_DIRECTORY_ENV: &str = "CREDENTIALS_DIRECTORY";
/// The largest config file read; the example with every key is about 5 KiB.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
const MAX_CONCURRENCY: usize = 1024;
// sun_path is 108 bytes on Linux, one of which is the terminating NUL.
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// The config path to use when none is given: `$COAX_SCHEDULER_CONFIG` if set
/// and non-empty, else `/etc/coax-scheduler/config.toml`.
pub fn default_path() -> PathBuf {
    default_path_from(std::env::var_os(CONFIG_PATH_ENV))
}

fn default_path_from(value: Option<std::ffi::OsString>) -> PathBuf {
    match value {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Everything that can go wrong while loading the config. Each message names
/// the file and the key, and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read (or its path made absolute).
    // The io::Error is part of the message and deliberately not a `source`:
    // printing the error chain would otherwise say the reason twice.
    #[error("cannot read config file {}: {cause}{}", path.display(), read_hint(cause))]
    Read { path: PathBuf, cause: io::Error },

    /// The file is not valid TOML, has an unknown key, or a value of the wrong
    /// type or form (durations included). `message` carries line, column and
    /// the key.
    #[error("invalid config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },

    /// A value parsed but is not acceptable; `key` is dotted, e.g.
    /// `dispatch.concurrency`, and `message` completes the sentence.
    #[error("invalid config file {}: {key} {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },

    /// The API key is missing, empty, malformed or stored unsafely. The
    /// message never contains the key itself.
    #[error("{0}")]
    ApiKey(String),

    /// The API key file or systemd credential exists but could not be read.
    #[error("cannot read API key file {}: {cause}", path.display())]
    ApiKeyRead { path: PathBuf, cause: io::Error },

    /// The database password is empty or stored unsafely, or written inside
    /// `store.url`. The message never contains the password itself.
    #[error("{0}")]
    DbPassword(String),

    /// The database password file or systemd credential could not be read.
    #[error("cannot read database password file {}: {cause}", path.display())]
    DbPasswordRead { path: PathBuf, cause: io::Error },
}

fn read_hint(err: &io::Error) -> String {
    if err.kind() == io::ErrorKind::NotFound {
        format!(" (create it from config.example.toml, or point {CONFIG_PATH_ENV} at another file)")
    } else {
        String::new()
    }
}

/// The Coax API key. It deliberately has no `Display` and a redacting `Debug`
/// so that logging a config or an error cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key text, for building the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `origin` describes where the text came from, for error messages only.
    fn from_text(text: &str, origin: &str) -> Result<ApiKey, ConfigError> {
        let key = text.trim_end();
        if key.is_empty() {
            return Err(ConfigError::ApiKey(format!(
                "{origin} is empty; it must contain the Coax API key"
            )));
        }
        // The key ends up in an HTTP header, which only takes visible ASCII;
        // anything else is a broken file (e.g. two lines) that would otherwise
        // fail on every request instead of once at startup.
        if !key.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
            return Err(ConfigError::ApiKey(format!(
                "{origin} contains a line break, control character or non-ASCII character; \
                 it must hold only the API key on a single line"
            )));
        }
        Ok(ApiKey(key.to_owned()))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Absolute path of the file read.
    pub source: PathBuf,
    pub coax: CoaxConfig,
    pub store: StoreConfig,
    pub socket: SocketConfig,
    pub dispatch: DispatchConfig,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub node: NodeConfig,
    /// `dispatch.default_timezone`, `dispatch.default_window` and the
    /// `[windows.*]` tables; shared so a reload can hand it on cheaply.
    pub calendar: Arc<Calendar>,
}

/// `[coax]`: how to reach the Coax API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoaxConfig {
    /// http or https, with a host, no query or fragment.
    pub base_url: Url,
    pub api_key: ApiKey,
    pub request_timeout: Duration,
    pub routes: Routes,
}

/// Path templates appended to `base_url`. Each starts with `/` and contains
/// exactly the placeholders it needs: `{channel}` for message and schedule
/// routes, `{enquiry_id}` for the `*_enquiry` ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    pub message: String,
    pub message_enquiry: String,
    pub coax_schedule: String,
    pub coax_schedule_enquiry: String,
    pub review_request: String,
    pub review_request_enquiry: String,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            message: "/api/v2/message/send/{channel}".to_owned(),
            message_enquiry: "/api/v2/message/{enquiry_id}/send/{channel}".to_owned(),
            coax_schedule: "/api/v2/message/schedule/{channel}".to_owned(),
            coax_schedule_enquiry: "/api/v2/message/{enquiry_id}/schedule/{channel}".to_owned(),
            review_request: "/api/v2/message/ask-for-review".to_owned(),
            review_request_enquiry: "/api/v2/message/{enquiry_id}/ask-for-review".to_owned(),
        }
    }
}

/// `[store]`: the queue database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Absolute path of the SQLite file; empty with `backend = "postgres"`.
    pub path: PathBuf,
    /// `backend = "postgres"`: the database and how to reach it.
    pub postgres: Option<PostgresConfig>,
    /// When finished jobs are pruned: cron with seconds, local time.
    pub prune_schedule: String,
    /// Finished jobs older than this are pruned.
    pub retention: Duration,
}

/// `[socket]`: the Unix socket clients submit on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    /// Absolute path of the Unix socket.
    pub path: PathBuf,
    /// Permission bits, at most `0o777`.
    pub mode: u32,
    pub idle_timeout: Duration,
    /// How long a request line may take from its first byte to its newline.
    pub line_timeout: Duration,
    pub max_connections: usize,
    /// When either list is set, only peers whose uid, or primary or
    /// supplementary gid, is listed may talk.
    pub allowed_uids: Option<Vec<u32>>,
    pub allowed_gids: Option<Vec<u32>>,
    /// The longest payload a job may carry, as compact JSON.
    pub max_job_bytes: usize,
}

impl SocketConfig {
    /// Whether a peer with these credentials may use the socket.
    pub fn admits(&self, uid: u32, gid: u32) -> bool {
        if self.allowed_uids.is_none() && self.allowed_gids.is_none() {
            return true;
        }
        let listed =
            |list: &Option<Vec<u32>>, id: u32| list.as_ref().is_some_and(|l| l.contains(&id));
        listed(&self.allowed_uids, uid) || listed(&self.allowed_gids, gid)
    }
}

/// `[dispatch]`: how due messages are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchConfig {
    pub poll_interval: Duration,
    /// Between 1 and 1024.
    pub concurrency: usize,
    pub shutdown_timeout: Duration,
    pub auth_pause: Duration,
    /// The longest one 429 pauses all sending, whatever its `Retry-After`.
    pub max_pause: Duration,
    pub on_ambiguous: OnAmbiguous,
    /// A cap on sends, or none for unlimited.
    pub rate_limit: Option<RateLimit>,
    /// How long after `scheduled_at` a job without its own expiry stays sendable.
    pub default_ttl: Option<Duration>,
}

/// `dispatch.rate_limit`: at most `count` sends per `per`, e.g. "20/s".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl RateLimit {
    /// Reads "N/s", "N/min" or "N/h".
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let bad = || format!(r#"{text:?} is not a rate such as "20/s", "600/min" or "5000/h""#);
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!(
                "{text:?} would never send; leave rate_limit out for no limit"
            ));
        }
        Ok(RateLimit { count, per })
    }

    /// Sends per second.
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

/// `[breaker]`: when to stop sending because Coax is failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive transient failures, across jobs, that open the breaker.
    pub failures: u32,
    /// The longest wait between two health probes while open.
    pub max_probe_interval: Duration,
}

/// What to do with a send whose outcome is unknown (e.g. the connection broke
/// after the request went out), where retrying may deliver a message twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAmbiguous {
    /// Retry it: risk a duplicate rather than a lost message.
    Retry,
    /// Hold it for an operator: risk a lost message rather than a duplicate.
    Hold,
}

/// `[retry]`: backoff for failed sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// At least 1.
    pub max_attempts: u32,
    /// Greater than zero.
    pub base_delay: Duration,
    /// At least `base_delay`.
    pub max_delay: Duration,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive string; `RUST_LOG` takes precedence at runtime.
    pub level: String,
    /// How often the queue summary line is logged; `None` when turned off.
    pub summary_interval: Option<Duration>,
}

/// `[metrics]`: the Prometheus endpoint; off when `listen` is absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    pub listen: Option<MetricsListen>,
}

/// Where `GET /metrics` and `GET /health` are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    Tcp(std::net::SocketAddr),
    /// An absolute Unix socket path.
    Unix(PathBuf),
}

impl Config {
    /// Reads and validates, taking the key from the real process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, &|name| std::env::var(name).ok())
    }

    /// Same, with an injected env lookup (for tests).
    pub fn load_with_env(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let source = absolute(path)?;
        // A FIFO here would hang check-config, start-up and reloads.
        let text = key::open_regular(&source)
            .and_then(|file| key::read_capped(file, MAX_CONFIG_BYTES))
            .map_err(|err| ConfigError::Read {
                path: source.clone(),
                cause: err,
            })?;
        Config::from_toml(&text, &source, env)
    }

    /// Parses and validates `text` as if read from `source` (whose parent dir
    /// resolves relative paths).
    pub fn from_toml(
        text: &str,
        source: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let source = absolute(source)?;
        let raw: RawConfig = toml::from_str(text).map_err(|err| parse_error(&source, text, err))?;
        raw.validate(source, env)
    }
}

fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|err| ConfigError::Read {
        path: path.to_owned(),
        cause: err,
    })
}

/// Turns a toml error into one line with position and key. The offending
/// source line is deliberately not echoed: a mistaken `api_key = "..."` would
/// otherwise put the secret into the journal.
fn parse_error(path: &Path, text: &str, mut err: toml::de::Error) -> ConfigError {
    let position = err.span().map(|span| line_column(text, span.start));
    err.set_input(None);
    let rendered = err.to_string();
    let mut location = None;
    let mut parts = Vec::new();
    for line in rendered.lines() {
        match line.strip_prefix("in `").and_then(|l| l.strip_suffix('`')) {
            Some(key) => location = Some(key.to_owned()),
            None if !line.trim().is_empty() => parts.push(line.trim()),
            None => {}
        }
    }
    let mut message = String::new();
    if let Some((line, column)) = position {
        message.push_str(&format!("line {line}, column {column}"));
    }
    if let Some(key) = &location {
        if !message.is_empty() {
            message.push_str(", ");
        }
        message.push_str(&format!("in `{key}`"));
    }
    if !message.is_empty() {
        message.push_str(": ");
    }
    message.push_str(&parts.join("; "));
    if location.as_deref() == Some("coax") && err.message().starts_with("unknown field `api_key`") {
        message.push_str(&format!(
            "; the key itself does not belong in the config file: set {API_KEY_ENV}, \
             pass it as the systemd credential {API_KEY_CREDENTIAL}, or set coax.api_key_file"
        ));
    }
    ConfigError::Parse {
        path: path.to_owned(),
        message,
    }
}

/// 1-based line and column (in characters) of byte offset `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

mod key;
mod node;
mod postgres;
mod raw;
#[cfg(test)]
mod tests;

use key::*;
pub use node::{NodeConfig, host_name};
use node::{RawBackend, RawNode, node_config};
pub use postgres::{DB_PASSWORD_CREDENTIAL, DB_PASSWORD_ENV, DbPassword, PostgresConfig, TlsMode};

impl Config {
    /// The config as the daemon needs it: also with a node name, which the
    /// host name may not give (see [`NodeConfig::check`]).
    pub fn for_daemon(self) -> Result<Config, ConfigError> {
        match self.node.check() {
            Ok(_) => Ok(self),
            Err(message) => Err(ConfigError::Invalid {
                path: self.source.clone(),
                key: "node.name".to_owned(),
                message,
            }),
        }
    }
}
use raw::*;
