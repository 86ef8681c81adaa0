//! One run of the property test: applies each event to a real queue with
//! the store's own functions, and checks what it did against
//! [`crate::window::Rule::plan`] and what the run knows of each job.

use super::props::{End, Event, JobSpec};
use super::*;
use crate::config::OnAmbiguous;
use crate::store::delivery::ClaimedJob;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeSet;

/// `retry.max_attempts` for recovery.
const MAX_ATTEMPTS: u32 = 3;
/// Jobs per resettle step: small, so a resettle takes several.
const STEP: usize = 2;

fn failed(e: crate::store::StoreError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// The queue, the calendar in force, the clock, and what the test knows
/// independently of the store: each job's attempts and the jobs in flight.
pub(super) struct Run {
    _dir: tempfile::TempDir,
    conn: Connection,
    start: Millis,
    calendar: Calendar,
    now: Millis,
    attempts: BTreeMap<i64, i64>,
    sending: Vec<ClaimedJob>,
}

impl Run {
    /// A new queue, at `start`, under `calendar`.
    pub(super) fn new(start: Millis, calendar: Calendar) -> Run {
        let (dir, conn) = queue();
        Run {
            _dir: dir,
            conn,
            start,
            calendar,
            now: start,
            attempts: BTreeMap::new(),
            sending: Vec::new(),
        }
    }

    /// Applies `event`, checks what it did to the jobs it touched, then
    /// checks that it left every other job alone and the invariants.
    pub(super) fn apply(&mut self, event: &Event) -> Result<(), TestCaseError> {
        let before = rows(&self.conn);
        let touched = match event {
            Event::Advance(by) => {
                self.now += by;
                BTreeSet::new()
            }
            Event::Claim(limit) => self.claim(&before, *limit)?,
            Event::Finish(pick, end) => self.finish(pick, end)?,
            Event::Requeue(pick) => self.requeue(&before, pick)?,
            Event::Reschedule(pick, at) => self.reschedule(&before, pick, self.now + at)?,
            Event::Cancel(pick) => self.cancel(&before, pick)?,
            Event::Recover => self.recover(&before)?,
            Event::Enqueue(jobs) => self.enqueue(jobs)?,
            Event::NewCalendar(spec, steps) => {
                self.calendar = spec.calendar(self.start);
                self.resettle(&before, *steps)?
            }
        };
        let after = rows(&self.conn);
        for (id, row) in &before {
            if !touched.contains(id) {
                prop_assert_eq!(
                    Some(row),
                    after.get(id),
                    "{:?} changed a job it did not touch",
                    event
                );
            }
        }
        for row in after.values() {
            prop_assert_eq!(
                Some(&row.attempts),
                self.attempts.get(&row.id),
                "job {}: attempts changed other than by a claim, a key pause or a requeue",
                row.id
            );
        }
        let deferred = after
            .values()
            .filter(|r| r.state == State::Scheduled && r.due_at > r.scheduled_at)
            .count();
        prop_assert_eq!(
            deferral::deferred(&self.conn).map_err(failed)?,
            deferred as u64
        );
        Ok(())
    }

    /// The job `pick` chooses among every job, in id order.
    fn pick(before: &BTreeMap<i64, Row>, pick: &Index) -> Option<i64> {
        if before.is_empty() {
            return None;
        }
        before.keys().nth(pick.index(before.len())).copied()
    }

    /// Checks that job `id` is where settling at `now` puts it.
    fn settled(&self, after: &BTreeMap<i64, Row>, id: i64) -> Result<(), TestCaseError> {
        let row = &after[&id];
        prop_assert_eq!(
            outcome(row),
            Some(expected(&self.calendar, row, self.now)),
            "job {:?} at {}",
            row,
            format(self.now)
        );
        Ok(())
    }

    fn enqueue(&mut self, specs: &[JobSpec]) -> Result<BTreeSet<i64>, TestCaseError> {
        let jobs: Vec<NewJob> = specs
            .iter()
            .map(|s| {
                let at = self.now + s.at;
                let mut job = new_job(s.kind, s.zone, s.window, at);
                job.expires_at = s.ttl.map(|ttl| at + ttl);
                job
            })
            .collect();
        let answers =
            queries::enqueue(&self.conn, &self.calendar, &jobs, self.now).map_err(failed)?;
        let after = rows(&self.conn);
        let mut touched = BTreeSet::new();
        for answer in answers {
            self.attempts.insert(answer.id, 0);
            self.settled(&after, answer.id)?;
            let row = &after[&answer.id];
            prop_assert_eq!(answer.state, row.state);
            let shown = (row.state == State::Scheduled).then(|| format(row.due_at));
            prop_assert_eq!(answer.due_at, shown);
            touched.insert(answer.id);
        }
        Ok(touched)
    }

    fn claim(
        &mut self,
        before: &BTreeMap<i64, Row>,
        limit: usize,
    ) -> Result<BTreeSet<i64>, TestCaseError> {
        let now = self.now;
        let mut due: Vec<&Row> = before
            .values()
            .filter(|r| r.state == State::Scheduled && r.due_at <= now)
            .collect();
        due.sort_by_key(|r| (r.due_at, r.id));
        due.truncate(limit);
        let claimed =
            delivery::claim(&self.conn, &self.calendar, "test", now, limit).map_err(failed)?;
        let after = rows(&self.conn);
        for job in &claimed.jobs {
            let rule = self
                .calendar
                .rule(job.timezone.as_deref(), job.window.as_deref(), job.kind);
            prop_assert!(
                rule.is_ok_and(|r| r.is_open(now)),
                "job {} claimed at {}, outside its window",
                job.id,
                format(now)
            );
            prop_assert!(
                now >= job.scheduled_at,
                "job {} claimed at {}, before its scheduled_at {}",
                job.id,
                format(now),
                format(job.scheduled_at)
            );
            prop_assert!(
                job.expires_at.is_none_or(|e| now < e),
                "claimed after expiry"
            );
            let attempts = self.attempts.entry(job.id).or_default();
            prop_assert_eq!(i64::from(job.attempt), *attempts + 1);
            *attempts += 1;
            prop_assert_eq!(after[&job.id].state, State::Sending);
        }
        let claimed_ids: BTreeSet<i64> = claimed.jobs.iter().map(|j| j.id).collect();
        let expired_ids: BTreeSet<i64> = claimed.expired.iter().map(|j| j.id).collect();
        let touched: BTreeSet<i64> = due.iter().map(|r| r.id).collect();
        prop_assert!(claimed_ids.is_subset(&touched) && expired_ids.is_subset(&touched));
        for row in due {
            if row.expires_at.is_some_and(|e| e <= now) {
                prop_assert!(expired_ids.contains(&row.id));
                prop_assert_eq!(after[&row.id].state, State::Expired);
                continue;
            }
            let open = self
                .calendar
                .rule(row.timezone.as_deref(), row.window.as_deref(), row.kind)
                .is_ok_and(|r| r.is_open(now));
            if open {
                prop_assert!(claimed_ids.contains(&row.id), "job {} due and open", row.id);
            } else {
                prop_assert!(!claimed_ids.contains(&row.id));
                self.settled(&after, row.id)?;
            }
        }
        let next_due = after
            .values()
            .filter(|r| r.state == State::Scheduled)
            .map(|r| r.due_at)
            .min();
        prop_assert_eq!(claimed.next_due, next_due);
        self.sending.extend(claimed.jobs);
        Ok(touched)
    }

    fn finish(&mut self, pick: &Index, end: &End) -> Result<BTreeSet<i64>, TestCaseError> {
        if self.sending.is_empty() {
            return Ok(BTreeSet::new());
        }
        let job = self.sending.remove(pick.index(self.sending.len()));
        let decision = match end {
            End::Retry(after) => Decision::Retry {
                at: self.now + after,
                reason: "HTTP 503".to_owned(),
            },
            End::Sent => Decision::Sent,
            End::Failed => Decision::Failed {
                reason: "HTTP 400".to_owned(),
            },
            End::PauseForKey => Decision::PauseForKey,
        };
        let finish = ended(job.id, job.seq, self.now, decision.clone());
        delivery::finish(&self.conn, &self.calendar, &finish).map_err(failed)?;
        let after = rows(&self.conn);
        let row = &after[&job.id];
        match decision {
            Decision::Retry { at, .. } => {
                prop_assert_eq!(row.scheduled_at, at);
                self.settled(&after, job.id)?;
            }
            Decision::PauseForKey => {
                *self.attempts.entry(job.id).or_default() -= 1;
                self.settled(&after, job.id)?;
            }
            Decision::Sent => prop_assert_eq!(row.state, State::Sent),
            _ => prop_assert_eq!(row.state, State::Failed),
        }
        Ok(BTreeSet::from([job.id]))
    }

    fn requeue(
        &mut self,
        before: &BTreeMap<i64, Row>,
        pick: &Index,
    ) -> Result<BTreeSet<i64>, TestCaseError> {
        let Some(id) = Self::pick(before, pick) else {
            return Ok(BTreeSet::new());
        };
        match queries::requeue(&self.conn, &self.calendar, id, self.now).map_err(failed)? {
            Ok(_) => {
                prop_assert!(matches!(before[&id].state, State::Failed | State::Held));
                self.attempts.insert(id, 0);
                let after = rows(&self.conn);
                prop_assert_eq!(after[&id].scheduled_at, self.now);
                self.settled(&after, id)?;
                Ok(BTreeSet::from([id]))
            }
            Err(_) => {
                prop_assert!(!matches!(before[&id].state, State::Failed | State::Held));
                Ok(BTreeSet::new())
            }
        }
    }

    fn reschedule(
        &mut self,
        before: &BTreeMap<i64, Row>,
        pick: &Index,
        at: Millis,
    ) -> Result<BTreeSet<i64>, TestCaseError> {
        let Some(id) = Self::pick(before, pick) else {
            return Ok(BTreeSet::new());
        };
        let answer =
            queries::reschedule(&self.conn, &self.calendar, id, at, self.now).map_err(failed)?;
        match answer {
            Ok(_) => {
                prop_assert_eq!(before[&id].state, State::Scheduled);
                let after = rows(&self.conn);
                prop_assert_eq!(after[&id].scheduled_at, at);
                self.settled(&after, id)?;
                Ok(BTreeSet::from([id]))
            }
            Err(queries::Refusal::ShutUntilExpiry {
                opening,
                expires_at,
            }) => {
                prop_assert!(opening >= expires_at);
                let moved = Row {
                    scheduled_at: at,
                    ..before[&id].clone()
                };
                prop_assert_eq!(expected(&self.calendar, &moved, self.now), Outcome::Expired);
                Ok(BTreeSet::new())
            }
            Err(queries::Refusal::PastExpiry { expires_at }) => {
                prop_assert!(at >= expires_at);
                Ok(BTreeSet::new())
            }
            Err(_) => Ok(BTreeSet::new()),
        }
    }

    fn cancel(
        &mut self,
        before: &BTreeMap<i64, Row>,
        pick: &Index,
    ) -> Result<BTreeSet<i64>, TestCaseError> {
        let Some(id) = Self::pick(before, pick) else {
            return Ok(BTreeSet::new());
        };
        let answer = queries::cancel(&self.conn, &self.calendar, id, self.now).map_err(failed)?;
        let cancellable = matches!(before[&id].state, State::Scheduled | State::Held);
        prop_assert_eq!(answer.is_ok(), cancellable);
        Ok(if cancellable {
            BTreeSet::from([id])
        } else {
            BTreeSet::new()
        })
    }

    /// A restart: every job in `sending` goes back in line, or to `failed`
    /// with no attempts left.
    fn recover(&mut self, before: &BTreeMap<i64, Row>) -> Result<BTreeSet<i64>, TestCaseError> {
        let recovered = delivery::recover(
            &self.conn,
            &self.calendar,
            self.now,
            OnAmbiguous::Retry,
            MAX_ATTEMPTS,
        )
        .map_err(failed)?;
        self.sending.clear();
        let touched: BTreeSet<i64> = before
            .values()
            .filter(|r| r.state == State::Sending)
            .map(|r| r.id)
            .collect();
        prop_assert_eq!(
            recovered.iter().map(|r| r.id).collect::<BTreeSet<_>>(),
            touched.clone()
        );
        let after = rows(&self.conn);
        for id in &touched {
            if after[id].attempts >= i64::from(MAX_ATTEMPTS) {
                prop_assert_eq!(after[id].state, State::Failed);
            } else {
                self.settled(&after, *id)?;
            }
        }
        Ok(touched)
    }

    /// Settles the queue under the calendar now in force, as
    /// [`crate::store::Store::resettle`] does: all the steps, or at most `steps`.
    /// A job a step settled is where settling puts it; one it did not
    /// reach is unchanged.
    fn resettle(
        &mut self,
        before: &BTreeMap<i64, Row>,
        steps: Option<usize>,
    ) -> Result<BTreeSet<i64>, TestCaseError> {
        let windowless = self.calendar.window_names().next().is_none();
        let mut from = Some(walk::Cursor::START);
        let mut taken = 0;
        while let Some(cursor) = from {
            if steps.is_some_and(|s| taken >= s) {
                break;
            }
            prop_assert!(taken < 1_000, "settling the queue does not end");
            let (_, next) = if windowless {
                deferral::undefer_step(&self.conn, &self.calendar, STEP, self.now)
            } else {
                deferral::resettle_step(&self.conn, &self.calendar, cursor, STEP, self.now)
            }
            .map_err(failed)?;
            from = next;
            taken += 1;
        }
        let complete = from.is_none();
        let after = rows(&self.conn);
        let scheduled: BTreeSet<i64> = before
            .values()
            .filter(|r| r.state == State::Scheduled)
            .map(|r| r.id)
            .collect();
        for id in &scheduled {
            let (was, row) = (&before[id], &after[id]);
            let settled = outcome(row) == Some(expected(&self.calendar, row, self.now))
                || (was == row && keeps_spread_point(&self.calendar, row, self.now));
            // Under a calendar without windows only the deferred jobs are
            // walked: one that names a window and is not deferred is held
            // by the claim that meets it instead.
            let unwalked = windowless && was.due_at <= was.scheduled_at && was == row;
            if complete && !unwalked {
                prop_assert!(
                    settled,
                    "after a complete resettle: {:?} at {}",
                    row,
                    format(self.now)
                );
            } else {
                prop_assert!(settled || was == row, "{:?} became {:?}", was, row);
            }
        }
        Ok(scheduled)
    }

    /// Finishes what is in flight, settles the queue fully, then advances
    /// the clock from one due time to the next: every job whose window
    /// opens before its expiry must be claimed, and no other.
    pub(super) fn drain(&mut self) -> Result<(), TestCaseError> {
        for job in std::mem::take(&mut self.sending) {
            let finish = ended(job.id, job.seq, self.now, Decision::Sent);
            delivery::finish(&self.conn, &self.calendar, &finish).map_err(failed)?;
        }
        let before = rows(&self.conn);
        self.resettle(&before, None)?;
        let mut claimable = BTreeSet::new();
        let mut waiting = BTreeSet::new();
        for row in rows(&self.conn).values() {
            if row.state != State::Scheduled {
                continue;
            }
            waiting.insert(row.id);
            let Ok(rule) =
                self.calendar
                    .rule(row.timezone.as_deref(), row.window.as_deref(), row.kind)
            else {
                continue;
            };
            let opening = rule.next_opening(row.scheduled_at.max(self.now));
            if opening.is_some_and(|o| row.expires_at.is_none_or(|e| o < e)) {
                claimable.insert(row.id);
            }
        }
        let mut rounds = 0;
        while let Some(next) = delivery::next_due(&self.conn).map_err(failed)? {
            rounds += 1;
            prop_assert!(rounds < 1_000, "the queue does not drain");
            self.now = self.now.max(next);
            let before = rows(&self.conn);
            self.claim(&before, 100)?;
            let claimed = std::mem::take(&mut self.sending);
            for job in claimed {
                prop_assert!(claimable.contains(&job.id), "job {} claimed", job.id);
                claimable.remove(&job.id);
                let finish = ended(job.id, job.seq, self.now, Decision::Sent);
                delivery::finish(&self.conn, &self.calendar, &finish).map_err(failed)?;
            }
        }
        let end = rows(&self.conn);
        prop_assert!(
            claimable.is_empty(),
            "never claimed though their windows open before expiry: {:?}",
            claimable.iter().map(|id| &end[id]).collect::<Vec<_>>()
        );
        for id in waiting {
            prop_assert!(end[&id].state != State::Scheduled);
        }
        Ok(())
    }
}
