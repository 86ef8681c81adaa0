//! The PostgreSQL store's foundation against a real server: connecting with
//! each password source and over TLS, the schema's migrations, and the
//! daemon's start-up against a database it cannot reach.

use crate::helpers::daemon::binary;
use crate::helpers::postgres::{self, PgCluster};
use coax_scheduler::config::{Config, PostgresConfig};
use coax_scheduler::store::StoreError;
use coax_scheduler::store::postgres::{SCHEMA_VERSION, connect, migrate};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod transfer;

/// Loads `cluster`'s config with `extra` under `[store]` and `env`.
fn load(
    cluster: &PgCluster,
    extra: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PostgresConfig, String> {
    let text = cluster
        .config_text("http://127.0.0.1:9", "")
        .replace("[store]\n", &format!("[store]\n{extra}\n"));
    let with_key = |name: &str| match name {
        "COAX_API_KEY" => Some("ck_test_key".to_owned()),
        other => env(other),
    };
    Config::from_toml(&text, &cluster.dir.path().join("config.toml"), &with_key)
        .map(|c| c.store.postgres.expect("postgres"))
        .map_err(|e| e.to_string())
}

async fn current_user(config: &PostgresConfig) -> String {
    let client = connect(config).await.expect("connects");
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query")
        .get(0)
}

#[tokio::test]
async fn postgres_password_from_env_credential_and_file() {
    let cluster = PgCluster::start().await;
    let dir = cluster.dir.path();

    let env =
        |name: &str| (name == "COAX_SCHEDULER_DB_PASSWORD").then(|| postgres::PASSWORD.to_owned());
    assert_eq!(
        current_user(&load(&cluster, "", &env).unwrap()).await,
        "coax"
    );

    let creds = dir.join("creds");
    fs::create_dir(&creds).unwrap();
    fs::write(
        creds.join("coax-db-password"),
        format!("{}\n", postgres::PASSWORD),
    )
    .unwrap();
    let creds_text = creds.display().to_string();
    let env = |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| creds_text.clone());
    assert_eq!(
        current_user(&load(&cluster, "", &env).unwrap()).await,
        "coax"
    );

    let file = dir.join("db-password");
    fs::write(&file, format!("{}\n", postgres::PASSWORD)).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let extra = format!("password_file = \"{}\"", file.display());
    let config = load(&cluster, &extra, &|_| None).unwrap();
    assert_eq!(current_user(&config).await, "coax");

    // Readable by others: refused before any connection, naming the fix.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let err = load(&cluster, &extra, &|_| None).expect_err("refused");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(postgres::PASSWORD), "{err}");
}

