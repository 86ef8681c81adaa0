//! Hostile tests of the PostgreSQL slice from outside: secrets in messages
//! and logs, the password file, TLS modes failing closed, a lost or silent
//! server, crafted import streams, and import/export interrupted.
//!
//! Tests marked `#[ignore = "defect: ..."]` show a defect still open; the
//! others pin behaviour that an attack did not break.

use crate::helpers::command::Run;
use crate::helpers::daemon::binary;
use crate::helpers::postgres::{self, PgCluster, count};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::config::Config;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `coax-scheduler <command> --config dir/config.toml` with `stdin`,
/// the test role's password in the environment and `env` added.
async fn run_with(command: &str, dir: &Path, stdin: &str, env: &[(&str, &str)]) -> Run {
    let mut all = vec![("COAX_SCHEDULER_DB_PASSWORD", postgres::PASSWORD)];
    all.extend_from_slice(env);
    crate::helpers::command::run_with(command, dir, stdin, &all).await
}

async fn run(command: &str, dir: &Path, stdin: &str) -> Run {
    run_with(command, dir, stdin, &[]).await
}

/// A dir whose config.toml points at `cluster` with `query` on the URL.
fn target(cluster: &PgCluster, query: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    cluster.write_config(dir.path(), "http://127.0.0.1:9", query);
    dir
}

const HEADER: &str = r#"{"format":"coax-scheduler-export","version":1,"schema":10,"exported_at":"2026-03-02T12:00:00.000Z"}"#;

/// One job line with `id`, `payload` (a JSON value) and `tags` (JSON).
fn job(id: i64, payload: &str, tags: &str) -> String {
    format!(
        r#"{{"type":"job","id":{id},"key":null,"kind":"message","channel":"sms","enquiry_id":null,"state":"scheduled","scheduled_at":1,"due_at":1,"expires_at":null,"timezone":null,"window":null,"after":null,"after_delay_ms":null,"after_ttl_ms":null,"attempts":0,"created_at":1,"updated_at":1,"last_error":null,"result":null,"payload":{payload},"tags":{tags},"history":[]}}"#
    )
}

fn stream(jobs: &[String]) -> String {
    format!(
        "{HEADER}\n{}\n{{\"type\":\"end\",\"jobs\":{},\"schedules\":0}}\n",
        jobs.join("\n"),
        jobs.len()
    )
}

/// Config text for backend = "postgres" with `url`, checked offline.
fn load_url(url: &str) -> Result<Config, String> {
    let text = format!(
        "[coax]\nbase_url = \"http://127.0.0.1:9\"\n[store]\nbackend = \"postgres\"\nurl = {url:?}\n[socket]\npath = \"coax.sock\"\n"
    );
    let env = |name: &str| (name == "COAX_API_KEY").then(|| "ck_test_key".to_owned());
    Config::from_toml(&text, Path::new("/tmp/config.toml"), &env).map_err(|e| e.to_string())
}

/// Every odd spelling of a password in `store.url` is refused, and the
/// message repeats neither the password nor the URL.
#[test]
fn pg_url_password_spellings_are_refused_without_echo() {
    let secret = "hunter2-SECRET";
    let urls = [
        format!("postgres://coax:{secret}@db/coax"),
        format!("postgresql://coax:{secret}@db/coax"),
        format!("postgres://coax:{secret}@db:5432/coax?sslmode=require"),
        format!("postgres://coax:p%40{secret}@db/coax"),
        format!("postgres://coax:{secret}/x@db/coax"),
        format!("postgres://coax:{secret}?y@db/coax"),
        format!("postgres://coax@db/coax?password={secret}"),
        format!("postgres://coax@db/coax?sslmode=disable&password={secret}"),
        format!("postgres://coax@db/coax?pass%77ord={secret}"),
        format!("postgres://coax@db/coax?Password={secret}"),
        format!("postgres://coax@db/coax?PASSWORD={secret}"),
        format!("postgres://coax@db/coax?user=coax:{secret}&password={secret}"),
        format!("host=db user=coax password={secret} dbname=coax"),
        format!("postgres://coax@db/coax?host=db&password={secret}"),
        "postgres://coax:@db/coax".to_owned(),
    ];
    for url in &urls {
        match load_url(url) {
            Ok(config) => {
                let pg = config.store.postgres.expect("postgres");
                assert!(
                    pg.connect.get_password().is_none(),
                    "{url} was taken with a password in it"
                );
                let shown = format!("{pg:?} {}", pg.describe());
                assert!(!shown.contains(secret), "{url}: {shown}");
            }
            Err(message) => assert!(!message.contains(secret), "{url}: {message}"),
        }
    }
}

