//! What the benchmarks share: settings from the environment, percentiles, the server under
//! test, and where raw results go.

#![allow(dead_code)] // each benchmark uses a part

pub mod appends;
pub mod bare;
pub mod http;
pub mod load;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The bootstrap token the benchmarks start the server with.
pub const ROOT: &str = "spg99_00000000000000aa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A whole-number setting from the environment.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0 to 1) of sorted values; 0 for none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Starts a child and waits for the line `... listening on [http://]ADDR`; returns its address.
pub fn spawn_listening(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("child exited").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.trim().trim_start_matches("http://").to_owned();
        }
    };
    // Keep draining its stdout so it never blocks.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// The real `spg99 serve` on a free loopback port, with data in `dir`.
pub fn spawn_spg99(dir: &Path) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spg99"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("SPG99_BOOTSTRAP_TOKEN", ROOT)
        .env("RUST_LOG", "warn");
    spawn_listening(cmd)
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
