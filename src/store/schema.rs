//! Opening the database safely: the lock, the checks that the file is ours,
//! and the migrations keyed by `PRAGMA user_version`.
//!
//! A file at `store.path` that is not ours (not SQLite, or SQLite with
//! another application's tables) is refused and never written to: [`check`]
//! decides from the file's bytes (see [`super::identity`]) before anything
//! opens it for writing. A file
//! from a newer schema is refused too: an older build must not guess at it.

use super::{StoreError, lock_path};
use rusqlite::{Connection, OpenFlags};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

/// How long a statement waits for another connection's lock (an export's
/// read, a hand edit) before it fails as busy.
pub(super) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Marks the file as a coax-scheduler queue ("Coax" in ASCII).
const APPLICATION_ID: i64 = 0x436f_6178;

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the first released schema.
    r#"
    CREATE TABLE jobs (
        id           INTEGER PRIMARY KEY,
        key          TEXT UNIQUE,
        kind         TEXT NOT NULL,
        channel      TEXT NOT NULL,
        enquiry_id   TEXT,
        scheduled_at INTEGER NOT NULL,
        state        TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        last_error   TEXT,
        result       TEXT,
        payload      TEXT NOT NULL
    );
    CREATE INDEX jobs_by_state_due ON jobs (state, scheduled_at, id);
    CREATE TABLE attempts (
        job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER,
        status      INTEGER,
        error       TEXT,
        decision    TEXT,
        ambiguous   INTEGER NOT NULL DEFAULT 0,
        latency_ms  INTEGER,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    "#,
    // 2: jobs may expire instead of going out late.
    r#"
    ALTER TABLE jobs ADD COLUMN expires_at INTEGER;
    "#,
    // 3: counts per state, kept in the same transaction as each change, so
    // that `stats` and the summary line read a few rows instead of counting
    // the whole queue. Triggers keep them for every update and delete. New
    // jobs are counted by `queries::enqueue`, once per call: a trigger per
    // inserted row halved the rate of batched enqueues.
    r#"
    CREATE TABLE state_counts (
        state TEXT PRIMARY KEY,
        jobs  INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO state_counts (state, jobs) SELECT state, count(*) FROM jobs GROUP BY state;
    CREATE TRIGGER state_counts_delete AFTER DELETE ON jobs BEGIN
        UPDATE state_counts SET jobs = jobs - 1 WHERE state = OLD.state;
    END;
    CREATE TRIGGER state_counts_update AFTER UPDATE OF state ON jobs
    WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE state_counts SET jobs = jobs - 1 WHERE state = OLD.state;
        INSERT INTO state_counts (state, jobs) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET jobs = jobs + 1;
    END;
    "#,
    // 4: `list` in order `recent` walks this index, state by state, in
    // bounded steps; without it each such list sorted every job of a state
    // (444 ms at a million). The one index added for listing: each index
    // costs every enqueue and every change of state.
    r#"
    CREATE INDEX jobs_by_state_updated ON jobs (state, updated_at, id);
    "#,
    // 5: send windows. `due_at` is when the daemon will next try a job:
    // `scheduled_at` (the client's time, or a retry's), moved to the next
    // opening of the job's window when that time falls outside it. The
    // claim, the wake-up and every walk go by `due_at`, so the index that
    // served `scheduled_at` now serves it. `timezone` and `send_window` are
    // what the job named (NULL: the config's default, resolved when used,
    // so a reload reaches queued jobs). `jobs_deferred` holds only the
    // deferred jobs, for the summary line's count. `meta` remembers the
    // calendar the due times were computed under.
    r#"
    ALTER TABLE jobs ADD COLUMN due_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN timezone TEXT;
    ALTER TABLE jobs ADD COLUMN send_window TEXT;
    UPDATE jobs SET due_at = scheduled_at;
    DROP INDEX jobs_by_state_due;
    CREATE INDEX jobs_by_state_due ON jobs (state, due_at, id);
    CREATE INDEX jobs_deferred ON jobs (due_at) WHERE state = 'scheduled' AND due_at > scheduled_at;
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value
    ) WITHOUT ROWID;
    "#,
    // 6: tags. `jobs.tags` keeps a job's tags as a JSON array for its view;
    // `job_tags` finds the jobs of a tag with one seek, for `list`,
    // `cancel` and `reschedule` by tag. A job's rows there are deleted with
    // it, found by (tag, job_id) from its own list, so no second index is
    // kept.
    r#"
    ALTER TABLE jobs ADD COLUMN tags TEXT;
    CREATE TABLE job_tags (
        tag    TEXT NOT NULL,
        job_id INTEGER NOT NULL,
        PRIMARY KEY (tag, job_id)
    ) WITHOUT ROWID;
    "#,
    // 7: follow-ups. `parent_id` is the job a follow-up waits for (kept
    // once it is released, for its view); `after_delay_ms` and
    // `after_ttl_ms` are its delay and ttl, counted from the parent's send,
    // which is when its times become known. The index is partial, so jobs
    // without a parent cost it nothing; it finds a parent's children when
    // the parent ends, and for its view.
    r#"
    ALTER TABLE jobs ADD COLUMN parent_id INTEGER;
    ALTER TABLE jobs ADD COLUMN after_delay_ms INTEGER;
    ALTER TABLE jobs ADD COLUMN after_ttl_ms INTEGER;
    CREATE INDEX jobs_by_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
    "#,
    // 8: recurring sends. One row per schedule; `next_at` is its next
    // occurrence still to create, kept here so that a restart starts from
    // the store, not from a timer. `revision` grows with every put, so an
    // occurrence planned from an older put is not created. The task finds
    // the earliest `next_at` through the index.
    r#"
    CREATE TABLE schedules (
        name       TEXT PRIMARY KEY,
        cron       TEXT NOT NULL,
        timezone   TEXT NOT NULL,
        catch_up   TEXT NOT NULL,
        job        TEXT NOT NULL,
        next_at    INTEGER,
        revision   INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX schedules_by_next ON schedules (next_at) WHERE next_at IS NOT NULL;
    "#,
    // 9: the number of deferred jobs (scheduled, `due_at` later than
    // `scheduled_at`), kept in `meta` by triggers in the same transaction
    // as each change, so `stats` and the summary read one row instead of
    // counting `jobs_deferred` (6 ms at 100,000). A new job is never
    // deferred when inserted (its due time is settled by an update), so no
    // insert trigger is needed. Start-up checks it against the jobs.
    r#"
    INSERT OR REPLACE INTO meta (name, value)
        SELECT 'deferred', count(*) FROM jobs WHERE state = 'scheduled' AND due_at > scheduled_at;
    CREATE TRIGGER deferred_count_update AFTER UPDATE OF state, due_at, scheduled_at ON jobs
    WHEN (OLD.state = 'scheduled' AND OLD.due_at > OLD.scheduled_at)
         IS NOT (NEW.state = 'scheduled' AND NEW.due_at > NEW.scheduled_at)
    BEGIN
        UPDATE meta SET value = value +
            CASE WHEN NEW.state = 'scheduled' AND NEW.due_at > NEW.scheduled_at THEN 1 ELSE -1 END
        WHERE name = 'deferred';
    END;
    CREATE TRIGGER deferred_count_delete AFTER DELETE ON jobs
    WHEN OLD.state = 'scheduled' AND OLD.due_at > OLD.scheduled_at
    BEGIN
        UPDATE meta SET value = value - 1 WHERE name = 'deferred';
    END;
    "#,
    // 10: the node (`node.name`) that made each attempt. Attempts made
    // before it are left without one: which daemon made them is not known.
    r#"
    ALTER TABLE attempts ADD COLUMN node TEXT;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Refuses a file that is not ours, or that a newer schema wrote, from its
/// bytes alone: nothing is opened for writing (no lock file either) until
/// the file is known to be ours or new.
pub fn check(path: &Path) -> Result<(), StoreError> {
    let identity =
        super::identity::inspect(path, APPLICATION_ID).map_err(|e| StoreError::Open {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    match identity {
        super::identity::Identity::New => Ok(()),
        super::identity::Identity::Ours { version } if version > SCHEMA_VERSION => {
            Err(StoreError::TooNew {
                path: path.to_owned(),
                found: version,
                supported: SCHEMA_VERSION,
            })
        }
        super::identity::Identity::Ours { .. } => Ok(()),
        super::identity::Identity::Foreign(detail) => Err(StoreError::Foreign {
            path: path.to_owned(),
            detail,
        }),
    }
}

/// Takes the lock that keeps a second daemon off the same database.
///
/// A separate lock file is used because SQLite's own locks are per
/// transaction, and closing any other descriptor on the database file would
/// drop them.
pub fn lock(db: &Path) -> Result<File, StoreError> {
    let path = lock_path(db);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Open {
            path: db.to_owned(),
            detail: format!("cannot open lock file {}: {e}", path.display()),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: db.to_owned(),
            lock: path,
        }),
        Err(TryLockError::Error(e)) => Err(StoreError::Open {
            path: db.to_owned(),
            detail: format!("cannot lock {}: {e}", path.display()),
        }),
    }
}

/// Opens the database, checks that it is ours, and migrates it.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |detail: String| StoreError::Open {
        path: path.to_owned(),
        detail,
    };
    let foreign = |detail: String| StoreError::Foreign {
        path: path.to_owned(),
        detail,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_err(e.to_string()))?;

    // Reading the header is the first touch: a file that is not SQLite
    // fails here, before anything could be written to it.
    let (app_id, version, tables) =
        read_identity(&conn).map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => {
                foreign("it is not an SQLite database".into())
            }
            _ => open_err(e.to_string()),
        })?;
    if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
        return Err(foreign(format!(
            "it is an SQLite database of another application (application_id {app_id:#x}, {tables} tables)"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }

    // temp_store = MEMORY keeps each call's savepoint journal in small heap
    // chunks. By default SQLite gives every savepoint a fresh 64 KiB buffer,
    // which glibc hands back to the kernel when the savepoint ends: with a
    // million rows that madvise and its TLB flush cost a third of the store
    // thread's time. The price: a call that changes very many pages keeps
    // their undo in memory and in 1 KiB pieces, so an enqueue of 10,000 jobs
    // in one call is slower (about 70k jobs/s against 110k), while batches
    // of up to a few thousand are faster. Prune therefore works in short
    // steps. Temporary sorts are bounded by our LIMITs.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(|e| open_err(format!("cannot set up the journal: {e}")))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| open_err(format!("cannot set up the journal: {e}")))?;
    migrate(&conn, version).map_err(|e| open_err(format!("migration failed: {e}")))?;
    Ok(conn)
}

fn read_identity(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    let app_id = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    Ok((app_id, version, tables))
}

fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(from.max(0) as usize) {
        let to = index + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             {sql}
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {to};
             COMMIT;"
        ))?;
        tracing::info!(version = to, "database schema migrated");
    }
    Ok(())
}
