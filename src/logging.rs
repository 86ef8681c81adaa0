//! Log output: the operator's status page.
//!
//! Lines go to stdout as text or JSON (one object per line). `RUST_LOG`,
//! when set, overrides `log.level`. Colours are used only on a terminal, and
//! under journald (`JOURNAL_STREAM` set) text lines carry no timestamp of
//! their own.

use crate::config::{LogConfig, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, early.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::try_new(&config.level)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        // journald stamps every line itself, so under it the text format
        // leaves the time out.
        LogFormat::Text if std::env::var_os("JOURNAL_STREAM").is_some() => builder
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal())
            .with_target(false)
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
