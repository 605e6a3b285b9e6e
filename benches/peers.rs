//! SPG99 against the stores a user would pick instead, on the same machine in the same run:
//! PostgreSQL as an event store (an `events` table, `synchronous_commit=on`) and etcd (`put`).
//!
//! Run it with `benches/peers.sh`, which installs PostgreSQL and etcd from Debian's packages,
//! starts both on loopback in temp dirs and passes them here (`SPG99_PEER_PG`,
//! `SPG99_PEER_PG_PID`, `SPG99_PEER_ETCD`, `SPG99_PEER_ETCD_PID`, `SPG99_PEER_VERSIONS`).
//! Without them, `cargo bench --bench peers` measures SPG99 and its ceilings only.
//!
//! Workloads, each at 1, 16 and 256 concurrent clients for `SPG99_BENCH_SECS` (default 3):
//!
//! 1. **Durable append** of one ~200-byte event: SPG99's log layer (the committer, in this
//!    process), raw sled batch+flush (the ceiling; and with fdatasync, at SPG99's
//!    durability), PostgreSQL `INSERT INTO events(body)`, etcd `put`. The payload is the
//!    same bytes for all: the encoded log record.
//! 2. **Create over the wire**: `POST /v2/tenants/{t}/dbs` on SPG99 (HTTP, auth, validation,
//!    the name's uniqueness, event, projections, JSON answer) against the same logical
//!    operation in the peers: an `INSERT` into a `dbs` table with a primary key on
//!    (tenant, name), and an etcd transaction that puts the key only if it does not exist.
//! 3. **Reads**: `GET` describe on SPG99 against a bare actix-web handler answering the same
//!    body from memory (the HTTP ceiling), also at 64 clients.
//!
//! The same client drives every system: one tokio task per client connection on one thread,
//! a minimal HTTP/1.1 client for HTTP, tokio-postgres for PostgreSQL. Every server runs in
//! its own process except the in-process log-layer rows, whose CPU and memory are this
//! process's (client included). CPU is the server's (process tree's) CPU time over the
//! cell's wall time; RSS is its resident memory at the end of the cell.
//!
//! Prints markdown tables; writes `target/bench/peers.json`.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::appends::{self, Measured};
use support::http::{get, post, post_plain, Conn};
use support::load::{drive, http_load, op, runtime};
use support::ROOT;

const CLIENTS: [usize; 3] = [1, 16, 256];
const READ_CLIENTS: [usize; 4] = [1, 16, 64, 256];
/// The size of the event every system appends.
const EVENT_BYTES: usize = 200;

type Pg = (tokio_postgres::Client, tokio_postgres::Statement);

// ---- the servers' CPU and memory, from /proc ----

