//! High availability: what a synchronous standby on another worker costs a writer's commits,
//! and how fast a database fails over to it.
//!
//! The real `spg99 serve` (the system's clock: failovers are timed as they happen) with a
//! directory repository and its Gateway, and three `spg99 worker --compute postgres` as their
//! own processes, heartbeating as the control plane tells them (every 500 ms). Measured:
//!
//! - **Commit latency** of one client doing single-row `INSERT`s (autocommit, `SPG99_BENCH_SECS`
//!   each, default 10) and **pgbench TPC-B** (scale 10, `-N` off: the full transaction) at 1
//!   and 16 clients, against a database with high availability (protected: every commit waits
//!   for the standby's flush) and one without, on the same workers, rounds interleaved
//!   (`SPG99_BENCH_ROUNDS`, default 2); connections go to the writers directly, so the
//!   Gateway is in neither.
//! - **Failover**, `SPG99_BENCH_KILLS` times (default 10): a client committing through the
//!   Gateway, the writer's worker SIGKILLed with its PostgreSQL and its disk deleted, the time
//!   from the kill to the first commit acknowledged on a new connection; a new worker with an
//!   empty disk replaces the dead one, and the next kill waits until the database is protected
//!   again. Every acknowledged row is checked present after each failover.
//!
//! Run: `cargo bench --bench ha` (as root, or a user that can run PostgreSQL; PostgreSQL and
//! pgBackRest from `scripts/install-engines.sh`). Prints markdown tables and writes
//! `target/bench/ha.json`.

mod support;

#[allow(dead_code)]
#[path = "../tests/it/pgtls.rs"]
mod pgtls;
#[path = "../tests/it/procs.rs"]
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::http::{get, post, Conn};
use support::{percentile, ROOT};

const SERVICE: &str = "spg99_svc_ffffffffffffffffffffffffffffffffffffffffffffffff";

