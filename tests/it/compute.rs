//! Real compute: `spg99 worker --compute postgres` against the real server. Every database
//! gets a PostgreSQL server of its own, its tenant's role logs in with SCRAM, the data
//! survives stops, handoffs and crashes, and deletion removes it. The test plays the
//! Gateway (checkouts, leases) and connects straight to each writer's `backend_addr`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{tempdir, Reply, Server, ROOT_TOKEN};
use crate::lab::{running, Lab, Worker};

/// A checkout that waits for the database to run (the Gateway's way).
fn checkout(lab: &Lab, pg_user: &str, db: &str) -> Reply {
    lab.internal(
        "/checkout",
        json!({"pg_user": pg_user, "db": db, "wait_ms": 20_000}),
    )
}

/// A checkout of `db` (started if it is stopped) and a session on its backend as the tenant.
fn open(lab: &Lab, password: &str, db: &str) -> postgres::Client {
    let r = checkout(lab, &lab.pg_user, db);
    assert_eq!(r.status, 200, "{r:?}");
    connect(
        r.body["backend_addr"].as_str().unwrap(),
        &lab.pg_user,
        password,
        db,
    )
    .unwrap()
}

fn password(lab: &Lab, tenant: &str) -> String {
    let r = lab.s().get(
        &format!("/v2/tenants/{tenant}/credentials"),
        &lab.fx.account_key,
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.body["pg_password"].as_str().unwrap().to_owned()
}

fn connect(
    addr: &str,
    user: &str,
    password: &str,
    db: &str,
) -> Result<postgres::Client, postgres::Error> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    postgres::Config::new()
        .host(host)
        .port(port.parse().unwrap())
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(Duration::from_secs(5))
        .connect(postgres::NoTls)
}

