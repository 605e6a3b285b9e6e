//! The Console's liveness: how long from a committed event to the open page showing it.
//!
//! A real headless chromium (the tests' browser) is logged in to the Console on the Tenants
//! view. The benchmark then makes 100 tenants through the API, one at a time, and for each
//! records four wall-clock times on this machine:
//! - the commit: the tenant's `created_at`, stamped when its batch was formed (before the
//!   device sync);
//! - the 2xx reaching the API client;
//! - the baseline: the event reaching a plain SSE reader of `GET /v2/events` in this process
//!   (the same stream the page follows, with nothing on top);
//! - the page: when the tenant's row entered the page (a `MutationObserver` in the page
//!   notes it), and the first animation frame after that, i.e. the frame that paints it.
//!
//! Between changes it waits until both have seen the last one and 100 ms more, so each figure
//! is one change on a quiet page. Run: `cargo bench --bench console` (`SPG99_BENCH_CHANGES`,
//! default 100). Prints a markdown table and writes `target/bench/console.json`.

mod support;

#[path = "../tests/it/browser.rs"]
mod browser;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::http::{get, post, Conn};
use support::{env_or, spawn_spg99, write_results, Row, ROOT};

const EMAIL: &str = "ops@bench.io";

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn micros(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
}

/// Reads `GET /v2/events` (tenant.created only) and notes when each tenant's event arrived.
fn sse_reader(addr: &str, token: &str, since: u64, seen: Arc<Mutex<HashMap<String, i64>>>) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_nodelay(true).unwrap();
    write!(
        conn,
        "GET /v2/events?since={since}&types=tenant.created HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { return };
            // Chunked framing puts sizes on lines of their own; the frames' lines are whole.
            if let Some(data) = line.strip_prefix("data: ") {
                let at = now_micros();
                if let Ok(v) = serde_json::from_str::<Value>(data) {
                    if let Some(t) = v["tenant"].as_str() {
                        seen.lock().unwrap().insert(t.to_owned(), at);
                    }
                }
            }
        }
    });
}

/// Notes, in the page, the frame that first painted each tenant's row.
const OBSERVE: &str = "
window.insertedAt = {};
window.shownAt = {};
const now = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
const mark = () => {
  for (const tr of document.querySelectorAll('tr[data-tenant]')) {
    const n = tr.dataset.tenant;
    if (n in insertedAt) continue;
    insertedAt[n] = now();
    requestAnimationFrame(() => { shownAt[n] = now(); });
  }
};
new MutationObserver(mark).observe(document.querySelector('main'), { childList: true, subtree: true });
mark();
return null;";

fn main() {
    let changes = env_or("SPG99_BENCH_CHANGES", 100) as usize;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = spawn_spg99(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (token, head) = rt.block_on(async {
        let mut c = Conn::open(&addr).await;
        let body = json!({"name": "bench", "email": EMAIL}).to_string();
        let account = c.json(&post("/v2/accounts", ROOT, &body)).await;
        let id = account["account_id"].as_str().unwrap();
        let body = json!({"scope": "account", "permissions": {"can_create_tenant": true}});
        let key = c
            .json(&post(
                &format!("/v2/accounts/{id}/api-keys"),
                ROOT,
                &body.to_string(),
            ))
            .await;
        let token = key["token"].as_str().unwrap().to_owned();
        c.call(&get("/v2/api-keys/me", &token)).await;
        let head = c.json(&get("/v2/admin/state", ROOT)).await["seq"]
            .as_u64()
            .unwrap();
        (token, head)
    });
    let seen = Arc::new(Mutex::new(HashMap::new()));
    sse_reader(&addr, &token, head, seen.clone());

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../console");
    let b = browser::Browser::open(&shots, 1280, 900);
    b.goto(&format!("http://{addr}/console/#/tenants"));
    b.fill("#login-email", EMAIL);
    b.fill("#login-token", &token);
    b.click("#login-submit");
    b.until_contains("main h1", "Tenants");
    b.until_contains("#live", "Live");
    b.js(OBSERVE, vec![]);

    let (mut to_sse, mut to_dom, mut to_page, mut ok_to_page) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut c = rt.block_on(Conn::open(&addr));
    for i in 0..changes {
        let name = format!("t{i:03}");
        let body = json!({ "name": name }).to_string();
        let created = rt.block_on(c.json(&post("/v2/tenants", &token, &body)));
        let ok = now_micros();
        let commit = micros(created["created_at"].as_str().unwrap());
        let began = Instant::now();
        let (sse, (dom, page)) = loop {
            let page = b.js(
                "return [insertedAt[arguments[0]] ?? null, shownAt[arguments[0]] ?? null];",
                vec![json!(name)],
            );
            let sse = seen.lock().unwrap().get(&name).copied();
            if let (Some(sse), Some(dom), Some(page)) = (sse, page[0].as_i64(), page[1].as_i64()) {
                break (sse, (dom, page));
            }
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "{name} never showed"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        to_sse.push((sse - commit).max(0) as u64);
        to_dom.push((dom - commit).max(0) as u64);
        to_page.push((page - commit).max(0) as u64);
        ok_to_page.push((page - ok).max(0) as u64);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(b.console_errors().is_empty(), "the page logged errors");
    drop(b);
    let _ = server.kill();
    let _ = server.wait();

    let rows = [
        Row::new("commit → plain SSE reader (baseline)", to_sse),
        Row::new("commit → row in the Console's page (DOM)", to_dom),
        Row::new("commit → Console page painted", to_page),
        Row::new("API 2xx at the client → Console page painted", ok_to_page),
    ];
    let base = rows[0].ms(0.5).max(0.001);
    println!("| {changes} changes, one at a time | p50 ms | p99 ms | p50 vs baseline |");
    println!("|---|---|---|---|");
    let mut json_rows = Vec::new();
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.2}x |",
            r.workload,
            r.ms(0.5),
            r.ms(0.99),
            r.ms(0.5) / base
        );
        json_rows.push(
            json!({"workload": r.workload, "p50_ms": r.ms(0.5), "p99_ms": r.ms(0.99), "n": r.lat.len()})
                .to_string(),
        );
    }
    write_results("console", &json_rows);
}
