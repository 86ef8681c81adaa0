//! Follow-ups below the store thread: a property test over random chains
//! and random ends of their parents, against a model of what each end
//! implies, with the counts per state checked after every event.

use super::{delivery, queries, schema, tags};
use crate::config::OnAmbiguous;
use crate::job::{Rules, State, validate};
use crate::policy::Decision;
use crate::store::delivery::Finish;
use crate::time::Millis;
use crate::window::Calendar;
use proptest::prelude::*;
use proptest::sample::Index;
use rusqlite::{Connection, params};
use serde_json::json;
use std::collections::BTreeMap;

/// 2026-01-01T00:00:00Z.
const START: Millis = 1_767_225_600_000;
const TAG: &str = "chain:tagged";

/// One planned job: the earlier job it follows, if any, and its times.
#[derive(Debug, Clone)]
struct Plan {
    parent: Option<Index>,
    /// Name the parent by key rather than by id.
    by_key: bool,
    delay_s: u8,
    ttl_s: Option<u8>,
    tagged: bool,
}

/// How an attempt in flight ends.
#[derive(Debug, Clone, Copy)]
enum End {
    Sent,
    Skipped,
    Failed,
    Retry,
    Hold,
    Expired,
}

#[derive(Debug, Clone)]
enum Event {
    /// Enqueue the next 1 to 3 planned jobs, as one batch.
    Enqueue(u8),
    Advance(u16),
    Claim,
    Finish(Index, End),
    Cancel(Index),
    CancelTag,
    Requeue(Index),
    /// A restart: every job in `sending` back in line, or failed.
    Recover,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        proptest::option::weighted(0.8, any::<Index>()),
        any::<bool>(),
        0u8..4,
        proptest::option::of(1u8..6),
        proptest::bool::weighted(0.3),
    )
        .prop_map(|(parent, by_key, delay_s, ttl_s, tagged)| Plan {
            parent,
            by_key,
            delay_s,
            ttl_s,
            tagged,
        })
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        4 => Just(End::Sent),
        1 => Just(End::Skipped),
        1 => Just(End::Failed),
        1 => Just(End::Retry),
        1 => Just(End::Hold),
        1 => Just(End::Expired),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (1u8..4).prop_map(Event::Enqueue),
        2 => (0u16..4_000).prop_map(Event::Advance),
        3 => Just(Event::Claim),
        4 => (any::<Index>(), end()).prop_map(|(i, e)| Event::Finish(i, e)),
        1 => any::<Index>().prop_map(Event::Cancel),
        1 => Just(Event::CancelTag),
        1 => any::<Index>().prop_map(Event::Requeue),
        1 => Just(Event::Recover),
    ]
}

/// The queue and what the test knows of it without asking the store.
struct Run {
    _dir: tempfile::TempDir,
    conn: Connection,
    now: Millis,
    plans: Vec<Plan>,
    /// Each enqueued job's id, in plan order.
    ids: Vec<i64>,
    /// Each job's parent, by id.
    parent: BTreeMap<i64, i64>,
    /// The state each job must be in.
    model: BTreeMap<i64, State>,
    /// Jobs in `sending`, with the number of their open attempt.
    sending: Vec<(i64, u32)>,
}

