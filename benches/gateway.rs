//! The Gateway: what a client pays for going through it, next to PostgreSQL reached directly.
//!
//! `spg99 serve` runs as a newcomer runs it (control plane, embedded Gateway, local PostgreSQL
//! worker; manual clock, so that idle stops come when the benchmark says), plus, as the
//! baseline, a **bare PostgreSQL with TLS**: a copy of the worker's template cluster started
//! by hand with `ssl=on` (the Gateway's own certificate), the database's `shared_buffers` and
//! `max_connections`, and a role with a SCRAM password. Measured in the same run:
//!
//! - **connect + `SELECT 1`** to a running database, one client after another, and 16 at once
//!   (connections per second): through the Gateway (TLS, SCRAM), straight to the bare server
//!   (TLS, SCRAM), and straight to the database's own backend (SCRAM, no TLS: the backend
//!   listens in plaintext for the Gateway).
//! - **`pgbench -S`** (select only, scale 5, prepared statements off, `SPG99_BENCH_SECS` s per
//!   cell, default 10, rounds interleaved) at 1, 16 and 64 clients through the Gateway
//!   (`sslmode=require`), against the bare server (`sslmode=require`) and the backend itself.
//! - **resume through the Gateway**: the database stopped by the idle timeout, then a client's
//!   connect (TLS, SCRAM) and first `SELECT 1`, timed until the row
//!   (`SPG99_BENCH_RESUMES`, default 20); next to a bare `postgres` start of the bare cluster
//!   (readiness polled every 2 ms) and its first TLS + SCRAM `SELECT 1`, the same number of times.
//!
//! Run: `cargo bench --bench gateway` (as root or as a user that can run PostgreSQL; PostgreSQL
//! from `scripts/install-engines.sh`). Prints markdown tables and writes
//! `target/bench/gateway.json`.

#[allow(dead_code)] // the tests' TLS client, of which the benchmark needs the plain connector
#[path = "../tests/it/pgtls.rs"]
mod pgtls;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::http::{get, post, Conn};
use support::postgres::{self, Bare};
use support::{Row, ROOT};
use tokio_postgres::config::SslMode;

const SERVICE: &str = "spg99_svc_dddddddddddddddddddddddddddddddddddddddddddddddd";
const DB: &str = "bench";
const BARE_USER: &str = "bare";
const BARE_PASSWORD: &str = "bare-password-for-the-benchmark";
const CONCURRENT: usize = 16;

struct Platform {
    server: Child,
    api: String,
    gateway: String,
    data: PathBuf,
    pg_user: String,
    password: String,
}

impl Drop for Platform {
    fn drop(&mut self) {
        // SIGTERM: the embedded worker stops its servers.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.server.id().to_string())
            .status();
        let _ = self.server.wait();
    }
}

/// Where a client connects, and how.
#[derive(Clone)]
struct Target {
    name: &'static str,
    addr: String,
    user: String,
    password: String,
    tls: bool,
}

impl Target {
    fn config(&self) -> tokio_postgres::Config {
        let (host, port) = self.addr.rsplit_once(':').unwrap();
        let mut c = tokio_postgres::Config::new();
        c.host(host)
            .port(port.parse().unwrap())
            .user(&self.user)
            .password(&self.password)
            .dbname(DB)
            .ssl_mode(if self.tls {
                SslMode::Require
            } else {
                SslMode::Disable
            })
            .connect_timeout(Duration::from_secs(60));
        c
    }

    async fn client(&self) -> tokio_postgres::Client {
        let config = self.config();
        if self.tls {
            let (client, conn) = config.connect(pgtls::Tls::new()).await.unwrap();
            tokio::spawn(conn);
            client
        } else {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        }
    }

