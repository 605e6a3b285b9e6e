//! The database lifecycle through the Gateway's door: `POST /internal/v1/checkout` against the
//! real `spg99 serve`, with `spg99 worker` (the simulated compute, zero delays) as the worker.
//!
//! Measured, each next to a baseline from the same run:
//! - **cold start**: a checkout of a stopped database with `wait_ms: 10000`, timed until its
//!   200 (placement, `db.start_requested`, the worker's start and report, the lease), one
//!   database at a time (`SPG99_BENCH_COLD`, default 200), a quarter as many 250 ms apart (the
//!   worker idle in its long poll when each arrives), and then with 16 Gateways each starting
//!   its own share of `SPG99_BENCH_COLD` fresh databases; against a checkout of a database
//!   that is already running (one durable command over HTTP), one client;
//! - **checkout+release**: at 1, 16 and 256 Gateways (keep-alive connections) for a fixed
//!   time each, every connection loops a checkout of one of 64 running databases (round robin)
//!   and the release of its lease; against durable `POST /v2/tenants/{t}/dbs` creates with
//!   unique names at the same concurrency on the same server.
//!
//! The server and the worker run as their own processes; the load comes from this process over
//! loopback, one minimal HTTP/1.1 client task per connection.
//!
//! Run: `cargo bench --bench checkout` (`SPG99_BENCH_SECS`, default 3 s per cell). Prints a
//! markdown table and writes `target/bench/checkout.json`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::http::{post, Conn};
use support::ROOT;

/// The internal API's token (`SPG99_SERVICE_TOKEN`).
const SERVICE: &str = "spg99_svc_cccccccccccccccccccccccccccccccccccccccccccccccc";
const GATEWAYS: [usize; 3] = [1, 16, 256];
/// Gateways of the concurrent cold starts.
const COLD_GATEWAYS: usize = 16;
/// Running databases the checkout loops go round.
const RUNNING: usize = 64;
/// Checkouts of a running database timed for the cold-start baseline.
const BASELINE_CHECKOUTS: usize = 1000;
const TENANT: &str = "shop";
/// Pause between the spaced cold starts: longer than the worker's 200 ms between polls that
/// bring nothing new, so that each checkout finds it waiting in its long poll.
const IDLE_GAP: Duration = Duration::from_millis(250);

/// What a Gateway does on a connection.
trait Gateway {
    async fn checkout(&mut self, pg_user: &str, db: &str, wait_ms: u64) -> String;
    async fn release(&mut self, lease: &str);
}

