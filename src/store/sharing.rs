//! What the dispatcher asks of the queue as a whole before it claims: the
//! pauses that every node sharing a PostgreSQL queue honours, and the
//! share of `dispatch.rate_limit` left for all of them (see
//! `postgres::shared`). A SQLite queue has one daemon, whose own gate
//! decides both, so these calls cost it nothing.

use super::{Backend, Store, StoreError};
use crate::config::RateLimit;
use crate::time::Mono;
use std::time::Duration;

/// Which pause a node shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseKind {
    /// Coax answered 429.
    RateLimit,
    /// Coax rejected the API key.
    Auth,
}

/// A pause in force for every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPause {
    pub kind: PauseKind,
    /// How long it has left, by the database's clock.
    pub left: Duration,
    /// The node that set it.
    pub node: String,
}

/// A pause this node's gate entered on an attempt's answer, to be put in
/// force for every node in the transaction that records the attempt (see
/// [`Store::finish_sharing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseShare {
    pub kind: PauseKind,
    /// When it ends, on this node's monotonic clock.
    pub until: Mono,
    /// Why, for an operator reading the table.
    pub reason: &'static str,
}

/// What [`Store::allowance`] allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    /// Sends that may start now.
    pub count: usize,
    /// The shared pause in force, if any (`count` is then 0).
    pub pause: Option<SharedPause>,
    /// When to ask again, if fewer than wanted were allowed for the rate.
    pub retry_in: Option<Duration>,
}

impl Allowance {
    /// Everything asked for.
    pub fn all(wanted: usize) -> Allowance {
        Allowance {
            count: wanted,
            pause: None,
            retry_in: None,
        }
    }
}

impl Store {
    /// Up to `wanted` sends that the queue as a whole allows now under
    /// `rate`: all of them on SQLite. A shared pause lasts at most
    /// `longest`.
    pub async fn allowance(
        &self,
        wanted: usize,
        rate: Option<RateLimit>,
        longest: Duration,
    ) -> Result<Allowance, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Allowance::all(wanted)),
            Backend::Postgres(q) => {
                let _timed = crate::metrics::store_call("allowance");
                self.observed(q.allowance(wanted, rate, longest).await)
            }
        }
    }

    /// Records how an attempt ended, as [`Store::finish`] does, and in
    /// the same transaction puts `share` in force for every node sharing
    /// the queue (nothing more on SQLite): no node can claim the job given
    /// back before it hears of the pause.
    pub async fn finish_sharing(
        &self,
        finish: super::Finish,
        share: Option<PauseShare>,
    ) -> Result<(), StoreError> {
        match (&self.backend, share) {
            (Backend::Postgres(q), Some(share)) => {
                let _timed = crate::metrics::store_call("finish");
                let left = self.clock.mono().until(share.until);
                let pause = (share.kind, left, share.reason);
                self.observed(q.finish(self.calendar.get(), finish, Some(pause)).await)
            }
            _ => self.finish(finish).await,
        }
    }

    /// Ends the shared pauses of `kinds` (nothing on SQLite); how many.
    pub async fn clear_pauses(&self, kinds: &[PauseKind]) -> u64 {
        let Backend::Postgres(q) = &self.backend else {
            return 0;
        };
        match self.observed(q.clear_pauses(kinds).await) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot end the pause shared with the other nodes");
                0
            }
        }
    }
}
