//! The systemd units in `systemd/`, checked with systemd's own tools: the
//! service's exposure as scored by `systemd-analyze security --offline=yes`
//! stays at 1.5 or lower, and `systemd-analyze verify` has nothing to say
//! about the service and socket units. Plus, without any tool, that the units
//! and `config.example.toml` agree on the paths and modes they share.
//!
//! Where `systemd-analyze` is missing the two tool checks print a note and
//! pass, except under CI (`CI` set), where `.ci/test` installs it and a missing
//! tool is a failure rather than a silent skip.

use coax_scheduler::config::Config;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The ceiling for `systemd-analyze security`'s overall exposure (issue 4).
const MAX_EXPOSURE: f64 = 1.5;

const SERVICE: &str = "coax-scheduler.service";
const SOCKET: &str = "coax-scheduler.socket";
const INSTALLED_BINARY: &str = "/usr/local/bin/coax-scheduler";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn unit_path(name: &str) -> PathBuf {
    repo_path("systemd").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `systemd-analyze ARGS` with plain, uncoloured, unpaged output; `None`
/// (after a note) where the tool is not installed.
fn systemd_analyze(args: &[&std::ffi::OsStr]) -> Option<Output> {
    let result = Command::new("systemd-analyze")
        .arg("--no-pager")
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_PAGER", "")
        .env("LC_ALL", "C")
        .output();
    match result {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "systemd-analyze is missing under CI; .ci/test should have installed it (package systemd)"
            );
            eprintln!(
                "note: systemd-analyze is not installed; the systemd unit checks are skipped \
                 (apt-get install systemd to run them)"
            );
            None
        }
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The number in `-> Overall exposure level for coax-scheduler.service: 1.2 OK :-)`
/// (or with `→` and `🙂` in a UTF-8 locale).
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|line| line.contains("Overall exposure level for"))?;
    let (_, after) = line.rsplit_once(": ")?;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn overall_exposure_level_parses_from_the_report_line() {
    let report = "- PrivateNetwork=   Service has access to the host's network   0.5\n\n\
                  -> Overall exposure level for coax-scheduler.service: 1.2 OK :-)\n";
    assert_eq!(overall_exposure(report), Some(1.2));
    let utf8 = "→ Overall exposure level for coax-scheduler.service: 9.6 UNSAFE 😨\n";
    assert_eq!(overall_exposure(utf8), Some(9.6));
    assert_eq!(overall_exposure("no summary here"), None);
}

#[test]
fn the_service_scores_an_exposure_of_at_most_1_5() {
    let service = unit_path(SERVICE);
    let Some(output) = systemd_analyze(&[
        "security".as_ref(),
        "--offline=yes".as_ref(),
        service.as_os_str(),
    ]) else {
        return;
    };
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "systemd-analyze security failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let exposure = overall_exposure(&stdout)
        .unwrap_or_else(|| panic!("no \"Overall exposure level\" line in:\n{stdout}\n{stderr}"));
    // The items that still cost something, so a failure says what to fix.
    // Under LC_ALL=C systemd marks them "- " (and met ones "+ "), not ✗ and ✓.
    let open: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("- ") || l.starts_with('✗'))
        .collect();
    assert!(
        exposure <= MAX_EXPOSURE,
        "{SERVICE} scores {exposure}, above {MAX_EXPOSURE}; the open items:\n{}",
        open.join("\n")
    );
    eprintln!("{SERVICE}: overall exposure {exposure} (at most {MAX_EXPOSURE})");
}

/// Whether a line of `systemd-analyze verify` output is about a unit file of
/// the host rather than ours. Verifying builds a start transaction for our
/// units, which loads the host's own units through `DefaultDependencies=`
/// (sysinit.target, basic.target, sockets.target and what they pull in), so a
/// warning in a distribution's or an admin's unit file
/// (`/lib/systemd/system/foo.service:12: Unknown key ...`) can show up here.
/// Such a line names a host unit file and not ours; every other line counts.
fn is_about_a_host_unit_file(line: &str) -> bool {
    const HOST_UNIT_DIRS: &[&str] = &[
        "/etc/systemd/",
        "/run/systemd/",
        "/lib/systemd/",
        "/usr/lib/systemd/",
        "/usr/local/lib/systemd/",
    ];
    HOST_UNIT_DIRS.iter().any(|dir| line.starts_with(dir)) && !line.contains("coax-scheduler")
}