impl Gateway for Conn {
    /// Checks out `db`, waiting up to 10 s for it to run (asking again on a 202); returns the
    /// lease id.
    async fn checkout(&mut self, pg_user: &str, db: &str, wait_ms: u64) -> String {
        let req = post(
            "/internal/v1/checkout",
            SERVICE,
            &format!(r#"{{"pg_user":"{pg_user}","db":"{db}","wait_ms":{wait_ms}}}"#),
        );
        loop {
            match self.call(&req).await {
                200 => return self.field("lease_id").to_owned(),
                202 => {}
                status => panic!("checkout of {db}: {status}: {}", self.body()),
            }
        }
    }

    async fn release(&mut self, lease: &str) {
        let req = post(
            &format!("/internal/v1/leases/{lease}/release"),
            SERVICE,
            r#"{"active_connections":0}"#,
        );
        let status = self.call(&req).await;
        assert_eq!(status, 200, "release: {}", self.body());
    }
}

fn create_db(name: &str) -> Vec<u8> {
    post(
        &format!("/v2/tenants/{TENANT}/dbs"),
        ROOT,
        &format!(r#"{{"name":"{name}","size":"L1"}}"#),
    )
}

/// One row of the table.
struct Row {
    workload: &'static str,
    gateways: usize,
    /// Operations timed (checkouts, cold starts, creates).
    ops: u64,
    secs: f64,
    /// Latencies, µs, sorted.
    lat: Vec<u64>,
}

impl Row {
    fn new(workload: &'static str, gateways: usize, secs: f64, mut lat: Vec<u64>) -> Row {
        lat.sort_unstable();
        Row {
            workload,
            gateways,
            ops: lat.len() as u64,
            secs,
            lat,
        }
    }

    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    fn pct(&self, p: f64) -> u64 {
        support::percentile(&self.lat, p)
    }

    fn max(&self) -> u64 {
        self.lat.last().copied().unwrap_or(0)
    }
}

/// Starts databases `names` with `gateways` concurrent connections, each taking its share in
/// turn; every start is a checkout waiting for the database to run, timed until its 200, then
/// the release of the lease and a pause of `gap` (neither timed).
async fn cold_starts(
    addr: &str,
    pg_user: &str,
    workload: &'static str,
    gateways: usize,
    names: Vec<String>,
    gap: Duration,
) -> Row {
    let names = Arc::new(names);
    let started = Instant::now();
    let tasks: Vec<_> = (0..gateways)
        .map(|g| {
            let (addr, pg_user, names) = (addr.to_owned(), pg_user.to_owned(), names.clone());
            tokio::spawn(async move {
                let mut conn = Conn::open(&addr).await;
                let mut lat = Vec::new();
                for db in names.iter().skip(g).step_by(gateways) {
                    let t = Instant::now();
                    let lease = conn.checkout(&pg_user, db, 10_000).await;
                    lat.push(t.elapsed().as_micros() as u64);
                    conn.release(&lease).await;
                    tokio::time::sleep(gap).await;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    Row::new(workload, gateways, started.elapsed().as_secs_f64(), lat)
}

/// `gateways` connections for `dur`, each looping a checkout of a running database (round
/// robin over `dbs`) and the release of its lease; the checkout call is timed.
async fn checkout_release(
    addr: &str,
    pg_user: &str,
    gateways: usize,
    dur: Duration,
    dbs: Arc<Vec<String>>,
) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..gateways)
        .map(|g| {
            let (addr, stop, dbs) = (addr.to_owned(), stop.clone(), dbs.clone());
            let reqs: Vec<Vec<u8>> = dbs
                .iter()
                .map(|db| {
                    post(
                        "/internal/v1/checkout",
                        SERVICE,
                        &format!(r#"{{"pg_user":"{pg_user}","db":"{db}","wait_ms":0}}"#),
                    )
                })
                .collect();
            tokio::spawn(async move {
                let mut conn = Conn::open(&addr).await;
                let mut lat = Vec::new();
                let mut i = g;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let status = conn.call(&reqs[i % reqs.len()]).await;
                    lat.push(t.elapsed().as_micros() as u64);
                    assert_eq!(status, 200, "checkout: {}", conn.body());
                    let lease = conn.field("lease_id").to_owned();
                    conn.release(&lease).await;
                    i += 1;
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    Row::new(
        "checkout+release",
        gateways,
        started.elapsed().as_secs_f64(),
        lat,
    )
}

/// `gateways` connections for `dur`, each creating databases with unique names.
async fn creates(addr: &str, gateways: usize, dur: Duration) -> Row {
    let m = support::load::http_drive(addr, gateways, dur, 201, None, move |i| {
        create_db(&format!("c{gateways}-{i}"))
    })
    .await;
    Row::new("create-db (baseline)", gateways, m.secs, m.lat)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn main() {
    let dur = Duration::from_secs(support::env_or("SPG99_BENCH_SECS", 3));
    let cold = support::env_or("SPG99_BENCH_COLD", 200) as usize;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("checkout");
    let _ = std::fs::remove_dir_all(&dir);

    let mut serve = support::serve_command(&dir);
    serve
        .env("SPG99_SERVICE_TOKEN", SERVICE)
        // Nothing the benchmark starts may be stopped for idleness while it runs.
        .env("SPG99_IDLE_TIMEOUT", "86400");
    let (mut serve_child, addr) = support::spawn_serve(serve);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rows, mut worker) = rt.block_on(async {
        // An account, a tenant, and every database the cold starts and the loops need.
        let mut conn = Conn::open(&addr).await;
        let account = conn
            .json(&post("/v2/accounts", ROOT, r#"{"name":"bench"}"#))
            .await;
        let account = account["account_id"].as_str().unwrap().to_owned();
        let tenant = conn
            .json(&post(
                "/v2/tenants",
                ROOT,
                &format!(r#"{{"name":"{TENANT}","account":"{account}"}}"#),
            ))
            .await;
        let pg_user = tenant["pg_user"].as_str().unwrap().to_owned();
        let names = |prefix: &str, n: usize| -> Vec<String> {
            (0..n).map(|i| format!("{prefix}-{i}")).collect()
        };
        let (running, serial, spaced, parallel) = (
            names("run", RUNNING),
            names("cold", cold),
            names("idle", cold.div_ceil(4)),
            names("par", cold),
        );
        for db in running
            .iter()
            .chain(&serial)
            .chain(&spaced)
            .chain(&parallel)
        {
            let d = conn.json(&create_db(db)).await;
            assert_eq!(d["state"], "stopped", "{d}");
        }

        // Room for every database, zero delays.
        let worker = support::spawn_worker(
            &addr,
            SERVICE,
            &["--capacity", "100000", "--compute", "simulated"],
        )
        .await;
        // The databases the loops check out: started (and timed, but not reported) first.
        cold_starts(
            &addr,
            &pg_user,
            "warm-up",
            RUNNING,
            running.clone(),
            Duration::ZERO,
        )
        .await;
        eprintln!("setup done: {} running databases", RUNNING);

        let mut rows = Vec::new();
        // Baseline: a checkout of a running database, one client.
        let mut lat = Vec::new();
        let started = Instant::now();
        for _ in 0..BASELINE_CHECKOUTS {
            let t = Instant::now();
            let lease = conn.checkout(&pg_user, &running[0], 0).await;
            lat.push(t.elapsed().as_micros() as u64);
            conn.release(&lease).await;
        }
        rows.push(Row::new(
            "checkout, running db (baseline)",
            1,
            started.elapsed().as_secs_f64(),
            lat,
        ));
        rows.push(
            cold_starts(
                &addr,
                &pg_user,
                "cold start → running",
                1,
                serial,
                Duration::ZERO,
            )
            .await,
        );
        eprintln!("done: cold starts, one at a time");
        // The same, with the worker idle in its long poll when each checkout arrives.
        rows.push(
            cold_starts(
                &addr,
                &pg_user,
                "cold start → running, 250 ms apart",
                1,
                spaced,
                IDLE_GAP,
            )
            .await,
        );
        eprintln!("done: cold starts, spaced");
        rows.push(
            cold_starts(
                &addr,
                &pg_user,
                "cold start → running",
                COLD_GATEWAYS,
                parallel,
                Duration::ZERO,
            )
            .await,
        );
        eprintln!("done: cold starts, {COLD_GATEWAYS} gateways");

        let running = Arc::new(running);
        for &n in &GATEWAYS {
            rows.push(checkout_release(&addr, &pg_user, n, dur, running.clone()).await);
            rows.push(creates(&addr, n, dur).await);
            eprintln!("done: {n} gateways");
        }
        (rows, worker)
    });
    let _ = worker.kill();
    let _ = serve_child.kill();
    let _ = worker.wait();
    let _ = serve_child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let baseline_p50 = rows[0].pct(0.5) as f64;
    let creates_at = |n: usize| {
        rows.iter()
            .find(|r| r.gateways == n && r.workload.starts_with("create-db"))
            .map_or(f64::NAN, Row::per_sec)
    };
    println!(
        "| workload | gateways | timed | per s | durable commands/s | p50 ms | p99 ms | max ms | p50 vs running checkout | rate vs create-db |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in &rows {
        let (commands, vs_checkout, vs_create) = match r.workload {
            "checkout+release" => (
                format!("{:.0}", 2.0 * r.per_sec()),
                "–".to_owned(),
                format!("{:.2}", r.per_sec() / creates_at(r.gateways)),
            ),
            w if w.starts_with("create-db") => {
                (format!("{:.0}", r.per_sec()), "–".into(), "1.00".into())
            }
            w if w.starts_with("checkout, running") => (
                format!("{:.0}", 2.0 * r.per_sec()),
                "1.00".into(),
                "–".into(),
            ),
            _ => (
                "–".into(),
                format!("{:.1}", r.pct(0.5) as f64 / baseline_p50),
                "–".into(),
            ),
        };
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.gateways,
            r.ops,
            r.per_sec(),
            commands,
            ms(r.pct(0.5)),
            ms(r.pct(0.99)),
            ms(r.max()),
            vs_checkout,
            vs_create
        );
        json.push(format!(
            "{{\"workload\":\"{}\",\"gateways\":{},\"ops\":{},\"secs\":{:.3},\"per_sec\":{:.1},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
            r.workload,
            r.gateways,
            r.ops,
            r.secs,
            r.per_sec(),
            r.pct(0.5),
            r.pct(0.99),
            r.max()
        ));
    }
    support::write_results("checkout", &json);
}
