//! One connection: reads request lines under their time and memory bounds,
//! and writes each answer in order.
//!
//! The bounds, and why each exists:
//! - `socket.idle_timeout`: the wait for the first byte of a line, and for
//!   the client to take each answer.
//! - `socket.line_timeout`: a line must be complete this long after its
//!   first byte, so a client trickling bytes cannot hold a slot for minutes.
//! - On a reserved slot both are [`RESERVED_DEADLINE`]: the slot exists for
//!   an operator's one quick question, and a slow client must not keep it.
//! - [`MAX_LINE_BYTES`]: the longest line.
//! - The [`Budget`]: a line grows past [`SMALL_LINE_BYTES`] only in one of
//!   32 daemon-wide turns to read a large line, and must then keep coming
//!   (see [`LARGE_LINE_TIME`](super::budget::LARGE_LINE_TIME); [`pace`]
//!   says which time counts); once complete it is parsed and handled
//!   only while holding one of a few permits, and off the runtime's worker
//!   threads, so other connections are read meanwhile. A `list` or `get`
//!   takes room for the largest answer before the store builds it, and a
//!   large answer keeps its size until written. Small requests and answers
//!   never wait for it; the time spent waiting for a turn does not
//!   count against the client's line timeout.
//!
//! ```text
//!  idle ─first byte─► reading ─newline─► parse, handle ─► write answer ─► idle
//!   │ idle_timeout      │ line_timeout (+ any wait for a turn)
//!   ▼                   ▼ past SMALL_LINE_BYTES: a turn, then a pace
//! closed             closed, with a bad_request line
//! ```

mod pace;

use super::Service;
use super::accept::RESERVED_OPS;
use super::budget::{Budget, LARGE_LINE_RATE, SMALL_LINE_BYTES};
use crate::protocol::{ErrorBody, ErrorCode, MAX_LINE_BYTES, Request, parse_request};
use pace::Pace;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;

