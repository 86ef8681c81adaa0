//! Moving a queue: `export` writes every job (with its history, key, tags
//! and state) and every recurring schedule as NDJSON, and `import` reads
//! that stream into an empty store, keeping ids.
//!
//! The stream, one JSON object per line:
//!
//! ```text
//! {"format":"coax-scheduler-export","version":1,"schema":10,"exported_at":"…"}
//! {"type":"job","id":1,"key":…,"state":"sent",…,"tags":[…],"history":[{…},…]}
//! …                                         one line per job, in id order
//! {"type":"schedule","name":"…","cron":"…",…}
//! …                                         one line per schedule
//! {"type":"end","jobs":N,"schedules":M}
//! ```
//!
//! The records ([`Job`], [`Attempt`], [`Schedule`]) name what they carry,
//! not where a store keeps it, so another store can read the same stream;
//! each column travels as stored (see [`Cell`]), so a row the daemon found
//! unreadable comes across unchanged too. This module owns the format and
//! its checks: the header, one record per line, and the end line, without
//! which (or with other counts) nothing is imported, since a pipe that broke
//! must not import half a queue. Reading and writing the store is
//! [`crate::store::transfer`]'s for SQLite and
//! [`crate::store::postgres::transfer`]'s for PostgreSQL, behind [`Source`]
//! and [`Sink`].

mod cell;
mod checks;
mod record;

pub use cell::Cell;
pub use record::{Attempt, End, Job, Schedule};

use crate::config::StoreConfig;
use crate::store::StoreError;
use crate::store::postgres::transfer::{PgImporter, PgSnapshot};
pub use crate::store::transfer::Imported;
use crate::store::transfer::{Importer, Snapshot};
use crate::time::{self, Millis};
use serde::Serialize;
use serde_json::Value;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

/// What the header's `format` says.
pub const FORMAT: &str = "coax-scheduler-export";
/// The version of the stream this build writes and reads.
pub const VERSION: u64 = 1;

/// What went wrong moving a queue, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("there is no queue database at {0}; check store.path")]
    Missing(PathBuf),
    #[error(
        "the queue database {path} has schema version {found}, and this build exports version {supported}; export with the coax-scheduler that last ran on it (or start this one on it once, which migrates it)"
    )]
    Schema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "the queue database {path} is not empty ({jobs} jobs, {schedules} schedules); import needs an empty store: point store.path at a new file"
    )]
    NotEmpty {
        path: PathBuf,
        jobs: i64,
        schedules: i64,
    },
    #[error(
        "there is no queue in the PostgreSQL database {0}: it has no coax_schema table; check store.url"
    )]
    NoQueue(String),
    #[error(
        "the PostgreSQL database {database} is not empty ({jobs} jobs, {schedules} schedules); import needs an empty store: point store.url at a new database"
    )]
    PostgresNotEmpty {
        database: String,
        jobs: i64,
        schedules: i64,
    },
    #[error(
        "the PostgreSQL database {database} is in use by {detail}; stop every coax-scheduler daemon on it, then import again"
    )]
    PostgresInUse { database: String, detail: String },
    #[error("the stream is empty: expected an export, starting with its header line")]
    Empty,
    #[error("line {line}: {detail}")]
    Line { line: u64, detail: String },
    #[error(
        "line {line}: export format version {found}; this build reads version {VERSION}: import with a newer coax-scheduler"
    )]
    Version { line: u64, found: String },
    #[error(
        "line {line}: the stream was exported by a newer coax-scheduler (schema version {found}; this build has {supported}): import it with that build or a newer one"
    )]
    Newer {
        line: u64,
        found: i64,
        supported: i64,
    },
    #[error(
        "the stream ends after line {lines} without its end line: it was cut short (a broken pipe or a partial file)"
    )]
    Truncated { lines: u64 },
    #[error(
        "line {line}: the end line counts {} jobs and {} schedules, but the stream holds {} and {}: lines are missing", .end.jobs, .end.schedules, .seen.jobs, .seen.schedules
    )]
    Counts { line: u64, end: End, seen: End },
    #[error("cannot read the stream: {0}")]
    Read(std::io::Error),
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
}

/// The first line of a stream.
#[derive(Debug, Serialize)]
struct Header<'a> {
    format: &'a str,
    version: u64,
    /// The store's schema version at the source, for a person reading it.
    schema: i64,
    exported_at: String,
}

/// A record with its `type` in front.
#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    record: &'a T,
}

/// Writes the store at `db` to `out` as one snapshot, taken at `now`;
/// returns the counts of its end line.
pub fn export(db: &Path, out: &mut dyn Write, now: Millis) -> Result<End, TransferError> {
    export_from(&mut Snapshot::open(db)?, out, now)
}

