//! Recurring sends in SQLite: the `schedules` table (schema version 8),
//! one row per schedule with its next occurrence, and creating an
//! occurrence's job together with moving that next occurrence on, in one
//! call and so one transaction.
//!
//! What a schedule is and when it fires is [`crate::schedule`]'s; this
//! module only keeps and reads them. A schedule's recent occurrences are
//! its tag's newest jobs, found through `job_tags` with one seek.

use super::{Store, StoreError, queries};
use crate::job::NewJob;
use crate::protocol::Enqueued;
use crate::schedule::wire::Occurrence;
use crate::schedule::{CatchUp, Schedule, Stored};
use crate::time::Millis;
use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde_json::Value;

/// How many recent occurrences a schedule's view shows.
pub const RECENT: usize = 10;

const COLUMNS: &str = "name, cron, timezone, catch_up, job, next_at, revision";

/// A row as stored; a row edited into nonsense by hand reads as its name
/// and what is wrong with it.
fn read(row: &Row<'_>) -> rusqlite::Result<Result<Stored, (String, String)>> {
    let name: String = row.get(0)?;
    let catch_up: String = row.get(3)?;
    let job: String = row.get(4)?;
    let Some(catch_up) = CatchUp::parse(&catch_up) else {
        return Ok(Err((
            name,
            format!("catch_up {catch_up:?} is not one we know"),
        )));
    };
    let job = match serde_json::from_str::<Value>(&job) {
        Ok(Value::Object(job)) => job,
        _ => return Ok(Err((name, "its job is not a JSON object".into()))),
    };
    Ok(Ok(Stored {
        schedule: Schedule {
            name,
            cron: row.get(1)?,
            timezone: row.get(2)?,
            catch_up,
            job,
        },
        next_at: row.get(5)?,
        revision: row.get(6)?,
    }))
}

/// Rows that cannot be read are left in place and logged, not served.
fn readable(rows: Vec<Result<Stored, (String, String)>>) -> Vec<Stored> {
    rows.into_iter()
        .filter_map(|r| {
            r.map_err(|(name, why)| {
                tracing::warn!(schedule = name, why, "a schedule's row cannot be read; it is left alone (was the database edited by hand?)");
            })
            .ok()
        })
        .collect()
}

fn put(conn: &Connection, s: &Schedule, next_at: Millis, now: Millis) -> Result<bool, StoreError> {
    let err = StoreError::sqlite("putting a schedule");
    let existed: bool = conn
        .prepare_cached("SELECT 1 FROM schedules WHERE name = ?1")
        .and_then(|mut st| st.exists([&s.name]))
        .map_err(err)?;
    conn.prepare_cached(
        "INSERT INTO schedules (name, cron, timezone, catch_up, job, next_at, revision, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?7)
         ON CONFLICT (name) DO UPDATE SET cron = ?2, timezone = ?3, catch_up = ?4, job = ?5,
             next_at = ?6, revision = revision + 1, updated_at = ?7",
    )
    .and_then(|mut st| {
        st.execute(params![
            s.name,
            s.cron,
            s.timezone,
            s.catch_up.as_str(),
            Value::Object(s.job.clone()).to_string(),
            next_at,
            now
        ])
    })
    .map_err(StoreError::sqlite("putting a schedule"))?;
    Ok(!existed)
}

fn recent(conn: &Connection, name: &str) -> Result<Vec<Occurrence>, StoreError> {
    // Occurrences are created in time order, so the newest job ids are the
    // newest occurrences; the (tag, job_id) key gives them without a sort.
    conn.prepare_cached(
        "SELECT j.id, j.state, j.scheduled_at FROM job_tags t CROSS JOIN jobs j ON j.id = t.job_id
         WHERE t.tag = ?1 ORDER BY t.job_id DESC LIMIT ?2",
    )
    .and_then(|mut st| {
        st.query_map(params![crate::schedule::tag(name), RECENT as i64], |r| {
            Ok(Occurrence {
                id: r.get(0)?,
                state: r.get(1)?,
                at: r.get(2)?,
            })
        })?
        .collect()
    })
    .map_err(StoreError::sqlite("reading a schedule's occurrences"))
}

