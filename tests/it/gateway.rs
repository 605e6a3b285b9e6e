//! The Gateway, through real clients (Debian's psql, tokio-postgres and its blocking face
//! `postgres`) to real PostgreSQL servers run by the platform's own worker. Most tests run
//! `spg99 serve` as a newcomer does, Gateway and local worker inside; the restart test runs
//! the Gateway and the worker as processes of their own, so that the control plane can die
//! under them.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::error::SqlState;

use crate::helpers::{pg_ports, tempdir, Fixture, Start, ROOT_TOKEN};
use crate::lab::{Gateway, Worker, SERVICE_TOKEN};
use crate::pgtls::{self, Tls};

/// `spg99 serve` on its embedded default: control plane, Gateway, local PostgreSQL worker.
pub(crate) fn platform(data_dir: &Path, extra: &[(&str, &str)]) -> Fixture {
    let mut s = Start::new(data_dir)
        .gateway()
        .compute("postgres")
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN);
    for (k, v) in extra {
        s = s.env(k, *v);
    }
    Fixture::with_server(s.spawn())
}

/// What a tenant's owner saves from the create answer.
pub(crate) struct Tenant {
    pub user: String,
    pub password: String,
    pub dsn_template: String,
    pub pooled_dsn_template: String,
}

impl Tenant {
    pub fn create(fx: &Fixture, name: &str) -> Tenant {
        let r = fx.server.create_tenant(&fx.account_key, name);
        let field = |k: &str| r.body[k].as_str().unwrap().to_owned();
        Tenant {
            user: field("pg_user"),
            password: field("pg_password"),
            dsn_template: field("dsn_template"),
            pooled_dsn_template: field("pooled_dsn_template"),
        }
    }

    pub fn dsn(&self, db: &str) -> String {
        self.dsn_template.replace("<db-name>", db)
    }

    /// Through the pooler.
    pub fn pooled_dsn(&self, db: &str) -> String {
        self.pooled_dsn_template.replace("<db-name>", db)
    }
}

/// psql (quiet, unaligned, tuples only) with `conninfo`, running `sql`: its output, or what
/// it printed on failure.
pub(crate) fn psql(conninfo: &str, sql: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
    ]);
    for s in sql {
        cmd.arg("-c").arg(s);
    }
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PG")) {
        cmd.env_remove(k);
    }
    let out = cmd.output().expect("run psql");
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// A client configuration for `db` through the Gateway at `gw` (TLS required).
pub(crate) fn config(gw: &str, user: &str, password: &str, db: &str) -> postgres::Config {
    let (host, port) = gw.rsplit_once(':').unwrap();
    let mut c = postgres::Config::new();
    c.host(host)
        .port(port.parse().unwrap())
        .user(user)
        .password(password)
        .dbname(db)
        .ssl_mode(SslMode::Require)
        .connect_timeout(Duration::from_secs(60));
    c
}

pub(crate) fn connect(c: &postgres::Config) -> Result<postgres::Client, postgres::Error> {
    c.connect(Tls::new())
}

/// A query loop through `cfg` far above 80 % of a quarter vCPU (the autoscaler's high band),
/// until `stop`.
pub(crate) fn burner(
    stop: &Arc<AtomicBool>,
    cfg: &postgres::Config,
) -> std::thread::JoinHandle<()> {
    let (stop, cfg) = (stop.clone(), cfg.clone());
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut c) = connect(&cfg) else { continue };
            while !stop.load(Ordering::Relaxed)
                && c.batch_execute("DO $$ DECLARE i int := 0; BEGIN WHILE i < 3000000 LOOP i := i + 1; END LOOP; END $$").is_ok()
            {}
        }
    })
}

/// The SQLSTATE and message of a refused connection.
fn refusal(r: Result<postgres::Client, postgres::Error>) -> (String, String) {
    match r {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => match e.as_db_error() {
            Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
            None => (String::new(), e.to_string()),
        },
    }
}

