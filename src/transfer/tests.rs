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
        text: String::new(),
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
        text: String::new(),
    };
    assert!(bad.next().unwrap().is_some());
    assert_eq!(line_error(bad.next()).0, 2);
}
