//! The control socket server: reads request lines, answers each in order.
//!
//! It owns connection handling (line caps, idle time, the connection limit)
//! and carrying out each [`Request`] against the store. Parsing lines is
//! [`protocol`]'s job and validating jobs is [`job`]'s. An answer that
//! reports a change is written only after the store has committed it.

use crate::config::SocketConfig;
use crate::dispatch::Handle;
use crate::job::{self, NewJob};
use crate::protocol::{
    self, ErrorBody, ErrorCode, MAX_LINE_BYTES, Request, Stats, ok_line, parse_request,
};
use crate::store::{Refusal, Store, StoreError};
use crate::time;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};

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
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    service: Service,
    limits: SocketConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                // Out of descriptors, typically; give the system a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let credentials = stream.peer_cred().ok();
        let peer = credentials
            .map(|c| {
                format!(
                    "uid={} gid={} pid={}",
                    c.uid(),
                    c.gid(),
                    c.pid().unwrap_or(0)
                )
            })
            .unwrap_or_else(|| "unknown".into());
        if !credentials.is_some_and(|c| limits.admits(c.uid(), c.gid())) {
            tracing::warn!(%peer, "connection refused: peer not in socket.allowed_uids or allowed_gids");
            tokio::spawn(refuse(
                stream,
                ErrorBody::new(
                    ErrorCode::Forbidden,
                    format!("{peer} may not use this socket (socket.allowed_uids, allowed_gids)"),
                ),
            ));
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "connection refused: too many connections");
            tokio::spawn(refuse(
                stream,
                ErrorBody::new(
                    ErrorCode::Internal,
                    "too many connections; try again shortly",
                ),
            ));
            continue;
        };
        let service = service.clone();
        let idle = limits.idle_timeout;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tracing::info!(%peer, "client connected");
            let _counted = crate::metrics::connection();
            if let Err(e) = connection(stream, &service, idle, shutdown).await {
                tracing::info!(%peer, error = %e, "client connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Answers a connection that will not be served with one error line.
async fn refuse(mut stream: UnixStream, error: ErrorBody) {
    let _ = stream
        .write_all(format!("{}\n", error.to_line()).as_bytes())
        .await;
}

/// Why a connection was closed early.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("idle for longer than {0:?}")]
    Idle(Duration),
    #[error("did not read its answer within {0:?}")]
    Stalled(Duration),
    #[error("sent a line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
}

async fn connection(
    stream: UnixStream,
    service: &Service,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    // For the log lines of requests that act for an operator (`resume`).
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE_BYTES as u64);
        let read = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            read = tokio::time::timeout(idle, limited.read_until(b'\n', &mut line)) => read,
        };
        let n = read.map_err(|_| ConnectionError::Idle(idle))??;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && line.len() >= MAX_LINE_BYTES {
            let e = ErrorBody::new(
                ErrorCode::BadRequest,
                format!("the line is longer than {MAX_LINE_BYTES} bytes; the connection is closed"),
            );
            write
                .write_all(format!("{}\n", e.to_line()).as_bytes())
                .await?;
            return Err(ConnectionError::LineTooLong);
        }
        let text = trim_line(&line);
        if text.is_empty() {
            continue;
        }
        let answer = match parse_request(text) {
            Ok(request) => service.handle(request, uid).await,
            Err(e) => {
                crate::metrics::socket_request("invalid", Some(e.code));
                e.to_line()
            }
        };
        // A client that stops reading must not hold its slot for ever.
        let mut answer = answer.into_bytes();
        answer.push(b'\n');
        tokio::time::timeout(idle, write.write_all(&answer))
            .await
            .map_err(|_| ConnectionError::Stalled(idle))??;
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &line[..end]
}

fn internal(e: &StoreError) -> ErrorBody {
    tracing::error!(error = %e, "request failed in the store");
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
    }
}

