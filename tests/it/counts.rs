//! The counts per state that `stats` and the summary line show come from a
//! table kept in step with the jobs by every change (schema version 3), not
//! from counting the queue. After any sequence of store operations,
//! including restarts that recover interrupted sends and changes that fail
//! and roll back, those counts must equal a count of the jobs themselves.

use coax_scheduler::config::OnAmbiguous;
use coax_scheduler::job::{NewJob, State, validate};
use coax_scheduler::policy::Decision;
use coax_scheduler::store::{Finish, Opened, Options, Recount, Store, StoreError};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// Far enough ahead that no claim in these tests reaches it.
const FUTURE: &str = "2099-01-01T00:00:00Z";
/// Long past: due at once.
const PAST: &str = "2000-01-01T00:00:00Z";

#[derive(Debug, Clone)]
enum Op {
    /// `n` new jobs in one call, some due now, some expiring before they
    /// can be claimed; `repeat` also sends the key of an earlier job again.
    Enqueue {
        n: u8,
        repeat: bool,
        expiring: bool,
    },
    Claim(u8),
    /// A follow-up of the `n`th job (`waiting` until that one ends).
    FollowUp(u8),
    /// Finishes the `which`th claimed job with one of every kind of outcome.
    Finish {
        which: u8,
        outcome: u8,
    },
    Cancel(u8),
    Reschedule(u8),
    Requeue(u8),
    Prune,
    /// A call that writes and then fails, so that its savepoint rolls back.
    Failing,
    /// Stops the store and opens it again; jobs left `sending` are recovered
    /// under the given policy.
    Reopen {
        hold: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..6u8, any::<bool>(), any::<bool>())
            .prop_map(|(n, repeat, expiring)| Op::Enqueue { n, repeat, expiring }),
        2 => (1..8u8).prop_map(Op::Claim),
        2 => any::<u8>().prop_map(Op::FollowUp),
        3 => (any::<u8>(), 0..7u8).prop_map(|(which, outcome)| Op::Finish { which, outcome }),
        1 => any::<u8>().prop_map(Op::Cancel),
        1 => any::<u8>().prop_map(Op::Reschedule),
        1 => any::<u8>().prop_map(Op::Requeue),
        1 => Just(Op::Prune),
        1 => Just(Op::Failing),
        1 => any::<bool>().prop_map(|hold| Op::Reopen { hold }),
    ]
}

/// The state of one run: the store, and what the test has made so far.
struct Run<'a> {
    db: &'a Path,
    /// `None` only while reopening.
    store: Option<Store>,
    ids: Vec<i64>,
    claimed: Vec<(i64, u32)>,
    keys: u32,
}

