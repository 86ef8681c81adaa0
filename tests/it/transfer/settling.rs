//! Due times in an export were settled under the source's send windows;
//! the importing daemon settles them anew under its own, even when its
//! store had already been settled under them while it was empty.

use super::{export, released, run};
use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{TestClock, TestDaemon, config_text};
use crate::helpers::{PATIENCE, wait_until};
use coax_scheduler::time;
use serde_json::json;

/// The test config with a window `night` open during `hours` every day.
fn config(coax: &CoaxStub, hours: &str) -> String {
    let days: String = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|d| format!("{d} = \"{hours}\"\n"))
        .collect();
    format!(
        "{}\n[windows.night]\nspread = \"0s\"\n{days}",
        config_text(&coax.base_url(), "", "")
    )
}

#[tokio::test]
async fn an_import_into_a_used_store_settles_due_times_under_its_own_windows() {
    let coax = CoaxStub::start().await;
    let clock = TestClock::at(time::parse_rfc3339("2026-03-02T12:00:00Z").expect("time"));
    let (source_config, target_config) =
        (config(&coax, "02:00-03:00"), config(&coax, "04:00-05:00"));
    let source = TestDaemon::start_with_clock(&source_config, clock.clone()).await;
    let id = source
        .enqueue(
            json!({"kind": "message", "channel": "sms", "window": "night",
                        "payload": {"message": "hi", "phone": "+15550100"}}),
        )
        .await;
    let job = source.get(id).await;
    assert_eq!(job["due_at"], "2026-03-03T02:00:00.000Z", "{job}");
    let stream = export(source.dir.path()).await;

    // The target store was opened (and settled, empty) under its windows.
    let target = TestDaemon::start_with_clock(&target_config, clock.clone()).await;
    wait_until("the empty store to be settled", PATIENCE, || async {
        let conn = rusqlite::Connection::open(target.db()).ok()?;
        conn.query_row("SELECT 1 FROM meta WHERE name = 'calendar'", [], |_| Ok(()))
            .ok()
    })
    .await;
    let dir = target.stop().await;
    released(dir.path()).await;
    let imported = run("import", dir.path(), &stream).await;
    assert!(imported.ok, "{}", imported.stderr);

    let target = TestDaemon::start_in_with_clock(dir, &target_config, clock).await;
    let job = wait_until("the job to be settled anew", PATIENCE, || async {
        let job = target.get(id).await;
        (job["due_at"] != "2026-03-03T02:00:00.000Z").then_some(job)
    })
    .await;
    assert_eq!(job["due_at"], "2026-03-03T04:00:00.000Z", "{job}");
}
