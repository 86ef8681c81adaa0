//! Printing answers for people: aligned tables, local and relative times.
//! `--json` bypasses all of this.
//!
//! Every text that came from a client or from Coax (keys, channels,
//! payloads, Coax's error messages) passes through [`text`], which escapes
//! control characters: an ESC or OSC sequence in a key must not reach the
//! operator's terminal as a command, nor a CR overwrite the line it is on.

use super::Command;
use crate::time::{self, Millis};
use chrono::{DateTime, Local};
use serde_json::{Value, json};

pub fn answer(command: &Command, answer: &Value, now: Millis) {
    match command {
        Command::Enqueue { .. } => enqueued(answer, now),
        Command::Get { .. } => job(&answer["job"], now),
        Command::List { .. } => {
            let jobs = answer["jobs"].as_array().cloned().unwrap_or_default();
            table(&jobs, now);
        }
        Command::Cancel { tag: Some(tag), .. } => {
            println!(
                "cancelled {} jobs tagged {}",
                answer["cancelled"],
                text(&json!(tag))
            );
            followers_cancelled(answer);
        }
        Command::Reschedule { tag: Some(tag), .. } => {
            println!(
                "moved {} jobs tagged {} ({} expired instead)",
                answer["rescheduled"],
                text(&json!(tag)),
                answer["expired"]
            );
        }
        Command::Cancel { .. } | Command::Reschedule { .. } | Command::Requeue { .. } => {
            let j = &answer["job"];
            println!(
                "job {} is {}, scheduled at {}",
                j["id"],
                text(&j["state"]),
                when(&j["scheduled_at"], now)
            );
            followers_cancelled(answer);
        }
        Command::Stats => stats(answer, now),
        Command::Ping => println!("the daemon is answering"),
        Command::Resume => resumed(answer),
        Command::Prune { .. } => {
            let verb = if answer["dry_run"] == true {
                "would remove"
            } else {
                "removed"
            };
            println!(
                "{verb} {} finished jobs ({} attempts) last updated before {}",
                answer["jobs"],
                answer["attempts"],
                when(&answer["before"], now)
            );
        }
        Command::Run
        | Command::CheckConfig
        | Command::Simulate(_)
        | Command::Demo
        | Command::Bench(_)
        | Command::Status
        | Command::Export
        | Command::Import
        | Command::Schedule { .. }
        | Command::Completions { .. } => {}
    }
}

/// How many followers a cancel took with it, when it took any.
fn followers_cancelled(answer: &Value) {
    if answer["cancelled_children"].as_u64().is_some_and(|n| n > 0) {
        println!(
            "  and {} waiting jobs that follow it",
            answer["cancelled_children"]
        );
    }
}

/// What `resume` did, in words.
fn resumed(answer: &Value) {
    let d = &answer["dispatch"];
    if answer["resumed"] == true {
        println!(
            "sending resumed (it was {}); the dispatcher is {}",
            text(&d["was"]),
            text(&d["state"])
        );
    } else {
        println!(
            "nothing was paused; the dispatcher is {}",
            text(&d["state"])
        );
    }
}

/// `error (code): message [field …] [job #…]` for stderr.
pub fn error(answer: &Value) -> String {
    let e = &answer["error"];
    let mut out = format!("error ({}): {}", text(&e["code"]), text(&e["message"]));
    if let Some(field) = e["field"].as_str() {
        out.push_str(&format!(" [field {}]", printable(field)));
    }
    if let Some(index) = e["index"].as_u64() {
        out.push_str(&format!(" [job #{index} of the batch]"));
    }
    out
}

/// A JSON value as a person reads it, safe to print on a terminal.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => printable(s),
        Value::Null => "-".into(),
        // serde_json escapes only the controls below 0x20 inside strings;
        // DEL, the C1 controls (0x9b is an 8-bit CSI) and bidi marks in a
        // payload or a Coax result pass through it.
        other => printable(&other.to_string()),
    }
}

/// `s` with every control character written as an escape (`\u{1b}`), and
/// the invisible marks that reorder or break text on screen (bidi
/// controls, line separators, the byte order mark) too.
/// Terminals act on ESC, OSC and CSI sequences, and on CR and backspace;
/// a value that carries them could rewrite what the operator sees.
pub fn printable(s: &str) -> String {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(
                c,
                // Unicode's Bidi_Control set, the line and paragraph
                // separators, and the byte order mark.
                '\u{61c}'
                    | '\u{200e}'
                    | '\u{200f}'
                    | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{feff}'
            )
    };
    if !s.chars().any(unsafe_char) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// "2026-01-31 10:00:00 (in 4m)" in local time.