/// A process and its descendants.
fn tree(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse().ok())) {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// The fields of /proc/PID/stat after the command name (state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds (user + system) and resident MiB of a process tree. The root's count
/// includes the children it has reaped (PostgreSQL's backends end with their connections).
fn usage(root: u32) -> (f64, f64) {
    let (mut ticks, mut rss_kib) = (0u64, 0u64);
    for pid in tree(root) {
        if let Some(f) = stat_fields(pid) {
            // After the state: utime, stime, cutime, cstime are fields 11 to 14.
            let fields = if pid == root { 11..15 } else { 11..13 };
            ticks += f[fields]
                .iter()
                .map(|v| v.parse::<u64>().unwrap_or(0))
                .sum::<u64>();
        }
        rss_kib += support::rss_kib(pid);
    }
    (ticks as f64 / 100.0, rss_kib as f64 / 1024.0)
}

// ---- results ----

struct Row {
    workload: &'static str,
    system: &'static str,
    clients: usize,
    m: Measured,
    cpu_pct: f64,
    rss_mib: f64,
}

impl Row {
    fn per_sec(&self) -> f64 {
        self.m.lat.len() as f64 / self.m.secs
    }

    fn p(&self, q: f64) -> f64 {
        support::percentile(&self.m.lat, q) as f64 / 1000.0
    }
}

/// Measures `work` with the CPU and memory of the process tree at `pid`.
fn measure(
    workload: &'static str,
    system: &'static str,
    clients: usize,
    pid: u32,
    work: impl FnOnce() -> Measured,
) -> Row {
    let (cpu0, _) = usage(pid);
    let m = work();
    let (cpu1, rss_mib) = usage(pid);
    let cpu_pct = (cpu1 - cpu0) / m.secs * 100.0;
    eprintln!("done: {workload} / {system} / {clients}");
    Row {
        workload,
        system,
        clients,
        m,
        cpu_pct,
        rss_mib,
    }
}

// ---- peers ----

struct Peers {
    pg: Option<(String, u32)>,
    etcd: Option<(String, u32)>,
}

impl Peers {
    fn from_env() -> Peers {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let pid = |k: &str| var(k).and_then(|p| p.parse().ok());
        Peers {
            pg: var("SPG99_PEER_PG").zip(pid("SPG99_PEER_PG_PID")),
            etcd: var("SPG99_PEER_ETCD").zip(pid("SPG99_PEER_ETCD_PID")),
        }
    }
}

async fn pg_clients(conn: &str, n: usize, sql: &str) -> Vec<Pg> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        let stmt = client.prepare(sql).await.unwrap();
        out.push((client, stmt));
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ABC[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `(host:port, path prefix)` of an `http://host:port/prefix` URL.
fn split_url(url: &str) -> (String, String) {
    let rest = url.trim_start_matches("http://");
    match rest.find('/') {
        Some(i) => (
            rest[..i].to_owned(),
            rest[i..].trim_end_matches('/').to_owned(),
        ),
        None => (rest.to_owned(), String::new()),
    }
}

/// `n` PostgreSQL connections, each executing `sql` with `event` as its last parameter,
/// after `name(i)` when given.
fn pg_load(
    rt: &tokio::runtime::Runtime,
    conn: &str,
    n: usize,
    dur: Duration,
    sql: &str,
    name: Option<fn(usize, u64) -> String>,
    event: Arc<Vec<u8>>,
) -> Measured {
    rt.block_on(async {
        drive(
            pg_clients(conn, n, sql).await,
            dur,
            op(move |(c, stmt): &mut Pg, i| {
                let (event, name) = (event.clone(), name.map(|f| f(n, i)));
                Box::pin(async move {
                    let body: &[u8] = &event;
                    match &name {
                        Some(name) => c.execute(&*stmt, &[name, &body]).await.unwrap(),
                        None => c.execute(&*stmt, &[&body]).await.unwrap(),
                    };
                })
            }),
        )
        .await
    })
}

fn db_name(n: usize, i: u64) -> String {
    format!("d{n}-{i}")
}

fn main() {
    if support::bare::child_main() {
        return;
    }
    let dur = Duration::from_secs(support::env_or("SPG99_BENCH_SECS", 3));
    let peers = Peers::from_env();
    let me = std::process::id();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peers");
    let fresh = |name: String| {
        let d = root.join(name);
        let _ = std::fs::remove_dir_all(&d);
        d
    };
    let pad = (0..)
        .find(|p| appends::record(1, *p).len() >= EVENT_BYTES)
        .unwrap();
    let event = Arc::new(appends::record(1, pad));
    let value: &'static str = Box::leak(base64(&event).into_boxed_str());
    let etcd = peers.etcd.as_ref().map(|(url, pid)| {
        let (addr, prefix) = split_url(url);
        let prefix: &'static str = Box::leak(prefix.into_boxed_str());
        (addr, prefix, *pid)
    });
    let mut rows = Vec::new();
    let rt = runtime();

    // 1. Durable appends.
    for &n in &CLIENTS {
        rows.push(measure("append", "sled batch+flush", n, me, || {
            appends::sled_batches(&fresh(format!("raw-{n}")), n, dur, false, pad)
        }));
        rows.push(measure(
            "append",
            "sled batch+flush+fdatasync",
            n,
            me,
            || appends::sled_batches(&fresh(format!("rawsync-{n}")), n, dur, true, pad),
        ));
        rows.push(measure("append", "SPG99 log (committer)", n, me, || {
            appends::committer(&fresh(format!("committer-{n}")), n, dur, pad)
        }));
        if let Some((conn, pid)) = &peers.pg {
            let sql = "INSERT INTO events (body) VALUES ($1)";
            rows.push(measure("append", "PostgreSQL INSERT", n, *pid, || {
                pg_load(&rt, conn, n, dur, sql, None, event.clone())
            }));
        }
        if let Some((addr, prefix, pid)) = &etcd {
            let prefix: &'static str = prefix;
            rows.push(measure("append", "etcd put", n, *pid, || {
                http_load(&rt, addr, n, dur, 200, None, move |i| {
                    let key = base64(format!("ev/{n}/{i:012}").as_bytes());
                    let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#);
                    post_plain(&format!("{prefix}/kv/put"), &body)
                })
            }));
        }
    }
    let _ = std::fs::remove_dir_all(&root);

    // 2 and 3 go through the real server; creates also through one whose log is in the
    // peer PostgreSQL (its own tables beside the benchmark's).
    let dir = fresh("server".into());
    let (mut spg, spg_addr) = support::spawn_spg99(&dir);
    let spg_pid = spg.id();
    let (key, describe) = rt.block_on(prepare(&spg_addr));
    let key: &'static str = Box::leak(key.into_boxed_str());
    let (mut bare, bare_addr) = support::bare::spawn(&describe);
    let on_pg = peers.pg.as_ref().map(|(conn, _)| {
        let mut cmd = support::serve_command(&fresh("server-pg-log".into()));
        cmd.env("SPG99_LOG", pg_url(conn))
            .env("SPG99_SECRET_KEY", "42".repeat(32));
        let (child, addr) = support::spawn_serve(cmd);
        let (key, _) = rt.block_on(prepare(&addr));
        let key: &'static str = Box::leak(key.into_boxed_str());
        (child, addr, key)
    });
    // A second replica on that log: a follower, which passes writes to the first.
    let follower = peers.pg.as_ref().map(|(conn, _)| {
        let mut cmd = support::serve_command(&fresh("server-pg-follower".into()));
        cmd.env("SPG99_LOG", pg_url(conn))
            .env("SPG99_SECRET_KEY", "42".repeat(32));
        support::spawn_serve(cmd)
    });

    for &n in &CLIENTS {
        rows.push(measure(
            "create",
            "SPG99 POST create-db",
            n,
            spg_pid,
            || {
                http_load(&rt, &spg_addr, n, dur, 201, None, move |i| {
                    let body = format!(r#"{{"name":"{}","size":"L1"}}"#, db_name(n, i));
                    post("/v2/tenants/shop/dbs", key, &body)
                })
            },
        ));
        if let Some((child, addr, key)) = &on_pg {
            let key: &'static str = key;
            rows.push(measure(
                "create",
                "SPG99 POST create-db, log on PostgreSQL",
                n,
                child.id(),
                || {
                    http_load(&rt, addr, n, dur, 201, None, move |i| {
                        let body = format!(r#"{{"name":"{}","size":"L1"}}"#, db_name(n, i));
                        post("/v2/tenants/shop/dbs", key, &body)
                    })
                },
            ));
            if let Some((follower, follower_addr)) = &follower {
                rows.push(measure(
                    "create",
                    "SPG99 POST create-db through a follower, log on PostgreSQL",
                    n,
                    follower.id(),
                    || {
                        http_load(&rt, follower_addr, n, dur, 201, None, move |i| {
                            let name = format!("f{}", db_name(n, i));
                            let body = format!(r#"{{"name":"{name}","size":"L1"}}"#);
                            post("/v2/tenants/shop/dbs", key, &body)
                        })
                    },
                ));
            }
        }
        if let Some((conn, pid)) = &peers.pg {
            let sql = "INSERT INTO dbs (tenant, name, size, body) VALUES ('shop', $1, 'L1', $2)";
            rows.push(measure(
                "create",
                "PostgreSQL INSERT (unique)",
                n,
                *pid,
                || pg_load(&rt, conn, n, dur, sql, Some(db_name), event.clone()),
            ));
        }
        if let Some((addr, prefix, pid)) = &etcd {
            let prefix: &'static str = prefix;
            rows.push(measure("create", "etcd txn (put if absent)", n, *pid, || {
                http_load(&rt, addr, n, dur, 200, Some("\"succeeded\":true"), move |i| {
                    let k = base64(format!("dbs/shop/{}", db_name(n, i)).as_bytes());
                    let body = format!(
                        r#"{{"compare":[{{"key":"{k}","result":"EQUAL","target":"CREATE","create_revision":"0"}}],"success":[{{"request_put":{{"key":"{k}","value":"{value}"}}}}]}}"#
                    );
                    post_plain(&format!("{prefix}/kv/txn"), &body)
                })
            }));
        }
    }

    for &n in &READ_CLIENTS {
        rows.push(measure("read", "bare actix-web GET", n, bare.id(), || {
            http_load(&rt, &bare_addr, n, dur, 200, None, |_| get("/bare", "-"))
        }));
        rows.push(measure("read", "SPG99 GET describe", n, spg_pid, || {
            http_load(&rt, &spg_addr, n, dur, 200, None, move |_| {
                get("/v2/tenants/shop/dbs/app", key)
            })
        }));
    }
    let _ = spg.kill();
    let _ = bare.kill();
    let _ = spg.wait();
    let _ = bare.wait();
    if let Some((mut child, _)) = follower {
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some((mut child, _, _)) = on_pg {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&root);

    report(&rows, event.len());
}

/// An account, a key for it, the tenant `shop` and its database `app`; the key's token and
/// the database's describe.
async fn prepare(addr: &str) -> (String, String) {
    let mut c = Conn::open(addr).await;
    let account = c
        .json(&post("/v2/accounts", ROOT, r#"{"name":"bench"}"#))
        .await;
    let account = account["account_id"].as_str().unwrap().to_owned();
    let key = c
        .json(&post(
            &format!("/v2/accounts/{account}/api-keys"),
            ROOT,
            r#"{"scope":"account","permissions":{"can_create_tenant":true,"can_create_db":true}}"#,
        ))
        .await;
    let key = key["token"].as_str().unwrap().to_owned();
    c.json(&post("/v2/tenants", &key, r#"{"name":"shop"}"#))
        .await;
    c.json(&post(
        "/v2/tenants/shop/dbs",
        &key,
        r#"{"name":"app","size":"L1"}"#,
    ))
    .await;
    let describe = c.json(&get("/v2/tenants/shop/dbs/app", &key)).await;
    (key, describe.to_string())
}

/// `host=H port=P user=U dbname=D` as a `postgres://` URL.
fn pg_url(conn: &str) -> String {
    let field = |name: &str| {
        conn.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_owned()
    };
    format!(
        "postgres://{}@{}:{}/{}",
        field("user"),
        field("host"),
        field("port"),
        field("dbname")
    )
}

fn report(rows: &[Row], event_bytes: usize) {
    let rate = |workload: &str, system: &str, clients: usize| {
        rows.iter()
            .find(|r| r.workload == workload && r.system == system && r.clients == clients)
            .map(Row::per_sec)
    };
    let ratio = |r: &Row, system: &str| {
        rate(r.workload, system, r.clients).map_or("–".to_owned(), |base| {
            format!("{:.2}", r.per_sec() / base)
        })
    };
    let sections = [
        (
            "append",
            format!("1. Durable append of one {event_bytes}-byte event (appends/s)"),
            vec![
                "sled batch+flush",
                "sled batch+flush+fdatasync",
                "PostgreSQL INSERT",
                "etcd put",
            ],
        ),
        (
            "create",
            "2. Create over the wire (creates/s)".to_owned(),
            vec!["PostgreSQL INSERT (unique)", "etcd txn (put if absent)"],
        ),
        (
            "read",
            "3. Reads (requests/s)".to_owned(),
            vec!["bare actix-web GET"],
        ),
    ];
    let mut json = Vec::new();
    for (workload, title, bases) in sections {
        println!("\n### {title}\n");
        let mut head = "| clients | system | per s | p50 ms | p99 ms |".to_owned();
        let mut rule = "|---:|---|---:|---:|---:|".to_owned();
        for b in &bases {
            head.push_str(&format!(" vs {b} |"));
            rule.push_str("---:|");
        }
        println!("{head} server CPU % | server RSS MiB |");
        println!("{rule}---:|---:|");
        for r in rows.iter().filter(|r| r.workload == workload) {
            let mut line = format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} |",
                r.clients,
                r.system,
                r.per_sec(),
                r.p(0.5),
                r.p(0.99)
            );
            for b in &bases {
                line.push_str(&format!(" {} |", ratio(r, b)));
            }
            println!("{line} {:.0} | {:.0} |", r.cpu_pct, r.rss_mib);
            json.push(format!(
                "{{\"workload\":\"{}\",\"system\":\"{}\",\"clients\":{},\"ops\":{},\"secs\":{:.3},\"per_sec\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"cpu_pct\":{:.1},\"rss_mib\":{:.1}}}",
                r.workload, r.system, r.clients, r.m.lat.len(), r.m.secs, r.per_sec(), r.p(0.5), r.p(0.99), r.cpu_pct, r.rss_mib
            ));
        }
    }
    println!(
        "\nIn-process rows (sled, SPG99 log) show this process's CPU and memory, client included."
    );
    support::write_results("peers", &json);
}