/// Writes the store that `store` configures (SQLite or PostgreSQL) to
/// `out`, as [`export`] does.
pub fn export_store(
    store: &StoreConfig,
    out: &mut dyn Write,
    now: Millis,
) -> Result<End, TransferError> {
    match &store.postgres {
        Some(pg) => export_from(&mut PgSnapshot::open(pg)?, out, now),
        None => export(&store.path, out, now),
    }
}

/// Reads an export into the store that `store` configures, as [`import`]
/// does.
pub fn import_store(store: &StoreConfig, input: impl BufRead) -> Result<Imported, TransferError> {
    match &store.postgres {
        Some(pg) => import_into(Box::new(PgImporter::begin(pg)?), input),
        None => import(&store.path, input),
    }
}

/// Where an export reads from: one consistent snapshot of a store.
pub trait Source {
    /// The schema version the header names (see [`Header`]).
    fn schema(&self) -> i64;
    /// Hands every job, with its history, to `each`, in id order; how many.
    fn jobs(
        &mut self,
        each: &mut dyn FnMut(Job) -> Result<(), TransferError>,
    ) -> Result<u64, TransferError>;
    /// Hands every recurring schedule to `each`, by name; how many.
    fn schedules(
        &mut self,
        each: &mut dyn FnMut(Schedule) -> Result<(), TransferError>,
    ) -> Result<u64, TransferError>;
}

/// Where an import writes to: one transaction on an empty store, which
/// [`Sink::finish`] commits and dropping the sink rolls back.
pub trait Sink {
    /// Stores `job`, its history and its tags; `line` names it in errors.
    fn job(&mut self, line: u64, job: &Job) -> Result<(), TransferError>;
    /// Stores `schedule`; `line` names it in errors.
    fn schedule(&mut self, line: u64, schedule: &Schedule) -> Result<(), TransferError>;
    /// Fills the derived tables and commits.
    fn finish(self: Box<Self>) -> Result<Imported, TransferError>;
}

impl Source for Snapshot {
    fn schema(&self) -> i64 {
        Snapshot::schema(self)
    }
    fn jobs(
        &mut self,
        each: &mut dyn FnMut(Job) -> Result<(), TransferError>,
    ) -> Result<u64, TransferError> {
        Snapshot::jobs(self, each)
    }
    fn schedules(
        &mut self,
        each: &mut dyn FnMut(Schedule) -> Result<(), TransferError>,
    ) -> Result<u64, TransferError> {
        Snapshot::schedules(self, each)
    }
}

impl Sink for Importer {
    fn job(&mut self, line: u64, job: &Job) -> Result<(), TransferError> {
        Importer::job(self, line, job)
    }
    fn schedule(&mut self, line: u64, schedule: &Schedule) -> Result<(), TransferError> {
        Importer::schedule(self, line, schedule)
    }
    fn finish(self: Box<Self>) -> Result<Imported, TransferError> {
        Importer::finish(*self)
    }
}

/// Writes `source` to `out`, taken at `now`; returns the counts of its end
/// line.
pub fn export_from(
    source: &mut dyn Source,
    out: &mut dyn Write,
    now: Millis,
) -> Result<End, TransferError> {
    let header = Header {
        format: FORMAT,
        version: VERSION,
        schema: source.schema(),
        exported_at: time::format(now),
    };
    write_line(out, &header)?;
    let jobs = source.jobs(&mut |job| {
        write_line(
            out,
            &Tagged {
                kind: "job",
                record: &job,
            },
        )
    })?;
    let schedules = source.schedules(&mut |schedule| {
        write_line(
            out,
            &Tagged {
                kind: "schedule",
                record: &schedule,
            },
        )
    })?;
    let end = End { jobs, schedules };
    write_line(
        out,
        &Tagged {
            kind: "end",
            record: &end,
        },
    )?;
    out.flush().map_err(TransferError::Write)?;
    Ok(end)
}

fn write_line(out: &mut dyn Write, record: &impl Serialize) -> Result<(), TransferError> {
    let mut line =
        serde_json::to_vec(record).map_err(|e| TransferError::Write(std::io::Error::other(e)))?;
    line.push(b'\n');
    out.write_all(&line).map_err(TransferError::Write)
}

/// Reads an export from `input` into the empty store at `db`, in one
/// transaction, line by line: it commits only once the end line has come
/// and its counts agree; on any error nothing is imported.
pub fn import(db: &Path, input: impl BufRead) -> Result<Imported, TransferError> {
    import_into(Box::new(Importer::begin(db)?), input)
}

