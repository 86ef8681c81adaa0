//! The config file as written: serde types with defaults, and the checks
//! that turn them into a validated [`super::Config`].

use super::*;

// Raw, as-written form. Every section has a Default so it may be omitted, and
// every default comes from a named function so the example file and the code
// can be checked against each other.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
    breaker: RawBreaker,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    node: RawNode,
    #[serde(default)]
    windows: std::collections::BTreeMap<String, crate::window::RawWindow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCoax {
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
pub(super) struct RawRoutes {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    path: Option<PathBuf>,
    prune_schedule: String,
    #[serde(deserialize_with = "de_duration")]
    retention: Duration,
    backend: RawBackend,
    // The PostgreSQL store's keys, checked in `super::postgres`.
    url: Option<toml::Value>,
    password_file: Option<toml::Value>,
    lease: Option<toml::Value>,
    pool_size: Option<toml::Value>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            backend: RawBackend::Sqlite,
            url: None,
            password_file: None,
            lease: None,
            pool_size: None,
            path: None,
            // Seconds first: once a day at 03:17 local time.
            prune_schedule: "0 17 3 * * *".to_owned(),
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSocket {
    path: Option<PathBuf>,
    #[serde(deserialize_with = "de_mode")]
    mode: String,
    #[serde(deserialize_with = "de_duration")]
    idle_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    line_timeout: Duration,
    max_connections: usize,
    allowed_uids: Option<Vec<u32>>,
    allowed_gids: Option<Vec<u32>>,
    max_job_bytes: usize,
}

impl Default for RawSocket {
    fn default() -> Self {
        RawSocket {
            path: None,
            mode: default_socket_mode(),
            idle_timeout: default_idle_timeout(),
            line_timeout: default_line_timeout(),
            max_connections: default_max_connections(),
            allowed_uids: None,
            allowed_gids: None,
            max_job_bytes: crate::job::DEFAULT_MAX_JOB_BYTES,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDispatch {
    #[serde(deserialize_with = "de_duration")]
    poll_interval: Duration,
    concurrency: usize,
    #[serde(deserialize_with = "de_duration")]
    shutdown_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    auth_pause: Duration,
    #[serde(deserialize_with = "de_duration")]
    max_pause: Duration,
    on_ambiguous: RawOnAmbiguous,
    rate_limit: Option<String>,
    default_ttl: Option<String>,
    default_timezone: String,
    default_window: Option<String>,
}

impl Default for RawDispatch {
    fn default() -> Self {
        RawDispatch {
            poll_interval: default_poll_interval(),
            concurrency: default_concurrency(),
            shutdown_timeout: default_shutdown_timeout(),
            auth_pause: default_auth_pause(),
            max_pause: default_max_pause(),
            on_ambiguous: RawOnAmbiguous::Retry,
            rate_limit: None,
            default_ttl: None,
            default_timezone: default_timezone(),
            default_window: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBreaker {
    failures: u32,
    #[serde(deserialize_with = "de_duration")]
    max_probe_interval: Duration,
}

impl Default for RawBreaker {
    fn default() -> Self {
        RawBreaker {
            failures: 5,
            max_probe_interval: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawOnAmbiguous {
    Retry,
    Hold,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetry {
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
pub(super) struct RawLog {
    format: RawLogFormat,
    level: String,
    #[serde(deserialize_with = "de_duration")]
    summary_interval: Duration,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: RawLogFormat::Text,
            level: default_log_level(),
            summary_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawLogFormat {
    Text,
    Json,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMetrics {
    listen: Option<String>,
}

pub(super) fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_socket_mode() -> String {
    "0660".to_owned()
}
pub(super) fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_line_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_max_connections() -> usize {
    256
}
pub(super) fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_concurrency() -> usize {
    8
}
pub(super) fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_auth_pause() -> Duration {
    Duration::from_secs(5 * 60)
}
pub(super) fn default_max_pause() -> Duration {
    Duration::from_secs(60 * 60)
}
pub(super) fn default_max_attempts() -> u32 {
    10
}
pub(super) fn default_base_delay() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_max_delay() -> Duration {
    Duration::from_secs(60 * 60)
}
pub(super) fn default_timezone() -> String {
    "UTC".to_owned()
}
pub(super) fn default_log_level() -> String {
    "info".to_owned()
}

// Durations are parsed during deserialization so that toml reports the line,
// column and key of a bad one, and so a bare number gets told what to write.
pub(super) fn de_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
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
pub(super) fn de_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
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
    pub(super) fn validate(
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
        let postgres = postgres::check_store(
            self.store.backend,
            postgres::RawPostgresKeys {
                url: self.store.url,
                password_file: self.store.password_file,
                lease: self.store.lease,
                pool_size: self.store.pool_size,
            },
            self.store.path.is_some(),
            &dir,
        )
        .map_err(|(k, m)| invalid(&k, m))?;
        let store_path = match postgres {
            Some(_) => PathBuf::new(),
            None => resolve("store.path", self.store.path)?,
        };
        check_cron(&self.store.prune_schedule).map_err(|m| invalid("store.prune_schedule", m))?;
        let retention = positive("store.retention", self.store.retention)?;

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
        let line_timeout = positive("socket.line_timeout", self.socket.line_timeout)?;
        if self.socket.max_connections < 1 {
            return Err(invalid(
                "socket.max_connections",
                "must be at least 1".to_owned(),
            ));
        }
        // A payload must fit in a request line with room for the job around it.
        let most = crate::protocol::MAX_LINE_BYTES / 2;
        if !(1024..=most).contains(&self.socket.max_job_bytes) {
            return Err(invalid(
                "socket.max_job_bytes",
                format!(
                    "is {}; it must be between 1024 and {most} bytes (a request line holds at most {} bytes)",
                    self.socket.max_job_bytes,
                    crate::protocol::MAX_LINE_BYTES
                ),
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
        let max_pause = positive("dispatch.max_pause", self.dispatch.max_pause)?;
        let rate_limit = match &self.dispatch.rate_limit {
            None => None,
            Some(text) => {
                Some(RateLimit::parse(text).map_err(|m| invalid("dispatch.rate_limit", m))?)
            }
        };
        let default_ttl = match &self.dispatch.default_ttl {
            None => None,
            Some(text) => Some(
                humantime::parse_duration(text)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        invalid(
                            "dispatch.default_ttl",
                            format!(r#"{text:?} is not a positive duration such as "6h""#),
                        )
                    })?,
            ),
        };

        // windows, with dispatch.default_timezone and default_window
        let calendar = Calendar::from_parts(
            &self.dispatch.default_timezone,
            self.dispatch.default_window.as_deref(),
            self.windows,
        )
        .map_err(|err| match err {
            crate::window::CalendarError::Invalid { key, message } => invalid(&key, message),
            crate::window::CalendarError::Parse(message) => ConfigError::Parse {
                path: source.clone(),
                message,
            },
        })?;

        // breaker
        if self.breaker.failures < 1 {
            return Err(invalid("breaker.failures", "must be at least 1".to_owned()));
        }
        let max_probe_interval = positive(
            "breaker.max_probe_interval",
            self.breaker.max_probe_interval,
        )?;

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

        let node = node_config(self.node, host_name()).map_err(|m| invalid("node.name", m))?;

        // metrics
        let metrics_listen = match self.metrics.listen {
            None => None,
            Some(text) => {
                Some(check_metrics_listen(&text, &dir).map_err(|m| invalid("metrics.listen", m))?)
            }
        };

        // The key is loaded last so that a broken config file is reported
        // before anything is read from the credentials.
        let api_key = load_api_key(api_key_file.as_deref(), env)?;
        let postgres = postgres.map(|p| p.finish(env)).transpose()?;

        Ok(Config {
            coax: CoaxConfig {
                base_url,
                api_key,
                request_timeout,
                routes,
            },
            store: StoreConfig {
                path: store_path,
                postgres,
                prune_schedule: self.store.prune_schedule,
                retention,
            },
            socket: SocketConfig {
                path: socket_path,
                mode,
                idle_timeout,
                line_timeout,
                max_connections: self.socket.max_connections,
                allowed_uids: self.socket.allowed_uids,
                allowed_gids: self.socket.allowed_gids,
                max_job_bytes: self.socket.max_job_bytes,
            },
            dispatch: DispatchConfig {
                poll_interval,
                concurrency: self.dispatch.concurrency,
                shutdown_timeout: self.dispatch.shutdown_timeout,
                auth_pause,
                max_pause,
                on_ambiguous: match self.dispatch.on_ambiguous {
                    RawOnAmbiguous::Retry => OnAmbiguous::Retry,
                    RawOnAmbiguous::Hold => OnAmbiguous::Hold,
                },
                rate_limit,
                default_ttl,
            },
            breaker: BreakerConfig {
                failures: self.breaker.failures,
                max_probe_interval,
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
                // "0" turns the summary off.
                summary_interval: Some(self.log.summary_interval).filter(|d| !d.is_zero()),
            },
            metrics: MetricsConfig {
                listen: metrics_listen,
            },
            node,
            calendar: Arc::new(calendar),
            source,
        })
    }
}

pub(super) fn check_base_url(text: &str) -> Result<Url, String> {
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
    // Credentials here would be logged with the URL at start-up; the key
    // goes in the Authorization header. The password is not echoed.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not contain a user name or password (user:password@); the API key is sent \
             in the Authorization header, give it through COAX_API_KEY or coax.api_key_file"
                .to_owned(),
        );
    }
    // Route templates are appended to the URL's path; a query or fragment
    // would end up in the middle of every request URL.
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not contain a query (?) or fragment (#)".to_owned());
    }
    Ok(url)
}

pub(super) fn parse_mode(text: &str) -> Result<u32, String> {
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

pub(super) const CHANNEL: &str = "{channel}";
pub(super) const ENQUIRY_ID: &str = "{enquiry_id}";

pub(super) fn check_routes(raw: RawRoutes) -> Result<Routes, (String, String)> {
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

pub(super) fn check_route(
    template: &str,
    wants_channel: bool,
    wants_enquiry: bool,
) -> Result<(), String> {
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

/// An address such as `127.0.0.1:9464` or `[::1]:9464`, or a Unix socket
/// path (anything with a `/`), relative to the config file's directory.
pub(super) fn check_metrics_listen(text: &str, dir: &Path) -> Result<MetricsListen, String> {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok(MetricsListen::Tcp(addr));
    }
    if !text.contains('/') {
        return Err(format!(
            r#"{text:?} is neither an address such as "127.0.0.1:9464" nor a Unix socket path such as "/run/coax-scheduler/metrics.sock""#
        ));
    }
    let path = dir.join(text);
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(format!(
            "resolves to {} ({len} bytes), but Unix socket paths are limited to {MAX_SOCKET_PATH_BYTES} bytes",
            path.display()
        ));
    }
    Ok(MetricsListen::Unix(path))
}

pub(super) fn check_log_level(level: &str) -> Result<(), String> {
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

/// Checks a cron expression the way the housekeeping scheduler will read it.
pub(super) fn check_cron(text: &str) -> Result<(), String> {
    tokio_cron_scheduler::Job::new_async(text, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|_| {
            format!(
                r#"{text:?} is not a cron schedule with seconds, such as "0 17 3 * * *" (03:17:00 daily)"#
            )
        })
}