impl Service {
    /// Carries out one request from the peer with `uid` and returns its
    /// answer line (no newline).
    pub async fn handle(&self, request: Request, uid: Option<u32>) -> String {
        let op = crate::metrics::op_name(&request);
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
            Request::Resume => Ok(self.resume(uid)),
            Request::Enqueue(protocol::Enqueue::One(job)) => {
                let job = self.validate(&job, None)?;
                let mut done = self.enqueue(vec![job]).await?;
                let e = done.pop().ok_or_else(|| {
                    ErrorBody::new(ErrorCode::Internal, "the store answered nothing")
                })?;
                Ok(ok_line(json!({
                    "id": e.id, "state": e.state, "scheduled_at": e.scheduled_at, "duplicate": e.duplicate
                })))
            }
            Request::Enqueue(protocol::Enqueue::Batch(jobs)) => {
                let jobs = jobs
                    .iter()
                    .enumerate()
                    .map(|(i, job)| self.validate(job, Some(i)))
                    .collect::<Result<Vec<_>, _>>()?;
                let done = self.enqueue(jobs).await?;
                let results: Vec<Value> = done
                    .iter()
                    .map(|e| json!({"id": e.id, "duplicate": e.duplicate}))
                    .collect();
                Ok(ok_line(json!({ "results": results })))
            }
            Request::Get(lookup) => {
                let described = match &lookup {
                    protocol::Lookup::Id(id) => format!("no job with id {id}"),
                    protocol::Lookup::Key(key) => format!("no job with key {key:?}"),
                };
                match self.store.get(lookup).await.map_err(|e| internal(&e))? {
                    Some(job) => Ok(ok_line(json!({ "job": job }))),
                    None => Err(ErrorBody::new(ErrorCode::NotFound, described)),
                }
            }
            Request::List {
                state,
                limit,
                order,
            } => {
                let jobs = self
                    .store
                    .list(state, limit, order)
                    .await
                    .map_err(|e| internal(&e))?;
                Ok(ok_line(json!({ "jobs": jobs })))
            }
            Request::Cancel { id } => {
                let job = self
                    .store
                    .cancel(id)
                    .await
                    .map_err(|e| internal(&e))?
                    .map_err(|r| refusal(id, "cancel", r))?;
                tracing::info!(job_id = id, "job cancelled");
                Ok(ok_line(json!({ "job": job })))
            }
            Request::Reschedule { id, scheduled_at } => {
                let at = time::parse_rfc3339(&scheduled_at)
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
                Ok(ok_line(json!({ "job": job })))
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
                Ok(ok_line(json!({ "job": job })))
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
                                "\"older_than\" {text:?} is not a duration such as \"30d\" ({e})"
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
                Ok(ok_line(json!({
                    "counts": stats.counts,
                    "next_due": stats.next_due,
                    "dispatch": {"state": mode.name(), "until": mode.until().map(time::format)},
                })))
            }
        }
    }

    /// Ends a pause or an open breaker for an operator, and says what it
    /// ended; nothing paused is an answer, not an error.
    fn resume(&self, uid: Option<u32>) -> String {
        let resumed = self.dispatch.resume();
        let uid = uid.map_or(-1, i64::from);
        if resumed.ended_something() {
            tracing::info!(
                uid,
                was = resumed.was.name(),
                "resume: an operator ended the pause; sending resumes"
            );
        } else {
            tracing::info!(uid, "resume: asked, but nothing was paused");
        }
        ok_line(json!({
            "resumed": resumed.ended_something(),
            "dispatch": {"state": resumed.now.name(), "was": resumed.was.name()},
        }))
    }

    fn validate(&self, job: &Value, index: Option<usize>) -> Result<NewJob, ErrorBody> {
        job::validate(job, time::now(), &self.rules).map_err(|e| {
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

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<protocol::Enqueued>, ErrorBody> {
        let earliest = jobs.iter().map(|j| j.scheduled_at).min();
        let done = self.store.enqueue(jobs).await.map_err(|e| internal(&e))?;
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
