//! The control socket server: reads request lines, answers each in order.
//!
//! This module carries out each [`Request`] against the store; accepting
//! connections (who, how many, counted for the summary) is [`accept`]'s
//! job, reading lines under their time and memory bounds is
//! [`connection`]'s, and counting the memory of large lines and answers is
//! [`budget`]'s. Parsing lines is [`protocol`]'s job and validating jobs
//! is [`job`]'s. An answer that reports a change is written only after the
//! store has committed it.

mod accept;
mod budget;
mod connection;
mod peer;

pub use accept::{ConnectionCounts, RESERVED_OPS, RESERVED_SLOTS, serve};
pub use budget::give_memory_back_with;

use crate::dispatch::Handle;
use crate::job::{self, NewJob};
use crate::protocol::{self, ErrorBody, ErrorCode, Request, Stats, ok_line};
use crate::store::{Refusal, Store, StoreError};
use crate::time;
use serde_json::{Value, json};
use std::time::Duration;

/// What a connection needs to carry out requests.
#[derive(Clone)]
pub struct Service {
    pub store: Store,
    pub dispatch: Handle,
    /// What a job must be to be accepted: `dispatch.default_ttl` and
    /// `socket.max_job_bytes`.
    pub rules: job::Rules,
    /// `store.retention`, what `prune` removes by default.
    pub retention: Duration,
    /// Wakes the task that creates recurring sends after a schedule changes.
    pub schedules: std::sync::Arc<tokio::sync::Notify>,
}

fn internal(e: &StoreError) -> ErrorBody {
    // The store logs an outage once; each failed request is only a detail.
    tracing::debug!(error = %e, "request failed in the store");
    ErrorBody::new(ErrorCode::Internal, e.to_string())
}

fn refusal(id: i64, op: &str, r: Refusal) -> ErrorBody {
    match r {
        Refusal::NotFound => ErrorBody::new(ErrorCode::NotFound, format!("no job with id {id}")),
        Refusal::Conflict { state } => ErrorBody::new(
            ErrorCode::Conflict,
            format!("cannot {op} job {id}: it is {state}"),
        ),
        Refusal::PastExpiry { expires_at } => ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "cannot {op} job {id} to that time: it expires at {}",
                time::format(expires_at)
            ),
        ),
        Refusal::ShutUntilExpiry {
            opening,
            expires_at,
        } => ErrorBody::new(
            ErrorCode::Conflict,
            format!(
                "cannot {op} job {id} to that time: its window next opens at {}, at or after it expires at {}",
                time::format(opening),
                time::format(expires_at)
            ),
        ),
    }
}

impl Service {
    /// Carries out one request from the peer with `uid` and returns its
    /// answer line (no newline).
    pub async fn handle(&self, request: Request, uid: Option<u32>) -> String {
        let op = request.op();
        let answer = self.answer(request, uid).await;
        crate::metrics::socket_request(op, answer.as_ref().err().map(|e| e.code));
        match answer {
            Ok(line) => line,
            Err(e) => e.to_line(),
        }
    }

