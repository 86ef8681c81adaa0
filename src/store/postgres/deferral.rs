//! Send windows on PostgreSQL: settling a job's due time against its
//! window, as [`super::super::deferral`] on SQLite, with the same answers
//! and log lines. Also what settling reads of a job ([`Due`]) and how a
//! row that cannot be read is set aside ([`set_aside`]), as SQLite's
//! quarantine does.

use super::pg_error;
use super::pool::Tx;
use crate::job::{Kind, State, is_channel, is_enquiry_id};
use crate::store::StoreError;
use crate::store::deferral::{Report, Settled, Timing};
use crate::store::view::{MAX_TEXT_BYTES, bounded};
use crate::time::{self, Millis};
use crate::window::{Calendar, HORIZON_DAYS, Plan};
use tokio_postgres::Row;

/// The search horizon for an opening, in milliseconds.
const HORIZON_MS: Millis = HORIZON_DAYS * 86_400_000;

/// Sets job `t.id`'s `due_at` from its window, judged at `now` (or
/// expires or holds it), as SQLite's `deferral::settle`: a deferral is
/// logged once, when `due_at` moves.
pub(super) async fn settle(
    tx: &Tx<'_>,
    calendar: &Calendar,
    t: &Timing<'_>,
    now: Millis,
    report: Report,
) -> Result<Settled, StoreError> {
    let rule = match calendar.rule(t.timezone, t.window, t.kind) {
        Ok(rule) => rule,
        Err(e) => {
            let reason = format!("held: {e}; requeue it once the config has it, or cancel it");
            hold(tx, t.id, &reason, now).await?;
            return Ok(Settled::Held);
        }
    };
    match rule.plan(t.id, t.scheduled_at, now) {
        Plan::Due
            if report == Report::Bulk
                && t.due_at > t.scheduled_at
                && t.due_at > now
                && t.due_at - now <= rule.spread_ms()
                && rule.is_open(t.due_at) =>
        {
            Ok(Settled::Deferred(t.due_at))
        }
        Plan::Due => {
            if t.due_at != t.scheduled_at {
                set_due(tx, t.id, t.scheduled_at).await?;
            }
            Ok(Settled::Due)
        }
        Plan::Deferred { opening, due_at } => {
            if let Some(expiry) = t.expires_at.filter(|e| opening >= *e) {
                let reason = format!(
                    "expired: window {} in {} next opens at {}, at or after its expiry {}",
                    rule.window_name(),
                    rule.zone_name(),
                    time::format(opening),
                    time::format(expiry)
                );
                expire(tx, t.id, &reason, now).await?;
                tracing::info!(
                    job_id = t.id,
                    timezone = rule.zone_name(),
                    window = rule.window_name(),
                    opening = %time::format(opening),
                    expires_at = %time::format(expiry),
                    "expired: its window opens only at or after its expiry"
                );
                return Ok(Settled::Expired);
            }
            // The spread must not carry a job past its expiry.
            let due_at = match t.expires_at {
                Some(expiry) if due_at >= expiry => opening,
                _ => due_at,
            };
            if due_at != t.due_at {
                set_due(tx, t.id, due_at).await?;
                macro_rules! deferred {
                    ($level:ident) => {
                        tracing::$level!(
                            job_id = t.id,
                            timezone = rule.zone_name(),
                            window = rule.window_name(),
                            opening = %time::format(opening),
                            due_at = %time::format(due_at),
                            "deferred to its window's next opening"
                        )
                    };
                }
                match report {
                    Report::Each => deferred!(info),
                    Report::Bulk => deferred!(debug),
                }
            }
            Ok(Settled::Deferred(due_at))
        }
        Plan::Never => {
            // Not open within the horizon: surely not before an expiry
            // that comes sooner.
            let horizon = t.scheduled_at.max(now).saturating_add(HORIZON_MS);
            if let Some(expiry) = t.expires_at.filter(|e| *e <= horizon) {
                let reason = format!(
                    "expired: window {} in {} does not open again before its expiry {}",
                    rule.window_name(),
                    rule.zone_name(),
                    time::format(expiry)
                );
                expire(tx, t.id, &reason, now).await?;
                return Ok(Settled::Expired);
            }
            let reason = format!(
                "held: window {} in {} does not open again within ten years (its holidays \
                 keep it shut); requeue it once it does, or cancel it",
                rule.window_name(),
                rule.zone_name()
            );
            hold(tx, t.id, &reason, now).await?;
            Ok(Settled::Held)
        }
    }
}

async fn set_due(tx: &Tx<'_>, id: i64, due_at: Millis) -> Result<(), StoreError> {
    tx.execute("UPDATE jobs SET due_at = $2 WHERE id = $1", &[&id, &due_at])
        .await
        .map_err(pg_error("setting a job's due time"))?;
    Ok(())
}

/// Moves job `id` to `expired` with `reason`, and cancels its waiting
/// followers with it: every path that expires a job comes here.
pub(super) async fn expire(
    tx: &Tx<'_>,
    id: i64,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE jobs SET state = 'expired', last_error = $2, updated_at = $3 WHERE id = $1",
        &[&id, &reason, &now],
    )
    .await
    .map_err(pg_error("expiring a job"))?;
    super::chain::cancel_descendants(tx, id, State::Expired, now).await?;
    Ok(())
}

