//! Failover: three replicas of `spg99 serve` on one PostgreSQL log (a server of the
//! benchmark's own, fsync on), the leader SIGKILLed `SPG99_FAILOVER_KILLS` times (10), each
//! time replaced by a fresh replica once another leads.
//!
//! Two times per kill, from the SIGKILL: until a surviving replica's `/readyz` says it leads,
//! and until a write sent through a surviving replica (retried every 10 ms, as a client that
//! got 503 would) is answered 201 — the outage a user sees. Both are bounded below by the
//! lease: the dead leader renewed it at most a third of a TTL before, and it lapses a TTL
//! after that. The lease is the default (`--leader-ttl-ms 3000`) unless
//! `SPG99_LEADER_TTL_MS` says otherwise.
//!
//! Run: `cargo bench --bench failover` (PostgreSQL installed: scripts/install-engines.sh).
//! Prints a markdown table and writes `target/bench/failover.json`.

mod support;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use support::{env_or, percentile, serve_command, spawn_serve, write_results, ROOT};

const REPLICAS: usize = 3;
const KEY: &str = "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c";

struct Replica {
    child: Child,
    base: String,
}

fn start(root: &Path, n: usize, url: &str, ttl: u64) -> Replica {
    let mut cmd = serve_command(&root.join(format!("r{n}")));
    cmd.env("SPG99_LOG", url)
        .env("SPG99_SECRET_KEY", KEY)
        .env("SPG99_LEADER_TTL_MS", ttl.to_string());
    let (child, addr) = spawn_serve(cmd);
    Replica {
        child,
        base: format!("http://{addr}"),
    }
}

fn role(agent: &ureq::Agent, base: &str) -> String {
    agent
        .get(&format!("{base}/readyz"))
        .call()
        .ok()
        .and_then(|r| r.into_json::<serde_json::Value>().ok())
        .and_then(|v| v["role"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn main() {
    let kills = env_or("SPG99_FAILOVER_KILLS", 10) as usize;
    let ttl = env_or("SPG99_LEADER_TTL_MS", 3000);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("failover");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("pg")).unwrap();
    let pg = spg99_worker::postgres::process::scratch(&root.join("pg")).expect("PostgreSQL");
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();

    let mut started = 0;
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|_| {
            started += 1;
            start(&root, started, &url, ttl)
        })
        .collect();
    let (mut to_leader, mut to_write) = (Vec::new(), Vec::new());
    for kill in 0..kills {
        let leader = loop {
            if let Some(i) =
                (0..replicas.len()).find(|&i| role(&agent, &replicas[i].base) == "leader")
            {
                break i;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Past a renewal or two, so the kill lands anywhere in the lease's cycle.
        std::thread::sleep(Duration::from_millis(ttl / 2 + 97 * kill as u64 % ttl));
        let mut dead = replicas.remove(leader);
        let killed = Instant::now();
        dead.child.kill().unwrap();
        let _ = dead.child.wait();
        let (mut leads, mut writes) = (None, None);
        while leads.is_none() || writes.is_none() {
            if leads.is_none() && replicas.iter().any(|r| role(&agent, &r.base) == "leader") {
                leads = Some(killed.elapsed());
            }
            if writes.is_none() {
                let name = format!("k{kill}-{}", killed.elapsed().as_micros());
                let res = agent
                    .post(&format!(
                        "{}/v2/accounts",
                        replicas[kill % replicas.len()].base
                    ))
                    .set("Authorization", &format!("Bearer {ROOT}"))
                    .send_json(serde_json::json!({ "name": name }));
                if res.is_ok_and(|r| r.status() == 201) {
                    writes = Some(killed.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (leads, writes) = (leads.unwrap(), writes.unwrap());
        eprintln!(
            "kill {}: a new leader after {leads:?}, a write after {writes:?}",
            kill + 1
        );
        to_leader.push(leads.as_micros() as u64);
        to_write.push(writes.as_micros() as u64);
        started += 1;
        replicas.push(start(&root, started, &url, ttl));
    }
    for mut r in replicas {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    let _ = pg.stop();
    let _ = std::fs::remove_dir_all(&root);

    to_leader.sort_unstable();
    to_write.sort_unstable();
    let s = |v: u64| v as f64 / 1e6;
    println!("| failover, {REPLICAS} replicas, lease {ttl} ms, {kills} SIGKILLs of the leader | p50 (s) | max (s) |");
    println!("|---|---:|---:|");
    println!(
        "| until a surviving replica leads | {:.2} | {:.2} |",
        s(percentile(&to_leader, 0.5)),
        s(*to_leader.last().unwrap_or(&0))
    );
    println!(
        "| until a write through a surviving replica is answered 201 | {:.2} | {:.2} |",
        s(percentile(&to_write, 0.5)),
        s(*to_write.last().unwrap_or(&0))
    );
    write_results(
        "failover",
        &[format!(
            r#"{{"replicas":{REPLICAS},"lease_ms":{ttl},"kills":{kills},"to_leader_us":{to_leader:?},"to_write_us":{to_write:?}}}"#
        )],
    );
}