#[test]
fn systemd_analyze_verify_is_clean() {
    // `verify` checks that ExecStart= is executable, and the binary is not
    // installed at /usr/local/bin here; so verify copies of both units (the
    // socket beside the service, which Requires= it) whose ExecStart= names
    // the binary cargo built. Nothing else in the copies differs.
    let dir = tempfile::tempdir().unwrap();
    let service_text = read(&unit_path(SERVICE));
    let exec_start = format!("ExecStart={INSTALLED_BINARY} ");
    assert_eq!(
        service_text.matches(&exec_start).count(),
        1,
        "{SERVICE} should have one line starting {exec_start:?}"
    );
    let service_copy = service_text.replace(
        &exec_start,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_coax-scheduler")),
    );
    let service = dir.path().join(SERVICE);
    let socket = dir.path().join(SOCKET);
    std::fs::write(&service, service_copy).unwrap();
    std::fs::copy(unit_path(SOCKET), &socket).unwrap();

    let Some(output) =
        systemd_analyze(&["verify".as_ref(), service.as_os_str(), socket.as_os_str()])
    else {
        return;
    };
    let (stdout, stderr) = text(&output);
    let (host, ours): (Vec<&str>, Vec<&str>) = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|line| !line.trim().is_empty())
        .partition(|line| is_about_a_host_unit_file(line));
    for line in &host {
        eprintln!("note: systemd-analyze verify, about a host unit, ignored: {line}");
    }
    assert!(
        output.status.success() && ours.is_empty(),
        "systemd-analyze verify {SERVICE} {SOCKET} is not clean ({}):\n{}",
        output.status,
        ours.join("\n")
    );
}

#[test]
fn host_unit_file_lines_are_told_from_ours() {
    assert!(is_about_a_host_unit_file(
        "/lib/systemd/system/foo.service:3: Unknown key 'Bar' in section [Service], ignoring."
    ));
    assert!(!is_about_a_host_unit_file(
        "/tmp/x/coax-scheduler.service:3: Unknown key 'Bar' in section [Service], ignoring."
    ));
    assert!(!is_about_a_host_unit_file(
        "coax-scheduler.service: Command /x is not executable: No such file or directory"
    ));
    assert!(!is_about_a_host_unit_file(
        "/etc/systemd/system/coax-scheduler.service.d/x.conf:1: Unknown key"
    ));
}

/// The values of `key` in a unit file, in order, comments skipped.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn unit_value(unit: &str, key: &str, name: &str) -> String {
    let values = unit_values(unit, key);
    assert_eq!(values.len(), 1, "{name} should set {key}= once: {values:?}");
    values.into_iter().next().unwrap()
}

#[test]
fn the_units_and_the_example_config_agree() {
    let service = read(&unit_path(SERVICE));
    let socket = read(&unit_path(SOCKET));
    let example = repo_path("config.example.toml");
    let config = Config::from_toml(&read(&example), &example, &|name| {
        (name == "COAX_API_KEY").then(|| "unit-check-key".to_owned())
    })
    .expect("config.example.toml loads");

    // The client finds the socket through socket.path; systemd creates it.
    let listen = unit_value(&socket, "ListenStream", SOCKET);
    assert_eq!(
        Path::new(&listen),
        config.socket.path,
        "ListenStream= vs socket.path"
    );
    let mode = u32::from_str_radix(&unit_value(&socket, "SocketMode", SOCKET), 8).unwrap();
    assert_eq!(mode, config.socket.mode, "SocketMode= vs socket.mode");
    assert_eq!(unit_value(&socket, "SocketGroup", SOCKET), "coax-clients");
    assert_eq!(unit_value(&socket, "Service", SOCKET), SERVICE);

    // The database lives in the StateDirectory=, the only writable place.
    let state = unit_value(&service, "StateDirectory", SERVICE);
    let state_dir = Path::new("/var/lib").join(&state);
    assert!(
        config.store.path.starts_with(&state_dir),
        "store.path {} is outside StateDirectory= {}",
        config.store.path.display(),
        state_dir.display()
    );
    // No RuntimeDirectory= over the socket's directory: it would chown the
    // socket away from its group and unlink it whenever the service stops.
    for runtime in unit_values(&service, "RuntimeDirectory") {
        assert!(
            !Path::new(&listen).starts_with(Path::new("/run").join(&runtime)),
            "RuntimeDirectory={runtime} would own the socket unit's {listen}"
        );
    }

    // The stop timeout leaves room for dispatch.shutdown_timeout.
    let stop = humantime::parse_duration(&unit_value(&service, "TimeoutStopSec", SERVICE))
        .expect("TimeoutStopSec= is a duration");
    assert!(
        stop >= config.dispatch.shutdown_timeout + Duration::from_secs(5),
        "TimeoutStopSec={stop:?} leaves no room after shutdown_timeout {:?}",
        config.dispatch.shutdown_timeout
    );

    // The daemon is started on the config it documents as the default.
    let exec_start = unit_value(&service, "ExecStart", SERVICE);
    assert!(
        exec_start.starts_with(INSTALLED_BINARY)
            && exec_start.ends_with("run --config /etc/coax-scheduler/config.toml"),
        "ExecStart={exec_start}"
    );
}
