//! Walking some states' jobs in `jobs_by_state_due` order, a bounded step
//! at a time: what prune and the unreadable-row sweep share. Each step is
//! two index seeks from a cursor, so it costs at most its limit in index
//! entries and rows however the queue is made up, and a whole walk reads
//! each job of those states once.

use crate::time::Millis;
use rusqlite::{Connection, Row, ToSql};

/// Where a walk has got to: the state it walks (an index into the walk's
/// list of states) and the last job it read there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    state: usize,
    due_at: Millis,
    id: i64,
}

impl Cursor {
    pub const START: Cursor = Cursor {
        state: 0,
        due_at: Millis::MIN,
        id: i64::MIN,
    };
}

/// The seeks after a position, with ?1 the state, ?2 and ?3 the position
/// and ?4 the limit: first the jobs due at the same instant with a higher
/// id, then those due later. (A row-value comparison,
/// `(due_at, id) > (?2, ?3)`, seeks on `due_at` alone and would
/// rescan every job due at that instant on each step.)
pub(super) const SEEKS: [&str; 2] = [
    "WHERE state = ?1 AND due_at = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
    "WHERE state = ?1 AND due_at > ?2 ORDER BY due_at, id LIMIT ?4",
];

/// One job a step read: its position, and what `read` made of its row.
pub(super) struct Seen<T> {
    pub id: i64,
    pub due_at: Millis,
    pub row: T,
}

/// Reads up to `limit` jobs of `states[from.state]` after `from`, as
/// `SELECT {columns} FROM jobs` (whose first column must be `id`), with
/// `extra` bound from ?5 on; `read` gives each row's `due_at` and
/// what the caller wants of it. Returns what it read and where the next
/// step starts (`None` once every state has been walked).
pub(super) fn step<T>(
    conn: &Connection,
    states: &[&str],
    from: Cursor,
    limit: usize,
    columns: &str,
    extra: &[&dyn ToSql],
    mut read: impl FnMut(&Row<'_>) -> rusqlite::Result<(Millis, T)>,
) -> rusqlite::Result<(Vec<Seen<T>>, Option<Cursor>)> {
    let Some(state) = states.get(from.state) else {
        return Ok((Vec::new(), None));
    };
    let mut seen: Vec<Seen<T>> = Vec::with_capacity(limit);
    for seek in SEEKS {
        let room = limit - seen.len();
        if room == 0 {
            break;
        }
        let room = i64::try_from(room).unwrap_or(i64::MAX);
        let mut params: Vec<&dyn ToSql> = vec![state, &from.due_at, &from.id, &room];
        params.extend_from_slice(extra);
        let mut statement = conn.prepare_cached(&format!("SELECT {columns} FROM jobs {seek}"))?;
        let mut rows = statement.query(params.as_slice())?;
        while let Some(r) = rows.next()? {
            let (due_at, row) = read(r)?;
            seen.push(Seen {
                id: r.get(0)?,
                due_at,
                row,
            });
        }
    }
    let next = match seen.last() {
        Some(last) if seen.len() >= limit => Cursor {
            state: from.state,
            due_at: last.due_at,
            id: last.id,
        },
        // This state is done; the next starts from its beginning.
        _ => Cursor {
            state: from.state + 1,
            ..Cursor::START
        },
    };
    Ok((seen, (next.state < states.len()).then_some(next)))
}