/// A password percent-encoded into the user name (`coax%3Asecret@`) is
/// not seen as a password: the user name, secret and all, is then shown
/// by `describe` (in every connection error and in check-config).
#[test]
fn pg_url_percent_encoded_colon_in_user_hides_a_password() {
    let secret = "hunter2-SECRET";
    let url = format!("postgres://coax%3A{secret}@db/coax");
    match load_url(&url) {
        Ok(config) => {
            let pg = config.store.postgres.expect("postgres");
            let shown = pg.describe();
            assert!(!shown.contains(secret), "describe() shows it: {shown}");
        }
        Err(message) => assert!(!message.contains(secret), "{message}"),
    }
}

/// A password file that is a FIFO, a directory, empty, group-readable,
/// or not UTF-8 is refused with a message naming the file and never its
/// bytes; CRLF endings are not part of the password; a symlink to a
/// private file is followed.
#[test]
fn pg_password_file_oddities() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let base = "[coax]\nbase_url = \"http://127.0.0.1:9\"\n[store]\nbackend = \"postgres\"\nurl = \"postgres://coax@db/coax\"\npassword_file = \"pw\"\n[socket]\npath = \"coax.sock\"\n";
    let env = |name: &str| (name == "COAX_API_KEY").then(|| "ck_test_key".to_owned());
    let pw = dir.path().join("pw");
    let load = || Config::from_toml(base, &dir.path().join("config.toml"), &env);
    let private = |path: &Path| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap()
    };

    std::fs::write(&pw, "s3cret-SECRET\r\n").unwrap();
    private(&pw);
    let config = load().unwrap();
    assert!(!format!("{config:?}").contains("s3cret"), "{config:?}");
    let pg = config.store.postgres.unwrap();
    assert_eq!(pg.password.unwrap().expose(), "s3cret-SECRET");

    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = load().unwrap_err().to_string();
    assert!(err.contains("group or others"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");

    std::fs::write(&pw, b"\xffs3cret-SECRET\xfe\n").unwrap();
    private(&pw);
    let err = load().unwrap_err().to_string();
    assert!(!err.contains("s3cret"), "{err}");

    std::fs::write(&pw, "\n").unwrap();
    let err = load().unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");

    std::fs::remove_file(&pw).unwrap();
    let fifo = std::ffi::CString::new(pw.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let started = Instant::now();
    let err = load().unwrap_err().to_string();
    assert!(err.contains("FIFO"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "blocked on a FIFO"
    );
    std::fs::remove_file(&pw).unwrap();

    std::fs::create_dir(&pw).unwrap();
    let err = load().unwrap_err().to_string();
    assert!(err.contains("directory"), "{err}");
    std::fs::remove_dir(&pw).unwrap();

    let real = dir.path().join("real");
    std::fs::write(&real, "linked-SECRET\n").unwrap();
    private(&real);
    std::os::unix::fs::symlink(&real, &pw).unwrap();
    let pg = load().unwrap().store.postgres.unwrap();
    assert_eq!(pg.password.unwrap().expose(), "linked-SECRET");
    std::fs::remove_file(&pw).unwrap();

    // A huge file is capped, not read whole.
    let huge = std::fs::File::create(&pw).unwrap();
    huge.set_len(64 << 20).unwrap();
    private(&pw);
    let err = load().unwrap_err().to_string();
    assert!(err.contains("pw"), "{err}");
}

/// A server that accepts the connection and never answers: `export` and
/// `import` must give up with a message, not hang for as long as the
/// peer keeps the socket open. tokio-postgres has no connect timeout by
/// default and none is set when store.url has no connect_timeout.
#[tokio::test]
async fn pg_silent_server_export_and_import_time_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold every connection, saying nothing.
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming().take(2) {
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(90));
        drop(open);
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[coax]\nbase_url = \"http://127.0.0.1:9\"\n[store]\nbackend = \"postgres\"\nurl = \"postgres://coax@127.0.0.1:{port}/coax\"\n[socket]\npath = \"coax.sock\"\n"
        ),
    )
    .unwrap();
    for command in ["export", "import"] {
        let mut child = Command::new(binary())
            .arg(command)
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .env("COAX_SCHEDULER_DB_PASSWORD", postgres::PASSWORD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Far beyond any sensible connect timeout; only a hang reaches it.
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let status = status.unwrap_or_else(|| panic!("{command} still waiting after 40 s"));
        assert!(!status.success(), "{command} succeeded against nothing");
    }
    drop(held);
}

/// `require` against a server without TLS fails rather than going plain;
/// `prefer` falls back to plain; `verify-full` with a missing or garbage
/// sslrootcert fails before connecting; none of it shows the password.
#[tokio::test]
async fn pg_tls_modes_fail_closed_against_a_plain_server() {
    let cluster = PgCluster::start().await;
    let dir = cluster.dir.path();
    let connect = |query: &str| {
        let config = cluster.load(query);
        async move { coax_scheduler::store::postgres::connect(&config).await }
    };
    let err = connect("sslmode=require")
        .await
        .expect_err("no TLS offered");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(postgres::PASSWORD), "{text}");
    let client = connect("sslmode=prefer").await.expect("prefer falls back");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!ssl);

    let missing = format!(
        "sslmode=verify-full&sslrootcert={}",
        dir.join("nope.pem").display()
    );
    let err = connect(&missing).await.expect_err("missing CA file");
    assert!(err.to_string().contains("nope.pem"), "{err}");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let err = connect(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        garbage.display()
    ))
    .await
    .expect_err("garbage CA file");
    assert!(err.to_string().contains("no usable PEM"), "{err}");
    // The public CAs cannot vouch for a server that offers no TLS at all.
    let err = connect("sslmode=verify-full")
        .await
        .expect_err("verify-full against a plain server");
    assert!(!err.to_string().contains(postgres::PASSWORD), "{err}");
}

