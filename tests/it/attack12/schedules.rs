//! Schedule rows an import brings in that the daemon cannot read: one
//! whose `catch_up` or job is nonsense spins the schedule task, and one
//! whose `next_at` is not an integer stops every schedule and `stats`.

use super::{import, job, schedule, stderr, with};
use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{DaemonProcess, TestDaemon};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::time;
use serde_json::{Value, json};
use std::time::Duration;

/// A schedule row the daemon cannot read (a `catch_up` it does not know),
/// due now, made the schedule task loop without waiting: about 800 WARN
/// lines a second, and a core kept busy, for as long as the daemon runs.
/// It is now set aside once (its `next_at` null, one ERROR saying how to
/// mend it), and still shown, beside the others, so it can be found.
#[tokio::test]
async fn unreadable_imported_schedule_floods_the_log() {
    let coax = CoaxStub::start().await;
    let now = time::now();
    let template =
        r#"{"kind":"message","channel":"sms","payload":{"message":"hi","phone":"+15550100"}}"#;
    let (dir, config, output) = import(
        &coax,
        &[
            // Due a little after start-up: its send marks time passing.
            job(1, now + 1_500),
            schedule("broken", "maybe", template, now),
            schedule("daily", "skip", template, now + 86_400_000),
            schedule("not-json", "skip", "{", now),
        ],
    )
    .await;
    assert!(output.status.success(), "import: {}", stderr(&output));
    let daemon = DaemonProcess::start(dir.path(), &config).await;
    let reported = |logs: String| {
        logs.lines()
            .filter(|l| l.contains("a schedule's row cannot be read"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    wait_until(
        "both unreadable schedules to be reported",
        PATIENCE,
        || async { (reported(daemon.logs()).len() >= 2).then_some(()) },
    )
    .await;
    wait_until("job 1 to be sent", PATIENCE, || async {
        let answer = daemon.request(json!({"op": "get", "id": 1})).await;
        (answer["job"]["state"] == "sent").then_some(())
    })
    .await;
    let lines = reported(daemon.logs());
    assert_eq!(lines.len(), 2, "reported once each: {lines:#?}");
    assert!(
        lines[0].contains("ERROR") && lines[0].contains("schedule_put"),
        "{}",
        lines[0]
    );
    let broken = daemon
        .request(json!({"op": "schedule_get", "name": "broken"}))
        .await;
    assert_eq!(broken["ok"], true, "schedule_get: {broken}");
    assert_eq!(broken["schedule"]["catch_up"], "maybe");
    assert_eq!(broken["schedule"]["next_at"], Value::Null);
    assert_eq!(
        broken["schedule"]["unreadable"],
        "catch_up \"maybe\" is not one we know"
    );
    let listed = daemon.request(json!({"op": "schedule_list"})).await;
    let names: Vec<_> = listed["schedules"]
        .as_array()
        .map(|all| all.iter().map(|s| s["name"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["broken", "daily", "not-json"], "{listed}");
    assert_eq!(listed["schedules"][1]["unreadable"], Value::Null);
    assert_eq!(listed["schedules"][2]["job"], "{");

    // The CLI says so too, where an operator looks.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(crate::helpers::daemon::binary())
            .arg("--socket")
            .arg(&daemon.socket)
            .args(args)
            .output()
            .expect("run the CLI");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let shown = cli(&["schedule", "get", "broken"]);
    assert!(
        shown.contains("unreadable catch_up \"maybe\" is not one we know"),
        "{shown}"
    );
    let table = cli(&["schedule", "list"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("broken"))
        .unwrap_or("");
    assert!(row.ends_with("unreadable"), "{table}");
}

/// A schedule row whose `next_at` is not an integer (1.5 here; text or
/// bytes do the same) is not set aside as other unreadable rows are: the
/// schedule task fails on it every second ("cannot create recurring sends
/// now"), so no other schedule fires, and `stats` and `schedule_list`
/// answer an internal error.
#[tokio::test]
async fn schedule_with_a_non_integer_next_at_stops_every_schedule_and_stats() {
    let coax = CoaxStub::start().await;
    let now = time::now();
    let template =
        r#"{"kind":"message","channel":"sms","payload":{"message":"hi","phone":"+15550100"}}"#;
    let every_second = with(
        schedule("good", "skip", template, now + 1_000),
        json!({"cron": "* * * * * *"}),
    );
    let odd = with(
        schedule("odd", "skip", template, now),
        json!({"next_at": 1.5}),
    );
    let (dir, config, output) = import(&coax, &[every_second, odd]).await;
    assert!(output.status.success(), "import: {}", stderr(&output));
    let daemon = TestDaemon::start_in(dir, &config).await;
    let stats = daemon.request(json!({"op": "stats"})).await;
    assert_eq!(stats["ok"], true, "stats: {stats}");
    let listed = daemon.request(json!({"op": "schedule_list"})).await;
    assert_eq!(listed["ok"], true, "schedule_list: {listed}");
    assert_eq!(listed["schedules"][0]["name"], "good", "{listed}");
    assert_eq!(listed["schedules"][1]["name"], "odd", "{listed}");
    // Shown unreadable, or already set aside (next_at null) by the task.
    assert_eq!(listed["schedules"][1]["next_at"], Value::Null);
    wait_until(
        "the healthy schedule to create an occurrence",
        Duration::from_secs(5),
        || async {
            let answer = daemon
                .request(json!({"op": "list", "tag": "schedule:good"}))
                .await;
            let jobs = answer["jobs"].as_array().map_or(0, Vec::len);
            (jobs > 0).then_some(())
        },
    )
    .await;
}
