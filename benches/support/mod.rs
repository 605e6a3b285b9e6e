//! What the benchmarks share: settings from the environment, percentiles, the server under
//! test, and where raw results go.

#![allow(dead_code)] // each benchmark uses a part

pub mod appends;
pub mod bare;
pub mod http;
pub mod load;
pub mod platform;
pub mod postgres;
pub mod served;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The bootstrap token the benchmarks start the server with.
pub const ROOT: &str = "spg99_00000000000000aa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A scratch directory for one run (removed when dropped).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("spg99-bench-")
        .tempdir()
        .unwrap()
}

/// The runtime a benchmark's clients run on: two threads, as the machine has cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A whole-number setting from the environment.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A process's resident set (KiB), from /proc; 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `p` quantile (0 to 1) of sorted values; 0 for none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Latencies (µs) of one workload, sorted.
pub struct Row {
    pub workload: String,
    pub lat: Vec<u64>,
}

impl Row {
    pub fn new(workload: impl Into<String>, mut lat: Vec<u64>) -> Row {
        lat.sort_unstable();
        Row {
            workload: workload.into(),
            lat,
        }
    }

    /// The `p` quantile (0 to 1), in milliseconds.
    pub fn ms(&self, p: f64) -> f64 {
        percentile(&self.lat, p) as f64 / 1000.0
    }
}

/// Starts a child and waits for the line `... listening on [http://]ADDR`; returns its address.
pub fn spawn_listening(cmd: Command) -> (Child, String) {
    let (child, mut addrs) = spawn_announcing(cmd, &["listening on "]);
    (child, addrs.remove(0))
}

/// Starts a child and waits until it has printed a line with each of `markers`; returns, for
/// each, what follows it on its line (without `http://`).
pub fn spawn_announcing(mut cmd: Command, markers: &[&str]) -> (Child, Vec<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut found: Vec<Option<String>> = vec![None; markers.len()];
    while found.iter().any(Option::is_none) {
        let line = lines.next().expect("child exited").unwrap();
        if let Some((i, rest)) = markers
            .iter()
            .enumerate()
            .find_map(|(i, m)| Some((i, line.split(m).nth(1)?)))
        {
            found[i] = Some(rest.trim().trim_start_matches("http://").to_owned());
        }
    }
    // Keep draining its stdout so it never blocks.
    std::thread::spawn(move || for _ in lines {});
    (child, found.into_iter().map(Option::unwrap).collect())
}

/// `spg99 serve` on a free loopback port with data in `dir`: the control plane alone (no
/// embedded Gateway, no local worker; a benchmark that wants them sets
/// `SPG99_GATEWAY_LISTEN` and `SPG99_COMPUTE`), bootstrapped with [`ROOT`].
pub fn serve_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spg99"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("SPG99_BOOTSTRAP_TOKEN", ROOT)
        .env("SPG99_GATEWAY_LISTEN", "none")
        .env("SPG99_HTTP_LISTEN", "127.0.0.1:0")
        .env("SPG99_COMPUTE", "none")
        // Load generators are one key at full speed: no per-key request limit.
        .env("SPG99_LIMIT_REQUESTS_PER_KEY", "0")
        .env("SPG99_LIMIT_STREAMS_PER_KEY", "0")
        .env("RUST_LOG", "warn");
    cmd
}

/// Starts `spg99 serve` as `cmd` says and waits until its API listens; returns its address.
pub fn spawn_serve(cmd: Command) -> (Child, String) {
    let (child, mut addrs) = spawn_announcing(cmd, &["spg99 listening on "]);
    (child, addrs.remove(0))
}

/// The real `spg99 serve` (the control plane alone) on a free loopback port, with data in
/// `dir`.
pub fn spawn_spg99(dir: &Path) -> (Child, String) {
    spawn_serve(serve_command(dir))
}

/// `spg99 worker --id w1` with `args` for the control plane at `addr`, with the service token
/// `service`; returns once the control plane lists it live.
pub async fn spawn_worker(addr: &str, service: &str, args: &[&str]) -> Child {
    spawn_worker_as(addr, service, "w1", args, &[]).await
}

/// The same as worker `id`, with `env` in its environment.
pub async fn spawn_worker_as(
    addr: &str,
    service: &str,
    id: &str,
    args: &[&str],
    env: &[(&'static str, String)],
) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spg99"))
        .args(["worker", "--control-plane", &format!("http://{addr}")])
        .args(["--id", id])
        .args(args)
        .env("SPG99_SERVICE_TOKEN", service)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = http::Conn::open(addr).await;
    for _ in 0..1200 {
        let list = conn.json(&http::get("/internal/v1/workers", service)).await;
        let listed = list["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["worker_id"] == id && w["lost_at"].is_null());
        if listed {
            return child;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the worker never registered");
}

/// Writes raw results (JSON objects) to `target/bench/<name>.json`.
pub fn write_results(name: &str, rows: &[String]) {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join(format!("{name}.json")),
        format!("[{}]\n", rows.join(",\n")),
    )
    .unwrap();
}