fn select(conn: &Connection, filter: &str, arg: Option<&str>) -> Result<Vec<Stored>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM schedules {filter}");
    let rows = conn
        .prepare_cached(&sql)
        .and_then(|mut st| match arg {
            Some(a) => st
                .query_map([a], read)?
                .collect::<rusqlite::Result<Vec<_>>>(),
            None => st.query_map([], read)?.collect(),
        })
        .map_err(StoreError::sqlite("reading schedules"))?;
    Ok(readable(rows))
}

/// Moves `name`'s next occurrence from `was` to `next_at` and enqueues
/// `jobs`, if the schedule is still at revision `revision` and `was`;
/// `None` (and nothing written) when a put or a delete came first.
fn fire(
    conn: &Connection,
    calendar: &crate::window::Calendar,
    firing: &Firing,
    now: Millis,
) -> Result<Option<Vec<Enqueued>>, StoreError> {
    let moved = conn
        .prepare_cached(
            "UPDATE schedules SET next_at = ?4 WHERE name = ?1 AND revision = ?2 AND next_at IS ?3",
        )
        .and_then(|mut st| {
            st.execute(params![
                firing.name,
                firing.revision,
                firing.was,
                firing.next_at
            ])
        })
        .map_err(StoreError::sqlite("moving a schedule on"))?;
    if moved == 0 {
        return Ok(None);
    }
    queries::enqueue(conn, calendar, &firing.jobs, now).map(Some)
}

/// One schedule's due occurrences, to be created in one call.
#[derive(Debug, Clone)]
pub struct Firing {
    pub name: String,
    pub revision: i64,
    /// The next occurrence the plan started from, as read.
    pub was: Option<Millis>,
    pub next_at: Option<Millis>,
    pub jobs: Vec<NewJob>,
}

impl Store {
    /// Creates or replaces a schedule, its next occurrence `next_at`;
    /// whether it is new.
    pub async fn put_schedule(&self, s: Schedule, next_at: Millis) -> Result<bool, StoreError> {
        let _timed = crate::metrics::store_call("schedule_put");
        let now = self.now();
        self.call(move |c| put(c, &s, next_at, now)).await
    }

    /// A schedule and its recent occurrences, newest first.
    pub async fn get_schedule(
        &self,
        name: String,
    ) -> Result<Option<(Stored, Vec<Occurrence>)>, StoreError> {
        let _timed = crate::metrics::store_call("schedule_get");
        self.call(move |c| {
            let Some(stored) = select(c, "WHERE name = ?1", Some(&name))?.pop() else {
                return Ok(None);
            };
            let recent = recent(c, &name)?;
            Ok(Some((stored, recent)))
        })
        .await
    }

