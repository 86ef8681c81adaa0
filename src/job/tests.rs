use super::*;
use serde_json::json;

const NOW: Millis = 1_800_000_000_000;

fn ttl_rules(seconds: u64) -> Rules {
    Rules {
        default_ttl: Some(Duration::from_secs(seconds)),
        ..Rules::default()
    }
}

fn err(job: Value) -> JobError {
    validate(&job, NOW, &Rules::default()).unwrap_err()
}

#[test]
fn a_minimal_message_is_due_now() {
    let job = validate(
        &json!({"kind":"message","channel":"sms","payload":{"message":"hi","phone":"+15550100"}}),
        NOW,
        &Rules::default(),
    )
    .unwrap();
    assert_eq!(job.scheduled_at, NOW);
    assert_eq!(job.kind, Kind::Message);
    assert_eq!(job.enquiry_id, None);
}

#[test]
fn delay_is_counted_from_now() {
    let job = validate(
        &json!({"kind":"message","channel":"sms","delay":"2h","payload":{"message":"hi","email":"a@b.c"}}),
        NOW,
        &Rules::default(),
    )
    .unwrap();
    assert_eq!(job.scheduled_at, NOW + 7_200_000);
}

#[test]
fn scheduled_at_and_delay_together_are_refused() {
    let e = err(
        json!({"kind":"message","channel":"sms","delay":"2h","scheduled_at":"2030-01-01T00:00:00Z","payload":{"message":"hi","phone":"1"}}),
    );
    assert_eq!(e.field, "delay");
}

#[test]
fn path_injection_is_refused() {
    for bad in ["../admin", "sms/../../x", "sms?x=1", "", "s s", "%2e%2e"] {
        let e = err(json!({"kind":"message","channel":bad,"payload":{"message":"hi","phone":"1"}}));
        assert_eq!(e.field, "channel", "{bad}");
    }
    for bad in [
        json!("../admin"),
        json!("12a"),
        json!(-3),
        json!(1.5),
        json!(""),
    ] {
        let e = err(
            json!({"kind":"message","channel":"sms","enquiry_id":bad,"payload":{"message":"hi"}}),
        );
        assert_eq!(e.field, "enquiry_id");
    }
}

#[test]
fn numeric_enquiry_id_is_accepted() {
    let job = validate(
        &json!({"kind":"message","channel":"sms","enquiry_id":77,"payload":{"message":"hi"}}),
        NOW,
        &Rules::default(),
    )
    .unwrap();
    assert_eq!(job.enquiry_id.as_deref(), Some("77"));
}

#[test]
fn unknown_payload_field_is_named() {
    let e = err(
        json!({"kind":"message","channel":"sms","payload":{"message":"hi","phone":"1","colour":"red"}}),
    );
    assert_eq!(e.field, "payload.colour");
    // Route 2 does not take customer fields.
    let e = err(
        json!({"kind":"message","channel":"sms","enquiry_id":"5","payload":{"message":"hi","phone":"1"}}),
    );
    assert_eq!(e.field, "payload.phone");
}

#[test]
fn unknown_job_field_is_named() {
    let e = err(
        json!({"kind":"message","channel":"sms","when":"now","payload":{"message":"hi","phone":"1"}}),
    );
    assert_eq!(e.field, "when");
}

#[test]
fn message_rules() {
    let e = err(json!({"kind":"message","channel":"sms","payload":{"phone":"1"}}));
    assert_eq!(e.field, "payload.message");
    let e = err(json!({"kind":"message","channel":"sms","payload":{"message":"  ","phone":"1"}}));
    assert_eq!(e.field, "payload.message");
    let e = err(
        json!({"kind":"coax_schedule","channel":"sms","payload":{"message":3,"phone":"1","scheduled_at":"x"}}),
    );
    assert_eq!(e.field, "payload.message");
}

