//! Talking to systemd: readiness, status and watchdog notifications, and
//! sockets passed by socket activation.
//!
//! Every function here is a no-op outside systemd (no `NOTIFY_SOCKET`, no
//! `LISTEN_FDS`), so the daemon runs the same in a terminal and in tests.
//! Failures to notify are logged at debug: systemd being unreachable must
//! never stop delivery.

use sd_notify::NotifyState;
use std::time::Duration;

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// Whether systemd listens for notifications (`NOTIFY_SOCKET` is set).
pub fn supervised() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The database is open, recovery is done and the socket is listening.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The one-line queue summary shown by `systemctl status`.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// How often to ping the watchdog, if systemd asked for pings: half its
/// timeout, as sd_watchdog_enabled(3) recommends.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

pub fn watchdog_ping() {
    notify(&[NotifyState::Watchdog]);
}

/// The Unix socket systemd passed (`LISTEN_FDS`), if any.
pub fn activated_listener() -> std::io::Result<Option<std::os::unix::net::UnixListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    fds.take_unix_listener(0)
}
