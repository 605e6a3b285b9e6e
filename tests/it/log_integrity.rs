//! Given a log whose records were damaged on disk, the server refuses to start and says which
//! record and what is wrong, rather than serving wrong state.

use serde_json::json;

use crate::helpers::{tamper, tempdir, Start, ROOT_TOKEN};

/// A data dir with a few events, server stopped.
fn populated(dir: &std::path::Path) {
    let mut server = Start::new(dir).spawn();
    for i in 0..5 {
        assert_eq!(
            server
                .post("/v2/accounts", ROOT_TOKEN, json!({"name": format!("n{i}")}))
                .status,
            201
        );
    }
    server.terminate();
}

#[test]
fn a_flipped_bit_is_reported_with_its_seq() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    populated(&dir);
    tamper(&dir, 4, |b| b[10] ^= 0x04);
    let (status, stderr) = Start::new(&dir).run_to_failure();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("seq 4") && stderr.contains("checksum mismatch"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_format_version_is_reported() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    populated(&dir);
    tamper(&dir, 7, |b| b[0] = 9);
    let (status, stderr) = Start::new(&dir).run_to_failure();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("seq 7") && stderr.contains("unknown format version 9"),
        "{stderr}"
    );
}

#[test]
fn a_missing_record_is_reported_as_a_gap() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    populated(&dir);
    tamper(&dir, 3, |b| b.clear());
    let (status, stderr) = Start::new(&dir).run_to_failure();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("expected seq 3, found seq 4"), "{stderr}");
}

#[test]
fn a_torn_tail_is_reported_before_replay() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    populated(&dir);
    tamper(&dir, 7, |b| b.truncate(b.len() / 2));
    let (status, stderr) = Start::new(&dir).run_to_failure();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("seq 7"), "{stderr}");
}