/// On a reserved slot, the longest wait for a line's first byte, for the
/// rest of the line, and for the client to take its answer.
pub const RESERVED_DEADLINE: Duration = Duration::from_secs(1);

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
    #[error("sent a line over {SMALL_LINE_BYTES} bytes slower than {0} bytes a second")]
    SlowLargeLine(usize),
    #[error("did not read its answer within {0:?}")]
    Stalled(Duration),
    #[error("sent a line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("{0}")]
    Stopping(#[from] super::budget::Closed),
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
    let limits = &match slot {
        SlotKind::Normal => limits.clone(),
        SlotKind::Reserved => Limits {
            idle: limits.idle.min(RESERVED_DEADLINE),
            line: limits.line.min(RESERVED_DEADLINE),
            budget: limits.budget.clone(),
        },
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let read = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            read = read_line(&mut reader, &mut line, limits, slot) => read,
        };
        let turn = match read {
            Ok(Some(turn)) => turn,
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
                    ConnectionError::SlowLargeLine(rate) => format!(
                        "the line is longer than {SMALL_LINE_BYTES} bytes and came slower \
                         than {rate} bytes a second; the connection is closed"
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
        // Complete, a large line waits its turn to be parsed and handled;
        // the client's speed no longer matters.
        let handling = match turn {
            Some(_) => Some(limits.budget.handle_large_line().await?),
            None => None,
        };
        let request = match slot {
            SlotKind::Reserved if !reserved_op(text) => Err(ErrorBody::new(
                ErrorCode::Internal,
                format!(
                    "the daemon is serving socket.max_connections connections; this reserved \
                     connection answers only {}; try again shortly",
                    RESERVED_OPS.join(", ")
                ),
            )),
            _ if handling.is_some() => off_the_workers(async { parse_request(text) }).await,
            _ => parse_request(text),
        };
        // Parsed, a large line's bytes are not needed while it is handled,
        // nor kept for an idle connection.
        if line.capacity() > SMALL_LINE_BYTES {
            line = Vec::new();
        }
        if let Some(turn) = turn {
            limits.budget.done_with(turn);
        }
        let (answer, answer_bytes) = match request {
            Ok(request) if may_answer_large(&request) => {
                // Room for the largest answer before the store builds it;
                // what the answer does not need goes back once it is built.
                let room = limits.budget.answer_room().await?;
                let answer = service.handle(request, uid).await;
                let kept = limits.budget.keep_for_answer(room, answer.len() + 1);
                (answer, kept)
            }
            Ok(request) if handling.is_some() => {
                (off_the_workers(service.handle(request, uid)).await, None)
            }
            Ok(request) => (service.handle(request, uid).await, None),
            Err(e) => {
                crate::metrics::socket_request("invalid", Some(e.code));
                (e.to_line(), None)
            }
        };
        // Handled: the request's memory is gone, let the next large line in.
        if let Some(handling) = handling {
            limits.budget.done_with(handling);
        }
        // A client that stops reading must not hold its slot for ever.
        let mut answer = answer.into_bytes();
        answer.push(b'\n');
        let written = tokio::time::timeout(limits.idle, write.write_all(&answer)).await;
        // The answer's bytes are gone before its budget is given back.
        drop(answer);
        if let Some(answer_bytes) = answer_bytes {
            limits.budget.done_with(answer_bytes);
        }
        written.map_err(|_| ConnectionError::Stalled(limits.idle))??;
    }
}

/// Runs `work` on a large line (parsing it, validating a batch: up to a
/// second of CPU) where it does not hold up the runtime's other tasks: while
/// a worker thread is busy it neither reads other connections nor looks
/// for the sockets that have bytes waiting, and the lines being read would
/// seem to stall. Inline on a single-threaded runtime, which cannot.
async fn off_the_workers<F: std::future::Future>(work: F) -> F::Output {
    let runtime = tokio::runtime::Handle::current();
    match runtime.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| runtime.block_on(work))
        }
        _ => work.await,
    }
}

/// Whether `request`'s answer may be large: the views of jobs.
fn may_answer_large(request: &Request) -> bool {
    matches!(request, Request::List { .. } | Request::Get(_))
}

