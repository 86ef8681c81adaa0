//! Running the binary as an operator would: a subcommand with `--config`,
//! its stdin fed, its output collected, and none of the test process's
//! API key or log filter in its environment.

use super::daemon::binary;
use super::{PATIENCE, wait_until};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// What one run of the binary produced.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs `command` with `stdin`, without `COAX_API_KEY` and `RUST_LOG`.
pub async fn output(mut command: Command, stdin: &[u8]) -> Output {
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .env_remove("COAX_API_KEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the coax-scheduler binary");
        let mut input = child.stdin.take().expect("piped stdin");
        // A command that refuses early closes its stdin; that is its answer.
        let _ = input.write_all(&stdin);
        drop(input);
        child.wait_with_output().expect("wait for the binary")
    })
    .await
    .expect("binary thread")
}

/// Runs `coax-scheduler <command> --config dir/config.toml` with `stdin`.
pub async fn run(command: &str, dir: &Path, stdin: &str) -> Run {
    run_with(command, dir, stdin, &[]).await
}

/// Runs `coax-scheduler <command> --config dir/config.toml` with `stdin`
/// and `env` set.
pub async fn run_with(command: &str, dir: &Path, stdin: &str, env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(binary());
    child
        .arg(command)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .envs(env.iter().copied());
    output(child, stdin.as_bytes()).await.into()
}

/// Waits until the daemon that ran in `dir` has let go of its store: its
/// store thread closes the database, and the lock, just after it stops.
pub async fn released(dir: &Path) {
    let lock = dir.join("queue.db.lock");
    wait_until(
        "the stopped daemon to let go of its store",
        PATIENCE,
        || {
            let lock = lock.clone();
            async move {
                let file = std::fs::File::open(&lock).ok()?;
                file.try_lock().ok()
            }
        },
    )
    .await;
}
