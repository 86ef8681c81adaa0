//! One connection: reads request lines under their time and memory bounds,
//! and writes each answer in order.
//!
//! The bounds, and why each exists:
//! - `socket.idle_timeout`: the wait for the first byte of a line, and for
//!   the client to take each answer.
//! - `socket.line_timeout`: a line must be complete this long after its
//!   first byte, so a client trickling bytes cannot hold a slot for minutes.
//! - [`MAX_LINE_BYTES`]: the longest line.
//! - The [`Budget`]: a line may grow past [`SMALL_LINE_BYTES`] only while it
//!   holds one of a few daemon-wide permits, kept until the line is parsed
//!   and handled. Parsing a line into JSON values costs several times its
//!   size, so without it many concurrent 1 MiB lines take gigabytes. Small
//!   requests never wait for it, and the time spent waiting for it does not
//!   count against the client's line timeout.
//!
//! ```text
//!  idle ─first byte─► reading ─newline─► parse, handle ─► write answer ─► idle
//!   │ idle_timeout      │ line_timeout (+ any wait for the budget)
//!   ▼                   ▼ past SMALL_LINE_BYTES: take a budget permit
//! closed             closed, with a bad_request line
//! ```

use super::Service;
use super::accept::RESERVED_OPS;
use crate::protocol::{ErrorBody, ErrorCode, MAX_LINE_BYTES, parse_request};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

/// A line up to this long is read without the budget: one job, or any
/// other request. Every connection may hold one at once.
pub const SMALL_LINE_BYTES: usize = 8 * 1024;

/// How many lines longer than [`SMALL_LINE_BYTES`] may be read, parsed and
/// handled at once, daemon-wide. A 1 MiB batch of small jobs costs 25 to 40
/// MiB at its peak (JSON values, validated jobs, the store's transaction,
/// the answer), so this bounds them to well under 256 MiB together. More at
/// once would not go faster: the store commits one call at a time.
pub const LARGE_LINES_AT_ONCE: usize = 4;

/// How the process gives freed memory back to the system, if it can be
/// told to: the binary's allocator keeps freed pages for reuse, which after
/// a burst of large requests would keep the burst's peak resident.
static GIVE_BACK: OnceLock<fn()> = OnceLock::new();

/// Sets what gives memory back (once; later calls are ignored). Called
/// after a burst of large lines has been handled, at most once a second.
pub fn give_memory_back_with(give_back: fn()) {
    let _ = GIVE_BACK.set(give_back);
}

/// The daemon-wide permits for large lines.
#[derive(Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    /// Fired each time a large line has been handled.
    handled: Arc<Notify>,
}

impl Budget {
    pub fn new() -> Budget {
        Budget {
            permits: Arc::new(Semaphore::new(LARGE_LINES_AT_ONCE)),
            handled: Arc::new(Notify::new()),
        }
    }

    /// Gives memory back once large lines stop coming, until `shutdown`.
    pub async fn give_back_when_idle(self, mut shutdown: watch::Receiver<bool>) {
        let Some(give_back) = GIVE_BACK.get() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.handled.notified() => {}
            }
            // Once a second at most: giving back costs system calls.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.permits.available_permits() == LARGE_LINES_AT_ONCE {
                give_back();
            }
        }
    }
}

/// What every connection is held to.
#[derive(Clone)]
pub struct Limits {
    pub idle: Duration,
    pub line: Duration,
    pub budget: Budget,
}

/// Which kind of slot a connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    Normal,
    /// Taken when every normal slot was in use: serves only
    /// [`RESERVED_OPS`], and only small lines.
    Reserved,
}

/// Why a connection was closed early.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("idle for longer than {0:?}")]
    Idle(Duration),
    #[error("did not finish a line within {0:?} of its first byte")]
    SlowLine(Duration),
    #[error("did not read its answer within {0:?}")]
    Stalled(Duration),
    #[error("sent a line longer than {0} bytes")]
    LineTooLong(usize),
}