/// Reads one line, newline included, into `line`. `Ok(None)` is the end of
/// the stream before a new line began; a last line without a newline counts
/// as a line. A line past [`SMALL_LINE_BYTES`] comes with its turn to be
/// read, which it holds until it has been parsed.
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
    // Once the line is past SMALL_LINE_BYTES: its turn, and how long the
    // daemon has waited on the client since.
    let mut large: Option<(OwnedSemaphorePermit, Pace)> = None;
    loop {
        let due = match &large {
            None => deadline,
            Some((_, pace)) => deadline.min(Instant::now() + pace.left(line.len())),
        };
        // Bytes already waiting are read even past `due`: timeout_at tries
        // the read first.
        let read = match &mut large {
            None => tokio::time::timeout_at(due, reader.fill_buf())
                .await
                .map(|read| read.map(<[u8]>::len)),
            Some((_, pace)) => {
                let fill = std::future::poll_fn(|cx| pace.poll_fill(Pin::new(&mut *reader), cx));
                let read = tokio::time::timeout_at(due, fill).await;
                pace.settle();
                read
            }
        };
        match read {
            Ok(read) => read?,
            // The client's time is up only once the daemon has waited on an
            // empty socket that long; time busy elsewhere is not its doing.
            Err(_) if due < deadline => match &large {
                Some((_, pace)) if pace.left(line.len()).is_zero() => {
                    return Err(ConnectionError::SlowLargeLine(LARGE_LINE_RATE));
                }
                _ => continue,
            },
            Err(_) => return Err(ConnectionError::SlowLine(limits.line)),
        };
        let buf = reader.buffer();
        if buf.is_empty() {
            return Ok(Some(large.map(|(turn, _)| turn)));
        }
        let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let needed = line.len() + take;
        if needed > max {
            return Err(ConnectionError::LineTooLong(max));
        }
        if needed > SMALL_LINE_BYTES && large.is_none() {
            let waiting = Instant::now();
            let turn = limits.budget.read_large_line().await?;
            // The wait for a turn is not the client's doing.
            deadline += waiting.elapsed();
            large = Some((turn, Pace::new(line.len())));
            // The wait may have let more bytes in; read them afresh.
            continue;
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if complete {
            return Ok(Some(large.map(|(turn, _)| turn)));
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

    /// A reader with the daemon-wide budget, and the client's end.
    fn connected() -> (BufReader<OwnedReadHalf>, UnixStream, Limits) {
        let (daemon, client) = UnixStream::pair().expect("socket pair");
        let limits = Limits {
            idle: Duration::from_secs(600),
            line: Duration::from_secs(600),
            budget: Budget::new(),
        };
        (BufReader::new(daemon.into_split().0), client, limits)
    }

    /// Whether `reading` is still waiting once it has read all that is there.
    async fn still_reading<F: std::future::Future + Unpin>(reading: &mut F) -> bool {
        tokio::time::timeout(Duration::from_millis(1), reading)
            .await
            .is_err()
    }

    /// 256 clients sent 1 MiB lines at once on two loaded cores: while the
    /// daemon was busy with other lines it did not read one for seconds,
    /// its client could only fill the socket's buffer meanwhile, and once
    /// the daemon had drained that it found the socket empty past the
    /// line's time since its turn, and closed it; the client, still
    /// writing, got a broken pipe. Only time spent waiting on an empty
    /// socket counts now.
    #[tokio::test(start_paused = true)]
    async fn large_line_is_not_closed_as_slow_for_time_the_daemon_was_busy() {
        let (mut reader, mut client, limits) = connected();
        let mut line = Vec::new();
        let head = vec![b' '; 2 * SMALL_LINE_BYTES];
        let more = vec![b' '; LARGE_LINE_RATE];
        let turn = {
            let mut reading =
                std::pin::pin!(read_line(&mut reader, &mut line, &limits, SlotKind::Normal));
            // Past SMALL_LINE_BYTES: the line has its turn and is read up
            // to what the client has sent.
            client.write_all(&head).await.expect("send");
            assert!(still_reading(&mut reading).await);
            // The client sends on at once; the daemon reads it only after
            // far longer than the line's time, busy elsewhere.
            client.write_all(&more).await.expect("send");
            // The runtime sees the bytes arrive before the clock jumps.
            tokio::task::yield_now().await;
            tokio::time::advance(3 * super::super::budget::LARGE_LINE_TIME).await;
            let read = tokio::time::timeout(Duration::from_millis(1), &mut reading).await;
            assert!(read.is_err(), "closed for the daemon's delay: {read:?}");
            client.write_all(b"{}\n").await.expect("send");
            reading.await.expect("the line").expect("not the end")
        };
        assert!(turn.is_some(), "a large line comes with its turn");
        assert_eq!(line.len(), head.len() + more.len() + 3);
    }

    #[tokio::test(start_paused = true)]
    async fn large_line_whose_client_stops_sending_is_closed_after_its_time() {
        let (mut reader, mut client, limits) = connected();
        let mut line = Vec::new();
        let started = Instant::now();
        let reading = read_line(&mut reader, &mut line, &limits, SlotKind::Normal);
        let (read, ()) = tokio::join!(reading, async {
            client
                .write_all(&vec![b' '; 2 * SMALL_LINE_BYTES])
                .await
                .expect("send");
        });
        assert!(
            matches!(read, Err(ConnectionError::SlowLargeLine(_))),
            "{read:?}"
        );
        let took = started.elapsed();
        assert!(
            took >= super::super::budget::LARGE_LINE_TIME && took < limits.line,
            "{took:?}"
        );
    }
}
