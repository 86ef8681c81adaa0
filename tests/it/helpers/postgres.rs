//! A throwaway PostgreSQL cluster for one test, from the installed server
//! binaries (the newest under /usr/lib/postgresql/*/bin).
//!
//! It listens on 127.0.0.1 on a free port, with its Unix socket in its own
//! temp dir, and asks for scram-sha-256 passwords on TCP so that the
//! password path is exercised. `initdb` and `postgres` refuse to run as
//! root, so as root they run as `nobody` (through `setpriv`), in a data dir
//! owned by it. The cluster is stopped (immediate shutdown) on drop, which
//! also runs when the test panics; should the test process die without
//! unwinding, the server gets SIGKILL from the kernel as its parent goes
//! (`PR_SET_PDEATHSIG`, set after `setpriv` changes user).
//!
//! A cluster that cannot start makes the test fail with the server's log:
//! a backend test never skips.

use coax_scheduler::config::{Config, PostgresConfig};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub mod certs;

use certs::make_certificates;

/// The superuser `initdb` creates, and its password.
pub const SUPERUSER: &str = "coax_super";
pub const SUPERUSER_PASSWORD: &str = "super-SECRET-b81f0e";
/// The role and database the daemon's config uses, and the role's password.
pub const USER: &str = "coax";
pub const DATABASE: &str = "coax";
pub const PASSWORD: &str = "coax-SECRET-3c9d27";

/// `nobody`: who runs the server when the tests run as root.
const NOBODY: u32 = 65534;

/// A running cluster; stopped on drop.
pub struct PgCluster {
    pub dir: TempDir,
    pub port: u16,
    /// With [`PgCluster::start_tls`]: the CA that signed the server's
    /// certificate (for host name `localhost` only).
    pub ca: Option<PathBuf>,
    bin: PathBuf,
    child: Option<Child>,
    tls: bool,
    /// The server's `max_connections`.
    connections: u32,
}

impl PgCluster {
    /// A cluster with plain TCP only.
    pub async fn start() -> PgCluster {
        PgCluster::init(false, 50).await
    }

    /// A cluster with plain TCP and room for `connections` at once (the
    /// one the test daemons share, see `super::backend`).
    pub async fn start_for(connections: u32) -> PgCluster {
        PgCluster::init(false, connections).await
    }

    /// A cluster with `ssl = on`, a throwaway CA, and a server certificate
    /// for `localhost` (not for 127.0.0.1) signed by it.
    pub async fn start_tls() -> PgCluster {
        PgCluster::init(true, 50).await
    }

    async fn init(tls: bool, connections: u32) -> PgCluster {
        let bin = server_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = geteuid() == 0;
        if root {
            // nobody must reach its files through the temp dir.
            set_mode(dir.path(), 0o755);
        }
        let data = dir.path().join("data");
        let run = dir.path().join("run");
        fs::create_dir(&data).expect("mkdir data");
        fs::create_dir(&run).expect("mkdir run");
        set_mode(&data, 0o700);
        let pwfile = dir.path().join("pwfile");
        fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write pwfile");
        set_mode(&pwfile, 0o600);
        for path in [&data, &run, &pwfile] {
            give_to_server(path);
        }
        let mut ca = None;
        if tls {
            ca = Some(make_certificates(dir.path()));
        }
        let initdb = as_server(Command::new(bin.join("initdb")))
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}/initdb: {e}", bin.display()));
        if !initdb.status.success() {
            panic!(
                "initdb failed ({}):\n{}\n{}",
                initdb.status,
                String::from_utf8_lossy(&initdb.stdout),
                String::from_utf8_lossy(&initdb.stderr)
            );
        }
        let mut cluster = PgCluster {
            dir,
            port: 0,
            ca,
            bin,
            child: None,
            tls,
            connections,
        };
        cluster.launch(None);
        cluster
            .sql(&format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"))
            .await;
        // CREATE DATABASE must be a statement of its own (no transaction).
        cluster
            .sql(&format!("CREATE DATABASE {DATABASE} OWNER {USER}"))
            .await;
        cluster
    }

