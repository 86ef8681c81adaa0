//! Start-up checks on the system's edges, through the real binary: key files
//! that are not regular files (a FIFO would hang `check-config`, `run` and a
//! reload), and a concurrency the file descriptor limit cannot carry.

use crate::helpers::daemon::{binary, config_text};
use crate::helpers::{PATIENCE, wait_until};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A config whose key comes from `api-key` beside it, with `dispatch` lines.
fn key_file_config(dir: &Path, dispatch: &str) -> PathBuf {
    let text = config_text("http://127.0.0.1:9", dispatch, "").replace(
        "request_timeout = \"2s\"",
        "request_timeout = \"2s\"\napi_key_file = \"api-key\"",
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// The binary with `args`, its environment free of key sources; `limit`
/// sets RLIMIT_NOFILE (soft and hard) in the child.
fn command(args: &[&std::ffi::OsStr], limit: Option<u64>) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("COAX_API_KEY")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = limit {
        let rlimit = libc::rlimit {
            rlim_cur: n as libc::rlim_t,
            rlim_max: n as libc::rlim_t,
        };
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    cmd
}

/// Runs `cmd` to its end, failing (and killing it) if it is still running
/// after `within`: the point of these checks is to fail at once.
async fn finish(mut cmd: Command, within: Duration) -> Output {
    let child = cmd.spawn().expect("start the binary");
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(within, waiting).await {
        Ok(done) => done.expect("join").expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("the binary was still running after {within:?}: it hung");
        }
    }
}

/// `check-config --config CONFIG`, under an fd limit if one is given.
async fn check_config(config: &Path, limit: Option<u64>) -> Output {
    let args = [
        "check-config".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    finish(command(&args, limit), Duration::from_secs(10)).await
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn key_file_fifo_fails_check_config_and_run_at_once_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = key_file_config(dir.path(), "");
    let key = dir.path().join("api-key");
    mkfifo(&key);

    for sub in ["check-config", "run"] {
        let output = finish(
            command(
                &[sub.as_ref(), "--config".as_ref(), config.as_os_str()],
                None,
            ),
            Duration::from_secs(10),
        )
        .await;
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{sub}: {text}");
        assert!(text.contains(&key.display().to_string()), "{sub}: {text}");
        assert!(
            text.contains("FIFO") && text.contains("not a regular file"),
            "{sub}: {text}"
        );
    }

    // A directory is refused as clearly; a symlink to a regular file works.
    std::fs::remove_file(&key).expect("remove the FIFO");
    std::fs::create_dir(&key).expect("mkdir");
    let output = check_config(&config, None).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("a directory"),
        "{}",
        stderr(&output)
    );
    std::fs::remove_dir(&key).expect("rmdir");
    let real = dir.path().join("real-key");
    std::fs::write(&real, "ck_test_symlinked\n").expect("write key");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::symlink(&real, &key).expect("symlink");
    let output = check_config(&config, None).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

/// A child process killed when the test ends, even by a panic.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM and requires the daemon to exit 0.
async fn stops_cleanly_on_sigterm(child: &mut Killed, log: &Path) {
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill -TERM");
    let status = wait_until("the daemon to exit after SIGTERM", PATIENCE, || {
        let status = child.0.try_wait().expect("try_wait");
        async move { status }
    })
    .await;
    let logs = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{logs}");
}

/// The daemon reading its key from `api-key`, with its output in a log
/// file; `limit` as for [`command`].
fn spawn_daemon(dir: &Path, config: &Path, limit: Option<u64>) -> (Killed, PathBuf) {
    let log = dir.join("daemon.log");
    let out = std::fs::File::create(&log).expect("log file");
    let child = command(
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        limit,
    )
    .stdout(Stdio::from(out.try_clone().expect("log file")))
    .stderr(Stdio::from(out))
    .spawn()
    .expect("start the daemon");
    (Killed(child), log)
}

#[tokio::test]
async fn key_file_fifo_on_reload_is_refused_and_sigterm_still_stops_the_daemon() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = key_file_config(dir.path(), "");
    let key = dir.path().join("api-key");
    std::fs::write(&key, "ck_test_first\n").expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (mut child, log) = spawn_daemon(dir.path(), &config, None);
    let pid = child.0.id().to_string();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the daemon to start", PATIENCE, || async {
        logs().contains("coax-scheduler started").then_some(())
    })
    .await;

    std::fs::remove_file(&key).expect("remove key");
    mkfifo(&key);
    Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    wait_until("the reload to be refused", PATIENCE, || async {
        logs().contains("reload failed").then_some(())
    })
    .await;
    assert!(logs().contains("FIFO"), "{}", logs());

    stops_cleanly_on_sigterm(&mut child, &log).await;
}

#[tokio::test]
async fn concurrency_beyond_the_fd_limit_is_refused_naming_both_numbers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = key_file_config(dir.path(), "concurrency = 1024");
    // The concurrency is at its maximum; config_text's 4 is overridden.
    let text = std::fs::read_to_string(&config)
        .expect("read config")
        .replace("concurrency = 4\n", "");
    std::fs::write(&config, text).expect("write config");
    let key = dir.path().join("api-key");
    std::fs::write(&key, "ck_test_fds\n").expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // 1024 requests + 256 socket clients + 4 reserved + 64 = 1348 > 1024.
    for sub in ["check-config", "run"] {
        let output = finish(
            command(
                &[sub.as_ref(), "--config".as_ref(), config.as_os_str()],
                Some(1024),
            ),
            Duration::from_secs(10),
        )
        .await;
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{sub}: {text}");
        assert!(
            text.contains("dispatch.concurrency = 1024") && text.contains("need 1348"),
            "{sub}: {text}"
        );
        assert!(text.contains("may open only 1024"), "{sub}: {text}");
    }

    // The same config where the limit carries it.
    let output = check_config(&config, Some(2048)).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("1348 of 2048 file descriptors"), "{out}");
}

/// A reload that raises `dispatch.concurrency` past what the descriptor
/// limit carries is refused as a whole, naming both numbers, and the
/// daemon goes on serving with the config it has.
#[tokio::test]
async fn a_reload_past_the_fd_limit_is_refused_and_the_daemon_keeps_its_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = key_file_config(dir.path(), "");
    let key = dir.path().join("api-key");
    std::fs::write(&key, "ck_test_fds\n").expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // 4 requests + 256 socket clients + 4 reserved + 64 = 328 fit in 1024.
    let (mut child, log) = spawn_daemon(dir.path(), &config, Some(1024));
    let pid = child.0.id().to_string();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the daemon to start", PATIENCE, || async {
        logs().contains("coax-scheduler started").then_some(())
    })
    .await;

    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(
        &config,
        text.replace("concurrency = 4", "concurrency = 1024"),
    )
    .expect("write config");
    Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    wait_until("the reload to be refused", PATIENCE, || async {
        logs().contains("reload failed").then_some(())
    })
    .await;
    let refused = logs();
    assert!(
        refused.contains("need 1348") && refused.contains("may open only 1024"),
        "{refused}"
    );
    assert!(!refused.contains("config reloaded"), "{refused}");
    let socket = dir.path().join("coax.sock");
    let answer =
        crate::helpers::daemon::request_at(&socket, serde_json::json!({"op": "ping"})).await;
    assert_eq!(answer["ok"], true, "{answer}");

    stops_cleanly_on_sigterm(&mut child, &log).await;
}
