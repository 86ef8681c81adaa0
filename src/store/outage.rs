//! Storage outages as the operator hears of them: one ERROR line when
//! storage starts failing (a full disk, an I/O error, a read-only or locked
//! file), and one INFO line, with the number of calls that failed, once
//! calls have written again for [`SETTLE`] with no failure between.
//!
//! The wait is because a full disk still takes a small write now and then
//! (one that fits in pages already there): ending the outage at the first
//! write made a flap of ERROR, "recovered", ERROR within milliseconds.
//!
//! Every caller still gets its own error; this only decides what is
//! logged, so that forty jobs in flight on a full disk make one line, not
//! forty. A call that fails for its own reasons (a refusal, a bad row) is
//! not an outage and is left to its caller.

use super::StoreError;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long writes must go on succeeding, with no failure, before an
/// outage is over.
pub const SETTLE: Duration = Duration::from_secs(1);

/// An outage in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failing {
    /// Calls failed since it began.
    calls: u64,
    /// When the writes succeeding since the last failure began, if they have.
    writing_since: Option<Instant>,
}

/// Shared by every clone of a [`super::Store`].
#[derive(Debug)]
pub(super) struct Outage {
    db: PathBuf,
    /// `None` while storage works.
    failed: Mutex<Option<Failing>>,
}

impl Outage {
    pub fn new(db: PathBuf) -> Outage {
        Outage {
            db,
            failed: Mutex::new(None),
        }
    }

    /// Notes how a call ended: `wrote` says whether it changed any row,
    /// which is what shows that storage works again (reads go on working
    /// while a disk is full).
    pub fn observe<T>(&self, result: &Result<T, StoreError>, wrote: bool) {
        self.observe_at(result, wrote, Instant::now());
    }

    fn failing(&self, e: &StoreError) {
        tracing::error!(
            db = %self.db.display(),
            error = %e,
            "storage is failing: calls that write fail until it recovers"
        );
    }

    fn recovered(&self, calls: u64) {
        tracing::info!(
            db = %self.db.display(),
            failed_calls = calls,
            "storage recovered"
        );
    }

    fn observe_at<T>(&self, result: &Result<T, StoreError>, wrote: bool, now: Instant) {
        let mut failed = match self.failed.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match (result, failed.as_mut()) {
            (Err(e), None) if e.is_unavailable() => {
                *failed = Some(Failing {
                    calls: 1,
                    writing_since: None,
                });
                self.failing(e);
            }
            // Writes had gone on working for SETTLE, but none came after to
            // end the outage: that one is over, and this is a new one.
            (Err(e), Some(f))
                if e.is_unavailable()
                    && f.writing_since
                        .is_some_and(|since| now.duration_since(since) >= SETTLE) =>
            {
                self.recovered(f.calls);
                *f = Failing {
                    calls: 1,
                    writing_since: None,
                };
                self.failing(e);
            }
            (Err(e), Some(f)) if e.is_unavailable() => {
                f.calls += 1;
                f.writing_since = None;
                tracing::debug!(error = %e, failed_calls = f.calls, "storage is still failing");
            }
            (Ok(_), Some(f)) if wrote => match f.writing_since {
                None => f.writing_since = Some(now),
                Some(since) if now.duration_since(since) >= SETTLE => {
                    self.recovered(f.calls);
                    *failed = None;
                }
                Some(_) => {}
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Result<(), StoreError> {
        Err(StoreError::Unavailable {
            during: "testing",
            detail: "the disk is full".into(),
        })
    }

    #[test]
    fn an_outage_is_counted_until_calls_write_again_for_a_while() {
        let outage = Outage::new("q.db".into());
        let count = || outage.failed.lock().expect("lock").map(|f| f.calls);
        let t0 = Instant::now();
        outage.observe_at(&full(), false, t0);
        outage.observe_at(&full(), false, t0);
        outage.observe_at(&Ok(()), false, t0);
        assert_eq!(count(), Some(2), "a read does not end the outage");
        let refused: Result<(), StoreError> = Err(StoreError::Closed);
        outage.observe_at(&refused, false, t0);
        assert_eq!(count(), Some(2), "only storage failures are counted");
        outage.observe_at(&Ok(()), true, t0);
        outage.observe_at(&Ok(()), true, t0 + SETTLE);
        assert_eq!(count(), None);
    }

    #[test]
    fn disk_full_flap_one_write_that_fits_does_not_end_the_outage() {
        let outage = Outage::new("q.db".into());
        let count = || outage.failed.lock().expect("lock").map(|f| f.calls);
        let t0 = Instant::now();
        outage.observe_at(&full(), false, t0);
        // A small write fits while the disk is still full, then writes fail.
        outage.observe_at(&Ok(()), true, t0);
        assert_eq!(count(), Some(1), "one write ended the outage");
        let later = t0 + Duration::from_millis(2);
        outage.observe_at(&full(), false, later);
        assert_eq!(count(), Some(2), "the same outage goes on");
        // Writes that succeed again start the wait anew.
        outage.observe_at(&Ok(()), true, later + SETTLE / 2);
        outage.observe_at(&Ok(()), true, later + SETTLE);
        assert_eq!(count(), Some(2), "the wait began at the last failure's end");
        outage.observe_at(&Ok(()), true, later + SETTLE / 2 + SETTLE);
        assert_eq!(count(), None);
    }

    /// A short burst of writes after the disk was freed, then nothing, left
    /// the outage open for ever; the next failure, much later, was then
    /// counted in silence instead of logged as a new outage.
    #[test]
    fn a_failure_long_after_writes_worked_again_is_a_new_outage() {
        let outage = Outage::new("q.db".into());
        let count = || outage.failed.lock().expect("lock").map(|f| f.calls);
        let t0 = Instant::now();
        outage.observe_at(&full(), false, t0);
        outage.observe_at(&full(), false, t0);
        outage.observe_at(&Ok(()), true, t0 + SETTLE / 4);
        assert_eq!(count(), Some(2), "not yet settled");
        outage.observe_at(&full(), false, t0 + SETTLE * 60);
        assert_eq!(
            count(),
            Some(1),
            "a new outage, counted from its first call"
        );
    }
}
