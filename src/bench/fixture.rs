//! What every benchmark phase stands on: the daemon's config, the daemon
//! started in-process or as a child process, an async client of its socket,
//! and the jobs it is fed.
//!
//! Each phase gets its own directory, database and daemon, so one phase's
//! rows never slow another's. The jobs are ordinary `message` jobs on the
//! `sms` channel; their message text carries the job's index and its
//! `scheduled_at` in milliseconds ("bench 17 1767225600000"), so that the
//! simulator's arrival hook can tell lateness without asking the daemon.
//! This module measures nothing itself.

use crate::config::{API_KEY_ENV, Config};
use crate::daemon::Daemon;
use crate::job::{Kind, NewJob};
use crate::store::Store;
use crate::time::{self, Millis};
use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The key the benchmark daemon sends; the simulator accepts any.
const BENCH_KEY: &str = "bench-key-for-the-simulator-only";
/// How many requests the daemon may have in flight to Coax.
pub const CONCURRENCY: usize = 64;
/// How long a daemon may take to answer its first ping.
const READY_PATIENCE: Duration = Duration::from_secs(60);

/// The daemon's config file for a phase in `dir`, talking to `base_url`.
/// The send windows of the scale phase's daemon: every job in its queue
/// falls under one, in a zone with DST, so the large-queue figures are
/// measured with windows in force. (The dispatch phases send at once, so
/// their daemons have none.)
pub const WINDOWS: &str = r#"
[windows.business]
mon = "09:00-20:00"
tue = "09:00-20:00"
wed = "09:00-12:00, 13:00-20:00"
thu = "09:00-20:00"
fri = "09:00-20:00"
sat = "10:00-16:00"
holidays = ["2026-12-25", "2026-12-28", "2027-01-01"]
spread = "20m"
"#;

/// The `[dispatch]` keys that put [`WINDOWS`] in force.
pub const WINDOWS_DISPATCH: &str =
    "default_timezone = \"Australia/Sydney\"\ndefault_window = \"business\"\n";

/// The calendar of [`WINDOWS`], as the scale phase's daemon reads it.
pub fn windows_calendar() -> anyhow::Result<crate::window::Calendar> {
    crate::window::Calendar::from_toml(&format!("[dispatch]\n{WINDOWS_DISPATCH}{WINDOWS}"))
        .map_err(|e| anyhow::anyhow!("the benchmark's send windows are invalid: {e}"))
}

/// The daemon's config; with `windowed`, under [`WINDOWS`].
pub fn config_text(base_url: &str, windowed: bool) -> String {
    config_text_on(base_url, windowed, SQLITE_STORE)
}

/// The `[store]` keys of a daemon on SQLite.
const SQLITE_STORE: &str = "path = \"queue.db\"\n";

/// The daemon's config with `store` as the body of its `[store]` section.
fn config_text_on(base_url: &str, windowed: bool, store: &str) -> String {
    let (dispatch, windows) = if windowed {
        (WINDOWS_DISPATCH, WINDOWS)
    } else {
        ("", "")
    };
    format!(
        r#"# Written by `coax-scheduler bench`.
[coax]
base_url = "{base_url}"
request_timeout = "10s"

[store]
{store}
[socket]
path = "coax.sock"
max_connections = 256

[dispatch]
concurrency = {CONCURRENCY}
shutdown_timeout = "5s"
{dispatch}
[log]
format = "text"
level = "warn"
{windows}"#
    )
}

fn key_env(name: &str) -> Option<String> {
    (name == API_KEY_ENV).then(|| BENCH_KEY.to_owned())
}

/// The environment of a daemon on PostgreSQL: the bench's API key, and the
/// database password from where the daemon itself would take it
/// (`COAX_SCHEDULER_DB_PASSWORD` or the systemd credential).
fn postgres_env(name: &str) -> Option<String> {
    key_env(name).or_else(|| std::env::var(name).ok())
}

/// How many connections each daemon on PostgreSQL may hold: enough for the
/// 16 enqueue connections to commit at once.
pub const POOL_SIZE: usize = 16;

/// The `[store]` keys of a daemon on the PostgreSQL database at `url`.
fn postgres_section(url: &str) -> String {
    let url = toml::Value::String(url.to_owned());
    format!("backend = \"postgres\"\nurl = {url}\npool_size = {POOL_SIZE}\n")
}

/// The config of node `node` in `dir`, on the PostgreSQL database at `url`.
pub fn postgres_config(
    dir: &Path,
    base_url: &str,
    url: &str,
    node: &str,
) -> anyhow::Result<Config> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = format!(
        "{}\n[node]\nname = \"{node}\"\n",
        config_text_on(base_url, false, &postgres_section(url))
    );
    Config::from_toml(&text, &dir.join("config.toml"), &postgres_env)
        .context("the benchmark's daemon config for PostgreSQL is invalid")
}