/// Serves `stream` until the client closes it, a bound is broken, or
/// `shutdown` turns true.
pub async fn run(
    stream: UnixStream,
    service: &Service,
    limits: &Limits,
    slot: SlotKind,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    // For the log lines of requests that act for an operator (`resume`).
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let read = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            read = read_line(&mut reader, &mut line, limits, slot) => read,
        };
        let permit = match read {
            Ok(Some(permit)) => permit,
            Ok(None) => return Ok(()),
            Err(e) => {
                let message = match &e {
                    ConnectionError::LineTooLong(max) => {
                        format!("the line is longer than {max} bytes; the connection is closed")
                    }
                    ConnectionError::SlowLine(limit) => format!(
                        "the line was not complete within {limit:?} of its first byte \
                         (socket.line_timeout); the connection is closed"
                    ),
                    _ => return Err(e),
                };
                let answer = ErrorBody::new(ErrorCode::BadRequest, message).to_line();
                // Best effort, and bounded: the client may not be reading.
                let _ = tokio::time::timeout(
                    limits.idle,
                    write.write_all(format!("{answer}\n").as_bytes()),
                )
                .await;
                return Err(e);
            }
        };
        let text = trim_line(&line);
        if text.is_empty() {
            continue;
        }
        let request = match slot {
            SlotKind::Reserved if !reserved_op(text) => Err(ErrorBody::new(
                ErrorCode::Internal,
                format!(
                    "the daemon is serving socket.max_connections connections; this reserved \
                     connection answers only {}; try again shortly",
                    RESERVED_OPS.join(", ")
                ),
            )),
            _ => parse_request(text),
        };
        // Parsed, a large line's bytes are not needed while it is handled,
        // nor kept for an idle connection.
        if line.capacity() > SMALL_LINE_BYTES {
            line = Vec::new();
        }
        let answer = match request {
            Ok(request) => service.handle(request, uid).await,
            Err(e) => {
                crate::metrics::socket_request("invalid", Some(e.code));
                e.to_line()
            }
        };
        // Handled: the request's memory is gone, let the next large line in.
        if let Some(permit) = permit {
            drop(permit);
            limits.budget.handled.notify_one();
        }
        // A client that stops reading must not hold its slot for ever.
        let mut answer = answer.into_bytes();
        answer.push(b'\n');
        tokio::time::timeout(limits.idle, write.write_all(&answer))
            .await
            .map_err(|_| ConnectionError::Stalled(limits.idle))??;
    }
}

/// Reads one line, newline included, into `line`. `Ok(None)` is the end of
/// the stream before a new line began; a last line without a newline counts
/// as a line. The permit, if any, covers a line past [`SMALL_LINE_BYTES`].
async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    line: &mut Vec<u8>,
    limits: &Limits,
    slot: SlotKind,
) -> Result<Option<Option<OwnedSemaphorePermit>>, ConnectionError> {
    line.clear();
    let first = tokio::time::timeout(limits.idle, reader.fill_buf())
        .await
        .map_err(|_| ConnectionError::Idle(limits.idle))??;
    if first.is_empty() {
        return Ok(None);
    }
    let max = match slot {
        SlotKind::Normal => MAX_LINE_BYTES,
        SlotKind::Reserved => SMALL_LINE_BYTES,
    };
    let mut deadline = Instant::now() + limits.line;
    let mut permit = None;
    loop {
        let buf = tokio::time::timeout_at(deadline, reader.fill_buf())
            .await
            .map_err(|_| ConnectionError::SlowLine(limits.line))??;
        if buf.is_empty() {
            return Ok(Some(permit));
        }
        let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Err(ConnectionError::LineTooLong(max));
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if complete {
            return Ok(Some(permit));
        }
        if permit.is_none() && line.len() > SMALL_LINE_BYTES {
            let waiting = Instant::now();
            let acquired = limits.budget.permits.clone().acquire_owned().await;
            // Closed only if the daemon is going away.
            permit = Some(acquired.map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::Interrupted, "the daemon is stopping")
            })?);
            deadline += waiting.elapsed();
        }
    }
}

/// Whether a line asks for one of [`RESERVED_OPS`]. Only `op` is decoded;
/// the rest of the line is skipped without being built.
fn reserved_op(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Op<'a> {
        #[serde(borrow)]
        op: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Op>(line)
        .ok()
        .and_then(|o| o.op)
        .is_some_and(|op| RESERVED_OPS.contains(&op.as_ref()))
}

fn trim_line(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_slots_serve_only_ping_stats_and_resume() {
        assert!(reserved_op(br#"{"op":"ping"}"#));
        assert!(reserved_op(br#"{"op":"stats"}"#));
        assert!(reserved_op(br#"{"id":1,"op":"resume"}"#));
        assert!(!reserved_op(br#"{"op":"enqueue","job":{}}"#));
        assert!(!reserved_op(br#"{"op":"list"}"#));
        assert!(!reserved_op(b"not json"));
        assert!(!reserved_op(br#"{"op":7}"#));
    }
}
