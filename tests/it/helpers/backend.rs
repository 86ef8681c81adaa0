//! Which store the in-process test daemons run on.
//!
//! By default SQLite. With `COAX_TEST_BACKEND=postgres` every daemon the
//! fixture starts gets a database of its own in one throwaway cluster that
//! the whole test process shares (started on first use; see
//! [`super::postgres`]), so the same tests check both stores. A daemon
//! restarted in the same dir finds its database again: its URL is kept in
//! the dir.

use super::postgres::{DATABASE, PASSWORD, PgCluster, SUPERUSER, SUPERUSER_PASSWORD, USER};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The variable that chooses the backend.
pub const BACKEND_ENV: &str = "COAX_TEST_BACKEND";

/// Where the dir keeps its database's URL, and the role's password.
const URL_FILE: &str = "postgres-url";
const PASSWORD_FILE: &str = "db-password";

/// Whether the tests run on PostgreSQL.
pub fn postgres() -> bool {
    std::env::var(BACKEND_ENV).is_ok_and(|v| v == "postgres")
}

/// The shared cluster's port. The cluster runs for as long as the test
/// process: its owner is a thread that never ends, and the server goes
/// with the process (it is started with a parent-death signal).
fn port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cluster runtime");
            let cluster = runtime.block_on(PgCluster::start_for(300));
            tx.send(cluster.port)
                .expect("the test waits for the cluster");
            // Keeps the cluster (and its parent thread) alive.
            loop {
                std::thread::park();
            }
        });
        rx.recv()
            .expect("the shared PostgreSQL cluster did not start (see the panic above)")
    })
}

/// `config` made to run on this test process's backend in `dir`: on
/// PostgreSQL, `[store]` loses `path` and gains `backend`, `url` (a new database, or the
/// one this dir had) and a small `pool_size`.
pub async fn configure(config: &str, dir: &Path) -> String {
    if postgres() && !dir.join(URL_FILE).exists() {
        adopt(dir, &new_database().await);
    }
    rewrite(config, dir)
}

/// Makes the daemon of `dir` use the database at `url` (several dirs on
/// one URL are nodes of one queue): writes the URL and the role's password
/// where [`on_postgres`] finds them.
pub fn adopt(dir: &Path, url: &str) {
    std::fs::write(dir.join(URL_FILE), url).expect("write the database's URL");
    let password = dir.join(PASSWORD_FILE);
    std::fs::write(&password, PASSWORD).expect("write the password file");
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600))
        .expect("password file mode");
}

/// [`configure`] for a dir whose database exists (a reload).
pub fn rewrite(config: &str, dir: &Path) -> String {
    if !postgres() {
        return config.to_owned();
    }
    on_postgres(config, dir)
}

/// `config` on the database [`adopt`] gave `dir`, whichever backend this
/// test process runs on (for tests that need PostgreSQL itself).
pub fn on_postgres(config: &str, dir: &Path) -> String {
    let url = std::fs::read_to_string(dir.join(URL_FILE)).expect("the dir's database URL");
    let mut table: toml::Table = config.parse().expect("test config is TOML");
    let store = table
        .entry("store")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let store = store.as_table_mut().expect("[store] is a table");
    store.remove("path");
    store.insert("backend".into(), "postgres".into());
    store.insert("url".into(), url.into());
    store.insert(
        "password_file".into(),
        dir.join(PASSWORD_FILE).display().to_string().into(),
    );
    store
        .entry("pool_size")
        .or_insert_with(|| toml::Value::Integer(4));
    toml::to_string(&table).expect("config back to TOML")
}

/// Creates a database for one daemon; its URL.
pub async fn new_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let port = port();
    let name = format!(
        "{DATABASE}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(SUPERUSER)
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("the shared PostgreSQL cluster refused a connection: {e:?}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .batch_execute(&format!("CREATE DATABASE {name} OWNER {USER}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e:?}"));
    format!("postgres://{USER}@127.0.0.1:{port}/{name}?sslmode=disable")
}
