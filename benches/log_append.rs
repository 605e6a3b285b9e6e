//! Durable appends per second and latency through the committer, next to raw sled in the same
//! run.
//!
//! Four ways to make one ~100-byte record durable, each at 1, 16 and 256 concurrent
//! producers for a fixed time:
//! - `sled batch+flush`: the raw ceiling of group commit. One thread writes batches of N
//!   records (N = producers) with `apply_batch` + `flush()`; every record of a batch waits for
//!   the whole batch. No queue, no decisions, no replies. sled's `flush()` alone is *not*
//!   durable against power loss (see `src/log.rs`).
//! - `sled batch+flush+fdatasync`: the same ceiling at the durability the committer gives.
//! - `sled flush per producer`: N threads each `apply_batch` one record + `flush()`: what a
//!   store without group commit gets.
//! - `committer`: N async producers submit `CreateAccount` commands to the real committer
//!   (queue, decide, group commit with flush + fdatasync, both projections, publish, reply).
//!
//! Run: `cargo bench --bench log_append`. Every cell runs `SPG99_BENCH_ROUNDS` times (default
//! 3, interleaved) for `SPG99_BENCH_SECS` each (default 2) and reports its median round.
//! Prints a markdown table and writes `target/bench/log_append.json`.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::appends;

const PRODUCERS: [usize; 3] = [1, 16, 256];

struct Cell {
    mode: &'static str,
    producers: usize,
    ops: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
}

impl Cell {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

fn finish(mode: &'static str, producers: usize, secs: f64, mut lat: Vec<u64>) -> Cell {
    lat.sort_unstable();
    Cell {
        mode,
        producers,
        ops: lat.len() as u64,
        secs,
        p50_us: support::percentile(&lat, 0.50),
        p99_us: support::percentile(&lat, 0.99),
    }
}

/// The raw ceiling: batches of `producers` ~100-byte records, one writer.
fn sled_batches(dir: &Path, producers: usize, dur: Duration, fdatasync: bool) -> Cell {
    let m = appends::sled_batches(dir, producers, dur, fdatasync, 0);
    let mode = if fdatasync {
        "sled batch+flush+fdatasync"
    } else {
        "sled batch+flush"
    };
    finish(mode, producers, m.secs, m.lat)
}

fn committer(dir: &Path, producers: usize, dur: Duration) -> Cell {
    let m = appends::committer(dir, producers, dur, 0);
    finish("committer", producers, m.secs, m.lat)
}

fn sled_per_producer(dir: &Path, producers: usize, dur: Duration) -> Cell {
    let (db, tree, _) = appends::open_sled(dir);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|p| {
            let (db, tree, stop) = (db.clone(), tree.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = ((p as u64) << 40) | i;
                    let t = Instant::now();
                    let mut batch = sled::Batch::default();
                    batch.insert(&key.to_be_bytes(), appends::record(key, 0));
                    tree.apply_batch(batch).unwrap();
                    db.flush().unwrap();
                    lat.push(t.elapsed().as_micros() as u64);
                    i += 1;
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let lat: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let secs = started.elapsed().as_secs_f64();
    finish("sled flush per producer", producers, secs, lat)
}

/// Of several runs of one cell, the one with the median rate.
fn median(mut runs: Vec<Cell>) -> Cell {
    runs.sort_by(|a, b| a.per_sec().total_cmp(&b.per_sec()));
    runs.swap_remove(runs.len() / 2)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. a filter) is ignored.
    let secs = support::env_or("SPG99_BENCH_SECS", 2);
    let rounds = support::env_or("SPG99_BENCH_ROUNDS", 3).max(1) as usize;
    let dur = Duration::from_secs(secs);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("log_append");
    let fresh = |name: String| {
        let d = root.join(name);
        let _ = std::fs::remove_dir_all(&d);
        d
    };

    // `SPG99_BENCH_PRODUCERS=256` runs one column only (for profiling).
    let only: Option<usize> = std::env::var("SPG99_BENCH_PRODUCERS")
        .ok()
        .and_then(|s| s.parse().ok());
    let producers: Vec<usize> = PRODUCERS
        .into_iter()
        .filter(|n| only.is_none_or(|o| o == *n))
        .collect();
    // `SPG99_BENCH_COMMITTER_ONLY=1` skips the baselines (for profiling).
    let baselines = std::env::var_os("SPG99_BENCH_COMMITTER_ONLY").is_none();
    // Rounds interleave all cells, so that a noisy moment on the shared machine hits one round
    // of each rather than all rounds of one; each cell reports its median round.
    let mut runs: Vec<Vec<Cell>> = Vec::new();
    for round in 0..rounds {
        let mut i = 0;
        let mut record = |cell: Cell| {
            if round == 0 {
                runs.push(Vec::new());
            }
            runs[i].push(cell);
            i += 1;
        };
        for &n in &producers {
            if baselines {
                record(sled_batches(&fresh(format!("batch-{n}")), n, dur, false));
                record(sled_batches(&fresh(format!("batchsync-{n}")), n, dur, true));
                record(sled_per_producer(&fresh(format!("each-{n}")), n, dur));
            }
            record(committer(&fresh(format!("committer-{n}")), n, dur));
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let _ = std::fs::remove_dir_all(&root);
    let cells: Vec<Cell> = runs.into_iter().map(median).collect();

    println!("| producers | mode | appends/s | p50 µs | p99 µs | vs sled batch+flush | vs sled batch+flush+fdatasync |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for &n in &producers {
        let rate = |m: &str| {
            cells
                .iter()
                .find(|c| c.producers == n && c.mode == m)
                .map_or(f64::NAN, Cell::per_sec)
        };
        let (raw, rawsync) = (rate("sled batch+flush"), rate("sled batch+flush+fdatasync"));
        for c in cells.iter().filter(|c| c.producers == n) {
            println!(
                "| {} | {} | {:.0} | {} | {} | {:.2} | {:.2} |",
                n,
                c.mode,
                c.per_sec(),
                c.p50_us,
                c.p99_us,
                c.per_sec() / raw,
                c.per_sec() / rawsync
            );
            json.push(format!(
                "{{\"producers\":{},\"mode\":\"{}\",\"ops\":{},\"secs\":{:.3},\"per_sec\":{:.1},\"p50_us\":{},\"p99_us\":{}}}",
                n, c.mode, c.ops, c.secs, c.per_sec(), c.p50_us, c.p99_us
            ));
        }
    }
    support::write_results("log_append", &json);
}
