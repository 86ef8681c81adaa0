//! The stream's own checks, without a store: the header, each line, and
//! that records come back as they went.

use super::*;

fn line_error(result: Result<impl std::fmt::Debug, TransferError>) -> (u64, String) {
    match result {
        Err(TransferError::Line { line, detail }) => (line, detail),
        other => panic!("expected a line error, got {other:?}"),
    }
}

#[test]
fn a_header_must_name_the_format_and_a_known_version() {
    assert!(check_header(1, r#"{"format":"coax-scheduler-export","version":1}"#).is_ok());
    let (line, detail) = line_error(check_header(1, r#"{"version":1}"#));
    assert_eq!(line, 1);
    assert!(detail.contains("not the header"), "{detail}");
    line_error(check_header(1, "[]"));
    match check_header(1, r#"{"format":"coax-scheduler-export","version":2}"#) {
        Err(TransferError::Version { found, .. }) => assert_eq!(found, "2"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_line_that_is_not_a_record_is_named_with_its_fault() {
    for (text, says) in [
        ("{", "not JSON"),
        ("[1]", "not a JSON object"),
        (r#"{"jobs":1}"#, "no \"type\""),
        (r#"{"type":7}"#, "not a record type"),
        (r#"{"type":"jobs"}"#, "unknown record type"),
        (r#"{"type":"end","jobs":1}"#, "missing field `schedules`"),
        (
            r#"{"type":"end","jobs":1,"schedules":0,"extra":1}"#,
            "unknown field `extra`",
        ),
        (r#"{"type":"schedule","name":"x"}"#, "missing field `cron`"),
    ] {
        let (line, detail) = line_error(parse(7, text));
        assert_eq!(line, 7);
        assert!(detail.contains(says), "{text}: {detail}");
    }
}

#[test]
fn a_job_record_comes_back_as_it_went() {
    let cells: [Cell; Job::COLUMNS.len()] = std::array::from_fn(|i| Cell::Integer(i as i64));
    let attempt = Attempt::from_cells(std::array::from_fn(|i| Cell::RawText(vec![0xff, i as u8])));
    let job = Job::from_cells(
        42,
        cells,
        vec!["a".into()],
        Some(Cell::Text("[ \"a\" ]".into())),
        vec![attempt],
    );
    let mut out = Vec::new();
    write_line(
        &mut out,
        &Tagged {
            kind: "job",
            record: &job,
        },
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with(r#"{"type":"job","id":42,"key":0,"#),
        "{text}"
    );
    assert!(text.ends_with("}\n"), "{text}");
    match parse(2, text.trim_end()).unwrap() {
        Record::Job(back) => assert_eq!(*back, job),
        _ => panic!("not a job: {text}"),
    }
}

#[test]
fn lines_are_numbered_from_one_and_blank_ones_skipped() {
    let mut lines = Lines {
        input: "a\n\n  \nb\r\nc".as_bytes(),
        line: 0,
        bytes: Vec::new(),
    };
    let mut seen = Vec::new();
    while let Some((n, text)) = lines.next().unwrap() {
        seen.push((n, text.to_owned()));
    }
    assert_eq!(
        seen,
        [(1, "a".into()), (4, "b".into()), (5, "c".into())] as [(u64, String); 3]
    );
    let mut bad = Lines {
        input: &b"ok\n\xff\n"[..],
        line: 0,
        bytes: Vec::new(),
    };
    assert!(bad.next().unwrap().is_some());
    assert_eq!(line_error(bad.next()).0, 2);
}

/// A job record with `id`, `state` and the job it follows.
fn chained(id: i64, state: &str, after: Option<i64>) -> Job {
    let mut job = Job::from_cells(
        id,
        std::array::from_fn(|_| Cell::Null),
        Vec::new(),
        None,
        Vec::new(),
    );
    job.state = Cell::Text(state.to_owned());
    job.after = after.map_or(Cell::Null, Cell::Integer);
    job
}

#[test]
fn ids_outside_what_clients_can_address_are_refused() {
    let mut chains = checks::Chains::default();
    for id in [0, -1, checks::MAX_ID + 1, i64::MAX] {
        let (line, detail) = line_error(chains.job(3, &chained(id, "sent", None)));
        assert_eq!(line, 3);
        assert!(
            detail.contains(&format!("job id {id} is outside")),
            "{detail}"
        );
    }
    assert!(chains.job(4, &chained(1, "sent", None)).is_ok());
    assert!(
        chains
            .job(5, &chained(checks::MAX_ID, "sent", None))
            .is_ok()
    );
}

#[test]
fn a_waiting_job_needs_a_parent_that_has_yet_to_end() {
    let refused = |jobs: &[Job], says: &str| {
        let mut chains = checks::Chains::default();
        for (i, job) in jobs.iter().enumerate() {
            chains.job(i as u64 + 2, job).unwrap();
        }
        let (_, detail) = line_error(chains.finish());
        assert!(detail.contains(says), "{detail}");
    };
    refused(&[chained(2, "waiting", Some(9))], "does not hold");
    refused(&[chained(2, "waiting", Some(2))], "follows itself");
    refused(&[chained(2, "waiting", None)], "has no job it follows");
    refused(
        &[chained(1, "sent", None), chained(2, "waiting", Some(1))],
        "already ended",
    );

    // Any order: a follower may come before its parent.
    let mut chains = checks::Chains::default();
    for job in [
        chained(3, "waiting", Some(2)),
        chained(2, "waiting", Some(1)),
        chained(1, "held", None),
    ] {
        chains.job(2, &job).unwrap();
    }
    assert!(chains.finish().is_ok());
}

#[test]
fn a_line_longer_than_the_cap_is_refused_before_it_is_read_whole() {
    let mut long = vec![b'x'; MAX_LINE_BYTES as usize + 10];
    long.push(b'\n');
    let mut lines = Lines {
        input: &long[..],
        line: 0,
        bytes: Vec::new(),
    };
    let (line, detail) = line_error(lines.next().map(|l| l.map(|(n, _)| n)));
    assert_eq!(line, 1);
    assert!(detail.contains("longer than 16 MiB"), "{detail}");
}

#[test]
fn a_stream_from_a_newer_schema_says_to_import_it_with_that_build() {
    let newer = crate::store::SCHEMA_VERSION + 1;
    let header = format!(r#"{{"format":"coax-scheduler-export","version":1,"schema":{newer}}}"#);
    match check_header(1, &header) {
        Err(e @ TransferError::Newer { .. }) => {
            assert!(e.to_string().contains("newer coax-scheduler"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}