fn failed(e: super::StoreError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

impl Run {
    fn new(plans: Vec<Plan>) -> Run {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = schema::open(&dir.path().join("queue.db")).expect("open the queue");
        // Durability is not under test here; each statement's fsync is
        // most of a run's time.
        conn.execute_batch("PRAGMA synchronous = OFF")
            .expect("synchronous off");
        Run {
            _dir: dir,
            conn,
            now: START,
            plans,
            ids: Vec::new(),
            parent: BTreeMap::new(),
            model: BTreeMap::new(),
            sending: Vec::new(),
        }
    }

    fn children(&self, id: i64) -> Vec<i64> {
        self.parent
            .iter()
            .filter(|(_, p)| **p == id)
            .map(|(c, _)| *c)
            .collect()
    }

    /// The model's half of [`super::chain::parent_ended`]: what `state`
    /// implies for the waiting descendants of `id`; how many it cancels.
    fn ended(&mut self, id: i64, state: State) -> u64 {
        self.model.insert(id, state);
        let mut cancelled = 0;
        for child in self.children(id) {
            if self.model[&child] != State::Waiting {
                continue;
            }
            match state {
                State::Sent => {
                    self.model.insert(child, State::Scheduled);
                }
                State::Skipped | State::Failed | State::Expired | State::Cancelled => {
                    cancelled += 1 + self.ended(child, State::Cancelled);
                }
                _ => {}
            }
        }
        cancelled
    }

    fn apply(&mut self, event: &Event) -> Result<(), TestCaseError> {
        match event {
            Event::Enqueue(n) => self.enqueue(usize::from(*n))?,
            Event::Advance(ms) => self.now += Millis::from(*ms),
            Event::Claim => self.claim()?,
            Event::Finish(pick, end) => self.finish(pick, *end)?,
            Event::Cancel(pick) => self.cancel(pick)?,
            Event::CancelTag => self.cancel_tag()?,
            Event::Requeue(pick) => self.requeue(pick)?,
            Event::Recover => self.recover()?,
        }
        self.check()
    }

    fn enqueue(&mut self, n: usize) -> Result<(), TestCaseError> {
        let first = self.ids.len();
        let batch: Vec<usize> = (first..self.plans.len()).take(n).collect();
        let mut jobs = Vec::new();
        let mut parents = Vec::new();
        for &i in &batch {
            let plan = &self.plans[i];
            let mut job = json!({
                "kind": "message", "channel": "sms", "key": format!("job-{i}"),
                "payload": {"message": "hi", "phone": "+15550100"},
            });
            if plan.tagged {
                job["tags"] = json!([TAG]);
            }
            if let Some(ttl) = plan.ttl_s {
                job["ttl"] = json!(format!("{ttl}s"));
            }
            let parent = plan.parent.filter(|_| i > 0).map(|p| p.index(i));
            if let Some(p) = parent {
                // A parent in this same batch has no id yet: by key.
                job["after"] = if plan.by_key || p >= first {
                    json!({"key": format!("job-{p}")})
                } else {
                    json!({"id": self.ids[p]})
                };
                job["delay"] = json!(format!("{}s", plan.delay_s));
            }
            parents.push(parent);
            jobs.push(
                validate(&job, self.now, &Rules::default())
                    .map_err(|e| TestCaseError::fail(format!("invalid job: {e}")))?,
            );
        }
        prop_assert_eq!(
            super::chain::unknown_parent(&self.conn, &jobs).map_err(failed)?,
            None
        );
        let answers =
            queries::enqueue(&self.conn, &Calendar::none(), &jobs, self.now).map_err(failed)?;
        for (answer, parent) in answers.iter().zip(parents) {
            self.ids.push(answer.id);
            let expected = match parent {
                None => State::Scheduled,
                Some(p) => {
                    let p = self.ids[p];
                    self.parent.insert(answer.id, p);
                    match self.model[&p] {
                        State::Sent => State::Scheduled,
                        State::Skipped | State::Failed | State::Expired | State::Cancelled => {
                            State::Cancelled
                        }
                        _ => State::Waiting,
                    }
                }
            };
            prop_assert_eq!(answer.state, expected, "job {}", answer.id);
            self.model.insert(answer.id, expected);
        }
        Ok(())
    }

    fn claim(&mut self) -> Result<(), TestCaseError> {
        let claimed = delivery::claim(&self.conn, &Calendar::none(), "test", self.now, 100)
            .map_err(failed)?;
        for job in &claimed.jobs {
            prop_assert_eq!(self.model[&job.id], State::Scheduled, "claimed {}", job.id);
            self.model.insert(job.id, State::Sending);
            self.sending.push((job.id, job.seq));
        }
        for job in &claimed.expired {
            prop_assert_eq!(self.model[&job.id], State::Scheduled, "expired {}", job.id);
            self.ended(job.id, State::Expired);
        }
        Ok(())
    }

    fn finish(&mut self, pick: &Index, end: End) -> Result<(), TestCaseError> {
        if self.sending.is_empty() {
            return Ok(());
        }
        let (id, seq) = self.sending.remove(pick.index(self.sending.len()));
        let reason = String::from("decided by the test");
        let (decision, state) = match end {
            End::Sent => (Decision::Sent, State::Sent),
            End::Skipped => (Decision::Skipped { reason }, State::Skipped),
            End::Failed => (Decision::Failed { reason }, State::Failed),
            End::Retry => (
                Decision::Retry {
                    at: self.now + 1_000,
                    reason,
                },
                State::Scheduled,
            ),
            End::Hold => (Decision::Hold { reason }, State::Held),
            End::Expired => (Decision::Expired { reason }, State::Expired),
        };
        let finish = Finish {
            id,
            seq,
            finished_at: self.now,
            status: Some(200),
            error: None,
            ambiguous: false,
            latency_ms: 1,
            result: None,
            decision,
        };
        delivery::finish(&self.conn, &Calendar::none(), &finish).map_err(failed)?;
        self.ended(id, state);
        if state == State::Sent {
            // Each released child is due its delay after this send.
            for child in self.children(id) {
                if self.model[&child] != State::Scheduled {
                    continue;
                }
                let at: Millis = self
                    .conn
                    .query_row(
                        "SELECT scheduled_at FROM jobs WHERE id = ?1",
                        [child],
                        |r| r.get(0),
                    )
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let index = self.ids.iter().position(|i| *i == child).unwrap_or(0);
                let delay = Millis::from(self.plans[index].delay_s) * 1_000;
                prop_assert_eq!(at, self.now + delay, "child {} of {}", child, id);
            }
        }
        Ok(())
    }

    fn cancel(&mut self, pick: &Index) -> Result<(), TestCaseError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let id = self.ids[pick.index(self.ids.len())];
        let answer =
            queries::cancel(&self.conn, &Calendar::none(), id, self.now).map_err(failed)?;
        let cancellable = matches!(
            self.model[&id],
            State::Scheduled | State::Held | State::Waiting
        );
        prop_assert_eq!(answer.is_ok(), cancellable, "cancel {}", id);
        if let Ok((_, children)) = answer {
            let expected = self.ended(id, State::Cancelled);
            prop_assert_eq!(children, expected, "cancelled_children of {}", id);
        }
        Ok(())
    }

    fn cancel_tag(&mut self) -> Result<(), TestCaseError> {
        let (cancelled, children) =
            tags::cancel(&self.conn, &Calendar::none(), TAG, self.now).map_err(failed)?;
        let tagged: Vec<i64> = self
            .ids
            .iter()
            .enumerate()
            .filter(|(i, id)| {
                self.plans[*i].tagged
                    && matches!(
                        self.model[*id],
                        State::Scheduled | State::Held | State::Waiting
                    )
            })
            .map(|(_, id)| *id)
            .collect();
        prop_assert_eq!(cancelled, tagged.len() as u64);
        for id in &tagged {
            self.model.insert(*id, State::Cancelled);
        }
        let mut expected = 0;
        for id in tagged {
            expected += self.ended(id, State::Cancelled);
        }
        prop_assert_eq!(children, expected);
        Ok(())
    }

    fn requeue(&mut self, pick: &Index) -> Result<(), TestCaseError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let id = self.ids[pick.index(self.ids.len())];
        let answer =
            queries::requeue(&self.conn, &Calendar::none(), id, self.now).map_err(failed)?;
        let allowed = matches!(self.model[&id], State::Failed | State::Held);
        prop_assert_eq!(answer.is_ok(), allowed, "requeue {}", id);
        if allowed {
            // Its children stay as they are: cancelled ones do not return.
            self.model.insert(id, State::Scheduled);
        }
        Ok(())
    }

    fn recover(&mut self) -> Result<(), TestCaseError> {
        let recovered = delivery::recover(
            &self.conn,
            &Calendar::none(),
            self.now,
            OnAmbiguous::Retry,
            2,
        )
        .map_err(failed)?;
        prop_assert_eq!(recovered.len(), self.sending.len());
        self.sending.clear();
        for r in recovered {
            let state = if r.failed {
                State::Failed
            } else {
                State::Scheduled
            };
            self.ended(r.id, state);
        }
        Ok(())
    }

    /// Every job is in the state the model says; no job waits for a parent
    /// that has ended; the counts per state are exact.
    fn check(&self) -> Result<(), TestCaseError> {
        let stored: BTreeMap<i64, String> = self
            .conn
            .prepare("SELECT id, state FROM jobs")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (id, state) in &self.model {
            prop_assert_eq!(stored.get(id).map(String::as_str), Some(state.as_str()));
        }
        for (child, parent) in &self.parent {
            if self.model[child] == State::Waiting {
                prop_assert!(
                    matches!(
                        self.model[parent],
                        State::Scheduled | State::Sending | State::Held | State::Waiting
                    ),
                    "job {} waits for {}, which is {}",
                    child,
                    parent,
                    self.model[parent]
                );
            }
        }
        let counted: BTreeMap<String, i64> = self
            .conn
            .prepare("SELECT state, count(*) FROM jobs GROUP BY state")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let summary = queries::summary(&self.conn, "test", self.now).map_err(failed)?;
        for state in State::ALL {
            let kept = summary.counts.get(&state).copied().unwrap_or(0);
            let real = counted.get(state.as_str()).copied().unwrap_or(0);
            prop_assert_eq!(kept as i64, real, "count of {}", state);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_follow_up_ends_as_its_parent_implies_and_counts_stay_exact(
        plans in proptest::collection::vec(plan(), 1..14),
        events in proptest::collection::vec(event(), 1..60),
    ) {
        let mut run = Run::new(plans);
        for event in &events {
            run.apply(event)?;
        }
    }
}

/// A chain far deeper than any stack would allow a recursive cancel:
/// cancelling its head cancels every job of it, in one call.
#[test]
fn cancelling_the_head_of_a_deep_chain_cancels_all_of_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = schema::open(&dir.path().join("queue.db")).expect("open the queue");
    conn.execute_batch("PRAGMA synchronous = OFF")
        .expect("synchronous off");
    let depth = 20_000;
    let mut jobs = Vec::with_capacity(depth);
    for i in 0..depth {
        let mut job = json!({
            "kind": "message", "channel": "sms", "key": format!("c{i}"),
            "payload": {"message": "hi", "phone": "+15550100"},
        });
        if i > 0 {
            job["after"] = json!({"key": format!("c{}", i - 1)});
        }
        jobs.push(validate(&job, START, &Rules::default()).expect("a valid job"));
    }
    let answers = queries::enqueue(&conn, &Calendar::none(), &jobs, START).expect("enqueue");
    let head = answers[0].id;
    let (_, children) = queries::cancel(&conn, &Calendar::none(), head, START)
        .expect("cancel")
        .expect("cancellable");
    assert_eq!(children, depth as u64 - 1);
    let waiting: i64 = conn
        .query_row(
            "SELECT count(*) FROM jobs WHERE state = ?1",
            params!["waiting"],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(waiting, 0);
}

fn store() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = schema::open(&dir.path().join("queue.db")).expect("open the queue");
    (dir, conn)
}

