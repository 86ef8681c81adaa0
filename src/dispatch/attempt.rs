//! One attempt: send a claimed job, decide what the answer means, log one
//! line, and record the outcome before the dispatcher's slot is freed.

use super::Context;
use super::gate::{self, Mode};
use crate::policy::{self, Answer, Decision};
use crate::store::{ClaimedJob, Finish, PauseKind, PauseShare, Store};
use crate::time;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What an attempt task reports back to the loop.
pub(super) struct Report {
    /// The decision's label, for the summary's counters.
    pub decision: &'static str,
}

/// Sends one claimed job and records the outcome.
pub(super) async fn attempt(ctx: Arc<Context>, job: ClaimedJob) -> Report {
    let started = Instant::now();
    crate::metrics::attempt_started(&job, ctx.clock().wall());
    let answer = ctx.coax.send(&job).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let now = ctx.clock().wall();
    let read_at = ctx.clock().mono();
    let outcome = policy::classify(&answer);
    let settings = ctx.settings();
    let decision = policy::decide(
        job.attempt,
        &outcome,
        &settings.retry,
        settings.on_ambiguous,
        now,
        fastrand::f64(),
    );
    // The gate reads the answer itself (a 429's retry time pauses everyone),
    // whether or not this job may still be retried.
    let fallback = policy::backoff(job.attempt, &settings.retry, 1.0);
    let signal = gate::signal(status_of(&answer), &outcome, read_at, fallback);
    let decision = policy::bound_by_expiry(decision, job.expires_at);
    let ambiguous = matches!(
        outcome,
        policy::Outcome::Transient {
            ambiguous: true,
            ..
        }
    );
    let (status, transport) = match &answer {
        Answer::Http { status, .. } => (Some(*status), None),
        Answer::Transport(e) => (None, Some(e.detail.clone())),
    };
    log_attempt(&ctx, &job, status, latency_ms, &decision, ambiguous);

    let label = decision.label();
    crate::metrics::attempt(job.kind, label, started.elapsed());
    let finish = Finish {
        id: job.id,
        seq: job.seq,
        finished_at: now,
        status,
        error: transport,
        ambiguous,
        latency_ms,
        result: result_of(&answer),
        decision,
    };
    // The gate hears the answer before the job is given back: a job given
    // back for a rejected key or a 429 is due at once, and a claim that
    // ran between the two would send it again into the pause.
    let changed = ctx.transition(|g| g.record(read_at, signal));
    record(&ctx.store, finish, shared(changed)).await;
    Report { decision: label }
}

/// The pause this attempt's answer put the gate in, to be put in force
/// for every node sharing the queue in the transaction that gives the job
/// back (see [`crate::store::Store::finish_sharing`]).
fn shared(changed: Option<Mode>) -> Option<PauseShare> {
    let (kind, until, reason) = match changed? {
        Mode::PausedRateLimit { until } => (PauseKind::RateLimit, until, "Coax answered 429"),
        Mode::PausedAuth { until } => (PauseKind::Auth, until, "Coax rejected the API key"),
        _ => return None,
    };
    Some(PauseShare {
        kind,
        until,
        reason,
    })
}

fn status_of(answer: &Answer) -> Option<u16> {
    match answer {
        Answer::Http { status, .. } => Some(*status),
        Answer::Transport(_) => None,
    }
}

/// `{"status":…,"message":…,"body":…}` of an HTTP answer, kept on the job.
fn result_of(answer: &Answer) -> Option<Value> {
    let Answer::Http { status, body, .. } = answer else {
        return None;
    };
    let (message, body) = match body {
        policy::Body::Envelope { message, body, .. } => (message.clone(), body.clone()),
        _ => (None, None),
    };
    Some(json!({"status": status, "message": message, "body": body}))
}

/// Keeps trying to record an outcome: until it is written, the job stays in
/// `sending` and a restart would send it again.
async fn record(store: &Store, finish: Finish, share: Option<PauseShare>) {
    let mut delay = Duration::from_millis(100);
    let mut logged = false;
    loop {
        match store.finish_sharing(finish.clone(), share).await {
            Ok(()) => {
                if logged {
                    tracing::debug!(
                        job_id = finish.id,
                        "outcome recorded after storage recovered"
                    );
                }
                return;
            }
            Err(crate::store::StoreError::Closed) => return,
            Err(e) => {
                // The store logs the outage once, with the count of the
                // calls it failed; a line per job in flight would bury it.
                if !logged {
                    tracing::debug!(
                        job_id = finish.id,
                        error = %e,
                        "cannot record an attempt's outcome; retrying until storage recovers"
                    );
                    logged = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn log_attempt(
    ctx: &Context,
    job: &ClaimedJob,
    status: Option<u16>,
    latency_ms: u64,
    decision: &Decision,
    ambiguous: bool,
) {
    let route = ctx.coax.path(job);
    let key = job.key.as_deref().unwrap_or("");
    // Absent fields are left out of the line rather than logged empty.
    let reason = decision.reason();
    let retry_at = match decision {
        Decision::Retry { at, .. } => Some(time::format(*at)),
        _ => None,
    };
    let retry_at = retry_at.as_deref();
    macro_rules! line {
        ($level:ident, $msg:literal) => {
            tracing::$level!(
                job_id = job.id,
                key,
                kind = %job.kind,
                route,
                attempt = job.attempt,
                status = status.map(i64::from).unwrap_or(-1),
                latency_ms,
                decision = decision.label(),
                ambiguous,
                reason,
                retry_at,
                $msg
            )
        };
    }
    match decision {
        Decision::Sent | Decision::Skipped { .. } => line!(info, "attempt"),
        Decision::Retry { .. } if ambiguous => {
            line!(warn, "attempt; sending again, a possible duplicate")
        }
        Decision::Retry { .. }
        | Decision::Failed { .. }
        | Decision::Hold { .. }
        | Decision::Expired { .. } => line!(warn, "attempt"),
        Decision::PauseForKey => line!(error, "attempt"),
    }
}
