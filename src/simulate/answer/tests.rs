use super::*;
use std::sync::{Arc, Mutex};

const KEY: &[u8] = b"Bearer k1";

fn behaviour(options: SimOptions) -> Behaviour {
    Behaviour::new(options).unwrap()
}

fn keyed() -> SimOptions {
    SimOptions {
        api_key: Some("k1".into()),
        ..SimOptions::default()
    }
}

fn put(b: &Behaviour, path: &str, auth: Option<&[u8]>, body: &str) -> (Answer, Value) {
    let (route, captures) = b.find(path);
    assert!(b.before_body(route, &Method::PUT).is_none(), "{path}");
    let answer = b.answer_put(
        route,
        captures,
        auth,
        Some(body.as_bytes()),
        SystemTime::now(),
    );
    let value = serde_json::from_str(&answer.body).unwrap();
    (answer, value)
}

#[test]
fn each_route_sends_with_its_message_and_an_enquiry() {
    let b = behaviour(keyed());
    let cases = [
        (
            "/api/v2/message/send/sms",
            r#"{"message":"hi","phone":"1"}"#,
            SENT_MESSAGE,
            None,
        ),
        (
            "/api/v2/message/42/send/sms",
            r#"{"message":"hi"}"#,
            SENT_MESSAGE,
            Some(42),
        ),
        (
            "/api/v2/message/schedule/sms",
            r#"{"message":"hi","phone":"1","scheduled_at":"x"}"#,
            SENT_MESSAGE,
            None,
        ),
        (
            "/api/v2/message/7/schedule/sms",
            r#"{"message":"hi","scheduled_at":"x"}"#,
            SENT_MESSAGE,
            Some(7),
        ),
        (
            "/api/v2/message/ask-for-review",
            r#"{"channel":"sms","phone":"1"}"#,
            REVIEW_MESSAGE,
            None,
        ),
        (
            "/api/v2/message/9/ask-for-review",
            r#"{"channel":"sms"}"#,
            REVIEW_MESSAGE,
            Some(9),
        ),
    ];
    for (path, body, message, enquiry) in cases {
        let (answer, value) = put(&b, path, Some(KEY), body);
        assert_eq!(answer.reply, Reply::Sent, "{path}: {value}");
        assert_eq!(value["success"], true);
        assert_eq!(value["message"], message);
        let id = value["body"]["enquiry"]["id"].as_u64().unwrap();
        match enquiry {
            Some(expected) => assert_eq!(id, expected),
            None => assert!(id >= FIRST_NEW_ENQUIRY),
        }
    }
}

#[test]
fn new_enquiries_get_fresh_ids() {
    let b = behaviour(SimOptions::default());
    let body = r#"{"message":"hi","phone":"1"}"#;
    let (_, first) = put(&b, "/api/v2/message/send/sms", Some(b"Bearer x"), body);
    let (_, second) = put(&b, "/api/v2/message/send/sms", Some(b"Bearer x"), body);
    assert_ne!(
        first["body"]["enquiry"]["id"],
        second["body"]["enquiry"]["id"]
    );
}

#[test]
fn the_token_is_checked() {
    let b = behaviour(keyed());
    let path = "/api/v2/message/9/ask-for-review";
    for auth in [
        None,
        Some(&b"Bearer k2"[..]),
        Some(b"Basic k1"),
        Some(b"Bearer"),
    ] {
        let (answer, value) = put(&b, path, auth, "{}");
        assert_eq!(answer.reply, Reply::Unauthorized, "{auth:?}");
        assert_eq!(value["success"], false);
    }
    assert_eq!(put(&b, path, Some(b"bearer k1"), "{}").0.reply, Reply::Sent);

    let open = behaviour(SimOptions::default());
    assert_eq!(
        put(&open, path, Some(b"Bearer any"), "{}").0.reply,
        Reply::Sent
    );
    assert_eq!(
        put(&open, path, Some(b"Bearer  "), "{}").0.reply,
        Reply::Unauthorized
    );
    assert_eq!(put(&open, path, None, "{}").0.reply, Reply::Unauthorized);
}

#[test]
fn bodies_are_checked_per_route() {
    let b = behaviour(keyed());
    let (answer, value) = put(
        &b,
        "/api/v2/message/5/send/sms",
        Some(KEY),
        r#"{"message":"hi","phone":"1"}"#,
    );
    assert_eq!(answer.reply, Reply::Invalid);
    assert!(
        value["message"].as_str().unwrap().contains("\"phone\""),
        "{value}"
    );
    for body in ["", "not json", "[1]", "null"] {
        let (answer, _) = put(&b, "/api/v2/message/send/sms", Some(KEY), body);
        assert_eq!(answer.reply, Reply::Invalid, "{body:?}");
    }
    let (route, captures) = b.find("/api/v2/message/send/sms");
    let answer = b.answer_put(route, captures, Some(KEY), None, SystemTime::now());
    assert_eq!(answer.reply, Reply::TooLarge);
}

