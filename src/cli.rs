//! The command line: `run` and `check-config` for the daemon, and the client
//! subcommands that speak the socket protocol.
//!
//! Client subcommands build one request, send it, and print the answer for
//! people (see [`show`]) or raw with `--json`. The exit status is 0 on
//! `ok:true`, 1 on `ok:false`, and 2 when the daemon could not be reached or
//! the command line was wrong.

mod schedule;
pub(crate) mod show;

use crate::client::Client;
use crate::config::{self, Config};
use crate::daemon::Daemon;
use crate::time;
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "coax-scheduler",
    version,
    about = "Client-side delivery daemon for scheduled Coax messages"
)]
pub struct Cli {
    /// Config file [default: $COAX_SCHEDULER_CONFIG or /etc/coax-scheduler/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The daemon's socket, instead of socket.path from the config
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the daemon's raw answer line
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground
    Run,
    /// Check a config file and exit
    CheckConfig,
    /// Enqueue jobs from FILE or stdin: one object, an array, or NDJSON
    Enqueue {
        #[arg(value_name = "FILE|-", default_value = "-")]
        file: String,
    },
    /// Show one job and its attempt history
    Get {
        #[arg(required_unless_present = "key")]
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        key: Option<String>,
    },
    /// List jobs, soonest due first
    List {
        #[arg(long)]
        state: Option<String>,
        /// Only scheduled jobs the daemon will try before this RFC 3339 time
        #[arg(long, value_name = "TIME", conflicts_with = "recent")]
        due_before: Option<String>,
        /// How many jobs to show in all [default: 100]; the daemon's pages are followed
        #[arg(long)]
        limit: Option<u32>,
        /// Most recently updated first instead
        #[arg(long)]
        recent: bool,
        /// Only jobs with this tag
        #[arg(long)]
        tag: Option<String>,
    },
    /// Cancel a scheduled, held or waiting job (and the jobs that follow
    /// it), or every one with a tag
    Cancel {
        #[arg(required_unless_present = "tag")]
        id: Option<i64>,
        /// Every scheduled, held or waiting job with this tag, in one transaction
        #[arg(long, conflicts_with = "id")]
        tag: Option<String>,
    },
    /// Move a scheduled job to another time, or every one with a tag by a duration
    Reschedule {
        #[arg(required_unless_present = "tag")]
        id: Option<i64>,
        /// RFC 3339 time, or a local time read in the job's zone
        #[arg(long, conflicts_with_all = ["in", "tag"], required_unless_present_any = ["in", "tag"])]
        at: Option<String>,
        /// A duration from now, such as 2h
        #[arg(long = "in", value_name = "DURATION", conflicts_with = "tag")]
        r#in: Option<String>,
        /// Every scheduled job with this tag (with --by)
        #[arg(long, conflicts_with = "id", requires = "by")]
        tag: Option<String>,
        /// A signed duration to move them by, such as 2h or -30m
        #[arg(
            long,
            value_name = "DURATION",
            allow_hyphen_values = true,
            requires = "tag"
        )]
        by: Option<String>,
    },
    /// Put a failed (or held) job back in line, due now
    Requeue { id: i64 },
    /// Counts per state and the next due time
    Stats,
    /// Check that the daemon answers
    Ping,
    /// End a 429 pause, an auth pause or an open breaker now
    Resume,
    /// Run a Coax stand-in for trying the daemon without a Coax account
    Simulate(crate::simulate::SimArgs),
    /// Show the daemon at work against the simulator, in a temp dir
    Demo,
    /// Measure throughput and lateness against the simulator, in a temp dir
    Bench(crate::bench::BenchArgs),
    /// Delete finished jobs older than --older-than (default store.retention)
    Prune {
        /// A duration such as 30d
        #[arg(long = "older-than", value_name = "DURATION")]
        older_than: Option<String>,
        /// Only count what would be removed
        #[arg(long)]
        dry_run: bool,
    },
    /// One screen: dispatcher state, counts, the next due job, the last errors
    Status,
    /// Write every job (with its history) and schedule as NDJSON to stdout;
    /// safe while the daemon runs
    Export,
    /// Read an export from stdin into an empty store, keeping ids; the
    /// daemon must be stopped
    Import,
    /// Recurring sends: put, get, list or delete a schedule
    Schedule {
        #[command(subcommand)]
        action: schedule::Action,
    },
    /// Print shell completions
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => report(run_daemon(&cli)),
        Command::CheckConfig => report(check_config(&cli)),
        Command::Export => report(quiet_on_closed_pipe().and_then(|()| export(&cli))),
        Command::Import => report(import(&cli)),
        Command::Simulate(args) => report(crate::simulate::run(&args)),
        Command::Demo => report(crate::demo::run()),
        Command::Bench(args) => report(crate::bench::run(&args, cli.json)),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(
                shell,
                &mut command,
                "coax-scheduler",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Status => match quiet_on_closed_pipe().and_then(|()| status_command(&cli)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Schedule { ref action } => {
            match quiet_on_closed_pipe().and_then(|()| schedule::run(&cli, action)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::List { limit, .. } => {
            match quiet_on_closed_pipe().and_then(|()| list_command(&cli, limit)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        _ => match quiet_on_closed_pipe().and_then(|()| client_command(&cli)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

/// Lets a client command end quietly when its output is a pipe that closed
/// (`coax-scheduler list | head -1`), as Unix tools do, instead of
/// panicking in `println!`. The Rust runtime ignores SIGPIPE; the daemon
/// keeps that, so a client that goes away is an error it can log, not a
/// signal that stops it.
fn quiet_on_closed_pipe() -> anyhow::Result<()> {
    // SAFETY: restores the default disposition of one signal before any
    // thread is started; no handler code is involved.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if previous == libc::SIG_ERR {
        anyhow::bail!(
            "cannot restore SIGPIPE: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config.clone().unwrap_or_else(config::default_path)
}

fn check_config(cli: &Cli) -> anyhow::Result<()> {
    let path = config_path(cli);
    let config = Config::load(&path)?.for_daemon()?;
    let fds = crate::daemon::fds::ensure(&config)
        .with_context(|| format!("{}: the config does not fit this process", path.display()))?;
    let store = match &config.store.postgres {
        Some(pg) => {
            crate::store::postgres::check_tls(pg)?;
            pg.describe()
        }
        None => config.store.path.display().to_string(),
    };
    println!(
        "{}: OK (coax {}, store {}, socket {}, {} of {} file descriptors)",
        path.display(),
        config.coax.base_url,
        store,
        config.socket.path.display(),
        fds.needed,
        fds.limit
    );
    Ok(())
}

fn run_daemon(cli: &Cli) -> anyhow::Result<()> {
    let config = Config::load(&config_path(cli))?.for_daemon()?;
    crate::daemon::fds::ensure(&config)?;
    crate::logging::init(&config.log)?;
    // Taken before any other thread exists: listenfd clears LISTEN_* from
    // the environment, which is only sound while single-threaded.
    let activated = crate::systemd::activated_listener()
        .context("cannot use the socket passed by systemd (LISTEN_FDS)")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let socket_path = config.socket.path.clone();
        let mode = config.socket.mode;
        let daemon = Daemon::open(config).await?;
        // Under socket activation systemd owns the socket: clients queue in
        // its backlog across restarts, so it is neither bound nor removed here.
        let owned = activated.is_none();
        let listener = match activated {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                tracing::info!("using the socket passed by systemd");
                tokio::net::UnixListener::from_std(listener)?
            }
            None => crate::socket::bind(&socket_path, mode)?,
        };
        let (stop, reloads) = signals()?;
        let result = daemon.reload_on(reloads).run(listener, stop).await;
        if owned {
            crate::socket::remove(&socket_path);
        }
        result
    })
}

/// Resolves on the first SIGTERM or SIGINT; each SIGHUP sends a message on
/// the returned channel.
fn signals() -> anyhow::Result<(
    impl std::future::Future<Output = ()>,
    tokio::sync::mpsc::Receiver<()>,
)> {
    use futures_util::StreamExt as _;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let (reload, reloads) = tokio::sync::mpsc::channel(4);
    let stop = async move {
        while let Some(signal) = signals.next().await {
            if signal == SIGHUP {
                // A reload already waiting covers this one too.
                let _ = reload.try_send(());
                continue;
            }
            let name = if signal == SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            tracing::info!(signal = name, "stop requested");
            return;
        }
    };
    Ok((stop, reloads))
}

/// The store from the config: `export` and `import` read the database
/// itself, and need no API key. The database password, for PostgreSQL,
/// comes from the environment, a credential or its file as for the daemon.
fn store_config(cli: &Cli) -> anyhow::Result<config::StoreConfig> {
    let path = config_path(cli);
    let config = Config::load_with_env(&path, &|name| match name {
        "COAX_API_KEY" => Some("unused-by-export-and-import".to_owned()),
        other => std::env::var(other).ok(),
    })?;
    Ok(config.store)
}

/// The store, for a message: the SQLite file, or the database (never the
/// password).
fn store_name(store: &config::StoreConfig) -> String {
    match &store.postgres {
        Some(pg) => pg.describe(),
        None => store.path.display().to_string(),
    }
}

fn export(cli: &Cli) -> anyhow::Result<()> {
    let store = store_config(cli)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let end = crate::transfer::export_store(&store, &mut out, time::now())?;
    eprintln!(
        "exported {} jobs and {} schedules from {}",
        end.jobs,
        end.schedules,
        store_name(&store)
    );
    Ok(())
}

fn import(cli: &Cli) -> anyhow::Result<()> {
    let store = store_config(cli)?;
    let imported = crate::transfer::import_store(&store, std::io::stdin().lock())
        .with_context(|| format!("nothing was imported into {}", store_name(&store)))?;
    let highest = imported
        .highest_id
        .map_or_else(|| "none".to_owned(), |id| id.to_string());
    eprintln!(
        "imported {} jobs and {} schedules into {}; highest job id {highest}",
        imported.jobs,
        imported.schedules,
        store_name(&store)
    );
    Ok(())
}

fn socket_path(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(path) = &cli.socket {
        return Ok(path.clone());
    }
    let path = config_path(cli);
    // The client needs only socket.path; it must not need the API key.
    let config = Config::load_with_env(&path, &|name| match name {
        "COAX_API_KEY" => Some("unused-by-the-client".to_owned()),
        _ => None,
    })
    .with_context(|| "cannot find the socket: give --socket PATH, or --config FILE".to_string())?;
    Ok(config.socket.path)
}

fn client_command(cli: &Cli) -> anyhow::Result<ExitCode> {
    let request = build_request(&cli.command)?;
    let mut client = Client::connect(&socket_path(cli)?)?;
    let (line, answer) = client.request(&request)?;
    let ok = answer.get("ok").and_then(Value::as_bool) == Some(true);
    if cli.json {
        println!("{line}");
    } else if ok {
        show::answer(&cli.command, &answer, time::now());
    } else {
        eprintln!("{}", show::error(&answer));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `list`: the daemon answers in pages (each line at most 8 MiB); this
/// follows `next` until it has `--limit` jobs (default 100) or the list
/// ends. With `--json` each page's answer line is printed as it comes, one
/// line per page; otherwise the jobs of every page make one table.
fn list_command(cli: &Cli, limit: Option<u32>) -> anyhow::Result<ExitCode> {
    let total = limit.unwrap_or(crate::protocol::DEFAULT_LIST_LIMIT) as usize;
    let mut request = build_request(&cli.command)?;
    let mut client = Client::connect(&socket_path(cli)?)?;
    let mut jobs: Vec<Value> = Vec::new();
    let mut taken = 0;
    loop {
        let want = (total - taken).min(crate::protocol::MAX_LIST_LIMIT as usize);
        request["limit"] = json!(want);
        let (line, answer) = client.request(&request)?;
        if answer.get("ok").and_then(Value::as_bool) != Some(true) {
            if cli.json {
                println!("{line}");
            } else {
                eprintln!("{}", show::error(&answer));
            }
            return Ok(ExitCode::FAILURE);
        }
        let page = answer["jobs"].as_array().map_or(&[][..], Vec::as_slice);
        taken += page.len();
        if cli.json {
            println!("{line}");
        } else {
            jobs.extend(page.iter().cloned());
        }
        match answer["next"].as_str() {
            Some(next) if taken < total => request["after"] = json!(next),
            _ => break,
        }
    }
    if !cli.json {
        show::answer(
            &cli.command,
            &json!({"ok": true, "jobs": jobs}),
            time::now(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `status`: several requests on one connection, shown as one screen.
fn status_command(cli: &Cli) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&socket_path(cli)?)?;
    let mut ask = |request: Value| -> anyhow::Result<Value> {
        let (_, answer) = client.request(&request)?;
        if answer.get("ok").and_then(Value::as_bool) != Some(true) {
            bail!("{}", show::error(&answer));
        }
        Ok(answer)
    };
    let stats = ask(json!({"op": "stats"}))?;
    let next = ask(json!({"op": "list", "state": "scheduled", "limit": 1}))?;
    let recent = |state: &str| json!({"op": "list", "state": state, "limit": 5, "order": "recent"});
    let failed = ask(recent("failed"))?;
    let held = ask(recent("held"))?;
    if cli.json {
        println!(
            "{}",
            json!({"stats": stats, "next": next["jobs"], "failed": failed["jobs"], "held": held["jobs"]})
        );
    } else {
        show::status(&stats, &next, &failed, &held, time::now());
    }
    Ok(ExitCode::SUCCESS)
}

fn build_request(command: &Command) -> anyhow::Result<Value> {
    Ok(match command {
        Command::Run
        | Command::CheckConfig
        | Command::Simulate(_)
        | Command::Demo
        | Command::Bench(_)
        | Command::Status
        | Command::Export
        | Command::Import
        | Command::Schedule { .. }
        | Command::Completions { .. } => {
            bail!("not a client command")
        }
        Command::Prune {
            older_than,
            dry_run,
        } => {
            let mut r = json!({"op": "prune", "dry_run": dry_run});
            if let Some(age) = older_than {
                r["older_than"] = json!(age);
            }
            r
        }
        Command::Enqueue { file } => enqueue_request(&read_input(file)?)?,
        Command::Get { id: Some(id), .. } => json!({"op": "get", "id": id}),
        Command::Get { key, .. } => json!({"op": "get", "key": key}),
        Command::List {
            state,
            limit,
            recent,
            due_before,
            tag,
        } => {
            let mut r = json!({"op": "list"});
            if let Some(tag) = tag {
                r["tag"] = json!(tag);
            }
            if let Some(before) = due_before {
                r["due_before"] = json!(before);
            }
            if *recent {
                r["order"] = json!("recent");
            }
            if let Some(s) = state {
                r["state"] = json!(s);
            }
            if let Some(l) = limit {
                r["limit"] = json!(l);
            }
            r
        }
        Command::Cancel { tag: Some(tag), .. } => json!({"op": "cancel", "tag": tag}),
        Command::Cancel { id, .. } => json!({"op": "cancel", "id": id}),
        Command::Reschedule {
            tag: Some(tag), by, ..
        } => json!({"op": "reschedule", "tag": tag, "by": by}),
        Command::Reschedule { id, at, r#in, .. } => {
            let at = match (at, r#in) {
                (Some(at), _) => at.clone(),
                (None, Some(d)) => {
                    let d = humantime::parse_duration(d)
                        .with_context(|| format!("--in {d:?} is not a duration such as 2h"))?;
                    time::format(time::add(time::now(), d))
                }
                (None, None) => bail!("give --at TIME or --in DURATION"),
            };
            json!({"op": "reschedule", "id": id, "scheduled_at": at})
        }
        Command::Requeue { id } => json!({"op": "requeue", "id": id}),
        Command::Stats => json!({"op": "stats"}),
        Command::Ping => json!({"op": "ping"}),
        Command::Resume => json!({"op": "resume"}),
    })
}

fn read_input(file: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read jobs from stdin")?;
    } else {
        text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
    }
    Ok(text)
}

/// One object, an array, or NDJSON (one object per line).
pub fn enqueue_request(text: &str) -> anyhow::Result<Value> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Ok(match value {
            Value::Array(jobs) => json!({"op": "enqueue", "jobs": jobs}),
            job => json!({"op": "enqueue", "job": job}),
        });
    }
    let jobs = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str::<Value>(l).with_context(|| format!("line {} is not JSON", n + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if jobs.is_empty() {
        bail!("no jobs given");
    }
    Ok(json!({"op": "enqueue", "jobs": jobs}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_input_forms() {
        assert_eq!(
            enqueue_request(r#"{"kind":"message"}"#).unwrap()["job"]["kind"],
            "message"
        );
        assert_eq!(
            enqueue_request(r#"[{"a":1},{"a":2}]"#).unwrap()["jobs"][1]["a"],
            2
        );
        let nd = enqueue_request("{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        assert_eq!(nd["jobs"].as_array().unwrap().len(), 2);
        assert!(enqueue_request("{\"a\":1}\nnope\n").is_err());
        assert!(enqueue_request("  \n").is_err());
    }
}