    /// Every schedule, by name, with its recent occurrences.
    /// Up to `limit` schedules named after `after`, in name order, each
    /// with its recent occurrences: one page of `schedule_list`.
    pub async fn list_schedules(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(Stored, Vec<Occurrence>)>, StoreError> {
        let _timed = crate::metrics::store_call("schedule_list");
        self.call(move |c| {
            let sql =
                format!("SELECT {COLUMNS} FROM schedules WHERE name > ?1 ORDER BY name LIMIT ?2");
            let rows = c
                .prepare_cached(&sql)
                .and_then(|mut st| {
                    st.query_map(params![after.unwrap_or_default(), limit as i64], read)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(StoreError::sqlite("reading schedules"))?;
            readable(rows)
                .into_iter()
                .map(|s| {
                    let recent = recent(c, &s.schedule.name)?;
                    Ok((s, recent))
                })
                .collect()
        })
        .await
    }

    /// Deletes a schedule (not the jobs it created); whether there was one.
    pub async fn delete_schedule(&self, name: String) -> Result<bool, StoreError> {
        let _timed = crate::metrics::store_call("schedule_delete");
        self.call(move |c| {
            c.prepare_cached("DELETE FROM schedules WHERE name = ?1")
                .and_then(|mut st| st.execute([name]))
                .map(|n| n > 0)
                .map_err(StoreError::sqlite("deleting a schedule"))
        })
        .await
    }

    /// The schedules whose next occurrence is at or before `now`.
    pub async fn due_schedules(&self, now: Millis) -> Result<Vec<Stored>, StoreError> {
        self.call(move |c| {
            let sql = format!(
                "SELECT {COLUMNS} FROM schedules WHERE next_at <= ?1 ORDER BY next_at, name"
            );
            let rows = c
                .prepare_cached(&sql)
                .and_then(|mut st| st.query_map([now], read)?.collect())
                .map_err(StoreError::sqlite("reading due schedules"))?;
            Ok(readable(rows))
        })
        .await
    }

    /// How many schedules there are, and the earliest next occurrence.
    pub async fn schedules_overview(&self) -> Result<(u64, Option<Millis>), StoreError> {
        self.call(|c| {
            c.prepare_cached("SELECT count(*), min(next_at) FROM schedules")
                .and_then(|mut st| {
                    st.query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
                        .optional()
                })
                .map(|o| o.unwrap_or((0, None)))
                .map_err(StoreError::sqlite("counting schedules"))
        })
        .await
    }

    /// Creates one schedule's due occurrences and moves its next
    /// occurrence on, in one transaction; `None` when the schedule changed
    /// since it was read (nothing written).
    pub async fn fire_schedule(&self, firing: Firing) -> Result<Option<Vec<Enqueued>>, StoreError> {
        let _timed = crate::metrics::store_call("schedule_fire");
        let (calendar, now) = (self.calendar.clone(), self.now());
        self.call(move |c| fire(c, &calendar.get(), &firing, now))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Rules;
    use crate::schedule::{Put, check, occurrence_job};
    use crate::window::Calendar;
    use serde_json::json;

    const NOW: Millis = 1_764_583_200_000; // 2025-12-01T10:00:00Z

    fn schedule() -> (Schedule, Millis) {
        let put = Put {
            name: "hourly".into(),
            cron: "0 0 * * * *".into(),
            timezone: None,
            catch_up: None,
            job: json!({"kind": "message", "channel": "sms",
                        "payload": {"message": "hi", "phone": "+15550100"}}),
        };
        check(put, NOW, &Rules::default()).expect("a valid schedule")
    }

    fn firing(s: &Schedule, revision: i64, was: Millis) -> Firing {
        let job = occurrence_job(s, was, NOW, &Rules::default()).expect("a valid job");
        Firing {
            name: s.name.clone(),
            revision,
            was: Some(was),
            next_at: Some(was + 3_600_000),
            jobs: vec![job],
        }
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).expect("count")
    }

    #[test]
    fn a_firing_moves_next_at_and_creates_the_job_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = super::super::schema::open(&dir.path().join("q.db")).expect("open");
        let (s, first) = schedule();
        assert!(put(&conn, &s, first, NOW).expect("put"), "new");
        let calendar = Calendar::none();
        let done = fire(&conn, &calendar, &firing(&s, 1, first), NOW)
            .expect("fire")
            .expect("fired");
        assert_eq!(done.len(), 1);
        assert!(!done[0].duplicate);
        assert_eq!(
            count(&conn, "SELECT next_at FROM schedules"),
            first + 3_600_000
        );
        // Planned again from the same stored state (a second daemon, or a
        // plan read before the first firing committed): nothing is written.
        assert!(
            fire(&conn, &calendar, &firing(&s, 1, first), NOW)
                .expect("fire")
                .is_none()
        );
        // Even with next_at put back by hand, the key keeps it single.
        conn.execute("UPDATE schedules SET next_at = ?1", [first])
            .expect("edit");
        let again = fire(&conn, &calendar, &firing(&s, 1, first), NOW)
            .expect("fire")
            .expect("fired");
        assert!(again[0].duplicate);
        assert_eq!(count(&conn, "SELECT count(*) FROM jobs"), 1);
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM job_tags WHERE tag = 'schedule:hourly'"
            ),
            1
        );
    }

    #[test]
    fn a_firing_planned_before_a_put_is_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = super::super::schema::open(&dir.path().join("q.db")).expect("open");
        let (s, first) = schedule();
        put(&conn, &s, first, NOW).expect("put");
        assert!(!put(&conn, &s, first, NOW).expect("put"), "replaced");
        let stale = fire(&conn, &Calendar::none(), &firing(&s, 1, first), NOW).expect("fire");
        assert!(stale.is_none());
        assert_eq!(count(&conn, "SELECT count(*) FROM jobs"), 0);
        assert_eq!(count(&conn, "SELECT revision FROM schedules"), 2);
    }
}