impl<'a> Run<'a> {
    /// A run on a new queue at `db`.
    async fn new(db: &'a Path) -> Run<'a> {
        Run {
            db,
            store: Some(reopen(db, false).await),
            ids: Vec::new(),
            claimed: Vec::new(),
            keys: 0,
        }
    }

    fn store(&self) -> &Store {
        self.store
            .as_ref()
            .expect("the store is open between operations")
    }

    fn job(&mut self, at: &str, expiring: bool) -> NewJob {
        self.keys += 1;
        let mut job = json!({
            "kind": "message", "channel": "sms", "key": format!("k{}", self.keys),
            "scheduled_at": at,
            "payload": {"message": "counted", "phone": "+15550100"}
        });
        if expiring {
            job["expires_at"] = json!("2000-01-01T00:00:01Z");
        }
        validate(&job, 0, &Default::default()).unwrap_or_else(|e| panic!("invalid test job: {e}"))
    }

    fn pick(&self, index: u8) -> Option<i64> {
        (!self.ids.is_empty()).then(|| self.ids[usize::from(index) % self.ids.len()])
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Enqueue {
                n,
                repeat,
                expiring,
            } => {
                let mut jobs: Vec<NewJob> = (0..n)
                    .map(|i| {
                        let at = if i % 2 == 0 { PAST } else { FUTURE };
                        self.job(at, expiring && i % 2 == 0)
                    })
                    .collect();
                if repeat && self.keys > u32::from(n) {
                    jobs[0].key = Some("k1".into());
                }
                for answer in self.store().enqueue(jobs).await.expect("enqueue") {
                    if !answer.duplicate {
                        self.ids.push(answer.id);
                    }
                }
            }
            Op::FollowUp(index) => {
                let Some(parent) = self.pick(index) else {
                    return;
                };
                self.keys += 1;
                let job = json!({
                    "kind": "message", "channel": "sms", "key": format!("k{}", self.keys),
                    "after": {"id": parent},
                    "payload": {"message": "counted", "phone": "+15550100"}
                });
                let job = validate(&job, 0, &Default::default())
                    .unwrap_or_else(|e| panic!("invalid test job: {e}"));
                // A parent pruned meanwhile is refused, and nothing stored.
                let answers = self.store().enqueue_checked(vec![job]).await;
                if let Ok(answers) = answers.expect("enqueue") {
                    self.ids.extend(answers.iter().map(|a| a.id));
                }
            }
            Op::Claim(limit) => {
                let claimed = self
                    .store()
                    .claim(coax_scheduler::time::now(), usize::from(limit))
                    .await
                    .expect("claim");
                self.claimed
                    .extend(claimed.jobs.iter().map(|job| (job.id, job.seq)));
            }
            Op::Finish { which, outcome } => {
                if self.claimed.is_empty() {
                    return;
                }
                let (id, seq) = self
                    .claimed
                    .swap_remove(usize::from(which) % self.claimed.len());
                let reason = || "a test outcome".to_owned();
                let decision = match outcome {
                    0 => Decision::Sent,
                    1 => Decision::Skipped { reason: reason() },
                    2 => Decision::Failed { reason: reason() },
                    3 => Decision::Retry {
                        at: 0,
                        reason: reason(),
                    },
                    4 => Decision::PauseForKey,
                    5 => Decision::Hold { reason: reason() },
                    _ => Decision::Expired { reason: reason() },
                };
                self.store()
                    .finish(Finish {
                        id,
                        seq,
                        finished_at: coax_scheduler::time::now(),
                        status: Some(200),
                        error: None,
                        ambiguous: false,
                        latency_ms: 1,
                        result: None,
                        decision,
                    })
                    .await
                    .expect("finish");
            }
            // Refusals (a job in the wrong state) are part of the sequence.
            Op::Cancel(index) => {
                if let Some(id) = self.pick(index) {
                    let _ = self.store().cancel(id).await.expect("cancel");
                }
            }
            Op::Reschedule(index) => {
                if let Some(id) = self.pick(index) {
                    let at = coax_scheduler::time::now() - 1_000;
                    let _ = self.store().reschedule(id, at).await.expect("reschedule");
                }
            }
            Op::Requeue(index) => {
                if let Some(id) = self.pick(index) {
                    let _ = self.store().requeue(id).await.expect("requeue");
                }
            }
            Op::Prune => {
                self.store()
                    .prune(i64::MAX / 2, false)
                    .await
                    .expect("prune");
            }
            Op::Failing => {
                let failed = self
                    .store()
                    .call(|c| {
                        c.execute_batch(
                            "UPDATE jobs SET state = 'cancelled' WHERE state = 'scheduled';
                             DELETE FROM jobs WHERE state = 'sent';",
                        )
                        .map_err(|e| StoreError::Sqlite {
                            during: "a test's change",
                            detail: e.to_string(),
                        })?;
                        Err::<(), _>(StoreError::Sqlite {
                            during: "a test's change",
                            detail: "failing on purpose".into(),
                        })
                    })
                    .await;
                assert!(failed.is_err(), "the failing call succeeded");
            }
            Op::Reopen { hold } => {
                drop(self.store.take());
                self.store = Some(reopen(self.db, hold).await);
                self.claimed.clear();
            }
        }
    }
}

/// Opens the store once the previous store thread has let go of its lock,
/// and checks that no count had to be corrected: every change, recovery
/// and migration must have kept them right on its own.
async fn reopen(db: &Path, hold: bool) -> Store {
    let (store, opened) = open_when_free(db, hold).await;
    assert_eq!(
        opened.recounted,
        [],
        "counts were wrong when the store opened"
    );
    store
}

async fn open_when_free(db: &Path, hold: bool) -> (Store, Opened) {
    let options = Options {
        path: db.to_owned(),
        on_ambiguous: if hold {
            OnAmbiguous::Hold
        } else {
            OnAmbiguous::Retry
        },
        max_attempts: 5,
        calendar: std::sync::Arc::new(coax_scheduler::window::Calendar::none()),
        node: "test".to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(&options) {
            Ok(opened) => return opened,
            Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("cannot reopen the store: {e}"),
        }
    }
}

/// Counts per state as `stats` reports them, without the zeros.
async fn reported(store: &Store) -> BTreeMap<String, u64> {
    store
        .stats()
        .await
        .expect("stats")
        .counts
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(state, n)| (state.as_str().to_owned(), n))
        .collect()
}

