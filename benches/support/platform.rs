//! The real `spg99 serve` (manual clock: idle stops, daily backups and lost workers come when
//! the benchmark says) with a storage repository, and one `spg99 worker --compute postgres`
//! at a time, as their own processes: what the storage and branch benchmarks drive.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{get, post, Conn};
use super::ROOT;

pub const SERVICE: &str = "spg99_svc_dddddddddddddddddddddddddddddddddddddddddddddddd";
/// A worker silent this long (on the manual clock) is lost: only when the benchmark says.
pub const WORKER_TIMEOUT_SECS: f64 = 864_000.0;

pub struct Platform {
    pub dir: PathBuf,
    server: Child,
    pub addr: String,
    pub pg_user: String,
    pub password: String,
    pub env: Vec<(&'static str, String)>,
    pub worker: Option<(String, Child, PathBuf)>,
    made: usize,
}

impl Drop for Platform {
    fn drop(&mut self) {
        // SIGTERM: the worker stops its servers.
        let worker = self.worker.as_mut().map(|(_, c, _)| c);
        for c in worker.into_iter().chain([&mut self.server]) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl Platform {
    pub async fn start(dir: &Path, storage: &str, env: Vec<(&'static str, String)>) -> Platform {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = super::serve_command(&dir.join("data"));
        cmd.env("SPG99_SERVICE_TOKEN", SERVICE)
            .env("SPG99_CLOCK", "manual")
            .env(
                "SPG99_WORKER_TIMEOUT_MS",
                ((WORKER_TIMEOUT_SECS * 1000.0) as u64).to_string(),
            )
            .env("SPG99_STORAGE", storage)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let (server, addr) = super::spawn_serve(cmd);
        let mut conn = Conn::open(&addr).await;
        let tenant = super::http::shop(&mut conn).await;
        let mut p = Platform {
            dir: dir.to_owned(),
            server,
            addr,
            pg_user: tenant["pg_user"].as_str().unwrap().to_owned(),
            password: tenant["pg_password"].as_str().unwrap().to_owned(),
            env,
            worker: None,
            made: 0,
        };
        p.new_worker().await;
        p
    }

    /// A worker with an empty disk. The one before (its databases stopped) is SIGKILLed, its
    /// disk deleted, and declared lost.
    pub async fn new_worker(&mut self) {
        if let Some((id, mut child, storage)) = self.worker.take() {
            let _ = child.kill();
            let _ = child.wait();
            std::fs::remove_dir_all(&storage).unwrap();
            self.advance(WORKER_TIMEOUT_SECS + 1.0).await;
            let mut conn = Conn::open(&self.addr).await;
            loop {
                let list = conn.json(&get("/internal/v1/workers", SERVICE)).await;
                let lost = list["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|w| w["worker_id"] == id.as_str() && !w["lost_at"].is_null());
                if lost {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.made += 1;
        let id = format!("w{}", self.made);
        let storage = self.dir.join(&id);
        let storage_arg = storage.display().to_string();
        let args = [
            "--compute",
            "postgres",
            "--heartbeat-ms",
            "200",
            "--port-range",
            "29000-29899",
            "--storage-dir",
            &storage_arg,
        ];
        let child = super::spawn_worker_as(&self.addr, SERVICE, &id, &args, &self.env).await;
        self.worker = Some((id, child, storage));
    }

    /// The current worker's pgBackRest configuration.
    pub fn pgbackrest_conf(&self) -> PathBuf {
        let (_, _, storage) = self.worker.as_ref().unwrap();
        storage.join("pgbackrest").join("pgbackrest.conf")
    }

    pub async fn create(&self, db: &str) {
        let mut conn = Conn::open(&self.addr).await;
        let body = format!(r#"{{"name":"{db}","size":"L1"}}"#);
        conn.json(&post("/v2/tenants/shop/dbs", ROOT, &body)).await;
    }

    /// A checkout that waits (again while it is answered "busy"): (backend, lease).
    pub async fn checkout(&self, db: &str) -> (String, String) {
        let mut conn = Conn::open(&self.addr).await;
        let req = post(
            "/internal/v1/checkout",
            SERVICE,
            &format!(
                r#"{{"pg_user":"{}","db":"{db}","wait_ms":30000}}"#,
                self.pg_user
            ),
        );
        loop {
            match conn.call(&req).await {
                200 => {
                    return (
                        conn.field("backend_addr").to_owned(),
                        conn.field("lease_id").to_owned(),
                    )
                }
                503 => continue,
                other => panic!("checkout of {db}: {other} {}", conn.body()),
            }
        }
    }

    pub async fn release(&self, lease: &str) {
        let mut conn = Conn::open(&self.addr).await;
        let req = post(
            &format!("/internal/v1/leases/{lease}/release"),
            SERVICE,
            "{}",
        );
        assert_eq!(conn.call(&req).await, 200);
    }

    pub async fn advance(&self, seconds: f64) {
        let mut conn = Conn::open(&self.addr).await;
        let body = format!(r#"{{"seconds":{seconds}}}"#);
        conn.json(&post("/internal/v1/clock/advance", SERVICE, &body))
            .await;
    }

    pub async fn describe(&self, db: &str) -> Value {
        let mut conn = Conn::open(&self.addr).await;
        conn.json(&get(&format!("/v2/tenants/shop/dbs/{db}"), ROOT))
            .await
    }

    /// Polls the describe of `db` every 20 ms until `done` holds.
    pub async fn until(&self, db: &str, done: impl Fn(&Value) -> bool) -> Value {
        loop {
            let d = self.describe(db).await;
            assert_ne!(d["state"], "failed", "{d}");
            if done(&d) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the last load recorded for `db` is in the low band (the autoscaler wants
    /// no handoff).
    pub async fn until_quiet(&self, db: &str) {
        let id = self.describe(db).await["db_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut conn = Conn::open(&self.addr).await;
        loop {
            let log = conn
                .json(&get(
                    &format!("/v2/admin/log?db={id}&types=db.load_changed&limit=10000"),
                    ROOT,
                ))
                .await;
            let last = log["items"].as_array().and_then(|i| i.last().cloned());
            if last.is_some_and(|e| e["data"]["band"] == "low") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Releases `lease`, passes the idle timeout and waits until `db` is stopped: how long
    /// that took once the clock had moved.
    pub async fn idle_stop(&self, db: &str, lease: &str) -> u64 {
        // The load reported over first, or the clock's jump moves the database to a bigger
        // profile instead (and a handoff starts its idle time again).
        self.until_quiet(db).await;
        self.release(lease).await;
        self.advance(301.0).await;
        let t = Instant::now();
        self.until(db, |d| d["state"] == "stopped").await;
        t.elapsed().as_micros() as u64
    }

    /// A session on `backend` as the tenant (SCRAM, no TLS).
    pub async fn session(&self, backend: &str, db: &str) -> tokio_postgres::Client {
        let (host, port) = backend.rsplit_once(':').unwrap();
        let (client, connection) = tokio_postgres::Config::new()
            .host(host)
            .port(port.parse().unwrap())
            .user(&self.pg_user)
            .password(&self.password)
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {backend}/{db}: {e}"));
        tokio::spawn(connection);
        client
    }

    /// A checkout, a connection and `SELECT 1`: (µs until the row, the lease).
    pub async fn open(&self, db: &str) -> (u64, String) {
        let t = Instant::now();
        let (backend, lease) = self.checkout(db).await;
        let c = self.session(&backend, db).await;
        c.query_one("SELECT 1", &[]).await.unwrap();
        (t.elapsed().as_micros() as u64, lease)
    }

    /// `pgbench` against `db` on `backend` with `args`; what it printed.
    pub fn pgbench(&self, backend: &str, db: &str, args: &[&str]) -> String {
        pgbench(backend, &self.pg_user, &self.password, db, args)
    }
}

/// `pgbench` as `user` (with `password`) against `db` on `backend` with `args`; what it printed.
pub fn pgbench(backend: &str, user: &str, password: &str, db: &str, args: &[&str]) -> String {
    let (host, port) = backend.rsplit_once(':').unwrap();
    let bin = spg99_worker::postgres::find_bin(None).unwrap();
    let out = Command::new(bin.join("pgbench"))
        .args(["-h", host, "-p", port, "-U", user])
        .args(args)
        .arg(db)
        .env("PGPASSWORD", password)
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

/// pgbench's "tps = N (without initial connection time)".
pub fn tps(out: &str) -> f64 {
    figure(out, "tps = ")
}

/// The number pgbench printed after `prefix` ("tps = ", "latency average = ").
pub fn figure(out: &str, prefix: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} in {out}"))
}
