//! The store thread and group commit: it takes every call that is
//! waiting, runs each in a savepoint of one shared transaction, commits
//! once, and only then answers each caller (see [`super`] for why).

use super::StoreError;
use rusqlite::Connection;
use std::fs::File;
use tokio::sync::mpsc;

pub(super) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A call: runs on the store thread, says whether it succeeded, and hands
/// back what answers its caller once the group's commit is known.
pub(super) type Work =
    Box<dyn FnOnce(Result<&Connection, &StoreError>) -> (bool, Completion) + Send>;

/// A call for the store thread: most share the group transaction; a few
/// (checkpoints) must run outside any transaction.
pub(super) enum Call {
    Grouped(Work),
    Alone(Work),
}

/// How many waiting calls share one transaction at most.
pub(super) const MAX_GROUP: usize = 1024;

/// The store thread: group waiting calls into one transaction each.
pub(super) fn serve(conn: Connection, _lock: File, mut rx: mpsc::Receiver<Call>) {
    let mut group: Vec<Work> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(call) = next.take() {
            match call {
                Call::Grouped(work) => group.push(work),
                Call::Alone(work) => {
                    run_group(&conn, &mut group);
                    (work(Ok(&conn)).1)(Ok(()));
                }
            }
            if group.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        run_group(&conn, &mut group);
    }
    tracing::debug!("store thread stopped");
}

fn run_group(conn: &Connection, group: &mut Vec<Work>) {
    if group.is_empty() {
        return;
    }
    let mut pending: Vec<Completion> = Vec::with_capacity(group.len());
    let mut open: Result<(), StoreError> = Err(StoreError::Closed);
    for work in group.drain(..) {
        if open.is_err() {
            open = conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(StoreError::sqlite("starting a transaction"));
        }
        if let Err(e) = &open {
            (work(Err(e)).1)(Err(e.clone()));
            continue;
        }
        let (succeeded, completion) = run_in_savepoint(conn, work);
        if !succeeded && conn.is_autocommit() {
            // Some failures (SQLITE_FULL in a statement without a statement
            // journal) make SQLite roll back the whole transaction, not just
            // the savepoint: the calls before this one were undone too.
            let lost = StoreError::Unavailable {
                during: "committing",
                detail: "another change in the same transaction failed and SQLite rolled \
                         back all of it; nothing was written, try again"
                    .into(),
            };
            for done in pending.drain(..) {
                done(Err(lost.clone()));
            }
            // The failing call reports its own error.
            completion(Ok(()));
            open = Err(StoreError::Closed);
            continue;
        }
        pending.push(completion);
    }
    if open.is_err() {
        return;
    }
    let commit = conn
        .execute_batch("COMMIT")
        .map_err(StoreError::sqlite("committing"));
    if commit.is_err() && !conn.is_autocommit() {
        // A failed COMMIT can leave the transaction open; end it so the next
        // group starts clean. Nothing of this group was written.
        let _ = conn.execute_batch("ROLLBACK");
    }
    for done in pending {
        done(commit.clone());
    }
}

/// Runs one call; if it fails, its writes are undone and the group goes on.
/// Returns whether the call succeeded, and what answers its caller.
fn run_in_savepoint(conn: &Connection, work: Work) -> (bool, Completion) {
    if let Err(e) = conn
        .execute_batch("SAVEPOINT call")
        .map_err(StoreError::sqlite("opening a savepoint"))
    {
        return (false, work(Err(&e)).1);
    }
    let (succeeded, completion) = work(Ok(conn));
    if conn.is_autocommit() {
        // SQLite already rolled the whole transaction back.
        return (succeeded, completion);
    }
    let end = if succeeded {
        "RELEASE call"
    } else {
        "ROLLBACK TO call; RELEASE call"
    };
    if let Err(e) = conn.execute_batch(end) {
        // The commit that follows reports the failure to every caller.
        tracing::error!(error = %e, "cannot end a savepoint");
    }
    (succeeded, completion)
}
