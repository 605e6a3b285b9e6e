//! Storage faults: the disk fills, `fdatasync` fails, a WAL segment cannot be made, a snapshot
//! cannot be written — while writers are busy.
//!
//! The promise (docs/durability.md): the committer fail-stops — every later write is 503
//! `log_failed`, `/readyz` is 503 — and reads go on; no acknowledged write is lost and no
//! record is torn; once the fault is gone, a restart recovers from what is durable. A failing
//! snapshot stops nothing.
//!
//! Faults come from `tests/faults/shim.c`, an `LD_PRELOAD` library built here with `cc`, which
//! fails chosen calls on chosen files while a trigger file exists; the full disk is a real one,
//! a small tmpfs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{bin, tempdir, Server, Start, ROOT_TOKEN};

/// The fault library, built once per test run.
fn shim() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/shim.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libspg99fault.so");
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("cc (the fault tests build their LD_PRELOAD library with it)");
        assert!(status.success(), "building {}", src.display());
        out
    })
}

/// `start` with calls `op` (`sync`, `write`) failing on files whose path contains `path`
/// while `trigger` exists.
fn faulty<'a>(start: Start<'a>, op: &str, path: &str, trigger: &Path) -> Start<'a> {
    start
        .env("LD_PRELOAD", shim().display().to_string())
        .env("SPG99_FAULT_OP", op)
        .env("SPG99_FAULT_PATH", path)
        .env("SPG99_FAULT_TRIGGER", trigger.display().to_string())
}

/// What busy writers got: the names acknowledged (201), and every other answer.
#[derive(Default)]
struct Outcomes {
    acked: Mutex<Vec<String>>,
    refused: Mutex<Vec<(u16, String)>>,
}

/// `writers` threads creating accounts until `stop`; each refused write is noted, and the
/// writer carries on (a client retrying).
fn write_until(s: &Server, writers: usize, stop: &AtomicBool, out: &Outcomes, tag: &str) {
    std::thread::scope(|scope| {
        for w in 0..writers {
            scope.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let name = format!("{tag}-{w}-{i}");
                    match s.try_call(
                        "POST",
                        "/v2/accounts",
                        Some(ROOT_TOKEN),
                        Some(&json!({"name": name})),
                    ) {
                        Ok(r) if r.status == 201 => out.acked.lock().unwrap().push(name),
                        Ok(r) => {
                            out.refused
                                .lock()
                                .unwrap()
                                .push((r.status, r.code().to_owned()));
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("the server stopped answering: {e}"),
                    }
                }
            });
        }
    });
}