pub(crate) fn describe(fx: &Fixture, tenant: &str, db: &str) -> Value {
    let r = fx
        .server
        .get(&format!("/v2/tenants/{tenant}/dbs/{db}"), &fx.account_key);
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

/// Polls describe until `done`, at most `secs`.
pub(crate) fn until(
    fx: &Fixture,
    tenant: &str,
    db: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> Value {
    crate::helpers::until_value(secs, || describe(fx, tenant, db), done)
}

fn connections(d: &Value) -> u64 {
    d["active_connections"].as_u64().unwrap()
}

#[test]
fn the_seeds_path_through_psql_and_each_refusal_with_its_sqlstate() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let mut fx = platform(&data, &[("SPG99_IDLE_TIMEOUT", "2")]);
    let gw = fx
        .server
        .gateway
        .clone()
        .expect("the embedded Gateway listens");

    // Create a tenant, save its credentials, create a database: stopped until used.
    let shop = Tenant::create(&fx, "shop");
    assert_eq!(
        shop.dsn_template,
        format!(
            "postgres://{}:{}@{gw}/<db-name>?sslmode=require",
            shop.user, shop.password
        ),
        "the template names the Gateway"
    );
    let r = fx.server.create_db(&fx.account_key, "shop", "orders");
    assert_eq!(r.body["state"], "stopped");

    // psql with the template: the database starts on the first connection.
    let out = psql(
        &shop.dsn("orders"),
        &[
            "CREATE TABLE items (id int PRIMARY KEY, name text)",
            "INSERT INTO items VALUES (1, 'apple'), (2, 'pear')",
            "SELECT current_user || ' ' || current_database() || ' ' || count(*) FROM items",
        ],
    )
    .unwrap();
    assert_eq!(out, format!("{} orders 2", shop.user));
    let d = describe(&fx, "shop", "orders");
    assert_eq!(d["state"], "running", "{d}");
    assert_eq!(d["scale_state"], "STABLE", "{d}");
    assert_eq!(d["worker_id"], "local", "{d}");
    assert_eq!(d["current_profile"], "c0.25", "{d}");

    // Each refusal with PostgreSQL's SQLSTATE.
    let other = Tenant::create(&fx, "other");
    let wrong = refusal(connect(&config(&gw, &shop.user, "not-it", "orders")));
    assert_eq!(wrong.0, "28P01", "{wrong:?}");
    let unknown = refusal(connect(&config(
        &gw,
        "u_0000000000000000",
        "not-it",
        "orders",
    )));
    assert_eq!(
        unknown.0, "28P01",
        "an unknown user is told what a wrong password is"
    );
    assert_eq!(
        unknown.1.replace("u_0000000000000000", &shop.user),
        wrong.1,
        "and in the same words"
    );
    let nodb = refusal(connect(&config(&gw, &shop.user, &shop.password, "nothere")));
    assert_eq!(nodb.0, "3D000", "{nodb:?}");
    let foreign = refusal(connect(&config(
        &gw,
        &other.user,
        &other.password,
        "orders",
    )));
    assert_eq!(
        foreign.0, "3D000",
        "another tenant's user finds no database of this tenant: {foreign:?}"
    );
    let crossed = refusal(connect(&config(&gw, &other.user, &shop.password, "orders")));
    assert_eq!(crossed.0, "28P01", "{crossed:?}");
    let mut plain = config(&gw, &shop.user, &shop.password, "orders");
    plain.ssl_mode(SslMode::Disable);
    let plain = refusal(plain.connect(postgres::NoTls));
    assert_eq!(plain.0, "28000", "{plain:?}");
    // psql says the same to a person.
    let e = psql(
        &shop.dsn("orders").replace(&shop.password, "not-it"),
        &["SELECT 1"],
    )
    .unwrap_err();
    assert!(e.contains("password authentication failed for user"), "{e}");
    let e = psql(
        &shop.dsn("orders").replace("require", "disable"),
        &["SELECT 1"],
    )
    .unwrap_err();
    assert!(e.contains("SSL is required"), "{e}");

    // verify-full with the certificate the Gateway made and kept, and channel binding
    // required (SCRAM-SHA-256-PLUS), from libpq.
    let cert = data.join("gateway-tls/gateway.crt");
    let port = gw.rsplit_once(':').unwrap().1;
    let strict = format!(
        "host=localhost port={port} user={} password={} dbname=orders sslmode=verify-full \
         sslrootcert={} channel_binding=require",
        shop.user,
        shop.password,
        cert.display()
    );
    assert_eq!(psql(&strict, &["SELECT 'verified'"]).unwrap(), "verified");

    // An open session keeps the database up past the idle timeout, and shows in describe.
    let mut held = connect(&config(&gw, &shop.user, &shop.password, "orders")).unwrap();
    until(&fx, "shop", "orders", 10, |d| connections(d) >= 1);
    std::thread::sleep(Duration::from_secs(4));
    let d = describe(&fx, "shop", "orders");
    assert_eq!(d["state"], "running", "{d}");
    let n: i64 = held
        .query_one("SELECT count(*) FROM items", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // After the last session and the idle timeout, it stops.
    drop(held);
    let d = until(&fx, "shop", "orders", 30, |d| d["state"] == "stopped");
    assert_eq!(connections(&d), 0, "{d}");
    // The next connection starts it again and finds the data.
    let out = psql(
        &shop.dsn("orders"),
        &["SELECT string_agg(name, ',' ORDER BY id) FROM items"],
    )
    .unwrap();
    assert_eq!(out, "apple,pear");

    // A clean stop with the database running: its PostgreSQL server stops, and the embedded
    // worker, stopped while the API still answers it, reports no failed call.
    let (status, _) = fx.server.terminate();
    assert!(status.success(), "{status}");
    assert!(crate::lab::postgres_servers(&data).is_empty());
    let log = std::fs::read_to_string(&fx.server.stderr_path).unwrap();
    assert!(!log.contains("call failed"), "{log}");
}

#[test]
fn channel_binding_direct_tls_cancels_and_a_password_reset() {
    let tmp = tempdir();
    let fx = platform(&tmp.path().join("data"), &[]);
    let gw = fx.server.gateway.clone().unwrap();
    let shop = Tenant::create(&fx, "shop");
    fx.server.create_db(&fx.account_key, "shop", "app");
    let cfg = |password: &str| config(&gw, &shop.user, password, "app");

    // tokio-postgres with channel_binding=require: SCRAM-SHA-256-PLUS, bound to the
    // certificate; a proof bound to another certificate is refused.
    let mut bound = cfg(&shop.password);
    bound.channel_binding(ChannelBinding::Require);
    let mut c = bound.connect(Tls::new()).unwrap();
    let n: i32 = c.query_one("SELECT 41 + 1", &[]).unwrap().get(0);
    assert_eq!(n, 42);
    let (code, _) = refusal(bound.connect(Tls::claiming(vec![7; 32])));
    assert_eq!(code, "28P01", "a binding to another certificate");

    // PostgreSQL 17's direct TLS: TLS first, with ALPN `postgresql`; without ALPN the
    // Gateway hangs up, as PostgreSQL does.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (user, password, addr) = (shop.user.clone(), shop.password.clone(), gw.clone());
    runtime.block_on(async move {
        let direct = |alpn: &'static [&'static [u8]]| {
            let (addr, user, password) = (addr.clone(), user.clone(), password.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = tokio_rustls::TlsConnector::from(pgtls::config(alpn))
                    .connect(name, tcp)
                    .await
                    .unwrap();
                let mut c = tokio_postgres::Config::new();
                c.user(&user)
                    .password(&password)
                    .dbname("app")
                    .ssl_mode(SslMode::Disable);
                c.connect_raw(pgtls::Stream(tls, None), tokio_postgres::NoTls)
                    .await
            }
        };
        let (client, connection) = direct(&[b"postgresql"]).await.unwrap();
        tokio::spawn(connection);
        let row = client.query_one("SELECT 'direct'", &[]).await.unwrap();
        assert_eq!(row.get::<_, &str>(0), "direct");
        assert!(direct(&[]).await.is_err(), "direct TLS without ALPN");
    });

    // A cancel reaches the right backend through the Gateway's own cancel key: over TLS from
    // tokio-postgres, and in the clear from libpq (psql's Ctrl-C).
    let token = c.cancel_token();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        token.cancel_query(Tls::new())
    });
    let e = c.query_one("SELECT pg_sleep(60)", &[]).unwrap_err();
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e}");
    canceller.join().unwrap().unwrap();
    let n: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(n, 1, "the session goes on after its cancel");
    let mut sleeper = Command::new("psql")
        .args(["-X", "-d", &shop.dsn("app"), "-c", "SELECT pg_sleep(60)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its query runs (a SIGINT before that would only end psql).
    let began = Instant::now();
    loop {
        let running: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(60)'",
                &[],
            )
            .unwrap()
            .get(0);
        if running == 1 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "psql's query never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-INT", &sleeper.id().to_string()])
        .status()
        .unwrap();
    let began = Instant::now();
    while sleeper.try_wait().unwrap().is_none() {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "psql's cancel did not land"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut said = String::new();
    std::io::Read::read_to_string(&mut sleeper.stderr.take().unwrap(), &mut said).unwrap();
    assert!(
        said.contains("canceling statement due to user request"),
        "{said}"
    );

    // A password reset: the old password is refused within seconds, the new one works, and
    // a session opened before it goes on (as in PostgreSQL).
    let r = fx.server.post(
        "/v2/tenants/shop/credentials/reset",
        &fx.account_key,
        json!({}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let new = r.body["pg_password"].as_str().unwrap().to_owned();
    assert_ne!(new, shop.password);
    assert_eq!(
        r.body["dsn_template"],
        shop.dsn_template.replace(&shop.password, &new)
    );
    let began = Instant::now();
    loop {
        match connect(&cfg(&shop.password)) {
            Err(e) if e.code() == Some(&SqlState::INVALID_PASSWORD) => break,
            Err(e) => panic!("{e:?}"),
            Ok(_) => assert!(
                began.elapsed() < Duration::from_secs(10),
                "the old password still works"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut fresh = connect(&cfg(&new)).unwrap();
    let who: String = fresh
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(who, shop.user);
    let n: i32 = c.query_one("SELECT 2", &[]).unwrap().get(0);
    assert_eq!(n, 2, "the session from before the reset");
}

#[test]
fn new_connections_during_an_autoscale_handoff_are_held_not_refused_and_no_row_is_lost() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let server = Start::new(&data)
        .gateway()
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .env("SPG99_CLOCK", "manual")
        .env("SPG99_WORKER_TIMEOUT_MS", "3600000")
        .env("SPG99_IDLE_TIMEOUT", "100000")
        // Longer than the clock jump below, so that no lease runs out in it.
        .env("SPG99_LEASE_TTL_MS", "300000")
        .spawn();
    let fx = Fixture::with_server(server);
    let _worker = Worker::postgres(&fx.server, "w1", &tmp.path().join("compute"));
    let gw = fx.server.gateway.clone().unwrap();
    let shop = Tenant::create(&fx, "shop");
    fx.server.create_db(&fx.account_key, "shop", "app");
    let cfg = config(&gw, &shop.user, &shop.password, "app");
    connect(&cfg)
        .unwrap()
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(Mutex::new(Vec::<i64>::new()));
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    // A new connection for every row, as a short-lived client does.
    let inserter = {
        let (stop, committed, refused, cfg) = (
            stop.clone(),
            committed.clone(),
            refused.clone(),
            cfg.clone(),
        );
        std::thread::spawn(move || {
            let mut next = 1i64;
            while !stop.load(Ordering::Relaxed) {
                match connect(&cfg) {
                    Ok(mut c) => {
                        if c.execute("INSERT INTO t VALUES ($1)", &[&next]).is_ok() {
                            committed.lock().unwrap().push(next);
                        }
                        next += 1;
                    }
                    Err(e) => refused.lock().unwrap().push(e.to_string()),
                }
            }
        })
    };
    // Real load through the Gateway.
    let burner = burner(&stop, &cfg);
    let db_id = describe(&fx, "shop", "app")["db_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let began = Instant::now();
    loop {
        let log = fx.server.get(
            &format!("/v2/admin/log?db={db_id}&types=db.load_changed"),
            ROOT_TOKEN,
        );
        if log.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["data"]["band"] == "high")
        {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the load was never high"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    while committed.lock().unwrap().len() < 20 {
        assert!(began.elapsed() < Duration::from_secs(90), "no rows went in");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The load has been high for the autoscaler's window.
    let r = fx.server.post(
        "/internal/v1/clock/advance",
        SERVICE_TOKEN,
        json!({"seconds": 61}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let d = until(&fx, "shop", "app", 90, |d| {
        d["scale_state"] == "STABLE" && d["current_profile"] == "c0.5"
    });
    assert_eq!(d["writer_term"], 2, "{d}");
    crate::lab::more_rows(&committed, 30);
    stop.store(true, Ordering::Relaxed);
    inserter.join().unwrap();
    burner.join().unwrap();

    let refused = refused.lock().unwrap().clone();
    assert!(
        refused.is_empty(),
        "connections refused during the handoff: {refused:?}"
    );
    let mut c = connect(&cfg).unwrap();
    let shared_buffers: String = c.query_one("SHOW shared_buffers", &[]).unwrap().get(0);
    assert_eq!(
        shared_buffers, "512MB",
        "the connection reaches the c0.5 writer"
    );
    let committed = committed.lock().unwrap().clone();
    let lost = crate::lab::lost_rows(&mut c, &committed);
    assert!(lost.is_empty(), "committed rows lost: {lost:?}");
}

#[test]
fn sessions_survive_a_control_plane_crash_and_the_gateway_holds_its_limit() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let start = |listen: &str| {
        Start::new(&data)
            .listen(listen)
            .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
            .env("SPG99_LEASE_TTL_MS", "3000")
            .env("SPG99_IDLE_TIMEOUT", "2")
            .spawn()
    };
    let mut fx = Fixture::with_server(start("127.0.0.1:0"));
    let _worker = Worker::postgres(&fx.server, "w1", &tmp.path().join("compute"));
    let gateway = Gateway::start(
        &fx.server,
        &tmp.path().join("gw"),
        &["--max-connections", "4"],
    );
    let shop = Tenant::create(&fx, "shop");
    fx.server.create_db(&fx.account_key, "shop", "app");
    let cfg = config(&gateway.addr, &shop.user, &shop.password, "app");
    let mut sessions: Vec<postgres::Client> = (0..4).map(|_| connect(&cfg).unwrap()).collect();
    sessions[0].batch_execute("CREATE TABLE t (n int)").unwrap();
    // `--max-connections`: one more is refused with 53300.
    let (code, message) = refusal(connect(&cfg));
    assert_eq!(code, "53300", "{message}");
    until(&fx, "shop", "app", 10, |d| connections(d) == 4);

    // The control plane dies and comes back on its address; meanwhile, and after, through
    // several lease renewals and the idle timeout, the sessions go on.
    let addr = fx.server.base.trim_start_matches("http://").to_owned();
    fx.server.kill9();
    for (i, s) in sessions.iter_mut().enumerate() {
        s.execute("INSERT INTO t VALUES ($1)", &[&(i as i32)])
            .unwrap();
    }
    fx.server = start(&addr);
    std::thread::sleep(Duration::from_secs(5));
    for (i, s) in sessions.iter_mut().enumerate() {
        s.execute("INSERT INTO t VALUES ($1)", &[&(10 + i as i32)])
            .unwrap();
    }
    let d = until(&fx, "shop", "app", 10, |d| connections(d) == 4);
    assert_eq!(d["state"], "running", "{d}");
    assert_eq!(d["writer_term"], 1, "the same writer all along: {d}");
    let n: i64 = sessions[3]
        .query_one("SELECT count(*) FROM t", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 8);
    // A new connection, once a place is free (the Gateway sees the close a moment later).
    sessions.pop();
    let began = Instant::now();
    let mut c = loop {
        match connect(&cfg) {
            Ok(c) => break c,
            Err(e) if began.elapsed() < Duration::from_secs(10) => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no place freed in 10 s: {e}"),
        }
    };
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(n, 8, "{}", gateway.log());
}

#[test]
fn a_thousand_sessions_through_one_gateway() {
    const DBS: usize = 10;
    const EACH: usize = 100;
    let tmp = tempdir();
    let fx = platform(&tmp.path().join("data"), &[]);
    let gw = fx.server.gateway.clone().unwrap();
    let shop = Tenant::create(&fx, "shop");
    for i in 0..DBS {
        fx.server
            .create_db(&fx.account_key, "shop", &format!("db{i}"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clients = runtime.block_on(async {
        let handshakes = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for i in 0..DBS * EACH {
            let cfg: tokio_postgres::Config = {
                let (host, port) = gw.rsplit_once(':').unwrap();
                let mut c = tokio_postgres::Config::new();
                c.host(host)
                    .port(port.parse().unwrap())
                    .user(&shop.user)
                    .password(&shop.password)
                    .dbname(format!("db{}", i % DBS))
                    .ssl_mode(SslMode::Require)
                    .connect_timeout(Duration::from_secs(120));
                c
            };
            let handshakes = handshakes.clone();
            tasks.push(tokio::spawn(async move {
                let permit = handshakes.acquire_owned().await.unwrap();
                let (client, connection) = cfg.connect(Tls::new()).await?;
                drop(permit);
                tokio::spawn(connection);
                Ok::<_, tokio_postgres::Error>(client)
            }));
        }
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await.unwrap().expect("a session"));
        }
        // Every session answers, all at once.
        let answers = clients
            .iter()
            .map(|c| c.query_one("SELECT pg_backend_pid()", &[]));
        let pids: std::collections::HashSet<i32> = futures_util::future::join_all(answers)
            .await
            .into_iter()
            .map(|r| r.unwrap().get(0))
            .collect();
        assert_eq!(pids.len(), DBS * EACH, "a backend for each session");
        clients
    });
    // Describe's count is within 10 % at this size.
    for i in 0..DBS {
        until(&fx, "shop", &format!("db{i}"), 30, |d| {
            connections(d).abs_diff(EACH as u64) * 10 <= EACH as u64
        });
    }
    // Beyond what one database's profile admits, its server refuses with 53300 (and the
    // Gateway passes that on).
    let mut extra = Vec::new();
    let refused = loop {
        match connect(&config(&gw, &shop.user, &shop.password, "db0")) {
            Ok(c) => extra.push(c),
            Err(e) => break e,
        }
        assert!(extra.len() <= 10, "c0.25 admits about 100 sessions");
    };
    assert_eq!(
        refused.code(),
        Some(&SqlState::TOO_MANY_CONNECTIONS),
        "{refused}"
    );
    drop(extra);
    drop(clients);
    runtime.shutdown_timeout(Duration::from_secs(5));
    for i in 0..DBS {
        until(&fx, "shop", &format!("db{i}"), 30, |d| connections(d) == 0);
    }
}

#[test]
fn a_gateway_address_in_use_stops_the_start_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let (status, stderr) = Start::new(&data)
        .env("SPG99_GATEWAY_LISTEN", addr.as_str())
        .run_to_failure();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the Gateway cannot listen on {addr}"))
            && stderr.contains("--gateway-listen"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // And `spg99 gateway` alike.
    let out = Command::new(crate::helpers::bin())
        .args([
            "gateway",
            "--control-plane",
            "http://127.0.0.1:9",
            "--listen",
            &addr,
            "--pooler-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--tls-dir")
        .arg(tmp.path().join("tls"))
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("cannot listen on"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
}

#[test]
fn a_stopping_gateway_releases_its_leases() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let fx = Fixture::with_server(
        Start::new(&data)
            .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
            // A lease left to expire would keep the database up for a minute.
            .env("SPG99_LEASE_TTL_MS", "60000")
            .env("SPG99_IDLE_TIMEOUT", "1")
            .spawn(),
    );
    let _worker = Worker::postgres(&fx.server, "w1", &tmp.path().join("compute"));
    let mut gateway = Gateway::start(&fx.server, &tmp.path().join("gw"), &[]);
    let shop = Tenant::create(&fx, "shop");
    fx.server.create_db(&fx.account_key, "shop", "app");
    let cfg = config(&gateway.addr, &shop.user, &shop.password, "app");
    let mut session = connect(&cfg).unwrap();
    session.batch_execute("SELECT 1").unwrap();
    until(&fx, "shop", "app", 10, |d| d["state"] == "running");

    // SIGTERM with the session open: the lease goes back at once, and the database stops
    // after its idle timeout, long before the lease's TTL.
    gateway.terminate();
    assert!(
        session.batch_execute("SELECT 1").is_err(),
        "the session ended"
    );
    until(&fx, "shop", "app", 20, |d| d["state"] == "stopped");
}

/// A login through the Gateway at `gw` from the local address `from`, then `SELECT 1`: the
/// SQLSTATE and message of a refusal.
fn login_from(from: [u8; 4], gw: &str, user: &str, password: &str) -> Result<(), (String, String)> {
    use tokio_postgres::tls::MakeTlsConnect;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server: std::net::SocketAddr = gw.parse().unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&std::net::SocketAddr::from((from, 0)).into())
            .unwrap();
        socket.connect(&server.into()).unwrap();
        let std_stream: std::net::TcpStream = socket.into();
        std_stream.set_nonblocking(true).unwrap();
        let stream = tokio::net::TcpStream::from_std(std_stream).unwrap();
        let mut c = tokio_postgres::Config::new();
        c.user(user)
            .password(password)
            .dbname("app")
            .ssl_mode(SslMode::Require);
        let tls =
            MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut Tls::new(), "localhost")
                .unwrap();
        let refused = |e: tokio_postgres::Error| match e.as_db_error() {
            Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
            None => (String::new(), e.to_string()),
        };
        let (client, conn) = c.connect_raw(stream, tls).await.map_err(refused)?;
        tokio::spawn(conn);
        client.simple_query("SELECT 1").await.map_err(refused)?;
        Ok(())
    })
}

#[test]
fn failed_passwords_are_limited_per_user_and_per_address_sparing_the_users_own_addresses() {
    let tmp = tempdir();
    let fx = platform(
        &tmp.path().join("data"),
        &[
            ("SPG99_GATEWAY_AUTH_FAILURES_PER_USER", "3"),
            ("SPG99_GATEWAY_AUTH_FAILURES_PER_ADDRESS", "6"),
        ],
    );
    let gw = fx.server.gateway.clone().unwrap();
    let shop = Tenant::create(&fx, "shop");
    let other = Tenant::create(&fx, "other");
    fx.server.create_db(&fx.account_key, "shop", "app");
    fx.server.create_db(&fx.account_key, "other", "app");
    let (a, b, c) = ([127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]);

    // The application logs in from A.
    login_from(a, &gw, &shop.user, &shop.password).unwrap();
    // Someone at B guesses shop's password.
    for _ in 0..3 {
        let e = login_from(b, &gw, &shop.user, "guess").unwrap_err();
        assert_eq!(e.0, "28P01", "{e:?}");
    }
    let e = login_from(b, &gw, &shop.user, "guess").unwrap_err();
    assert_eq!(e.0, "28000", "{e:?}");
    assert!(
        e.1.contains("too many failed password attempts for user"),
        "{e:?}"
    );
    // Now even the right password is refused from a stranger's address...
    let e = login_from(c, &gw, &shop.user, &shop.password).unwrap_err();
    assert_eq!(e.0, "28000", "{e:?}");
    // ...while the application's own address carries on, and other users everywhere.
    login_from(a, &gw, &shop.user, &shop.password).unwrap();
    login_from(c, &gw, &other.user, &other.password).unwrap();

    // B keeps failing, on another user: past six failures the address itself is refused,
    // whatever it tries.
    for _ in 0..3 {
        assert_eq!(
            login_from(b, &gw, &other.user, "guess").unwrap_err().0,
            "28P01"
        );
    }
    let e = login_from(b, &gw, &other.user, &other.password).unwrap_err();
    assert_eq!(e.0, "53300", "{e:?}");
    assert!(e.1.contains("from this address"), "{e:?}");
    // other's own address (C logged in as it) is spared its user's limit.
    login_from(c, &gw, &other.user, &other.password).unwrap();
}

#[test]
fn hundreds_of_silent_clients_do_not_stop_the_gateway_and_each_is_let_go() {
    use std::io::Read;
    let tmp = tempdir();
    let server = Start::new(&tmp.path().join("data"))
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .spawn();
    let fx = Fixture::with_server(server);
    let shop = Tenant::create(&fx, "shop");
    let gw = Gateway::start(
        &fx.server,
        &tmp.path().join("gw"),
        &["--handshake-timeout", "2"],
    );
    // 200 that connect and say nothing; 100 that send half a startup packet.
    let mut silent: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(&gw.addr).unwrap())
        .collect();
    for _ in 0..100 {
        let mut c = std::net::TcpStream::connect(&gw.addr).unwrap();
        std::io::Write::write_all(&mut c, &[0, 0, 0, 40, 0, 3]).unwrap();
        silent.push(c);
    }
    // Meanwhile a client is served: its wrong password is refused as such, at once.
    let wrong = refusal(connect(&config(&gw.addr, &shop.user, "not-it", "app")));
    assert_eq!(wrong.0, "28P01", "{wrong:?}");
    // And each silent one is let go after the handshake timeout.
    for mut c in silent {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .expect("the Gateway closes a silent client's connection");
    }
}

/// A checkout in a directory the postgres user cannot reach (a root container's home is
/// 0700): the newcomer's path works all the same, the servers' data kept in a directory of the
/// service's own, linked from where it was asked for.
#[test]
fn the_newcomers_path_works_from_a_directory_the_postgres_user_cannot_reach() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempdir();
    let home = tmp.path().join("root");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = home.join("checkout").join("data");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    // The embedded default as `scripts/serve.sh` runs it: nothing made reachable beforehand.
    let server = Start::new(&data)
        .gateway()
        .env("SPG99_COMPUTE", "postgres")
        .env("SPG99_PORT_RANGE", pg_ports())
        .spawn();
    let fx = Fixture::with_server(server);
    let shop = Tenant::create(&fx, "shop");
    fx.server.create_db(&fx.account_key, "shop", "app");
    assert_eq!(
        psql(&shop.dsn("app"), &["SELECT 40 + 2"]),
        Ok("42".to_owned())
    );
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let link = std::fs::read_link(data.join("compute"));
    if root {
        let target = link.expect("the data directory links to the servers' storage");
        assert!(
            target.starts_with("/var/lib/spg99/"),
            "{}",
            target.display()
        );
        assert!(target.join("logs").is_dir());
        // The repository too: in a directory of the service's own, chosen the same way.
        let repo = spg99_worker::postgres::reachable_repository(&data.join("storage")).unwrap();
        assert!(repo.starts_with("/var/lib/spg99/"), "{}", repo.display());
        drop(fx);
        std::fs::remove_dir_all(&target).unwrap();
        std::fs::remove_dir_all(&repo).unwrap();
    } else {
        assert!(
            link.is_err(),
            "servers run as this user: the storage stays in place"
        );
    }
}

/// When the local worker truly cannot run databases (here: a data directory too deep for a
/// Unix socket's path), `serve` exits at once, non-zero, saying why and what to do.
#[test]
fn serve_exits_at_once_when_its_local_worker_cannot_start() {
    let tmp = tempdir();
    let deep = tmp.path().join("d".repeat(120)).join("data");
    std::fs::create_dir_all(deep.parent().unwrap()).unwrap();
    let began = Instant::now();
    let (status, stderr) = Start::new(&deep)
        .gateway()
        .compute("postgres")
        .run_to_failure();
    assert!(!status.success(), "{status}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "took {:?}",
        began.elapsed()
    );
    assert!(
        stderr.contains("the local worker cannot start") && stderr.contains("too deep"),
        "{stderr}"
    );
}

/// While no worker can run a database, a client is told so, not just that it waited.
#[test]
fn a_client_is_told_when_no_worker_is_live() {
    let tmp = tempdir();
    let server = crate::lab::start(&tmp.path().join("data"), &[]).spawn();
    let fx = Fixture::with_server(server);
    let gateway = Gateway::start(
        &fx.server,
        &tmp.path().join("gw"),
        &["--connect-timeout", "2"],
    );
    let shop = Tenant::create(&fx, "shop");
    fx.server.create_db(&fx.account_key, "shop", "app");
    let (code, message) = refusal(connect(&config(
        &gateway.addr,
        &shop.user,
        &shop.password,
        "app",
    )));
    assert_eq!(code, "57P03", "{message}");
    assert!(
        message.contains("did not become available within 2 s: no worker is live"),
        "{message}"
    );
}