#[test]
fn customer_routes_need_a_customer() {
    let e = err(json!({"kind":"message","channel":"sms","payload":{"message":"hi"}}));
    assert_eq!(e.field, "payload");
    let e = err(json!({"kind":"review_request","channel":"sms","payload":{"phone":""}}));
    assert_eq!(e.field, "payload");
    validate(
        &json!({"kind":"review_request","channel":"email","payload":{"customer_id":9}}),
        NOW,
        &Rules::default(),
    )
    .unwrap();
}

#[test]
fn coax_schedule_needs_coax_time() {
    let e =
        err(json!({"kind":"coax_schedule","channel":"sms","payload":{"message":"hi","phone":"1"}}));
    assert_eq!(e.field, "payload.scheduled_at");
}

#[test]
fn review_channel_goes_into_the_body() {
    let job = validate(
        &json!({"kind":"review_request","channel":"email","enquiry_id":"12","payload":{}}),
        NOW,
        &Rules::default(),
    )
    .unwrap();
    assert_eq!(job.payload.get("channel"), Some(&json!("email")));
    let e = err(
        json!({"kind":"review_request","channel":"email","payload":{"channel":"sms","phone":"1"}}),
    );
    assert_eq!(e.field, "payload.channel");
}

#[test]
fn every_route_has_its_documented_fields() {
    assert!(payload_field_allowed(
        Kind::CoaxSchedule,
        false,
        "customer_id"
    ));
    assert!(!payload_field_allowed(Kind::Message, false, "customer_id"));
    assert!(payload_field_allowed(
        Kind::CoaxSchedule,
        true,
        "scheduled_at"
    ));
    assert!(!payload_field_allowed(
        Kind::CoaxSchedule,
        true,
        "campaign_id"
    ));
    assert!(payload_field_allowed(
        Kind::ReviewRequest,
        false,
        "review_types"
    ));
    assert!(!payload_field_allowed(
        Kind::ReviewRequest,
        true,
        "customer_id"
    ));
    assert!(!payload_field_allowed(
        Kind::ReviewRequest,
        false,
        "contact_id"
    ));
}

#[test]
fn expiry_rules() {
    let base = json!({"kind":"message","channel":"sms","delay":"1h","payload":{"message":"hi","phone":"1"}});
    let with = |field: &str, value: Value| {
        let mut job = base.clone();
        job[field] = value;
        job
    };
    let job = validate(&with("ttl", json!("30m")), NOW, &Rules::default()).unwrap();
    assert_eq!(job.expires_at, Some(NOW + 3_600_000 + 1_800_000));
    let job = validate(&base, NOW, &ttl_rules(60)).unwrap();
    assert_eq!(
        job.expires_at,
        Some(NOW + 3_600_000 + 60_000),
        "default_ttl counts from scheduled_at"
    );
    let job = validate(&with("ttl", json!("5m")), NOW, &ttl_rules(60)).unwrap();
    assert_eq!(
        job.expires_at,
        Some(NOW + 3_600_000 + 300_000),
        "the job's own ttl wins"
    );
    assert_eq!(
        validate(&base, NOW, &Rules::default()).unwrap().expires_at,
        None
    );
    assert_eq!(
        err(with("expires_at", json!("2000-01-01T00:00:00Z"))).field,
        "expires_at"
    );
    assert_eq!(err(with("expires_at", json!(5))).field, "expires_at");
    assert_eq!(err(with("ttl", json!("0s"))).field, "ttl");
    assert_eq!(err(with("ttl", json!("soon"))).field, "ttl");
    let mut both = with("ttl", json!("1h"));
    both["expires_at"] = json!("2100-01-01T00:00:00Z");
    assert_eq!(err(both).field, "ttl");
}

#[test]
fn bad_kind_and_key() {
    assert_eq!(err(json!({"channel":"sms"})).field, "kind");
    assert_eq!(err(json!({"kind":"fax","channel":"sms"})).field, "kind");
    assert_eq!(
        err(json!({"kind":"message","channel":"sms","key":"","payload":{"message":"hi","phone":"1"}})).field,
        "key"
    );
    assert_eq!(err(json!(["not", "an", "object"])).field, "job");
}
