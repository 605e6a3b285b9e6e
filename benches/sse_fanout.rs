//! Event stream fan-out: how many subscribers one server holds, how long an event takes to
//! reach them, and what each costs in memory.
//!
//! For 1 000 and then 10 000 subscribers: open them all (`GET /v2/events?since=<head>` over
//! loopback, each its own connection), measure the server's RSS before and after, then write
//! at a steady rate for a fixed time and record, for every event every subscriber receives,
//! the delay from the event's commit time (`at`, stamped when its batch was formed, so the
//! figure includes the device sync) to its arrival. Finally every subscriber must have
//! received every event: "held" counts those that did.
//!
//! Run: `cargo bench --bench sse_fanout` (`SPG99_BENCH_SECS`, default 10 s of writing per
//! scale; `SPG99_BENCH_RATE`, default 10 events/s). Prints a markdown table and writes
//! `target/bench/sse_fanout.json`.

mod support;

use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{rss_kib, ROOT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SCALES: [usize; 2] = [1_000, 10_000];

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Reads one subscriber's stream; returns the delay of every `account.created` frame, in µs.
async fn subscriber(addr: String, since: u64, expect: usize, deadline: Instant) -> Vec<u64> {
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "GET /v2/events?since={since}&types=account.created HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {ROOT}\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    let mut delays = Vec::with_capacity(expect);
    while delays.len() < expect {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        let arrived = now_micros();
        buf.extend_from_slice(&chunk[..n]);
        // Frames end with a blank line.
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame = &buf[..end];
            if let Some(i) = frame.windows(6).position(|w| w == b"\"at\":\"") {
                let rest = &frame[i + 6..];
                let stop = rest.iter().position(|b| *b == b'"').unwrap_or(0);
                let at = std::str::from_utf8(&rest[..stop]).unwrap();
                let at = chrono::DateTime::parse_from_rfc3339(at)
                    .unwrap()
                    .timestamp_micros();
                delays.push((arrived - at).max(0) as u64);
            }
            buf.drain(..end + 2);
        }
    }
    delays
}

fn post_account(addr: &str, i: u64) -> u64 {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let body = format!(r#"{{"name":"f{i}"}}"#);
    write!(
        c,
        "POST /v2/accounts HTTP/1.1\r\nHost: b\r\nConnection: close\r\nAuthorization: Bearer {ROOT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    out.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-resource-version:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap()
}

struct Row {
    subscribers: usize,
    held: usize,
    events: usize,
    p50_ms: f64,
    p99_ms: f64,
    kib_per_subscriber: f64,
}

fn run_scale(server: &Child, addr: &str, n: usize, secs: u64, rate: u64) -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let since = post_account(addr, 0);
    let events = (secs * rate) as usize;
    let before = rss_kib(server.id());
    let deadline = Instant::now() + Duration::from_secs(secs + 60);
    let tasks: Vec<_> = rt.block_on(async {
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tasks.push(tokio::spawn(subscriber(
                addr.to_owned(),
                since,
                events,
                deadline,
            )));
            if i % 500 == 499 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Let every stream be set up before measuring memory and writing.
        tokio::time::sleep(Duration::from_secs(3)).await;
        tasks
    });
    let after = rss_kib(server.id());
    // A steady write rate from another thread.
    let addr2 = addr.to_owned();
    let writer = std::thread::spawn(move || {
        let every = Duration::from_micros(1_000_000 / rate);
        let start = Instant::now();
        for i in 0..events as u64 {
            let due = start + every * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            post_account(&addr2, 1000 + i);
        }
    });
    let results: Vec<Vec<u64>> = rt.block_on(async {
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    writer.join().unwrap();
    let held = results.iter().filter(|d| d.len() == events).count();
    let mut all: Vec<u64> = results.into_iter().flatten().collect();
    all.sort_unstable();
    let pct = |p: f64| support::percentile(&all, p) as f64 / 1000.0;
    Row {
        subscribers: n,
        held,
        events,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        kib_per_subscriber: after.saturating_sub(before) as f64 / n as f64,
    }
}

fn main() {
    let secs = support::env_or("SPG99_BENCH_SECS", 10);
    let rate = support::env_or("SPG99_BENCH_RATE", 10).max(1);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sse_fanout");
    let _ = std::fs::remove_dir_all(&dir);
    let (server, addr) = support::spawn_spg99(&dir);
    let server = Arc::new(server);

    let mut rows = Vec::new();
    for &n in &SCALES {
        rows.push(run_scale(&server, &addr, n, secs, rate));
        eprintln!("done: {n} subscribers");
    }
    if let Ok(mut s) = Arc::try_unwrap(server) {
        let _ = s.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!("| subscribers | held (got every event) | events | fan-out p50 ms | fan-out p99 ms | server RSS per subscriber |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} KiB |",
            r.subscribers, r.held, r.events, r.p50_ms, r.p99_ms, r.kib_per_subscriber
        );
        json.push(format!(
            "{{\"subscribers\":{},\"held\":{},\"events\":{},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"kib_per_subscriber\":{:.2}}}",
            r.subscribers, r.held, r.events, r.p50_ms, r.p99_ms, r.kib_per_subscriber
        ));
    }
    support::write_results("sse_fanout", &json);
}
