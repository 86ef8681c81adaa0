//! `schedule put|get|list|delete`: recurring sends from the command line.
//! One request each; the answer is shown for people, or raw with `--json`.

use super::show::{print_aligned, text, when};
use super::{Cli, read_input, socket_path};
use crate::client::Client;
use crate::time::{self, Millis};
use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create or replace a schedule from FILE or stdin:
    /// {"name","cron","timezone","job","catch_up"}
    Put {
        #[arg(value_name = "FILE|-", default_value = "-")]
        file: String,
    },
    /// Show one schedule and its recent occurrences
    Get { name: String },
    /// Every schedule and its next occurrence
    List,
    /// Delete a schedule; the jobs it created stay
    Delete { name: String },
}

/// The request `action` sends.
pub fn request(action: &Action) -> anyhow::Result<Value> {
    Ok(match action {
        Action::Put { file } => put_request(&read_input(file)?)?,
        Action::Get { name } => json!({"op": "schedule_get", "name": name}),
        Action::List => json!({"op": "schedule_list"}),
        Action::Delete { name } => json!({"op": "schedule_delete", "name": name}),
    })
}

/// The `schedule_put` object without its `op`, as a file holds it.
pub fn put_request(input: &str) -> anyhow::Result<Value> {
    let value: Value =
        serde_json::from_str(input).context("the schedule is not one JSON object")?;
    let Value::Object(mut fields) = value else {
        bail!(
            "the schedule must be a JSON object: {{\"name\",\"cron\",\"timezone\",\"job\",\"catch_up\"}}"
        );
    };
    if fields.contains_key("op") {
        bail!("give the schedule without \"op\"; the command adds it");
    }
    fields.insert("op".into(), json!("schedule_put"));
    Ok(Value::Object(fields))
}

pub fn run(cli: &Cli, action: &Action) -> anyhow::Result<ExitCode> {
    let request = request(action)?;
    let mut client = Client::connect(&socket_path(cli)?)?;
    if matches!(action, Action::List) {
        return list(cli, &mut client);
    }
    let (line, answer) = client.request(&request)?;
    let ok = answer.get("ok").and_then(Value::as_bool) == Some(true);
    if cli.json {
        println!("{line}");
    } else if ok {
        show(action, &answer, time::now());
    } else {
        eprintln!("{}", super::show::error(&answer));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `schedule list`: every page of `schedule_list`, following `next`; with
/// `--json` each page's answer line as it comes.
fn list(cli: &Cli, client: &mut Client) -> anyhow::Result<ExitCode> {
    let mut schedules = Vec::new();
    let mut after = Value::Null;
    loop {
        let (line, answer) = client.request(&json!({"op": "schedule_list", "after": after}))?;
        if answer.get("ok").and_then(Value::as_bool) != Some(true) {
            if cli.json {
                println!("{line}");
            } else {
                eprintln!("{}", super::show::error(&answer));
            }
            return Ok(ExitCode::FAILURE);
        }
        if cli.json {
            println!("{line}");
        }
        schedules.extend(answer["schedules"].as_array().cloned().unwrap_or_default());
        after = answer["next"].clone();
        if after.is_null() {
            break;
        }
    }
    if !cli.json {
        show(
            &Action::List,
            &json!({"ok": true, "schedules": schedules}),
            time::now(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn show(action: &Action, answer: &Value, now: Millis) {
    match action {
        Action::Put { .. } => {
            let s = &answer["schedule"];
            let verb = if answer["created"] == true {
                "created"
            } else {
                "replaced"
            };
            println!(
                "schedule {} {verb}; next occurrence {}",
                text(&s["name"]),
                when(&s["next_at"], now)
            );
        }
        Action::Get { .. } => one(&answer["schedule"], now),
        Action::List => {
            let all = answer["schedules"].as_array().cloned().unwrap_or_default();
            if all.is_empty() {
                println!("no schedules");
                return;
            }
            let mut lines = vec![vec![
                "NAME".to_string(),
                "CRON".into(),
                "TIMEZONE".into(),
                "CATCH_UP".into(),
                "NEXT".into(),
            ]];
            for s in &all {
                lines.push(vec![
                    text(&s["name"]),
                    text(&s["cron"]),
                    text(&s["timezone"]),
                    text(&s["catch_up"]),
                    match s["unreadable"].is_null() {
                        true => when(&s["next_at"], now),
                        false => "unreadable".to_owned(),
                    },
                ]);
            }
            print_aligned(&lines, "");
        }
        Action::Delete { name } => {
            if answer["deleted"] == true {
                println!(
                    "schedule {} deleted; the jobs it created stay (cancel them with cancel --tag schedule:{})",
                    text(&json!(name)),
                    text(&json!(name))
                );
            } else {
                println!("no schedule named {}", text(&json!(name)));
            }
        }
    }
}

fn one(s: &Value, now: Millis) {
    println!("name      {}", text(&s["name"]));
    println!("cron      {} ({})", text(&s["cron"]), text(&s["timezone"]));
    println!("catch_up  {}", text(&s["catch_up"]));
    println!("next      {}", when(&s["next_at"], now));
    if !s["unreadable"].is_null() {
        println!("unreadable {}", text(&s["unreadable"]));
    }
    println!("job       {}", text(&s["job"]));
    let recent = s["recent"].as_array().cloned().unwrap_or_default();
    if recent.is_empty() {
        println!("recent    none yet");
        return;
    }
    println!("recent");
    let mut lines = vec![vec!["ID".to_string(), "STATE".into(), "AT".into()]];
    for o in &recent {
        lines.push(vec![text(&o["id"]), text(&o["state"]), when(&o["at"], now)]);
    }
    print_aligned(&lines, "  ");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_adds_the_op_and_refuses_one_given() {
        let r = put_request(r#"{"name":"weekly","cron":"0 0 9 * * MON","job":{}}"#).unwrap();
        assert_eq!(r["op"], "schedule_put");
        assert_eq!(r["name"], "weekly");
        assert!(put_request(r#"{"op":"schedule_put","name":"x"}"#).is_err());
        assert!(put_request("[1]").is_err());
        assert!(put_request("nope").is_err());
    }
}
