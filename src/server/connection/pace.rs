//! The pace of a large line: how long the daemon has waited on its client
//! since the line was given its turn to be read.
//!
//! Only time spent waiting on an empty socket counts. While the daemon is
//! busy elsewhere (parsing other lines, or the machine is loaded), the
//! client can send no more than the socket's buffer holds; when the daemon
//! comes back it drains the buffer at once and finds the socket empty a
//! moment later, before the client, just woken, has written again. Time
//! since the turn would blame the client for the daemon's own delay and
//! close a connection whose client never stopped sending. So a wait is
//! counted from the moment a read finds the socket empty until the socket
//! wakes the reader, not until the reader is next polled.

use super::super::budget::{LARGE_LINE_RATE, LARGE_LINE_TIME};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::{AsyncBufRead, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::time::Instant;

/// One large line's account of waiting on its client.
pub struct Pace {
    /// The line's length when it was given its turn.
    from: usize,
    /// Time spent waiting on an empty socket, not counting a wait under way.
    waited: Duration,
    /// When the wait under way began: the last read found the socket empty.
    empty_since: Option<Instant>,
    wake: Arc<WakeTime>,
}

impl Pace {
    /// The account of a line that was `from` bytes long when given its turn.
    pub fn new(from: usize) -> Pace {
        Pace {
            from,
            waited: Duration::ZERO,
            empty_since: None,
            wake: Arc::default(),
        }
    }

    /// How much longer the daemon may wait on an empty socket for a line
    /// now `len` bytes long: [`LARGE_LINE_TIME`], plus a second for each
    /// [`LARGE_LINE_RATE`] bytes sent since the turn, less what it waited.
    pub fn left(&self, len: usize) -> Duration {
        let sent = len.saturating_sub(self.from) as f64 / LARGE_LINE_RATE as f64;
        (LARGE_LINE_TIME + Duration::from_secs_f64(sent)).saturating_sub(self.waited)
    }

    /// Polls `reader` for bytes (or the end of the stream), as
    /// `poll_fill_buf`, and returns how many are buffered. A wait that
    /// ends is counted by the next call or by [`Pace::settle`].
    pub fn poll_fill(
        &mut self,
        reader: Pin<&mut BufReader<OwnedReadHalf>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        self.settle();
        // Cleared before the read, so a wake that races the read's
        // registration is kept.
        self.wake.arm(cx.waker());
        let waker = Waker::from(self.wake.clone());
        match reader.poll_fill_buf(&mut Context::from_waker(&waker)) {
            Poll::Ready(read) => Poll::Ready(read.map(|buf| buf.len())),
            Poll::Pending => {
                self.empty_since = Some(Instant::now());
                Poll::Pending
            }
        }
    }

    /// Counts the wait under way, if any: until the socket woke the
    /// reader, or until now if it has not.
    pub fn settle(&mut self) {
        if let Some(since) = self.empty_since.take() {
            let until = self.wake.woken().unwrap_or_else(Instant::now);
            self.waited += until.saturating_duration_since(since);
        }
    }
}

/// Wakes the task reading a line, noting when the socket first did so.
#[derive(Default)]
struct WakeTime {
    woken: Mutex<Option<Instant>>,
    task: Mutex<Option<Waker>>,
}

impl WakeTime {
    /// Forgets the last wake-up and wakes `task` on the next one.
    fn arm(&self, task: &Waker) {
        *self.woken.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let mut current = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !current.as_ref().is_some_and(|w| w.will_wake(task)) {
            *current = Some(task.clone());
        }
    }

    fn woken(&self) -> Option<Instant> {
        *self.woken.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Wake for WakeTime {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(Instant::now);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}