/// Every account name the server lists.
fn account_names(s: &Server) -> std::collections::BTreeSet<String> {
    s.accounts(1000)
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the writers met `n` refusals (`what` otherwise, after `patience`).
fn until_refused(out: &Outcomes, n: usize, patience: Duration, what: &str) {
    let began = Instant::now();
    while out.refused.lock().unwrap().len() < n {
        assert!(began.elapsed() < patience, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every refusal was the fail-stop's own.
fn all_log_failed(refused: &[(u16, String)]) {
    assert!(
        refused
            .iter()
            .all(|(status, code)| (*status, code.as_str()) == (503, "log_failed")),
        "{refused:?}"
    );
}

/// The log's integrity, checked offline (the server stopped): gapless, decodable, checksums.
fn verify_offline(data: &Path) -> Value {
    let out = Command::new(bin())
        .args(["verify", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    v
}

/// Writers busy, then the fault (at once, or after a first stretch of good writes): writes
/// fail-stop with `log_failed` while reads go on; after the fault is gone, a restart recovers
/// every acknowledged write from an intact log.
fn fail_stops_and_recovers(op: &str, path: &str, from_the_start: bool) {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let trigger = tmp.path().join("fault-on");
    // A first start makes the log, so that the faulty start has something to recover.
    Start::new(&data).spawn().terminate();
    if from_the_start {
        std::fs::write(&trigger, "").unwrap();
    }
    let mut s = faulty(Start::new(&data), op, path, &trigger).spawn();
    let out = Outcomes::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| write_until(&s, 4, &stop, &out, "w"));
        if !from_the_start {
            let began = Instant::now();
            while out.acked.lock().unwrap().len() < 50 {
                assert!(
                    began.elapsed() < Duration::from_secs(30),
                    "writes never went in"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            std::fs::write(&trigger, "").unwrap();
        }
        until_refused(
            &out,
            8,
            Duration::from_secs(30),
            "writes were never refused",
        );
        stop.store(true, Ordering::Relaxed);
    });
    all_log_failed(&out.refused.into_inner().unwrap());
    let ready = s.call("GET", "/readyz", None, None);
    assert_eq!(
        (ready.status, ready.code()),
        (503, "log_failed"),
        "{ready:?}"
    );
    assert!(ready.header("retry-after").is_some());
    // Reads go on, and show every acknowledged write.
    let acked = out.acked.into_inner().unwrap();
    assert_eq!(
        from_the_start,
        acked.is_empty(),
        "{} acknowledged",
        acked.len()
    );
    let listed = account_names(&s);
    let missing: Vec<_> = acked.iter().filter(|n| !listed.contains(*n)).collect();
    assert!(missing.is_empty(), "acknowledged, not listed: {missing:?}");
    assert!(s.stderr().contains("refusing further writes until restart"));

    s.kill9();
    std::fs::remove_file(&trigger).unwrap();
    verify_offline(&data);
    let s = Start::new(&data).spawn();
    let listed = account_names(&s);
    let lost: Vec<_> = acked.iter().filter(|n| !listed.contains(*n)).collect();
    assert!(lost.is_empty(), "acknowledged, lost: {lost:?}");
    assert_eq!(s.call("GET", "/readyz", None, None).status, 200);
    s.create_account("after-the-fault");
}

#[test]
fn a_failing_fdatasync_of_the_wal_stops_writes_and_loses_nothing_acknowledged() {
    fail_stops_and_recovers("sync", "/wal/", false);
}

#[test]
fn a_wal_write_refused_for_space_stops_writes_and_loses_nothing_acknowledged() {
    fail_stops_and_recovers("write", "/wal/", false);
}

#[test]
fn a_wal_segment_that_cannot_be_made_stops_writes_at_the_first_commit() {
    // After a restart the first commit makes the first segment (zero-filled); it fails.
    fail_stops_and_recovers("write", ".wal", true);
}

#[test]
fn a_snapshot_that_cannot_be_written_stops_nothing() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let trigger = tmp.path().join("fault-on");
    std::fs::write(&trigger, "").unwrap();
    let s = faulty(Start::new(&data), "write", "/snapshots/", &trigger)
        .env("SPG99_SNAPSHOT_EVERY_EVENTS", "5")
        .spawn();
    let snapshots = || {
        std::fs::read_dir(data.join("snapshots"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
                    .count()
            })
            .unwrap_or(0)
    };
    for i in 0..30 {
        s.create_account(&format!("a{i}"));
    }
    let began = Instant::now();
    while !s.stderr().contains("snapshot not written") {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "no snapshot was tried"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(snapshots(), 0);
    assert_eq!(s.call("GET", "/readyz", None, None).status, 200);
    s.create_account("still-writing");

    // Once the fault is gone, the next snapshot is written.
    std::fs::remove_file(&trigger).unwrap();
    for i in 0..10 {
        s.create_account(&format!("b{i}"));
    }
    let began = Instant::now();
    while snapshots() == 0 {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "no snapshot after the fault"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tmpfs of `size` mounted at `at`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "mounting a tmpfs (the full-disk test runs as root)"
        );
        Tmpfs(at.to_owned())
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_writes_and_a_restart_after_freeing_space_loses_nothing() {
    let tmp = tempdir();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), "48m");
    let data = disk.0.join("data");
    let mut s = Start::new(&data).spawn();
    // The first write makes the WAL's first segment; then the disk is filled but for a little.
    s.create_account("first");
    let filler = disk.0.join("filler");
    let fill = disk.free_bytes().saturating_sub(768 << 10);
    let ok = Command::new("fallocate")
        .args(["-l", &fill.to_string()])
        .arg(&filler)
        .status()
        .unwrap();
    assert!(ok.success());

    let out = Outcomes::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| write_until(&s, 4, &stop, &out, "a-name-long-enough-to-fill-a-disk-soon"));
        until_refused(&out, 8, Duration::from_secs(120), "the disk never filled");
        stop.store(true, Ordering::Relaxed);
    });
    all_log_failed(&out.refused.into_inner().unwrap());
    assert_eq!(s.call("GET", "/readyz", None, None).code(), "log_failed");
    assert!(
        s.stderr().contains("No space left on device"),
        "{}",
        s.stderr()
    );
    let acked = out.acked.into_inner().unwrap();
    assert!(!acked.is_empty());
    let listed = account_names(&s);
    assert!(
        acked.iter().all(|n| listed.contains(n)),
        "reads lost a write"
    );

    s.kill9();
    std::fs::remove_file(&filler).unwrap();
    let v = verify_offline(&data);
    let s = Start::new(&data).spawn();
    let listed = account_names(&s);
    let lost: Vec<_> = acked.iter().filter(|n| !listed.contains(*n)).collect();
    assert!(lost.is_empty(), "acknowledged, lost: {lost:?}");
    assert!(listed.contains("first"));
    s.create_account("after-the-fault");
    drop(s);
    eprintln!("full disk: {} acknowledged, log {v}", acked.len());
}
