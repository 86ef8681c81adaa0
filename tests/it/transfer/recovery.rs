//! A job in `sending` when the export was taken (its request was in
//! flight) is imported as it was, and the importing daemon's crash
//! recovery treats it as after a crash: sent again, its interrupted try
//! marked ambiguous.

use super::{export, released, run, sms, target};
use crate::helpers::coax::CoaxStub;
use crate::helpers::daemon::{TestDaemon, config_text};
use crate::helpers::{PATIENCE, edit_db};
use coax_scheduler::time;
use serde_json::json;

#[tokio::test]
async fn a_job_exported_while_sending_is_recovered_as_a_possible_duplicate() {
    let coax = CoaxStub::start().await;
    let config = config_text(&coax.base_url(), "", "");
    let source = TestDaemon::start_with(&config).await;
    let id = source
        .enqueue(sms("in-flight", json!({"delay": "1h"})))
        .await;
    let dir = source.stop().await;
    released(dir.path()).await;
    // As a claim leaves it: `sending`, one try counted, its attempt open.
    let now = time::now();
    edit_db(
        &dir.path().join("queue.db"),
        &format!(
            "UPDATE jobs SET state = 'sending', attempts = 1, scheduled_at = {now},
                             due_at = {now} WHERE id = {id};
             INSERT INTO attempts (job_id, seq, started_at) VALUES ({id}, 1, {now});"
        ),
    );
    let db = dir.path().join("queue.db");
    let before = std::fs::read(&db).expect("read the database");
    let stream = export(dir.path()).await;
    assert!(stream.contains(r#""state":"sending""#), "{stream}");
    // Export wrote nothing to the database.
    assert!(std::fs::read(&db).expect("read it again") == before);

    let into = target(&config);
    let imported = run("import", into.path(), &stream).await;
    assert!(imported.ok, "{}", imported.stderr);
    let daemon = TestDaemon::start_in(into, &config).await;
    coax.wait_for_requests(1, PATIENCE).await;
    let job = daemon.wait_for_state(id, "sent").await;
    let history = job["history"].as_array().cloned().unwrap_or_default();
    assert_eq!(history.len(), 2, "{job}");
    assert_eq!(history[0]["ambiguous"], true, "{job}");
    assert_eq!(history[1]["decision"], "sent", "{job}");
}
