//! The PostgreSQL server that `bench --backend postgres` measures against,
//! and the scratch databases it makes there.
//!
//! With `--postgres-url` the bench uses that server: the role in the URL
//! needs `LOGIN` and `CREATEDB` (it creates a database per phase and drops
//! it after) and room for about 70 connections (three daemons with pools of
//! [`fixture::POOL_SIZE`] and their listening connections, or the 16 of the
//! commit-rate limit). Its password comes from where the daemon's does:
//! `COAX_SCHEDULER_DB_PASSWORD` or the systemd credential. The server must
//! be PostgreSQL 13 or newer (`DROP DATABASE ... WITH (FORCE)`).
//!
//! Without one, [`Cluster`] starts a throwaway cluster from the newest
//! installed server (`/usr/lib/postgresql/*/bin`): `initdb` in a temporary
//! directory, `postgres` on 127.0.0.1 on a free port with `trust` on
//! loopback, and `fsync` left on, since commits are what is measured. As
//! root, `initdb` refuses to run, so both run as `nobody` (via `setpriv`)
//! in a directory it owns. The server gets SIGKILL from the kernel if the
//! bench dies without cleaning up (`--pdeathsig`), and an immediate
//! shutdown when the [`Cluster`] is dropped. This module measures nothing.

use super::fixture;
use anyhow::{Context as _, bail};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The superuser of the throwaway cluster.
const SUPERUSER: &str = "coax_bench";
/// `nobody`: who runs the throwaway server when the bench runs as root.
const NOBODY: u32 = 65534;
/// How long the throwaway server may take to accept connections.
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// A throwaway cluster; stopped (immediate shutdown) on drop.
pub struct Cluster {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Cluster {
    /// Runs `initdb` and starts the server; waits until it is ready.
    pub fn start() -> anyhow::Result<Cluster> {
        let bin = server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("coax-bench-pg-")
            .tempdir()
            .context("cannot create a directory for the PostgreSQL cluster")?;
        let root = is_root();
        let data = dir.path().join("data");
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of {}", path.display()))
        };
        if root {
            // nobody must reach its data dir through the temporary directory.
            mode(dir.path(), 0o755)?;
        }
        std::fs::create_dir(&data).with_context(|| format!("cannot create {}", data.display()))?;
        mode(&data, 0o700)?;
        if root {
            std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY))
                .with_context(|| format!("cannot give {} to nobody", data.display()))?;
        }
        let initdb = as_server(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth-host=trust", "--auth-local=trust"])
            // --no-sync skips only initdb's own final flush; the server
            // runs with fsync on.
            .args(["--encoding=UTF8", "--locale=C", "--no-sync"])
            .output()
            .with_context(|| format!("cannot run {}", bin.join("initdb").display()))?;
        if !initdb.status.success() {
            bail!(
                "initdb failed ({}): {}{}",
                initdb.status,
                String::from_utf8_lossy(&initdb.stdout),
                String::from_utf8_lossy(&initdb.stderr)
            );
        }
        let mut cluster = Cluster {
            dir,
            port: 0,
            child: None,
        };
        cluster.launch(&bin)?;
        Ok(cluster)
    }

    /// Starts `postgres` on a free port; a port taken between choosing it
    /// and binding it is retried with another.
    fn launch(&mut self, bin: &Path) -> anyhow::Result<()> {
        let log = self.dir.path().join("server.log");
        for _ in 0..3 {
            let port = free_port()?;
            let file = std::fs::File::create(&log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            let mut child = as_server(&bin.join("postgres"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-p", &port.to_string()])
                // The Unix socket goes in the data dir, which nobody owns.
                .arg("-k")
                .arg(self.dir.path().join("data"))
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=200",
                ])
                .stdin(Stdio::null())
                .stdout(file.try_clone().context("cannot share the server log")?)
                .stderr(file)
                .spawn()
                .with_context(|| format!("cannot run {}", bin.join("postgres").display()))?;
            let pid_file = self.dir.path().join("data/postmaster.pid");
            let deadline = Instant::now() + READY_PATIENCE;
            loop {
                if let Some(status) = child.try_wait()? {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("could not bind") || text.contains("in use") {
                        break;
                    }
                    bail!("the PostgreSQL server exited ({status}) while starting: {text}");
                }
                let ready = std::fs::read_to_string(&pid_file)
                    .is_ok_and(|text| text.lines().nth(7).is_some_and(|l| l.trim() == "ready"));
                if ready {
                    self.port = port;
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "the PostgreSQL server was not ready within {} s: {}",
                        READY_PATIENCE.as_secs(),
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!("the PostgreSQL server found no free port in 3 tries")
    }

    /// The URL of `database` on this cluster, as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint to
        // flush for data that is thrown away.
        let _ = Command::new("kill")
            .args(["-QUIT", &child.id().to_string()])
            .status();
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
}

/// The newest installed server's bin dir.
fn server_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
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
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL server (initdb) under /usr/lib/postgresql/*/bin: install the \
             distribution's postgresql package, or pass --postgres-url"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program` under `setpriv`: as `nobody` when we are root, and killed by
/// the kernel if the thread that started it goes.
fn as_server(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    if is_root() {
        command.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ]);
    }
    command.args(["--pdeathsig=KILL", "--"]).arg(program);
    command
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr()?.port())
}

/// Checks, before any phase runs, what can be checked of the server
/// without starting or reaching it: that `url` is one the daemon would
/// take, or without one, that a server is installed.
pub fn check(url: Option<&str>) -> anyhow::Result<()> {
    match url {
        Some(url) => fixture::postgres_store(url)
            .map(drop)
            .context("--postgres-url will not do"),
        None => server_bin().map(drop),
    }
}

/// The server the bench runs on: the throwaway cluster or the one at a
/// URL; and the scratch databases made on it.
pub struct Server {
    /// The URL of the database connected to for creating the rest.
    url: String,
    cluster: Option<Cluster>,
    made: std::sync::Mutex<Vec<String>>,
}

impl Server {
    /// The server at `url`, or a throwaway cluster without one.
    pub fn start(url: Option<&str>) -> anyhow::Result<Server> {
        let (url, cluster) = match url {
            Some(url) => (url.to_owned(), None),
            None => {
                let cluster = Cluster::start()?;
                (cluster.url("postgres"), Some(cluster))
            }
        };
        check(Some(&url))?;
        Ok(Server {
            url,
            cluster,
            made: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// What the figures were measured on, for the report: the server, its
    /// version, and the settings that decide what a commit costs, as the
    /// server reports them.
    pub async fn describe(&self) -> anyhow::Result<String> {
        let store = fixture::postgres_store(&self.url)?;
        let admin = self.admin().await?;
        let row = admin
            .query_one(
                "SELECT current_setting('server_version'), current_setting('fsync'), \
                        current_setting('synchronous_commit')",
                &[],
            )
            .await
            .context("cannot read the server's settings")?;
        let (version, fsync, synchronous): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let whose = match &self.cluster {
            Some(_) => "a throwaway cluster",
            None => "the server",
        };
        Ok(format!(
            "{whose} at {}, PostgreSQL {version}, fsync {fsync}, synchronous_commit {synchronous}",
            store.describe()
        ))
    }

    /// Creates the scratch database `coax_bench_{pid}_{phase}`; its URL.
    pub async fn scratch(&self, phase: &str) -> anyhow::Result<String> {
        let name = format!("coax_bench_{}_{phase}", std::process::id());
        let admin = self.admin().await?;
        // Each its own statement: neither may run in a transaction. A
        // database left by an earlier run of this pid goes first.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .with_context(|| format!("cannot create the scratch database {name}"))?;
        }
        if let Ok(mut made) = self.made.lock() {
            made.push(name.clone());
        }
        with_database(&self.url, &name)
    }

    /// Drops every scratch database made so far, closing what is still
    /// connected to it.
    pub async fn clean(&self) -> anyhow::Result<()> {
        let names: Vec<String> = match self.made.lock() {
            Ok(mut made) => made.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        if names.is_empty() {
            return Ok(());
        }
        let admin = self.admin().await?;
        for name in names {
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .with_context(|| format!("cannot drop the scratch database {name}"))?;
        }
        Ok(())
    }

    async fn admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        let store = fixture::postgres_store(&self.url)?;
        crate::store::postgres::connect(&store)
            .await
            .context("cannot connect to the PostgreSQL server")
    }
}

/// `url` with its database (the path) replaced by `database`.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let rest = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme).map(|rest| (*scheme, rest)));
    let Some((scheme, rest)) = rest else {
        bail!("the PostgreSQL URL must start with postgres:// or postgresql://");
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    Ok(match query {
        Some(query) => format!("{scheme}{authority}/{database}?{query}"),
        None => format!("{scheme}{authority}/{database}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_and_the_rest_kept() {
        let cases = [
            (
                "postgres://coax@db:5432/coax?sslmode=require",
                "postgres://coax@db:5432/scratch?sslmode=require",
            ),
            ("postgresql://coax@db", "postgresql://coax@db/scratch"),
            ("postgres://coax@db/?x=1", "postgres://coax@db/scratch?x=1"),
        ];
        for (url, want) in cases {
            assert_eq!(with_database(url, "scratch").unwrap(), want);
        }
        assert!(with_database("host=db dbname=coax", "scratch").is_err());
    }

    /// The launcher, a scratch database and the commit-rate limits, on
    /// the installed server binaries (as the integration tests need them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_throwaway_cluster_gives_commit_rates_and_drops_its_scratch() {
        let server = Server::start(None).expect("a throwaway cluster starts");
        let described = server.describe().await.unwrap();
        assert!(
            described.contains("fsync on, synchronous_commit on"),
            "commits must be measured durable: {described}"
        );
        let url = server.scratch("limits").await.unwrap();
        assert!(url.contains("/coax_bench_"), "{url}");
        let store = fixture::postgres_store(&url).unwrap();
        let (single, grouped) = super::super::limits::postgres(&store, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(single > 0.0 && grouped > 0.0, "{single} {grouped}");
        server.clean().await.unwrap();
        let admin = server.admin().await.unwrap();
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'coax_bench_%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0);
    }

    #[test]
    fn the_server_runs_under_setpriv() {
        let command = as_server(Path::new("/usr/lib/postgresql/15/bin/postgres"));
        assert_eq!(command.get_program(), "setpriv");
        let args: Vec<_> = command.get_args().collect();
        assert!(args.contains(&std::ffi::OsStr::new("--pdeathsig=KILL")));
        assert_eq!(
            args.last().copied(),
            Some(std::ffi::OsStr::new("/usr/lib/postgresql/15/bin/postgres"))
        );
        assert_eq!(
            args.iter().any(|a| a.to_str() == Some("--reuid=65534")),
            is_root()
        );
    }
}