    async fn answer(&self, request: Request, uid: Option<u32>) -> Result<String, ErrorBody> {
        match request {
            Request::Ping => Ok(ok_line(json!({}))),
            Request::Resume => Ok(self.resume(uid).await),
            Request::Enqueue(protocol::Enqueue::One(job)) => {
                let job = self.validate(&job, None)?;
                let mut done = self.enqueue(vec![job], false).await?;
                let e = done.pop().ok_or_else(|| {
                    ErrorBody::new(ErrorCode::Internal, "the store answered nothing")
                })?;
                Ok(ok_line(json!({
                    "id": e.id, "state": e.state, "scheduled_at": e.scheduled_at,
                    "due_at": e.due_at, "duplicate": e.duplicate
                })))
            }
            Request::Enqueue(protocol::Enqueue::Batch(jobs)) => {
                // Each JSON value is dropped once validated: a large batch
                // does not hold both forms at once.
                let jobs = jobs
                    .into_iter()
                    .enumerate()
                    .map(|(i, job)| self.validate(&job, Some(i)))
                    .collect::<Result<Vec<_>, _>>()?;
                let done = self.enqueue(jobs, true).await?;
                let results: Vec<Value> = done
                    .iter()
                    .map(|e| {
                        json!({"id": e.id, "state": e.state, "due_at": e.due_at,
                               "duplicate": e.duplicate})
                    })
                    .collect();
                Ok(ok_line(json!({ "results": results })))
            }
            Request::Get(lookup) => {
                let described = match &lookup {
                    protocol::Lookup::Id(id) => format!("no job with id {id}"),
                    protocol::Lookup::Key(key) => {
                        format!("no job with key {}", protocol::quoted(key))
                    }
                };
                match self.store.get(lookup).await.map_err(|e| internal(&e))? {
                    Some(job) => Ok(protocol::job_line(&job)),
                    None => Err(ErrorBody::new(ErrorCode::NotFound, described)),
                }
            }
            Request::List {
                state,
                limit,
                order,
                after,
                due_before,
                tag,
            } => {
                let page = self
                    .store
                    .list(state, limit, order, after, due_before, tag)
                    .await
                    .map_err(|e| internal(&e))?;
                Ok(protocol::list_line(&page.jobs, page.next))
            }
            Request::Cancel { id } => {
                let job = self
                    .store
                    .cancel(id)
                    .await
                    .map_err(|e| internal(&e))?
                    .map_err(|r| refusal(id, "cancel", r))?;
                let (job, children) = job;
                tracing::info!(job_id = id, cancelled_children = children, "job cancelled");
                Ok(protocol::cancel_line(&job, children))
            }
            Request::CancelTag { tag } => {
                let (cancelled, children) = self
                    .store
                    .cancel_tag(tag.clone())
                    .await
                    .map_err(|e| internal(&e))?;
                tracing::info!(
                    tag,
                    cancelled,
                    cancelled_children = children,
                    "jobs cancelled by tag"
                );
                Ok(ok_line(
                    json!({ "cancelled": cancelled, "cancelled_children": children }),
                ))
            }
            Request::RescheduleTag { tag, by_ms } => {
                let moved = self
                    .store
                    .reschedule_tag(tag.clone(), by_ms)
                    .await
                    .map_err(|e| internal(&e))?
                    .map_err(|id| {
                        let mut e = ErrorBody::new(
                            ErrorCode::BadRequest,
                            format!(
                                "moving the jobs tagged {} by that much takes job {id} past \
                                 9999-12-31; nothing was moved",
                                protocol::quoted(&tag)
                            ),
                        );
                        e.field = Some("by".into());
                        e
                    })?;
                self.dispatch.wake();
                tracing::info!(
                    tag,
                    by_ms,
                    rescheduled = moved.rescheduled,
                    expired = moved.expired,
                    "jobs rescheduled by tag"
                );
                Ok(ok_line(json!({
                    "rescheduled": moved.rescheduled,
                    "expired": moved.expired,
                })))
            }
            Request::Reschedule { id, scheduled_at } => {
                let local = self.local_time(id, &scheduled_at).await?;
                let at = local
                    .map_or_else(|| time::parse_rfc3339(&scheduled_at), Ok)
                    .and_then(|at| {
                        job::check_instant("scheduled_at", at).map_err(|e| e.to_string())
                    })
                    .map_err(|e| {
                        let mut err = ErrorBody::new(ErrorCode::BadRequest, e);
                        err.field = Some("scheduled_at".into());
                        err
                    })?;
                let job = self
                    .store
                    .reschedule(id, at)
                    .await
                    .map_err(|e| internal(&e))?
                    .map_err(|r| refusal(id, "reschedule", r))?;
                self.dispatch.wake();
                tracing::info!(job_id = id, scheduled_at = %job.scheduled_at, "job rescheduled");
                Ok(protocol::job_line(&job))
            }
            Request::Requeue { id } => {
                let job = self
                    .store
                    .requeue(id)
                    .await
                    .map_err(|e| internal(&e))?
                    .map_err(|r| refusal(id, "requeue", r))?;
                self.dispatch.wake();
                tracing::info!(job_id = id, "job requeued");
                Ok(protocol::job_line(&job))
            }
            Request::Prune {
                older_than,
                dry_run,
            } => {
                let age = match older_than {
                    None => self.retention,
                    Some(text) => humantime::parse_duration(&text).map_err(|e| {
                        ErrorBody::new(
                            ErrorCode::BadRequest,
                            format!(
                                "\"older_than\" {} is not a duration such as \"30d\" ({e})",
                                protocol::quoted(&text)
                            ),
                        )
                    })?,
                };
                let report = crate::housekeeping::prune(&self.store, age, dry_run)
                    .await
                    .map_err(|e| internal(&e))?;
                Ok(ok_line(json!({
                    "dry_run": dry_run,
                    "before": time::format(report.before),
                    "jobs": report.pruned.jobs,
                    "attempts": report.pruned.attempts,
                })))
            }
            Request::Schedule(op) => {
                crate::schedule::answer::answer(&self.store, &self.rules, &self.schedules, op).await
            }
            Request::Stats => {
                let summary = self.store.stats().await.map_err(|e| internal(&e))?;
                let stats = Stats {
                    counts: summary
                        .counts
                        .iter()
                        .map(|(s, n)| (s.as_str().to_owned(), *n))
                        .collect(),
                    next_due: summary.next_due.map(time::format),
                };
                let mode = self.dispatch.mode();
                let (schedules, next_occurrence) = self
                    .store
                    .schedules_overview()
                    .await
                    .map_err(|e| internal(&e))?;
                Ok(ok_line(json!({
                    "counts": stats.counts,
                    "next_due": stats.next_due,
                    "deferred": summary.deferred,
                    "nodes": summary.nodes.iter().map(|n| json!({
                        "name": n.name,
                        "last_heartbeat": time::format(n.last_heartbeat),
                        "in_flight": n.in_flight,
                    })).collect::<Vec<_>>(),
                    "schedules": schedules,
                    "next_occurrence": next_occurrence.map(time::format),
                    "dispatch": {"state": mode.name(), "until": mode.until().map(time::format)},
                })))
            }
        }
    }