/// The store config for the database at `url`, with the password the
/// daemon would use: what the bench connects with outside the daemons.
pub fn postgres_store(url: &str) -> anyhow::Result<crate::config::PostgresConfig> {
    let dir = std::env::temp_dir();
    let config = Config::from_toml(
        &config_text_on("http://127.0.0.1:9", false, &postgres_section(url)),
        &dir.join("config.toml"),
        &postgres_env,
    )
    .map_err(|e| match e {
        // There is no config file to name: the URL came from the command line.
        crate::config::ConfigError::Invalid { key, message, .. } => {
            anyhow::anyhow!("{key} {message}")
        }
        other => other.into(),
    })?;
    config
        .store
        .postgres
        .context("a config with backend = \"postgres\" has no PostgreSQL settings")
}

/// The config of a phase in `dir`, as if read from `dir/config.toml`.
pub fn config(dir: &Path, base_url: &str) -> anyhow::Result<Config> {
    config_with(dir, base_url, "")
}

/// The same, with `extra` (such as a `[metrics]` section) appended.
pub fn config_with(dir: &Path, base_url: &str, extra: &str) -> anyhow::Result<Config> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = format!("{}{extra}", config_text(base_url, false));
    Config::from_toml(&text, &dir.join("config.toml"), &key_env)
        .context("the benchmark's daemon config is invalid")
}

/// The message text of job `index` due at `at`.
pub fn message(index: usize, at: Millis) -> String {
    format!("bench {index} {at}")
}

/// Reads [`message`] back: the job's index and its `scheduled_at`.
pub fn parse_message(text: &str) -> Option<(usize, Millis)> {
    let mut words = text.strip_prefix("bench ")?.split(' ');
    let index = words.next()?.parse().ok()?;
    let at = words.next()?.parse().ok()?;
    words.next().is_none().then_some((index, at))
}

/// Job `index` as a client sends it.
pub fn job_json(key: &str, index: usize, at: Millis) -> Value {
    json!({
        "key": key,
        "kind": "message",
        "channel": "sms",
        "scheduled_at": time::format(at),
        "payload": {"message": message(index, at), "phone": "+15550100000"},
    })
}

/// Job `index` as the store takes it, for filling a database directly.
pub fn new_job(key: String, index: usize, at: Millis) -> NewJob {
    let mut payload = Map::new();
    payload.insert("message".into(), Value::String(message(index, at)));
    payload.insert("phone".into(), Value::String("+15550100000".into()));
    NewJob {
        key: Some(key),
        kind: Kind::Message,
        channel: "sms".into(),
        enquiry_id: None,
        scheduled_at: at,
        expires_at: None,
        payload,
        timezone: None,
        window: None,
        // One job in a hundred carries a tag: the scale phase cancels them
        // all with one `cancel` by tag.
        tags: if index.is_multiple_of(100) {
            vec![TAGGED.to_owned()]
        } else {
            Vec::new()
        },
        after: None,
    }
}

/// The tag of one job in a hundred that [`new_job`] makes.
pub const TAGGED: &str = "bench:every-100th";

/// Enqueues `count` jobs through `store`, `chunk` per call with up to four
/// calls in flight so building rows overlaps writing them. Job `i` gets
/// key `{prefix}-{i}` and time `at(i)`.
pub async fn fill(
    store: &Store,
    prefix: &str,
    count: usize,
    chunk: usize,
    at: impl Fn(usize) -> Millis,
) -> anyhow::Result<()> {
    let mut in_flight = tokio::task::JoinSet::new();
    let mut start = 0;
    while start < count {
        let end = (start + chunk).min(count);
        let jobs: Vec<NewJob> = (start..end)
            .map(|i| new_job(format!("{prefix}-{i:08}"), i, at(i)))
            .collect();
        let store = store.clone();
        in_flight.spawn(async move { store.enqueue(jobs).await });
        if in_flight.len() >= 4
            && let Some(done) = in_flight.join_next().await
        {
            done.context("a fill task failed")?
                .context("cannot fill the queue")?;
        }
        start = end;
    }
    while let Some(done) = in_flight.join_next().await {
        done.context("a fill task failed")?
            .context("cannot fill the queue")?;
    }
    Ok(())
}

/// A daemon running on this process's runtime.
pub struct InProcess {
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    /// Binds the socket and runs `daemon` (already opened, perhaps filled).
    pub fn start(config: &Config, daemon: Daemon) -> anyhow::Result<InProcess> {
        let socket = config.socket.path.clone();
        let listener = crate::socket::bind(&socket, config.socket.mode)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(listener, async move {
            let _ = stopped.await;
        }));
        Ok(InProcess {
            socket,
            stop: Some(stop),
            task,
        })
    }

    /// Stops the daemon and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let ran = (&mut self.task).await;
        crate::socket::remove(&self.socket);
        ran.context("the daemon task failed")?
    }
}