/// Counts per state, counted from the jobs themselves.
fn counted(db: &Path) -> BTreeMap<String, u64> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the queue read-only");
    let mut stmt = conn
        .prepare("SELECT state, count(*) FROM jobs GROUP BY state")
        .expect("prepare the count");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.unsigned_abs())))
        .expect("count jobs")
        .collect::<rusqlite::Result<_>>()
        .expect("read the counts")
}

/// Applies `ops` to a new queue, comparing the counts after each; returns
/// every state that held a job at some point.
fn check(ops: &[Op]) -> Result<BTreeSet<String>, TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("queue.db");
        let mut seen = BTreeSet::new();
        let mut run = Run::new(&db).await;
        for (step, op) in ops.iter().enumerate() {
            run.apply(op).await;
            let reported = reported(run.store()).await;
            prop_assert_eq!(
                &reported,
                &counted(&db),
                "after step {} ({:?}) of {:?}",
                step,
                op,
                ops
            );
            seen.extend(reported.into_keys());
        }
        Ok(seen)
    })
}

#[test]
fn counts_per_state_match_the_jobs_after_any_sequence_of_changes() {
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..40), |ops| {
            check(&ops).map(drop)
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_fixed_sequence_reaches_every_state_with_matching_counts() {
    // Guards the property above against exercising only a few states.
    let ops = [
        // k1..k5: k1, k3, k5 due now, k2 and k4 in 2099.
        Op::Enqueue {
            n: 5,
            repeat: false,
            expiring: false,
        },
        // k6 follows k2, so waits.
        Op::FollowUp(1),
        // k7: due now but already past its expiry.
        Op::Enqueue {
            n: 1,
            repeat: false,
            expiring: true,
        },
        // k1, k3, k5 are sending; k7 is expired.
        Op::Claim(10),
        Op::Finish {
            which: 0,
            outcome: 0,
        },
        Op::Finish {
            which: 0,
            outcome: 2,
        },
        // Two more due now (the first repeats k1's key).
        Op::Enqueue {
            n: 5,
            repeat: true,
            expiring: false,
        },
        Op::Claim(10),
        Op::Finish {
            which: 0,
            outcome: 5,
        },
        Op::Finish {
            which: 0,
            outcome: 1,
        },
        // k2, in 2099, and k6, which follows it.
        Op::Cancel(1),
        Op::Failing,
        // What is still sending is held.
        Op::Reopen { hold: true },
        Op::Prune,
    ];
    let seen = check(&ops).unwrap_or_else(|e| panic!("{e}"));
    let all: BTreeSet<String> = State::ALL.iter().map(|s| s.as_str().to_owned()).collect();
    assert_eq!(seen, all);
}

#[tokio::test]
async fn counts_broken_by_a_hand_edit_are_corrected_at_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let mut run = Run::new(&db).await;
    run.apply(&Op::Enqueue {
        n: 4,
        repeat: false,
        expiring: false,
    })
    .await;
    drop(run.store.take());

    // Someone edits the queue with the sqlite3 shell while the daemon is
    // stopped: a job inserted by hand, a count set wrong.
    let conn = Connection::open(&db).expect("open the queue");
    conn.execute_batch(
        "INSERT INTO jobs (key, kind, channel, scheduled_at, state, created_at, updated_at, payload)
         VALUES ('by-hand', 'message', 'sms', 0, 'failed', 0, 0, '{}');
         UPDATE state_counts SET jobs = 99 WHERE state = 'scheduled';",
    )
    .expect("edit the queue by hand");
    drop(conn);
    assert_ne!(
        counted(&db).get("failed"),
        None,
        "the hand edit did not land"
    );

    let (store, opened) = open_when_free(&db, false).await;
    let recount = |state: &str, kept, counted| Recount {
        state: state.into(),
        kept,
        counted,
    };
    assert_eq!(
        opened.recounted,
        [recount("failed", 0, 1), recount("scheduled", 99, 4)]
    );
    assert_eq!(reported(&store).await, counted(&db));
    assert_eq!(reported(&store).await.get("scheduled"), Some(&4));
    assert_eq!(reported(&store).await.get("failed"), Some(&1));
}

#[tokio::test]
async fn a_schema_v1_queue_is_counted_when_it_is_migrated() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("queue.db");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema-v1.db");
    std::fs::copy(&fixture, &db).expect("copy the v1 fixture");
    let before = counted(&db);
    assert!(
        before.len() >= 4,
        "the fixture holds jobs in several states: {before:?}"
    );

    // reopen fails the test if the counts had to be corrected.
    let store = reopen(&db, false).await;
    assert_eq!(reported(&store).await, before);
}
