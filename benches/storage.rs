//! Storage: what keeping every database in the repository costs a writer, and how fast the
//! repository gives a database back.
//!
//! The real `spg99 serve` (manual clock: idle stops, daily backups and lost workers come when
//! the benchmark says) and `spg99 worker --compute postgres` run as their own processes, with
//! a directory repository, or an S3 one in SeaweedFS (as the tests run it). Measured, against
//! baselines from the same run:
//!
//! - **pgbench TPC-B** (scale 10, 4 clients, 2 threads, `SPG99_BENCH_SECS` each, default 20)
//!   against a writer that archives into a repository and one without a repository
//!   (`--storage none`), the rounds interleaved (`SPG99_BENCH_ROUNDS`, default 3); while it
//!   runs with archiving, the archive lag: finished WAL segments not yet archived, sampled
//!   every 250 ms.
//! - **stop** (the idle stop, from the clock passing the idle timeout to `stopped`), after
//!   3 s of pgbench: with the final archive (switch, wait for the archiver) and without a
//!   repository; then **resume** (a checkout, a connection with SCRAM and `SELECT 1`).
//! - **restore onto an empty worker**: a database of `SPG99_BENCH_SCALE` (default 68, about
//!   1 GiB) loaded by `pgbench -i`, backed up by the daily policy and stopped; its worker and
//!   disk gone, a new worker with an empty disk, the time from the checkout to the first row
//!   of `SELECT 1`. The baseline: pgBackRest's own `restore` of the same backup run by hand
//!   into an empty directory, then `postgres` started on it (recovery to the end of the
//!   archive, as the worker does) and `SELECT 1`. From the directory repository and from S3.
//!
//! Run: `cargo bench --bench storage` (as root, or a user that can run PostgreSQL; PostgreSQL
//! and pgBackRest from `scripts/install-engines.sh`, SeaweedFS from `scripts/test.sh`).
//! Prints markdown tables and writes `target/bench/storage.json`.

mod support;

#[allow(dead_code)]
#[path = "../tests/it/object_store.rs"]
mod object_store;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::platform::{tps, Platform};
use support::postgres::Bare;
use support::Row;

/// A WAL segment's number from its file name (16 MiB segments).
fn segment(name: &str) -> Option<u64> {
    let log = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
    Some(log * 256 + seg)
}