    /// Connect, `SELECT 1`, close: the µs until the row.
    async fn select_one(&self) -> u64 {
        let t = Instant::now();
        let client = self.client().await;
        let row = client.query_one("SELECT 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
        let took = t.elapsed().as_micros() as u64;
        drop(client);
        took
    }

    /// `pgbench` with `args` against this target; its output.
    fn pgbench(&self, pg_bin: &Path, args: &[&str]) -> String {
        let (host, port) = self.addr.rsplit_once(':').unwrap();
        let out = Command::new(pg_bin.join("pgbench"))
            .args(["-h", host, "-p", port, "-U", &self.user])
            .args(args)
            .arg(DB)
            .env("PGPASSWORD", &self.password)
            .env("PGSSLMODE", if self.tls { "require" } else { "disable" })
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "pgbench {args:?} on {}: {text}{}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

async fn start(dir: &Path) -> Platform {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.join("data");
    let mut cmd = support::serve_command(&data);
    cmd.env("SPG99_SERVICE_TOKEN", SERVICE)
        .env("SPG99_CLOCK", "manual")
        .env("SPG99_WORKER_TIMEOUT_MS", "3600000")
        .env("SPG99_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("SPG99_POOLER_LISTEN", "127.0.0.1:0")
        .env("SPG99_COMPUTE", "postgres")
        .env("SPG99_PORT_RANGE", "29000-29899");
    let (server, addrs) =
        support::spawn_announcing(cmd, &["spg99 gateway listening on ", "spg99 listening on "]);
    let (gateway, api) = (addrs[0].clone(), addrs[1].clone());
    let mut conn = Conn::open(&api).await;
    let tenant = support::http::shop(&mut conn).await;
    let body = format!(r#"{{"name":"{DB}","size":"L1"}}"#);
    conn.json(&post("/v2/tenants/shop/dbs", ROOT, &body)).await;
    Platform {
        server,
        api,
        gateway,
        data,
        pg_user: tenant["pg_user"].as_str().unwrap().to_owned(),
        password: tenant["pg_password"].as_str().unwrap().to_owned(),
    }
}

impl Platform {
    fn through_gateway(&self) -> Target {
        Target {
            name: "through the Gateway (TLS)",
            addr: self.gateway.clone(),
            user: self.pg_user.clone(),
            password: self.password.clone(),
            tls: true,
        }
    }

    /// A lease on the database, which keeps it running; the backend as a target and the lease.
    async fn backend(&self) -> (Target, String) {
        let mut conn = Conn::open(&self.api).await;
        let body = format!(
            r#"{{"pg_user":"{}","db":"{DB}","wait_ms":20000}}"#,
            self.pg_user
        );
        let status = conn
            .call(&post("/internal/v1/checkout", SERVICE, &body))
            .await;
        assert_eq!(status, 200, "{}", conn.body());
        let target = Target {
            name: "backend directly (no TLS)",
            addr: conn.field("backend_addr").to_owned(),
            user: self.pg_user.clone(),
            password: self.password.clone(),
            tls: false,
        };
        (target, conn.field("lease_id").to_owned())
    }

    async fn release(&self, lease: &str) {
        let mut conn = Conn::open(&self.api).await;
        let path = format!("/internal/v1/leases/{lease}/release");
        assert_eq!(conn.call(&post(&path, SERVICE, "{}")).await, 200);
    }

    async fn state(&self) -> String {
        let mut conn = Conn::open(&self.api).await;
        let d: Value = conn
            .json(&get(&format!("/v2/tenants/shop/dbs/{DB}"), ROOT))
            .await;
        d["state"].as_str().unwrap_or("").to_owned()
    }

    /// Stops the database by the idle timeout and waits until it is stopped (the clock moves
    /// past the timeout again each second, in case the Gateway's lease outlived a step).
    async fn idle_stop(&self) {
        let mut conn = Conn::open(&self.api).await;
        let advance = post("/internal/v1/clock/advance", SERVICE, r#"{"seconds":301}"#);
        let began = Instant::now();
        loop {
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "the database never stopped"
            );
            conn.json(&advance).await;
            for _ in 0..50 {
                if self.state().await == "stopped" {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The bare PostgreSQL with TLS: the worker's template copied to `dir` with the Gateway's
/// certificate (from `tls`) and `settings`, started, with its role and database.
async fn bare_tls(template: &Path, dir: &Path, tls: &Path, settings: &[(&str, String)]) -> Bare {
    let mut all = vec![
        ("ssl", "on".to_owned()),
        ("ssl_cert_file", "gateway.crt".to_owned()),
        ("ssl_key_file", "gateway.key".to_owned()),
    ];
    all.extend_from_slice(settings);
    let mut bare = Bare::copy_of(template, dir, &all);
    for f in ["gateway.crt", "gateway.key"] {
        std::fs::copy(tls.join(f), dir.join(f)).unwrap();
        if let Some(o) = bare.owner {
            o.chown(&dir.join(f)).unwrap();
        }
    }
    bare.start();
    let client = bare.superuser().await;
    // One statement a call: CREATE DATABASE refuses the implicit transaction of several.
    for sql in [
        "SET password_encryption = 'scram-sha-256'".to_owned(),
        format!("CREATE ROLE {BARE_USER} LOGIN PASSWORD '{BARE_PASSWORD}'"),
        format!("CREATE DATABASE {DB} OWNER {BARE_USER}"),
    ] {
        client.batch_execute(&sql).await.unwrap();
    }
    bare
}

fn bare_target() -> Target {
    Target {
        name: "bare PostgreSQL (TLS)",
        addr: format!("127.0.0.1:{}", postgres::PORT),
        user: BARE_USER.into(),
        password: BARE_PASSWORD.into(),
        tls: true,
    }
}

/// Connections per second with [`CONCURRENT`] clients connecting over and over for `dur`.
async fn connect_rate(t: &Target, dur: Duration) -> (f64, Row) {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (t, done, count) = (t.clone(), done.clone(), count.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    lat.push(t.select_one().await);
                    count.fetch_add(1, Ordering::Relaxed);
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(dur).await;
    done.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    let rate = count.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64();
    (rate, Row::new(format!("{CONCURRENT} at once"), lat))
}

fn main() {
    let secs = support::env_or("SPG99_BENCH_SECS", 10);
    let resumes = support::env_or("SPG99_BENCH_RESUMES", 20) as usize;
    let sequential = support::env_or("SPG99_BENCH_CONNECTS", 200) as usize;
    let tmp = support::scratch();
    let rt = support::runtime();
    let pg_bin = spg99_worker::postgres::find_bin(None).expect("PostgreSQL is installed");
    let mut json = Vec::new();
    rt.block_on(async {
        let p = start(tmp.path()).await;
        let gw = p.through_gateway();
        // The first connection starts the database.
        gw.select_one().await;
        let (backend, lease) = p.backend().await;
        let settings = {
            let c = backend.client().await;
            let mut s = Vec::new();
            for k in ["shared_buffers", "max_connections", "work_mem"] {
                let row = c.query_one(&format!("SHOW {k}"), &[]).await.unwrap();
                s.push((k, row.get::<_, String>(0)));
            }
            s
        };
        let mut bare = bare_tls(
            &p.data.join("compute/template"),
            &tmp.path().join("bare"),
            &p.data.join("gateway-tls"),
            &settings,
        )
        .await;
        let targets = [gw.clone(), bare_target(), backend.clone()];

        eprintln!("connect + SELECT 1");
        let mut rows = Vec::new();
        for t in &targets {
            let mut lat = Vec::new();
            for _ in 0..sequential {
                lat.push(t.select_one().await);
            }
            let (rate, many) = connect_rate(t, Duration::from_secs(secs / 2)).await;
            rows.push((t.name, Row::new("1 at a time", lat), rate, many));
        }
        let base = rows[1].1.ms(0.5);
        println!(
            "| connect + SELECT 1 | 1 at a time p50 ms | p99 ms | vs bare TLS | {CONCURRENT} at once conns/s | p50 ms | p99 ms | conns/s vs bare TLS |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        let base_rate = rows[1].2;
        for (name, one, rate, many) in &rows {
            println!(
                "| {name} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} | {:.2} |",
                one.ms(0.5),
                one.ms(0.99),
                one.ms(0.5) / base,
                rate,
                many.ms(0.5),
                many.ms(0.99),
                rate / base_rate
            );
            json.push(format!(
                r#"{{"connect":"{name}","p50_ms":{:.3},"p99_ms":{:.3},"conns_per_s":{rate:.1},"many_p50_ms":{:.3},"many_p99_ms":{:.3}}}"#,
                one.ms(0.5),
                one.ms(0.99),
                many.ms(0.5),
                many.ms(0.99)
            ));
        }

        eprintln!("pgbench -S");
        for t in [&backend, &targets[1]] {
            t.pgbench(&pg_bin, &["-i", "-q", "-s", "5"]);
        }
        let clients = [1usize, 16, 64];
        let rounds = 2;
        let mut tps_of = vec![vec![Vec::new(); clients.len()]; targets.len()];
        for _ in 0..rounds {
            for (ci, c) in clients.iter().enumerate() {
                for (ti, t) in targets.iter().enumerate() {
                    let (c, j) = (c.to_string(), (*c).min(2).to_string());
                    let out = t.pgbench(
                        &pg_bin,
                        &["-n", "-S", "-T", &secs.to_string(), "-c", &c, "-j", &j],
                    );
                    tps_of[ti][ci].push(support::platform::tps(&out));
                }
            }
        }
        println!();
        println!("| pgbench -S, clients | through the Gateway tps | bare TLS tps | backend tps | Gateway vs bare TLS | Gateway vs backend |");
        println!("|---:|---:|---:|---:|---:|---:|");
        for (ci, c) in clients.iter().enumerate() {
            // The better round of each: noise only ever slows a round down.
            let best = |ti: usize| tps_of[ti][ci].iter().cloned().fold(0.0, f64::max);
            let (g, b, d) = (best(0), best(1), best(2));
            println!(
                "| {c} | {g:.0} | {b:.0} | {d:.0} | {:.2} | {:.2} |",
                g / b,
                g / d
            );
            json.push(format!(
                r#"{{"pgbench_clients":{c},"gateway_tps":{g:.1},"bare_tls_tps":{b:.1},"backend_tps":{d:.1}}}"#
            ));
        }

        eprintln!("resumes");
        p.release(&lease).await;
        let mut resumed = Vec::new();
        for _ in 0..resumes {
            p.idle_stop().await;
            resumed.push(gw.select_one().await);
        }
        let bare_target = bare_target();
        let mut bare_starts = Vec::new();
        for _ in 0..resumes {
            bare.stop();
            let t = Instant::now();
            bare.start();
            bare_target.client().await.query_one("SELECT 1", &[]).await.unwrap();
            bare_starts.push(t.elapsed().as_micros() as u64);
        }
        let (bare_row, resume_row) = (
            Row::new("bare postgres start (2 ms polls) + TLS + SCRAM + SELECT 1", bare_starts),
            Row::new("resume through the Gateway (TLS + SCRAM + SELECT 1)", resumed),
        );
        println!();
        println!("| workload | p50 ms | p99 ms | max ms | p50 vs bare start |");
        println!("|---|---:|---:|---:|---:|");
        for r in [&bare_row, &resume_row] {
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.2} |",
                r.workload,
                r.ms(0.5),
                r.ms(0.99),
                r.ms(1.0),
                r.ms(0.5) / bare_row.ms(0.5)
            );
            json.push(format!(
                r#"{{"workload":"{}","p50_ms":{:.2},"p99_ms":{:.2},"max_ms":{:.2},"n":{}}}"#,
                r.workload,
                r.ms(0.5),
                r.ms(0.99),
                r.ms(1.0),
                r.lat.len()
            ));
        }
        drop(bare);
        drop(p);
    });
    support::write_results("gateway", &json);
}
