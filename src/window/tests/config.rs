//! The calendar's keys as `check-config` reads them, and the rule a job gets.

use super::*;

const BUSINESS: &str = r#"
[dispatch]
default_timezone = "Australia/Sydney"
default_window   = "business"
poll_interval = "1s"   # other keys are ignored here

[windows.business]
mon = "09:00-20:00"
tue = "09:00-20:00"
wed = "09:00-12:00, 13:00-20:00"
sat = "10:00-16:00"
sun = "closed"
holidays = ["2026-12-25", "2026-12-28", "2027-01-01"]
spread = "20m"

[windows.night]
mon = "20:00-24:00"
tue = "00:00-08:00"
"#;

/// The key and message of a refused calendar.
fn refusal(text: &str) -> (String, String) {
    match Calendar::from_toml(text) {
        Err(CalendarError::Invalid { key, message }) => (key, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn window_refusal(body: &str) -> (String, String) {
    refusal(&format!("[windows.business]\n{body}"))
}

#[test]
fn the_example_calendar_is_read() {
    let c = calendar(BUSINESS);
    assert_eq!(c.default_zone_name(), "Australia/Sydney");
    assert_eq!(c.default_window_name(), Some("business"));
    assert_eq!(c.window_names().collect::<Vec<_>>(), ["business", "night"]);
    assert_ne!(c, Calendar::none());
    assert_eq!(Calendar::from_toml("").expect("empty"), Calendar::none());
}

#[test]
fn malformed_ranges_name_their_day() {
    for bad in [
        "9-12",
        "9:00-12:00",
        "09:00",
        "09:00-12:60",
        "24:00-24:00",
        "09:00-24:30",
        "",
        "open",
        "09:00-12:00,",
    ] {
        let (key, message) = window_refusal(&format!("wed = {bad:?}\nmon = \"09:00-10:00\""));
        assert_eq!(key, "windows.business.wed", "{bad:?}: {message}");
        assert!(message.contains("HH:MM-HH:MM"), "{message}");
    }
}

#[test]
fn a_range_that_ends_before_or_when_it_starts_is_refused() {
    for bad in ["12:00-09:00", "09:00-09:00", "22:00-02:00"] {
        let (key, message) = window_refusal(&format!("tue = {bad:?}"));
        assert_eq!(key, "windows.business.tue", "{bad}");
        assert!(
            message.contains("ends before or when it starts"),
            "{message}"
        );
    }
}

#[test]
fn overlapping_ranges_are_refused_and_touching_ones_merged() {
    let (key, message) = window_refusal(r#"mon = "09:00-12:00, 11:00-13:00""#);
    assert_eq!(key, "windows.business.mon");
    assert!(
        message.contains("overlapping ranges 09:00-12:00 and 11:00-13:00"),
        "{message}"
    );
    let touching = rule("UTC", r#"mon = "12:00-13:00, 09:00-12:00""#);
    let merged = rule("UTC", r#"mon = "09:00-13:00""#);
    let at = utc("2026-11-30T08:00:00Z");
    assert_eq!(touching.next_opening(at), merged.next_opening(at));
    assert!(touching.is_open(utc("2026-11-30T12:00:00Z")));
    assert_eq!(
        calendar("[windows.w]\nmon = \"12:00-13:00, 09:00-12:00\"").fingerprint(),
        calendar("[windows.w]\nmon = \"09:00-13:00\"").fingerprint()
    );
}

#[test]
fn an_unknown_day_key_is_named() {
    let err = Calendar::from_toml("[windows.business]\nmon = \"09:00-10:00\"\nmonday = \"closed\"")
        .expect_err("an unknown key");
    let text = err.to_string();
    assert!(
        text.contains("monday") && text.contains("windows.business"),
        "{text}"
    );
}

#[test]
fn bad_holidays_are_named() {
    for bad in [
        "2026-13-01",
        "2026-02-30",
        "2026-2-1",
        "25/12/2026",
        "2026-12-25T00:00",
    ] {
        let (key, message) =
            window_refusal(&format!("mon = \"09:00-10:00\"\nholidays = [{bad:?}]"));
        assert_eq!(key, "windows.business.holidays", "{bad}");
        assert!(message.contains(bad), "{message}");
    }
}

#[test]
fn an_unknown_default_timezone_is_named() {
    for bad in ["Mars/Olympus_Mons", "", "Etc/Unknown", "+05:00"] {
        let (key, message) = refusal(&format!("[dispatch]\ndefault_timezone = {bad:?}"));
        assert_eq!(key, "dispatch.default_timezone", "{bad}");
        assert!(message.contains("IANA"), "{message}");
    }
    // Case does not matter; the canonical name is kept.
    let c = calendar("[dispatch]\ndefault_timezone = \"america/new_york\"");
    assert_eq!(c.default_zone_name(), "America/New_York");
}

#[test]
fn a_default_window_that_does_not_exist_is_named() {
    let (key, message) = refusal("[dispatch]\ndefault_window = \"business\"");
    assert_eq!(key, "dispatch.default_window");
    assert!(message.contains("no [windows.*] tables"), "{message}");
    let (key, message) = refusal(&BUSINESS.replace("= \"business\"", "= \"weekend\""));
    assert_eq!(key, "dispatch.default_window");
    assert!(message.contains(r#""business", "night""#), "{message}");
}

#[test]
fn a_window_that_never_opens_is_refused() {
    for body in [
        "",
        "sun = \"closed\"",
        "mon = \"closed\"\nholidays = [\"2026-12-25\"]",
    ] {
        let (key, message) = window_refusal(body);
        assert_eq!(key, "windows.business", "{body}");
        assert!(message.contains("never opens"), "{message}");
    }
}

#[test]
fn a_window_named_none_is_refused() {
    for name in ["none", "None"] {
        let (key, message) = refusal(&format!("[windows.{name}]\nmon = \"09:00-10:00\""));
        assert_eq!(key, format!("windows.{name}"));
        assert!(message.contains("reserved"), "{message}");
    }
}

#[test]
fn spread_is_at_most_a_day() {
    let (key, message) = window_refusal("mon = \"09:00-10:00\"\nspread = \"25h\"");
    assert_eq!(key, "windows.business.spread");
    assert!(message.contains("longer than 24h"), "{message}");
    let (key, _) = window_refusal("mon = \"09:00-10:00\"\nspread = \"soon\"");
    assert_eq!(key, "windows.business.spread");
    for fine in ["0s", "20m", "24h"] {
        calendar(&format!(
            "[windows.w]\nmon = \"09:00-10:00\"\nspread = {fine:?}"
        ));
    }
}

#[test]
fn a_job_gets_the_defaults_unless_it_names_its_own() {
    let c = calendar(BUSINESS);
    let r = c.rule(None, None, Kind::Message).expect("defaults");
    assert_eq!(
        (r.zone_name(), r.window_name()),
        ("Australia/Sydney", "business")
    );
    let r = c.rule(None, None, Kind::ReviewRequest).expect("defaults");
    assert_eq!(r.window_name(), "business");
    // A schedule handed to Coax reaches no customer when it is sent.
    let r = c.rule(None, None, Kind::CoaxSchedule).expect("defaults");
    assert_eq!(r.window_name(), "none");
    let r = c
        .rule(None, Some("night"), Kind::CoaxSchedule)
        .expect("named");
    assert_eq!(r.window_name(), "night");
    let r = c
        .rule(Some("Asia/Kathmandu"), Some("none"), Kind::Message)
        .expect("named");
    assert_eq!((r.zone_name(), r.window_name()), ("Asia/Kathmandu", "none"));
    assert!(r.is_open(utc("2026-12-25T03:00:00Z")));
}

#[test]
fn a_job_naming_an_unknown_zone_or_window_is_told_the_choices() {
    let c = calendar(BUSINESS);
    let err = c
        .rule(Some("Europe/Atlantis"), None, Kind::Message)
        .expect_err("unknown zone");
    assert_eq!(err, RuleError::UnknownZone("Europe/Atlantis".to_owned()));
    assert!(err.to_string().contains("IANA"), "{err}");
    let err = c
        .rule(None, Some("Business"), Kind::Message)
        .expect_err("unknown window");
    assert_eq!(
        err.to_string(),
        r#"unknown window "Business"; the config has: "business", "night", "none""#
    );
    let err = Calendar::none()
        .rule(None, Some("business"), Kind::Message)
        .expect_err("no windows");
    assert!(
        err.to_string().ends_with(r#"the config has: "none""#),
        "{err}"
    );
}

#[test]
fn the_fingerprint_changes_with_anything_that_moves_a_due_time() {
    let base = calendar(BUSINESS).fingerprint();
    assert_eq!(base, calendar(BUSINESS).fingerprint());
    // Stable across processes and builds: a fixed value for a fixed calendar.
    assert_eq!(
        Calendar::none().fingerprint(),
        Calendar::none().fingerprint()
    );
    assert_eq!(
        Calendar::none().fingerprint(),
        fnv1a(b"default_timezone \"UTC\"; default_window None;\n")
    );
    for changed in [
        BUSINESS.replace("Australia/Sydney", "Australia/Melbourne"),
        BUSINESS.replace("default_window   = \"business\"", ""),
        BUSINESS.replace("\"2027-01-01\"", "\"2027-01-02\""),
        BUSINESS.replace("20m", "21m"),
        BUSINESS.replace("sat = \"10:00-16:00\"", "sat = \"10:00-16:01\""),
        BUSINESS.replace("[windows.night]", "[windows.late]"),
    ] {
        assert_ne!(calendar(&changed).fingerprint(), base, "{changed}");
    }
    // Comments and the order of keys do not matter.
    let reordered = BUSINESS.replace("sun = \"closed\"\n", "") + "# a comment\n";
    assert_eq!(calendar(&reordered).fingerprint(), base);
}
