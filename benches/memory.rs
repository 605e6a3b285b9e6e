//! Memory: the control plane's resident set with many tenants and databases, live and after a
//! restart, and what each database adds.
//!
//! For 1 000 and then 10 000 tenants × 10 databases, all created through the API (16
//! connections, each create durable), the server's RSS is read from /proc after the creates
//! (live), and again after a restart has recovered the same state from its data directory.
//! Growth per database is the difference between the two scales divided by the databases (and
//! their tenants) added. `SPG99_BENCH_TENANTS` picks other scales (comma-separated).
//!
//! Run: `cargo bench --bench memory`. Prints a markdown table and writes
//! `target/bench/memory.json`.

mod support;

use std::process::Child;
use std::time::{Duration, Instant};

use support::http::{post, Conn};
use support::{rss_kib, serve_command, spawn_serve, write_results, ROOT};

const DBS_PER_TENANT: usize = 10;
const CONNECTIONS: usize = 16;

fn stop(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// Makes `tenants` tenants of `DBS_PER_TENANT` databases each in a fresh account.
async fn populate(addr: &str, tenants: usize) {
    let mut c = Conn::open(addr).await;
    let account = c
        .json(&post("/v2/accounts", ROOT, r#"{"name":"bench"}"#))
        .await;
    let account = account["account_id"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for w in 0..CONNECTIONS {
        let (addr, account) = (addr.to_owned(), account.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await;
            for t in (w..tenants).step_by(CONNECTIONS) {
                let body = format!(r#"{{"name":"t{t:06}","account":"{account}"}}"#);
                c.json(&post("/v2/tenants", ROOT, &body)).await;
                for d in 0..DBS_PER_TENANT {
                    let body = format!(r#"{{"name":"db{d}","size":"L1"}}"#);
                    c.json(&post(&format!("/v2/tenants/t{t:06}/dbs"), ROOT, &body))
                        .await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// RSS once it has settled (the allocator returns freed pages lazily): the lowest of a few
/// readings a little apart.
fn settled_rss(pid: u32) -> u64 {
    let mut low = u64::MAX;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        low = low.min(rss_kib(pid));
    }
    low
}

fn main() {
    let scales: Vec<usize> = std::env::var("SPG99_BENCH_TENANTS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    let rt = support::load::runtime();
    let mut rows = Vec::new();
    println!("| tenants | databases | create time s | RSS live MiB | RSS after restart MiB | data directory MiB |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &tenants in &scales {
        let dir = tempfile::tempdir().unwrap();
        let (child, addr) = spawn_serve(serve_command(dir.path()));
        let idle = settled_rss(child.id());
        let began = Instant::now();
        rt.block_on(populate(&addr, tenants));
        let took = began.elapsed().as_secs_f64();
        let live = settled_rss(child.id());
        stop(child);
        let (child, _) = spawn_serve(serve_command(dir.path()));
        let restarted = settled_rss(child.id());
        stop(child);
        let disk = dir_size(dir.path());
        let dbs = tenants * DBS_PER_TENANT;
        println!(
            "| {tenants} | {dbs} | {took:.1} | {:.1} | {:.1} | {:.1} |",
            live as f64 / 1024.0,
            restarted as f64 / 1024.0,
            disk as f64 / 1048576.0
        );
        rows.push((tenants, dbs, idle, live, restarted));
    }
    if let [(t0, d0, _, l0, r0), .., (t1, d1, _, l1, r1)] = rows[..] {
        let added = (d1 - d0) as f64;
        println!(
            "\ngrowth per database (with its share of a tenant, {} tenants): live {:.2} KiB, after restart {:.2} KiB",
            t1 - t0,
            (l1 as f64 - l0 as f64) / added,
            (r1 as f64 - r0 as f64) / added
        );
    }
    let json: Vec<String> = rows
        .iter()
        .map(|(t, d, idle, live, restarted)| {
            format!(r#"{{"tenants":{t},"databases":{d},"idle_kib":{idle},"live_kib":{live},"restarted_kib":{restarted}}}"#)
        })
        .collect();
    write_results("memory", &json);
}

fn dir_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}
