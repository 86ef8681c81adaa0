//! Send windows on PostgreSQL: settling a job's due time against its
//! window, as [`super::super::deferral`] on SQLite, with the same answers
//! and log lines. Also what settling reads of a job ([`Due`]) and how a
//! row that cannot be read is set aside ([`set_aside`]), as SQLite's
//! quarantine does.

use super::pg_error;
use super::pool::Tx;
use crate::job::{Kind, State, is_channel, is_enquiry_id};
use crate::store::StoreError;
use crate::store::deferral::{Change, Report, Settled, Timing, judge};
use crate::store::view::{MAX_TEXT_BYTES, bounded};
use crate::time::Millis;
use crate::window::Calendar;
use tokio_postgres::Row;

/// Settles job `t.id`'s `due_at` against its window at `now`, or expires
/// or holds it, as SQLite's `deferral::settle`: one [`judge`] for both.
pub(super) async fn settle(
    tx: &Tx<'_>,
    calendar: &Calendar,
    t: &Timing<'_>,
    now: Millis,
    report: Report,
) -> Result<Settled, StoreError> {
    let verdict = judge(calendar, t, now, report);
    match &verdict.change {
        Change::Keep => {}
        Change::SetDue(due_at) => set_due(tx, t.id, *due_at).await?,
        Change::Expire(reason) => expire(tx, t.id, reason, now).await?,
        Change::Hold(reason) => hold(tx, t.id, reason, now).await?,
    }
    if let Some(note) = verdict.note {
        note();
    }
    Ok(verdict.settled)
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
