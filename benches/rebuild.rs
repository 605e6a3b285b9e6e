//! Replay speed and cold start, on logs of 1M and 10M events.
//!
//! Each log holds 100 000 accounts and then contact changes on them, so that the log grows
//! while the state stays the size of a real platform's. For each size:
//! - **rebuild**: replay the whole log into fresh projections (decode, checksum, gapless
//!   check, apply), next to a raw sled scan of the same records (no decoding) in the same run;
//! - **cold start**: open the log and recover the state as `spg99 serve` does, without a
//!   snapshot and with one written a thousand events before the head.
//!
//! Run: `cargo bench --bench rebuild` (`SPG99_BENCH_SIZES=1000000,10000000` by default).
//! Prints a markdown table and writes `target/bench/rebuild.json`.

mod support;

use std::path::Path;
use std::time::Instant;

use spg99::log::Log;
use spg99::recovery::{recover, replay};
use spg99_events::{Actor, Envelope, Event, Timestamp};
use spg99_projections::State;
use uuid::Uuid;

const ACCOUNTS: u64 = 100_000;
const BATCH: u64 = 10_000;

fn event(seq: u64) -> Envelope {
    let account = Uuid::from_u128((seq % ACCOUNTS) as u128 + 1);
    let event = if seq <= ACCOUNTS {
        Event::AccountCreated {
            account_id: account,
            name: format!("account {seq}"),
            email: None,
        }
    } else {
        Event::AccountContactSet {
            account_id: account,
            email: format!("ops{seq}@example.com"),
            name: Some("On call".into()),
        }
    };
    Envelope {
        seq,
        at: Timestamp(1_763_000_000_000_000 + seq as i64),
        actor: Actor::ApiKey("0123456789abcdef".into()),
        request_id: format!("req-{seq:012}"),
        account: Some(account),
        tenant: None,
        tenant_id: None,
        db_id: None,
        event,
    }
}

fn build(dir: &Path, events: u64) -> Log {
    let log = Log::open(dir).unwrap();
    let mut seq = 1;
    while seq <= events {
        let end = (seq + BATCH).min(events + 1);
        let batch: Vec<Envelope> = (seq..end).map(event).collect();
        log.write(&batch).unwrap();
        // As the committer does: sync every batch (it also lets sled write pages out).
        log.sync().unwrap();
        seq = end;
    }
    log
}

struct Row {
    events: u64,
    raw_scan_per_sec: f64,
    rebuild_per_sec: f64,
    cold_full_secs: f64,
    cold_snapshot_secs: f64,
    snapshot_replayed: u64,
}

fn main() {
    let sizes: Vec<u64> = std::env::var("SPG99_BENCH_SIZES")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rebuild");
    let mut rows = Vec::new();
    for &n in &sizes {
        let dir = root.join(n.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let started = Instant::now();
        let log = build(&dir, n);
        eprintln!(
            "built {n} events in {:.1}s",
            started.elapsed().as_secs_f64()
        );

        // Raw scan: sled iteration only, for scale; once to warm the cache, once measured.
        for item in log.raw_records() {
            item.unwrap();
        }
        let t = Instant::now();
        let mut bytes = 0usize;
        for item in log.raw_records() {
            bytes += item.unwrap().len();
        }
        let raw = n as f64 / t.elapsed().as_secs_f64();
        assert!(bytes > 0);

        let t = Instant::now();
        let (state, replayed) = replay(&log, State::default(), u64::MAX).unwrap();
        let rebuild = replayed as f64 / t.elapsed().as_secs_f64();
        assert_eq!(state.last_seq, n);

        // A snapshot a thousand events before the head.
        let (at, _) = replay(&log, State::default(), n - 1000).unwrap();
        spg99::snapshot::write(&dir, &at).unwrap();
        drop(log);

        let t = Instant::now();
        let log = Log::open(&dir).unwrap();
        let full = recover(&log, &dir, false).unwrap();
        let cold_full = t.elapsed().as_secs_f64();
        drop(log);
        let t = Instant::now();
        let log = Log::open(&dir).unwrap();
        let snap = recover(&log, &dir, true).unwrap();
        let cold_snapshot = t.elapsed().as_secs_f64();
        assert_eq!(full.state.fingerprint(), snap.state.fingerprint());
        drop(log);

        rows.push(Row {
            events: n,
            raw_scan_per_sec: raw,
            rebuild_per_sec: rebuild,
            cold_full_secs: cold_full,
            cold_snapshot_secs: cold_snapshot,
            snapshot_replayed: snap.replayed,
        });
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("done: {n}");
    }

    println!("| events | raw sled scan (records/s) | rebuild (events/s) | rebuild vs raw scan | cold start, full replay | cold start, snapshot + tail | tail replayed |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} s | {:.2} s | {} |",
            r.events,
            r.raw_scan_per_sec,
            r.rebuild_per_sec,
            r.rebuild_per_sec / r.raw_scan_per_sec,
            r.cold_full_secs,
            r.cold_snapshot_secs,
            r.snapshot_replayed
        );
        json.push(format!(
            "{{\"events\":{},\"raw_scan_per_sec\":{:.0},\"rebuild_per_sec\":{:.0},\"cold_full_secs\":{:.3},\"cold_snapshot_secs\":{:.3},\"tail\":{}}}",
            r.events, r.raw_scan_per_sec, r.rebuild_per_sec, r.cold_full_secs, r.cold_snapshot_secs, r.snapshot_replayed
        ));
    }
    support::write_results("rebuild", &json);
}
