//! What the nodes sharing a queue share besides the jobs: the pauses every
//! node honours, and `dispatch.rate_limit` as a limit on their sum.
//!
//! A 429 or a rejected key seen by one node is written to `pauses` (kind
//! `rate_limit` or `auth`, until when, by which node) in the transaction
//! that gives its job back ([`put_pause`], called by the finish), so that no node claims it into the pause. Each node
//! reads `pauses` before it claims ([`Queue::allowance`]) and pauses its
//! own gate for what is left, never longer than its own
//! `dispatch.max_pause`. The pause's end is written and read by the
//! database's clock, so the nodes' own clocks (which may disagree, or
//! step) play no part.
//!
//! The rate limit is one token bucket in `meta` (`rate_tokens_milli`,
//! `rate_at`), timed by the database's clock and taken under an advisory
//! lock, so that the nodes' sends together keep to the limit plus its
//! burst (one second's worth, as each node's own bucket).

use super::pool::Tx;
use super::queue::Queue;
use super::{StoreError, pg_error};
use crate::config::RateLimit;
use crate::store::{Allowance, PauseKind, SharedPause};
use std::time::Duration;

/// The advisory lock key taken while the shared bucket is read and spent.
const RATE_LOCK: i64 = 0x436f_6178_0000_0005;

/// The database's clock in milliseconds since the epoch: every node reads
/// a shared pause's end and the bucket's time by it, so neither a node's
/// clock step nor clocks that disagree stretch or cut a pause.
pub(super) const DB_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Puts a pause of `kind` lasting `left` in force for every node, in `tx`,
/// unless one of its kind ends later already.
pub(super) async fn put_pause(
    tx: &Tx<'_>,
    (kind, left, reason): (PauseKind, Duration, &str),
    node: &str,
) -> Result<(), StoreError> {
    let left = i64::try_from(left.as_millis()).unwrap_or(i64::MAX / 4);
    tx.execute(
        &format!(
            "INSERT INTO pauses (kind, until_at, reason, node) VALUES ($1, {DB_NOW} + $2, $3, $4)
             ON CONFLICT (kind) DO UPDATE
             SET until_at = excluded.until_at, reason = excluded.reason, node = excluded.node
             WHERE pauses.until_at < excluded.until_at"
        ),
        &[
            &kind.as_str(),
            &left,
            &super::group_finish::stored_text(reason),
            &node,
        ],
    )
    .await
    .map_err(pg_error("sharing a pause with the other nodes"))?;
    Ok(())
}

impl PauseKind {
    fn as_str(self) -> &'static str {
        match self {
            PauseKind::RateLimit => "rate_limit",
            PauseKind::Auth => "auth",
        }
    }
}

impl Queue {
    /// Up to `wanted` sends that the queue as a whole allows now: none
    /// while a pause another node shared is in force (which is returned),
    /// else as many as the shared bucket holds under `rate`. This node's
    /// own pauses are its gate's to keep: a `resume` here ends them even
    /// if the finish that shared one commits after it.
    ///
    /// A pause lasting longer than `longest` (more than any node writes: a
    /// hand edit, or a clock far off) is cut to end `longest` from now, in
    /// the table, so that it cannot pause the nodes again and again.
    pub async fn allowance(
        &self,
        wanted: usize,
        rate: Option<RateLimit>,
        longest: Duration,
    ) -> Result<Allowance, StoreError> {
        let during = "reading the shared pauses and rate limit";
        let mut client = self.pool.get().await?;
        let tx = client.begin().await.map_err(pg_error(during))?;
        let paused = tx
            .query_opt(
                &format!(
                    "SELECT kind, until_at - {DB_NOW}, coalesce(node, '') FROM pauses
                     WHERE until_at > {DB_NOW} AND node IS DISTINCT FROM $1
                     ORDER BY kind = 'auth' DESC, until_at DESC LIMIT 1"
                ),
                &[&&*self.node],
            )
            .await
            .map_err(pg_error(during))?;
        if let Some(row) = paused {
            let kind: String = row.get(0);
            let shared = if kind == "auth" {
                PauseKind::Auth
            } else {
                PauseKind::RateLimit
            };
            let mut left: i64 = row.get(1);
            let most = i64::try_from(longest.as_millis()).unwrap_or(i64::MAX / 4);
            if left > most {
                tx.execute(
                    &format!(
                        "UPDATE pauses SET until_at = {DB_NOW} + $2
                         WHERE kind = $1 AND until_at > {DB_NOW} + $2"
                    ),
                    &[&kind, &most],
                )
                .await
                .map_err(pg_error(during))?;
                tx.commit().await.map_err(pg_error(during))?;
                tracing::warn!(
                    kind = %kind,
                    "a shared pause ended beyond dispatch.max_pause; it now ends at it"
                );
                left = most;
            }
            return Ok(Allowance {
                count: 0,
                pause: Some(SharedPause {
                    kind: shared,
                    left: Duration::from_millis(u64::try_from(left).unwrap_or(0)),
                    node: row.get(2),
                }),
                retry_in: None,
            });
        }
        let Some(rate) = rate else {
            return Ok(Allowance::all(wanted));
        };
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RATE_LOCK])
            .await
            .map_err(pg_error(during))?;
        let row = tx
            .query_one(
                &format!(
                    "SELECT {DB_NOW},
                        (SELECT value FROM meta WHERE name = 'rate_tokens_milli'),
                        (SELECT value FROM meta WHERE name = 'rate_at')"
                ),
                &[],
            )
            .await
            .map_err(pg_error(during))?;
        let db_now: i64 = row.get(0);
        let per_ms = rate.per_second() / 1000.0;
        // A burst of one second's worth, and at least one send.
        let capacity = rate.per_second().max(1.0);
        let tokens = match (row.get::<_, Option<i64>>(1), row.get::<_, Option<i64>>(2)) {
            (Some(milli), Some(at)) => {
                let elapsed = db_now.saturating_sub(at).max(0) as f64;
                // The bucket never holds less than nothing: a negative
                // value is a hand edit, which must not stop every node.
                ((milli as f64 / 1000.0).max(0.0) + elapsed * per_ms).min(capacity)
            }
            _ => capacity,
        };
        let count = wanted.min(tokens.floor().max(0.0) as usize);
        let left = tokens - count as f64;
        let retry_in = (count < wanted).then(|| {
            let missing = (1.0 - left).max(0.0);
            Duration::from_millis((missing / per_ms).ceil().max(1.0) as u64)
        });
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('rate_tokens_milli', $1), ('rate_at', $2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            &[&((left * 1000.0).floor() as i64), &db_now],
        )
        .await
        .map_err(pg_error(during))?;
        tx.commit().await.map_err(pg_error(during))?;
        Ok(Allowance {
            count,
            pause: None,
            retry_in,
        })
    }

    /// Ends the shared pauses of `kinds` for every node.
    pub async fn clear_pauses(&self, kinds: &[PauseKind]) -> Result<u64, StoreError> {
        let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM pauses WHERE kind = ANY($1)", &[&kinds])
            .await
            .map_err(pg_error("ending the shared pauses"))
    }
}
