//! The daemon under test, started in-process on a temp dir or as the real
//! binary, with a config pointing at a Coax stand-in.

use super::{PATIENCE, wait_until};
use coax_scheduler::client::Client;
use coax_scheduler::config::Config;
use coax_scheduler::daemon::Daemon;
use coax_scheduler::time::{Clock, Millis, Mono, SystemClock};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The API key every test daemon uses; tests assert it never leaks.
pub const TEST_KEY: &str = "ck_test_SECRET_7f3a9c";

/// A config file for a test daemon in `dir`, talking to `coax_url`.
/// `extra` is appended inside the matching sections by the caller's TOML.
pub fn config_text(coax_url: &str, dispatch: &str, retry: &str) -> String {
    format!(
        r#"
[coax]
base_url = "{coax_url}"
request_timeout = "2s"

[store]
path = "queue.db"

[socket]
path = "coax.sock"

[dispatch]
poll_interval = "1s"
concurrency = 4
shutdown_timeout = "5s"
auth_pause = "300ms"
{dispatch}

[retry]
max_attempts = 3
base_delay = "50ms"
max_delay = "200ms"
{retry}

[log]
level = "debug"
"#
    )
}

fn test_env(name: &str) -> Option<String> {
    (name == "COAX_API_KEY").then(|| TEST_KEY.to_owned())
}

/// A daemon running inside the test's runtime.
pub struct TestDaemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    /// The SQLite file; see [`TestDaemon::db`].
    db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// Set by [`TestDaemon::start_reloadable`]: each message re-reads the
    /// config file, as SIGHUP does.
    reloads: Option<mpsc::Sender<()>>,
}

/// The system's clocks, with a wall clock that the test sets to a chosen
/// moment (a Monday 22:00 in Sydney) or steps; it runs on in real time from
/// there. The monotonic clock is the system's, so pauses last as long as
/// they would.
#[derive(Debug)]
pub struct TestClock {
    system: SystemClock,
    offset_ms: AtomicI64,
}

impl TestClock {
    /// A clock whose wall clock reads `at` now.
    pub fn at(at: Millis) -> Arc<TestClock> {
        let clock = Arc::new(TestClock {
            system: SystemClock::new(),
            offset_ms: AtomicI64::new(0),
        });
        clock.set(at);
        clock
    }

    /// Sets the wall clock to read `at` now.
    pub fn set(&self, at: Millis) {
        self.offset_ms
            .store(at - self.system.wall(), Ordering::SeqCst);
    }

    /// Moves the wall clock by `ms` (negative: back).
    pub fn step(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn wall(&self) -> Millis {
        self.system.wall() + self.offset_ms.load(Ordering::SeqCst)
    }

    fn mono(&self) -> Mono {
        self.system.mono()
    }
}

/// The name of the key file a reloadable daemon reads its API key from.
const KEY_FILE: &str = "api.key";

/// `config` reading the API key from [`KEY_FILE`]: a reload re-reads the
/// key from the process environment, which the tests leave unset.
fn with_key_file(config: &str) -> String {
    config.replacen(
        "[coax]\n",
        &format!("[coax]\napi_key_file = \"{KEY_FILE}\"\n"),
        1,
    )
}

impl TestDaemon {
    /// Starts a daemon with the default test config against `coax_url`.
    pub async fn start(coax_url: &str) -> TestDaemon {
        TestDaemon::start_with(&config_text(coax_url, "", "")).await
    }

    /// Starts a daemon from a whole config text, in a new temp dir.
    pub async fn start_with(config: &str) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        TestDaemon::start_in(dir, config).await
    }

    /// Starts a daemon in an existing dir (for restarts on the same database).
    pub async fn start_in(dir: TempDir, config: &str) -> TestDaemon {
        TestDaemon::start_in_with(dir, config, None).await
    }

