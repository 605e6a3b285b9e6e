//! The Gateway's pooler (transaction pooling) through real drivers: asyncpg, psycopg 3 (and
//! libpq's low-level calls through it), node-postgres, pgbench, psql, tokio-postgres, and a
//! client written out by hand for what no driver sends (tests/drivers/). `spg99 serve` on its
//! embedded default, with a local PostgreSQL worker.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway::{burner, config, connect, describe, platform, psql, until, Tenant};
use crate::helpers::{tempdir, Fixture, ROOT_TOKEN};
use crate::lab::{Worker, SERVICE_TOKEN};

pub(crate) fn driver(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/drivers")
        .join(name)
}

/// Runs `program` with `args` to its end; fails the test with its output if it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out: Output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The JSON line a driver script printed last.
pub(crate) fn report(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The server's metrics (with its Gateway's), as text.
pub(crate) fn metrics(fx: &Fixture) -> String {
    let r = fx.server.get("/metrics", SERVICE_TOKEN);
    r.body.as_str().unwrap().to_owned()
}

/// The value of the unlabelled counter `name` in `metrics`.
pub(crate) fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        .parse()
        .unwrap()
}

/// A tokio-postgres configuration through the pooler.
fn pooled(fx: &Fixture, t: &Tenant, db: &str) -> postgres::Config {
    config(fx.server.pooler.as_ref().unwrap(), &t.user, &t.password, db)
}

/// A session-port client watching the database's own view of its connections.
struct Watch(postgres::Client);