#[test]
fn unsafe_channels_and_enquiry_ids_are_refused() {
    let b = behaviour(keyed());
    for path in [
        "/api/v2/message/send/%2e%2e",
        "/api/v2/message/send/",
        "/api/v2/message/abc/send/sms",
        "/api/v2/message/99999999999999999999999/send/sms",
    ] {
        let (answer, value) = put(&b, path, Some(KEY), r#"{"message":"hi"}"#);
        assert_eq!(answer.reply, Reply::Invalid, "{path}: {value}");
    }
}

#[test]
fn a_paused_campaign_sends_nothing() {
    let b = behaviour(SimOptions {
        paused_campaign: Some("77".into()),
        ..keyed()
    });
    for id in [r#""77""#, "77"] {
        let body = format!(r#"{{"message":"hi","phone":"1","campaign_id":{id}}}"#);
        let (answer, value) = put(&b, "/api/v2/message/send/sms", Some(KEY), &body);
        assert_eq!(answer.reply, Reply::Paused);
        assert_eq!(value, json!({"success": true, "message": PAUSED_MESSAGE}));
    }
    let body = r#"{"message":"hi","phone":"1","campaign_id":78}"#;
    assert_eq!(
        put(&b, "/api/v2/message/send/sms", Some(KEY), body).0.reply,
        Reply::Sent
    );
}

#[test]
fn fail_first_for_fails_once_per_name() {
    let b = behaviour(SimOptions {
        fail_first_for: vec!["+1555".into(), "a@b.c".into(), "42".into()],
        ..keyed()
    });
    let cases = [
        (
            "/api/v2/message/send/sms",
            r#"{"message":"hi","phone":"+1555"}"#,
        ),
        (
            "/api/v2/message/send/sms",
            r#"{"message":"hi","email":"a@b.c"}"#,
        ),
        ("/api/v2/message/42/send/sms", r#"{"message":"hi"}"#),
    ];
    for (path, body) in cases {
        assert_eq!(
            put(&b, path, Some(KEY), body).0.reply,
            Reply::Unavailable,
            "{body}"
        );
        assert_eq!(
            put(&b, path, Some(KEY), body).0.reply,
            Reply::Sent,
            "{body}"
        );
    }
    let other = r#"{"message":"hi","phone":"+1666"}"#;
    assert_eq!(
        put(&b, "/api/v2/message/send/sms", Some(KEY), other)
            .0
            .reply,
        Reply::Sent
    );
}

#[test]
fn fail_rate_one_always_fails_and_bad_rates_are_refused() {
    let b = behaviour(SimOptions {
        fail_rate: 1.0,
        ..keyed()
    });
    for _ in 0..20 {
        let (answer, value) = put(&b, "/api/v2/message/9/ask-for-review", None, "{}");
        assert_eq!(answer.reply, Reply::Unavailable);
        assert_eq!(value["success"], false);
    }
    for rate in [-0.1, 1.5, f64::NAN] {
        let options = SimOptions {
            fail_rate: rate,
            ..SimOptions::default()
        };
        assert!(matches!(
            Behaviour::new(options),
            Err(SimError::FailRate(_))
        ));
    }
}

#[test]
fn methods_and_unknown_paths() {
    let b = behaviour(keyed());
    let (route, _) = b.find("/health");
    assert_eq!(
        b.before_body(route, &Method::GET).unwrap().reply,
        Reply::Healthy
    );
    let answer = b.before_body(route, &Method::PUT).unwrap();
    assert_eq!(
        (answer.reply, answer.allow),
        (Reply::WrongMethod, Some("GET"))
    );
    let (route, _) = b.find("/api/v2/message/send/sms");
    let answer = b.before_body(route, &Method::POST).unwrap();
    assert_eq!(
        (answer.reply, answer.allow),
        (Reply::WrongMethod, Some("PUT"))
    );
    let (route, _) = b.find("/api/v3/anything");
    assert_eq!(
        b.before_body(route, &Method::PUT).unwrap().reply,
        Reply::NotFound
    );
}

#[test]
fn arrivals_are_reported_with_their_reply() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let b = behaviour(SimOptions {
        on_arrival: Some(ArrivalHook::new(move |a: &Arrival<'_>| {
            let phone = a.body.get("phone").cloned();
            sink.lock()
                .unwrap()
                .push((a.route, a.reply, a.channel.map(str::to_owned), phone));
        })),
        ..keyed()
    });
    put(
        &b,
        "/api/v2/message/send/sms",
        Some(KEY),
        r#"{"message":"hi","phone":"1"}"#,
    );
    put(&b, "/api/v2/message/send/sms", Some(KEY), "not json");
    put(&b, "/api/v2/message/send/sms", None, r#"{"message":"hi"}"#);
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        vec![(
            Route::Send,
            Reply::Sent,
            Some("sms".to_owned()),
            Some(json!("1"))
        )]
    );
}

#[test]
fn delay_stays_within_latency_plus_jitter() {
    let b = behaviour(SimOptions {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(10),
        ..SimOptions::default()
    });
    for _ in 0..100 {
        let d = b.delay();
        assert!(
            d >= Duration::from_millis(20) && d <= Duration::from_millis(30),
            "{d:?}"
        );
    }
}
