//! SIGKILL proves that an acknowledged write is out of the process; power loss needs more:
//! the device must have been told to persist it. These tests watch the server's system calls
//! and check that every acknowledgement is preceded by `fdatasync` of the log's write-ahead
//! file, the call that makes the kernel flush the device's write cache (sled's own `flush` ends
//! in `sync_file_range`, which does not).

use std::collections::HashMap;
use std::process::Command;

use serde_json::json;

use crate::helpers::{tempdir, Start, ROOT_TOKEN};

#[test]
fn every_acknowledgement_follows_an_fdatasync_of_the_log() {
    let found = Command::new("strace").arg("-V").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "this test needs strace (scripts/test.sh installs it)"
    );
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let trace = tmp.path().join("trace.txt");
    let trace_arg = trace.to_str().unwrap();
    let mut server = Start::new(&dir)
        .under(&[
            "strace",
            "-f",
            "-y",
            "-s",
            "24",
            "-e",
            "trace=execve,fdatasync,fsync,sync_file_range,write,writev,sendto,sendmsg",
            "-o",
            trace_arg,
        ])
        .spawn();

    const WRITES: usize = 5;
    for i in 0..WRITES {
        let r = server.post(
            "/v2/accounts",
            ROOT_TOKEN,
            json!({"name": format!("durable {i}")}),
        );
        assert_eq!(r.status, 201);
    }
    let text = std::fs::read_to_string(&trace).unwrap();
    // strace detaches when killed and would leave the server running: kill the server first.
    let server_pid = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().next())
        .expect("the trace starts with the server's execve");
    let _ = Command::new("kill").args(["-9", server_pid]).status();
    server.kill9();

    // Walk the trace in order: an fdatasync of a `…/data/wal/*.wal` segment must complete between any two
    // acknowledgements (the requests were sequential, so each needs its own).
    let wal_dir = format!("{}/wal/", dir.display());
    let mut pending: HashMap<&str, bool> = HashMap::new();
    let mut synced = false;
    let mut acknowledged = 0;
    for line in text.lines() {
        let pid = line.split_whitespace().next().unwrap_or("");
        if line.contains("fdatasync(") && line.contains(&wal_dir) && line.contains(".wal>") {
            if line.contains("<unfinished") {
                pending.insert(pid, true);
            } else if line.ends_with("= 0") {
                synced = true;
            }
        } else if line.contains("<... fdatasync resumed>") && line.ends_with("= 0") {
            if pending.remove(pid).is_some() {
                synced = true;
            }
        } else if line.contains("HTTP/1.1 201") {
            assert!(
                synced,
                "acknowledgement {acknowledged} was sent before the log was fdatasynced:\n{line}"
            );
            synced = false;
            acknowledged += 1;
        }
    }
    assert_eq!(
        acknowledged, WRITES,
        "every 201 was seen in the trace:\n{text}"
    );
}
