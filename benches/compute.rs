//! Real compute: how fast a database's PostgreSQL is there when a client asks for it, and
//! how long a handoff to another profile keeps it from taking writes.
//!
//! The real `spg99 serve` (manual clock, so that idle stops and the autoscaler's windows come
//! when the benchmark says) and `spg99 worker --compute postgres` run as their own processes.
//! Measured, next to baselines from the same run on the same machine:
//!
//! - **first start**: a checkout of a new database (`wait_ms`), then a connection straight to
//!   its `backend_addr` with the tenant's credentials (SCRAM) and `SELECT 1`, timed until the
//!   row arrives; one at a time (`SPG99_BENCH_STARTS`, default 20) and 16 at once (two rounds).
//! - **resume**: the same for databases stopped by the idle timeout.
//! - **baselines**: a bare `pg_ctl -w start` of an existing cluster (a copy of the worker's
//!   template), then a connection and `SELECT 1`; and the same with `postgres` started
//!   directly and its readiness polled every 2 ms, as the worker does (pg_ctl polls every
//!   100 ms).
//! - **handoff**: a client inserting one row per transaction (2 ms apart), re-checking out
//!   when its connection breaks, while real CPU load moves the database up a profile (and,
//!   after the cooldown, up again, and then down when the load stops): the longest a checkout
//!   waited for its lease (held through the cutover, or answered `checkouts_frozen` and
//!   retried), and the longest gap between two commits.
//!
//! Run: `cargo bench --bench compute` (as root or as a user that can run PostgreSQL; PostgreSQL
//! from `scripts/install-engines.sh`). Prints markdown tables and writes
//! `target/bench/compute.json`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::http::{get, post, Conn};
use support::postgres::Bare;
use support::{Row, ROOT};

const SERVICE: &str = "spg99_svc_cccccccccccccccccccccccccccccccccccccccccccccccc";
const CONCURRENT: usize = 16;

struct Platform {
    server: Child,
    worker: Child,
    addr: String,
    pg_user: String,
    password: String,
    storage: PathBuf,
}

