use super::*;
use std::collections::HashMap;

const PASSWORD: &str = "pw-TOPSECRET-91c3";

const BASE: &str = r#"
[coax]
base_url = "https://api.coax.example"

[socket]
path = "/run/coax-scheduler/coax-scheduler.sock"
"#;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let mut map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.insert(API_KEY_ENV.to_owned(), "ck_live_abc".to_owned());
    move |name: &str| map.get(name).cloned()
}

fn parse_with(store: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    Config::from_toml(
        &format!("{BASE}\n[store]\n{store}"),
        Path::new("/etc/coax-scheduler/config.toml"),
        env,
    )
}

fn parse(store: &str) -> Result<Config, ConfigError> {
    parse_with(store, &env_of(&[]))
}

fn invalid(result: Result<Config, ConfigError>) -> (String, String) {
    match result {
        Err(ConfigError::Invalid { key, message, .. }) => (key, message),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn pg(config: Config) -> PostgresConfig {
    config.store.postgres.expect("a postgres config")
}

#[test]
fn postgres_backend_reads_url_and_defaults() {
    let c = parse("backend = \"postgres\"\nurl = \"postgres://coax@db.internal:6432/queue\"\n")
        .expect("valid");
    assert_eq!(c.store.path, PathBuf::new());
    let p = pg(c);
    assert_eq!(p.lease, Duration::from_secs(30));
    assert_eq!(p.pool_size, 8);
    assert_eq!(p.tls, TlsMode::Prefer);
    assert_eq!(p.password, None);
    assert_eq!(p.connect.get_user(), Some("coax"));
    assert_eq!(p.connect.get_dbname(), Some("queue"));
    assert_eq!(p.connect.get_ports(), &[6432]);
    assert_eq!(p.describe(), "postgres://coax@db.internal:6432/queue");

    let p = pg(parse(
        "backend = \"postgres\"\nurl = \"postgres://coax@db/coax?sslmode=verify-full&sslrootcert=ca.pem&connect_timeout=5\"\nlease = \"45s\"\npool_size = 3\n",
    )
    .expect("valid"));
    assert_eq!(p.tls, TlsMode::VerifyFull);
    assert_eq!(
        p.root_cert,
        Some(PathBuf::from("/etc/coax-scheduler/ca.pem"))
    );
    assert_eq!(
        p.connect.get_connect_timeout(),
        Some(&Duration::from_secs(5))
    );
    assert_eq!(p.lease, Duration::from_secs(45));
    assert_eq!(p.pool_size, 3);
    for (mode, want) in [
        ("disable", TlsMode::Disable),
        ("prefer", TlsMode::Prefer),
        ("require", TlsMode::Require),
        ("verify-ca", TlsMode::VerifyCa),
    ] {
        let text =
            format!("backend = \"postgres\"\nurl = \"postgres://coax@db/coax?sslmode={mode}\"\n");
        assert_eq!(pg(parse(&text).expect(mode)).tls, want);
    }
}

#[test]
fn postgres_keys_are_refused_by_name_with_sqlite() {
    for key in ["url", "password_file", "lease", "pool_size"] {
        let text = format!("path = \"q.db\"\n{key} = \"x\"\n");
        let (named, message) = invalid(parse(&text));
        assert_eq!(named, format!("store.{key}"));
        assert!(message.contains("backend = \"postgres\""), "{message}");
    }
    let sqlite = parse("backend = \"sqlite\"\npath = \"q.db\"\n").expect("sqlite");
    assert_eq!(sqlite.store.postgres, None);
    let text = match parse("backend = \"mysql\"\npath = \"q.db\"\n") {
        Err(e) => e.to_string(),
        Ok(c) => panic!("{c:?}"),
    };
    assert!(
        text.contains("sqlite") && text.contains("postgres"),
        "{text}"
    );
}

#[test]
fn postgres_backend_checks_its_keys() {
    let (key, message) = invalid(parse("backend = \"postgres\"\n"));
    assert_eq!(key, "store.url");
    assert!(message.contains("required"), "{message}");
    let (key, _) = invalid(parse(
        "backend = \"postgres\"\npath = \"q.db\"\nurl = \"postgres://coax@db/coax\"\n",
    ));
    assert_eq!(key, "store.path");
    for (extra, key) in [
        ("url = \"mysql://coax@db/coax\"", "store.url"),
        ("url = \"postgres://db/coax\"", "store.url"),
        (
            "url = \"postgres://coax@db/coax?sslmode=allow\"",
            "store.url",
        ),
        (
            "url = \"postgres://coax@db/coax?sslrootcert=ca.pem\"",
            "store.url",
        ),
        ("url = \"postgres://coax@db/coax?bogus=1\"", "store.url"),
        (
            "url = \"postgres://coax@db/coax\"\npool_size = 0",
            "store.pool_size",
        ),
        (
            "url = \"postgres://coax@db/coax\"\npool_size = \"8\"",
            "store.pool_size",
        ),
        (
            "url = \"postgres://coax@db/coax\"\nlease = \"0s\"",
            "store.lease",
        ),
        (
            "url = \"postgres://coax@db/coax\"\nlease = \"soon\"",
            "store.lease",
        ),
        (
            "url = \"postgres://coax@db/coax\"\npassword_file = \"\"",
            "store.password_file",
        ),
    ] {
        let (named, message) = invalid(parse(&format!("backend = \"postgres\"\n{extra}\n")));
        assert_eq!(named, key, "{extra}: {message}");
    }
}

#[test]
fn password_in_url_is_refused_without_echoing_it() {
    for url in [
        format!("postgres://coax:{PASSWORD}@db/coax"),
        format!("postgresql://coax:{PASSWORD}@db:5432/coax?sslmode=require"),
        format!("postgres://coax@db/coax?password={PASSWORD}"),
        format!("postgres://coax@db/coax?sslmode=require&password={PASSWORD}"),
    ] {
        let result = parse(&format!("backend = \"postgres\"\nurl = \"{url}\"\n"));
        let debug = format!("{result:?}");
        let (key, message) = invalid(result);
        assert_eq!(key, "store.url");
        assert!(!message.contains(PASSWORD), "{message}");
        assert!(!debug.contains(PASSWORD), "{debug}");
        for place in [
            DB_PASSWORD_ENV,
            DB_PASSWORD_CREDENTIAL,
            "store.password_file",
        ] {
            assert!(message.contains(place), "{message}");
        }
    }
}

fn password_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let path = dir.join("db-password");
    fs::write(&path, text).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

#[test]
fn password_sources_in_order_env_credential_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("creds");
    fs::create_dir(&creds).expect("mkdir");
    fs::write(creds.join(DB_PASSWORD_CREDENTIAL), "from-credential\n").expect("write");
    let file = password_file(dir.path(), "from-file\n", 0o600);
    let creds_text = creds.display().to_string();
    let store = format!(
        "backend = \"postgres\"\nurl = \"postgres://coax@db/coax\"\npassword_file = \"{}\"\n",
        file.display()
    );
    let read = |pairs: &[(&str, &str)]| {
        pg(parse_with(&store, &env_of(pairs)).expect("valid"))
            .password
            .map(|p| p.expose().to_owned())
    };
    assert_eq!(
        read(&[
            (DB_PASSWORD_ENV, "from-env"),
            ("CREDENTIALS_DIRECTORY", &creds_text)
        ]),
        Some("from-env".to_owned())
    );
    // An empty variable counts as unset.
    assert_eq!(
        read(&[
            (DB_PASSWORD_ENV, ""),
            ("CREDENTIALS_DIRECTORY", &creds_text)
        ]),
        Some("from-credential".to_owned())
    );
    assert_eq!(read(&[]), Some("from-file".to_owned()));
    // A credentials directory without this credential falls through.
    let other = dir.path().display().to_string();
    assert_eq!(
        read(&[("CREDENTIALS_DIRECTORY", &other)]),
        Some("from-file".to_owned())
    );
    // No source at all: trust or peer authentication.
    let none = pg(parse("backend = \"postgres\"\nurl = \"postgres://coax@db/coax\"\n").unwrap());
    assert_eq!(none.password, None);
}

#[test]
fn password_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    for mode in [0o640, 0o604, 0o644] {
        let file = password_file(dir.path(), PASSWORD, mode);
        let store = format!(
            "backend = \"postgres\"\nurl = \"postgres://coax@db/coax\"\npassword_file = \"{}\"\n",
            file.display()
        );
        let err = parse(&store).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("chmod 600"), "{text}");
        assert!(text.contains(&format!("{mode:04o}")), "{text}");
        assert!(!text.contains(PASSWORD), "{text}");
    }
    // Empty, a directory, and a FIFO are refused too.
    let empty = password_file(dir.path(), "\n", 0o600);
    assert!(load_password(Some(&empty), &env_of(&[])).is_err());
    let err = load_password(Some(dir.path()), &env_of(&[])).expect_err("a directory");
    assert!(err.to_string().contains("a directory"), "{err}");
}

#[test]
fn db_password_debug_is_redacted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = password_file(dir.path(), &format!("{PASSWORD}\n"), 0o600);
    let store = format!(
        "backend = \"postgres\"\nurl = \"postgres://coax@db/coax\"\npassword_file = \"{}\"\n",
        file.display()
    );
    let config = parse(&store).expect("valid");
    let p = pg(config.clone());
    assert_eq!(p.password.as_ref().map(DbPassword::expose), Some(PASSWORD));
    let debug = format!("{config:?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
    assert!(debug.contains("DbPassword(<redacted>)"), "{debug}");
}

#[test]
fn with_a_password_and_no_sslmode_tls_is_required() {
    let env = env_of(&[(DB_PASSWORD_ENV, PASSWORD)]);
    let store = "backend = \"postgres\"\nurl = \"postgres://coax@db/coax\"\n";
    assert_eq!(pg(parse_with(store, &env).unwrap()).tls, TlsMode::Require);
    let prefer = store.replace("/coax\"", "/coax?sslmode=prefer\"");
    assert_eq!(pg(parse_with(&prefer, &env).unwrap()).tls, TlsMode::Prefer);
    assert_eq!(pg(parse(store).unwrap()).tls, TlsMode::Prefer);
}
