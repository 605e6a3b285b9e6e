//! Branches: how soon a branch of a running database answers, against a raw copy of the same
//! data directory; and what the filesystem that makes branches cheap costs writes.
//!
//! The real `spg99 serve` (manual clock) with a directory repository and one
//! `spg99 worker --compute postgres` whose storage is an XFS filesystem made with
//! `-m reflink=1`, loop-mounted by the benchmark (so it runs as root). Measured:
//!
//! - **branch** of a running database loaded by `pgbench -i` at scale 7 (about 100 MiB) and 68
//!   (about 1 GiB): from `POST /v2/tenants/shop/dbs {"parent": ...}` to the first row of
//!   `SELECT 1` on the branch (a checkout that waits until it serves, a connection with
//!   SCRAM). `SPG99_BENCH_BRANCHES` rounds each (default 6); after each, the branch's first
//!   backup is waited for and the branch deleted, so that rounds do not overlap.
//! - **baseline**: the same parent's data directory copied raw by `cp -a --reflink=always`
//!   on the same filesystem, `postgres` started on the copy (crash recovery from the last
//!   checkpoint) and `SELECT 1` over its socket: the floor a branch's copy and start can
//!   reach (a raw copy of a live directory is not a consistent one: timing only).
//! - **TPC-B** (pgbench scale 10, 4 clients, 2 threads, `SPG99_BENCH_SECS` each, default 20,
//!   `SPG99_BENCH_ROUNDS` interleaved rounds, default 3) on a bare PostgreSQL whose data
//!   directory is on that XFS filesystem, against one on the machine's ext4.
//!
//! Run: `cargo bench --bench branches` (as root; PostgreSQL and pgBackRest from
//! `scripts/install-engines.sh`, xfsprogs). Prints markdown tables and writes
//! `target/bench/branches.json`.

mod support;

#[allow(dead_code)]
#[path = "../tests/it/reflinks.rs"]
mod reflinks;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use reflinks::Reflinks;
use support::http::{delete, post, Conn};
use support::platform::{tps, Platform};
use support::postgres::{Bare, PORT};
use support::{Row, ROOT};