/// Reads an export from `input` into `sink`, as [`import`] does.
pub fn import_into(
    mut importer: Box<dyn Sink>,
    input: impl BufRead,
) -> Result<Imported, TransferError> {
    let mut lines = Lines {
        input,
        line: 0,
        bytes: Vec::new(),
    };
    let (line, first) = lines.next()?.ok_or(TransferError::Empty)?;
    check_header(line, first)?;
    let mut seen = End::default();
    let mut chains = checks::Chains::default();
    loop {
        let Some((line, text)) = lines.next()? else {
            return Err(TransferError::Truncated { lines: lines.line });
        };
        match parse(line, text)? {
            Record::Job(job) => {
                chains.job(line, &job)?;
                importer.job(line, &job)?;
                seen.jobs += 1;
            }
            Record::Schedule(schedule) => {
                importer.schedule(line, &schedule)?;
                seen.schedules += 1;
            }
            Record::End(end) if end != seen => {
                return Err(TransferError::Counts { line, end, seen });
            }
            Record::End(_) => break,
        }
    }
    if let Some((line, _)) = lines.next()? {
        return Err(TransferError::Line {
            line,
            detail: "a line after the end line".into(),
        });
    }
    chains.finish()?;
    importer.finish()
}

/// The longest line an import reads. An export's line is one job: a
/// payload of at most 512 KiB (escaped, twice that), and its history, each
/// try's texts capped at 4 KiB; a line past this is not one, and is
/// refused before it is held whole in memory.
pub const MAX_LINE_BYTES: u64 = 16 * 1024 * 1024;

/// The lines of the stream, numbered from 1, blank ones skipped; one line
/// in memory at a time.
struct Lines<R> {
    input: R,
    line: u64,
    bytes: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    fn next(&mut self) -> Result<Option<(u64, &str)>, TransferError> {
        loop {
            self.bytes.clear();
            self.line += 1;
            let read = (&mut self.input)
                .take(MAX_LINE_BYTES + 1)
                .read_until(b'\n', &mut self.bytes)
                .map_err(TransferError::Read)?;
            if read == 0 {
                self.line -= 1;
                return Ok(None);
            }
            if read as u64 > MAX_LINE_BYTES {
                return Err(TransferError::Line {
                    line: self.line,
                    detail: format!(
                        "it is longer than {} MiB, so it is not a line of an export (one record per line)",
                        MAX_LINE_BYTES / (1024 * 1024)
                    ),
                });
            }
            if !self.bytes.trim_ascii().is_empty() {
                break;
            }
        }
        let Ok(text) = std::str::from_utf8(&self.bytes) else {
            return Err(TransferError::Line {
                line: self.line,
                detail: "it is not UTF-8 text".into(),
            });
        };
        Ok(Some((self.line, text.trim_end_matches(['\n', '\r']))))
    }
}

fn check_header(line: u64, text: &str) -> Result<(), TransferError> {
    let not_header = || TransferError::Line {
        line,
        detail: format!(
            "not the header of a coax-scheduler export (it starts {{\"format\":\"{FORMAT}\",…}})"
        ),
    };
    let header: Value = serde_json::from_str(text).map_err(|_| not_header())?;
    if header.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(not_header());
    }
    match header.get("version") {
        Some(v) if v.as_u64() == Some(VERSION) => {}
        other => {
            return Err(TransferError::Version {
                line,
                found: other.map_or_else(|| "(none)".to_owned(), Value::to_string),
            });
        }
    }
    // A newer build writes its new columns into every record, which this
    // build would refuse line by line as unknown fields.
    match header.get("schema").and_then(Value::as_i64) {
        Some(found) if found > crate::store::SCHEMA_VERSION => Err(TransferError::Newer {
            line,
            found,
            supported: crate::store::SCHEMA_VERSION,
        }),
        _ => Ok(()),
    }
}

/// One line of the stream after the header.
#[derive(Debug)]
enum Record {
    Job(Box<Job>),
    Schedule(Box<Schedule>),
    End(End),
}

fn parse(line: u64, text: &str) -> Result<Record, TransferError> {
    let bad = |detail: String| TransferError::Line { line, detail };
    let mut value: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(bad("not a JSON object".into()));
    };
    let kind = match object.shift_remove("type") {
        Some(Value::String(kind)) => kind,
        Some(other) => return Err(bad(format!("\"type\" is {other}, not a record type"))),
        None => return Err(bad("it has no \"type\"".into())),
    };
    let invalid = |e: serde_json::Error| bad(format!("not a valid {kind} record ({e})"));
    match kind.as_str() {
        "job" => serde_json::from_value(value)
            .map(|job| Record::Job(Box::new(job)))
            .map_err(invalid),
        "schedule" => serde_json::from_value(value)
            .map(|schedule| Record::Schedule(Box::new(schedule)))
            .map_err(invalid),
        "end" => serde_json::from_value(value)
            .map(Record::End)
            .map_err(invalid),
        _ => Err(bad(format!(
            "unknown record type {kind:?} (expected job, schedule or end)"
        ))),
    }
}

#[cfg(test)]
mod tests;