/// Samples, every 250 ms until `stop`, how many finished WAL segments wait to be archived,
/// and for how long the archiver has been behind.
async fn lag(client: tokio_postgres::Client, stop: Arc<AtomicBool>) -> (Vec<u64>, f64) {
    let (mut waiting, mut behind) = (Vec::new(), 0f64);
    while !stop.load(Ordering::Relaxed) {
        let row = client
            .query_one(
                "SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, ''), \
                 coalesce(extract(epoch FROM now() - last_archived_time)::float8, 0) \
                 FROM pg_stat_archiver",
                &[],
            )
            .await
            .unwrap();
        let (current, last): (String, String) = (row.get(0), row.get(1));
        let n = match (segment(&current), segment(&last)) {
            (Some(c), Some(l)) => c.saturating_sub(l + 1),
            _ => 0,
        };
        waiting.push(n);
        if n > 0 {
            behind = behind.max(row.get::<_, f64>(2));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (waiting, behind)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// pgBackRest's own restore of `timeline`'s newest backup into an empty `dir`, by hand, then
/// `postgres` on it to the end of the archive and `SELECT 1`: µs.
async fn by_hand(conf: &Path, timeline: &str, dir: &Path, env: &[(&'static str, String)]) -> u64 {
    use spg99_worker::postgres::process::{command, Owner};
    let owner = Owner::for_servers().unwrap();
    let _ = std::fs::remove_dir_all(dir);
    {
        // Made for the servers' user, which pgBackRest runs as.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
        if let Some(o) = owner {
            o.chown(dir).unwrap();
        }
    }
    let t = Instant::now();
    let out = command(Path::new("pgbackrest"), owner)
        .arg(format!("--config={}", conf.display()))
        .arg(format!("--stanza={timeline}"))
        .arg(format!("--pg1-path={}", dir.display()))
        .args(["--archive-mode=off", "restore"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // As the worker runs it: no connection before the recovery ends.
    let mut bare = Bare::at(dir, &[("hot_standby", "off".into())]);
    bare.env = env.to_vec();
    bare.first_row(t).await
}

struct Restores {
    repository: &'static str,
    load_s: f64,
    backup_and_stop_s: f64,
    storage_bytes: u64,
    platform: Row,
    by_hand: Row,
}

/// A database of `scale` loaded, backed up by the daily policy and stopped; then `rounds`
/// restores onto an empty worker, each against one by hand.
async fn restores(
    repository: &'static str,
    dir: &Path,
    storage: &str,
    env: Vec<(&'static str, String)>,
    scale: u64,
    rounds: usize,
) -> Restores {
    let mut p = Platform::start(dir, storage, env.clone()).await;
    p.create("big").await;
    let (backend, lease) = p.checkout("big").await;
    let first = p.until("big", |d| d["last_backup_at"].is_string()).await;
    let t = Instant::now();
    p.pgbench(&backend, "big", &["-i", "-q", "-s", &scale.to_string()]);
    let load_s = t.elapsed().as_secs_f64();
    // The load reported over first: a day's jump of the clock with the load high would move
    // the database to a bigger profile during its daily backup.
    p.until_quiet("big").await;
    // A day later (and an hour: the backup's time is the worker's, ahead of the manual
    // clock): the daily backup, then the idle stop (which waits for it).
    p.release(&lease).await;
    p.advance(90_000.0).await;
    let t = Instant::now();
    let d = p
        .until("big", |d| {
            d["state"] == "stopped" && d["last_backup_at"] != first["last_backup_at"]
        })
        .await;
    let backup_and_stop_s = t.elapsed().as_secs_f64();
    let timeline = d["timeline"].as_str().unwrap().to_owned();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        p.new_worker().await;
        let (took, lease) = p.open("big").await;
        ours.push(took);
        p.idle_stop("big", &lease).await;
        theirs.push(by_hand(&p.pgbackrest_conf(), &timeline, &dir.join("by-hand"), &env).await);
    }
    Restores {
        repository,
        load_s,
        backup_and_stop_s,
        storage_bytes: d["storage_bytes"].as_u64().unwrap(),
        platform: Row::new(format!("restore onto an empty worker ({repository})"), ours),
        by_hand: Row::new(
            format!("pgbackrest restore by hand + start ({repository})"),
            theirs,
        ),
    }
}

fn main() {
    let secs = support::env_or("SPG99_BENCH_SECS", 20);
    let rounds = support::env_or("SPG99_BENCH_ROUNDS", 3) as usize;
    let scale = support::env_or("SPG99_BENCH_SCALE", 68);
    let tmp = support::scratch();
    let rt = support::runtime();
    let mut json = Vec::new();
    // `SPG99_BENCH_PARTS`: `writes` (pgbench, stops, resumes), `restores`; both by default.
    let parts = std::env::var("SPG99_BENCH_PARTS").unwrap_or_else(|_| "writes,restores".into());
    rt.block_on(async {
        if parts.contains("writes") {
        // ---- pgbench with archiving and without a repository, interleaved
        let on = Platform::start(
            &tmp.path().join("on"),
            &tmp.path().join("on/repo").display().to_string(),
            vec![],
        )
        .await;
        let off = Platform::start(&tmp.path().join("off"), "none", vec![]).await;
        let mut held = Vec::new();
        for p in [&on, &off] {
            p.create("tpcb").await;
            let (backend, lease) = p.checkout("tpcb").await;
            p.pgbench(&backend, "tpcb", &["-i", "-q", "-s", "10"]);
            held.push((backend, lease));
        }
        on.until("tpcb", |d| d["last_backup_at"].is_string()).await;
        let (mut tps_on, mut tps_off, mut waiting, mut behind) =
            (Vec::new(), Vec::new(), Vec::new(), 0f64);
        let run = ["-c", "4", "-j", "2", "-T", &secs.to_string()];
        for round in 0..rounds {
            for archiving in if round % 2 == 0 { [true, false] } else { [false, true] } {
                let (p, backend) = if archiving { (&on, &held[0].0) } else { (&off, &held[1].0) };
                if archiving {
                    let stop = Arc::new(AtomicBool::new(false));
                    let sampler = tokio::spawn(lag(p.session(backend, "tpcb").await, stop.clone()));
                    let out = tokio::task::block_in_place(|| p.pgbench(backend, "tpcb", &run));
                    stop.store(true, Ordering::Relaxed);
                    let (w, b) = sampler.await.unwrap();
                    waiting.extend(w);
                    behind = behind.max(b);
                    tps_on.push(tps(&out));
                } else {
                    let out = tokio::task::block_in_place(|| p.pgbench(backend, "tpcb", &run));
                    tps_off.push(tps(&out));
                }
            }
        }
        let (on_tps, off_tps) = (median(tps_on.clone()), median(tps_off.clone()));
        waiting.sort_unstable();
        println!("\n| pgbench TPC-B, scale 10, c4 j2, {secs} s × {rounds} | tps (median) | rounds | vs no repository |");
        println!("|---|---:|---|---:|");
        println!("| no repository (`--storage none`) | {off_tps:.0} | {tps_off:.0?} | 1.00 |");
        println!("| archiving into the repository | {on_tps:.0} | {tps_on:.0?} | {:.2} |", on_tps / off_tps);
        let p50 = support::percentile(&waiting, 0.5);
        let max = waiting.last().copied().unwrap_or(0);
        println!(
            "\nArchive lag under pgbench: finished segments waiting p50 {p50} ({} MiB), max {max} ({} MiB); the archiver at most {behind:.1} s behind.",
            p50 * 16,
            max * 16
        );
        json.push(format!(
            r#"{{"bench":"tpcb","tps_on":{on_tps},"tps_off":{off_tps},"lag_segments_p50":{p50},"lag_segments_max":{max},"lag_secs_max":{behind}}}"#
        ));

        // ---- stops (with the final archive and without) and resumes
        let (mut stop_on, mut stop_off, mut resume_on, mut resume_off) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds.max(5) {
            for (i, p) in [&on, &off].into_iter().enumerate() {
                let (backend, lease) = held[i].clone();
                tokio::task::block_in_place(|| p.pgbench(&backend, "tpcb", &["-c", "2", "-T", "3"]));
                let stopped = p.idle_stop("tpcb", &lease).await;
                let (resumed, lease) = p.open("tpcb").await;
                let backend = p.describe("tpcb").await["backend_addr"].as_str().unwrap().to_owned();
                held[i] = (backend, lease);
                if i == 0 {
                    stop_on.push(stopped);
                    resume_on.push(resumed);
                } else {
                    stop_off.push(stopped);
                    resume_off.push(resumed);
                }
            }
        }
        let stops = [
            Row::new("idle stop, no repository", stop_off),
            Row::new("idle stop with the final archive", stop_on),
            Row::new("resume, no repository", resume_off),
            Row::new("resume, archiving", resume_on),
        ];
        println!("\n| after 3 s of pgbench | p50 ms | max ms | p50 vs no repository |");
        println!("|---|---:|---:|---:|");
        for (i, r) in stops.iter().enumerate() {
            let base = &stops[i / 2 * 2];
            println!("| {} | {:.1} | {:.1} | {:.2} |", r.workload, r.ms(0.5), r.ms(1.0), r.ms(0.5) / base.ms(0.5));
            json.push(format!(r#"{{"bench":"{}","p50_ms":{},"max_ms":{}}}"#, r.workload, r.ms(0.5), r.ms(1.0)));
        }
        drop(on);
        drop(off);
        }
        if !parts.contains("restores") {
            return;
        }

        // ---- restores of a large database onto an empty worker
        let mut all = vec![
            restores("directory", &tmp.path().join("posix"), &tmp.path().join("posix/repo").display().to_string(), vec![], scale, rounds).await,
        ];
        let store = object_store::ObjectStore::start(&tmp.path().join("s3"));
        let keys = vec![
            ("SPG99_STORAGE_ACCESS_KEY", object_store::ACCESS_KEY.to_owned()),
            ("SPG99_STORAGE_SECRET_KEY", object_store::SECRET_KEY.to_owned()),
            ("PGBACKREST_REPO1_S3_KEY", object_store::ACCESS_KEY.to_owned()),
            ("PGBACKREST_REPO1_S3_KEY_SECRET", object_store::SECRET_KEY.to_owned()),
        ];
        all.push(restores("S3", &tmp.path().join("s3p"), &store.repository("bench"), keys, scale, rounds).await);
        drop(store);
        println!("\n| database of pgbench scale {scale} | p50 s | max s | p50 vs by hand |");
        println!("|---|---:|---:|---:|");
        for r in &all {
            for row in [&r.by_hand, &r.platform] {
                println!("| {} | {:.2} | {:.2} | {:.2} |", row.workload, row.ms(0.5) / 1e3, row.ms(1.0) / 1e3, row.ms(0.5) / r.by_hand.ms(0.5));
                json.push(format!(r#"{{"bench":"{}","p50_ms":{},"max_ms":{}}}"#, row.workload, row.ms(0.5), row.ms(1.0)));
            }
        }
        for r in &all {
            println!(
                "\n{}: repository {:.0} MiB for the database; pgbench -i {:.1} s; the daily backup and the idle stop after it {:.1} s.",
                r.repository,
                r.storage_bytes as f64 / 1048576.0,
                r.load_s,
                r.backup_and_stop_s
            );
        }
    });
    support::write_results("storage", &json);
}