    /// Starts the server on `port`, or a free one, and waits until it
    /// accepts connections; a port taken meanwhile is retried with another.
    fn launch(&mut self, port: Option<u16>) {
        let mut last_log = String::new();
        for attempt in 0..3 {
            let port = match port {
                Some(port) if attempt == 0 => port,
                _ => free_port(),
            };
            let log = self.dir.path().join("server.log");
            let log_file = fs::File::create(&log).expect("create server log");
            let mut command = as_server(Command::new(self.bin.join("postgres")));
            command
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-p", &port.to_string(), "-k"])
                .arg(self.dir.path().join("run"))
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    &format!("max_connections={}", self.connections),
                ])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log fd"))
                .stderr(log_file);
            if self.tls {
                let dir = self.dir.path();
                command.args([
                    "-c",
                    "ssl=on",
                    "-c",
                    &format!("ssl_cert_file={}", dir.join("server.pem").display()),
                    "-c",
                    &format!("ssl_key_file={}", dir.join("server.key").display()),
                ]);
            }
            let mut child = command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}/postgres: {e}", self.bin.display()));
            let pid_file = self.dir.path().join("data/postmaster.pid");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_log = fs::read_to_string(&log).unwrap_or_default();
                    if last_log.contains("could not bind") || last_log.contains("in use") {
                        break;
                    }
                    panic!("the PostgreSQL server exited ({status}) while starting:\n{last_log}");
                }
                let ready = fs::read_to_string(&pid_file)
                    .is_ok_and(|text| text.lines().nth(7).is_some_and(|l| l.trim() == "ready"));
                if ready {
                    self.port = port;
                    self.child = Some(child);
                    return;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "the PostgreSQL server did not become ready in 30 s:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("the PostgreSQL server found no free port in 3 tries:\n{last_log}");
    }

    /// Stops the server at once (as a crash would) and starts it again on
    /// the same port (another only if that one was taken meanwhile).
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.launch(Some(port));
    }

    /// Immediate shutdown: SIGQUIT to the postmaster, then wait for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid, with a valid signal.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A connection as the superuser, over TCP without TLS.
    pub async fn superuser(&self, database: &str) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .password(SUPERUSER_PASSWORD)
            .dbname(database);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("superuser connection: {e:?}\n{}", self.log()));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Runs `sql` (one or more statements) as the superuser in the
    /// `postgres` database.
    pub async fn sql(&self, sql: &str) {
        self.superuser("postgres")
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// The `url` for the test role and database, with `query` (e.g.
    /// `sslmode=require`) appended; `host` is usually 127.0.0.1. Without an
    /// `sslmode` in `query` it says `sslmode=disable`: the cluster speaks
    /// TLS only when started for it, and with a password and no `sslmode`
    /// the daemon requires TLS.
    pub fn url(&self, host: &str, query: &str) -> String {
        let mut url = format!("postgres://{USER}@{host}:{}/{DATABASE}?", self.port);
        if !query.contains("sslmode=") {
            url.push_str("sslmode=disable&");
        }
        url.push_str(query);
        url.trim_end_matches('&').to_owned()
    }

    /// A coax-scheduler config for backend = "postgres" against this
    /// cluster, with `query` appended to the URL. The password is not in
    /// it: pass [`PASSWORD`] as `COAX_SCHEDULER_DB_PASSWORD` (see
    /// [`PgCluster::load`]), or add a password_file.
    pub fn config_text(&self, coax_url: &str, query: &str) -> String {
        format!(
            r#"
[coax]
base_url = "{coax_url}"
request_timeout = "2s"

[store]
backend = "postgres"
url = "{url}"

[socket]
path = "coax.sock"
"#,
            url = self.url("127.0.0.1", query)
        )
    }

    /// Writes [`PgCluster::config_text`] to `dir/config.toml`; returns its path.
    pub fn write_config(&self, dir: &Path, coax_url: &str, query: &str) -> PathBuf {
        let path = dir.join("config.toml");
        fs::write(&path, self.config_text(coax_url, query)).expect("write config");
        path
    }

    /// The validated store config for `query`, with the role's password
    /// from the environment variable.
    pub fn load(&self, query: &str) -> PostgresConfig {
        let text = self.config_text("http://127.0.0.1:9", query);
        let env = |name: &str| match name {
            "COAX_API_KEY" => Some("ck_test_key".to_owned()),
            "COAX_SCHEDULER_DB_PASSWORD" => Some(PASSWORD.to_owned()),
            _ => None,
        };
        let config = Config::from_toml(&text, &self.dir.path().join("config.toml"), &env)
            .unwrap_or_else(|e| panic!("config: {e}"));
        config.store.postgres.expect("a postgres store config")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest installed server's bin dir.
fn server_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin: \
             install Debian's postgresql package (.ci/test does)"
        ),
    }
}

fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// `command`, run as `nobody` when we are root, and killed by the kernel
/// if the thread that started it dies.
fn as_server(command: Command) -> Command {
    if geteuid() != 0 {
        let mut command = command;
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        return command;
    }
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--pdeathsig=KILL",
            "--",
        ])
        .arg(command.get_program())
        .args(command.get_args());
    wrapped
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Makes `nobody` own `path` when the server runs as it.
fn give_to_server(path: &Path) {
    if geteuid() == 0 {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The one integer `sql` answers, on `client`.
pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
