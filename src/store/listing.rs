//! `list` in bounded steps: each step is one store call that reads at most
//! a few hundred index entries and stops once the answer's byte budget is
//! reached, so other calls are answered between steps and no answer line
//! exceeds [`MAX_ANSWER_BYTES`].
//!
//! Both orders walk an index per state: `due` the `jobs_by_state_due`
//! index, `recent` the `jobs_by_state_updated` one (schema version 4). A
//! list of one state walks that state's index from the cursor; a list of
//! every state walks each state's index from the same cursor and merges
//! them, so no query sorts the table. The position is `(due_at, id)`
//! or `(updated_at, id)`, which orders jobs across states too, so one
//! cursor serves every state. A row whose time there is not an integer
//! (a hand edit) has no position: a list's first step seeks such rows (a
//! seek past the largest integer, where SQLite sorts text), and any step
//! that meets one repairs its time columns, setting each that is not an
//! integer to now, with an ERROR line (see [`quarantine::repair_times`]),
//! then reads the positions again.

use super::queries::{self, Lookup};
use super::{StoreError, quarantine};
use crate::job::State;
use crate::protocol::{JobView, ListCursor, ListOrder, MAX_ANSWER_BYTES};
use crate::time::Millis;
use crate::window::Calendar;
use rusqlite::{Connection, params};

/// What one answer line may spend on the views, leaving room for
/// `{"ok":true,"jobs":[`, `],"next":CURSOR}` and the newline.
pub const VIEWS_BUDGET: usize = MAX_ANSWER_BYTES - 1024;

/// Where a list starts in each order.
pub fn start(order: ListOrder) -> ListCursor {
    let edge = match order {
        ListOrder::Due => i64::MIN,
        ListOrder::Recent => i64::MAX,
    };
    ListCursor {
        order,
        at: edge,
        id: edge,
    }
}

/// The seeks of one state's index after a position (?2, ?3), in each
/// order: first the jobs at the same instant past the id, then the rest.
/// (A row-value comparison would seek on the time alone and rescan every
/// job at that instant on each step.)
pub(super) const POSITION_SQL: [[&str; 2]; 2] = [
    [
        "SELECT due_at, id FROM jobs
         WHERE state = ?1 AND due_at = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
        "SELECT due_at, id FROM jobs
         WHERE state = ?1 AND due_at > ?2 ORDER BY due_at, id LIMIT ?4",
    ],
    [
        "SELECT updated_at, id FROM jobs
         WHERE state = ?1 AND updated_at = ?2 AND id < ?3 ORDER BY id DESC LIMIT ?4",
        "SELECT updated_at, id FROM jobs
         WHERE state = ?1 AND updated_at < ?2 ORDER BY updated_at DESC, id DESC LIMIT ?4",
    ],
];

/// [`POSITION_SQL`] for the jobs of one tag (?5): the tag's rows come first
/// (`CROSS JOIN` keeps SQLite from walking the state's index instead), so
/// a step costs the number of jobs with that tag, however large the queue.
pub(super) const TAG_POSITION_SQL: [[&str; 2]; 2] = [
    [
        "SELECT j.due_at, j.id FROM job_tags t CROSS JOIN jobs j ON j.id = t.job_id
         WHERE t.tag = ?5 AND j.state = ?1 AND j.due_at = ?2 AND j.id > ?3 ORDER BY j.id LIMIT ?4",
        "SELECT j.due_at, j.id FROM job_tags t CROSS JOIN jobs j ON j.id = t.job_id
         WHERE t.tag = ?5 AND j.state = ?1 AND j.due_at > ?2 ORDER BY j.due_at, j.id LIMIT ?4",
    ],
    [
        "SELECT j.updated_at, j.id FROM job_tags t CROSS JOIN jobs j ON j.id = t.job_id
         WHERE t.tag = ?5 AND j.state = ?1 AND j.updated_at = ?2 AND j.id < ?3
         ORDER BY j.id DESC LIMIT ?4",
        "SELECT j.updated_at, j.id FROM job_tags t CROSS JOIN jobs j ON j.id = t.job_id
         WHERE t.tag = ?5 AND j.state = ?1 AND j.updated_at < ?2
         ORDER BY j.updated_at DESC, j.id DESC LIMIT ?4",
    ],
];

/// The jobs of one state whose time is not an integer (SQLite sorts text
/// and blobs after every integer), in each order: a seek past the largest
/// integer.
pub(super) const UNPLACED_SQL: [&str; 2] = [
    "SELECT id FROM jobs WHERE state = ?1 AND due_at > 9223372036854775807 LIMIT ?2",
    "SELECT id FROM jobs WHERE state = ?1 AND updated_at > 9223372036854775807 LIMIT ?2",
];

/// One step of a list.
#[derive(Debug)]
pub struct ListStep {
    pub jobs: Vec<JobView>,
    /// The bytes the views take in the answer, commas included.
    pub bytes: usize,
    /// The position of the last job taken (or passed over because it was
    /// gone): where the next step starts.
    pub last: ListCursor,
    /// Every job after `from` has been seen: the list is at its end.
    pub end: bool,
    /// The byte budget stopped the step before a job that did not fit.
    pub full: bool,
}

