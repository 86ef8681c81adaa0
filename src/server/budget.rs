//! The daemon-wide memory budget of the socket: the bytes of large request
//! lines being read, the handling of large lines, and the bytes of large
//! answers waiting to be written; and giving memory back once they stop.
//!
//! It owns only the counting. Where a connection takes and gives back its
//! share is [`super::connection`]'s business.
//!
//! Three pools, because the three costs differ and are held for different
//! times:
//! - **reading** ([`LARGE_LINES_READ_AT_ONCE`]): a line growing past
//!   [`SMALL_LINE_BYTES`] is read on, up to 1 MiB, only while it holds one
//!   of these, and must then keep coming at [`LARGE_LINE_RATE`]. The
//!   bytes are cheap, so there are many, and a client that sends slowly
//!   holds one only briefly: slow clients cannot stop other large lines
//!   for longer than that. (A line holds its whole 1 MiB from the start,
//!   rather than growing its share: lines that each held part and waited
//!   for more could wait for each other for ever.)
//! - **handling** ([`LARGE_LINES_AT_ONCE`]): a complete large line is parsed
//!   and handled only while holding one of a few permits. Parsing costs
//!   several times the line's size; the client's speed no longer matters
//!   here, since the line is complete before the permit is asked for.
//! - **answer bytes** ([`ANSWER_BUDGET_BYTES`]): a request whose answer may
//!   be large (`list`, `get`) holds [`ANSWER_ROOM_BYTES`] from before the
//!   store builds it; once built, an answer over [`SMALL_ANSWER_BYTES`]
//!   keeps its own size until it has been written (or the connection is
//!   dropped), so clients that never read their answers cannot add up to
//!   gigabytes.

use crate::protocol::MAX_ANSWER_BYTES;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

/// A line up to this long is read without the budget: one job, or any
/// other request. Every connection may hold one at once.
pub const SMALL_LINE_BYTES: usize = 8 * 1024;

/// How many lines longer than [`SMALL_LINE_BYTES`] may be read at once,
/// daemon-wide: 32 lines of up to 1 MiB.
pub const LARGE_LINES_READ_AT_ONCE: usize = 32;

/// How long a line, once past [`SMALL_LINE_BYTES`] and given its turn to
/// be read, may go without sending, plus one second more for each
/// [`LARGE_LINE_RATE`] bytes it has sent since (and never longer than
/// `socket.line_timeout`). A client writing a prepared line over a local
/// socket takes milliseconds; one trickling bytes is closed after about
/// this long. Only the time the daemon spends waiting on an empty socket
/// counts, so a busy daemon slow to read does not count against the
/// client.
pub const LARGE_LINE_TIME: Duration = Duration::from_secs(5);

/// The pace, in bytes a second, a line with a turn to be read must keep
/// after [`LARGE_LINE_TIME`].
pub const LARGE_LINE_RATE: usize = 64 * 1024;

/// How many lines longer than [`SMALL_LINE_BYTES`] may be parsed and
/// handled at once, daemon-wide. A 1 MiB batch of small jobs costs 25 to 40
/// MiB at its peak (JSON values, validated jobs, the store's transaction,
/// the answer), so this bounds them to well under 256 MiB together. More at
/// once would not go faster: the store commits one call at a time.
pub const LARGE_LINES_AT_ONCE: usize = 4;

/// An answer up to this long is written without holding the budget: every
/// connection may have one.
pub const SMALL_ANSWER_BYTES: usize = 64 * 1024;

/// The bytes of answers that may be being built or waiting to be written at
/// once, daemon-wide: 8 answers of the largest size written, or 4 built.
pub const ANSWER_BUDGET_BYTES: usize = 8 * MAX_ANSWER_BYTES;

/// What building one answer may take at its peak: the store's views of the
/// jobs and the answer line made of them, each up to [`MAX_ANSWER_BYTES`].
pub const ANSWER_ROOM_BYTES: usize = 2 * MAX_ANSWER_BYTES;

/// How the process gives freed memory back to the system, if it can be
/// told to: the binary's allocator keeps freed pages for reuse, which after
/// a burst of large requests would keep the burst's peak resident.
static GIVE_BACK: OnceLock<fn()> = OnceLock::new();

