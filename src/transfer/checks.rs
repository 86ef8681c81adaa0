//! The checks an import makes across lines, whichever store it writes to:
//! that ids are ones clients can address, and that every waiting follow-up
//! has a parent whose end will release it. A stream that fails them was
//! not written by `export` (or was edited since), and is refused whole.

use super::{Job, TransferError};
use crate::job::State;
use std::collections::HashMap;

/// The highest id an import takes: 2^53 - 1, the largest integer a JSON
/// client reading numbers as doubles holds exactly, and far enough below
/// SQLite's limit that new ids still count up from the highest.
pub const MAX_ID: i64 = (1 << 53) - 1;

/// What the lines so far have said about jobs.
#[derive(Default)]
pub struct Chains {
    /// Each job's id, and whether it has yet to end (so a follower of it
    /// will be released or cancelled when it does).
    open: HashMap<i64, bool>,
    /// Each waiting job: its line, id and parent.
    waiting: Vec<(u64, i64, Option<i64>)>,
}

impl Chains {
    /// Checks `job`'s id and notes what the end of the stream checks.
    pub fn job(&mut self, line: u64, job: &Job) -> Result<(), TransferError> {
        if !(1..=MAX_ID).contains(&job.id) {
            return Err(TransferError::Line {
                line,
                detail: format!(
                    "job id {} is outside 1 to {MAX_ID}, the ids clients can address",
                    job.id
                ),
            });
        }
        let state = job.state.as_str().and_then(State::parse);
        let open = matches!(
            state,
            Some(State::Scheduled | State::Sending | State::Held | State::Waiting)
        );
        self.open.insert(job.id, open);
        if state == Some(State::Waiting) {
            self.waiting.push((line, job.id, job.after.as_i64()));
        }
        Ok(())
    }

    /// Refuses a waiting job that nothing will release: its parent is
    /// missing, is itself, or has already ended.
    pub fn finish(&self) -> Result<(), TransferError> {
        for &(line, id, parent) in &self.waiting {
            let problem = match parent {
                None => "has no job it follows".to_owned(),
                Some(p) if p == id => "follows itself".to_owned(),
                Some(p) => match self.open.get(&p) {
                    None => format!("follows job {p}, which the stream does not hold"),
                    Some(false) => format!("follows job {p}, which has already ended"),
                    Some(true) => continue,
                },
            };
            return Err(TransferError::Line {
                line,
                detail: format!("job {id} is waiting but {problem}, so it would wait for ever"),
            });
        }
        Ok(())
    }
}