/// The SQLSTATE a refused connection got.
fn refused(r: Result<postgres::Client, postgres::Error>) -> String {
    match r {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => e
            .code()
            .map(|c| c.code().to_owned())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// Polls until `done` holds for the describe of `db` (at most `secs`); the describe.
fn until(lab: &Lab, db: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    crate::helpers::until_value(secs, || lab.describe(db), done)
}

/// The pid in a data directory's `postmaster.pid`, if a server runs there.
fn postmaster(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    running(pid).then_some(pid)
}

/// The live postgres servers whose data directory is under `storage`.
fn servers_under(storage: &Path) -> Vec<u32> {
    crate::lab::postgres_servers(storage)
        .into_iter()
        .map(|(_, pid)| pid)
        .collect()
}

fn data_dir(storage: &Path, lab: &Lab, db: &str) -> PathBuf {
    storage.join(lab.describe(db)["timeline"].as_str().unwrap())
}

/// The embedded worker's default ports are below the kernel's range for outgoing connections,
/// and ports other processes hold are skipped.
#[test]
fn backends_listen_below_the_ephemeral_range_on_ports_no_other_process_holds() {
    let kernel = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let ephemeral_low: u16 = kernel.split_whitespace().next().unwrap().parse().unwrap();
    let held: Vec<std::net::TcpListener> = (20_000..20_003)
        .filter_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
        .collect();
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let server = crate::lab::start(&data, &[])
        .compute("postgres")
        .without_env("SPG99_PORT_RANGE")
        .spawn();
    let lab = Lab::on(server);
    lab.create_db("app");
    crate::helpers::until_value(
        60,
        || {
            lab.s()
                .get("/v2/admin/log?types=worker.registered", ROOT_TOKEN)
                .body
        },
        |log| log["items"].as_array().is_some_and(|i| !i.is_empty()),
    );
    let r = checkout(&lab, &lab.pg_user, "app");
    assert_eq!(r.status, 200, "{r:?}");
    let addr = r.body["backend_addr"].as_str().unwrap();
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(
        (20_003..=20_999).contains(&port) && port < ephemeral_low,
        "{addr}: not a free port of the default range below {ephemeral_low}"
    );
    let pw = password(&lab, "shop");
    let mut c = connect(addr, &lab.pg_user, &pw, "app").unwrap();
    assert_eq!(c.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
    drop(held);
}

#[test]
fn a_database_starts_on_checkout_serves_only_its_tenant_and_keeps_its_rows_across_an_idle_stop() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[]);
    let storage = tmp.path().join("compute");
    let _w = Worker::postgres(lab.s(), "w1", &storage);
    lab.create_db("app");
    let pw = password(&lab, "shop");

    let r = checkout(&lab, &lab.pg_user, "app");
    assert_eq!(r.status, 200, "{r:?}");
    let addr = r.body["backend_addr"].as_str().unwrap().to_owned();
    let lease = r.body["lease_id"].as_str().unwrap().to_owned();
    let d = lab.describe("app");
    assert_eq!(
        (d["state"].as_str(), d["backend_addr"].as_str()),
        (Some("running"), Some(addr.as_str()))
    );

    let mut c = connect(&addr, &lab.pg_user, &pw, "app").expect("the tenant logs in with SCRAM");
    let who = c.query_one("SELECT current_user::text, current_database()::text, (SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database())", &[]).unwrap();
    assert_eq!(who.get::<_, String>(0), lab.pg_user);
    assert_eq!(who.get::<_, String>(1), "app");
    assert_eq!(
        who.get::<_, String>(2),
        lab.pg_user,
        "the tenant owns its database"
    );
    c.batch_execute("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 100)").unwrap();
    drop(c);

    // Nobody else gets in: a wrong password, another tenant, another database.
    assert_eq!(
        refused(connect(&addr, &lab.pg_user, "not-the-password", "app")),
        "28P01"
    );
    let other = lab.s().create_tenant(&lab.fx.account_key, "other");
    let (other_user, other_pw) = (
        other.body["pg_user"].as_str().unwrap(),
        other.body["pg_password"].as_str().unwrap(),
    );
    assert_eq!(
        refused(connect(&addr, other_user, other_pw, "app")),
        "28P01",
        "another tenant's role does not exist here"
    );
    assert_eq!(
        refused(connect(&addr, &lab.pg_user, &pw, "template1")),
        "42501",
        "CONNECT is the owner's only"
    );
    assert_eq!(
        refused(connect(&addr, &lab.pg_user, &pw, "postgres")),
        "3D000",
        "the server holds the tenant's database alone"
    );

    // No lease and no session: after the idle timeout the server is gone.
    let dir = data_dir(&storage, &lab, "app");
    let pid = postmaster(&dir).expect("a server runs on the data directory");
    assert_eq!(lab.release(&lease).status, 200);
    // The writer's heartbeats count its sessions too: idle once they say none is left.
    until(&lab, "app", 20, |d| d["active_connections"] == 0);
    lab.advance(301.0);
    until(&lab, "app", 20, |d| d["state"] == "stopped");
    assert!(postmaster(&dir).is_none(), "the server stopped");
    assert!(!running(pid));
    assert!(dir.join("PG_VERSION").exists(), "the data directory stays");

    // The next checkout starts it again, with the rows.
    let mut c = open(&lab, &pw, "app");
    let n: i64 = c
        .query_one("SELECT count(*) FROM orders", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    assert_eq!(servers_under(&storage).len(), 1);
}

#[test]
fn real_cpu_load_moves_the_writer_up_a_profile_and_no_committed_row_is_lost() {
    let tmp = tempdir();
    let lab = Lab::new(
        &tmp.path().join("data"),
        &[("SPG99_IDLE_TIMEOUT", "100000")],
    );
    let storage = tmp.path().join("compute");
    let _w = Worker::postgres(lab.s(), "w1", &storage);
    let db_id = lab.create_db("app");
    let pw = password(&lab, "shop");
    let r = checkout(&lab, &lab.pg_user, "app");
    assert_eq!(r.status, 200, "{r:?}");
    let addr = r.body["backend_addr"].as_str().unwrap().to_owned();
    let mut c = connect(&addr, &lab.pg_user, &pw, "app").unwrap();
    c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .unwrap();
    let shared_buffers = |c: &mut postgres::Client| -> String {
        c.query_one("SHOW shared_buffers", &[]).unwrap().get(0)
    };
    assert_eq!(shared_buffers(&mut c), "256MB", "c0.25's settings");
    drop(c);

    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(Mutex::new(Vec::<i64>::new()));
    let checkouts = Arc::new(Mutex::new(Vec::<(u16, String)>::new()));
    // One client inserting without pause, each row its own transaction; on a broken
    // connection it checks out again (as through a Gateway) and goes on.
    let inserter = {
        let (stop, committed, checkouts) = (stop.clone(), committed.clone(), checkouts.clone());
        let (base, user, pw) = (lab.s().base.clone(), lab.pg_user.clone(), pw.clone());
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build();
            let mut next = 1i64;
            while !stop.load(Ordering::Relaxed) {
                let answer = agent
                    .post(&format!("{base}/internal/v1/checkout"))
                    .set(
                        "Authorization",
                        &format!("Bearer {}", crate::lab::SERVICE_TOKEN),
                    )
                    .send_json(json!({"pg_user": user, "db": "app", "wait_ms": 20_000}));
                let (status, body): (u16, Value) = match answer {
                    Ok(r) => (r.status(), r.into_json().unwrap()),
                    Err(ureq::Error::Status(s, r)) => (s, r.into_json().unwrap_or(Value::Null)),
                    Err(e) => panic!("{e}"),
                };
                checkouts.lock().unwrap().push((
                    status,
                    body["error"]["code"].as_str().unwrap_or("").to_owned(),
                ));
                if status != 200 {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let Ok(mut c) = connect(body["backend_addr"].as_str().unwrap(), &user, &pw, "app")
                else {
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    match c.execute("INSERT INTO t VALUES ($1)", &[&next]) {
                        Ok(_) => {
                            committed.lock().unwrap().push(next);
                            next += 1;
                        }
                        // The row of the insert the shutdown cut off is there: its commit
                        // went through, only the answer was lost (as with any server that
                        // stops at that moment). Not acknowledged, so not counted; go on.
                        Err(e)
                            if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) =>
                        {
                            next += 1;
                        }
                        Err(_) => break,
                    }
                }
            }
        })
    };
    // Real load: a query loop that keeps a core busy, far above 80 % of a quarter vCPU.
    let burner = {
        let stop = stop.clone();
        let (addr, user, pw) = (addr.clone(), lab.pg_user.clone(), pw.clone());
        std::thread::spawn(move || {
            let Ok(mut c) = connect(&addr, &user, &pw, "app") else {
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                if c.batch_execute("DO $$ DECLARE i int := 0; BEGIN WHILE i < 3000000 LOOP i := i + 1; END LOOP; END $$")
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    // The heartbeats carry the load: the database enters the `high` band.
    let began = Instant::now();
    loop {
        let log = lab.s().get(
            &format!("/v2/admin/log?db={db_id}&types=db.load_changed"),
            ROOT_TOKEN,
        );
        let high = log.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["data"]["band"] == "high");
        if high {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the load was never high: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Rows are going in when the handoff begins.
    let began = Instant::now();
    while committed.lock().unwrap().len() < 20 {
        assert!(began.elapsed() < Duration::from_secs(30), "no rows went in");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = lab.head();
    lab.advance(61.0);
    let d = until(&lab, "app", 60, |d| {
        d["scale_state"] == "STABLE" && d["current_profile"] == "c0.5"
    });
    assert_eq!(d["writer_term"], 2);
    // A little more traffic on the new writer, then stop.
    let at_handoff = crate::lab::more_rows(&committed, 50);
    stop.store(true, Ordering::Relaxed);
    inserter.join().unwrap();
    burner.join().unwrap();

    let mut c = open(&lab, &pw, "app");
    assert_eq!(
        shared_buffers(&mut c),
        "512MB",
        "the new writer runs c0.5's settings"
    );
    let committed = committed.lock().unwrap().clone();
    assert!(
        committed.len() > at_handoff,
        "rows went in after the handoff"
    );
    let missing = crate::lab::lost_rows(&mut c, &committed);
    assert!(
        missing.is_empty(),
        "committed rows lost in the handoff: {missing:?}"
    );

    // Checkouts were frozen during the cutover only: no lease was granted between its start
    // and its end, and the answers were leases or `checkouts_frozen`.
    let types = lab.types_since(&db_id, before);
    let cut = types
        .iter()
        .position(|t| t == "db.scale_cutover_started")
        .expect("a cutover");
    let done = types
        .iter()
        .position(|t| t == "db.scale_completed")
        .expect("completed");
    assert!(
        !types[cut..done].iter().any(|t| t == "lease.granted"),
        "{types:?}"
    );
    assert!(
        types[done..].iter().any(|t| t == "writer.retired"),
        "{types:?}"
    );
    for (status, code) in checkouts.lock().unwrap().iter() {
        assert!(
            *status == 200 || (*status == 503 && code == "checkouts_frozen"),
            "{status} {code}"
        );
    }
}

#[test]
fn deleting_a_database_removes_its_data_directory() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[]);
    let storage = tmp.path().join("compute");
    let _w = Worker::postgres(lab.s(), "w1", &storage);
    let db_id = lab.create_db("app");
    let r = checkout(&lab, &lab.pg_user, "app");
    assert_eq!(r.status, 200, "{r:?}");
    let dir = data_dir(&storage, &lab, "app");
    assert!(dir.join("PG_VERSION").exists());
    let before = lab.head();

    let d = lab
        .s()
        .delete("/v2/tenants/shop/dbs/app", &lab.fx.account_key);
    assert_eq!(d.status, 202, "{d:?}");
    lab.s()
        .wait_for_status("/v2/tenants/shop/dbs/app", &lab.fx.account_key, 404);
    assert!(!dir.exists(), "the data directory is gone");
    assert!(servers_under(&storage).is_empty());
    let types = lab.types_since(&db_id, before);
    let destroyed = types
        .iter()
        .position(|t| t == "db.data_destroyed")
        .expect("destroyed");
    let deleted = types
        .iter()
        .position(|t| t == "db.deleted")
        .expect("deleted");
    assert!(
        destroyed < deleted,
        "the deletion completes after the data is gone: {types:?}"
    );
}

#[test]
fn a_killed_server_and_a_killed_worker_are_both_recovered_with_no_orphan() {
    let tmp = tempdir();
    let lab = Lab::new(&tmp.path().join("data"), &[]);
    let storage = tmp.path().join("compute");
    let mut w = Worker::postgres(lab.s(), "w1", &storage);
    lab.create_db("app");
    let pw = password(&lab, "shop");
    let mut c = open(&lab, &pw, "app");
    c.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('before the crashes')")
        .unwrap();
    drop(c);
    let dir = data_dir(&storage, &lab, "app");

    // The server is killed: the worker reports it, the database is stopped, and the next
    // checkout starts it again (PostgreSQL's crash recovery keeps the committed row).
    let pid = postmaster(&dir).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let d = until(&lab, "app", 20, |d| d["state"] == "stopped");
    assert!(d["worker_id"].is_null(), "{d}");
    let mut c = open(&lab, &pw, "app");
    let v: String = c.query_one("SELECT v FROM t", &[]).unwrap().get(0);
    assert_eq!(v, "before the crashes");
    drop(c);

    // The worker is killed: its server outlives it, until the worker starts again and stops
    // it; the control plane takes the new instance's registration as a loss, and the next
    // checkout starts the database there again.
    let left = postmaster(&dir).unwrap();
    w.kill9();
    assert!(running(left), "the server outlived its worker");
    w.start(lab.s());
    assert!(!running(left), "the restarted worker stopped it");
    until(&lab, "app", 20, |d| d["state"] == "stopped");
    let mut c = open(&lab, &pw, "app");
    let v: String = c.query_one("SELECT v FROM t", &[]).unwrap().get(0);
    assert_eq!(v, "before the crashes");
    assert_eq!(
        servers_under(&storage),
        vec![postmaster(&dir).unwrap()],
        "one server, no orphan"
    );
}

#[test]
fn a_tenant_older_than_verifiers_gets_one_by_an_event_at_the_next_start_and_logs_in_with_it() {
    use spg99_events::{Actor, Envelope, Event, KeyScope, Permissions, Timestamp};
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    // A log written before verifiers existed: the bootstrap key, an account, a tenant.
    let key = [9u8; 32];
    let secrets = spg99::secrets::SecretBox::from_key(key);
    let (account, tenant) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
    let env = |seq: u64, tenant_id: Option<uuid::Uuid>, event: Event| Envelope {
        seq,
        at: Timestamp(1_763_900_000_000_000 + seq as i64),
        actor: Actor::System,
        request_id: "old".into(),
        account: Some(account),
        tenant: tenant_id.map(|_| "legacy".into()),
        tenant_id,
        db_id: None,
        event,
    };
    let root = spg99::auth::Token::parse(ROOT_TOKEN).unwrap();
    let envs = [
        env(
            1,
            None,
            Event::ApiKeyIssued {
                key_id: root.key_id().to_owned(),
                scope: KeyScope::Global,
                permissions: Permissions::ALL,
                secret_hash: root.secret_hash(),
                expires_at: None,
                name: Some("bootstrap".into()),
            },
        ),
        env(
            2,
            None,
            Event::AccountCreated {
                account_id: account,
                name: "Old Co".into(),
                email: None,
            },
        ),
        env(
            3,
            Some(tenant),
            Event::TenantCreated {
                tenant_id: tenant,
                account_id: account,
                name: "legacy".into(),
                pg_user: "u_legacy".into(),
                pg_password: secrets.seal(tenant.as_bytes(), b"OldPassword0123456789abcdefghijk"),
            },
        ),
    ];
    let log = spg99::log::Log::open(&dir).unwrap();
    log.write(envs.iter()).unwrap();
    log.sync().unwrap();
    drop(log);

    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let extra = [("SPG99_SECRET_KEY", hex.as_str())];
    let verifiers = |s: &Server| -> Vec<Value> {
        let r = s.get("/v2/admin/log?types=tenant.verifier_set", ROOT_TOKEN);
        let items = r.body["items"].as_array().unwrap().iter();
        items
            .filter(|e| e["tenant_id"] == tenant.to_string())
            .cloned()
            .collect()
    };
    let s = crate::lab::start(&dir, &extra).spawn();
    let set = verifiers(&s);
    assert_eq!(set.len(), 1, "{set:?}");
    assert_eq!(set[0]["actor"], "system");
    drop(s);
    let s = crate::lab::start(&dir, &extra).spawn();
    assert_eq!(verifiers(&s).len(), 1, "once, never again");

    let storage = tmp.path().join("compute");
    let _w = Worker::postgres(&s, "w1", &storage);
    let r = s.post(
        "/v2/tenants/legacy/dbs",
        ROOT_TOKEN,
        json!({"name": "app", "size": "L1"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let r = s.post(
        "/internal/v1/checkout",
        crate::lab::SERVICE_TOKEN,
        json!({"pg_user": "u_legacy", "db": "app", "wait_ms": 20_000}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let mut c = connect(
        r.body["backend_addr"].as_str().unwrap(),
        "u_legacy",
        "OldPassword0123456789abcdefghijk",
        "app",
    )
    .unwrap();
    assert_eq!(c.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
}
