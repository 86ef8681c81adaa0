use super::*;

use std::time::{SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// An arbitrary "now" for `decide`, 2023-11-14T22:13:20Z.
const NOW: Millis = 1_700_000_000_000;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn cfg(max_attempts: u32, base: Duration, max: Duration) -> RetryConfig {
    RetryConfig {
        max_attempts,
        base_delay: base,
        max_delay: max,
    }
}

/// The project's default retry policy: 10 attempts, 30 s doubling to 1 h.
fn default_cfg() -> RetryConfig {
    cfg(10, secs(30), secs(3600))
}

fn envelope(success: Option<bool>, message: Option<&str>) -> Body {
    Body::Envelope {
        success,
        message: message.map(str::to_owned),
        body: None,
    }
}

fn http(status: u16, body: Body) -> Answer {
    Answer::Http {
        status,
        retry_after: None,
        body,
    }
}

fn http_retry_after(status: u16, retry_after: Duration, body: Body) -> Answer {
    Answer::Http {
        status,
        retry_after: Some(retry_after),
        body,
    }
}

fn ok(message: Option<&str>) -> Body {
    envelope(Some(true), message)
}

fn transport(never_sent: bool, timeout: bool, detail: &str) -> Answer {
    Answer::Transport(TransportError {
        never_sent,
        timeout,
        detail: detail.to_owned(),
    })
}

fn connect_refused() -> Answer {
    transport(
        true,
        false,
        "error trying to connect: Connection refused (os error 111)",
    )
}

fn connection_reset() -> Answer {
    transport(false, false, "connection reset by peer (os error 104)")
}

fn timed_out() -> Answer {
    transport(false, true, "operation timed out after 30s")
}

/// `min(max, base * 2^(attempt-1))`, computed independently of `backoff`
/// in u128 nanoseconds so that it cannot overflow.
fn full_delay(attempt: u32, retry: &RetryConfig) -> Duration {
    let exponent = attempt.saturating_sub(1);
    let base = retry.base_delay.as_nanos();
    let max = retry.max_delay.as_nanos();
    let full = if exponent >= 100 {
        max
    } else {
        base.saturating_mul(1u128 << exponent).min(max)
    };
    Duration::from_nanos(u64::try_from(full).expect("test configs stay below u64 nanoseconds"))
}

fn ms(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap()
}

fn reason_of(decision: &Decision) -> &str {
    match decision {
        Decision::Skipped { reason }
        | Decision::Failed { reason }
        | Decision::Retry { reason, .. }
        | Decision::Hold { reason }
        | Decision::Expired { reason } => reason,
        Decision::Sent | Decision::PauseForKey => panic!("{decision:?} carries no reason"),
    }
}

fn transient_parts(outcome: &Outcome) -> (&str, bool, Option<Duration>) {
    match outcome {
        Outcome::Transient {
            reason,
            ambiguous,
            retry_after,
        } => (reason, *ambiguous, *retry_after),
        other => panic!("expected Transient, got {other:?}"),
    }
}

fn reason_of_transient(outcome: &Outcome) -> String {
    transient_parts(outcome).0.to_owned()
}

const SUCCESS_STATUSES: [u16; 6] = [200, 201, 202, 204, 250, 299];

/// 408, 425, 429 and every 5xx except 501 and 505.
const RETRYABLE_STATUSES: [u16; 14] = [
    408, 425, 429, 500, 502, 503, 504, 506, 507, 508, 510, 511, 550, 599,
];

/// Everything else that is not 2xx, 401 or 403.
const REJECTED_STATUSES: [u16; 30] = [
    0, 100, 101, 103, 199, 300, 301, 302, 304, 307, 308, 399, 400, 402, 404, 405, 406, 407, 409,
    410, 413, 418, 422, 424, 426, 428, 451, 499, 501, 505,
];

// ---------------------------------------------------------------------------
// classify: 2xx
// ---------------------------------------------------------------------------

#[test]
fn success_true_is_delivered_for_every_2xx() {
    let messages = [
        None,
        Some(""),
        Some("Message sent."),
        Some("Campaign was resumed, message sent."),
        Some("campaign paused"),
        Some("campaign  is paused"),
    ];
    for status in SUCCESS_STATUSES {
        for message in messages {
            let outcome = classify(&http(status, ok(message)));
            assert_eq!(
                outcome,
                Outcome::Delivered {
                    message: message.map(str::to_owned)
                },
                "status {status}, message {message:?}"
            );
            let decision = decide(1, &outcome, &default_cfg(), OnAmbiguous::Hold, NOW, 0.5);
            assert_eq!(
                decision,
                Decision::Sent,
                "status {status}, message {message:?}"
            );
        }
    }
}

#[test]
fn delivered_ignores_the_rest_of_the_envelope() {
    let answer = http(
        200,
        Body::Envelope {
            success: Some(true),
            message: Some("ok".into()),
            body: Some(serde_json::json!({"id": 42, "status": "queued"})),
        },
    );
    assert_eq!(
        classify(&answer),
        Outcome::Delivered {
            message: Some("ok".into())
        }
    );
}

#[test]
fn paused_campaign_is_skipped_with_the_message_as_reason() {
    let messages = [
        "Campaign is paused, message not sent.",
        "campaign is paused, message not sent.",
        "CAMPAIGN IS PAUSED, MESSAGE NOT SENT.",
        "cAmPaIgN iS pAuSeD",
        "Campaign is paused",
        "Error: the campaign is paused; nothing was sent",
    ];
    for status in SUCCESS_STATUSES {
        for message in messages {
            let outcome = classify(&http(status, ok(Some(message))));
            assert_eq!(
                outcome,
                Outcome::CampaignPaused {
                    message: message.to_owned()
                },
                "status {status}, message {message:?}"
            );
            for mode in [OnAmbiguous::Retry, OnAmbiguous::Hold] {
                for attempt in [1, 9, 10, 11, u32::MAX] {
                    let decision = decide(attempt, &outcome, &default_cfg(), mode, NOW, 0.0);
                    assert_eq!(
                        decision,
                        Decision::Skipped {
                            reason: message.to_owned()
                        },
                        "status {status}, message {message:?}, attempt {attempt}, {mode:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn paused_message_does_not_turn_other_answers_into_skips() {
    let text = "Campaign is paused, message not sent.";
    let paused = Some(text);
    // success: false with the paused wording is still a refusal.
    assert_eq!(
        classify(&http(200, envelope(Some(false), paused))),
        Outcome::Refused {
            message: text.to_owned()
        }
    );
    // No success field: not an envelope, whatever the message says.
    let (_, ambiguous, _) = transient_parts(&classify(&http(200, envelope(None, paused))));
    assert!(ambiguous);
    // A non-2xx status with the paused wording follows the status.
    let (_, ambiguous, _) = transient_parts(&classify(&http(503, ok(paused))));
    assert!(!ambiguous);
    assert!(matches!(
        classify(&http(404, ok(paused))),
        Outcome::Rejected { .. }
    ));
    assert_eq!(
        classify(&http(401, ok(paused))),
        Outcome::KeyRejected { status: 401 }
    );
}

#[test]
fn success_false_is_refused_and_fails_without_retry() {
    for status in SUCCESS_STATUSES {
        // With a message: the message is kept and shown.
        let message = "Invalid phone number: +1-555";
        let outcome = classify(&http(status, envelope(Some(false), Some(message))));
        assert_eq!(
            outcome,
            Outcome::Refused {
                message: message.to_owned()
            },
            "status {status}"
        );
        for mode in [OnAmbiguous::Retry, OnAmbiguous::Hold] {
            for attempt in [1, 2, 10] {
                let decision = decide(attempt, &outcome, &default_cfg(), mode, NOW, 0.3);
                assert_eq!(decision.label(), "failed", "status {status}, {decision:?}");
                let reason = reason_of(&decision);
                assert!(reason.contains(message), "{reason}");
            }
        }

        // Without a message: still refused, with a readable reason.
        let outcome = classify(&http(status, envelope(Some(false), None)));
        let Outcome::Refused { message } = &outcome else {
            panic!("status {status}: expected Refused, got {outcome:?}");
        };
        assert!(!message.is_empty());
        assert!(message.contains("success"), "{message}");
        let decision = decide(1, &outcome, &default_cfg(), OnAmbiguous::Retry, NOW, 0.3);
        assert_eq!(decision.label(), "failed");
        assert!(reason_of(&decision).contains("success"), "{decision:?}");
    }
}

#[test]
fn success_false_with_an_empty_message_is_still_refused() {
    let outcome = classify(&http(200, envelope(Some(false), Some(""))));
    assert!(matches!(outcome, Outcome::Refused { .. }), "{outcome:?}");
    assert_eq!(
        decide(1, &outcome, &default_cfg(), OnAmbiguous::Retry, NOW, 0.0).label(),
        "failed"
    );
}

#[test]
fn a_2xx_that_is_not_an_envelope_is_an_ambiguous_transient() {
    let bodies = [
        ("no success field", envelope(None, None)),
        ("no success field, message", envelope(None, Some("hello"))),
        ("html", Body::NotJson("<html>502 Bad Gateway</html>".into())),
        ("empty", Body::NotJson(String::new())),
        ("incomplete", Body::Incomplete("unexpected EOF".into())),
        ("too large", Body::TooLarge),
    ];
    for status in SUCCESS_STATUSES {
        for (what, body) in &bodies {
            let outcome = classify(&http(status, body.clone()));
            let (reason, ambiguous, retry_after) = transient_parts(&outcome);
            assert!(ambiguous, "status {status}, {what}");
            assert_eq!(retry_after, None, "status {status}, {what}");
            assert!(
                reason.contains(&format!("HTTP {status}")),
                "status {status}, {what}: {reason}"
            );
        }
    }
}

#[test]
fn non_envelope_reasons_say_what_was_wrong_with_the_body() {
    let cases = [
        (envelope(None, None), "success"),
        (
            Body::NotJson("<html>oops</html>".into()),
            "<html>oops</html>",
        ),
        (Body::NotJson(String::new()), "empty"),
        (
            Body::Incomplete("connection closed mid-body".into()),
            "connection closed mid-body",
        ),
        (Body::TooLarge, &MAX_BODY_BYTES.to_string()),
    ];
    for (body, expected) in cases {
        let outcome = classify(&http(200, body.clone()));
        let (reason, _, _) = transient_parts(&outcome);
        assert!(
            reason.contains(expected),
            "{body:?}: {reason:?} lacks {expected:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// classify: errors
// ---------------------------------------------------------------------------

#[test]
fn key_rejection_pauses_sending_without_using_an_attempt() {
    let bodies = [
        envelope(Some(false), Some("Invalid API key")),
        ok(Some("Message sent")),
        envelope(None, None),
        Body::NotJson("Unauthorized".into()),
        Body::Incomplete("eof".into()),
        Body::TooLarge,
    ];
    for status in [401, 403] {
        for body in &bodies {
            for answer in [
                http(status, body.clone()),
                http_retry_after(status, secs(60), body.clone()),
            ] {
                let outcome = classify(&answer);
                assert_eq!(outcome, Outcome::KeyRejected { status }, "{answer:?}");
                // No attempt is used: even past max_attempts it is not failed.
                for attempt in [0, 1, 9, 10, 11, u32::MAX] {
                    for mode in [OnAmbiguous::Retry, OnAmbiguous::Hold] {
                        assert_eq!(
                            decide(attempt, &outcome, &default_cfg(), mode, NOW, 1.0),
                            Decision::PauseForKey,
                            "{answer:?}, attempt {attempt}, {mode:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn retryable_statuses_are_unambiguous_transients() {
    let bodies = [
        envelope(Some(false), Some("Service unavailable")),
        ok(None),
        envelope(None, None),
        Body::NotJson("<html>Bad gateway</html>".into()),
        Body::NotJson(String::new()),
        Body::Incomplete("eof".into()),
        Body::TooLarge,
    ];
    for status in RETRYABLE_STATUSES {
        for body in &bodies {
            let outcome = classify(&http(status, body.clone()));
            let (reason, ambiguous, retry_after) = transient_parts(&outcome);
            assert!(!ambiguous, "status {status}, {body:?}");
            assert_eq!(retry_after, None, "status {status}");
            assert!(
                reason.contains(&format!("HTTP {status}")),
                "status {status}: {reason}"
            );

            // The header is carried through.
            let outcome = classify(&http_retry_after(status, secs(17), body.clone()));
            let (_, ambiguous, retry_after) = transient_parts(&outcome);
            assert!(!ambiguous);
            assert_eq!(retry_after, Some(secs(17)), "status {status}");
        }
    }
}

#[test]
fn other_statuses_are_rejected_and_fail_without_retry() {
    let bodies = [
        envelope(Some(false), Some("Validation failed")),
        ok(Some("Message sent")),
        envelope(None, None),
        Body::NotJson("Moved".into()),
        Body::TooLarge,
    ];
    for status in REJECTED_STATUSES {
        for body in &bodies {
            for answer in [
                http(status, body.clone()),
                http_retry_after(status, secs(5), body.clone()),
            ] {
                let outcome = classify(&answer);
                let Outcome::Rejected { reason } = &outcome else {
                    panic!("status {status}: expected Rejected, got {outcome:?}");
                };
                assert!(
                    reason.contains(&format!("HTTP {status}")),
                    "status {status}: {reason}"
                );
                for mode in [OnAmbiguous::Retry, OnAmbiguous::Hold] {
                    let decision = decide(1, &outcome, &default_cfg(), mode, NOW, 0.5);
                    assert_eq!(
                        decision,
                        Decision::Failed {
                            reason: reason.clone()
                        },
                        "status {status}, {mode:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_status_lands_in_exactly_the_documented_row() {
    for status in 0..=999u16 {
        let outcome = classify(&http(status, envelope(Some(false), Some("x"))));
        let expected = match status {
            200..=299 => "refused",
            401 | 403 => "key",
            408 | 425 | 429 => "transient",
            501 | 505 => "rejected",
            500..=599 => "transient",
            _ => "rejected",
        };
        let actual = match &outcome {
            Outcome::Refused { .. } => "refused",
            Outcome::KeyRejected { .. } => "key",
            Outcome::Transient { .. } => "transient",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Delivered { .. } | Outcome::CampaignPaused { .. } => "delivered/paused",
        };
        assert_eq!(actual, expected, "status {status}: {outcome:?}");
    }
}

#[test]
fn http_error_reasons_include_status_and_coax_message() {
    let cases = [
        (503, envelope(Some(false), Some("Try later")), "Try later"),
        (422, envelope(Some(false), Some("Bad number")), "Bad number"),
        (
            500,
            Body::NotJson("Internal Server Error".into()),
            "Internal Server Error",
        ),
        (502, Body::Incomplete("stream ended".into()), "stream ended"),
        (404, Body::NotJson(String::new()), "empty"),
        (400, Body::TooLarge, &MAX_BODY_BYTES.to_string()),
    ];
    for (status, body, expected) in cases {
        let outcome = classify(&http(status, body));
        let decision = decide(1, &outcome, &default_cfg(), OnAmbiguous::Retry, NOW, 0.0);
        let reason = reason_of(&decision);
        assert!(reason.contains(&format!("HTTP {status}")), "{reason}");
        assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
    }
}

#[test]
fn transport_errors_are_transient_and_ambiguous_unless_never_sent() {
    for never_sent in [false, true] {
        for timeout in [false, true] {
            let detail = format!("detail-{never_sent}-{timeout}: tcp stream broke");
            let outcome = classify(&transport(never_sent, timeout, &detail));
            let (reason, ambiguous, retry_after) = transient_parts(&outcome);
            assert_eq!(
                ambiguous, !never_sent,
                "never_sent {never_sent}, timeout {timeout}"
            );
            assert_eq!(retry_after, None);
            assert!(reason.contains(&detail), "{reason}");
            if timeout {
                assert!(reason.contains("timed out"), "{reason}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// decide: retry, max_attempts, hold
// ---------------------------------------------------------------------------

#[test]
fn retry_time_is_now_plus_backoff() {
    let retry = default_cfg();
    let outcome = classify(&http(503, Body::NotJson("down".into())));
    // attempt -> full delay in seconds
    let table = [
        (1, 30),
        (2, 60),
        (3, 120),
        (4, 240),
        (5, 480),
        (6, 960),
        (7, 1920),
        (8, 3600),
        (9, 3600),
    ];
    for (attempt, full) in table {
        for (jitter, expected_secs) in [(0.0, full / 2), (1.0, full)] {
            let decision = decide(attempt, &outcome, &retry, OnAmbiguous::Retry, NOW, jitter);
            assert_eq!(
                decision,
                Decision::Retry {
                    at: NOW + Millis::from(expected_secs) * 1000,
                    reason: reason_of_transient(&outcome),
                },
                "attempt {attempt}, jitter {jitter}"
            );
        }
        let decision = decide(attempt, &outcome, &retry, OnAmbiguous::Retry, NOW, 0.37);
        let Decision::Retry { at, .. } = decision else {
            panic!("{decision:?}");
        };
        assert_eq!(at, NOW + ms(backoff(attempt, &retry, 0.37)));
    }
}

#[test]
fn max_attempts_boundary() {
    let transients = [
        http(503, envelope(Some(false), Some("busy"))),
        http(429, Body::NotJson(String::new())),
        http_retry_after(429, secs(5), envelope(None, None)),
        connect_refused(),
        connection_reset(),
        timed_out(),
        http(200, Body::TooLarge),
    ];
    for max_attempts in [1u32, 2, 3, 5, 10, u32::MAX] {
        let retry = cfg(max_attempts, secs(30), secs(3600));
        for answer in &transients {
            let outcome = classify(answer);
            let (inner, _, _) = transient_parts(&outcome);
            let inner = inner.to_owned();
            let check = |attempt: u32, expect_retry: bool| {
                let d = decide(attempt, &outcome, &retry, OnAmbiguous::Retry, NOW, 0.5);
                if expect_retry {
                    assert_eq!(
                        d.label(),
                        "retry",
                        "max {max_attempts}, attempt {attempt}, {answer:?}"
                    );
                } else {
                    assert_eq!(
                        d.label(),
                        "failed",
                        "max {max_attempts}, attempt {attempt}, {answer:?}"
                    );
                    let reason = reason_of(&d);
                    assert!(reason.contains(&inner), "{reason:?} lacks {inner:?}");
                    assert!(reason.contains(&attempt.to_string()), "{reason}");
                }
            };
            if max_attempts > 1 {
                check(1, true);
                check(max_attempts - 1, true);
            }
            check(max_attempts, false);
            if max_attempts < u32::MAX {
                check(max_attempts + 1, false);
            }
            check(u32::MAX, false);
        }
    }
}

#[test]
fn hold_applies_only_to_ambiguous_transients() {
    let retry = default_cfg();
    let ambiguous = [
        connection_reset(),
        timed_out(),
        http(200, Body::NotJson("<html>".into())),
        http(200, Body::NotJson(String::new())),
        http(201, Body::Incomplete("eof".into())),
        http(204, Body::TooLarge),
        http(200, envelope(None, Some("hi"))),
    ];
    for answer in &ambiguous {
        let outcome = classify(answer);
        let (inner, is_ambiguous, _) = transient_parts(&outcome);
        assert!(is_ambiguous, "{answer:?}");
        for attempt in [1, 5, 9] {
            let held = decide(attempt, &outcome, &retry, OnAmbiguous::Hold, NOW, 0.5);
            assert_eq!(held.label(), "held", "{answer:?}, attempt {attempt}");
            assert!(reason_of(&held).contains(inner), "{held:?}");

            let retried = decide(attempt, &outcome, &retry, OnAmbiguous::Retry, NOW, 0.5);
            assert_eq!(
                retried,
                Decision::Retry {
                    at: NOW + ms(backoff(attempt, &retry, 0.5)),
                    reason: inner.to_owned()
                },
                "{answer:?}, attempt {attempt}"
            );
        }
    }

    let unambiguous = [
        connect_refused(),
        transport(true, true, "TLS handshake timed out"),
        transport(true, false, "dns error: no such host"),
        http(503, Body::NotJson("down".into())),
        http(429, envelope(Some(false), Some("slow down"))),
        http_retry_after(429, secs(42), envelope(None, None)),
        http(408, Body::TooLarge),
    ];
    for answer in &unambiguous {
        let outcome = classify(answer);
        let (_, is_ambiguous, _) = transient_parts(&outcome);
        assert!(!is_ambiguous, "{answer:?}");
        for attempt in [1, 5, 9] {
            let hold = decide(attempt, &outcome, &retry, OnAmbiguous::Hold, NOW, 0.5);
            let plain = decide(attempt, &outcome, &retry, OnAmbiguous::Retry, NOW, 0.5);
            assert_eq!(hold.label(), "retry", "{answer:?}, attempt {attempt}");
            assert_eq!(hold, plain, "{answer:?}, attempt {attempt}");
        }
        // And it still gives up after max_attempts under Hold.
        let last = decide(10, &outcome, &retry, OnAmbiguous::Hold, NOW, 0.5);
        assert_eq!(last.label(), "failed", "{answer:?}");
    }
}

#[test]
fn outcome_table_end_to_end() {
    use OnAmbiguous::{Hold, Retry};
    // (answer, mode, attempt, expected label); max_attempts is 3.
    let table: Vec<(Answer, OnAmbiguous, u32, &str)> = vec![
        (
            http(200, ok(Some("Campaign is paused, message not sent."))),
            Retry,
            1,
            "skipped",
        ),
        (http(200, ok(Some("Message queued"))), Retry, 1, "sent"),
        (http(201, ok(None)), Hold, 3, "sent"),
        (
            http(200, envelope(Some(false), Some("nope"))),
            Retry,
            1,
            "failed",
        ),
        (http(200, envelope(Some(false), None)), Hold, 1, "failed"),
        (http(401, Body::NotJson("".into())), Retry, 3, "paused_auth"),
        (
            http(403, envelope(Some(false), None)),
            Hold,
            1,
            "paused_auth",
        ),
        (http(408, Body::NotJson("".into())), Retry, 1, "retry"),
        (http(425, Body::NotJson("".into())), Hold, 2, "retry"),
        (http(429, Body::NotJson("".into())), Retry, 3, "failed"),
        (http(500, Body::NotJson("".into())), Retry, 1, "retry"),
        (http(501, Body::NotJson("".into())), Retry, 1, "failed"),
        (http(502, Body::NotJson("".into())), Hold, 1, "retry"),
        (http(503, Body::NotJson("".into())), Retry, 2, "retry"),
        (http(504, Body::NotJson("".into())), Retry, 3, "failed"),
        (http(505, Body::NotJson("".into())), Retry, 1, "failed"),
        (http(511, Body::NotJson("".into())), Retry, 1, "retry"),
        (http(599, Body::NotJson("".into())), Retry, 1, "retry"),
        (http(100, Body::NotJson("".into())), Retry, 1, "failed"),
        (http(302, Body::NotJson("".into())), Retry, 1, "failed"),
        (http(400, Body::NotJson("".into())), Retry, 1, "failed"),
        (http(404, Body::NotJson("".into())), Retry, 1, "failed"),
        (http(409, Body::NotJson("".into())), Retry, 1, "failed"),
        (http(422, Body::NotJson("".into())), Retry, 1, "failed"),
        (http(200, Body::NotJson("".into())), Retry, 1, "retry"),
        (http(200, Body::NotJson("".into())), Hold, 1, "held"),
        (http(299, Body::TooLarge), Retry, 3, "failed"),
        (http(299, Body::TooLarge), Hold, 1, "held"),
        (connect_refused(), Hold, 1, "retry"),
        (connect_refused(), Retry, 3, "failed"),
        (connection_reset(), Retry, 1, "retry"),
        (connection_reset(), Hold, 1, "held"),
        (timed_out(), Retry, 2, "retry"),
        (timed_out(), Hold, 2, "held"),
    ];
    let retry = cfg(3, secs(30), secs(3600));
    for (answer, mode, attempt, expected) in table {
        let decision = decide(attempt, &classify(&answer), &retry, mode, NOW, 0.5);
        assert_eq!(
            decision.label(),
            expected,
            "{answer:?}, {mode:?}, attempt {attempt}: {decision:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// decide: Retry-After
// ---------------------------------------------------------------------------

#[test]
fn retry_after_overrides_backoff_and_is_capped_at_max_delay() {
    let retry = default_cfg();
    // (attempt, Retry-After, expected wait)
    let cases = [
        (1, secs(120), secs(120)), // longer than backoff (15..30 s)
        (8, secs(5), secs(5)),     // shorter than backoff (30..60 min)
        (1, Duration::ZERO, Duration::ZERO),
        (3, secs(3600), secs(3600)),
        (3, secs(3601), secs(3600)),
        (1, secs(7200), secs(3600)),
        (2, Duration::from_millis(1500), Duration::from_millis(1500)),
        (5, Duration::from_secs(u64::MAX), secs(3600)),
    ];
    for status in [408, 425, 429, 503] {
        for (attempt, retry_after, wait) in cases {
            let outcome = classify(&http_retry_after(
                status,
                retry_after,
                Body::NotJson(String::new()),
            ));
            for jitter in [0.0, 0.25, 1.0] {
                for mode in [OnAmbiguous::Retry, OnAmbiguous::Hold] {
                    let decision = decide(attempt, &outcome, &retry, mode, NOW, jitter);
                    let Decision::Retry { at, reason } = &decision else {
                        panic!("status {status}, attempt {attempt}: {decision:?}");
                    };
                    assert_eq!(
                        *at,
                        NOW + ms(wait),
                        "status {status}, attempt {attempt}, Retry-After {retry_after:?}, jitter {jitter}"
                    );
                    assert!(reason.contains(&format!("HTTP {status}")), "{reason}");
                }
            }
        }
    }
}

#[test]
fn retry_after_does_not_extend_max_attempts() {
    let retry = cfg(4, secs(30), secs(3600));
    let outcome = classify(&http_retry_after(
        429,
        secs(1),
        Body::NotJson(String::new()),
    ));
    assert_eq!(
        decide(3, &outcome, &retry, OnAmbiguous::Retry, NOW, 0.0),
        Decision::Retry {
            at: NOW + 1000,
            reason: reason_of_transient(&outcome),
        }
    );
    assert_eq!(
        decide(4, &outcome, &retry, OnAmbiguous::Retry, NOW, 0.0).label(),
        "failed"
    );
}

#[test]
fn retry_time_saturates_instead_of_overflowing() {
    let retry = cfg(u32::MAX, secs(30), secs(3600));
    let outcome = classify(&connect_refused());
    for now in [i64::MAX, i64::MAX - 1, i64::MAX - 1_000] {
        let decision = decide(5, &outcome, &retry, OnAmbiguous::Retry, now, 1.0);
        let Decision::Retry { at, .. } = decision else {
            panic!("{decision:?}");
        };
        assert_eq!(at, i64::MAX);
    }
    // Huge Retry-After with a huge max_delay.
    let retry = cfg(3, secs(1), Duration::MAX);
    let outcome = classify(&http_retry_after(503, Duration::MAX, Body::TooLarge));
    let decision = decide(1, &outcome, &retry, OnAmbiguous::Retry, NOW, 0.0);
    assert_eq!(decision.label(), "retry");
    let Decision::Retry { at, .. } = decision else {
        unreachable!()
    };
    assert_eq!(at, i64::MAX);
}

// ---------------------------------------------------------------------------
// backoff
// ---------------------------------------------------------------------------

#[test]
fn backoff_schedule_base_30s_max_1h() {
    let retry = default_cfg();
    // attempt -> full delay: 30 s doubling, capped at 1 h from attempt 8.
    let full_secs = [
        30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600, 3600, 3600,
    ];
    for (i, full) in full_secs.into_iter().enumerate() {
        let attempt = u32::try_from(i).unwrap() + 1;
        assert_eq!(
            backoff(attempt, &retry, 1.0),
            secs(full),
            "attempt {attempt}, jitter 1.0"
        );
        assert_eq!(
            backoff(attempt, &retry, 0.0),
            secs(full) / 2,
            "attempt {attempt}, jitter 0.0"
        );
        assert_eq!(
            backoff(attempt, &retry, 0.5),
            secs(full) * 3 / 4,
            "attempt {attempt}, jitter 0.5"
        );
    }
}

#[test]
fn backoff_clamps_jitter_into_half_to_full() {
    let retry = default_cfg();
    for attempt in [1, 3, 8, 20] {
        let full = full_delay(attempt, &retry);
        for low in [-1.0, -0.0001, -1e300, f64::NEG_INFINITY, f64::MIN] {
            assert_eq!(
                backoff(attempt, &retry, low),
                full / 2,
                "attempt {attempt}, jitter {low}"
            );
        }
        for high in [2.0, 1.0001, 1e300, f64::INFINITY, f64::MAX] {
            assert_eq!(
                backoff(attempt, &retry, high),
                full,
                "attempt {attempt}, jitter {high}"
            );
        }
    }
}

#[test]
fn backoff_is_safe_at_huge_attempt_numbers() {
    let configs = [
        default_cfg(),
        cfg(u32::MAX, Duration::from_millis(1), secs(3600)),
        cfg(u32::MAX, secs(1), secs(1)),
        cfg(u32::MAX, secs(86_400), secs(86_400 * 365)),
        cfg(u32::MAX, secs(1 << 40), secs(1 << 41)),
    ];
    for retry in &configs {
        for attempt in [
            31,
            32,
            33,
            63,
            64,
            65,
            1000,
            u32::MAX / 2,
            u32::MAX - 1,
            u32::MAX,
        ] {
            assert_eq!(
                backoff(attempt, retry, 1.0),
                retry.max_delay,
                "{retry:?}, attempt {attempt}"
            );
            assert_eq!(
                backoff(attempt, retry, 0.0),
                retry.max_delay / 2,
                "{retry:?}, attempt {attempt}"
            );
        }
    }
    // And decide at u32::MAX - 1 of u32::MAX attempts still retries.
    let retry = cfg(u32::MAX, secs(30), secs(3600));
    let outcome = classify(&http(503, Body::TooLarge));
    assert_eq!(
        decide(u32::MAX - 1, &outcome, &retry, OnAmbiguous::Retry, NOW, 1.0),
        Decision::Retry {
            at: NOW + 3_600_000,
            reason: reason_of_transient(&outcome),
        }
    );
}

#[test]
fn backoff_with_equal_base_and_max_is_constant() {
    let retry = cfg(5, secs(10), secs(10));
    for attempt in 1..=40 {
        assert_eq!(backoff(attempt, &retry, 1.0), secs(10));
        assert_eq!(backoff(attempt, &retry, 0.0), secs(5));
    }
}

#[test]
fn backoff_property_within_half_and_full() {
    let configs = [
        default_cfg(),
        cfg(10, secs(1), secs(1)),
        cfg(10, Duration::from_millis(1), secs(600)),
        cfg(10, Duration::from_millis(7), Duration::from_millis(13_001)),
        cfg(10, Duration::from_millis(333), secs(86_400)),
        cfg(10, Duration::from_nanos(1), Duration::from_nanos(999)),
        cfg(10, Duration::new(1, 1), Duration::new(3_000, 999_999_999)),
        cfg(10, secs(60), secs(7 * 86_400)),
    ];
    let mut attempts: Vec<u32> = (1..=70).collect();
    attempts.extend([100, 1_000, u32::MAX - 1, u32::MAX]);
    let mut jitters: Vec<f64> = (0..=100).map(|i| f64::from(i) / 100.0).collect();
    jitters.extend([1e-9, 0.999_999_999, 0.333_333, 0.5 + f64::EPSILON]);

    let mut checked = 0usize;
    for retry in &configs {
        for &attempt in &attempts {
            let full = full_delay(attempt, retry);
            let half = full / 2;
            for &jitter in &jitters {
                let d = backoff(attempt, retry, jitter);
                assert!(
                    d >= half && d <= full,
                    "{retry:?}, attempt {attempt}, jitter {jitter}: {d:?} not in [{half:?}, {full:?}]"
                );
                checked += 1;
            }
            // Monotone in jitter.
            let mut sorted = jitters.clone();
            sorted.sort_by(f64::total_cmp);
            let values: Vec<Duration> =
                sorted.iter().map(|&j| backoff(attempt, retry, j)).collect();
            assert!(
                values.windows(2).all(|w| w[0] <= w[1]),
                "{retry:?}, attempt {attempt}: not monotone in jitter"
            );
        }
        // Monotone in attempt for a fixed jitter.
        for &jitter in &[0.0, 0.5, 1.0] {
            let values: Vec<Duration> = attempts
                .iter()
                .map(|&a| backoff(a, retry, jitter))
                .collect();
            assert!(
                values.windows(2).all(|w| w[0] <= w[1]),
                "{retry:?}, jitter {jitter}: not monotone in attempt"
            );
        }
    }
    assert_eq!(checked, configs.len() * attempts.len() * jitters.len());
}

// ---------------------------------------------------------------------------
// parse_retry_after
// ---------------------------------------------------------------------------

/// 1994-11-06T08:49:37Z, the date in RFC 9110's examples.
fn rfc_example_time() -> SystemTime {
    UNIX_EPOCH + secs(784_111_777)
}

#[test]
fn retry_after_delay_seconds() {
    let now = rfc_example_time();
    let cases = [
        ("0", 0),
        ("1", 1),
        ("120", 120),
        ("  120  ", 120),
        ("\t30\t", 30),
        ("007", 7),
        ("86400", 86_400),
        ("18446744073709551615", u64::MAX),
    ];
    for (text, expected) in cases {
        assert_eq!(
            parse_retry_after(text, now),
            Some(secs(expected)),
            "{text:?}"
        );
    }
}

#[test]
fn retry_after_http_date_in_the_future() {
    let date = rfc_example_time();
    // All three date formats HTTP allows.
    let texts = [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ];
    for text in texts {
        for before in [1u64, 60, 3_600, 86_400 * 30] {
            let now = date - secs(before);
            assert_eq!(
                parse_retry_after(text, now),
                Some(secs(before)),
                "{text:?}, {before}s before"
            );
        }
    }
    // Round trip through the formatter, with surrounding whitespace.
    let now = UNIX_EPOCH + secs(1_700_000_000);
    let later = now + secs(90);
    let text = format!(" {} ", httpdate::fmt_http_date(later));
    assert_eq!(parse_retry_after(&text, now), Some(secs(90)), "{text:?}");
}

#[test]
fn retry_after_http_date_now_or_in_the_past_is_zero() {
    let date = rfc_example_time();
    for text in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
        for after in [0u64, 1, 60, 86_400 * 365 * 30] {
            let now = date + secs(after);
            assert_eq!(
                parse_retry_after(text, now),
                Some(Duration::ZERO),
                "{text:?}, {after}s after"
            );
        }
        // Sub-second "now" just after the date is still zero.
        let now = date + Duration::from_millis(500);
        assert_eq!(parse_retry_after(text, now), Some(Duration::ZERO));
    }
}

#[test]
fn garbage_retry_after_is_none() {
    let now = rfc_example_time();
    let garbage = [
        "",
        "   ",
        "soon",
        "-1",
        "-120",
        "1.5",
        "120s",
        "2m",
        "12 34",
        "0x10",
        "NaN",
        "Sun, 06 Nov 1994",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "2026-01-31T09:00:00Z",
        "1994-11-06 08:49:37",
    ];
    for text in garbage {
        assert_eq!(parse_retry_after(text, now), None, "{text:?}");
    }
}

// ---------------------------------------------------------------------------
// Decision::label, determinism
// ---------------------------------------------------------------------------

#[test]
fn decision_labels() {
    let cases = [
        (Decision::Sent, "sent"),
        (Decision::Skipped { reason: "r".into() }, "skipped"),
        (Decision::Failed { reason: "r".into() }, "failed"),
        (
            Decision::Retry {
                at: 0,
                reason: "r".into(),
            },
            "retry",
        ),
        (Decision::PauseForKey, "paused_auth"),
        (Decision::Hold { reason: "r".into() }, "held"),
    ];
    for (decision, label) in cases {
        assert_eq!(decision.label(), label, "{decision:?}");
    }
}

#[test]
fn decide_is_deterministic() {
    let answers = [
        http(200, ok(None)),
        http(200, ok(Some("Campaign is paused, message not sent."))),
        http(200, envelope(Some(false), None)),
        http(200, Body::NotJson("x".into())),
        http(403, Body::TooLarge),
        http(429, Body::NotJson(String::new())),
        http_retry_after(503, secs(9), Body::NotJson(String::new())),
        http(404, Body::NotJson(String::new())),
        connect_refused(),
        connection_reset(),
        timed_out(),
    ];
    let retry = cfg(6, secs(30), secs(3600));
    for answer in &answers {
        let outcome = classify(answer);
        assert_eq!(outcome, classify(answer), "{answer:?}");
        for attempt in [0, 1, 2, 5, 6, 7, u32::MAX] {
            for jitter in [-1.0, 0.0, 0.123, 0.5, 0.999, 1.0, 2.0] {
                for mode in [OnAmbiguous::Retry, OnAmbiguous::Hold] {
                    for now in [0, NOW, i64::MAX] {
                        let first = decide(attempt, &outcome, &retry, mode, now, jitter);
                        for _ in 0..3 {
                            assert_eq!(
                                first,
                                decide(attempt, &outcome, &retry, mode, now, jitter),
                                "{answer:?}, attempt {attempt}, jitter {jitter}, {mode:?}, now {now}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn decide_retry_moves_with_now_only() {
    let retry = default_cfg();
    let outcome = classify(&connect_refused());
    let a = decide(4, &outcome, &retry, OnAmbiguous::Retry, 1_000, 0.42);
    let b = decide(4, &outcome, &retry, OnAmbiguous::Retry, 61_000, 0.42);
    let (
        Decision::Retry {
            at: at_a,
            reason: ra,
        },
        Decision::Retry {
            at: at_b,
            reason: rb,
        },
    ) = (&a, &b)
    else {
        panic!("{a:?} {b:?}");
    };
    assert_eq!(at_b - at_a, 60_000);
    assert_eq!(ra, rb);
}

#[test]
fn backoff_keeps_doubling_until_max_delay_even_past_2_pow_31() {
    // A config that validation accepts: base_delay = "1ms", max_delay = "30days",
    // max_attempts >= 33.
    let retry = cfg(40, Duration::from_millis(1), secs(30 * 86_400));
    // 1 ms * 2^32 = 49.7 days, so attempt 33 must wait the full 30 days.
    assert_eq!(backoff(33, &retry, 1.0), secs(30 * 86_400));
    for attempt in 1..=40 {
        assert_eq!(
            backoff(attempt, &retry, 1.0),
            full_delay(attempt, &retry),
            "attempt {attempt}"
        );
    }
}

#[test]
fn a_retry_at_or_after_the_expiry_becomes_expired() {
    let retry = |at| Decision::Retry {
        at,
        reason: "HTTP 503".into(),
    };
    assert_eq!(bound_by_expiry(retry(100), None), retry(100));
    assert_eq!(bound_by_expiry(retry(100), Some(101)), retry(100));
    for expiry in [100, 50] {
        match bound_by_expiry(retry(100), Some(expiry)) {
            Decision::Expired { reason } => {
                assert!(
                    reason.contains("HTTP 503") && reason.contains("expiry"),
                    "{reason}"
                )
            }
            other => panic!("expected expired, got {other:?}"),
        }
    }
    // Only retries are bounded: a final answer stands.
    assert_eq!(bound_by_expiry(Decision::Sent, Some(0)), Decision::Sent);
    assert_eq!(
        bound_by_expiry(Decision::PauseForKey, Some(0)),
        Decision::PauseForKey
    );
    assert_eq!(
        Decision::Expired {
            reason: String::new()
        }
        .label(),
        "expired"
    );
}