async fn hold(tx: &Tx<'_>, id: i64, reason: &str, now: Millis) -> Result<(), StoreError> {
    tracing::warn!(job_id = id, reason, "held a job its window cannot place");
    tx.execute(
        "UPDATE jobs SET state = 'held', last_error = $2, updated_at = $3 WHERE id = $1",
        &[&id, &reason, &now],
    )
    .await
    .map_err(pg_error("holding a job"))?;
    Ok(())
}

/// What settling (and the follow-ups' release) reads of a scheduled or
/// waiting job.
#[derive(Debug, Clone)]
pub(super) struct Due {
    pub id: i64,
    pub kind: Kind,
    pub timezone: Option<String>,
    pub window: Option<String>,
    pub scheduled_at: Millis,
    pub expires_at: Option<Millis>,
    pub due_at: Millis,
}

impl Due {
    pub(super) fn timing(&self) -> Timing<'_> {
        Timing {
            id: self.id,
            kind: self.kind,
            timezone: self.timezone.as_deref(),
            window: self.window.as_deref(),
            scheduled_at: self.scheduled_at,
            expires_at: self.expires_at,
            due_at: self.due_at,
        }
    }
}

/// The columns [`read_due`] expects, in order (qualified by `j.` where a
/// query joins).
pub(super) const DUE_COLUMNS: &str = "j.id, j.kind, j.timezone, j.send_window, j.scheduled_at, \
     j.expires_at, j.due_at, j.channel, j.enquiry_id, j.attempts, j.payload";

/// Reads a row of [`DUE_COLUMNS`]: the job, or its id and why it cannot
/// be sent. Columns are typed on PostgreSQL, so only what a hand edit can
/// still break is checked, as SQLite's quarantine checks it: the kind, the
/// channel and enquiry id (path segments), the attempts and the payload.
pub(super) fn read_due(r: &Row) -> Result<Result<Due, (i64, String)>, tokio_postgres::Error> {
    let id: i64 = r.try_get(0)?;
    let kind: String = r.try_get(1)?;
    let channel: String = r.try_get(7)?;
    let enquiry: Option<String> = r.try_get(8)?;
    let attempts: i64 = r.try_get(9)?;
    let payload: String = r.try_get(10)?;
    let checked = (|| {
        let kind = Kind::parse(&kind).ok_or_else(|| format!("kind {kind:?} is not a job kind"))?;
        if !is_channel(&channel) {
            return Err(format!(
                "channel {:?} is not a channel",
                bounded(channel.clone(), 100)
            ));
        }
        if let Some(enquiry) = enquiry.as_ref().filter(|e| !is_enquiry_id(e)) {
            return Err(format!(
                "enquiry_id {:?} is not an enquiry id",
                bounded(enquiry.clone(), 100)
            ));
        }
        if u32::try_from(attempts).is_err() {
            return Err(format!("attempts is {attempts}"));
        }
        match serde_json::from_str::<serde_json::Value>(&payload) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return Err("payload is not a JSON object".to_owned()),
            Err(e) => return Err(format!("payload is not JSON ({e})")),
        }
        Ok(kind)
    })();
    let kind = match checked {
        Ok(kind) => kind,
        Err(why) => return Ok(Err((id, why))),
    };
    Ok(Ok(Due {
        id,
        kind,
        timezone: r.try_get(2)?,
        window: r.try_get(3)?,
        scheduled_at: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        due_at: r.try_get(6)?,
    }))
}

/// Moves job `id` to `failed`, naming what is wrong with its row, and
/// cancels its waiting followers, as SQLite's quarantine does.
pub(super) async fn set_aside(
    tx: &Tx<'_>,
    id: i64,
    reason: &str,
    now: Millis,
) -> Result<(), StoreError> {
    let last_error = bounded(
        format!("quarantined: its row cannot be read ({reason})"),
        MAX_TEXT_BYTES,
    );
    tx.execute(
        "UPDATE jobs SET state = 'failed', last_error = $2, updated_at = $3 WHERE id = $1",
        &[&id, &last_error, &now],
    )
    .await
    .map_err(pg_error("quarantining an unreadable job"))?;
    super::chain::cancel_descendants(tx, id, State::Failed, now).await?;
    tracing::error!(
        job_id = id,
        reason,
        "a job's row cannot be read (was the database edited by hand?); moved to failed"
    );
    Ok(())
}

/// Settles scheduled job `id` against its window, its `scheduled_at`
/// taken as `at` when given (as SQLite's `delivery::settle_row`); `None`
/// when it is not scheduled or was set aside.
pub(super) async fn settle_row(
    tx: &Tx<'_>,
    calendar: &Calendar,
    id: i64,
    at: Option<Millis>,
    now: Millis,
) -> Result<Option<Settled>, StoreError> {
    let during = "reading a job's window";
    let row = tx
        .query_opt(
            &format!("SELECT {DUE_COLUMNS} FROM jobs j WHERE j.id = $1 AND j.state = 'scheduled'"),
            &[&id],
        )
        .await
        .map_err(pg_error(during))?;
    let Some(row) = row else {
        return Ok(None);
    };
    match read_due(&row).map_err(pg_error(during))? {
        Err((id, why)) => {
            set_aside(tx, id, &why, now).await?;
            Ok(None)
        }
        Ok(mut job) => {
            if let Some(at) = at {
                job.scheduled_at = at;
            }
            settle(tx, calendar, &job.timing(), now, Report::Each)
                .await
                .map(Some)
        }
    }
}