#[tokio::test]
async fn postgres_wrong_password_is_named_without_the_password() {
    let cluster = PgCluster::start().await;
    let wrong = "wrong-SECRET-a1b2c3";
    let env = |name: &str| (name == "COAX_SCHEDULER_DB_PASSWORD").then(|| wrong.to_owned());
    let err = connect(&load(&cluster, "", &env).unwrap())
        .await
        .expect_err("a wrong password is refused");
    let text = err.to_string();
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("COAX_SCHEDULER_DB_PASSWORD"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(!err.is_unavailable(), "a refusal is not an outage: {text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!format!("{err:?}").contains(wrong), "{err:?}");

    // No password at all, where the server wants one.
    let err = connect(&load(&cluster, "", &|_| None).unwrap())
        .await
        .expect_err("no password");
    assert!(err.to_string().contains("password"), "{err}");
}

#[tokio::test]
async fn postgres_two_migrations_at_once_create_the_schema_once() {
    let cluster = PgCluster::start().await;
    let config = cluster.load("");
    let mut a = connect(&config).await.expect("a");
    let mut b = connect(&config).await.expect("b");
    let (ra, rb) = tokio::join!(migrate(&mut a, "coax"), migrate(&mut b, "coax"));
    let mut applied = [ra.expect("a migrates"), rb.expect("b migrates")];
    applied.sort();
    assert_eq!(applied, [0, SCHEMA_VERSION as usize]);
    let versions: Vec<i32> = a
        .query("SELECT version FROM coax_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    // The tables are there and take a job; a third start changes nothing.
    a.execute(
        "INSERT INTO jobs (kind, channel, scheduled_at, state, created_at, updated_at, payload)
         VALUES ('message', 'sms', 1, 'scheduled', 1, 1, '{\"b\":1,\"a\":2.50}')",
        &[],
    )
    .await
    .expect("insert a job");
    assert_eq!(migrate(&mut b, "coax").await.expect("again"), 0);
    let payload: String = b
        .query_one("SELECT payload FROM jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(payload, "{\"b\":1,\"a\":2.50}");
}

#[tokio::test]
async fn postgres_newer_schema_and_foreign_tables_are_refused() {
    let cluster = PgCluster::start().await;
    let config = cluster.load("");
    let mut client = connect(&config).await.expect("connects");

    client
        .batch_execute("CREATE TABLE jobs (id int)")
        .await
        .unwrap();
    let err = migrate(&mut client, "coax").await.expect_err("foreign");
    assert!(err.to_string().contains("not coax-scheduler's"), "{err}");
    client.batch_execute("DROP TABLE jobs").await.unwrap();

    migrate(&mut client, "coax").await.expect("migrates");
    client
        .execute(
            "INSERT INTO coax_schema (version, applied_at) VALUES ($1, 0)",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    match migrate(&mut client, "coax").await {
        Err(StoreError::TooNew {
            found, supported, ..
        }) => {
            assert_eq!(found, i64::from(SCHEMA_VERSION) + 1);
            assert_eq!(supported, i64::from(SCHEMA_VERSION));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn postgres_lost_server_counts_as_unavailable() {
    let mut cluster = PgCluster::start().await;
    let config = cluster.load("");
    let client = connect(&config).await.expect("connects");
    cluster.restart();
    let err = client
        .query_one("SELECT 1", &[])
        .await
        .map_err(coax_scheduler::store::postgres::pg_error("probing"))
        .expect_err("the old connection is gone");
    assert!(err.is_unavailable(), "{err:?}");
    // The restarted server takes new connections.
    let config = cluster.load("");
    connect(&config).await.expect("connects after the restart");
    cluster.stop();
    let err = connect(&config).await.expect_err("nothing listens");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
}

async fn ssl_in_use(config: &PostgresConfig) -> bool {
    connect(config)
        .await
        .expect("connects")
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[tokio::test]
async fn postgres_tls_require_and_verify_full_with_a_private_ca() {
    let cluster = PgCluster::start_tls().await;
    let ca = cluster.ca.clone().expect("a CA");
    let env =
        |name: &str| (name == "COAX_SCHEDULER_DB_PASSWORD").then(|| postgres::PASSWORD.to_owned());
    let with_url = |host: &str, query: &str| {
        let url = cluster.url(host, query);
        let text = cluster.config_text("http://127.0.0.1:9", "");
        let text = text.replace(&cluster.url("127.0.0.1", ""), &url);
        let with_key = |name: &str| match name {
            "COAX_API_KEY" => Some("ck_test_key".to_owned()),
            other => env(other),
        };
        Config::from_toml(&text, &cluster.dir.path().join("config.toml"), &with_key)
            .unwrap_or_else(|e| panic!("{e}"))
            .store
            .postgres
            .expect("postgres")
    };

    // require: encrypted, certificate not checked (it is not for 127.0.0.1).
    assert!(ssl_in_use(&with_url("127.0.0.1", "sslmode=require")).await);
    // prefer takes TLS when offered; disable does not.
    assert!(ssl_in_use(&with_url("127.0.0.1", "sslmode=prefer")).await);
    assert!(!ssl_in_use(&with_url("127.0.0.1", "sslmode=disable")).await);

    let root = format!("sslrootcert={}", ca.display());
    // verify-full: the chain to the private CA and the name localhost.
    let full = format!("sslmode=verify-full&{root}");
    assert!(ssl_in_use(&with_url("localhost", &full)).await);
    // verify-ca: the chain only, so 127.0.0.1 will do.
    let ca_only = format!("sslmode=verify-ca&{root}");
    assert!(ssl_in_use(&with_url("127.0.0.1", &ca_only)).await);

    // The certificate does not name 127.0.0.1.
    let err = connect(&with_url("127.0.0.1", &full))
        .await
        .expect_err("a wrong host name is refused");
    let text = err.to_string();
    assert!(text.contains("TLS"), "{text}");
    assert!(text.contains("not valid for name"), "{text}");
    assert!(!text.contains(postgres::PASSWORD), "{text}");
    // Without sslrootcert, the public CAs do not know the private one.
    let err = connect(&with_url("localhost", "sslmode=verify-full"))
        .await
        .expect_err("an unknown CA is refused");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[test]
fn postgres_check_config_passes_and_run_names_an_unreachable_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    fs::write(
        &config,
        "[coax]\nbase_url = \"http://127.0.0.1:9\"\n\n[store]\nbackend = \"postgres\"\n\
         url = \"postgres://coax@db.internal/coax?sslmode=verify-full\"\n\n\
         [socket]\npath = \"coax.sock\"\n",
    )
    .unwrap();
    let run = |command: &str| {
        std::process::Command::new(binary())
            .args(["--config"])
            .arg(&config)
            .arg(command)
            .env("COAX_API_KEY", "ck_test_key")
            .env("COAX_SCHEDULER_DB_PASSWORD", "pw-SECRET-77")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let check = run("check-config");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.contains("OK"), "{out}");
    assert!(
        out.contains("postgres://coax@db.internal:5432/coax"),
        "{out}"
    );
    assert!(!out.contains("pw-SECRET-77"), "{out}");

    // db.internal does not resolve here: the daemon stops at start-up,
    // naming the database and not the password.
    let started = run("run");
    let err = String::from_utf8_lossy(&started.stderr);
    assert!(!started.status.success(), "{err}");
    assert!(err.contains("db.internal"), "{err}");
    assert!(err.contains("connecting"), "{err}");
    assert!(!err.contains("pw-SECRET-77"), "{err}");
    assert!(!Path::new(&dir.path().join("coax.sock")).exists());
}