/// With RUST_LOG=trace, nothing that import or export logs carries the
/// database password, on success or on a refused password.
#[tokio::test]
async fn pg_trace_logs_never_carry_the_password() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let trace = [("RUST_LOG", "trace")];
    let imported = run_with(
        "import",
        into.path(),
        &stream(&[job(1, r#""{}""#, r#"["a"]"#)]),
        &trace,
    )
    .await;
    assert!(imported.ok, "{}", imported.stderr);
    let exported = run_with("export", into.path(), "", &trace).await;
    assert!(exported.ok, "{}", exported.stderr);
    for out in [&imported.stdout, &imported.stderr, &exported.stderr] {
        assert!(!out.contains(postgres::PASSWORD), "{out}");
    }
    let wrong = "wrong-SECRET-77aa";
    let refused = run_with(
        "export",
        into.path(),
        "",
        &[("RUST_LOG", "trace"), ("COAX_SCHEDULER_DB_PASSWORD", wrong)],
    )
    .await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("password authentication failed"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains(wrong), "{}", refused.stderr);
    assert!(!refused.stdout.contains(wrong), "{}", refused.stdout);
}

/// PostgreSQL TEXT cannot hold U+0000; a stream whose payload or tag has
/// one (SQLite keeps it) is refused by line, and nothing is kept.
#[tokio::test]
async fn pg_import_nul_in_text_is_refused_by_line() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let client = cluster.superuser(postgres::DATABASE).await;
    let good = job(1, r#""{}""#, r#"["a"]"#);
    for bad in [
        job(2, r#""{\"m\":\"a\u0000b\"}""#, r#"["a"]"#),
        job(2, r#""{}""#, r#"["a\u0000b"]"#),
    ] {
        let out = run("import", into.path(), &stream(&[good.clone(), bad])).await;
        assert!(!out.ok, "a NUL was imported");
        assert!(out.stderr.contains("line 3"), "{}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 0);
        assert_eq!(count(&client, "SELECT count(*) FROM job_tags").await, 0);
    }
}

/// Ids at the edges: i64::MAX, 0 and negative ones either go in whole or
/// are refused whole (they are refused: no client could address them), and
/// an import of the highest id there may be exports back.
#[tokio::test]
async fn pg_import_extreme_ids() {
    const MAX_ID: i64 = (1 << 53) - 1;
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let client = cluster.superuser(postgres::DATABASE).await;
    for id in [0, -1, i64::MIN, i64::MAX] {
        let out = run("import", into.path(), &stream(&[job(id, r#""{}""#, "[]")])).await;
        let jobs = count(&client, "SELECT count(*) FROM jobs").await;
        assert_eq!(jobs, i64::from(out.ok), "id {id}: {}", out.stderr);
        if out.ok {
            client.batch_execute("DELETE FROM jobs").await.unwrap();
        }
    }
    let out = run(
        "import",
        into.path(),
        &stream(&[job(MAX_ID, r#""{}""#, r#"["x"]"#)]),
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 1);
    let exported = run("export", into.path(), "").await;
    assert!(exported.ok, "{}", exported.stderr);
    assert!(
        exported.stdout.contains(&format!("\"id\":{MAX_ID}")),
        "{}",
        exported.stdout
    );
}

/// Many tags on one job and duplicate ids across the pipeline's batch
/// boundary: the tags all go in, the duplicate is named by its line.
#[tokio::test]
async fn pg_import_many_tags_and_duplicates_across_batches() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let client = cluster.superuser(postgres::DATABASE).await;
    let mut jobs: Vec<String> = (1..=300).map(|id| job(id, r#""{}""#, "[]")).collect();
    jobs[299] = job(256, r#""{}""#, "[]");
    let out = run("import", into.path(), &stream(&jobs)).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("line 301: job id 256"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 0);

    let tags: Vec<String> = (0..20_000).map(|i| format!("\"t{i}\"")).collect();
    let out = run(
        "import",
        into.path(),
        &stream(&[job(7, r#""{}""#, &format!("[{}]", tags.join(",")))]),
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        count(&client, "SELECT count(*) FROM job_tags").await,
        20_000
    );
}

/// An import of `whole` into the store configured in `into`, fed its first
/// `lines` lines and waited on until it holds its advisory lock (its
/// transaction is open); the rest of the stream is the caller's to write.
async fn import_under_way(
    client: &tokio_postgres::Client,
    into: &Path,
    whole: &str,
    lines: usize,
) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = Command::new(binary())
        .arg("import")
        .arg("--config")
        .arg(into.join("config.toml"))
        .env("COAX_SCHEDULER_DB_PASSWORD", postgres::PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let first: String = whole
        .lines()
        .take(lines)
        .map(|l| format!("{l}\n"))
        .collect();
    input.write_all(first.as_bytes()).unwrap();
    input.flush().unwrap();
    wait_until("the import to take its lock", PATIENCE, || async {
        (advisory_locks(client).await > 0).then_some(())
    })
    .await;
    (child, input)
}

async fn advisory_locks(client: &tokio_postgres::Client) -> i64 {
    count(
        client,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted",
    )
    .await
}

/// The lines of `whole` after the first `lines`, each with its newline.
fn rest_of(whole: &str, lines: usize) -> String {
    whole
        .lines()
        .skip(lines)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// An import killed with SIGKILL mid-stream leaves no rows and no lock:
/// the next import of the whole stream succeeds.
#[tokio::test]
async fn pg_import_killed_midstream_leaves_database_importable() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let client = cluster.superuser(postgres::DATABASE).await;
    let jobs: Vec<String> = (1..=2000)
        .map(|id| job(id, r#""{}""#, r#"["a"]"#))
        .collect();
    let whole = stream(&jobs);
    // Half the stream; once the import holds its lock and has sent rows,
    // kill it.
    let (mut child, input) = import_under_way(&client, into.path(), &whole, 1000).await;
    child.kill().unwrap();
    child.wait().unwrap();
    drop(input);
    wait_until("the lock to go with the importer", PATIENCE, || async {
        (advisory_locks(&client).await == 0).then_some(())
    })
    .await;
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 0);
    let out = run("import", into.path(), &whole).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 2000);
}

/// The server restarted mid-import: a clear outage error, nothing kept,
/// and the database importable afterwards.
#[tokio::test]
async fn pg_import_server_restart_midstream_keeps_nothing() {
    let mut cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let jobs: Vec<String> = (1..=600).map(|id| job(id, r#""{}""#, r#"["a"]"#)).collect();
    let whole = stream(&jobs);
    let (child, mut input) = {
        let client = cluster.superuser(postgres::DATABASE).await;
        import_under_way(&client, into.path(), &whole, 300).await
    };
    cluster.restart();
    let rest = rest_of(&whole, 300);
    let _ = input.write_all(rest.as_bytes());
    drop(input);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert!(!stderr.contains(postgres::PASSWORD), "{stderr}");
    let client = cluster.superuser(postgres::DATABASE).await;
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 0);
    let out = run("import", into.path(), &whole).await;
    assert!(out.ok, "{}", out.stderr);
}

/// Export to a full disk fails, and says so; export of a PostgreSQL store
/// imports into SQLite and exports the same stream again.
#[tokio::test]
async fn pg_export_to_dev_full_fails_and_round_trips_through_sqlite() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let jobs: Vec<String> = (1..=3)
        .map(|id| job(id, r#""{\"m\":\"é☃\"}""#, r#"["a","b"]"#))
        .collect();
    let out = run("import", into.path(), &stream(&jobs)).await;
    assert!(out.ok, "{}", out.stderr);

    let full = std::fs::File::options().write(true).open("/dev/full");
    if let Ok(full) = full {
        let status = Command::new(binary())
            .arg("export")
            .arg("--config")
            .arg(into.path().join("config.toml"))
            .env("COAX_SCHEDULER_DB_PASSWORD", postgres::PASSWORD)
            .stdout(full)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "an export to /dev/full succeeded");
    }

    let from_pg = run("export", into.path(), "").await;
    assert!(from_pg.ok, "{}", from_pg.stderr);
    let sqlite = tempfile::tempdir().unwrap();
    std::fs::write(
        sqlite.path().join("config.toml"),
        "[coax]\nbase_url = \"http://127.0.0.1:9\"\n[store]\npath = \"q.db\"\n[socket]\npath = \"coax.sock\"\n",
    )
    .unwrap();
    let imported = run("import", sqlite.path(), &from_pg.stdout).await;
    assert!(imported.ok, "{}", imported.stderr);
    let again = run("export", sqlite.path(), "").await;
    assert!(again.ok, "{}", again.stderr);
    let body = |s: &str| s.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(body(&from_pg.stdout), body(&again.stdout));
}

/// A role that may not create tables: import fails naming the right, and
/// leaves no table behind.
#[tokio::test]
async fn pg_import_role_without_create_leaves_nothing() {
    let cluster = PgCluster::start().await;
    cluster
        .sql("CREATE ROLE weak LOGIN PASSWORD 'weak-SECRET-1'")
        .await;
    cluster.sql("CREATE DATABASE weakdb OWNER coax_super").await;
    cluster
        .superuser("weakdb")
        .await
        .batch_execute(
            "REVOKE ALL ON SCHEMA public FROM PUBLIC; GRANT USAGE ON SCHEMA public TO weak",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = cluster
        .config_text("http://127.0.0.1:9", "")
        .replace("postgres://coax@", "postgres://weak@")
        .replace(&format!("/{}?", postgres::DATABASE), "/weakdb?");
    assert!(
        text.contains("postgres://weak@") && text.contains("/weakdb?"),
        "{text}"
    );
    std::fs::write(dir.path().join("config.toml"), text).unwrap();
    let out = run_with(
        "import",
        dir.path(),
        &stream(&[job(1, r#""{}""#, "[]")]),
        &[("COAX_SCHEDULER_DB_PASSWORD", "weak-SECRET-1")],
    )
    .await;
    assert!(!out.ok);
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    assert!(!out.stderr.contains("weak-SECRET-1"), "{}", out.stderr);
    let client = cluster.superuser("weakdb").await;
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        .await,
        0
    );
}

/// Two imports at once into the same empty database: exactly one wins,
/// the other is refused as "in use" or "not empty", never a mixture.
#[tokio::test]
async fn pg_two_imports_at_once_one_wins() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let a: Vec<String> = (1..=500).map(|id| job(id, r#""{}""#, "[]")).collect();
    let b: Vec<String> = (1001..=1500).map(|id| job(id, r#""{}""#, "[]")).collect();
    let (sa, sb) = (stream(&a), stream(&b));
    let (ra, rb) = tokio::join!(
        run("import", into.path(), &sa),
        run("import", into.path(), &sb)
    );
    assert!(ra.ok != rb.ok, "a: {}\nb: {}", ra.stderr, rb.stderr);
    let client = cluster.superuser(postgres::DATABASE).await;
    assert_eq!(count(&client, "SELECT count(*) FROM jobs").await, 500);
    let low = count(&client, "SELECT count(*) FROM jobs WHERE id <= 500").await;
    assert_eq!(low == 500, ra.ok);
}

/// Someone else's `jobs` in `public`, and a schema named after the role
/// for the queue, as the refusal's own advice says ("or another schema
/// (search_path)"): with the default search_path (`"$user", public`) new
/// tables go to the role's schema, but the check for foreign tables looks
/// through the whole search_path, finds `public.jobs` and refuses.
#[tokio::test]
async fn pg_import_into_own_schema_beside_foreign_public_jobs() {
    let cluster = PgCluster::start().await;
    let admin = cluster.superuser(postgres::DATABASE).await;
    admin
        .batch_execute(
            "CREATE TABLE public.jobs (id int); INSERT INTO public.jobs VALUES (42);
             CREATE SCHEMA coax AUTHORIZATION coax;",
        )
        .await
        .unwrap();
    let into = target(&cluster, "");
    let out = run("import", into.path(), &stream(&[job(1, r#""{}""#, "[]")])).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(count(&admin, "SELECT count(*) FROM coax.jobs").await, 1);
    assert_eq!(count(&admin, "SELECT count(*) FROM public.jobs").await, 1);
}

/// The export's connection killed mid-stream (pg_terminate_backend): the
/// export fails, and its output has no end line, so that an import of it
/// is refused as cut short.
#[tokio::test]
async fn pg_export_connection_killed_midstream_has_no_end_line() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let payload = format!("\"{}\"", "x".repeat(2000));
    let jobs: Vec<String> = (1..=3000).map(|id| job(id, &payload, "[]")).collect();
    let out = run("import", into.path(), &stream(&jobs)).await;
    assert!(out.ok, "{}", out.stderr);
    let child = Command::new(binary())
        .arg("export")
        .arg("--config")
        .arg(into.path().join("config.toml"))
        .env("COAX_SCHEDULER_DB_PASSWORD", postgres::PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Not reading stdout: the export blocks on its pipe inside its snapshot.
    let admin = cluster.superuser("postgres").await;
    wait_until(
        "the export to begin, and its backend to be ended",
        PATIENCE,
        || async {
            let killed = count(
                &admin,
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'coax-scheduler' AND xact_start IS NOT NULL) t",
            )
            .await;
            (killed > 0).then_some(())
        },
    )
    .await;
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(!stdout.contains("\"type\":\"end\""), "{stderr}");
    assert!(!stderr.contains(postgres::PASSWORD), "{stderr}");
}

/// The converse: a coax-scheduler queue already in `public` (migrated,
/// still empty) and a new schema for a second queue first on the
/// search_path. `to_regclass('coax_schema')` finds public's, so nothing is
/// created in the new schema and the import's rows land in the other
/// queue's tables in `public`.
#[tokio::test]
async fn pg_import_lands_in_another_schemas_queue() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let out = run("import", into.path(), &stream(&[])).await;
    assert!(out.ok, "{}", out.stderr);
    let admin = cluster.superuser(postgres::DATABASE).await;
    assert_eq!(count(&admin, "SELECT count(*) FROM public.jobs").await, 0);
    admin
        .batch_execute("CREATE SCHEMA coax AUTHORIZATION coax")
        .await
        .unwrap();
    let out = run("import", into.path(), &stream(&[job(1, r#""{}""#, "[]")])).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        count(&admin, "SELECT count(*) FROM public.jobs").await,
        0,
        "the import wrote into public's queue, not the first schema on the search_path"
    );
}

/// The server's certificate expired (re-signed by the same CA with its end
/// before its start): verify-full and verify-ca refuse it, require (which
/// checks no certificate, as libpq's) still connects.
#[tokio::test]
async fn pg_tls_expired_certificate_is_refused_when_verifying() {
    let mut cluster = PgCluster::start_tls().await;
    let ca = cluster.ca.clone().expect("a CA");
    let dir = cluster.dir.path().to_owned();
    postgres::certs::sign_server(&dir, "-1", "expired.pem");
    // Written over the file the server owns, keeping its owner and mode.
    std::fs::write(
        dir.join("server.pem"),
        std::fs::read(dir.join("expired.pem")).unwrap(),
    )
    .unwrap();
    cluster.restart();
    let load = |host: &str, query: &str| {
        let url = cluster.url(host, query);
        let text = cluster
            .config_text("http://127.0.0.1:9", "")
            .replace(&cluster.url("127.0.0.1", ""), &url);
        let env = |name: &str| match name {
            "COAX_API_KEY" => Some("ck_test_key".to_owned()),
            "COAX_SCHEDULER_DB_PASSWORD" => Some(postgres::PASSWORD.to_owned()),
            _ => None,
        };
        Config::from_toml(&text, &dir.join("config.toml"), &env)
            .unwrap()
            .store
            .postgres
            .unwrap()
    };
    let root = format!("sslrootcert={}", ca.display());
    for (host, mode) in [("localhost", "verify-full"), ("127.0.0.1", "verify-ca")] {
        let err = coax_scheduler::store::postgres::connect(&load(
            host,
            &format!("sslmode={mode}&{root}"),
        ))
        .await
        .expect_err("an expired certificate is refused");
        let text = err.to_string();
        assert!(text.contains("Expired"), "{mode}: {text}");
        assert!(!text.contains(postgres::PASSWORD), "{text}");
    }
    coax_scheduler::store::postgres::connect(&load("127.0.0.1", "sslmode=require"))
        .await
        .expect("require does not check the certificate");
}

/// An export taken while an import is under way sees none of the import's
/// rows (they are not committed): an empty queue with its end line, never
/// part of one.
#[tokio::test]
async fn pg_export_during_an_import_sees_none_of_it() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let jobs: Vec<String> = (1..=600).map(|id| job(id, r#""{}""#, "[]")).collect();
    let whole = stream(&jobs);
    let admin = cluster.superuser(postgres::DATABASE).await;
    // The import holds its lock inside its open transaction.
    let (child, mut input) = import_under_way(&admin, into.path(), &whole, 400).await;
    let exported = run("export", into.path(), "").await;
    let rest = rest_of(&whole, 400);
    input.write_all(rest.as_bytes()).unwrap();
    drop(input);
    let imported = child.wait_with_output().unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    if exported.ok {
        assert!(
            exported
                .stdout
                .contains(r#"{"type":"end","jobs":0,"schedules":0}"#),
            "{}",
            exported.stdout
        );
    }
    let after = run("export", into.path(), "").await;
    assert!(after.ok, "{}", after.stderr);
    assert!(
        after
            .stdout
            .contains(r#"{"type":"end","jobs":600,"schedules":0}"#),
        "{}",
        after.stderr
    );
}

/// `check-config`, which the README's move to PostgreSQL runs to check
/// the new config, says OK for an `sslrootcert` that does not exist or
/// holds no certificate: the mistake shows only when import or export
/// connects. The password file, by contrast, is read and checked.
#[test]
fn pg_check_config_accepts_a_missing_sslrootcert() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    for ca in ["missing-ca.pem", "garbage.pem"] {
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "[coax]\nbase_url = \"http://127.0.0.1:9\"\n[store]\nbackend = \"postgres\"\nurl = \"postgres://coax@db.internal/coax?sslmode=verify-full&sslrootcert={ca}\"\n[socket]\npath = \"coax.sock\"\n"
            ),
        )
        .unwrap();
        let out = Command::new(binary())
            .arg("check-config")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .env("COAX_API_KEY", "ck_test_key")
            .env("COAX_SCHEDULER_DB_PASSWORD", "pw-SECRET")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{ca}: check-config said {stdout}");
    }
}

/// A payload of 8 MiB goes in whole and comes out the same.
#[tokio::test]
async fn pg_import_large_payload_round_trips() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    let big = "y".repeat(8 << 20);
    let out = run(
        "import",
        into.path(),
        &stream(&[job(3, &format!("\"{big}\""), "[]")]),
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    let client = cluster.superuser(postgres::DATABASE).await;
    assert_eq!(
        count(
            &client,
            "SELECT length(payload)::bigint FROM jobs WHERE id = 3"
        )
        .await,
        8 << 20
    );
    let exported = run("export", into.path(), "").await;
    assert!(exported.ok, "{}", exported.stderr);
    assert!(exported.stdout.contains(&big));
}

/// A `coax_schema` whose `version` column is not INTEGER (another tool's,
/// or a hand edit): import and export must refuse with a message, not
/// panic on `Row::get`.
#[tokio::test]
async fn pg_foreign_coax_schema_column_type_does_not_panic() {
    let cluster = PgCluster::start().await;
    let into = target(&cluster, "");
    cluster
        .superuser(postgres::DATABASE)
        .await
        .batch_execute(
            "CREATE TABLE coax_schema (version BIGINT PRIMARY KEY, applied_at BIGINT);
             INSERT INTO coax_schema VALUES (1, 0);
             ALTER TABLE coax_schema OWNER TO coax;",
        )
        .await
        .unwrap();
    for command in ["import", "export"] {
        let out = run(command, into.path(), &stream(&[])).await;
        assert!(!out.ok, "{command}: {}", out.stdout);
        assert!(
            !out.stderr.contains("panicked"),
            "{command}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("coax_schema"),
            "{command}: {}",
            out.stderr
        );
    }
}

/// A plain impostor on the server's port: it declines TLS ('N') and asks
/// for the password in clear text. What it received, once the client is
/// done with it.
fn impostor() -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let Ok((mut socket, _)) = listener.accept() else {
            return Vec::new();
        };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(10)));
        let mut got = Vec::new();
        let mut head = [0u8; 8];
        if socket.read_exact(&mut head).is_err() {
            return got;
        }
        got.extend_from_slice(&head);
        if head[4..8] == 80_877_103u32.to_be_bytes() {
            // SSLRequest: no TLS here.
            let _ = socket.write_all(b"N");
            let mut len = [0u8; 4];
            if socket.read_exact(&mut len).is_err() {
                return got;
            }
            let mut rest = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
            let _ = socket.read_exact(&mut rest);
            got.extend_from_slice(&rest);
        } else {
            let len = u32::from_be_bytes(head[0..4].try_into().unwrap()) as usize;
            let mut rest = vec![0u8; len.saturating_sub(8)];
            let _ = socket.read_exact(&mut rest);
            got.extend_from_slice(&rest);
        }
        // AuthenticationCleartextPassword.
        let _ = socket.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
        let mut buf = [0u8; 256];
        while let Ok(n) = socket.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    (port, handle)
}

/// With `require` or `verify-full`, an impostor that declines TLS never
/// gets the password: the client stops at the 'N'.
#[tokio::test]
async fn pg_impostor_declining_tls_never_gets_the_password() {
    let secret = "impostor-SECRET-5e1f";
    for mode in ["require", "verify-ca", "verify-full"] {
        let (port, handle) = impostor();
        let text = format!(
            "[coax]\nbase_url = \"http://127.0.0.1:9\"\n[store]\nbackend = \"postgres\"\nurl = \"postgres://coax@localhost:{port}/coax?sslmode={mode}\"\n[socket]\npath = \"coax.sock\"\n"
        );
        let env = |name: &str| match name {
            "COAX_API_KEY" => Some("ck_test_key".to_owned()),
            "COAX_SCHEDULER_DB_PASSWORD" => Some(secret.to_owned()),
            _ => None,
        };
        let config = Config::from_toml(&text, Path::new("/tmp/config.toml"), &env).unwrap();
        let pg = config.store.postgres.unwrap();
        let err = coax_scheduler::store::postgres::connect(&pg)
            .await
            .expect_err("the impostor offers no TLS");
        assert!(!err.to_string().contains(secret), "{err}");
        let got = tokio::task::spawn_blocking(move || handle.join().unwrap())
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&got).contains(secret),
            "{mode}: the password went to the impostor"
        );
    }
}

/// `connect_timeout` in store.url, which the README says is passed on,
/// does not bound a server that accepts and never answers either:
/// tokio-postgres applies it to the TCP connect only, not to the startup
/// exchange, so the documented knob is no workaround.
#[test]
fn pg_connect_timeout_in_url_bounds_a_silent_server() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[coax]\nbase_url = \"http://127.0.0.1:9\"\n[store]\nbackend = \"postgres\"\nurl = \"postgres://coax@127.0.0.1:{port}/coax?connect_timeout=1\"\n[socket]\npath = \"coax.sock\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(binary())
        .arg("export")
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .env("COAX_SCHEDULER_DB_PASSWORD", "pw-SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Far beyond the 1 s asked for; only a hang reaches it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(listener);
    let status = status.expect("export still waiting 20 s after a 1 s connect_timeout");
    assert!(!status.success());
}

/// With the default `sslmode` (`prefer`), the same impostor declines TLS,
/// asks for the password in clear text and gets it: anyone who can answer
/// on the database's address harvests the password. libpq's `prefer` does
/// the same, but libpq has `require_auth` to refuse clear text; here the
/// default leaves no such guard.
#[tokio::test]
async fn pg_default_prefer_sends_the_password_in_clear_to_an_impostor() {
    let secret = "impostor-SECRET-prefer";
    let (port, handle) = impostor();
    let text = format!(
        "[coax]\nbase_url = \"http://127.0.0.1:9\"\n[store]\nbackend = \"postgres\"\nurl = \"postgres://coax@127.0.0.1:{port}/coax\"\n[socket]\npath = \"coax.sock\"\n"
    );
    let env = |name: &str| match name {
        "COAX_API_KEY" => Some("ck_test_key".to_owned()),
        "COAX_SCHEDULER_DB_PASSWORD" => Some(secret.to_owned()),
        _ => None,
    };
    let config = Config::from_toml(&text, Path::new("/tmp/config.toml"), &env).unwrap();
    let pg = config.store.postgres.unwrap();
    let _ = coax_scheduler::store::postgres::connect(&pg).await;
    let got = tokio::task::spawn_blocking(move || handle.join().unwrap())
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&got).contains(secret),
        "the password went to the impostor in clear text"
    );
}