/// Reads up to `rows` jobs after `from`, in `from.order`, of `state` (or of
/// every state), taking views while they fit in `budget` bytes. When
/// `first` (the answer holds no job yet), the first job is always taken,
/// without its payload if its view alone would not fit.
/// Which jobs a list shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// One state, or every state.
    pub state: Option<State>,
    /// Only scheduled jobs whose `due_at` is before this (order `due`).
    pub due_before: Option<Millis>,
    /// Only jobs with this tag.
    pub tag: Option<String>,
}

impl Filter {
    /// The states whose indexes the list walks.
    fn states(&self) -> Vec<State> {
        let states = self.state.map_or_else(|| State::ALL.to_vec(), |s| vec![s]);
        match self.due_before {
            // Only a scheduled job has a due time.
            Some(_) => states
                .into_iter()
                .filter(|s| *s == State::Scheduled)
                .collect(),
            None => states,
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn step(
    conn: &Connection,
    calendar: &Calendar,
    filter: Filter,
    from: ListCursor,
    rows: usize,
    budget: usize,
    first: bool,
    now: Millis,
) -> Result<ListStep, StoreError> {
    let err = || StoreError::sqlite("listing jobs");
    let mut positions = positions(conn, &filter, from, rows).map_err(err())?;
    if let Err(bad) = positions {
        // A time that is not an integer has no place in the order; once
        // repaired the row has one, and the walk reads its positions anew.
        for id in bad {
            quarantine::repair_times(conn, id, now)?;
        }
        positions = self::positions(conn, &filter, from, rows).map_err(err())?;
    }
    // Repaired times are integers, so a second walk meets none.
    let positions = positions.unwrap_or_default();
    let end = positions.len() < rows;
    let mut out = ListStep {
        jobs: Vec::new(),
        bytes: 0,
        last: from,
        end,
        full: false,
    };
    for (at, id) in positions {
        let here = ListCursor {
            order: from.order,
            at,
            id,
        };
        // A job pruned since its position was read is passed over.
        let Some(mut view) = queries::get(conn, calendar, &Lookup::Id(id), now)? else {
            out.last = here;
            continue;
        };
        let comma = usize::from(!out.jobs.is_empty());
        let mut size = queries::view_bytes(&view) + comma;
        if out.bytes + size > budget {
            if !(first && out.jobs.is_empty()) {
                out.full = true;
                out.end = false;
                break;
            }
            queries::omit_payload(&mut view);
            size = queries::view_bytes(&view);
        }
        out.bytes += size;
        out.jobs.push(view);
        out.last = here;
    }
    Ok(out)
}

/// Positions `(time, id)` in a list's order, or the ids of rows that have
/// none.
type Positions = Result<Vec<(i64, i64)>, Vec<i64>>;

/// The next `rows` positions after `from`: one state's index, or every
/// state's merged. Or, if some of those rows have a time that is not an
/// integer (SQLite sorts text after every integer, so a walk meets them
/// last), their ids.
fn positions(
    conn: &Connection,
    filter: &Filter,
    from: ListCursor,
    rows: usize,
) -> rusqlite::Result<Positions> {
    let states = filter.states();
    let order = match from.order {
        ListOrder::Due => 0,
        ListOrder::Recent => 1,
    };
    let sql = match filter.tag {
        Some(_) => TAG_POSITION_SQL[order],
        None => POSITION_SQL[order],
    };
    let mut found = Vec::new();
    let mut bad = Vec::new();
    for state in states {
        if from == start(from.order) {
            // A walk's start repairs the times that are not integers, so
            // that the walk meets those rows in their new places. (The
            // seeks below reach them only last in order `due`, and never
            // in order `recent`.)
            let unplaced = match from.order {
                ListOrder::Due => UNPLACED_SQL[0],
                ListOrder::Recent => UNPLACED_SQL[1],
            };
            let mut stmt = conn.prepare_cached(unplaced)?;
            for id in stmt.query_map(params![state.as_str(), rows as i64], |r| r.get(0))? {
                bad.push(id?);
            }
        }
        let mut taken = 0;
        for query in sql {
            let room = rows - taken;
            if room == 0 {
                break;
            }
            let mut stmt = conn.prepare_cached(query)?;
            let read =
                |r: &rusqlite::Row<'_>| Ok((r.get_ref(0)?.as_i64().ok(), r.get::<_, i64>(1)?));
            let (state, room) = (state.as_str(), room as i64);
            let rows: Vec<(Option<i64>, i64)> = match &filter.tag {
                Some(tag) => stmt
                    .query_map(params![state, from.at, from.id, room, tag], read)?
                    .collect::<rusqlite::Result<_>>()?,
                None => stmt
                    .query_map(params![state, from.at, from.id, room], read)?
                    .collect::<rusqlite::Result<_>>()?,
            };
            for row in rows {
                match row {
                    (Some(at), id) => found.push((at, id)),
                    (None, id) => bad.push(id),
                }
                taken += 1;
            }
        }
    }
    match from.order {
        ListOrder::Due => found.sort_unstable(),
        ListOrder::Recent => found.sort_unstable_by(|a, b| b.cmp(a)),
    }
    if !bad.is_empty() {
        return Ok(Err(bad));
    }
    found.truncate(rows);
    if let Some(before) = filter.due_before {
        // In order `due` the positions are due times, in order: past the
        // first one at or after `before`, none is listed, and a short step
        // ends the list.
        found.retain(|(at, _)| *at < before);
    }
    Ok(Ok(found))
}
