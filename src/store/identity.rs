//! Telling whose file is at `store.path` from its bytes alone, before
//! SQLite opens it for writing.
//!
//! Opening a file read-write, even just to read a pragma, lets SQLite fold
//! an unflushed write-ahead log into it and delete the log (and creates a
//! `-shm`), so a file that is then refused would no longer be as its owner
//! left it. This module reads the database header (the first 100 bytes) and,
//! when the header alone does not say the file is ours, the newest committed
//! copy of page 1 in the `-wal` file: our own database can have its first
//! migration only in the log, if the daemon died right after creating it.
//! It reads and never writes; the checks that need SQL come after, in
//! [`super::schema::open`].

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// What the bytes at `store.path` are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Nothing there yet, an empty file, or an SQLite database with an
    /// empty schema and no application id: ours to set up.
    New,
    /// A queue database of ours, at this schema version.
    Ours { version: i64 },
    /// Not ours; the words say why.
    Foreign(String),
}

const MAGIC: &[u8; 16] = b"SQLite format 3\0";
const HEADER: usize = 100;

/// Reads the identity of the database at `path` without changing it or
/// the files beside it.
pub fn inspect(path: &Path, coax_id: i64) -> io::Result<Identity> {
    let db = match head(path) {
        Ok(header) => header,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Identity::New),
        Err(e) => return Err(e),
    };
    let from_db = match &db {
        None => None,
        Some(bytes) if bytes.len() < HEADER || !bytes.starts_with(MAGIC) => {
            return Ok(Identity::Foreign("it is not an SQLite database".into()));
        }
        Some(bytes) => Some(bytes.clone()),
    };
    let page = match from_db.as_deref().map(Page1::read) {
        Some(p) if p.app_id == coax_id => Some(p),
        // The header does not say it is ours: the log may hold a newer page 1.
        other => newest_logged_page1(&wal_path(path))?
            .map(|bytes| Page1::read(&bytes))
            .or(other),
    };
    Ok(match page {
        None => Identity::New,
        Some(p) if p.app_id == coax_id => Identity::Ours { version: p.version },
        Some(p) if p.app_id == 0 && p.empty_schema => Identity::New,
        Some(p) if p.app_id == 0 => Identity::Foreign(
            "it is an SQLite database of another application (no application_id, and it has tables)"
                .into(),
        ),
        Some(p) => Identity::Foreign(format!(
            "it is an SQLite database of another application (application_id {:#x})",
            p.app_id
        )),
    })
}

/// The first page's header, or `None` for an empty file. Reads at most a
/// page's worth, however large the file.
fn head(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(65_536).read_to_end(&mut bytes)?;
    Ok((!bytes.is_empty()).then_some(bytes))
}

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// What page 1 says about the file.
struct Page1 {
    app_id: i64,
    version: i64,
    /// The schema table (rooted on page 1) has no entries.
    empty_schema: bool,
}

impl Page1 {
    fn read(page: &[u8]) -> Page1 {
        let int = |at: usize| {
            page.get(at..at + 4).map_or(0, |b| {
                i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            })
        };
        // A leaf table page (0x0d) with no cells: nothing in sqlite_schema.
        let cells = page
            .get(103..105)
            .map_or(1, |b| u16::from_be_bytes([b[0], b[1]]));
        Page1 {
            app_id: int(68),
            version: int(60),
            empty_schema: page.get(HEADER) == Some(&0x0d) && cells == 0,
        }
    }
}

/// The newest copy of page 1 that a committed transaction in the log at
/// `wal` wrote, checked as SQLite checks it (salts and running checksums).
fn newest_logged_page1(wal: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(wal) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut log = BufReader::new(file);
    let mut header = [0_u8; 32];
    if log.read_exact(&mut header).is_err() {
        return Ok(None);
    }
    let word = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let magic = word(&header, 0);
    if magic & !1 != 0x377f_0682 {
        return Ok(None);
    }
    let big_endian = magic & 1 == 1;
    let page_size = word(&header, 8) as usize;
    if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
        return Ok(None);
    }
    let salts = [word(&header, 16), word(&header, 20)];
    let mut sum = checksum((0, 0), &header[..24], big_endian);
    if sum != (word(&header, 24), word(&header, 28)) {
        return Ok(None);
    }
    let mut frame = vec![0_u8; 24 + page_size];
    let (mut pending, mut committed) = (None, None);
    while log.read_exact(&mut frame).is_ok() {
        if [word(&frame, 8), word(&frame, 12)] != salts {
            break;
        }
        sum = checksum(sum, &frame[..8], big_endian);
        sum = checksum(sum, &frame[24..], big_endian);
        if sum != (word(&frame, 16), word(&frame, 20)) {
            break;
        }
        if word(&frame, 0) == 1 {
            pending = Some(frame[24..].to_vec());
        }
        if word(&frame, 4) != 0 && pending.is_some() {
            // A commit frame: what the transaction wrote now counts.
            committed = pending.take();
        }
    }
    Ok(committed)
}

/// SQLite's WAL checksum, continued from `(s0, s1)` over `data`.
fn checksum((mut s0, mut s1): (u32, u32), data: &[u8], big_endian: bool) -> (u32, u32) {
    let word = |b: &[u8]| {
        let b = [b[0], b[1], b[2], b[3]];
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    for pair in data.chunks_exact(8) {
        s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}