pub(crate) fn when(v: &Value, now: Millis) -> String {
    let Some(ms) = v.as_str().and_then(|s| time::parse_rfc3339(s).ok()) else {
        return text(v);
    };
    let local = DateTime::from_timestamp_millis(ms)
        .map(|t| {
            t.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| text(v));
    format!("{local} ({})", relative(ms, now))
}

/// "in 4m", "2h ago", "now".
pub fn relative(at: Millis, now: Millis) -> String {
    let delta = at - now;
    let secs = delta.unsigned_abs() / 1000;
    if secs == 0 {
        return "now".into();
    }
    let amount = match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if delta > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn enqueued(answer: &Value, now: Millis) {
    if let Some(results) = answer["results"].as_array() {
        let duplicates = results.iter().filter(|r| r["duplicate"] == true).count();
        let ids: Vec<String> = results.iter().map(|r| r["id"].to_string()).collect();
        println!(
            "enqueued {} jobs ({} already existed): ids {}",
            results.len(),
            duplicates,
            ids.join(", ")
        );
    } else if answer["duplicate"] == true {
        println!(
            "job {} already exists with this key; it is {}, scheduled at {}",
            answer["id"],
            text(&answer["state"]),
            when(&answer["scheduled_at"], now)
        );
    } else if answer["state"] == "waiting" {
        println!(
            "job {} is waiting: due its delay after the job it follows is sent",
            answer["id"]
        );
    } else {
        println!(
            "job {} scheduled at {}",
            answer["id"],
            when(&answer["scheduled_at"], now)
        );
        if answer["due_at"] != answer["scheduled_at"] && !answer["due_at"].is_null() {
            println!(
                "  its send window is shut then: due at {}",
                when(&answer["due_at"], now)
            );
        }
    }
}

fn job(j: &Value, now: Millis) {
    let rows = [
        ("id", text(&j["id"])),
        ("key", text(&j["key"])),
        ("kind", text(&j["kind"])),
        ("channel", text(&j["channel"])),
        ("enquiry_id", text(&j["enquiry_id"])),
        ("state", text(&j["state"])),
        ("scheduled_at", when(&j["scheduled_at"], now)),
        ("due_at", when(&j["due_at"], now)),
        ("timezone", text(&j["timezone"])),
        ("window", text(&j["window"])),
        ("tags", tags(&j["tags"])),
        ("after", text(&j["after"])),
        ("children", ids(&j["children"])),
        ("attempts", text(&j["attempts"])),
        ("created_at", when(&j["created_at"], now)),
        ("updated_at", when(&j["updated_at"], now)),
        ("last_error", text(&j["last_error"])),
        ("result", text(&j["result"])),
        ("payload", text(&j["payload"])),
    ];
    for (name, value) in rows {
        println!("{name:<13} {value}");
    }
    let history = j["history"].as_array().cloned().unwrap_or_default();
    if history.is_empty() {
        println!("history       none");
        return;
    }
    println!("history");
    let mut lines = vec![vec![
        "#".to_string(),
        "STARTED".into(),
        "STATUS".into(),
        "MS".into(),
        "NODE".into(),
        "DECISION".into(),
        "ERROR".into(),
    ]];
    for a in &history {
        let mut decision = text(&a["decision"]);
        if a["ambiguous"] == true {
            decision.push_str(" (ambiguous)");
        }
        lines.push(vec![
            text(&a["attempt"]),
            when(&a["started_at"], now),
            text(&a["status"]),
            text(&a["latency_ms"]),
            text(&a["node"]),
            decision,
            text(&a["error"]),
        ]);
    }
    print_aligned(&lines, "  ");
}

pub(crate) fn table(jobs: &[Value], now: Millis) {
    if jobs.is_empty() {
        println!("no jobs");
        return;
    }
    let mut lines = vec![vec![
        "ID".to_string(),
        "STATE".into(),
        "KIND".into(),
        "CHANNEL".into(),
        "SCHEDULED".into(),
        "DUE".into(),
        "TRIES".into(),
        "KEY".into(),
        "LAST ERROR".into(),
    ]];
    for j in jobs {
        lines.push(vec![
            text(&j["id"]),
            text(&j["state"]),
            text(&j["kind"]),
            text(&j["channel"]),
            when(&j["scheduled_at"], now),
            when(&j["due_at"], now),
            text(&j["attempts"]),
            text(&j["key"]),
            text(&j["last_error"]),
        ]);
    }
    print_aligned(&lines, "");
}

fn stats(answer: &Value, now: Millis) {
    if let Some(counts) = answer["counts"].as_object() {
        for (state, n) in counts {
            println!("{state:<10} {n}");
        }
    }
    println!("next due   {}", when(&answer["next_due"], now));
    println!("deferred   {}", text(&answer["deferred"]));
    for node in answer["nodes"].as_array().into_iter().flatten() {
        println!(
            "node       {} (heartbeat {}, {} in flight)",
            text(&node["name"]),
            when(&node["last_heartbeat"], now),
            text(&node["in_flight"])
        );
    }
    let d = &answer["dispatch"];
    if d["until"].is_null() {
        println!("dispatch   {}", text(&d["state"]));
    } else {
        println!(
            "dispatch   {} until {}",
            text(&d["state"]),
            when(&d["until"], now)
        );
    }
}

/// The `status` screen: what an operator wants first.
pub fn status(stats: &Value, next: &Value, failed: &Value, held: &Value, now: Millis) {
    let d = &stats["dispatch"];
    match d["until"].as_str() {
        Some(_) => println!(
            "dispatcher  {} until {}",
            text(&d["state"]),
            when(&d["until"], now)
        ),
        None => println!("dispatcher  {}", text(&d["state"])),
    }
    for node in stats["nodes"].as_array().into_iter().flatten() {
        println!(
            "node        {} ({} in flight)",
            text(&node["name"]),
            text(&node["in_flight"])
        );
    }
    if let Some(counts) = stats["counts"].as_object() {
        let line: Vec<String> = counts
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        println!("jobs        {}", line.join(", "));
    }
    match next["jobs"].as_array().and_then(|j| j.first()) {
        Some(j) => println!(
            "next due    job {} ({} {} {}) at {}",
            j["id"],
            text(&j["kind"]),
            text(&j["channel"]),
            text(&j["key"]),
            when(&j["due_at"], now)
        ),
        None => println!("next due    nothing scheduled"),
    }
    if stats["deferred"].as_u64().is_some_and(|n| n > 0) {
        println!(
            "deferred    {} (scheduled, waiting for their send window to open)",
            text(&stats["deferred"])
        );
    }
    match stats["schedules"].as_u64() {
        Some(n) if n > 0 => match stats["next_occurrence"].as_str() {
            Some(_) => println!(
                "schedules   {n}, next occurrence {}",
                when(&stats["next_occurrence"], now)
            ),
            None => println!("schedules   {n}, no occurrence left"),
        },
        _ => println!("schedules   none"),
    }
    let mut recent: Vec<&Value> = failed["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(held["jobs"].as_array().into_iter().flatten())
        .collect();
    recent.sort_by(|a, b| b["updated_at"].as_str().cmp(&a["updated_at"].as_str()));
    if recent.is_empty() {
        println!("last errors none");
        return;
    }
    println!("last errors");
    let mut lines = vec![vec![
        "ID".to_string(),
        "STATE".into(),
        "WHEN".into(),
        "ERROR".into(),
    ]];
    for j in recent.into_iter().take(5) {
        let mut error = text(&j["last_error"]);
        if error.chars().count() > 100 {
            error = format!("{}…", error.chars().take(100).collect::<String>());
        }
        lines.push(vec![
            text(&j["id"]),
            text(&j["state"]),
            when(&j["updated_at"], now),
            error,
        ]);
    }
    print_aligned(&lines, "  ");
}

pub(crate) fn print_aligned(lines: &[Vec<String>], indent: &str) {
    let columns = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{indent}{}", cells.join("  ").trim_end());
    }
}

/// A job's children, by id, comma-separated; `-` for none.
fn ids(v: &Value) -> String {
    tags(v)
}

/// A job's tags, comma-separated; `-` for none.
fn tags(v: &Value) -> String {
    let tags: Vec<String> = v.as_array().into_iter().flatten().map(text).collect();
    if tags.is_empty() {
        "-".into()
    } else {
        tags.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_in_keys_and_errors_are_escaped() {
        let hostile = "k\u{1b}]0;pwned\u{7}\r\u{1b}[2Jx\u{9b}31m\u{202e}gnp.exe";
        let shown = text(&Value::String(hostile.into()));
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown:?}"
        );
        assert_eq!(
            shown,
            "k\\u{1b}]0;pwned\\u{7}\\u{d}\\u{1b}[2Jx\\u{9b}31m\\u{202e}gnp.exe"
        );
        // Ordinary text, accents and emoji included, is left alone.
        assert_eq!(text(&Value::String("Zoë 👋 ok".into())), "Zoë 👋 ok");
        // Inside a payload or a result, the controls serde_json leaves alone.
        let payload =
            serde_json::json!({"message": "a\u{7f}b\u{9b}31m\u{202e}c", "n": [1, "\u{1b}"]});
        let shown = text(&payload);
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown:?}"
        );
        assert!(shown.contains("a\\u{7f}b\\u{9b}31m\\u{202e}c"), "{shown}");
        let marks = text(&Value::String("G\u{61c}H\u{2028}I\u{feff}J\u{2029}".into()));
        assert_eq!(marks, "G\\u{61c}H\\u{2028}I\\u{feff}J\\u{2029}");
        let answer = serde_json::json!({"error": {"code": "invalid_job", "message": "bad\u{1b}[31m", "field": "key\r"}});
        let line = error(&answer);
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(1_000_000 + 240_000, 1_000_000), "in 4m");
        assert_eq!(relative(1_000_000 - 7_200_000, 1_000_000), "2h ago");
        assert_eq!(relative(1_000_000, 1_000_400), "now");
        assert_eq!(relative(1_000_000 + 3 * 86_400_000, 1_000_000), "in 3d");
    }
}