/// `coax-scheduler run` as a child process, so that its memory and CPU
/// time are its own.
pub struct ChildDaemon {
    pub socket: PathBuf,
    child: Child,
}

impl ChildDaemon {
    /// Writes `dir/config.toml` (under the send windows [`WINDOWS`]) and
    /// starts this very binary on it.
    pub fn spawn(dir: &Path, base_url: &str) -> anyhow::Result<ChildDaemon> {
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config_text(base_url, true))
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let child = std::process::Command::new(exe)
            .arg("--config")
            .arg(&config_path)
            .arg("run")
            .env(API_KEY_ENV, BENCH_KEY)
            .env("RUST_LOG", "warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start `coax-scheduler run` as a child process")?;
        Ok(ChildDaemon {
            socket: dir.join("coax.sock"),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the daemon with SIGTERM, as systemd would, and waits; kills it
    /// if it has not stopped after 10 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed: {status}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the daemon (pid {pid}) exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the daemon (pid {pid}) did not stop within 10 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        // Only reached when a phase failed before `stop`: leave no daemon behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until the daemon at `socket` answers a ping; returns how long that took.
pub async fn wait_ready(socket: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(mut conn) = Conn::connect(socket).await
            && conn.ask(r#"{"op":"ping"}"#).await.is_ok()
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > READY_PATIENCE {
            bail!(
                "the daemon at {} did not answer a ping within {} s",
                socket.display(),
                READY_PATIENCE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One connection to the daemon's socket, speaking the line protocol.
pub struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
}

impl Conn {
    pub async fn connect(socket: &Path) -> anyhow::Result<Conn> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let (read, writer) = stream.into_split();
        Ok(Conn {
            reader: BufReader::new(read),
            writer,
            line: String::new(),
        })
    }

    /// Sends one request line and returns the answer; `ok:false` is an error.
    pub async fn ask(&mut self, request: &str) -> anyhow::Result<Value> {
        self.writer.write_all(request.as_bytes()).await?;
        self.writer.write_all(b"\n").await?;
        self.line.clear();
        if self.reader.read_line(&mut self.line).await? == 0 {
            bail!("the daemon closed the connection without answering");
        }
        let answer: Value = serde_json::from_str(self.line.trim_end())
            .with_context(|| format!("the daemon answered something not JSON: {}", self.line))?;
        if answer["ok"] != true {
            bail!("the daemon refused a request: {}", answer["error"]);
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue is filled under the calendar the scale phase's daemon
    /// reads, so the daemon starts without settling it anew (a walk of a
    /// million jobs in the idle window would be measured as idle CPU).
    #[test]
    fn the_filled_queue_and_the_scale_daemon_share_one_calendar() {
        let text = config_text("http://127.0.0.1:9", true);
        let config = Config::from_toml(&text, Path::new("/tmp/bench/config.toml"), &key_env)
            .expect("the scale daemon's config is valid");
        let filled = windows_calendar().expect("the windows are valid");
        assert_eq!(config.calendar.fingerprint(), filled.fingerprint());
        assert!(config.calendar.window_names().next().is_some());
    }

    #[test]
    fn the_message_carries_index_and_time() {
        let text = message(17, 1_767_225_600_123);
        assert_eq!(parse_message(&text), Some((17, 1_767_225_600_123)));
        assert_eq!(parse_message("bench 1"), None);
        assert_eq!(parse_message("bench 1 2 3"), None);
        assert_eq!(parse_message("hello 1 2"), None);
    }

    #[test]
    fn the_jobs_and_config_are_valid() {
        let job = job_json("k-1", 1, 1_767_225_600_000);
        let validated = crate::job::validate(&job, 0, &crate::job::Rules::default()).unwrap();
        assert_eq!(
            validated,
            new_job("k-1".into(), 1, 1_767_225_600_000),
            "a filled job must equal an enqueued one"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), "http://127.0.0.1:9").unwrap();
        assert_eq!(config.dispatch.concurrency, CONCURRENCY);
    }

    #[test]
    fn a_node_on_postgres_gets_the_url_its_name_and_a_pool() {
        let dir = tempfile::tempdir().unwrap();
        let url = "postgres://coax_bench@127.0.0.1:5999/coax_bench_1_enqueue?sslmode=disable";
        let config = postgres_config(dir.path(), "http://127.0.0.1:9", url, "bench-2").unwrap();
        assert_eq!(config.node.name, "bench-2");
        let store = config.store.postgres.expect("a PostgreSQL store");
        assert_eq!(store.pool_size, POOL_SIZE);
        assert_eq!(store.connect.get_dbname(), Some("coax_bench_1_enqueue"));
        assert_eq!(store.connect.get_ports(), [5999]);
        assert_eq!(config.socket.path, dir.path().join("coax.sock"));
        let text = config_text("http://127.0.0.1:9", false);
        assert!(
            text.contains("[store]\npath = \"queue.db\"\n\n[socket]"),
            "{text}"
        );
    }
}