/// A branch of `parent` made, answering `SELECT 1`: µs from the request.
async fn branch(p: &Platform, parent: &str, name: &str) -> u64 {
    let t = Instant::now();
    let mut conn = Conn::open(&p.addr).await;
    let body = format!(r#"{{"name":"{name}","size":"L1","parent":"{parent}"}}"#);
    let status = conn.call(&post("/v2/tenants/shop/dbs", ROOT, &body)).await;
    assert_eq!(status, 201, "{}", conn.body());
    let (backend, lease) = p.checkout(name).await;
    let c = p.session(&backend, name).await;
    c.query_one("SELECT 1", &[]).await.unwrap();
    let took = t.elapsed().as_micros() as u64;
    drop(c);
    // Its first backup done, then gone: the next round starts on a quiet worker.
    p.until(name, |d| d["last_backup_at"].is_string()).await;
    p.release(&lease).await;
    // A new connection: the server closes one idle for a few seconds.
    let mut conn = Conn::open(&p.addr).await;
    let status = conn
        .call(&delete(&format!("/v2/tenants/shop/dbs/{name}"), ROOT))
        .await;
    assert_eq!(status, 202, "{}", conn.body());
    loop {
        let status = conn
            .call(&support::http::get(
                &format!("/v2/tenants/shop/dbs/{name}"),
                ROOT,
            ))
            .await;
        if status == 404 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    took
}

/// The running `source` data directory copied raw with reflinks to `dir`, `postgres` started
/// on it and `SELECT 1`: µs.
async fn raw_copy(source: &Path, dir: &Path) -> u64 {
    let t = Instant::now();
    let out = Command::new("cp")
        .args(["-a", "--reflink=always"])
        .arg(source)
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for f in ["postmaster.pid", "postmaster.opts"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    Bare::at(dir, &[]).first_row(t).await
}

/// pgbench against the bare server `bare` (started), database `bench`: what it printed.
fn pgbench(bare: &Bare, args: &[&str]) -> String {
    let out = bare
        .program("pgbench")
        .arg("-h")
        .arg(&bare.dir)
        .args(["-p", &PORT.to_string(), "-U", "postgres"])
        .args(args)
        .arg("bench")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pgbench {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn main() {
    let rounds = support::env_or("SPG99_BENCH_BRANCHES", 6) as usize;
    let secs = support::env_or("SPG99_BENCH_SECS", 20);
    let tpcb_rounds = support::env_or("SPG99_BENCH_ROUNDS", 3) as usize;
    let tmp = support::scratch();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(tmp.path(), mode.clone()).unwrap();
        std::fs::create_dir_all(tmp.path().join("p")).unwrap();
        std::fs::set_permissions(tmp.path().join("p"), mode).unwrap();
    }
    // The worker's storage (`<platform>/w1`) on XFS with reflinks.
    let xfs = Reflinks::at(&tmp.path().join("p").join("w1"), "12G");
    assert!(xfs.mounted, "the benchmark runs as root, to mount XFS");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut json = Vec::new();
    rt.block_on(async {
        let repo = tmp.path().join("repo").display().to_string();
        let p = Platform::start(&tmp.path().join("p"), &repo, vec![]).await;
        let mut rows = Vec::new();
        for (size, scale) in [("100 MiB", 7u64), ("1 GiB", 68)] {
            let db = format!("s{scale}");
            p.create(&db).await;
            let (backend, _lease) = p.checkout(&db).await;
            p.pgbench(&backend, &db, &["-i", "-q", "-s", &scale.to_string()]);
            let d = p.until(&db, |d| d["last_backup_at"].is_string()).await;
            let source = xfs.dir.join(d["timeline"].as_str().unwrap());
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for i in 0..rounds {
                ours.push(branch(&p, &db, &format!("{db}_b{i}")).await);
                theirs.push(raw_copy(&source, &xfs.dir.join("raw")).await);
            }
            rows.push((
                Row::new(format!("raw cp --reflink + start, {size}"), theirs),
                Row::new(format!("branch of a running database, {size}"), ours),
            ));
        }
        println!("\n| request to first row | p50 ms | p99 ms | p50 vs raw copy |");
        println!("|---|---:|---:|---:|");
        for (raw, ours) in &rows {
            for r in [raw, ours] {
                println!(
                    "| {} | {:.1} | {:.1} | {:.2} |",
                    r.workload,
                    r.ms(0.5),
                    r.ms(0.99),
                    r.ms(0.5) / raw.ms(0.5)
                );
                json.push(format!(
                    r#"{{"bench":"{}","p50_ms":{},"p99_ms":{}}}"#,
                    r.workload,
                    r.ms(0.5),
                    r.ms(0.99)
                ));
            }
        }
        println!(
            "\n1 GiB against 100 MiB, p50: branch {:.2}x, raw copy {:.2}x.",
            rows[1].1.ms(0.5) / rows[0].1.ms(0.5),
            rows[1].0.ms(0.5) / rows[0].0.ms(0.5)
        );

        // TPC-B on the two filesystems, a bare server each, rounds interleaved.
        let template = xfs.dir.join("template");
        let settings = [("shared_buffers", "256MB".to_owned())];
        let mut sides = [
            ("XFS with reflinks", xfs.dir.join("tpcb")),
            ("ext4", tmp.path().join("tpcb-ext4")),
        ]
        .map(|(name, dir)| (name, Bare::copy_of(&template, &dir, &settings), Vec::new()));
        for (_, bare, _) in sides.iter_mut() {
            bare.start();
            bare.superuser()
                .await
                .batch_execute("CREATE DATABASE bench")
                .await
                .unwrap();
            pgbench(bare, &["-i", "-q", "-s", "10"]);
            bare.stop();
        }
        for _ in 0..tpcb_rounds {
            for (_, bare, tps_of) in sides.iter_mut() {
                bare.start();
                let out = pgbench(bare, &["-c", "4", "-j", "2", "-T", &secs.to_string()]);
                tps_of.push(tps(&out));
                bare.stop();
            }
        }
        let median = |v: &Vec<f64>| {
            let mut v = v.clone();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let ext4 = median(&sides[1].2);
        println!(
            "\n| pgbench TPC-B, scale 10, c4 j2, {secs} s × {tpcb_rounds} | tps (median) | rounds | vs ext4 |"
        );
        println!("|---|---:|---|---:|");
        for (name, _, tps_of) in &sides {
            let m = median(tps_of);
            println!("| {name} | {m:.0} | {tps_of:.0?} | {:.2} |", m / ext4);
            json.push(format!(r#"{{"bench":"tpcb {name}","tps":{m}}}"#));
        }
    });
    drop(xfs);
    support::write_results("branches", &json);
}
