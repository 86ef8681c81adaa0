//! Export and import in PostgreSQL: the same stream as SQLite's (the
//! records of [`crate::transfer`]), read from one snapshot and written in
//! one transaction.
//!
//! Export reads inside one `REPEATABLE READ, READ ONLY` transaction: every
//! statement sees the same snapshot however daemons write meanwhile, and
//! nothing is written. Jobs come through a cursor, a batch at a time, each
//! batch's history with one more query, so a large queue is never held in
//! memory. Schedules are ordered by name in byte order (`COLLATE "C"`), as
//! SQLite orders them, so that the same queue makes the same stream from
//! either store.
//!
//! Import creates or migrates the schema as a daemon would, then, in one
//! transaction, refuses a store in use or not empty, inserts every row as
//! the stream carries it, moves the id sequence above the highest id, and
//! commits only once the whole stream has been read and found complete.
//! Rows go to the server 256 jobs at a time, pipelined, in one round trip
//! (20,000 jobs with a try and two tags each: 20 s one row at a time, 5 s
//! so, in a debug build on loopback).
//! "In use" is decided two ways: the advisory lock [`DAEMON_LOCK`], which a
//! daemon on PostgreSQL will hold (shared) for as long as it runs and
//! which import takes exclusively, so neither can start while the other
//! runs; and, as a second guard, a node whose heartbeat in `nodes` is
//! younger than `store.lease`, by the database's clock.
//!
//! PostgreSQL's columns are typed: a cell that SQLite kept in the wrong
//! type after a hand edit (a time as text, a payload that is not UTF-8)
//! cannot be stored, and is refused with its line, column and job, before
//! anything is committed.
//!
//! The store's client is async and this interface is not: each snapshot or
//! import runs its own single-threaded runtime, so these types must not be
//! used from inside another runtime (the CLI has none).

mod export;
mod import;

pub use export::PgSnapshot;
pub use import::PgImporter;

use crate::store::StoreError;
use crate::store::transfer::shown;
use crate::transfer::Cell;
use tokio::runtime::Runtime;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

/// The advisory lock a daemon on PostgreSQL holds shared while it runs,
/// and an import holds exclusively: "Coax" in ASCII, then 2.
pub const DAEMON_LOCK: i64 = 0x436f_6178_0000_0002;

pub(super) fn runtime() -> Result<Runtime, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Postgres {
            during: "starting the client's runtime",
            detail: e.to_string(),
        })
}

/// Column `i` of `r` as a cell.
pub(super) fn cell(r: &Row, i: usize) -> Result<Cell, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::Postgres {
        during: "reading a row to export",
        detail: e.to_string(),
    };
    let ty = r.columns()[i].type_();
    Ok(match *ty {
        Type::INT8 => r
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map_or(Cell::Null, Cell::Integer),
        Type::INT4 => r
            .try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map_or(Cell::Null, |n| Cell::Integer(n.into())),
        Type::TEXT | Type::VARCHAR => r.try_get::<_, Option<String>>(i).map_err(bad)?.into(),
        _ => {
            return Err(StoreError::Postgres {
                during: "reading a row to export",
                detail: format!(
                    "column {} is of type {ty}, which the schema does not use",
                    r.columns()[i].name()
                ),
            });
        }
    })
}

/// Columns `from..from + N` of `r` as cells.
pub(super) fn cells<const N: usize>(r: &Row, from: usize) -> Result<[Cell; N], StoreError> {
    let mut out = [(); N].map(|()| Cell::Null);
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = cell(r, from + i)?;
    }
    Ok(out)
}

/// `cell` as a parameter for a column of type `ty`, or why it cannot be
/// one: PostgreSQL keeps each column in one type, where SQLite kept what
/// it was given.
pub(super) fn param<'a>(cell: &'a Cell, ty: &Type) -> Result<Box<dyn ToSql + Sync + 'a>, String> {
    match (cell, ty) {
        (Cell::Null, &Type::INT8) => Ok(Box::new(None::<i64>)),
        (Cell::Null, _) => Ok(Box::new(None::<&str>)),
        (Cell::Integer(n), &Type::INT8) => Ok(Box::new(*n)),
        (Cell::Text(t), &Type::TEXT) => Ok(Box::new(t.as_str())),
        (Cell::RawText(_), _) => Err("text that is not UTF-8".to_owned()),
        (other, &Type::INT8) => Err(format!("{}, not an integer", shown(other))),
        (other, _) => Err(format!("{}, not text", shown(other))),
    }
}