/// Sets what gives memory back (once; later calls are ignored). Called
/// after a burst of large lines or answers, at most once a second.
pub fn give_memory_back_with(give_back: fn()) {
    let _ = GIVE_BACK.set(give_back);
}

/// The daemon-wide pools; clones share them.
#[derive(Clone)]
pub struct Budget {
    reading: Arc<Semaphore>,
    handling: Arc<Semaphore>,
    answer_bytes: Arc<Semaphore>,
    /// Fired each time a large line or answer is done with.
    done: Arc<Notify>,
}

/// Why a share of the budget could not be had.
#[derive(Debug, thiserror::Error)]
#[error("the daemon is stopping")]
pub struct Closed;

impl Budget {
    pub fn new() -> Budget {
        Budget {
            reading: Arc::new(Semaphore::new(LARGE_LINES_READ_AT_ONCE)),
            handling: Arc::new(Semaphore::new(LARGE_LINES_AT_ONCE)),
            answer_bytes: Arc::new(Semaphore::new(ANSWER_BUDGET_BYTES)),
            done: Arc::new(Notify::new()),
        }
    }

    /// A turn to read one line past [`SMALL_LINE_BYTES`] (waiting, in order
    /// of asking, until there is one).
    pub async fn read_large_line(&self) -> Result<OwnedSemaphorePermit, Closed> {
        self.reading
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Closed)
    }

    /// A permit to parse and handle one complete large line.
    pub async fn handle_large_line(&self) -> Result<OwnedSemaphorePermit, Closed> {
        self.handling
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Closed)
    }

    /// Room to build an answer of up to [`MAX_ANSWER_BYTES`], taken before
    /// the store is asked.
    pub async fn answer_room(&self) -> Result<OwnedSemaphorePermit, Closed> {
        // 16 MiB, well within u32.
        let n = u32::try_from(ANSWER_ROOM_BYTES).map_err(|_| Closed)?;
        if let Ok(room) = self.answer_bytes.clone().try_acquire_many_owned(n) {
            return Ok(room);
        }
        tracing::debug!(
            free_bytes = self.answer_bytes.available_permits(),
            "a request waits for room for its answer: other large answers are not yet \
             taken by their clients"
        );
        self.answer_bytes
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| Closed)
    }

    /// Keeps, of `room`, what an answer of `len` bytes needs until it is
    /// written; `None` for a small one. The rest goes back at once.
    pub fn keep_for_answer(
        &self,
        mut room: OwnedSemaphorePermit,
        len: usize,
    ) -> Option<OwnedSemaphorePermit> {
        if len <= SMALL_ANSWER_BYTES {
            return None;
        }
        let kept = room.split(len.min(room.num_permits()));
        drop(room);
        self.done.notify_one();
        kept
    }

    /// Says that a large line or answer is done with, so that memory may be
    /// given back.
    pub fn done_with(&self, permit: OwnedSemaphorePermit) {
        drop(permit);
        self.done.notify_one();
    }

    /// Whether nothing holds any of the budget.
    fn idle(&self) -> bool {
        self.reading.available_permits() == LARGE_LINES_READ_AT_ONCE
            && self.handling.available_permits() == LARGE_LINES_AT_ONCE
            && self.answer_bytes.available_permits() == ANSWER_BUDGET_BYTES
    }

    /// Gives memory back once large lines and answers stop, until
    /// `shutdown`.
    pub async fn give_back_when_idle(self, mut shutdown: watch::Receiver<bool>) {
        let Some(give_back) = GIVE_BACK.get() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.done.notified() => {}
            }
            // Once a second at most: giving back costs system calls.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.idle() {
                give_back();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_answers_keep_only_their_size_and_small_ones_nothing() {
        let budget = Budget::new();
        let room = budget.answer_room().await.expect("room");
        assert!(budget.keep_for_answer(room, 100).is_none());
        assert!(budget.idle());
        let room = budget.answer_room().await.expect("room");
        let kept = budget.keep_for_answer(room, 3 * 1024 * 1024).expect("kept");
        assert_eq!(kept.num_permits(), 3 * 1024 * 1024);
        assert_eq!(
            budget.answer_bytes.available_permits(),
            ANSWER_BUDGET_BYTES - 3 * 1024 * 1024
        );
        budget.done_with(kept);
        assert!(budget.idle());
    }
}