    /// `text` as a local date and time without an offset, read in job
    /// `id`'s zone, as at enqueue; `None` when it is not one (or the job is
    /// gone, which the reschedule itself then reports).
    async fn local_time(&self, id: i64, text: &str) -> Result<Option<time::Millis>, ErrorBody> {
        if time::parse_rfc3339(text).is_ok() {
            return Ok(None);
        }
        let Some(view) = self
            .store
            .get(protocol::Lookup::Id(id))
            .await
            .map_err(|e| internal(&e))?
        else {
            return Ok(None);
        };
        let rule = job::Kind::parse(&view.kind).and_then(|kind| {
            let calendar = self.store.calendar();
            calendar
                .rule(view.timezone.as_deref(), view.window.as_deref(), kind)
                .ok()
        });
        Ok(rule.and_then(|rule| crate::window::parse_local(text, &rule)))
    }

    /// Ends a pause or an open breaker for an operator, and says what it
    /// ended; nothing paused is an answer, not an error. A pause shared
    /// with other nodes on the queue ends for them too.
    async fn resume(&self, uid: Option<u32>) -> String {
        use crate::store::PauseKind;
        let shared = self
            .store
            .clear_pauses(&[PauseKind::RateLimit, PauseKind::Auth])
            .await;
        let resumed = self.dispatch.resume();
        let uid = uid.map_or(-1, i64::from);
        if shared > 0 {
            tracing::info!(uid, "resume: the pause shared with the other nodes ended");
        }
        if resumed.ended_something() {
            tracing::info!(
                uid,
                was = resumed.was.name(),
                "resume: an operator ended the pause; sending resumes"
            );
        } else {
            // Asking when nothing is paused changes nothing; at INFO a loop
            // of such calls would flood the journal.
            tracing::debug!(uid, "resume: asked, but nothing was paused");
        }
        ok_line(json!({
            "resumed": resumed.ended_something() || shared > 0,
            "dispatch": {"state": resumed.now.name(), "was": resumed.was.name()},
        }))
    }

    fn validate(&self, job: &Value, index: Option<usize>) -> Result<NewJob, ErrorBody> {
        // The calendar in force now: a reload may have replaced it.
        let rules = job::Rules {
            calendar: self.store.calendar(),
            ..self.rules.clone()
        };
        job::validate(job, self.store.now(), &rules).map_err(|e| {
            let message = match index {
                Some(i) => format!("job {i}: {e}"),
                None => e.to_string(),
            };
            ErrorBody {
                code: ErrorCode::InvalidJob,
                message,
                field: Some(e.field),
                index,
            }
        })
    }

    /// Stores `jobs` (a `batch` of them, or one); a job whose `after`
    /// names no job is `invalid_job` on `after`, and nothing is stored.
    async fn enqueue(
        &self,
        jobs: Vec<NewJob>,
        batch: bool,
    ) -> Result<Vec<protocol::Enqueued>, ErrorBody> {
        // A follow-up whose parent was sent long ago is due at once, before
        // the `scheduled_at` it was validated with: count it as due now.
        let earliest = jobs
            .iter()
            .map(|j| {
                j.after
                    .as_ref()
                    .map_or(j.scheduled_at, |a| j.scheduled_at - a.delay_ms)
            })
            .min();
        let done = self
            .store
            .enqueue_checked(jobs)
            .await
            .map_err(|e| internal(&e))?
            .map_err(|unknown| {
                let index = batch.then_some(unknown.index);
                let message = match index {
                    Some(i) => format!("job {i}: {unknown}"),
                    None => unknown.to_string(),
                };
                ErrorBody {
                    code: ErrorCode::InvalidJob,
                    message,
                    field: Some("after".into()),
                    index,
                }
            })?;
        crate::metrics::enqueued(&done);
        if let Some(at) = earliest {
            self.dispatch.wake_if_before(at);
        }
        for e in done.iter().filter(|e| !e.duplicate) {
            tracing::debug!(job_id = e.id, scheduled_at = %e.scheduled_at, "job enqueued");
        }
        Ok(done)
    }
}
