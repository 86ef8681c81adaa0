//! Group commit on PostgreSQL, as the SQLite store thread groups every
//! call: the items waiting at one moment are stored in one transaction,
//! and each is answered once that transaction has committed.
//!
//! ```text
//! caller ─► channel ─► the writer: takes every one waiting
//!   ─► one transaction ─► each caller answered
//! ```
//!
//! A transaction costs the server far more than a small statement in it,
//! and the cores go on that when each enqueue or send is one. Two kinds
//! are grouped: single enqueues of a job that is one row and its tags
//! ([`NewOne`]: one statement for the whole group, sent in one pipeline
//! with `BEGIN`, the key locks and `COMMIT`), and the outcomes of attempts
//! ([`super::group_finish`]). A group that fails is stored again an item
//! at a time, so one bad item fails alone.
//!
//! Each kind has one writer, storing one group at a time; while it waits
//! on the server, the next group gathers. Two writers were measured slower
//! on two cores: each group is then half the size, and a group's cost is
//! mostly its round trip and flush, not its rows.

use super::jobs::{KEY_LOCK_CLASS, LOCK_KEYS, WAKE_HORIZON_MS, duplicate};
use super::pool::{Pool, Pooled};
use super::queue::DUE_CHANNEL;
use super::{StoreError, pg_error};
use crate::job::NewJob;
use crate::protocol::Enqueued;
use crate::store::deferral::{Settled, enqueued};
use crate::time::Millis;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

/// The most items in one group.
const MAX_GROUP: usize = 256;

/// Stores a group of jobs in one statement, from one array per column
/// (`$14` holds each tag's job, by its place in the group, and `$15` the
/// tag): each job whose key is not taken (by a stored job, or by one
/// earlier in the group) gets the next id and its row and tags (the
/// stored key is looked up by a scalar subquery, so that it is one index
/// seek per job whatever the planner thinks of the table); the answer
/// is each stored job's place and id; the other nodes are woken if one
/// falls due soon. `fresh` is read twice and
/// so evaluated once, with one `nextval` per job (its sequence looked up
/// once, in a subquery: per job, the lookup cost more than the insert);
/// a SELECT in a WITH runs
/// only when read, hence the count of `woke`.
const STORE_GROUP: &str = "WITH new AS (
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                              $6::bigint[], $7::text[], $8::bigint[], $9::text[], $10::text[],
                              $11::text[], $12::bool[])
             WITH ORDINALITY
             AS u (key, kind, channel, enquiry_id, scheduled_at, now, payload, expires_at,
                   timezone, send_window, tags, wake, place)),
     fresh AS (
         SELECT new.*, nextval((SELECT pg_get_serial_sequence('jobs', 'id'))) AS id
         FROM (SELECT new.*, row_number() OVER (PARTITION BY key ORDER BY place) AS nth
               FROM new) AS new
         WHERE new.key IS NULL
            OR (new.nth = 1
                AND (SELECT j.id FROM jobs j WHERE j.key = new.key LIMIT 1) IS NULL)),
     stored AS (
         INSERT INTO jobs (id, key, kind, channel, enquiry_id, scheduled_at, state, created_at,
                           updated_at, payload, expires_at, due_at, timezone, send_window, tags)
         SELECT id, key, kind, channel, enquiry_id, scheduled_at, 'scheduled', now, now,
                payload, expires_at, scheduled_at, timezone, send_window, tags
         FROM fresh ORDER BY place),
     tagged AS (
         INSERT INTO job_tags (tag, job_id)
         SELECT DISTINCT t.tag, fresh.id
         FROM unnest($14::bigint[], $15::text[]) AS t (place, tag)
         JOIN fresh ON fresh.place = t.place),
     woke AS (SELECT pg_notify($13, '') WHERE EXISTS (SELECT 1 FROM fresh WHERE wake))
     SELECT place, id, (SELECT count(*) FROM woke) FROM fresh";

