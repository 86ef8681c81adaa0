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
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Where the config is read from when nothing else is said.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/coax-scheduler/config.toml";
/// Environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_PATH_ENV: &str = "COAX_SCHEDULER_CONFIG";
/// Environment variable holding the API key; wins over every other source.
pub const API_KEY_ENV: &str = "COAX_API_KEY";
/// Name of the systemd credential (`LoadCredential=coax-api-key:...`).
pub const API_KEY_CREDENTIAL: &str = "coax-api-key";

const CREDENTIALS_DIRECTORY_ENV: &str = "CREDENTIALS_DIRECTORY";
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
    #[error("cannot read config file {}: {source}{}", path.display(), read_hint(source))]
    Read { path: PathBuf, source: io::Error },

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
    #[error("cannot read API key file {}: {source}", path.display())]
    ApiKeyRead { path: PathBuf, source: io::Error },
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
    pub log: LogConfig,
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
    /// Absolute path of the SQLite file.
    pub path: PathBuf,
}

/// `[socket]`: the Unix socket clients submit on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    /// Absolute path of the Unix socket.
    pub path: PathBuf,
    /// Permission bits, at most `0o777`.
    pub mode: u32,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// `[dispatch]`: how due messages are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchConfig {
    pub poll_interval: Duration,
    /// Between 1 and 1024.
    pub concurrency: usize,
    pub shutdown_timeout: Duration,
    pub auth_pause: Duration,
    pub on_ambiguous: OnAmbiguous,
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
        let text = fs::read_to_string(&source).map_err(|err| ConfigError::Read {
            path: source.clone(),
            source: err,
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
        source: err,
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

// ---------------------------------------------------------------------------
// Raw, as-written form. Every section has a Default so it may be omitted, and
// every default comes from a named function so the example file and the code
// can be checked against each other.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    coax: RawCoax,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    socket: RawSocket,
    #[serde(default)]
    dispatch: RawDispatch,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCoax {
    base_url: Option<String>,
    api_key_file: Option<PathBuf>,
    #[serde(deserialize_with = "de_duration")]
    request_timeout: Duration,
    routes: RawRoutes,
}

impl Default for RawCoax {
    fn default() -> Self {
        RawCoax {
            base_url: None,
            api_key_file: None,
            request_timeout: default_request_timeout(),
            routes: RawRoutes::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRoutes {
    message: String,
    message_enquiry: String,
    coax_schedule: String,
    coax_schedule_enquiry: String,
    review_request: String,
    review_request_enquiry: String,
}

impl Default for RawRoutes {
    fn default() -> Self {
        let r = Routes::default();
        RawRoutes {
            message: r.message,
            message_enquiry: r.message_enquiry,
            coax_schedule: r.coax_schedule,
            coax_schedule_enquiry: r.coax_schedule_enquiry,
            review_request: r.review_request,
            review_request_enquiry: r.review_request_enquiry,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSocket {
    path: Option<PathBuf>,
    #[serde(deserialize_with = "de_mode")]
    mode: String,
    #[serde(deserialize_with = "de_duration")]
    idle_timeout: Duration,
    max_connections: usize,
}

impl Default for RawSocket {
    fn default() -> Self {
        RawSocket {
            path: None,
            mode: default_socket_mode(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDispatch {
    #[serde(deserialize_with = "de_duration")]
    poll_interval: Duration,
    concurrency: usize,
    #[serde(deserialize_with = "de_duration")]
    shutdown_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    auth_pause: Duration,
    on_ambiguous: RawOnAmbiguous,
}

impl Default for RawDispatch {
    fn default() -> Self {
        RawDispatch {
            poll_interval: default_poll_interval(),
            concurrency: default_concurrency(),
            shutdown_timeout: default_shutdown_timeout(),
            auth_pause: default_auth_pause(),
            on_ambiguous: RawOnAmbiguous::Retry,
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawOnAmbiguous {
    Retry,
    Hold,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetry {
    max_attempts: u32,
    #[serde(deserialize_with = "de_duration")]
    base_delay: Duration,
    #[serde(deserialize_with = "de_duration")]
    max_delay: Duration,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            max_attempts: default_max_attempts(),
            base_delay: default_base_delay(),
            max_delay: default_max_delay(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: RawLogFormat,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: RawLogFormat::Text,
            level: default_log_level(),
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawLogFormat {
    Text,
    Json,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_socket_mode() -> String {
    "0660".to_owned()
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    256
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_concurrency() -> usize {
    8
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_auth_pause() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_max_attempts() -> u32 {
    10
}
fn default_base_delay() -> Duration {
    Duration::from_secs(30)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_log_level() -> String {
    "info".to_owned()
}

// Durations are parsed during deserialization so that toml reports the line,
// column and key of a bad one, and so a bare number gets told what to write.
fn de_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(r#"a duration string such as "250ms", "30s" or "1h""#)
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
            humantime::parse_duration(value).map_err(|err| {
                E::custom(format!(
                    r#"invalid duration {value:?} ({err}); write e.g. "250ms", "30s" or "1h""#
                ))
            })
        }
    }
    deserializer.deserialize_str(DurationVisitor)
}

// Only a string is accepted: TOML has no leading-zero integers, and a bare 660
// would silently mean decimal 660.
fn de_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct ModeVisitor;
    impl Visitor<'_> for ModeVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(r#"a quoted octal mode such as "0660""#)
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_owned())
        }
    }
    deserializer.deserialize_str(ModeVisitor)
}

// ---------------------------------------------------------------------------
// Validation.

impl RawConfig {
    fn validate(
        self,
        source: PathBuf,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: source.clone(),
            key: key.to_owned(),
            message,
        };
        // `source` is absolute, so it has a parent unless it is "/" itself.
        let dir = source.parent().unwrap_or(Path::new("/")).to_owned();
        let resolve = |key: &str, path: Option<PathBuf>| -> Result<PathBuf, ConfigError> {
            match path {
                None => Err(invalid(key, "is required".to_owned())),
                Some(p) if p.as_os_str().is_empty() => {
                    Err(invalid(key, "must not be empty".to_owned()))
                }
                Some(p) => Ok(dir.join(p)),
            }
        };
        let positive = |key: &str, value: Duration| -> Result<Duration, ConfigError> {
            if value.is_zero() {
                Err(invalid(
                    key,
                    r#"must be greater than zero (e.g. "1s")"#.to_owned(),
                ))
            } else {
                Ok(value)
            }
        };

        // coax
        let base_url = match self.coax.base_url {
            None => {
                return Err(invalid(
                    "coax.base_url",
                    r#"is required, e.g. base_url = "https://api.coax.example" under [coax]"#
                        .to_owned(),
                ));
            }
            Some(text) => check_base_url(&text).map_err(|m| invalid("coax.base_url", m))?,
        };
        let request_timeout = positive("coax.request_timeout", self.coax.request_timeout)?;
        let routes = check_routes(self.coax.routes).map_err(|(k, m)| invalid(&k, m))?;
        let api_key_file = match self.coax.api_key_file {
            None => None,
            Some(p) => Some(resolve("coax.api_key_file", Some(p))?),
        };

        // store
        let store_path = resolve("store.path", self.store.path)?;

        // socket
        let socket_path = resolve("socket.path", self.socket.path)?;
        let socket_len = socket_path.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH_BYTES {
            return Err(invalid(
                "socket.path",
                format!(
                    "resolves to {} ({socket_len} bytes), but Unix socket paths are limited \
                     to {MAX_SOCKET_PATH_BYTES} bytes; choose a shorter path",
                    socket_path.display()
                ),
            ));
        }
        let mode = parse_mode(&self.socket.mode).map_err(|m| invalid("socket.mode", m))?;
        let idle_timeout = positive("socket.idle_timeout", self.socket.idle_timeout)?;
        if self.socket.max_connections < 1 {
            return Err(invalid(
                "socket.max_connections",
                "must be at least 1".to_owned(),
            ));
        }

        // dispatch
        let poll_interval = positive("dispatch.poll_interval", self.dispatch.poll_interval)?;
        if !(1..=MAX_CONCURRENCY).contains(&self.dispatch.concurrency) {
            let bound = if self.dispatch.concurrency < 1 {
                "at least 1".to_owned()
            } else {
                format!("at most {MAX_CONCURRENCY}")
            };
            return Err(invalid(
                "dispatch.concurrency",
                format!("must be {bound} (got {})", self.dispatch.concurrency),
            ));
        }
        let auth_pause = positive("dispatch.auth_pause", self.dispatch.auth_pause)?;

        // retry
        if self.retry.max_attempts < 1 {
            return Err(invalid(
                "retry.max_attempts",
                "must be at least 1".to_owned(),
            ));
        }
        let base_delay = positive("retry.base_delay", self.retry.base_delay)?;
        if self.retry.max_delay < base_delay {
            return Err(invalid(
                "retry.max_delay",
                format!(
                    "({}) must be at least retry.base_delay ({})",
                    humantime::format_duration(self.retry.max_delay),
                    humantime::format_duration(base_delay)
                ),
            ));
        }

        // log
        check_log_level(&self.log.level).map_err(|m| invalid("log.level", m))?;

        // The key is loaded last so that a broken config file is reported
        // before anything is read from the credentials.
        let api_key = load_api_key(api_key_file.as_deref(), env)?;

        Ok(Config {
            coax: CoaxConfig {
                base_url,
                api_key,
                request_timeout,
                routes,
            },
            store: StoreConfig { path: store_path },
            socket: SocketConfig {
                path: socket_path,
                mode,
                idle_timeout,
                max_connections: self.socket.max_connections,
            },
            dispatch: DispatchConfig {
                poll_interval,
                concurrency: self.dispatch.concurrency,
                shutdown_timeout: self.dispatch.shutdown_timeout,
                auth_pause,
                on_ambiguous: match self.dispatch.on_ambiguous {
                    RawOnAmbiguous::Retry => OnAmbiguous::Retry,
                    RawOnAmbiguous::Hold => OnAmbiguous::Hold,
                },
            },
            retry: RetryConfig {
                max_attempts: self.retry.max_attempts,
                base_delay,
                max_delay: self.retry.max_delay,
            },
            log: LogConfig {
                format: match self.log.format {
                    RawLogFormat::Text => LogFormat::Text,
                    RawLogFormat::Json => LogFormat::Json,
                },
                level: self.log.level,
            },
            source,
        })
    }
}

fn check_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|err| {
        format!(r#"is not a valid URL ({err}); write e.g. "https://api.coax.example""#)
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must use http or https, not {:?}",
            url.scheme().to_owned()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must include a host, e.g. \"https://api.coax.example\"".to_owned());
    }
    // Route templates are appended to the URL's path; a query or fragment
    // would end up in the middle of every request URL.
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not contain a query (?) or fragment (#)".to_owned());
    }
    Ok(url)
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = if digits.is_empty() {
        None
    } else {
        u32::from_str_radix(digits, 8).ok()
    };
    match mode {
        Some(mode) if mode <= 0o777 => Ok(mode),
        Some(_) => Err(format!(
            "{text:?} is larger than 0777; give only permission bits, e.g. \"0660\""
        )),
        None => Err(format!(
            "{text:?} is not an octal mode; write e.g. \"0660\""
        )),
    }
}

const CHANNEL: &str = "{channel}";
const ENQUIRY_ID: &str = "{enquiry_id}";

fn check_routes(raw: RawRoutes) -> Result<Routes, (String, String)> {
    let routes = Routes {
        message: raw.message,
        message_enquiry: raw.message_enquiry,
        coax_schedule: raw.coax_schedule,
        coax_schedule_enquiry: raw.coax_schedule_enquiry,
        review_request: raw.review_request,
        review_request_enquiry: raw.review_request_enquiry,
    };
    // (name, template, wants {channel}, wants {enquiry_id})
    let table: [(&str, &str, bool, bool); 6] = [
        ("message", &routes.message, true, false),
        ("message_enquiry", &routes.message_enquiry, true, true),
        ("coax_schedule", &routes.coax_schedule, true, false),
        (
            "coax_schedule_enquiry",
            &routes.coax_schedule_enquiry,
            true,
            true,
        ),
        ("review_request", &routes.review_request, false, false),
        (
            "review_request_enquiry",
            &routes.review_request_enquiry,
            false,
            true,
        ),
    ];
    for (name, template, wants_channel, wants_enquiry) in table {
        check_route(template, wants_channel, wants_enquiry)
            .map_err(|message| (format!("coax.routes.{name}"), message))?;
    }
    Ok(routes)
}

fn check_route(template: &str, wants_channel: bool, wants_enquiry: bool) -> Result<(), String> {
    if !template.starts_with('/') {
        return Err(format!(
            "must start with \"/\" (got {template:?}); it is appended to coax.base_url"
        ));
    }
    if template.contains(['?', '#']) {
        return Err(format!(
            "must not contain \"?\" or \"#\" (got {template:?}); give only a path"
        ));
    }
    if template
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("must not contain whitespace (got {template:?})"));
    }
    // A misspelt placeholder would otherwise be sent to Coax literally.
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        let after = &rest[open..];
        if after.starts_with('}') {
            return Err(format!("has an unmatched \"}}\" (got {template:?})"));
        }
        let Some(close) = after.find('}') else {
            return Err(format!("has an unmatched \"{{\" (got {template:?})"));
        };
        let placeholder = &after[..=close];
        if placeholder != CHANNEL && placeholder != ENQUIRY_ID {
            return Err(format!(
                "has unknown placeholder {placeholder} (got {template:?}); \
                 only {CHANNEL} and {ENQUIRY_ID} exist"
            ));
        }
        rest = &after[close + 1..];
    }
    let has_channel = template.contains(CHANNEL);
    let has_enquiry = template.contains(ENQUIRY_ID);
    match (wants_channel, has_channel) {
        (true, false) => return Err(format!("must contain {CHANNEL} (got {template:?})")),
        (false, true) => {
            return Err(format!(
                "must not contain {CHANNEL}: for review requests the channel is sent in \
                 the request body (got {template:?})"
            ));
        }
        _ => {}
    }
    match (wants_enquiry, has_enquiry) {
        (true, false) => Err(format!("must contain {ENQUIRY_ID} (got {template:?})")),
        (false, true) => Err(format!(
            "must not contain {ENQUIRY_ID}; only the *_enquiry routes carry one \
             (got {template:?})"
        )),
        _ => Ok(()),
    }
}

fn check_log_level(level: &str) -> Result<(), String> {
    const EXAMPLE: &str = r#"e.g. "info" or "coax_scheduler=debug,info""#;
    if level.trim().is_empty() {
        return Err(format!("must not be empty; {EXAMPLE}"));
    }
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(level) {
        return Err(format!("is not a valid log filter ({err}); {EXAMPLE}"));
    }
    // EnvFilter reads a lone word as a target name, so "debgu" would be
    // accepted and silently log almost nothing. A target-only filter can
    // still be written as "target=trace".
    let lone_word = !level.contains(['=', ',', '[', ':']);
    let is_level = matches!(
        level.trim().to_ascii_lowercase().as_str(),
        "off" | "error" | "warn" | "info" | "debug" | "trace" | "0" | "1" | "2" | "3" | "4" | "5"
    );
    if lone_word && !is_level {
        return Err(format!(
            "{level:?} is not a log level; use one of off, error, warn, info, debug, trace, \
             or a filter such as \"coax_scheduler=debug,info\""
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// API key.

fn load_api_key(
    key_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ApiKey, ConfigError> {
    // An empty (or blank) variable counts as unset, as shells and unit files
    // often leave one defined but empty.
    if let Some(value) = env(API_KEY_ENV).filter(|v| !v.trim().is_empty()) {
        return ApiKey::from_text(&value, &format!("environment variable {API_KEY_ENV}"));
    }

    if let Some(dir) = env(CREDENTIALS_DIRECTORY_ENV).filter(|d| !d.is_empty()) {
        let path = Path::new(&dir).join(API_KEY_CREDENTIAL);
        // No permission check here: systemd owns this file and its mode.
        match fs::read_to_string(&path) {
            Ok(text) => {
                return ApiKey::from_text(&text, &format!("systemd credential {}", path.display()));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(ConfigError::ApiKeyRead { path, source: err }),
        }
    }

    if let Some(path) = key_file {
        let read_err = |err| ConfigError::ApiKeyRead {
            path: path.to_owned(),
            source: err,
        };
        // Check the mode of the file actually opened, not of whatever the
        // path points to a moment earlier.
        let mut file = fs::File::open(path).map_err(read_err)?;
        let mode = file.metadata().map_err(read_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ConfigError::ApiKey(format!(
                "API key file {path} is accessible by group or others (mode {mode:04o}); \
                 restrict it with: chmod 600 {path}",
                path = path.display(),
                mode = mode & 0o7777,
            )));
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read_err)?;
        return ApiKey::from_text(
            &text,
            &format!("API key file {} (coax.api_key_file)", path.display()),
        );
    }

    Err(ConfigError::ApiKey(format!(
        "no API key: set {API_KEY_ENV}, or coax.api_key_file, \
         or provide the systemd credential {API_KEY_CREDENTIAL} (LoadCredential=)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    const SECRET: &str = "sk-TOPSECRET-4f9a1c77e2";

    const MINIMAL: &str = r#"
[coax]
base_url = "https://api.coax.example"

[store]
path = "/var/lib/coax-scheduler/queue.db"

[socket]
path = "/run/coax-scheduler/coax-scheduler.sock"
"#;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    fn with_key() -> impl Fn(&str) -> Option<String> {
        env_of(&[(API_KEY_ENV, SECRET)])
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            Path::new("/etc/coax-scheduler/config.toml"),
            &with_key(),
        )
    }

    /// MINIMAL with `extra` appended (later sections may repeat none of MINIMAL's).
    fn parse_extra(extra: &str) -> Result<Config, ConfigError> {
        parse(&format!("{MINIMAL}\n{extra}"))
    }

    fn err_text(result: Result<Config, ConfigError>) -> String {
        match result {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(err) => {
                let text = err.to_string();
                assert!(!text.contains(SECRET), "key leaked into error: {text}");
                assert!(
                    !format!("{err:?}").contains(SECRET),
                    "key leaked into error Debug"
                );
                text
            }
        }
    }

    fn invalid_key(result: Result<Config, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Invalid { key, message, .. }) => (key, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn minimal_file_gets_all_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.source, PathBuf::from("/etc/coax-scheduler/config.toml"));
        assert_eq!(c.coax.base_url.as_str(), "https://api.coax.example/");
        assert_eq!(c.coax.api_key.expose(), SECRET);
        assert_eq!(c.coax.request_timeout, Duration::from_secs(30));
        assert_eq!(c.coax.routes, Routes::default());
        assert_eq!(c.coax.routes.message, "/api/v2/message/send/{channel}");
        assert_eq!(
            c.store.path,
            PathBuf::from("/var/lib/coax-scheduler/queue.db")
        );
        assert_eq!(
            c.socket,
            SocketConfig {
                path: PathBuf::from("/run/coax-scheduler/coax-scheduler.sock"),
                mode: 0o660,
                idle_timeout: Duration::from_secs(60),
                max_connections: 256,
            }
        );
        assert_eq!(
            c.dispatch,
            DispatchConfig {
                poll_interval: Duration::from_secs(1),
                concurrency: 8,
                shutdown_timeout: Duration::from_secs(30),
                auth_pause: Duration::from_secs(300),
                on_ambiguous: OnAmbiguous::Retry,
            }
        );
        assert_eq!(
            c.retry,
            RetryConfig {
                max_attempts: 10,
                base_delay: Duration::from_secs(30),
                max_delay: Duration::from_secs(3600),
            }
        );
        assert_eq!(
            c.log,
            LogConfig {
                format: LogFormat::Text,
                level: "info".to_owned(),
            }
        );
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
[coax]
base_url = "http://coax.internal:8080/prefix"
request_timeout = "10s"

[coax.routes]
message = "/m/{channel}"
message_enquiry = "/m/{enquiry_id}/{channel}"
coax_schedule = "/s/{channel}"
coax_schedule_enquiry = "/s/{enquiry_id}/{channel}"
review_request = "/r"
review_request_enquiry = "/r/{enquiry_id}"

[store]
path = "/data/q.db"

[socket]
path = "/run/x.sock"
mode = "0600"
idle_timeout = "2m"
max_connections = 4

[dispatch]
poll_interval = "250ms"
concurrency = 3
shutdown_timeout = "0s"
auth_pause = "1h"
on_ambiguous = "hold"

[retry]
max_attempts = 2
base_delay = "1s"
max_delay = "1s"

[log]
format = "json"
level = "coax_scheduler=debug,warn"
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.coax.base_url.as_str(), "http://coax.internal:8080/prefix");
        assert_eq!(c.coax.request_timeout, Duration::from_secs(10));
        assert_eq!(c.coax.routes.review_request_enquiry, "/r/{enquiry_id}");
        assert_eq!(
            c.coax.routes.coax_schedule_enquiry,
            "/s/{enquiry_id}/{channel}"
        );
        assert_eq!(c.store.path, PathBuf::from("/data/q.db"));
        assert_eq!(c.socket.mode, 0o600);
        assert_eq!(c.socket.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.socket.max_connections, 4);
        assert_eq!(c.dispatch.poll_interval, Duration::from_millis(250));
        assert_eq!(c.dispatch.concurrency, 3);
        assert_eq!(c.dispatch.shutdown_timeout, Duration::ZERO);
        assert_eq!(c.dispatch.auth_pause, Duration::from_secs(3600));
        assert_eq!(c.dispatch.on_ambiguous, OnAmbiguous::Hold);
        assert_eq!(c.retry.max_attempts, 2);
        assert_eq!(c.retry.base_delay, c.retry.max_delay);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "coax_scheduler=debug,warn");
    }

    #[test]
    fn partial_routes_keep_other_defaults() {
        let c = parse_extra("[coax.routes]\nreview_request = \"/v3/review\"\n").unwrap();
        assert_eq!(c.coax.routes.review_request, "/v3/review");
        assert_eq!(c.coax.routes.message, Routes::default().message);
    }

    #[test]
    fn unknown_top_level_key_is_named_with_file() {
        let text = err_text(parse(&format!("bogus = 1\n{MINIMAL}")));
        assert!(text.contains("`bogus`"), "{text}");
        assert!(text.contains("/etc/coax-scheduler/config.toml"), "{text}");
        assert!(text.contains("line 1, column 1"), "{text}");
    }

    #[test]
    fn unknown_key_in_section_is_named_with_section() {
        let result = parse_extra("[dispatch]\nconcurrenc = 3\n");
        let text = err_text(result);
        assert!(text.contains("`concurrenc`"), "{text}");
        assert!(text.contains("in `dispatch`"), "{text}");
        assert!(text.contains("expected one of"), "{text}");
        assert!(text.contains("/etc/coax-scheduler/config.toml"), "{text}");
    }

    #[test]
    fn unknown_key_in_routes_and_unknown_section() {
        let text = err_text(parse_extra("[coax.routes]\nmesage = \"/x/{channel}\"\n"));
        assert!(
            text.contains("`mesage`") && text.contains("coax.routes"),
            "{text}"
        );
        let text = err_text(parse_extra("[dispatcher]\nconcurrency = 3\n"));
        assert!(text.contains("`dispatcher`"), "{text}");
    }

    #[test]
    fn api_key_in_config_is_refused_without_echoing_it() {
        let text = MINIMAL.replace("[coax]\n", &format!("[coax]\napi_key = \"{SECRET}\"\n"));
        let text = err_text(parse(&text));
        assert!(text.contains("`api_key`"), "{text}");
        assert!(text.contains(API_KEY_ENV), "{text}");
    }

    #[test]
    fn relative_paths_resolve_against_config_dir() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("secrets/key");
        fs::create_dir(dir.path().join("secrets")).unwrap();
        fs::write(&key_path, "k\n").unwrap();
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
        let text = r#"
[coax]
base_url = "https://api.coax.example"
api_key_file = "secrets/key"
[store]
path = "queue.db"
[socket]
path = "./run/s.sock"
"#;
        let cfg_path = dir.path().join("config.toml");
        fs::write(&cfg_path, text).unwrap();
        let c = Config::load_with_env(&cfg_path, &env_of(&[])).unwrap();
        assert_eq!(c.source, cfg_path);
        assert_eq!(c.store.path, dir.path().join("queue.db"));
        assert_eq!(c.socket.path, dir.path().join("./run/s.sock"));
        assert_eq!(c.coax.api_key.expose(), "k");
        assert!(c.store.path.is_absolute() && c.socket.path.is_absolute());
    }

    #[test]
    fn relative_source_becomes_absolute() {
        let c = Config::from_toml(
            &MINIMAL.replace("/var/lib/coax-scheduler/queue.db", "q.db"),
            Path::new("conf/config.toml"),
            &with_key(),
        )
        .unwrap();
        assert!(c.source.is_absolute());
        assert!(c.store.path.is_absolute());
        assert!(c.store.path.ends_with("conf/q.db"));
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        match Config::load_with_env(&path, &with_key()) {
            Err(err @ ConfigError::Read { .. }) => {
                let text = err.to_string();
                assert!(text.contains("nope.toml"), "{text}");
                assert!(text.contains(CONFIG_PATH_ENV), "{text}");
            }
            other => panic!("expected Read, got {other:?}"),
        }
    }

    #[test]
    fn bad_duration_names_key() {
        let text = err_text(parse_extra("[dispatch]\npoll_interval = \"1 parsec\"\n"));
        assert!(text.contains("dispatch.poll_interval"), "{text}");
        assert!(text.contains("invalid duration"), "{text}");
        assert!(text.contains("line"), "{text}");

        let text = err_text(parse_extra("[retry]\nbase_delay = 30\n"));
        assert!(text.contains("retry.base_delay"), "{text}");
        assert!(text.contains("\"30s\""), "{text}");
    }

    #[test]
    fn bad_enum_values_name_key() {
        let text = err_text(parse_extra("[dispatch]\non_ambiguous = \"maybe\"\n"));
        assert!(
            text.contains("dispatch.on_ambiguous") && text.contains("`hold`"),
            "{text}"
        );
        let text = err_text(parse_extra("[log]\nformat = \"xml\"\n"));
        assert!(
            text.contains("log.format") && text.contains("`json`"),
            "{text}"
        );
    }

    #[test]
    fn invalid_toml_is_a_parse_error() {
        assert!(matches!(
            parse("[coax\nbase_url = 1"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn required_keys() {
        let without = |needle: &str| MINIMAL.replace(needle, "");
        let (key, _) = invalid_key(parse(&without("base_url = \"https://api.coax.example\"")));
        assert_eq!(key, "coax.base_url");
        let (key, _) = invalid_key(parse(&without(
            "path = \"/var/lib/coax-scheduler/queue.db\"",
        )));
        assert_eq!(key, "store.path");
        let (key, _) = invalid_key(parse(&without(
            "path = \"/run/coax-scheduler/coax-scheduler.sock\"",
        )));
        assert_eq!(key, "socket.path");
        let (key, msg) = invalid_key(parse("[store]\npath = \"a\"\n[socket]\npath = \"b\"\n"));
        assert_eq!(
            (key.as_str(), msg.contains("required")),
            ("coax.base_url", true)
        );
        let (key, _) = invalid_key(parse(
            &MINIMAL.replace("/var/lib/coax-scheduler/queue.db", ""),
        ));
        assert_eq!(key, "store.path");
    }

    #[test]
    fn base_url_rules() {
        for bad in [
            "ftp://api.coax.example",
            "not a url",
            "unix:/run/x",
            "https://api.coax.example/?x=1",
            "https://api.coax.example/#frag",
        ] {
            let text = MINIMAL.replace("https://api.coax.example", bad);
            let (key, _) = invalid_key(parse(&text));
            assert_eq!(key, "coax.base_url", "{bad}");
        }
        let text = err_text(parse(&MINIMAL.replace("https://", "ftp://")));
        assert!(
            text.contains("coax.base_url must use http or https"),
            "{text}"
        );
    }

    #[test]
    fn numeric_rules() {
        let cases = [
            (
                "[dispatch]\nconcurrency = 0",
                "dispatch.concurrency",
                "at least 1",
            ),
            (
                "[dispatch]\nconcurrency = 1025",
                "dispatch.concurrency",
                "at most 1024",
            ),
            (
                "[retry]\nmax_attempts = 0",
                "retry.max_attempts",
                "at least 1",
            ),
        ];
        for (extra, key, fragment) in cases {
            let (got, msg) = invalid_key(parse_extra(extra));
            assert_eq!(got, key, "{extra}");
            assert!(msg.contains(fragment), "{extra}: {msg}");
        }
        let text = err_text(parse_extra("[dispatch]\nconcurrency = 0"));
        assert!(
            text.contains("dispatch.concurrency must be at least 1"),
            "{text}"
        );

        let text = MINIMAL.replace(
            "coax-scheduler.sock\"",
            "coax-scheduler.sock\"\nmax_connections = 0",
        );
        let (key, _) = invalid_key(parse(&text));
        assert_eq!(key, "socket.max_connections");

        assert!(parse_extra("[dispatch]\nconcurrency = 1024").is_ok());
        assert!(matches!(
            parse_extra("[dispatch]\nconcurrency = -1"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn duration_rules() {
        let cases = [
            ("[retry]\nbase_delay = \"0s\"", "retry.base_delay"),
            (
                "[retry]\nbase_delay = \"2m\"\nmax_delay = \"1m\"",
                "retry.max_delay",
            ),
            (
                "[dispatch]\npoll_interval = \"0ms\"",
                "dispatch.poll_interval",
            ),
            ("[dispatch]\nauth_pause = \"0s\"", "dispatch.auth_pause"),
        ];
        for (extra, key) in cases {
            let (got, _) = invalid_key(parse_extra(extra));
            assert_eq!(got, key, "{extra}");
        }
        let text = err_text(parse_extra(
            "[retry]\nbase_delay = \"2m\"\nmax_delay = \"1m\"",
        ));
        assert!(text.contains("retry.max_delay (1m) must be at least retry.base_delay (2m)"));

        let zero_timeout = MINIMAL.replace(
            "api.coax.example\"",
            "api.coax.example\"\nrequest_timeout = \"0s\"",
        );
        assert_eq!(invalid_key(parse(&zero_timeout)).0, "coax.request_timeout");
    }

    fn with_socket(extra: &str) -> Result<Config, ConfigError> {
        parse(&MINIMAL.replace(
            "coax-scheduler.sock\"",
            &format!("coax-scheduler.sock\"\n{extra}"),
        ))
    }

    #[test]
    fn socket_mode_rules() {
        assert_eq!(with_socket("mode = \"600\"").unwrap().socket.mode, 0o600);
        assert_eq!(with_socket("mode = \"0o640\"").unwrap().socket.mode, 0o640);
        assert_eq!(with_socket("mode = \"0777\"").unwrap().socket.mode, 0o777);
        for bad in ["\"0778\"", "\"1777\"", "\"rw-rw----\"", "\"\"", "\"-660\""] {
            let (key, _) = invalid_key(with_socket(&format!("mode = {bad}")));
            assert_eq!(key, "socket.mode", "{bad}");
        }
        let text = err_text(with_socket("mode = 0o660"));
        assert!(
            text.contains("socket.mode") && text.contains("\"0660\""),
            "{text}"
        );
    }

    #[test]
    fn socket_path_length_is_checked() {
        let long = format!("/run/{}.sock", "x".repeat(120));
        let text = MINIMAL.replace("/run/coax-scheduler/coax-scheduler.sock", &long);
        let (key, msg) = invalid_key(parse(&text));
        assert_eq!(key, "socket.path");
        assert!(msg.contains("107"), "{msg}");
    }

    fn with_route(name: &str, value: &str) -> Result<Config, ConfigError> {
        parse_extra(&format!("[coax.routes]\n{name} = {value:?}\n"))
    }

    #[test]
    fn route_rules() {
        let bad = [
            ("message", "api/v2/send/{channel}", "start with"),
            ("message", "/send/{channel}?x=1", "\"?\""),
            ("message", "/send/{channel}#x", "\"?\""),
            ("message", "/send", "must contain {channel}"),
            (
                "message",
                "/send/{channel}/{enquiry_id}",
                "must not contain {enquiry_id}",
            ),
            (
                "message_enquiry",
                "/send/{channel}",
                "must contain {enquiry_id}",
            ),
            (
                "message_enquiry",
                "/{enquiry_id}/send",
                "must contain {channel}",
            ),
            ("coax_schedule", "/schedule", "must contain {channel}"),
            (
                "coax_schedule",
                "/{enquiry_id}/s/{channel}",
                "must not contain {enquiry_id}",
            ),
            (
                "coax_schedule_enquiry",
                "/schedule/{channel}",
                "must contain {enquiry_id}",
            ),
            (
                "coax_schedule_enquiry",
                "/{enquiry_id}/schedule",
                "must contain {channel}",
            ),
            (
                "review_request",
                "/review/{channel}",
                "must not contain {channel}",
            ),
            (
                "review_request",
                "/{enquiry_id}/review",
                "must not contain {enquiry_id}",
            ),
            (
                "review_request_enquiry",
                "/review",
                "must contain {enquiry_id}",
            ),
            (
                "review_request_enquiry",
                "/{enquiry_id}/{channel}",
                "must not contain {channel}",
            ),
            ("message", "/send/{chanel}", "unknown placeholder {chanel}"),
            ("message", "/send/{channel", "unmatched"),
            ("message", "/send/channel}", "unmatched"),
            ("message", "/send /{channel}", "whitespace"),
        ];
        for (name, value, fragment) in bad {
            let (key, msg) = invalid_key(with_route(name, value));
            assert_eq!(key, format!("coax.routes.{name}"), "{value}");
            assert!(msg.contains(fragment), "{name} = {value}: {msg}");
        }
        assert!(with_route("message", "/{channel}/{channel}").is_ok());
    }

    #[test]
    fn default_routes_are_valid() {
        let raw = RawRoutes::default();
        assert_eq!(check_routes(raw).unwrap(), Routes::default());
    }

    #[test]
    fn log_level_rules() {
        for ok in [
            "debug",
            "WARN",
            "off",
            "coax_scheduler=trace",
            "info,hyper=warn",
        ] {
            let cfg = parse_extra(&format!("[log]\nlevel = {ok:?}\n"));
            assert!(cfg.is_ok(), "{ok}: {cfg:?}");
        }
        for bad in ["", "debgu", "coax_scheduler=verbose", "[{"] {
            let (key, _) = invalid_key(parse_extra(&format!("[log]\nlevel = {bad:?}\n")));
            assert_eq!(key, "log.level", "{bad:?}");
        }
    }

    fn write_key(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn with_key_file(path: &Path) -> String {
        MINIMAL.replace(
            "api.coax.example\"",
            &format!(
                "api.coax.example\"\napi_key_file = {:?}",
                path.to_str().unwrap()
            ),
        )
    }

    fn load_key(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/coax-scheduler/config.toml"), env)
    }

    #[test]
    fn key_precedence_env_then_credentials_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        fs::create_dir(&creds).unwrap();
        let file = write_key(dir.path(), "key", "from-file\n", 0o600);
        write_key(&creds, API_KEY_CREDENTIAL, "from-creds\n", 0o644);
        let text = with_key_file(&file);
        let creds_str = creds.to_str().unwrap();

        let all = env_of(&[
            (API_KEY_ENV, "from-env"),
            (CREDENTIALS_DIRECTORY_ENV, creds_str),
        ]);
        assert_eq!(
            load_key(&text, &all).unwrap().coax.api_key.expose(),
            "from-env"
        );

        // Empty variable counts as unset.
        let empty_env = env_of(&[(API_KEY_ENV, ""), (CREDENTIALS_DIRECTORY_ENV, creds_str)]);
        let c = load_key(&text, &empty_env).unwrap();
        assert_eq!(c.coax.api_key.expose(), "from-creds");

        // The credential file is exempt from the mode check (it is 0644 here).
        let creds_only = env_of(&[(CREDENTIALS_DIRECTORY_ENV, creds_str)]);
        assert_eq!(
            load_key(&text, &creds_only).unwrap().coax.api_key.expose(),
            "from-creds"
        );

        // A credentials directory without our credential falls through to the file.
        let other = tempfile::tempdir().unwrap();
        let no_cred = env_of(&[(CREDENTIALS_DIRECTORY_ENV, other.path().to_str().unwrap())]);
        assert_eq!(
            load_key(&text, &no_cred).unwrap().coax.api_key.expose(),
            "from-file"
        );

        assert_eq!(
            load_key(&text, &env_of(&[])).unwrap().coax.api_key.expose(),
            "from-file"
        );
    }

    #[test]
    fn key_is_trimmed() {
        let env = env_of(&[(API_KEY_ENV, "abc \r\n")]);
        assert_eq!(
            load_key(MINIMAL, &env).unwrap().coax.api_key.expose(),
            "abc"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = write_key(dir.path(), "key", "xyz\n\n", 0o400);
        let c = load_key(&with_key_file(&file), &env_of(&[])).unwrap();
        assert_eq!(c.coax.api_key.expose(), "xyz");
    }

    #[test]
    fn group_readable_key_file_is_refused_with_chmod_hint() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o640, 0o604, 0o620] {
            let file = write_key(dir.path(), "key", SECRET, mode);
            let result = load_key(&with_key_file(&file), &env_of(&[]));
            assert!(matches!(result, Err(ConfigError::ApiKey(_))), "{mode:o}");
            let text = err_text(result);
            assert!(
                text.contains(&format!("chmod 600 {}", file.display())),
                "{text}"
            );
        }
    }

    #[test]
    fn key_errors() {
        let text = err_text(load_key(MINIMAL, &env_of(&[])));
        assert!(
            text.contains("no API key: set COAX_API_KEY, or coax.api_key_file"),
            "{text}"
        );

        let dir = tempfile::tempdir().unwrap();
        let empty = write_key(dir.path(), "empty", "\n", 0o600);
        let text = err_text(load_key(&with_key_file(&empty), &env_of(&[])));
        assert!(text.contains("is empty"), "{text}");

        let missing = dir.path().join("missing");
        let text = err_text(load_key(&with_key_file(&missing), &env_of(&[])));
        assert!(
            text.contains("cannot read API key file") && text.contains("missing"),
            "{text}"
        );

        let two_lines = write_key(dir.path(), "two", &format!("{SECRET}\nmore\n"), 0o600);
        let text = err_text(load_key(&with_key_file(&two_lines), &env_of(&[])));
        assert!(text.contains("single line"), "{text}");

        let env = env_of(&[(API_KEY_ENV, &format!("{SECRET}\u{7f}x"))]);
        let text = err_text(load_key(MINIMAL, &env));
        assert!(text.contains(API_KEY_ENV), "{text}");
    }

    #[test]
    fn key_never_in_debug_output() {
        let c = parse(MINIMAL).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("ApiKey(<redacted>)"), "{debug}");
        assert_eq!(format!("{:?}", c.coax.api_key), "ApiKey(<redacted>)");
        assert_eq!(format!("{:#?}", c.coax.api_key), "ApiKey(<redacted>)");
    }

    #[test]
    fn default_path_honours_env() {
        assert_eq!(default_path_from(None), PathBuf::from(DEFAULT_CONFIG_PATH));
        assert_eq!(
            default_path_from(Some("".into())),
            PathBuf::from(DEFAULT_CONFIG_PATH)
        );
        assert_eq!(
            default_path_from(Some("/tmp/c.toml".into())),
            PathBuf::from("/tmp/c.toml")
        );
    }

    const EXAMPLE: &str = include_str!("../config.example.toml");

    #[test]
    fn example_config_loads_and_states_the_defaults() {
        let c = parse(EXAMPLE).unwrap();
        let defaults = parse(MINIMAL).unwrap();
        assert_eq!(c, defaults);
    }

    #[test]
    fn example_config_route_comments_match_defaults() {
        // The example lists the routes commented out; uncommented, they must
        // parse to exactly the built-in defaults.
        let uncommented: String = EXAMPLE
            .lines()
            .map(|line| {
                let bare = line.trim_start_matches('#').trim_start();
                let is_route = bare.starts_with("[coax.routes]")
                    || (bare.contains("= \"/api/") && line.starts_with('#'));
                if is_route { bare } else { line }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(uncommented.contains("\n[coax.routes]\n"), "{uncommented}");
        let c = parse(&uncommented).unwrap();
        assert_eq!(c.coax.routes, Routes::default());
        assert_eq!(uncommented.matches("= \"/api/").count(), 6);
    }
}
