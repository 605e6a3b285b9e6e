//! The public API over HTTP: requests per second and latency through the real `spg99 serve`,
//! next to a bare actix-web JSON handler (the HTTP ceiling of this machine) in the same run.
//!
//! Workloads, each at 1, 16, 64 and 256 keep-alive connections for a fixed time:
//! - `bare GET`: a bare actix-web handler answering a describe-sized JSON document;
//! - `GET describe`: `GET /v2/tenants/{t}/dbs/{db}` with an account key;
//! - `POST create-tenant`, `POST create-db`: durable creates with unique names.
//!
//! Both servers run as their own processes (the bare one is this binary started with
//! `--bare-server`, answering the very describe body the server gives); the load comes from this process over loopback, one minimal HTTP/1.1
//! client task per connection, the same client for both.
//!
//! Run: `cargo bench --bench http_api` (`SPG99_BENCH_SECS`, default 3 s per cell;
//! `SPG99_BENCH_ONLY="bare GET,GET describe"` and `SPG99_BENCH_CONNECTIONS=256` for some cells
//! only). Prints a markdown table and writes `target/bench/http_api.json`.

mod support;

use std::time::Duration;

use support::http::{get, post, Conn};
use support::ROOT;

const CONNECTIONS: [usize; 4] = [1, 16, 64, 256];

struct Cell {
    workload: &'static str,
    conns: usize,
    ok: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
}

impl Cell {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }
}

/// Runs `conns` connections for `dur`, each sending what `make(i)` builds; counts answers
/// with status `expect`.
fn load(
    addr: &str,
    workload: &'static str,
    conns: usize,
    dur: Duration,
    expect: u16,
    make: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static,
) -> Cell {
    let m = support::load::http_load(
        &support::load::runtime(),
        addr,
        conns,
        dur,
        expect,
        None,
        make,
    );
    let pct = |p: f64| support::percentile(&m.lat, p);
    Cell {
        workload,
        conns,
        ok: m.lat.len() as u64,
        secs: m.secs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    }
}

/// Sends one request on a fresh connection and returns the JSON body.
fn once(addr: &str, req: Vec<u8>) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { Conn::open(addr).await.json(&req).await })
}

fn main() {
    if support::bare::child_main() {
        return;
    }
    let dur = Duration::from_secs(support::env_or("SPG99_BENCH_SECS", 3));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("http_api");
    let _ = std::fs::remove_dir_all(&dir);

    let (mut spg_child, spg_addr) = support::spawn_spg99(&dir);

    // An account, its key, a tenant and a database to describe.
    let account = once(&spg_addr, post("/v2/accounts", ROOT, r#"{"name":"bench"}"#));
    let account = account["account_id"].as_str().unwrap().to_owned();
    let key = once(
        &spg_addr,
        post(
            &format!("/v2/accounts/{account}/api-keys"),
            ROOT,
            r#"{"scope":"account","permissions":{"can_create_tenant":true,"can_create_db":true}}"#,
        ),
    );
    let key: &'static str = Box::leak(key["token"].as_str().unwrap().to_owned().into_boxed_str());
    once(&spg_addr, post("/v2/tenants", key, r#"{"name":"shop"}"#));
    once(
        &spg_addr,
        post("/v2/tenants/shop/dbs", key, r#"{"name":"app","size":"L1"}"#),
    );
    // The ceiling answers exactly what the describe answers, from memory.
    let describe = once(&spg_addr, get("/v2/tenants/shop/dbs/app", key)).to_string();
    let (mut bare_child, bare_addr) = support::bare::spawn(&describe);

    let only = std::env::var("SPG99_BENCH_ONLY").ok();
    let wanted = |w: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == w));
    let connections: Vec<usize> = std::env::var("SPG99_BENCH_CONNECTIONS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| CONNECTIONS.to_vec());
    let mut cells = Vec::new();
    for &n in &connections {
        if wanted("bare GET") {
            cells.push(load(&bare_addr, "bare GET", n, dur, 200, |_| {
                get("/bare", "x")
            }));
        }
        if wanted("GET describe") {
            cells.push(load(&spg_addr, "GET describe", n, dur, 200, move |_| {
                get("/v2/tenants/shop/dbs/app", key)
            }));
        }
        if wanted("POST create-tenant") {
            cells.push(load(
                &spg_addr,
                "POST create-tenant",
                n,
                dur,
                201,
                move |i| post("/v2/tenants", key, &format!(r#"{{"name":"t{n}-{i}"}}"#)),
            ));
        }
        if wanted("POST create-db") {
            cells.push(load(&spg_addr, "POST create-db", n, dur, 201, move |i| {
                post(
                    "/v2/tenants/shop/dbs",
                    key,
                    &format!(r#"{{"name":"d{n}-{i}","size":"L1"}}"#),
                )
            }));
        }
        eprintln!("done: {n} connections");
    }
    let _ = spg_child.kill();
    let _ = bare_child.kill();
    let _ = std::fs::remove_dir_all(&dir);

    println!("| connections | workload | req/s | p50 µs | p99 µs | vs bare GET |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for &n in &connections {
        let bare = cells
            .iter()
            .find(|c| c.conns == n && c.workload == "bare GET")
            .map_or(f64::NAN, Cell::per_sec);
        for c in cells.iter().filter(|c| c.conns == n) {
            println!(
                "| {} | {} | {:.0} | {} | {} | {:.2} |",
                n,
                c.workload,
                c.per_sec(),
                c.p50_us,
                c.p99_us,
                c.per_sec() / bare
            );
            json.push(format!(
                "{{\"connections\":{},\"workload\":\"{}\",\"ok\":{},\"secs\":{:.3},\"per_sec\":{:.1},\"p50_us\":{},\"p99_us\":{}}}",
                n, c.workload, c.ok, c.secs, c.per_sec(), c.p50_us, c.p99_us
            ));
        }
    }
    support::write_results("http_api", &json);
}