/// Work stored in groups: each kind says how a group of it is stored in
/// one transaction.
pub(super) trait Grouped: Send + Sync + Sized + 'static {
    /// What a stored item answers its caller.
    type Answer: Send + 'static;
    /// What storing needs besides the items.
    type Context: Clone + Send + Sync + 'static;

    /// Stores `group` in one transaction: the answer for each, in order.
    /// `Err` means nothing was stored, so the items may be stored again;
    /// an item's own `Err` means its answer could not be read once the
    /// group had committed, so it must not be.
    fn store(
        cx: &Self::Context,
        group: &[Self],
    ) -> impl Future<Output = Result<Vec<Result<Self::Answer, StoreError>>, StoreError>> + Send;
}

/// An item waiting for its group.
struct Waiting<T: Grouped> {
    item: T,
    answer: oneshot::Sender<Result<T::Answer, StoreError>>,
}

/// Where items wait to be stored together. Cheap to clone; the writer
/// stops once every clone is gone.
pub(super) struct Grouper<T: Grouped> {
    waiting: mpsc::Sender<Waiting<T>>,
}

impl<T: Grouped> Clone for Grouper<T> {
    fn clone(&self) -> Self {
        Grouper {
            waiting: self.waiting.clone(),
        }
    }
}

impl<T: Grouped> Grouper<T> {
    /// Starts the writer, storing with `cx`.
    pub(super) fn start(cx: T::Context) -> Grouper<T> {
        let (waiting, taken) = mpsc::channel(MAX_GROUP);
        tokio::spawn(write(cx, taken));
        Grouper { waiting }
    }

    /// Stores `item` with its group, and answers once that has committed.
    pub(super) async fn store(&self, item: T) -> Result<T::Answer, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.waiting
            .send(Waiting { item, answer })
            .await
            .map_err(|_| StoreError::Closed)?;
        answered.await.map_err(|_| StoreError::Closed)?
    }
}

/// A writer: takes every item waiting (at most [`MAX_GROUP`]), stores
/// them together, answers them, and again. A group that fails is stored
/// again an item at a time, so that one bad item fails alone.
async fn write<T: Grouped>(cx: T::Context, mut taken: mpsc::Receiver<Waiting<T>>) {
    loop {
        let group = {
            let Some(first) = taken.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match taken.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            group
        };
        let (items, answers): (Vec<T>, Vec<_>) =
            group.into_iter().map(|w| (w.item, w.answer)).unzip();
        match T::store(&cx, &items).await {
            Ok(stored) => {
                for (answer, stored) in answers.into_iter().zip(stored) {
                    // The caller may have gone; its item is stored all the same.
                    let _ = answer.send(stored);
                }
            }
            // Out of reach: alone, each would fail the same way.
            Err(e) if items.len() == 1 || e.is_unavailable() => {
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
            Err(_) => {
                for (item, answer) in items.iter().zip(answers) {
                    let alone = T::store(&cx, std::slice::from_ref(item)).await;
                    let alone = alone.and_then(|mut a| a.pop().unwrap_or(Err(StoreError::Closed)));
                    let _ = answer.send(alone);
                }
            }
        }
    }
}

/// A job to store that is one row and its tags (see [`super::jobs`]).
pub(super) struct NewOne {
    pub job: NewJob,
    pub now: Millis,
}

impl Grouped for NewOne {
    type Answer = Enqueued;
    type Context = Pool;

    async fn store(
        pool: &Pool,
        group: &[NewOne],
    ) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
        store_new(pool, group).await
    }
}

