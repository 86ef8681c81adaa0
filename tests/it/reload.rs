//! Live reload: SIGHUP re-reads the config, applies the key, the dispatcher
//! settings and the log level at once, says what needs a restart, and keeps
//! running on the old config when the new one is broken.

use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{DaemonProcess, binary, config_text, request_at};
use crate::helpers::{PATIENCE, wait_until};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

const OLD_KEY: &str = "ck_old_ROTATED_away";
const NEW_KEY: &str = "ck_new_after_rotation";

fn write_key(dir: &Path, key: &str) {
    let path = dir.join("api-key");
    std::fs::write(&path, format!("{key}\n")).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The test config with the key read from a file, so a reload can rotate it.
fn config(coax_url: &str, concurrency: u32, level: &str) -> String {
    config_text(coax_url, "", "")
        .replace(
            "request_timeout = \"2s\"",
            "request_timeout = \"2s\"\napi_key_file = \"api-key\"",
        )
        .replace("auth_pause = \"300ms\"", "auth_pause = \"1h\"")
        .replace("concurrency = 4", &format!("concurrency = {concurrency}"))
        .replace("level = \"debug\"", &format!("level = \"{level}\""))
}

/// Starts the binary with no COAX_API_KEY, so the key file is used.
async fn start(dir: &Path, config: &str) -> DaemonProcess {
    std::fs::write(dir.join("config.toml"), config).expect("write config");
    let log = dir.join("daemon.log");
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(binary())
        .args(["run", "--config"])
        .arg(dir.join("config.toml"))
        .env_remove("COAX_API_KEY")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(out.try_clone().expect("log file")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start the daemon");
    let daemon = DaemonProcess {
        child,
        socket: dir.join("coax.sock"),
        log,
    };
    wait_until("the daemon to answer", PATIENCE, || async {
        let socket = daemon.socket.clone();
        tokio::task::spawn_blocking(move || {
            coax_scheduler::client::Client::connect(&socket)
                .and_then(|mut c| c.send_line(r#"{"op":"ping"}"#))
                .is_ok()
        })
        .await
        .unwrap_or(false)
        .then_some(())
    })
    .await;
    daemon
}

async fn stats(daemon: &DaemonProcess) -> Value {
    request_at(&daemon.socket, json!({"op": "stats"})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_key_and_ends_the_auth_pause_at_once() {
    let coax = CoaxStub::start().await;
    coax.set_chooser(Arc::new(|request| {
        if request.bearer() == Some(NEW_KEY) {
            Reply::sent()
        } else {
            Reply::status(401)
        }
    }));
    let dir = tempfile::tempdir().expect("temp dir");
    write_key(dir.path(), OLD_KEY);
    let mut daemon = start(dir.path(), &config(&coax.base_url(), 4, "info")).await;

    let answer = request_at(
        &daemon.socket,
        json!({"op": "enqueue", "job": {"kind": "message", "channel": "sms",
               "payload": {"message": "hi", "phone": "+15550100"}}}),
    )
    .await;
    let id = answer["id"].as_i64().expect("id");
    wait_until("the rejected key to pause sending", PATIENCE, || async {
        (stats(&daemon).await["dispatch"]["state"] == "paused_auth").then_some(())
    })
    .await;

    // Rotate the key and change a dispatcher setting and the log level.
    write_key(dir.path(), NEW_KEY);
    std::fs::write(
        dir.path().join("config.toml"),
        config(&coax.base_url(), 2, "debug"),
    )
    .expect("write config");
    daemon.signal("HUP");

    let job = wait_until("the job to go out with the new key", PATIENCE, || async {
        let answer = request_at(&daemon.socket, json!({"op": "get", "id": id})).await;
        (answer["job"]["state"] == "sent").then(|| answer["job"].clone())
    })
    .await;
    // auth_pause is an hour: only the reload can have ended the pause.
    assert_eq!(job["attempts"], 1, "the 401 used no attempt: {job}");
    let last = coax.requests().last().cloned().expect("a request");
    assert_eq!(last.bearer(), Some(NEW_KEY));
    daemon
        .wait_for_log_line("the reload line", |l| l.contains("config reloaded"))
        .await;
    let logs = daemon.logs();
    let reloaded = logs
        .lines()
        .find(|l| l.contains("config reloaded"))
        .unwrap_or_default();
    for applied in ["coax API key", "dispatch.concurrency", "log.level"] {
        assert!(reloaded.contains(applied), "{applied} in {reloaded:?}");
    }
    assert_eq!(stats(&daemon).await["dispatch"]["state"], "running");
    assert!(
        !logs.contains(OLD_KEY) && !logs.contains(NEW_KEY),
        "a key reached the log"
    );

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(PATIENCE).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_keeps_the_old_one_and_a_new_path_needs_a_restart() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    let dir = tempfile::tempdir().expect("temp dir");
    write_key(dir.path(), NEW_KEY);
    let good = config(&coax.base_url(), 4, "info");
    let mut daemon = start(dir.path(), &good).await;

    std::fs::write(
        dir.path().join("config.toml"),
        good.replace("concurrency = 4", "concurrency = 4\nconcurrenc = 3"),
    )
    .expect("write config");
    daemon.signal("HUP");
    daemon
        .wait_for_log_line("the failed reload", |l| l.contains("reload failed"))
        .await;
    let failed = daemon
        .logs()
        .lines()
        .find(|l| l.contains("reload failed"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(failed.contains("ERROR"), "{failed}");
    assert!(failed.contains("concurrenc"), "names the problem: {failed}");

    // Still running, still sending, on the old config.
    let answer = request_at(
        &daemon.socket,
        json!({"op": "enqueue", "job": {"kind": "message", "channel": "sms",
               "payload": {"message": "still here", "phone": "+15550100"}}}),
    )
    .await;
    assert_eq!(answer["ok"], true, "{answer}");
    coax.wait_for_requests(1, PATIENCE).await;

    std::fs::write(
        dir.path().join("config.toml"),
        good.replace("path = \"coax.sock\"", "path = \"other.sock\""),
    )
    .expect("write config");
    daemon.signal("HUP");
    daemon
        .wait_for_log_line("the restart warning", |l| l.contains("needs a restart"))
        .await;
    let warning = daemon
        .logs()
        .lines()
        .find(|l| l.contains("needs a restart"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(warning.contains("[socket]"), "{warning}");
    assert_eq!(
        stats(&daemon).await["ok"],
        true,
        "the old socket still serves"
    );

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(PATIENCE).await, Some(0));
}