    /// Starts a daemon whose dispatcher reads the time from `clock`.
    pub async fn start_with_clock(config: &str, clock: Arc<dyn Clock>) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        TestDaemon::start_in_with(dir, config, Some(clock)).await
    }

    /// Starts a daemon on `clock` in an existing dir (a restart).
    pub async fn start_in_with_clock(
        dir: TempDir,
        config: &str,
        clock: Arc<dyn Clock>,
    ) -> TestDaemon {
        TestDaemon::start_in_with(dir, config, Some(clock)).await
    }

    /// Starts a daemon on `clock` that [`TestDaemon::reload`] can reload.
    /// The API key comes from a key file in the dir, since a reload reads
    /// the real environment.
    pub async fn start_reloadable(config: &str, clock: Arc<dyn Clock>) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = dir.path().join(KEY_FILE);
        std::fs::write(&key, TEST_KEY).expect("write key file");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("key file mode");
        let (reloads, reloaded) = mpsc::channel(4);
        let mut daemon =
            TestDaemon::start_configured(dir, &with_key_file(config), Some(clock), Some(reloaded))
                .await;
        daemon.reloads = Some(reloads);
        daemon
    }

    /// Rewrites the config file with `config` and has the daemon reload it,
    /// as SIGHUP would. Only for a daemon from [`TestDaemon::start_reloadable`].
    pub async fn reload(&self, config: &str) {
        let config = super::backend::rewrite(&with_key_file(config), self.dir.path());
        std::fs::write(self.dir.path().join("config.toml"), config).expect("rewrite config");
        self.reloads
            .as_ref()
            .expect("a daemon started with start_reloadable")
            .send(())
            .await
            .expect("the daemon takes reloads");
    }

    async fn start_in_with(
        dir: TempDir,
        config: &str,
        clock: Option<Arc<dyn Clock>>,
    ) -> TestDaemon {
        TestDaemon::start_configured(dir, config, clock, None).await
    }

    async fn start_configured(
        dir: TempDir,
        config: &str,
        clock: Option<Arc<dyn Clock>>,
        reloads: Option<mpsc::Receiver<()>>,
    ) -> TestDaemon {
        let path = dir.path().join("config.toml");
        let config = super::backend::configure(config, dir.path()).await;
        std::fs::write(&path, config).expect("write config");
        let config = Config::load_with_env(&path, &test_env).expect("test config is valid");
        let socket = config.socket.path.clone();
        let db = config.store.path.clone();
        let mut daemon = Daemon::open(config.clone()).await.expect("daemon opens");
        if let Some(clock) = clock {
            daemon = daemon.with_clock(clock);
        }
        if let Some(reloads) = reloads {
            daemon = daemon.reload_on(reloads);
        }
        let listener =
            coax_scheduler::socket::bind(&socket, config.socket.mode).expect("socket binds");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(listener, async move {
            let _ = stopped.await;
        }));
        TestDaemon {
            dir,
            socket,
            db,
            stop: Some(stop),
            task: Some(task),
            reloads: None,
        }
    }

    /// The daemon's SQLite file, for a test that reads or edits it by hand.
    ///
    /// Panics when the tests run on PostgreSQL: such a test checks SQLite
    /// and must not pass there having checked nothing. It belongs off the
    /// list of backend-neutral tests in `.ci/test`.
    pub fn db(&self) -> &Path {
        assert!(
            !super::backend::postgres(),
            "this test reads or edits the SQLite file, so it is SQLite-only: it cannot run with \
             {}=postgres (take it off the list of backend-neutral tests in .ci/test)",
            super::backend::BACKEND_ENV
        );
        &self.db
    }

    /// Sends one request on a fresh connection and returns the parsed answer.
    pub async fn request(&self, request: Value) -> Value {
        request_at(&self.socket, request).await
    }

    /// Sends a raw line on a fresh connection and returns the raw answer.
    pub async fn raw(&self, line: &str) -> String {
        let socket = self.socket.clone();
        let line = line.to_owned();
        tokio::task::spawn_blocking(move || {
            Client::connect(&socket)
                .expect("connect")
                .send_line(&line)
                .expect("answer")
        })
        .await
        .expect("client thread")
    }

    /// Enqueues one job and returns its id, asserting success.
    pub async fn enqueue(&self, job: Value) -> i64 {
        let answer = self.request(json!({"op": "enqueue", "job": job})).await;
        assert_eq!(answer["ok"], true, "enqueue failed: {answer}");
        answer["id"].as_i64().expect("id")
    }

    pub async fn get(&self, id: i64) -> Value {
        let answer = self.request(json!({"op": "get", "id": id})).await;
        assert_eq!(answer["ok"], true, "get failed: {answer}");
        answer["job"].clone()
    }

    /// Waits until job `id` is in `state`, and returns its view.
    pub async fn wait_for_state(&self, id: i64, state: &str) -> Value {
        wait_until(&format!("job {id} to be {state}"), PATIENCE, || async {
            let job = self.get(id).await;
            (job["state"] == state).then_some(job)
        })
        .await
    }

    /// Stops the daemon as SIGTERM would, and waits for it to finish.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown().await;
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("daemon task")
                .expect("daemon ran cleanly");
        }
        coax_scheduler::socket::remove(&self.socket);
    }
}

/// Sends one request to the socket at `path` on a fresh connection.
pub async fn request_at(path: &Path, request: Value) -> Value {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        Client::connect(&path)
            .expect("connect")
            .request(&request)
            .expect("answer")
            .1
    })
    .await
    .expect("client thread")
}

/// The real binary, started as operators start it.
pub struct DaemonProcess {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_coax-scheduler")
}

impl DaemonProcess {
    /// Writes `config` into `dir` and starts `coax-scheduler run` there;
    /// returns once the socket answers a ping.
    pub async fn start(dir: &Path, config: &str) -> DaemonProcess {
        let process = DaemonProcess::spawn(dir, config);
        let socket = process.socket.clone();
        wait_until("the daemon to answer on its socket", PATIENCE, || {
            let socket = socket.clone();
            async move {
                let answered = tokio::task::spawn_blocking(move || {
                    Client::connect(&socket)
                        .and_then(|mut c| c.send_line(r#"{"op":"ping"}"#))
                        .is_ok()
                })
                .await
                .unwrap_or(false);
                answered.then_some(())
            }
        })
        .await;
        process
    }

    /// Starts the binary without waiting for it to be ready.
    pub fn spawn(dir: &Path, config: &str) -> DaemonProcess {
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.join(format!("daemon-{}.log", std::process::id()));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&config_path)
            .env("COAX_API_KEY", TEST_KEY)
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(out.try_clone().expect("log file")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start the daemon binary");
        DaemonProcess {
            child,
            socket: dir.join("coax.sock"),
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and asserts a clean exit (code 0).
    pub async fn terminate(&mut self) {
        self.signal("TERM");
        let code = self.wait_exit(PATIENCE).await;
        assert_eq!(code, Some(0), "exit after SIGTERM; logs:\n{}", self.logs());
    }

    /// Waits until some log line satisfies `pred`, and returns that line.
    pub async fn wait_for_log_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(line) = self.logs().lines().find(|l| pred(l)) {
                    return line.to_owned();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "timed out waiting for a log line with {what}; logs:\n{}",
                self.logs()
            )
        })
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let status = wait_until("the daemon to exit", timeout, || {
            let status = self.child.try_wait().expect("try_wait");
            async move { status }
        })
        .await;
        status.code()
    }

    pub async fn request(&self, request: Value) -> Value {
        request_at(&self.socket, request).await
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
