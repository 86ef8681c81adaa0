//! Storage outages as the operator hears of them: one ERROR line when
//! storage starts failing (a full disk, an I/O error, a read-only or locked
//! file), and one INFO line, with the number of calls that failed, when a
//! call writes again.
//!
//! Every caller still gets its own error; this only decides what is
//! logged, so that forty jobs in flight on a full disk make one line, not
//! forty. A call that fails for its own reasons (a refusal, a bad row) is
//! not an outage and is left to its caller.

use super::StoreError;
use std::path::PathBuf;
use std::sync::Mutex;

/// Shared by every clone of a [`super::Store`].
#[derive(Debug)]
pub(super) struct Outage {
    db: PathBuf,
    /// Calls failed since the outage began; `None` while storage works.
    failed: Mutex<Option<u64>>,
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
        let mut failed = match self.failed.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match (result, failed.as_mut()) {
            (Err(e), None) if e.is_unavailable() => {
                *failed = Some(1);
                tracing::error!(
                    db = %self.db.display(),
                    error = %e,
                    "storage is failing: calls that write fail until it recovers"
                );
            }
            (Err(e), Some(n)) if e.is_unavailable() => {
                *n += 1;
                tracing::debug!(error = %e, failed_calls = *n, "storage is still failing");
            }
            (Ok(_), Some(n)) if wrote => {
                tracing::info!(
                    db = %self.db.display(),
                    failed_calls = *n,
                    "storage recovered"
                );
                *failed = None;
            }
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
    fn an_outage_is_counted_until_a_call_writes_again() {
        let outage = Outage::new("q.db".into());
        let count = || *outage.failed.lock().expect("lock");
        outage.observe(&full(), false);
        outage.observe(&full(), false);
        outage.observe(&Ok(()), false);
        assert_eq!(count(), Some(2), "a read does not end the outage");
        let refused: Result<(), StoreError> = Err(StoreError::Closed);
        outage.observe(&refused, false);
        assert_eq!(count(), Some(2), "only storage failures are counted");
        outage.observe(&Ok(()), true);
        assert_eq!(count(), None);
    }
}