impl Watch {
    fn count(&mut self, condition: &str) -> i64 {
        self.0
            .query_one(
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user \
                     AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND {condition}"
                ),
                &[],
            )
            .unwrap()
            .get(0)
    }

    /// Waits until `count(condition) == n`.
    fn until(&mut self, condition: &str, n: i64) {
        let began = Instant::now();
        loop {
            let now = self.count(condition);
            if now == n {
                return;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "{condition}: {now}, not {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn start() -> (tempfile::TempDir, Fixture, Tenant) {
    start_with(&[])
}

/// `spg99 serve` on its embedded default (with `extra` settings), tenant `shop` and its
/// database `app`.
pub(crate) fn start_with(extra: &[(&str, &str)]) -> (tempfile::TempDir, Fixture, Tenant) {
    let tmp = tempdir();
    let mut env = vec![("SPG99_IDLE_TIMEOUT", "600")];
    env.extend_from_slice(extra);
    let fx = platform(&tmp.path().join("data"), &env);
    let shop = Tenant::create(&fx, "shop");
    fx.server.create_db(&fx.account_key, "shop", "app");
    (tmp, fx, shop)
}

#[test]
fn every_driver_s_prepared_statements_work_through_the_pooler_within_its_pool() {
    let (_tmp, fx, shop) = start();
    let dsn = shop.pooled_dsn("app");
    assert!(dsn.contains(fx.server.pooler.as_deref().unwrap()), "{dsn}");
    let creds = fx
        .server
        .get("/v2/tenants/shop/credentials", &fx.account_key);
    assert_eq!(
        creds.body["pooled_dsn_template"], shop.pooled_dsn_template,
        "{creds:?}"
    );
    // The first pooled connection starts the stopped database.
    assert_eq!(psql(&dsn, &["SELECT 1"]).unwrap(), "1");
    let d = describe(&fx, "shop", "app");
    assert_eq!(d["state"], "running", "{d}");
    let pool = spg99_wire::profiles::profile(d["current_profile"].as_str().unwrap())
        .unwrap()
        .pool_size() as i64;

    // The database's own count of its connections, all along.
    let gw = fx.server.gateway.clone().unwrap();
    let mut watch = Watch(connect(&config(&gw, &shop.user, &shop.password, "app")).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (stop, most) = (stop.clone(), most.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(watch.count("true"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    // 1000 asyncpg clients at once, each with its prepared statements, in transactions.
    let out = report(&run(
        "python3",
        &[
            driver("asyncpg_clients.py").to_str().unwrap(),
            &dsn,
            "1000",
            "2",
        ],
    ));
    assert_eq!(out["failed"], 0, "{out}");
    assert_eq!(out["ok"], 2000, "{out}");
    assert_eq!(out["rows"], 2000, "{out}");

    // psycopg 3: prepared from the first execution; libpq's Describe of a statement prepared
    // in an earlier transaction on another backend; DEALLOCATE; settings; cancel.
    let out = run(
        "python3",
        &[driver("psycopg_prepared.py").to_str().unwrap(), &dsn],
    );
    assert!(out.starts_with("ok"), "{out}");
    // The Describe came on another backend than the Parse.
    let backends: Vec<&str> = out
        .split('\'')
        .filter(|s| s.parse::<u32>().is_ok())
        .collect();
    assert_eq!(backends.len(), 2, "{out}");
    assert_ne!(backends[0], backends[1], "{out}");

    // node-postgres: named statements, parsed once per connection, then only bound.
    let out = report(&run(
        "node",
        &[driver("node_named.js").to_str().unwrap(), &dsn, "100"],
    ));
    assert_eq!(out["ok"], 100, "{out}");
    assert_eq!(out["rows"], 1000, "{out}");

    // pgbench, prepared and extended (a new connection per transaction for the latter).
    run("pgbench", &["-i", "-q", "-s", "1", &shop.dsn("app")]);
    for args in [
        ["-M", "prepared", "-t", "100"],
        ["-M", "extended", "-t", "25"],
    ] {
        let mut all = vec!["-n", "-c", "8", "-j", "2", "-r"];
        all.extend_from_slice(&args);
        if args[1] == "extended" {
            all.push("-C");
        }
        all.push(&dsn);
        let out = run("pgbench", &all);
        let n = if args[1] == "prepared" { 800 } else { 200 };
        assert!(
            out.contains(&format!(
                "number of transactions actually processed: {n}/{n}"
            )),
            "{out}"
        );
        assert!(out.contains("number of failed transactions: 0"), "{out}");
    }

    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let most = most.load(Ordering::Relaxed);
    assert!(
        (1..=pool).contains(&most),
        "{most} backend connections for a pool of {pool}"
    );

    // The metrics: by database id, never a tenant's name.
    let metrics = metrics(&fx);
    assert!(
        counter(&metrics, "spg99_gateway_statements_prepared_total") > 0,
        "{metrics}"
    );
    let db_id = d["db_id"].as_str().unwrap();
    assert!(
        metrics.contains(&format!(
            "spg99_gateway_pool{{db_id=\"{db_id}\",state=\"clients\"}}"
        )),
        "{metrics}"
    );
    assert!(!metrics.contains("shop"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("spg99_gateway_pool_waits_total ")),
        "{metrics}"
    );
}

#[test]
fn pooled_clients_keep_their_own_sessions_and_one_gone_mid_transaction_leaves_nothing() {
    let (_tmp, fx, shop) = start_with(&[("SPG99_POOL_IDLE_IN_TRANSACTION_TIMEOUT", "3")]);
    let dsn = shop.pooled_dsn("app");
    psql(&dsn, &["CREATE TABLE t (id bigint PRIMARY KEY)"]).unwrap();
    let gw = fx.server.gateway.clone().unwrap();
    let mut watch = Watch(connect(&config(&gw, &shop.user, &shop.password, "app")).unwrap());

    // 200 clients at once, each BEGIN, INSERT, COMMIT: every acknowledged row is there.
    let cfg = pooled(&fx, &shop, "app");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (1..=200i64)
        .map(|id| {
            let (cfg, acked, failed) = (cfg.clone(), acked.clone(), failed.clone());
            std::thread::spawn(move || {
                let done = connect(&cfg).and_then(|mut c| {
                    let mut tx = c.transaction()?;
                    tx.execute("INSERT INTO t VALUES ($1)", &[&id])?;
                    tx.commit()
                });
                match done {
                    Ok(()) => acked.lock().unwrap().push(id),
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(failed.lock().unwrap().is_empty(), "{failed:?}");
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 200);
    assert!(crate::lab::lost_rows(&mut watch.0, &acked).is_empty());

    // A client killed inside a transaction, idle in it, then one killed in a query: nothing
    // of theirs is committed, and no backend stays in their transaction.
    for (id, last, running) in [
        (
            -1i64,
            "\\! sleep 600",
            "state = 'idle in transaction' AND query LIKE 'INSERT INTO t VALUES (-1)%'",
        ),
        (
            -2,
            "SELECT pg_sleep(600)",
            "state = 'active' AND query = 'SELECT pg_sleep(600)'",
        ),
    ] {
        let insert = format!("INSERT INTO t VALUES ({id})");
        let mut client = Command::new("psql")
            .args([
                "-X", "-q", "-d", &dsn, "-c", "BEGIN", "-c", &insert, "-c", last,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        watch.until(running, 1);
        client.kill().unwrap();
        client.wait().unwrap();
        watch.until(
            "(state LIKE 'idle in transaction%' OR query = 'SELECT pg_sleep(600)')",
            0,
        );
        let n: i64 = watch
            .0
            .query_one("SELECT count(*) FROM t WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "the killed client's row {id} was committed");
    }

    // A client that leaves its transaction open past the pooled port's limit is let go, and
    // its transaction rolled back.
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-d",
            &dsn,
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO t VALUES (-3)",
        ])
        .args(["-c", "\\! sleep 5", "-c", "SELECT 1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("idle-in-transaction timeout"), "{stderr}");
    watch.until("state LIKE 'idle in transaction%'", 0);
    assert_eq!(
        psql(&dsn, &["SELECT count(*) FROM t WHERE id < 0"]).unwrap(),
        "0"
    );

    // Bytes no client sends: 08P01, that connection closed, the others served.
    let out = report(&run(
        "python3",
        &[driver("raw_clients.py").to_str().unwrap(), "garbage", &dsn],
    ));
    for case in ["unknown type", "2 GB"] {
        assert_eq!(out[case]["C"], "08P01", "{out}");
        assert_eq!(out[format!("{case} then")], "closed", "{out}");
    }

    // 10 000 idle clients hold no backend: one busy client beside them is served.
    let out = report(&run(
        "python3",
        &[
            driver("raw_clients.py").to_str().unwrap(),
            "idle",
            &dsn,
            "10000",
        ],
    ));
    assert_eq!(out, json!({"idle": 10000, "busy": 200, "errors": []}));
    assert_eq!(psql(&dsn, &["SELECT count(*) FROM t"]).unwrap(), "200");
}

#[test]
fn a_handoff_under_200_pooled_clients_and_http_writes_refuses_none_and_loses_no_row() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let server = crate::helpers::Start::new(&data)
        .gateway()
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .env("SPG99_CLOCK", "manual")
        .env("SPG99_WORKER_TIMEOUT_MS", "3600000")
        .env("SPG99_IDLE_TIMEOUT", "100000")
        // Longer than the clock jumps below, so that no lease runs out in them.
        .env("SPG99_LEASE_TTL_MS", "3600000")
        .spawn();
    let fx = Fixture::with_server(server);
    let _worker = Worker::postgres(&fx.server, "w1", &tmp.path().join("compute"));
    let shop = Tenant::create(&fx, "shop");
    fx.server.create_db(&fx.account_key, "shop", "app");
    let gw = fx.server.gateway.clone().unwrap();
    let session = config(&gw, &shop.user, &shop.password, "app");
    connect(&session)
        .unwrap()
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicI64::new(1));
    let committed = Arc::new(Mutex::new(Vec::<i64>::new()));
    let dropped = Arc::new(Mutex::new(Vec::<String>::new()));
    let lost_transactions = Arc::new(AtomicI64::new(0));
    let cfg = pooled(&fx, &shop, "app");
    // 200 pooled clients, each on one connection for the whole test, one row per transaction.
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let (stop, next, committed, dropped, lost, cfg) = (
                stop.clone(),
                next.clone(),
                committed.clone(),
                dropped.clone(),
                lost_transactions.clone(),
                cfg.clone(),
            );
            std::thread::spawn(move || {
                let mut c = match connect(&cfg) {
                    Ok(c) => c,
                    Err(e) => return dropped.lock().unwrap().push(e.to_string()),
                };
                while !stop.load(Ordering::Relaxed) {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let done = c.transaction().and_then(|mut tx| {
                        tx.execute("INSERT INTO t VALUES ($1)", &[&id])?;
                        tx.commit()
                    });
                    match done {
                        Ok(()) => committed.lock().unwrap().push(id),
                        Err(_) if !c.is_closed() => {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return dropped.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    // And 20 that stay idle through it all.
    let mut idle: Vec<postgres::Client> = (0..20).map(|_| connect(&cfg).unwrap()).collect();
    // And a writer over HTTP (`POST /sql`, on the same pool): a row per request.
    let https = crate::sql_over_http::Https::new(&fx, &data);
    let http_rows = Arc::new(AtomicI64::new(0));
    let over_http = {
        let (stop, next, committed, dropped, lost, http_rows) = (
            stop.clone(),
            next.clone(),
            committed.clone(),
            dropped.clone(),
            lost_transactions.clone(),
            http_rows.clone(),
        );
        let (https, dsn) = (https.clone(), shop.dsn("app"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let q = json!({"query": "INSERT INTO t VALUES ($1)", "params": [id]});
                let a = https.sql(&dsn, &[], q);
                match (a.status, a.body["code"].as_str()) {
                    (200, _) => {
                        committed.lock().unwrap().push(id);
                        http_rows.fetch_add(1, Ordering::Relaxed);
                    }
                    // Its backend lost with the old writer: the request may or may not have
                    // committed, and says so; a retry is the client's.
                    (503, Some("08006")) => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => dropped.lock().unwrap().push(format!("POST /sql: {a:?}")),
                }
            }
        })
    };
    // Real load through the session port.
    let burner = burner(&stop, &session);
    let db_id = describe(&fx, "shop", "app")["db_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The load high, then the autoscaler's window passed on the clock: a handoff starts. On a
    // busy machine the load may dip out of its band before the jump: then again.
    let band = || {
        let log = fx.server.get(
            &format!("/v2/admin/log?db={db_id}&types=db.load_changed&limit=10000"),
            ROOT_TOKEN,
        );
        log.body["items"]
            .as_array()
            .unwrap()
            .last()
            .map(|e| e["data"]["band"].clone())
    };
    crate::lab::more_rows(&committed, 200);
    let began = Instant::now();
    loop {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "no handoff started; the load's band: {:?}",
            band()
        );
        if band() != Some(json!("high")) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let r = fx.server.post(
            "/internal/v1/clock/advance",
            SERVICE_TOKEN,
            json!({"seconds": 61}),
        );
        assert_eq!(r.status, 200, "{r:?}");
        let jumped = Instant::now();
        let started = loop {
            let d = describe(&fx, "shop", "app");
            if d["scale_state"] != "STABLE" || d["current_profile"] == "c0.5" {
                break true;
            }
            if jumped.elapsed() > Duration::from_secs(10) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if started {
            break;
        }
    }
    let d = until(&fx, "shop", "app", 90, |d| {
        d["scale_state"] == "STABLE" && d["current_profile"] == "c0.5"
    });
    assert_eq!(d["writer_term"], 2, "{d}");
    // Rows keep going in, on the new writer, from the same client connections and over HTTP.
    let http_before = http_rows.load(Ordering::Relaxed);
    crate::lab::more_rows(&committed, 200);
    let began = Instant::now();
    while http_rows.load(Ordering::Relaxed) < http_before + 10 {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "no row over HTTP on the new writer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    over_http.join().unwrap();
    burner.join().unwrap();

    let dropped = dropped.lock().unwrap().clone();
    assert!(
        dropped.is_empty(),
        "pooled clients refused or cut off by the handoff: {dropped:?}"
    );
    // The idle clients followed the database to its new writer.
    for c in &mut idle {
        let shared_buffers: String = c.query_one("SHOW shared_buffers", &[]).unwrap().get(0);
        assert_eq!(shared_buffers, "512MB");
    }
    let mut c = connect(&cfg).unwrap();
    let shared_buffers: String = c.query_one("SHOW shared_buffers", &[]).unwrap().get(0);
    assert_eq!(
        shared_buffers, "512MB",
        "the pooler reaches the c0.5 writer"
    );
    let over_http = https.sql(
        &shop.dsn("app"),
        &[],
        json!({"query": "SHOW shared_buffers"}),
    );
    assert_eq!(over_http.ok()["rows"][0]["shared_buffers"], "512MB");
    let committed = committed.lock().unwrap().clone();
    let lost = crate::lab::lost_rows(&mut c, &committed);
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    eprintln!(
        "{} rows acknowledged; {} transactions failed with their writer",
        committed.len(),
        lost_transactions.load(Ordering::Relaxed)
    );
}

#[test]
fn a_client_that_finds_every_backend_busy_waits_hears_53300_and_goes_on() {
    let (_tmp, fx, shop) = start_with(&[("SPG99_POOL_TIMEOUT", "1")]);
    let cfg = pooled(&fx, &shop, "app");
    let mut first = connect(&cfg).unwrap();
    first.batch_execute("SELECT 1").unwrap();
    let d = describe(&fx, "shop", "app");
    let pool = spg99_wire::profiles::profile(d["current_profile"].as_str().unwrap())
        .unwrap()
        .pool_size();
    // Every backend of the pool held, each in an open transaction.
    let mut holders: Vec<postgres::Client> = (0..pool).map(|_| connect(&cfg).unwrap()).collect();
    for h in &mut holders {
        h.batch_execute("BEGIN; SELECT 1").unwrap();
    }
    // One more request waits for the pool timeout, fails with 53300, and its client goes on.
    let e = first.batch_execute("SELECT 2").unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert!(db.message().contains("pool timeout"), "{db:?}");
    assert!(!first.is_closed());
    // A backend given back serves it.
    holders[0].batch_execute("COMMIT").unwrap();
    let n: i32 = first.query_one("SELECT 3", &[]).unwrap().get(0);
    assert_eq!(n, 3);
    let metrics = metrics(&fx);
    assert!(
        counter(&metrics, "spg99_gateway_pool_waits_total") >= 1,
        "{metrics}"
    );
}
