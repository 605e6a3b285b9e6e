//! A lifecycle lab: a real server on a manual clock, with one tenant, and the test playing
//! the Gateway and the workers through the internal API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{bin, pg_ports, Fixture, Reply, Server, Start, ROOT_TOKEN};

pub const SERVICE_TOKEN: &str = "spg99_svc_cccccccccccccccccccccccccccccccccccccccccccccccc";

pub struct Lab {
    pub fx: Fixture,
    pub pg_user: String,
}

/// A server with a manual clock and the service token set; `extra` adds settings.
pub fn start<'a>(data_dir: &'a Path, extra: &[(&'a str, &str)]) -> Start<'a> {
    let mut s = Start::new(data_dir)
        // The repository beside the data directory: the workers the tests start make the
        // directories above it reachable for the postgres user.
        .env(
            "SPG99_STORAGE",
            data_dir.with_extension("storage").display().to_string(),
        )
        .env("SPG99_CLOCK", "manual")
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .env("SPG99_WORKER_TIMEOUT_MS", "3600000");
    for (k, v) in extra {
        s = s.env(k, *v);
    }
    s
}

impl Lab {
    pub fn new(data_dir: &Path, extra: &[(&str, &str)]) -> Lab {
        Lab::on(start(data_dir, extra).spawn())
    }

    /// A lab on a server started with [`start`] and more settings.
    pub fn on(server: Server) -> Lab {
        let fx = Fixture::with_server(server);
        let t = fx.server.create_tenant(&fx.account_key, "shop");
        Lab {
            pg_user: t.body["pg_user"].as_str().unwrap().to_owned(),
            fx,
        }
    }

    pub fn s(&self) -> &Server {
        &self.fx.server
    }

    pub fn internal(&self, path: &str, body: Value) -> Reply {
        self.s()
            .post(&format!("/internal/v1{path}"), SERVICE_TOKEN, body)
    }

    pub fn create_db(&self, name: &str) -> String {
        let r = self.s().create_db(&self.fx.account_key, "shop", name);
        r.body["db_id"].as_str().unwrap().to_owned()
    }

    pub fn describe(&self, db: &str) -> Value {
        let r = self
            .s()
            .get(&format!("/v2/tenants/shop/dbs/{db}"), &self.fx.account_key);
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    }

    pub fn register(&self, worker: &str, profiles: &[&str]) {
        let r = self.internal(
            "/workers",
            json!({"id": worker, "address": format!("{worker}.local:6432"), "capacity": 8, "profiles": profiles}),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }

    pub fn heartbeat(&self, worker: &str, loads: Value) -> Vec<Value> {
        let r = self.internal(
            &format!("/workers/{worker}/heartbeat"),
            json!({ "loads": loads }),
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.body["instructions"].as_array().unwrap().clone()
    }

    pub fn instructions(&self, worker: &str) -> Vec<Value> {
        let r = self.s().get(
            &format!("/internal/v1/workers/{worker}/instructions"),
            SERVICE_TOKEN,
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.body["instructions"].as_array().unwrap().clone()
    }

    /// Reports `outcome` for the db at `term`; returns whether it was accepted.
    pub fn report(&self, worker: &str, db_id: &str, term: u64, outcome: &str) -> bool {
        let mut body = json!({"db_id": db_id, "writer_term": term, "outcome": outcome});
        match outcome {
            "started" | "promoted" => body["backend_addr"] = json!(format!("{worker}.local:6432")),
            "failed" => body["reason"] = json!("disk full"),
            _ => {}
        }
        let r = self.internal(&format!("/workers/{worker}/reports"), body);
        assert_eq!(r.status, 200, "{r:?}");
        r.body["accepted"].as_bool().unwrap()
    }

    pub fn checkout(&self, db: &str) -> Reply {
        self.internal("/checkout", json!({"pg_user": self.pg_user, "db": db}))
    }

    /// A checkout that must grant a lease; returns (lease_id, epoch).
    pub fn lease(&self, db: &str) -> (String, u64) {
        let r = self.checkout(db);
        assert_eq!(r.status, 200, "{r:?}");
        (
            r.body["lease_id"].as_str().unwrap().to_owned(),
            r.body["lease_control_epoch"].as_u64().unwrap(),
        )
    }

    pub fn renew(&self, lease: &str, epoch: u64, connections: u32) -> Reply {
        self.internal(
            &format!("/leases/{lease}/renew"),
            json!({"active_connections": connections, "lease_control_epoch": epoch}),
        )
    }

    pub fn release(&self, lease: &str) -> Reply {
        self.internal(
            &format!("/leases/{lease}/release"),
            json!({"active_connections": 0}),
        )
    }

    /// Moves the manual clock and runs a reconciler pass.
    pub fn advance(&self, seconds: f64) {
        let r = self.internal("/clock/advance", json!({ "seconds": seconds }));
        assert_eq!(r.status, 200, "{r:?}");
    }

    /// Checks out a stopped database and starts it on `worker`: returns its writer term.
    pub fn start_db(&self, db: &str, worker: &str) -> u64 {
        let r = self.checkout(db);
        assert_eq!(r.status, 202, "{r:?}");
        let db_id = r.body["db_id"].as_str().unwrap().to_owned();
        let start = self
            .instructions(worker)
            .into_iter()
            .find(|i| i["op"] == "start" && i["db_id"] == db_id.as_str())
            .expect("a start instruction");
        let term = start["writer_term"].as_u64().unwrap();
        assert!(self.report(worker, &db_id, term, "started"));
        term
    }

    /// Event types of the log after `from`, for one database.
    pub fn types_since(&self, db_id: &str, from: u64) -> Vec<String> {
        let r = self.s().get(
            &format!("/v2/admin/log?from={}&db={db_id}", from + 1),
            ROOT_TOKEN,
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn head(&self) -> u64 {
        self.s().fingerprint().1
    }
}

/// A running `spg99 worker`, stopped (SIGTERM: its writers stop too) when dropped.
pub struct Worker {
    child: Option<Child>,
    pub id: String,
    args: Vec<String>,
    base: String,
    pub storage: Option<PathBuf>,
    env: Vec<(&'static str, String)>,
}

impl Worker {
    /// A simulated worker with `extra` flags, answering at `<id>.sim:6432`.
    pub fn simulated(lab: &Lab, id: &str, extra: &[&str]) -> Worker {
        Worker::simulated_on(lab.s(), id, extra)
    }

    /// The same, for a server started with [`SERVICE_TOKEN`] outside a lab.
    pub fn simulated_on(server: &Server, id: &str, extra: &[&str]) -> Worker {
        let mut args: Vec<String> = ["--compute", "simulated", "--heartbeat-ms", "20"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--address".into(), format!("{id}.sim:6432")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Worker::spawn(server, id, args, None)
    }

    /// A worker running PostgreSQL, its storage in `dir` (made reachable for the postgres
    /// user), heartbeating every 200 ms.
    pub fn postgres(server: &Server, id: &str, dir: &Path) -> Worker {
        Worker::postgres_with(server, id, dir, &[])
    }

    /// The same, with `env` in the worker's environment.
    pub fn postgres_with(
        server: &Server,
        id: &str,
        dir: &Path,
        env: &[(&'static str, String)],
    ) -> Worker {
        use std::os::unix::fs::PermissionsExt;
        let mut at = dir.to_path_buf();
        while at.pop() && at.starts_with(std::env::temp_dir()) && at != std::env::temp_dir() {
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let storage = dir.to_path_buf();
        let args = vec![
            "--compute".into(),
            "postgres".into(),
            "--heartbeat-ms".into(),
            "200".into(),
            "--storage-dir".into(),
            storage.display().to_string(),
            "--port-range".into(),
            pg_ports(),
        ];
        let mut w = Worker::new(server, id, args, Some(storage));
        w.env = env.to_vec();
        w.start(server);
        w
    }

    /// The worker process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(server: &Server, id: &str, args: Vec<String>, storage: Option<PathBuf>) -> Worker {
        let mut w = Worker::new(server, id, args, storage);
        w.start(server);
        w
    }

    fn new(server: &Server, id: &str, args: Vec<String>, storage: Option<PathBuf>) -> Worker {
        Worker {
            child: None,
            id: id.to_owned(),
            args,
            base: server.base.clone(),
            storage,
            env: Vec::new(),
        }
    }

    /// Starts (or starts again) the worker process; returns once the control plane lists it.
    pub fn start(&mut self, server: &Server) {
        // Registrations of this worker so far (a clock that stands still gives a new one the
        // old one's time, so they are counted rather than timed).
        let registrations = || {
            let r = server.get(
                "/v2/admin/log?types=worker.registered&limit=10000",
                ROOT_TOKEN,
            );
            r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["data"]["worker_id"] == self.id.as_str())
                .count()
        };
        let before = registrations();
        let child = Command::new(bin())
            .args(["worker", "--control-plane", &self.base, "--id", &self.id])
            .args(&self.args)
            .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(match &self.storage {
                Some(dir) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.with_extension("worker.log"))
                        .unwrap(),
                ),
                None => Stdio::null(),
            })
            .spawn()
            .expect("spawn spg99 worker");
        self.child = Some(child);
        for _ in 0..600 {
            if registrations() > before {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("worker {} exited ({status}): {}", self.id, self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("worker {} never registered: {}", self.id, self.log());
    }

    /// What the worker logged (PostgreSQL workers only).
    pub fn log(&self) -> String {
        self.storage
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.with_extension("worker.log")).ok())
            .unwrap_or_default()
    }

    /// SIGTERM, as an operator stops it: it stops its servers and exits (SIGKILL if it has
    /// not within 10 s).
    pub fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        for _ in 0..400 {
            if c.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// SIGKILL: its servers keep running, as after a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Waits for the process to exit by itself; its status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.terminate();
        // What a SIGKILLed worker left running under its directory (its PostgreSQL servers, a
        // pgBackRest backup under way) must not outlive the test.
        if let Some(dir) = &self.storage {
            let _ = Command::new("pkill")
                .args(["-KILL", "-f", &format!("{}/", dir.display())])
                .status();
        }
    }
}

/// A running `spg99 gateway` of its own, stopped (SIGTERM) when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub addr: String,
    log: PathBuf,
}

impl Gateway {
    /// Starts a Gateway for the control plane at `server` on a free port, its certificate
    /// kept in `dir`; `extra` adds flags.
    pub fn start(server: &Server, dir: &Path, extra: &[&str]) -> Gateway {
        use std::io::{BufRead, BufReader};
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join("gateway.log");
        let mut child = Command::new(bin())
            .args(["gateway", "--control-plane", &server.base])
            .args(["--listen", "127.0.0.1:0", "--pooler-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0"])
            .arg("--tls-dir")
            .arg(dir.join("tls"))
            .args(extra)
            .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("spawn spg99 gateway");
        let stdout = child.stdout.take().unwrap();
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // The rest (its pooler's and HTTP addresses) is read too: a closed pipe would fail its prints.
        std::thread::spawn(move || for _ in stdout.lines() {});
        let Some(addr) = line.trim().strip_prefix("spg99 gateway listening on ") else {
            let _ = child.kill();
            panic!(
                "the gateway did not start: {line:?} {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Gateway {
            addr: addr.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Gateway {
    /// SIGKILL: no chance to release its leases or say goodbye to its clients.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and waits for the process to end.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Waits (at most 60 s) until an inserter has committed `n` more rows than now, as after a
/// handoff, to show that the new writer takes them; the count it started from.
pub fn more_rows(committed: &std::sync::Mutex<Vec<i64>>, n: usize) -> usize {
    let from = committed.lock().unwrap().len();
    let began = std::time::Instant::now();
    while committed.lock().unwrap().len() < from + n {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "no rows went in on the new writer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    from
}

/// Field `n` of `/proc/<pid>/stat` counted after the command name (0: the state, 1: the
/// parent's pid), if the process exists.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(n).map(str::to_owned)
}

/// Whether `pid` runs (zombies left to an init that does not reap them do not count).
pub fn running(pid: u32) -> bool {
    stat_field(pid, 0).is_some_and(|state| state != "Z")
}

/// The parent of `pid`.
pub fn parent(pid: u32) -> Option<u32> {
    stat_field(pid, 1)?.parse().ok()
}

/// The live postgres processes whose data directory (`-D`) is under `storage`: (directory,
/// pid).
pub fn postgres_servers(storage: &Path) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let dir = args
            .iter()
            .position(|a| a == "-D")
            .and_then(|i| args.get(i + 1));
        let pid: u32 = entry.file_name().to_str().unwrap().parse().unwrap_or(0);
        let postgres = args.first().is_some_and(|p| p.ends_with("/postgres"));
        if let Some(dir) = dir.filter(|d| postgres && Path::new(d).starts_with(storage)) {
            if running(pid) {
                found.push((dir.clone(), pid));
            }
        }
    }
    found
}

/// The acknowledged ids that table `t` does not hold.
pub fn lost_rows(c: &mut postgres::Client, committed: &[i64]) -> Vec<i64> {
    let stored: Vec<i64> = c
        .query("SELECT id FROM t ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    committed
        .iter()
        .filter(|id| stored.binary_search(id).is_err())
        .copied()
        .collect()
}
