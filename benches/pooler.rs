//! The Gateway's pooler next to its session port, in the same run.
//!
//! `spg99 serve` runs as a newcomer runs it (control plane, embedded Gateway with its pooler,
//! local PostgreSQL worker; a manual clock, so that the load moves the database to no other
//! profile), one database of size L1 (profile c0.25: `max_connections` 104, a pool of 78).
//! Measured:
//!
//! - **`pgbench -S -C`** (a new connection, TLS and SCRAM, for every transaction) at 64
//!   clients: through the pooler and through the session port.
//! - **`pgbench -S`** (select only, scale 5) at 1, 16 and 64 clients: through the pooler and
//!   through the session port (`SPG99_BENCH_SECS` s per cell, default 10, rounds interleaved).
//! - **10 000 client connections at once** through the pooler (TLS, SCRAM; the hand-written
//!   client of `tests/drivers/raw_clients.py`, which holds them from one process), then one
//!   busy client beside them: how many were served, the backend connections the database saw
//!   (`pg_stat_activity`), and the serving process's resident memory per client (its growth
//!   while they are held, divided by their number).
//!
//! Run: `cargo bench --bench pooler` (as root or as a user that can run PostgreSQL; PostgreSQL
//! from `scripts/install-engines.sh`, python3 for the 10 000 clients). Prints markdown tables
//! and writes `target/bench/pooler.json`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::served::Served;

const DB: &str = "bench";
const IDLE_CLIENTS: usize = 10_000;

/// `pgbench` with `args` through `addr`; its output.
fn pgbench(p: &Served, pg_bin: &Path, addr: &str, args: &[&str]) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = Command::new(pg_bin.join("pgbench"))
        .args(["-h", host, "-p", port, "-U", &p.pg_user])
        .args(args)
        .arg(DB)
        .env("PGPASSWORD", &p.password)
        .env("PGSSLMODE", "require")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pgbench {args:?} through {addr}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// One value from the database, through the session port.
fn psql(p: &Served, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-d", &p.dsn(&p.session), "-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn main() {
    let secs = support::env_or("SPG99_BENCH_SECS", 10).to_string();
    let tmp = support::scratch();
    let rt = support::runtime();
    let pg_bin = spg99_worker::postgres::find_bin(None).expect("PostgreSQL is installed");
    let p = rt.block_on(Served::start(tmp.path(), DB, &[]));
    pgbench(&p, &pg_bin, &p.session, &["-i", "-q", "-s", "5"]);
    let ports = [
        ("session port", p.session.clone()),
        ("pooler", p.pooler.clone()),
    ];
    let mut json = Vec::new();

    eprintln!("pgbench -S -C, 64 clients");
    let mut per_connection = [0.0; 2];
    for _round in 0..2 {
        for (i, (_, addr)) in ports.iter().enumerate() {
            let out = pgbench(
                &p,
                &pg_bin,
                addr,
                &["-n", "-S", "-C", "-c", "64", "-j", "2", "-T", &secs],
            );
            per_connection[i] += support::platform::tps(&out) / 2.0;
        }
    }
    println!(
        "| `pgbench -S -C`, 64 clients | session port tps | pooler tps | pooler vs session port |"
    );
    println!("|---|---|---|---|");
    println!(
        "| a connection per transaction | {:.0} | {:.0} | {:.2} |",
        per_connection[0],
        per_connection[1],
        per_connection[1] / per_connection[0]
    );
    json.push(format!(
        r#"{{"pgbench":"-S -C","clients":64,"session_tps":{:.1},"pooler_tps":{:.1}}}"#,
        per_connection[0], per_connection[1]
    ));

    eprintln!("pgbench -S");
    println!();
    println!("| `pgbench -S`, clients | session port tps | pooler tps | pooler vs session port |");
    println!("|---|---|---|---|");
    for clients in [1, 16, 64] {
        let c = clients.to_string();
        let j = if clients == 1 { "1" } else { "2" };
        let mut sum = [0.0; 2];
        for _round in 0..2 {
            for (i, (_, addr)) in ports.iter().enumerate() {
                let out = pgbench(
                    &p,
                    &pg_bin,
                    addr,
                    &["-n", "-S", "-c", &c, "-j", j, "-T", &secs],
                );
                sum[i] += support::platform::tps(&out) / 2.0;
            }
        }
        println!(
            "| {clients} | {:.0} | {:.0} | {:.2} |",
            sum[0],
            sum[1],
            sum[1] / sum[0]
        );
        json.push(format!(
            r#"{{"pgbench":"-S","clients":{clients},"session_tps":{:.1},"pooler_tps":{:.1}}}"#,
            sum[0], sum[1]
        ));
    }

    eprintln!("{IDLE_CLIENTS} clients at once");
    let before = support::rss_kib(p.server.id());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers/raw_clients.py");
    let mut clients = Command::new("python3")
        .arg(&script)
        .args([
            "idle",
            &p.dsn(&p.pooler),
            &IDLE_CLIENTS.to_string(),
            "--hold",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(clients.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let held: serde_json::Value = serde_json::from_str(&line).unwrap();
    let during = support::rss_kib(p.server.id());
    let backends = psql(
        &p,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user \
         AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    );
    let _ = clients.stdin.take().unwrap().write_all(b"\n");
    let _ = clients.wait();
    std::thread::sleep(Duration::from_millis(200));
    let per_client = (during.saturating_sub(before)) as f64 * 1024.0 / IDLE_CLIENTS as f64;
    println!();
    println!("| clients at once | served | busy client's queries | backend connections | RSS before | RSS while held | per client |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {IDLE_CLIENTS} + 1 | {} | {}/200 | {backends} | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
        held["idle"],
        held["busy"],
        before as f64 / 1024.0,
        during as f64 / 1024.0,
        per_client / 1024.0
    );
    json.push(format!(
        r#"{{"clients":{IDLE_CLIENTS},"served":{},"busy":{},"backends":{backends},"rss_before_kib":{before},"rss_held_kib":{during}}}"#,
        held["idle"], held["busy"]
    ));
    support::write_results("pooler", &json);
}