/// A parent `key` (with `extra` fields) and a follower `key-child`.
fn pair(
    conn: &Connection,
    calendar: &Calendar,
    key: &str,
    extra: serde_json::Value,
    now: Millis,
) -> (i64, i64) {
    let mut parent = json!({
        "kind": "message", "channel": "sms", "key": key,
        "payload": {"message": "hi", "phone": "+15550100"},
    });
    for (name, value) in extra.as_object().into_iter().flatten() {
        parent[name] = value.clone();
    }
    let child = json!({
        "kind": "message", "channel": "sms", "key": format!("{key}-child"),
        "after": {"key": key}, "payload": {"message": "hi", "phone": "+15550100"},
    });
    let rules = Rules {
        calendar: std::sync::Arc::new(calendar.clone()),
        ..Rules::default()
    };
    let jobs = [parent, child].map(|j| validate(&j, now, &rules).expect("a valid job"));
    let answers = queries::enqueue(conn, calendar, &jobs, now).expect("enqueue");
    (answers[0].id, answers[1].id)
}

fn state_and_error(conn: &Connection, id: i64) -> (String, String) {
    conn.query_row(
        "SELECT state, coalesce(last_error, '') FROM jobs WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("a job")
}

/// Monday 2026-11-30 22:00 in Sydney; the business window opens at 09:00.
const MONDAY_NIGHT: &str = "2026-11-30T11:00:00Z";

fn business() -> Calendar {
    Calendar::from_toml(
        r#"
[dispatch]
default_timezone = "Australia/Sydney"
[windows.business]
mon = "09:00-17:00"
tue = "09:00-17:00"
wed = "09:00-17:00"
thu = "09:00-17:00"
fri = "09:00-17:00"
"#,
    )
    .expect("a valid calendar")
}

#[test]
fn a_parent_expired_by_its_window_or_by_a_move_cancels_its_follower() {
    let (_dir, conn) = store();
    let calendar = business();
    let now = crate::time::parse_rfc3339(MONDAY_NIGHT).expect("a time");
    // Due Tuesday 12:00, expiring Wednesday 08:00 (Sydney).
    let parent = json!({"window": "business", "scheduled_at": "2026-12-01T12:00",
                        "expires_at": "2026-12-01T21:00:00Z", "tags": ["moved"]});
    let (p, c) = pair(&conn, &calendar, "by-window", parent.clone(), now);
    // To Tuesday 18:00: the window next opens Wednesday 09:00, after the
    // expiry, so settling expires it.
    tags::reschedule(&conn, &calendar, "moved", 6 * 3_600_000, now)
        .expect("move")
        .expect("within the years a job may name");
    assert_eq!(state_and_error(&conn, p).0, "expired");
    let (state, why) = state_and_error(&conn, c);
    assert_eq!(state, "cancelled");
    assert!(
        why.contains(&format!("job {p}")) && why.contains("expired"),
        "{why}"
    );

    let parent = json!({"window": "business", "scheduled_at": "2026-12-01T12:00",
                        "expires_at": "2026-12-01T21:00:00Z", "tags": ["moved-far"]});
    let (p, c) = pair(&conn, &calendar, "by-move", parent, now);
    // Moved past its expiry: expired by the move itself.
    tags::reschedule(&conn, &calendar, "moved-far", 86_400_000, now)
        .expect("move")
        .expect("within the years a job may name");
    assert_eq!(state_and_error(&conn, p).0, "expired");
    assert_eq!(state_and_error(&conn, c).0, "cancelled");
}

#[test]
fn a_quarantined_parent_cancels_its_follower() {
    let (_dir, conn) = store();
    let (p, c) = pair(&conn, &Calendar::none(), "bad", json!({}), START);
    conn.execute("UPDATE jobs SET payload = 'not json' WHERE id = ?1", [p])
        .expect("a hand edit");
    let claimed = delivery::claim(&conn, &Calendar::none(), "test", START, 10).expect("claim");
    assert!(claimed.jobs.is_empty(), "{claimed:?}");
    assert_eq!(state_and_error(&conn, p).0, "failed");
    let (state, why) = state_and_error(&conn, c);
    assert_eq!(state, "cancelled");
    assert!(why.contains("ended failed"), "{why}");
}