struct Bench {
    dir: PathBuf,
    server: Child,
    api: String,
    gateway: String,
    pg_user: String,
    password: String,
    workers: Vec<(String, Child)>,
    made: usize,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let children = self.workers.iter_mut().map(|(_, c)| c);
        for c in children.chain([&mut self.server]) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl Bench {
    async fn start(dir: &Path) -> Bench {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = support::serve_command(&dir.join("data"));
        cmd.env("SPG99_SERVICE_TOKEN", SERVICE)
            .env("SPG99_STORAGE", dir.join("repo"))
            .env("SPG99_IDLE_TIMEOUT", "100000")
            .env("SPG99_GATEWAY_LISTEN", "127.0.0.1:0");
        let (server, addrs) =
            support::spawn_announcing(cmd, &["spg99 gateway listening on ", "spg99 listening on "]);
        let mut conn = Conn::open(&addrs[1]).await;
        let tenant = support::http::shop(&mut conn).await;
        let mut b = Bench {
            dir: dir.to_owned(),
            server,
            api: addrs[1].clone(),
            gateway: addrs[0].clone(),
            pg_user: tenant["pg_user"].as_str().unwrap().to_owned(),
            password: tenant["pg_password"].as_str().unwrap().to_owned(),
            workers: Vec::new(),
            made: 0,
        };
        for _ in 0..3 {
            b.new_worker().await;
        }
        b
    }

    /// A worker with an empty disk.
    async fn new_worker(&mut self) {
        self.made += 1;
        let id = format!("w{}", self.made);
        let storage = self.dir.join(&id).display().to_string();
        let args = [
            "--compute",
            "postgres",
            "--port-range",
            "29000-29899",
            "--storage-dir",
            &storage,
        ];
        let child = support::spawn_worker_as(&self.api, SERVICE, &id, &args, &[]).await;
        self.workers.push((id, child));
    }

    /// The worker `id` and its servers SIGKILLed, its disk deleted.
    fn destroy(&mut self, id: &str) {
        let i = self.workers.iter().position(|(w, _)| w == id).unwrap();
        let (_, mut child) = self.workers.remove(i);
        procs::signal(&procs::process_tree(child.id()), "-KILL");
        let _ = child.wait();
        std::fs::remove_dir_all(self.dir.join(id)).unwrap();
    }

    async fn create(&self, db: &str, ha: bool) {
        let mut conn = Conn::open(&self.api).await;
        let body = format!(r#"{{"name":"{db}","size":"L1","ha":{ha}}}"#);
        conn.json(&post("/v2/tenants/shop/dbs", ROOT, &body)).await;
    }

    async fn describe(&self, db: &str) -> Value {
        let mut conn = Conn::open(&self.api).await;
        conn.json(&get(&format!("/v2/tenants/shop/dbs/{db}"), ROOT))
            .await
    }

    async fn until(&self, db: &str, done: impl Fn(&Value) -> bool) -> Value {
        let began = Instant::now();
        loop {
            let d = self.describe(db).await;
            if done(&d) {
                return d;
            }
            assert!(began.elapsed() < Duration::from_secs(600), "{d}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn gateway_config(&self, db: &str) -> tokio_postgres::Config {
        let (host, port) = self.gateway.rsplit_once(':').unwrap();
        let mut c = tokio_postgres::Config::new();
        c.host(host)
            .port(port.parse().unwrap())
            .user(&self.pg_user)
            .password(&self.password)
            .dbname(db)
            .ssl_mode(tokio_postgres::config::SslMode::Require)
            .connect_timeout(Duration::from_secs(30));
        c
    }

    /// A session through the Gateway (it starts the database).
    async fn through_gateway(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) = self
            .gateway_config(db)
            .connect(pgtls::Tls::new())
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// A session on the writer itself.
    async fn direct(&self, backend: &str, db: &str) -> tokio_postgres::Client {
        let (host, port) = backend.rsplit_once(':').unwrap();
        let (client, conn) = tokio_postgres::Config::new()
            .host(host)
            .port(port.parse().unwrap())
            .user(&self.pg_user)
            .password(&self.password)
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    fn pgbench(&self, backend: &str, db: &str, args: &[&str]) -> String {
        support::platform::pgbench(backend, &self.pg_user, &self.password, db, args)
    }
}

fn protected(d: &Value) -> bool {
    d["ha_protected"] == true
}

/// pgbench's "tps = N" and "latency average = N ms".
fn pgbench_figures(out: &str) -> (f64, f64) {
    use support::platform::figure;
    (figure(out, "tps = "), figure(out, "latency average = "))
}

async fn commits(c: &tokio_postgres::Client, dur: Duration) -> Vec<u64> {
    let stmt = c.prepare("INSERT INTO commits VALUES ($1)").await.unwrap();
    let mut lat = Vec::new();
    let began = Instant::now();
    let mut i: i64 = 0;
    while began.elapsed() < dur {
        let t = Instant::now();
        c.execute(&stmt, &[&i]).await.unwrap();
        lat.push(t.elapsed().as_micros() as u64);
        i += 1;
    }
    lat.sort_unstable();
    lat
}

type Acked = Arc<Mutex<Vec<(i64, Instant, Instant)>>>;

/// One client committing through the Gateway until `stop`, on a new connection whenever its
/// connection breaks: (id, acknowledged at, its connection made at).
fn committer(
    b: &Bench,
    db: &str,
    first: i64,
    stop: Arc<AtomicBool>,
) -> (Acked, tokio::task::JoinHandle<()>) {
    let acked: Acked = Arc::default();
    let cfg = b.gateway_config(db);
    let out = acked.clone();
    let task = tokio::spawn(async move {
        let mut next = first;
        let mut client: Option<tokio_postgres::Client> = None;
        let mut connected = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                connected = Instant::now();
                client = match cfg.connect(pgtls::Tls::new()).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        Some(c)
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        None
                    }
                };
                continue;
            }
            let c = client.as_ref().unwrap();
            match c.execute("INSERT INTO t VALUES ($1)", &[&next]).await {
                Ok(_) => out.lock().unwrap().push((next, Instant::now(), connected)),
                Err(_) => client = None,
            }
            next += 1;
        }
    });
    (acked, task)
}

fn main() {
    let secs = support::env_or("SPG99_BENCH_SECS", 10);
    let rounds = support::env_or("SPG99_BENCH_ROUNDS", 2);
    let kills = support::env_or("SPG99_BENCH_KILLS", 10) as usize;
    let dur = Duration::from_secs(secs);
    let tmp = support::scratch();
    let rt = support::runtime();
    let mut json = Vec::new();
    rt.block_on(async {
        let mut b = Bench::start(tmp.path()).await;
        b.create("plain", false).await;
        b.create("ha", true).await;
        let mut backends = Vec::new();
        for db in ["plain", "ha"] {
            let s = b.through_gateway(db).await;
            s.batch_execute("CREATE TABLE commits (i bigint); CREATE TABLE t (id bigint PRIMARY KEY)")
                .await
                .unwrap();
            let d = b.until(db, |d| db == "plain" || protected(d)).await;
            let backend = d["backend_addr"].as_str().unwrap().to_owned();
            b.pgbench(&backend, db, &["-i", "-q", "-s", "10"]);
            backends.push((db, backend, s));
        }
        // The initialisation's WAL streamed and the standby synchronous again.
        b.until("ha", protected).await;

        println!("## Commits with a synchronous standby and without\n");
        println!("| workload | without (no HA) | with a synchronous standby | ratio |");
        println!("|---|---|---|---|");
        let mut figures: std::collections::BTreeMap<(&str, &str), Vec<f64>> = Default::default();
        for _ in 0..rounds {
            for (db, backend, _) in &backends {
                let c = b.direct(backend, db).await;
                let lat = commits(&c, dur).await;
                let p50 = percentile(&lat, 0.5) as f64 / 1000.0;
                let p99 = percentile(&lat, 0.99) as f64 / 1000.0;
                figures.entry(("commit p50 ms", db)).or_default().push(p50);
                figures.entry(("commit p99 ms", db)).or_default().push(p99);
                for (clients, threads) in [("1", "1"), ("16", "2")] {
                    let t = secs.to_string();
                    let out = b.pgbench(backend, db, &["-n", "-c", clients, "-j", threads, "-T", &t]);
                    let (tps, latency) = pgbench_figures(&out);
                    let tps_key: &str = if clients == "1" { "pgbench TPC-B 1 client tps" } else { "pgbench TPC-B 16 clients tps" };
                    let lat_key: &str = if clients == "1" { "pgbench TPC-B 1 client latency ms" } else { "pgbench TPC-B 16 clients latency ms" };
                    figures.entry((tps_key, db)).or_default().push(tps);
                    figures.entry((lat_key, db)).or_default().push(latency);
                }
            }
        }
        let median = |mut xs: Vec<f64>| {
            xs.sort_by(|a, c| a.partial_cmp(c).unwrap());
            xs[xs.len() / 2]
        };
        for workload in [
            "commit p50 ms",
            "commit p99 ms",
            "pgbench TPC-B 1 client tps",
            "pgbench TPC-B 1 client latency ms",
            "pgbench TPC-B 16 clients tps",
            "pgbench TPC-B 16 clients latency ms",
        ] {
            let without = median(figures[&(workload, "plain")].clone());
            let with = median(figures[&(workload, "ha")].clone());
            println!("| {workload} | {without:.3} | {with:.3} | {:.2} |", with / without);
            json.push(format!(
                r#"{{"workload":"{workload}","without":{without},"with":{with}}}"#
            ));
        }
        drop(backends);

        println!("\n## Failover: the writer's worker SIGKILLed with its disk\n");
        let mut rto = Vec::new();
        let mut lost = 0usize;
        let mut first = 0i64;
        for k in 0..kills {
            let d = b.until("ha", protected).await;
            let writer = d["worker_id"].as_str().unwrap().to_owned();
            let stop = Arc::new(AtomicBool::new(false));
            let (acked, task) = committer(&b, "ha", first, stop.clone());
            while acked.lock().unwrap().len() < 100 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let killed = Instant::now();
            b.destroy(&writer);
            let after = loop {
                let hit = acked
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(_, _, connected)| *connected > killed)
                    .map(|(_, at, _)| *at);
                if let Some(at) = hit {
                    break at;
                }
                assert!(killed.elapsed() < Duration::from_secs(120), "no commit after the kill");
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            stop.store(true, Ordering::Relaxed);
            task.await.unwrap();
            let ms = (after - killed).as_secs_f64() * 1e3;
            rto.push((ms * 1000.0) as u64);
            let acked = acked.lock().unwrap().clone();
            first = acked.iter().map(|(id, _, _)| *id).max().unwrap_or(first) + 1;
            let s = b.through_gateway("ha").await;
            let ids: Vec<i64> = acked.iter().map(|(id, _, _)| *id).collect();
            let present = s
                .query_one("SELECT count(*) FROM t WHERE id = ANY($1)", &[&ids])
                .await
                .unwrap()
                .get::<_, i64>(0) as usize;
            lost += ids.len() - present;
            println!("kill {}: {ms:.0} ms, {} acknowledged, {} lost", k + 1, ids.len(), ids.len() - present);
            b.new_worker().await;
        }
        rto.sort_unstable();
        let (p50, max) = (
            percentile(&rto, 0.5) as f64 / 1000.0,
            *rto.last().unwrap() as f64 / 1000.0,
        );
        println!("\n| kills | kill to first acknowledged commit p50 | max | acknowledged commits lost |");
        println!("|---|---|---|---|");
        println!("| {kills} | {p50:.0} ms | {max:.0} ms | {lost} |");
        json.push(format!(
            r#"{{"workload":"failover","kills":{kills},"p50_ms":{p50},"max_ms":{max},"lost":{lost}}}"#
        ));
    });
    support::write_results("ha", &json);
}
