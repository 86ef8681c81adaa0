//! The shortest path through the daemon: enqueue, deliver, inspect.

use crate::helpers::PATIENCE;
use crate::helpers::coax::{CoaxStub, Reply};
use crate::helpers::daemon::{TEST_KEY, TestDaemon};
use serde_json::json;

#[tokio::test]
async fn a_job_due_now_is_delivered_and_recorded() {
    let coax = CoaxStub::start().await;
    coax.set_default(Reply::sent());
    let daemon = TestDaemon::start(&coax.base_url()).await;

    let id = daemon
        .enqueue(json!({
            "kind": "message", "channel": "sms", "key": "welcome-1",
            "payload": {"message": "Hello", "phone": "+15550100", "business_location_id": 3}
        }))
        .await;
    let job = daemon.wait_for_state(id, "sent").await;

    let requests = coax.wait_for_requests(1, PATIENCE).await;
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].path, "/api/v2/message/send/sms");
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
    assert_eq!(
        requests[0].json(),
        json!({"message": "Hello", "phone": "+15550100", "business_location_id": 3})
    );
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["result"]["status"], 200);
    assert_eq!(job["result"]["body"]["enquiry"]["id"], 4242);
    assert_eq!(job["history"][0]["decision"], "sent");
    assert_eq!(job["history"][0]["status"], 200);
    daemon.stop().await;
}