impl Drop for Platform {
    fn drop(&mut self) {
        // SIGTERM: the worker stops its servers.
        for c in [&mut self.worker, &mut self.server] {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

async fn start(dir: &Path) -> Platform {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = support::serve_command(&dir.join("data"));
    cmd.env("SPG99_SERVICE_TOKEN", SERVICE)
        .env("SPG99_CLOCK", "manual")
        .env("SPG99_WORKER_TIMEOUT_MS", "3600000");
    let (server, addr) = support::spawn_serve(cmd);
    let storage = dir.join("compute");
    let storage_arg = storage.display().to_string();
    let worker = support::spawn_worker(
        &addr,
        SERVICE,
        &[
            "--compute",
            "postgres",
            "--heartbeat-ms",
            "200",
            "--port-range",
            "29000-29899",
            "--storage-dir",
            &storage_arg,
        ],
    )
    .await;
    let mut conn = Conn::open(&addr).await;
    let tenant = support::http::shop(&mut conn).await;
    // The worker fills its spare data directories in the background after it starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Platform {
        server,
        worker,
        addr,
        pg_user: tenant["pg_user"].as_str().unwrap().to_owned(),
        password: tenant["pg_password"].as_str().unwrap().to_owned(),
        storage,
    }
}

/// A session on the backend at `addr` (`host:port`) as `user`, with SCRAM, no TLS.
async fn session(
    addr: &str,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let (client, connection) = tokio_postgres::Config::new()
        .host(host)
        .port(port.parse().unwrap())
        .user(user)
        .password(password)
        .dbname(db)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn select_one(addr: &str, user: &str, password: &str, db: &str) {
    let client = session(addr, user, password, db)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}/{db}: {e}"));
    let row = client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
}

impl Platform {
    fn checkout_req(&self, db: &str) -> Vec<u8> {
        post(
            "/internal/v1/checkout",
            SERVICE,
            &format!(
                r#"{{"pg_user":"{}","db":"{db}","wait_ms":20000}}"#,
                self.pg_user
            ),
        )
    }

    async fn create(&self, names: &[String]) {
        let mut conn = Conn::open(&self.addr).await;
        for n in names {
            let body = format!(r#"{{"name":"{n}","size":"L1"}}"#);
            conn.json(&post("/v2/tenants/shop/dbs", ROOT, &body)).await;
        }
    }

    /// Checkout (waiting), connect, `SELECT 1`, release; the µs until the row.
    async fn open(&self, db: &str) -> u64 {
        let mut conn = Conn::open(&self.addr).await;
        let req = self.checkout_req(db);
        let t = Instant::now();
        let status = conn.call(&req).await;
        assert_eq!(status, 200, "{db}: {}", conn.body());
        let backend = conn.field("backend_addr").to_owned();
        let lease = conn.field("lease_id").to_owned();
        select_one(&backend, &self.pg_user, &self.password, db).await;
        let took = t.elapsed().as_micros() as u64;
        let release = post(
            &format!("/internal/v1/leases/{lease}/release"),
            SERVICE,
            "{}",
        );
        assert_eq!(conn.call(&release).await, 200);
        took
    }

    /// Opens `names`, `at_once` at a time.
    async fn open_all(self: &Arc<Self>, names: &[String], at_once: usize) -> Vec<u64> {
        let mut lat = Vec::new();
        for chunk in names.chunks(at_once) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|n| {
                    let (p, n) = (self.clone(), n.clone());
                    tokio::spawn(async move { p.open(&n).await })
                })
                .collect();
            for t in tasks {
                lat.push(t.await.unwrap());
            }
        }
        lat
    }

    async fn advance(&self, seconds: f64) {
        let mut conn = Conn::open(&self.addr).await;
        let body = format!(r#"{{"seconds":{seconds}}}"#);
        conn.json(&post("/internal/v1/clock/advance", SERVICE, &body))
            .await;
    }

    async fn describe(&self, db: &str) -> Value {
        let mut conn = Conn::open(&self.addr).await;
        conn.json(&get(&format!("/v2/tenants/shop/dbs/{db}"), ROOT))
            .await
    }

    /// Stops every running database by the idle timeout, and waits until they are stopped.
    async fn idle_stop(&self, names: &[String]) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.advance(301.0).await;
        for n in names {
            while self.describe(n).await["state"] != "stopped" {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A bare start of an existing cluster and its first `SELECT 1`, `n` times: with
/// `pg_ctl -w start`, or with `postgres` started directly and its readiness polled.
fn baselines(template: &Path, dir: &Path, n: usize) -> (Row, Row) {
    let mut bare = Bare::copy_of(template, &dir.join("bare"), &[]);
    let rt = support::load::runtime();
    let first_select = |rt: &tokio::runtime::Runtime, bare: &Bare| {
        rt.block_on(async {
            bare.superuser()
                .await
                .query_one("SELECT 1", &[])
                .await
                .unwrap();
        })
    };
    let mut pg_ctl = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let status = bare
            .program("pg_ctl")
            .args(["-w", "-s", "-D"])
            .arg(&bare.dir)
            .args(["-o", &bare.opts.join(" "), "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        first_select(&rt, &bare);
        pg_ctl.push(t.elapsed().as_micros() as u64);
        let stop = bare
            .program("pg_ctl")
            .args(["-w", "-s", "-m", "fast", "-D"])
            .arg(&bare.dir)
            .arg("stop")
            .status()
            .unwrap();
        assert!(stop.success());

        let t = Instant::now();
        bare.start();
        first_select(&rt, &bare);
        direct.push(t.elapsed().as_micros() as u64);
        bare.stop();
    }
    (
        Row::new("bare pg_ctl -w start + SELECT 1", pg_ctl),
        Row::new("bare postgres start (2 ms polls) + SELECT 1", direct),
    )
}

/// What a client saw during one handoff.
#[derive(Debug, Default)]
struct Handoff {
    from: String,
    to: String,
    /// The longest wait from a checkout's first try to its lease, ms.
    frozen_ms: f64,
    /// The longest time between two commits, ms.
    no_commit_ms: f64,
    committed: usize,
}

/// Runs an inserter (and, while `load` is set, a CPU burner) until the database's profile
/// changes; what the inserter saw.
async fn handoff(p: &Arc<Platform>, db: &str, load: bool, clock_step: f64) -> Handoff {
    let from = p.describe(db).await["current_profile"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let commits = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let frozen = Arc::new(Mutex::new(Duration::ZERO));
    let inserter = {
        let (p, stop, commits, frozen, db) = (
            p.clone(),
            stop.clone(),
            commits.clone(),
            frozen.clone(),
            db.to_owned(),
        );
        tokio::spawn(async move {
            let mut conn = Conn::open(&p.addr).await;
            let mut first_try = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let since = *first_try.get_or_insert_with(Instant::now);
                let status = conn.call(&p.checkout_req(&db)).await;
                if status == 200 {
                    let mut longest = frozen.lock().unwrap();
                    *longest = (*longest).max(since.elapsed());
                    first_try = None;
                }
                if status != 200 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let connected =
                    session(conn.field("backend_addr"), &p.pg_user, &p.password, &db).await;
                let Ok(client) = connected else {
                    continue;
                };
                let _ = client.batch_execute("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())").await;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if client
                        .execute("INSERT INTO t DEFAULT VALUES", &[])
                        .await
                        .is_err()
                    {
                        break;
                    }
                    commits.lock().unwrap().push(Instant::now());
                    // Paced, so that its own load leaves the database's band to the burner.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    let burner = load.then(|| {
        let (p, stop, db) = (p.clone(), stop.clone(), db.to_owned());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut conn = Conn::open(&p.addr).await;
                if conn.call(&p.checkout_req(&db)).await != 200 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let connected =
                    session(conn.field("backend_addr"), &p.pg_user, &p.password, &db).await;
                let Ok(client) = connected else {
                    continue;
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if client
                        .batch_execute("DO $$ DECLARE i int := 0; BEGIN WHILE i < 3000000 LOOP i := i + 1; END LOOP; END $$")
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        })
    });
    // Let the heartbeats carry the load for a moment, then move the clock past the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut tries = 0;
    let to = loop {
        tries += 1;
        assert!(
            tries < 120,
            "the handoff from {from} never happened: {}",
            p.describe(db).await
        );
        p.advance(clock_step).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let d = p.describe(db).await;
        let profile = d["current_profile"].as_str().unwrap_or("").to_owned();
        if d["scale_state"] == "STABLE" && profile != from {
            break profile;
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = inserter.await;
    if let Some(b) = burner {
        let _ = b.await;
    }
    let commits = commits.lock().unwrap().clone();
    let no_commit = commits
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let frozen_ms = frozen.lock().unwrap().as_secs_f64() * 1e3;
    Handoff {
        from,
        to,
        frozen_ms,
        no_commit_ms: no_commit.as_secs_f64() * 1e3,
        committed: commits.len(),
    }
}

fn main() {
    let n = support::env_or("SPG99_BENCH_STARTS", 20) as usize;
    let tmp = support::scratch();
    let rt = support::load::runtime();
    let p = Arc::new(rt.block_on(start(tmp.path())));
    let names = |prefix: &str, k: usize| -> Vec<String> {
        (0..k).map(|i| format!("{prefix}{i}")).collect()
    };
    let (one, many) = (names("one", n), names("many", 2 * CONCURRENT));
    let mut rows = Vec::new();
    rt.block_on(async {
        p.create(&one).await;
        p.create(&many).await;
        eprintln!("first starts");
        // First starts, one at a time (a pause lets the spares refill, as between users).
        let mut lat = Vec::new();
        for db in &one {
            lat.push(p.open(db).await);
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        rows.push(Row::new("first start, 1 at a time", lat));
        rows.push(Row::new(
            format!("first start, {CONCURRENT} at once"),
            p.open_all(&many, CONCURRENT).await,
        ));
        eprintln!("idle stops");
        p.idle_stop(&one).await;
        p.idle_stop(&many).await;
        eprintln!("resumes");
        let mut lat = Vec::new();
        for db in &one {
            lat.push(p.open(db).await);
        }
        rows.push(Row::new("resume, 1 at a time", lat));
        rows.push(Row::new(
            format!("resume, {CONCURRENT} at once"),
            p.open_all(&many, CONCURRENT).await,
        ));
    });
    eprintln!("baselines");
    let template = p.storage.join("template");
    let (pg_ctl, direct) = baselines(&template, tmp.path(), n);
    let handoffs = rt.block_on(async {
        let db = "scaled";
        p.create(&[db.to_owned()]).await;
        p.open(db).await;
        eprintln!("handoffs");
        let up = handoff(&p, db, true, 61.0).await;
        let up_again = handoff(&p, db, true, 301.0).await;
        let down = handoff(&p, db, false, 301.0).await;
        vec![up, up_again, down]
    });

    let base = direct.ms(0.5);
    println!("| workload | p50 ms | p99 ms | max ms | p50 vs bare postgres start |");
    println!("|---|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in [&pg_ctl, &direct].into_iter().chain(rows.iter()) {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            r.workload,
            r.ms(0.5),
            r.ms(0.99),
            r.ms(1.0),
            r.ms(0.5) / base
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
    println!();
    println!(
        "| handoff | longest checkout wait ms | longest gap between commits ms | rows committed |"
    );
    println!("|---|---:|---:|---:|");
    for h in &handoffs {
        println!(
            "| {} → {} | {:.0} | {:.0} | {} |",
            h.from, h.to, h.frozen_ms, h.no_commit_ms, h.committed
        );
        json.push(format!(
            r#"{{"handoff":"{} -> {}","frozen_ms":{:.1},"no_commit_ms":{:.1},"committed":{}}}"#,
            h.from, h.to, h.frozen_ms, h.no_commit_ms, h.committed
        ));
    }
    support::write_results("compute", &json);
    drop(p);
}
