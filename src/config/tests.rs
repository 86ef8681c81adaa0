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
            line_timeout: Duration::from_secs(10),
            max_connections: 256,
            allowed_uids: None,
            allowed_gids: None,
            max_job_bytes: 65536,
        }
    );
    assert_eq!(
        c.dispatch,
        DispatchConfig {
            poll_interval: Duration::from_secs(1),
            concurrency: 8,
            shutdown_timeout: Duration::from_secs(30),
            auth_pause: Duration::from_secs(300),
            max_pause: Duration::from_secs(3600),
            on_ambiguous: OnAmbiguous::Retry,
            rate_limit: None,
            default_ttl: None,
        }
    );
    assert_eq!(
        c.breaker,
        BreakerConfig {
            failures: 5,
            max_probe_interval: Duration::from_secs(300),
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
            summary_interval: Some(Duration::from_secs(60)),
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
max_pause = "90s"
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
    assert_eq!(c.dispatch.max_pause, Duration::from_secs(90));
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
fn base_url_with_credentials_is_refused_without_echoing_them() {
    for bad in [
        "http://u:SECRETPW@api.coax.example",
        "https://SECRETPW@api.coax.example",
        "https://:SECRETPW@api.coax.example",
    ] {
        let text = MINIMAL.replace("https://api.coax.example", bad);
        let err = parse(&text);
        let shown = err_text(parse(&text));
        let (key, _) = invalid_key(err);
        assert_eq!(key, "coax.base_url", "{bad}");
        assert!(shown.contains("user name or password"), "{shown}");
        assert!(!shown.contains("SECRETPW"), "{shown}");
    }
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

    for bad in ["0", "1023", "524289"] {
        let text = MINIMAL.replace(
            "coax-scheduler.sock\"",
            &format!("coax-scheduler.sock\"\nmax_job_bytes = {bad}"),
        );
        let (key, msg) = invalid_key(parse(&text));
        assert_eq!(key, "socket.max_job_bytes", "{bad}");
        assert!(msg.contains("1024") && msg.contains("524288"), "{msg}");
    }

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
        ("[dispatch]\nmax_pause = \"0s\"", "dispatch.max_pause"),
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

const EXAMPLE: &str = include_str!("../../config.example.toml");

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

#[test]
fn rate_limits_parse() {
    assert_eq!(
        RateLimit::parse("20/s"),
        Ok(RateLimit {
            count: 20,
            per: Duration::from_secs(1)
        })
    );
    assert_eq!(
        RateLimit::parse("600/min").map(RateLimit::per_second),
        Ok(10.0)
    );
    assert_eq!(
        RateLimit::parse(" 3600 / h ").map(RateLimit::per_second),
        Ok(1.0)
    );
    for bad in ["", "20", "0/s", "x/s", "20/fortnight", "-1/s", "1.5/s"] {
        assert!(RateLimit::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn reliability_keys_are_read_and_checked() {
    let base = "[coax]\nbase_url = \"http://127.0.0.1:1\"\n[store]\npath = \"q.db\"\n[socket]\npath = \"s.sock\"\n";
    let env = |name: &str| (name == "COAX_API_KEY").then(|| "k".to_owned());
    let load =
        |extra: &str| Config::from_toml(&format!("{base}{extra}"), Path::new("/etc/c.toml"), &env);
    let c = load("[dispatch]\nrate_limit = \"600/min\"\ndefault_ttl = \"6h\"\n[breaker]\nfailures = 3\nmax_probe_interval = \"30s\"\n").unwrap();
    assert_eq!(c.dispatch.rate_limit.map(RateLimit::per_second), Some(10.0));
    assert_eq!(c.dispatch.default_ttl, Some(Duration::from_secs(6 * 3600)));
    assert_eq!(c.breaker.failures, 3);
    assert_eq!(c.breaker.max_probe_interval, Duration::from_secs(30));
    for (extra, key) in [
        ("[dispatch]\nrate_limit = \"fast\"\n", "dispatch.rate_limit"),
        ("[dispatch]\ndefault_ttl = \"0s\"\n", "dispatch.default_ttl"),
        ("[breaker]\nfailures = 0\n", "breaker.failures"),
        (
            "[breaker]\nmax_probe_interval = \"0s\"\n",
            "breaker.max_probe_interval",
        ),
    ] {
        let err = load(extra).unwrap_err().to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
}

#[test]
fn peers_are_admitted_by_uid_or_gid() {
    let mut socket = SocketConfig {
        path: PathBuf::from("/run/s.sock"),
        mode: 0o660,
        idle_timeout: Duration::from_secs(60),
        line_timeout: Duration::from_secs(10),
        max_connections: 1,
        allowed_uids: None,
        allowed_gids: None,
        max_job_bytes: 65536,
    };
    assert!(socket.admits(1000, 1000), "no lists: everyone");
    socket.allowed_uids = Some(vec![0, 1000]);
    assert!(socket.admits(1000, 5));
    assert!(!socket.admits(1001, 5));
    socket.allowed_gids = Some(vec![5]);
    assert!(socket.admits(1001, 5));
    assert!(!socket.admits(1001, 6));
    socket.allowed_uids = None;
    assert!(!socket.admits(0, 6), "a gid list alone still restricts");
}

#[test]
fn a_zero_summary_interval_turns_the_summary_off() {
    let base = "[coax]\nbase_url = \"http://127.0.0.1:1\"\n[store]\npath = \"q.db\"\n[socket]\npath = \"s.sock\"\n";
    let env = |name: &str| (name == "COAX_API_KEY").then(|| "k".to_owned());
    let load =
        |extra: &str| Config::from_toml(&format!("{base}{extra}"), Path::new("/etc/c.toml"), &env);
    assert_eq!(
        load("[log]\nsummary_interval = \"0\"\n")
            .unwrap()
            .log
            .summary_interval,
        None
    );
    assert_eq!(
        load("[log]\nsummary_interval = \"15s\"\n")
            .unwrap()
            .log
            .summary_interval,
        Some(Duration::from_secs(15))
    );
}

#[test]
fn housekeeping_keys_are_read_and_checked() {
    let base = "[coax]\nbase_url = \"http://127.0.0.1:1\"\n[socket]\npath = \"s.sock\"\n[store]\npath = \"q.db\"\n";
    let env = |name: &str| (name == "COAX_API_KEY").then(|| "k".to_owned());
    let load =
        |extra: &str| Config::from_toml(&format!("{base}{extra}"), Path::new("/etc/c.toml"), &env);
    let c = load("prune_schedule = \"0 0 * * * *\"\nretention = \"7d\"\n").unwrap();
    assert_eq!(c.store.prune_schedule, "0 0 * * * *");
    assert_eq!(c.store.retention, Duration::from_secs(7 * 86_400));
    let err = load("prune_schedule = \"every day\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("store.prune_schedule"), "{err}");
    let err = load("retention = \"0s\"\n").unwrap_err().to_string();
    assert!(err.contains("store.retention"), "{err}");
}

/// One 429 with `Retry-After: 315360000` paused sending for ten years: the
/// pause now has a ceiling, an hour unless set, and no ceiling of zero.
#[test]
fn retry_after_has_a_ceiling_dispatch_max_pause() {
    let c = parse_extra("").unwrap();
    assert_eq!(c.dispatch.max_pause, Duration::from_secs(3600));
    let c = parse_extra("[dispatch]\nmax_pause = \"10m\"").unwrap();
    assert_eq!(c.dispatch.max_pause, Duration::from_secs(600));
    let (key, message) = invalid_key(parse_extra("[dispatch]\nmax_pause = \"0s\""));
    assert_eq!(key, "dispatch.max_pause");
    assert!(!message.is_empty());
}

#[test]
fn the_default_config_has_no_send_windows() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(*c.calendar, crate::window::Calendar::none());
    assert_eq!(c.calendar.default_zone_name(), "UTC");
    assert_eq!(c.calendar.window_names().count(), 0);
}

#[test]
fn example_config_window_comments_parse() {
    // Uncommented, the example window and default_window make a valid config.
    let mut in_block = false;
    let uncommented: String = EXAMPLE
        .lines()
        .map(|line| {
            let bare = line.trim_start_matches('#').trim_start();
            in_block |= bare.starts_with("[windows.business]");
            in_block &= !line.trim().is_empty();
            if in_block || bare.starts_with("default_window") {
                bare
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        uncommented.contains("\n[windows.business]\n"),
        "{uncommented}"
    );
    let c = parse(&uncommented).unwrap();
    assert_eq!(c.calendar.default_window_name(), Some("business"));
    let rule = c
        .calendar
        .rule(Some("Australia/Sydney"), None, crate::job::Kind::Message)
        .unwrap();
    // Wednesday 2026-12-02 12:30 in Sydney is the lunch break.
    assert!(!rule.is_open(crate::time::parse_rfc3339("2026-12-02T01:30:00Z").unwrap()));
    assert!(rule.is_open(crate::time::parse_rfc3339("2026-12-02T02:00:00Z").unwrap()));
}

#[test]
fn window_keys_are_read_and_refusals_name_the_key() {
    let c = parse_extra(
        "[dispatch]\ndefault_timezone = \"Australia/Sydney\"\ndefault_window = \"business\"\n\
         [windows.business]\nmon = \"09:00-17:00\"\nspread = \"20m\"",
    )
    .unwrap();
    assert_eq!(c.calendar.default_zone_name(), "Australia/Sydney");
    assert_eq!(c.calendar.default_window_name(), Some("business"));
    for (extra, expected) in [
        ("[windows.business]\nwed = \"9-17\"", "windows.business.wed"),
        (
            "[windows.business]\nwed = \"17:00-09:00\"",
            "windows.business.wed",
        ),
        (
            "[windows.business]\nwed = \"09:00-12:00, 11:00-13:00\"",
            "windows.business.wed",
        ),
        (
            "[windows.business]\nwed = \"09:00-17:00\"\nholidays = [\"2026-12-32\"]",
            "windows.business.holidays",
        ),
        (
            "[windows.business]\nwed = \"09:00-17:00\"\nspread = \"2d\"",
            "windows.business.spread",
        ),
        ("[windows.business]\nsun = \"closed\"", "windows.business"),
        ("[windows.none]\nsun = \"09:00-10:00\"", "windows.none"),
        (
            "[dispatch]\ndefault_timezone = \"Mars/Olympus_Mons\"",
            "dispatch.default_timezone",
        ),
        (
            "[dispatch]\ndefault_window = \"business\"",
            "dispatch.default_window",
        ),
    ] {
        let (key, message) = invalid_key(parse_extra(extra));
        assert_eq!(key, expected, "{extra}: {message}");
        let text = err_text(parse_extra(extra));
        assert!(text.contains("/etc/coax-scheduler/config.toml"), "{text}");
    }
    // An unknown day key is a parse error that names the table and the key.
    let text = err_text(parse_extra(
        "[windows.business]\nmon = \"09:00-17:00\"\nmonday = \"09:00-17:00\"",
    ));
    assert!(
        text.contains("windows.business") && text.contains("monday"),
        "{text}"
    );
}

#[test]
fn node_name_defaults_to_the_host_name() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.node.name, host_name().unwrap());
    let c = parse_extra("[node]\nname = \"web-1\"").unwrap();
    assert_eq!(c.node.name, "web-1");
}

#[test]
fn bad_node_names_are_refused_naming_the_key() {
    for (name, why) in [
        ("", "must not be empty"),
        ("web 1", "not ' '"),
        ("web\u{1b}[31m", "not '\\u{1b}'"),
        ("n\u{e9}", "not '\u{e9}'"),
    ] {
        let quoted = toml::Value::String(name.to_owned());
        let (key, message) = invalid_key(parse_extra(&format!("[node]\nname = {quoted}")));
        assert_eq!(key, "node.name", "{name:?}");
        assert!(message.contains(why), "{name:?}: {message}");
    }
    let long = "a".repeat(65);
    let (key, message) = invalid_key(parse_extra(&format!("[node]\nname = {long:?}")));
    assert_eq!(key, "node.name");
    assert!(message.contains("65 bytes"), "{message}");
    let text = err_text(parse_extra("[node]\nport = 1"));
    assert!(text.contains("port"), "{text}");
}

#[test]
fn node_names_are_checked_like_host_names() {
    assert_eq!(node::check_node_name("db-2.internal_x"), Ok(()));
    assert!(node::check_node_name(&"a".repeat(64)).is_ok());
    assert!(node::check_node_name("a/b").is_err());
}

#[test]
fn a_host_name_that_will_not_do_is_refused_only_where_a_name_is_needed() {
    let odd = node::node_config(RawNode::default(), Ok("odd host".to_owned())).unwrap();
    let why = odd.check().unwrap_err();
    assert!(
        why.contains("\"odd host\"") && why.contains("[node]"),
        "{why}"
    );
    let unreadable = node::node_config(
        RawNode::default(),
        Err(io::Error::other("no uts namespace")),
    )
    .unwrap();
    assert!(unreadable.check().unwrap_err().contains("cannot be read"));
    let fine = node::node_config(RawNode::default(), Ok("web-1".to_owned())).unwrap();
    assert_eq!(fine.check(), Ok("web-1"));

    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.clone().for_daemon().unwrap(), config);
}
