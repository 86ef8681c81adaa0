//! Carrying out the `schedule_*` ops for the socket server: checking a put,
//! storing it, waking the task, and the answers.
//!
//! ```text
//! schedule_put    → {"ok":true,"schedule":VIEW,"created":B}
//! schedule_get    → {"ok":true,"schedule":VIEW}        (not_found when absent)
//! schedule_list   → {"ok":true,"schedules":[VIEW,...],"next":NAME|null}
//! schedule_delete → {"ok":true,"deleted":B}
//! ```

use super::wire::{self, ScheduleOp};
use super::{Row, Stored, check};
use crate::job::Rules;
use crate::protocol::{ErrorBody, ErrorCode, ok_line, quoted};
use crate::store::{Store, StoreError};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::Notify;

/// The most schedules one `schedule_list` answer holds.
const LIST_PAGE: usize = 100;

fn internal(e: &StoreError) -> ErrorBody {
    tracing::debug!(error = %e, "request failed in the store");
    ErrorBody::new(ErrorCode::Internal, e.to_string())
}

fn not_found(name: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::NotFound,
        format!("no schedule named {}", quoted(name)),
    )
}

/// Carries out `op` and returns its answer line.
pub async fn answer(
    store: &Store,
    rules: &Rules,
    wake: &Arc<Notify>,
    op: ScheduleOp,
) -> Result<String, ErrorBody> {
    match op {
        ScheduleOp::Put(put) => {
            let rules = Rules {
                calendar: store.calendar(),
                ..rules.clone()
            };
            let (schedule, first) = check(put, store.now(), &rules).map_err(|r| ErrorBody {
                code: if r.invalid_job {
                    ErrorCode::InvalidJob
                } else {
                    ErrorCode::BadRequest
                },
                message: r.message,
                field: Some(r.field),
                index: None,
            })?;
            let created = store
                .put_schedule(schedule.clone(), first)
                .await
                .map_err(|e| internal(&e))?;
            wake.notify_one();
            tracing::info!(
                schedule = schedule.name,
                cron = schedule.cron,
                timezone = schedule.timezone,
                catch_up = schedule.catch_up.as_str(),
                next_at = %crate::time::format(first),
                created,
                "schedule {}",
                if created { "created" } else { "replaced" }
            );
            let name = schedule.name.clone();
            let (row, recent) = store
                .get_schedule(name.clone())
                .await
                .map_err(|e| internal(&e))?
                .unwrap_or_else(|| {
                    // Deleted between the two calls: show what was put.
                    (
                        Row::Readable(Stored {
                            schedule,
                            next_at: Some(first),
                            revision: 0,
                        }),
                        Vec::new(),
                    )
                });
            Ok(ok_line(json!({
                "schedule": wire::view(&row, &recent),
                "created": created,
            })))
        }
        ScheduleOp::Get { name } => {
            let (row, recent) = store
                .get_schedule(name.clone())
                .await
                .map_err(|e| internal(&e))?
                .ok_or_else(|| not_found(&name))?;
            Ok(ok_line(json!({"schedule": wire::view(&row, &recent)})))
        }
        ScheduleOp::List { after } => {
            // A page: at most LIST_PAGE schedules, and no more than fit in
            // one answer line (a template may be 64 KiB); `next` names the
            // last one shown while more may follow.
            let page = store
                .list_schedules(after, LIST_PAGE)
                .await
                .map_err(|e| internal(&e))?;
            let full = page.len() == LIST_PAGE;
            let mut views = Vec::with_capacity(page.len());
            let mut bytes = 0;
            let mut last = None;
            let mut cut = false;
            for (row, recent) in &page {
                let view = wire::view(row, recent);
                let size = view.to_string().len() + 1;
                if bytes + size > crate::protocol::MAX_ANSWER_BYTES - 1024 && !views.is_empty() {
                    cut = true;
                    break;
                }
                bytes += size;
                last = Some(row.name().to_owned());
                views.push(view);
            }
            let next = if cut || full { last } else { None };
            Ok(ok_line(json!({"schedules": views, "next": next})))
        }
        ScheduleOp::Delete { name } => {
            let deleted = store
                .delete_schedule(name.clone())
                .await
                .map_err(|e| internal(&e))?;
            wake.notify_one();
            tracing::info!(
                schedule = name,
                deleted,
                "schedule deleted; the jobs it created stay"
            );
            Ok(ok_line(json!({"deleted": deleted})))
        }
    }
}
