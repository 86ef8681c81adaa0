//! `coax-scheduler simulate`: the simulator as a foreground process, logging
//! one line per request until SIGINT or SIGTERM.
//!
//! It owns only the flags and the process around [`super::serve`]: logging,
//! the runtime, binding and signals.

use super::{SimError, SimOptions, SimStats, serve};
use crate::config::{LogConfig, LogFormat};
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;

/// The flags of `coax-scheduler simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on, such as 127.0.0.1:8080 (port 0 picks a free one)
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Require this Bearer token; without it any Bearer token is accepted
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Wait this long before every answer, such as 20ms
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Wait up to this much more, uniformly at random
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    pub jitter: Duration,
    /// Answer this fraction of route requests with 503, such as 0.1
    #[arg(long, value_name = "F", value_parser = parse_fraction, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Answer sends with this campaign_id as a paused campaign
    #[arg(long, value_name = "ID")]
    pub paused_campaign: Option<String>,
    /// Answer the first request for this phone, email or enquiry id with 503
    /// (repeatable)
    #[arg(long, value_name = "PHONE|EMAIL|ENQUIRY_ID")]
    pub fail_first_for: Vec<String>,
}

impl SimArgs {
    pub fn options(&self) -> SimOptions {
        SimOptions {
            api_key: self.api_key.clone(),
            latency: self.latency,
            jitter: self.jitter,
            fail_rate: self.fail_rate,
            paused_campaign: self.paused_campaign.clone(),
            fail_first_for: self.fail_first_for.clone(),
            ..SimOptions::default()
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as 20ms or 1s ({e})"))
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{text:?} is not a fraction between 0 and 1")),
    }
}

/// Runs the simulator in the foreground until SIGINT or SIGTERM.
pub fn run(args: &SimArgs) -> anyhow::Result<()> {
    crate::logging::init(&LogConfig {
        format: LogFormat::Text,
        level: "info".to_owned(),
        summary_interval: None,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: args.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
        let stop = termination()?;
        tracing::info!(
            base_url = %format!("http://{addr}"),
            auth = if args.api_key.is_some() { "the given key" } else { "any Bearer token" },
            latency = %humantime::format_duration(args.latency),
            jitter = %humantime::format_duration(args.jitter),
            fail_rate = args.fail_rate,
            paused_campaign = args.paused_campaign.as_deref().unwrap_or(""),
            fail_first_for = %args.fail_first_for.join(","),
            "Coax simulator listening; point coax.base_url here"
        );
        let stats = Arc::new(SimStats::default());
        serve(listener, args.options(), stats.clone(), stop).await?;
        tracing::info!(answered = %stats.summary(), "Coax simulator stopped");
        Ok(())
    })
}

/// Resolves on the first SIGINT or SIGTERM.
fn termination() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stop requested");
    })
}