/// Stores `group` in one transaction: the answer for each, in order.
///
/// `BEGIN`, the key locks, the insert and `COMMIT` go in one pipeline, so
/// the group costs one round trip and the commit's flush: the commit
/// follows the insert on the server whatever the insert's fate, and
/// commits nothing if the insert failed.
async fn store_new(
    pool: &Pool,
    group: &[NewOne],
) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
    let during = "enqueueing";
    let mut client = pool.get().await?;
    let keys: Vec<&str> = group.iter().filter_map(|w| w.job.key.as_deref()).collect();
    let lock = client.prepared(LOCK_KEYS).await.map_err(pg_error(during))?;
    let insert = client
        .prepared(STORE_GROUP)
        .await
        .map_err(pg_error(during))?;
    let column = |f: &dyn Fn(&NewOne) -> Option<String>| -> Vec<Option<String>> {
        group.iter().map(f).collect()
    };
    let keys_of = column(&|w| w.job.key.clone());
    let kinds: Vec<&str> = group.iter().map(|w| w.job.kind.as_str()).collect();
    let channels: Vec<&str> = group.iter().map(|w| w.job.channel.as_str()).collect();
    let enquiries = column(&|w| w.job.enquiry_id.clone());
    let scheduled: Vec<Millis> = group.iter().map(|w| w.job.scheduled_at).collect();
    let nows: Vec<Millis> = group.iter().map(|w| w.now).collect();
    let payloads: Vec<String> = group
        .iter()
        .map(|w| Value::Object(w.job.payload.clone()).to_string())
        .collect();
    let expiries: Vec<Option<Millis>> = group.iter().map(|w| w.job.expires_at).collect();
    let zones = column(&|w| w.job.timezone.clone());
    let windows = column(&|w| w.job.window.clone());
    let tags_json = column(&|w| {
        let tags: Vec<&str> = w.job.tags.iter().map(String::as_str).collect();
        (!tags.is_empty()).then(|| Value::from(tags).to_string())
    });
    let wake: Vec<bool> = group
        .iter()
        .map(|w| w.job.scheduled_at <= w.now.saturating_add(WAKE_HORIZON_MS))
        .collect();
    let (mut tag_places, mut tags) = (Vec::<i64>::new(), Vec::<&str>::new());
    for (place, w) in (1..).zip(group) {
        for tag in &w.job.tags {
            tag_places.push(place);
            tags.push(tag);
        }
    }
    let params: [&(dyn ToSql + Sync); 15] = [
        &keys_of,
        &kinds,
        &channels,
        &enquiries,
        &scheduled,
        &nows,
        &payloads,
        &expiries,
        &zones,
        &windows,
        &tags_json,
        &wake,
        &DUE_CHANNEL,
        &tag_places,
        &tags,
    ];
    let lock_params: [&(dyn ToSql + Sync); 2] = [&keys, &KEY_LOCK_CLASS];
    // Every keyed job locks its key first (see `lock_keys`), so the check
    // for a taken key in STORE_GROUP holds until the commit.
    let (begun, locked, stored, committed) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.execute(&lock, &lock_params),
        client.query(&insert, &params),
        client.batch_execute("COMMIT"),
    );
    begun.map_err(pg_error(during))?;
    locked.map_err(pg_error("locking idempotency keys"))?;
    let rows = stored.map_err(pg_error(during))?;
    committed.map_err(pg_error(during))?;
    // Committed: from here on a failure is an item's, never the group's,
    // or the writer would store the group's jobs again.
    let mut ids = vec![None; group.len()];
    for row in rows {
        let read = || -> Result<(i64, i64), tokio_postgres::Error> {
            Ok((row.try_get(0)?, row.try_get(1)?))
        };
        match read() {
            Ok((place, id)) => {
                if let Some(slot) = usize::try_from(place - 1).ok().and_then(|i| ids.get_mut(i)) {
                    *slot = Some(Ok(id));
                }
            }
            Err(e) => {
                let e = pg_error(during)(e);
                return Ok(group.iter().map(|_| Err(e.clone())).collect());
            }
        }
    }
    let mut answers = Vec::with_capacity(group.len());
    for (w, id) in group.iter().zip(ids) {
        answers.push(match (id, &w.job.key) {
            (Some(Ok(id)), _) => Ok(enqueued(id, &w.job, Settled::Due)),
            (Some(Err(e)), _) => Err(e),
            (None, Some(key)) => held(&mut client, key, w.now).await,
            // Only a key can be taken.
            (None, None) => Err(StoreError::Postgres {
                during,
                detail: "a job without a key was not stored".to_owned(),
            }),
        });
    }
    Ok(answers)
}

/// The answer for a job whose key `key` was taken: the job that holds it,
/// as it is now.
async fn held(client: &mut Pooled, key: &str, now: Millis) -> Result<Enqueued, StoreError> {
    let during = "looking up a duplicate key";
    let tx = client.begin().await.map_err(pg_error(during))?;
    let held = duplicate(&tx, key, now).await?;
    tx.commit().await.map_err(pg_error(during))?;
    Ok(held)
}
