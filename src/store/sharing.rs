//! What the dispatcher asks of the queue as a whole before it claims: the
//! pauses that every node sharing a PostgreSQL queue honours, and the
//! share of `dispatch.rate_limit` left for all of them (see
//! `postgres::shared`). A SQLite queue has one daemon, whose own gate
//! decides both, so these calls cost it nothing.

use super::{Backend, Store, StoreError};
use crate::config::RateLimit;
use crate::time::Millis;
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
    /// When it ends, by the wall clock of the node that set it.
    pub until: Millis,
    /// The node that set it.
    pub node: String,
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
    /// Up to `wanted` sends that the queue as a whole allows at `now`
    /// under `rate`: all of them on SQLite.
    pub async fn allowance(
        &self,
        wanted: usize,
        rate: Option<RateLimit>,
        now: Millis,
    ) -> Result<Allowance, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Allowance::all(wanted)),
            Backend::Postgres(q) => {
                let _timed = crate::metrics::store_call("allowance");
                self.observed(q.allowance(wanted, rate, now).await)
            }
        }
    }

    /// Puts a pause this node's gate entered in force for every node
    /// (nothing on SQLite). `reason` says why, for the operator reading
    /// the table.
    pub async fn share_pause(&self, kind: PauseKind, until: Millis, reason: &str) {
        let Backend::Postgres(q) = &self.backend else {
            return;
        };
        let pause = SharedPause {
            kind,
            until,
            node: self.node.to_string(),
        };
        if let Err(e) = self.observed(q.share_pause(&pause, reason).await) {
            tracing::warn!(
                error = %e,
                "cannot share this pause with the other nodes; they find out from Coax"
            );
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
