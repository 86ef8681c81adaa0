//! Log output: the operator's status page.
//!
//! Lines go to stdout as text or JSON (one object per line). `RUST_LOG`,
//! when set, overrides `log.level`. Colours are used only on a terminal, and
//! under journald (`JOURNAL_STREAM` set) text lines carry no timestamp of
//! their own. The level can be changed while running ([`set_level`]), which
//! is how a reload applies a new `log.level`.

use crate::config::{LogConfig, LogFormat};
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The live filter, and whether `RUST_LOG` pinned it at start-up.
struct Live {
    filter: reload::Handle<EnvFilter, Registry>,
    pinned_by_env: bool,
}

static LIVE: OnceLock<Live> = OnceLock::new();

/// Installs the global subscriber. Call once, early.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.trim().is_empty());
    let filter = match &from_env {
        Some(directives) => EnvFilter::try_new(directives)?,
        None => config_filter(&config.level)?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    let output = fmt_layer(config.format);
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    let _ = LIVE.set(Live {
        filter: handle,
        pinned_by_env: from_env.is_some(),
    });
    Ok(())
}

/// `log.level`, with the scheduler library's start-up chatter kept out of
/// the status page unless a directive asks for it.
fn config_filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(level)?;
    if level.contains("tokio_cron_scheduler") {
        return Ok(filter);
    }
    Ok(filter.add_directive("tokio_cron_scheduler=warn".parse()?))
}

fn fmt_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let base = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
    match format {
        LogFormat::Json => base
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed(),
        // journald stamps every line itself, so under it the text format
        // leaves the time out.
        LogFormat::Text if stdout_is_journal() => base
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .boxed(),
        LogFormat::Text => base
            .with_ansi(std::io::stdout().is_terminal())
            .with_target(false)
            .boxed(),
    }
}

/// Whether stdout is the journal stream systemd named in `JOURNAL_STREAM`
/// ("device:inode"), not merely an inherited variable.
fn stdout_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/1") {
        Ok(meta) => dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino()),
        Err(_) => false,
    }
}

/// What [`set_level`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum LevelChange {
    Applied,
    /// `RUST_LOG` was set at start-up and wins over the config.
    PinnedByEnv,
    /// Logging was not set up by [`init`] (e.g. the daemon is embedded).
    NotManaged,
}

/// Switches the log filter to `level` (an `EnvFilter` directive string).
pub fn set_level(level: &str) -> Result<LevelChange, String> {
    let Some(live) = LIVE.get() else {
        return Ok(LevelChange::NotManaged);
    };
    if live.pinned_by_env {
        return Ok(LevelChange::PinnedByEnv);
    }
    let filter = config_filter(level).map_err(|e| e.to_string())?;
    live.filter
        .reload(filter)
        .map_err(|e| e.to_string())
        .map(|()| LevelChange::Applied)
}
