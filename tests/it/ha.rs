//! High availability through the real binaries: three workers running real PostgreSQL, a
//! repository, the Gateway, clients committing through it.
//!
//! - A database with `ha` gets a standby on another worker, synchronous once it streams.
//! - The writer's worker SIGKILLed with its servers and its disk deleted, under writers: the
//!   standby becomes the writer with every acknowledged commit, the Gateway routes to it,
//!   and a new standby is built on the third worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway::config;
use crate::helpers::tempdir;
use crate::lab::Worker;
use crate::pgtls::Tls;
use crate::procs::{process_tree, signal};
use crate::storage::{destroy, Platform};

fn create_ha(p: &Platform, name: &str) -> Value {
    let r = p.fx.server.post(
        "/v2/tenants/shop/dbs",
        &p.fx.account_key,
        json!({"name": name, "size": "L1", "ha": true}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    r.body
}

fn protected(d: &Value) -> bool {
    d["ha_protected"] == true && d["standby_state"] == "sync"
}

/// Writers through the Gateway, half on its session port, half on its transaction pooler,
/// each on its connection (a new one when it breaks): the ids acknowledged, when each was,
/// and when its connection was made.
struct Writers {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<(i64, Instant, Instant)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    fn start(p: &Platform, db: &str, n: i64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..n)
            .map(|k| {
                let port = match k % 2 {
                    0 => p.gw.clone(),
                    _ => p.fx.server.pooler.clone().expect("the Gateway's pooler"),
                };
                let cfg = config(&port, &p.user, &p.password, db);
                let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    let mut next = k;
                    let mut client: Option<postgres::Client> = None;
                    let mut connected = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        if client.as_ref().is_none_or(|c| c.is_closed()) {
                            connected = Instant::now();
                            client = cfg.connect(Tls::new()).ok();
                            if client.is_none() {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                        let c = client.as_mut().unwrap();
                        if c.execute("INSERT INTO t VALUES ($1)", &[&next]).is_ok() {
                            let at = Instant::now();
                            acknowledged.lock().unwrap().push((next, at, connected));
                        } else {
                            client = None;
                        }
                        next += n;
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acknowledged,
            threads,
        }
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    fn more(&self, n: usize) {
        let from = self.count();
        let began = Instant::now();
        while self.count() < from + n {
            assert!(began.elapsed() < Duration::from_secs(60), "no commits");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(self) -> Vec<(i64, Instant, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let mut acked = self.acknowledged.lock().unwrap().clone();
        acked.sort();
        acked
    }
}

#[test]
fn the_writers_worker_and_disk_lost_under_writers_loses_no_acknowledged_commit() {
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[("SPG99_IDLE_TIMEOUT", "600".into())]);
    let mut workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| Worker::postgres(&p.fx.server, id, &tmp.path().join(id)))
        .collect();
    let created = create_ha(&p, "app");
    assert_eq!(created["ha"], true, "{created}");
    assert_eq!(created["standby_state"], "none");
    let mut session = p.session("app");
    session
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .unwrap();
    // Backed up, a standby built from it on another worker, streaming, then synchronous.
    let d = p.until("app", 180, protected);
    let (writer, standby) = (
        d["worker_id"].as_str().unwrap().to_owned(),
        d["standby_worker_id"].as_str().unwrap().to_owned(),
    );
    assert_ne!(writer, standby, "{d}");
    let synchronous: String = session
        .query_one("SHOW synchronous_standby_names", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        synchronous,
        format!("\"spg99_s{}\"", d["standby_writer_term"]),
        "{d}"
    );
    drop(session);

    let writers = Writers::start(&p, "app", 8);
    writers.more(300);
    let d_before = p.describe("app");
    let index = workers.iter().position(|w| w.id == writer).unwrap();
    let killed = Instant::now();
    destroy(&mut workers[index]);
    let d = p.until("app", 60, |d| {
        d["state"] == "running" && d["worker_id"] == standby.as_str()
    });
    assert_eq!(d["failovers"], 1, "{d}");
    let served = Instant::now();
    writers.more(300);
    let acked = writers.finish();
    // The pooler's clients (odd ids) go on committing too, on the new writer.
    let terms = (d_before["writer_term"].clone(), d["writer_term"].clone());
    assert!(
        acked.iter().any(|(id, at, _)| id % 2 == 1 && *at > served),
        "no pooled commit after the failover {terms:?}"
    );
    // The first commit on a connection made after the kill (the old writer's all broke).
    let first_after = acked
        .iter()
        .filter(|(_, _, connected)| *connected > killed)
        .map(|(_, at, _)| *at)
        .min()
        .unwrap();
    println!(
        "failover: {:.2} s from the kill to the first acknowledged commit on the new writer",
        (first_after - killed).as_secs_f64()
    );
    let present: std::collections::BTreeSet<i64> = p
        .sql("app", "SELECT string_agg(id::text, ',') FROM t")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let lost: Vec<i64> = acked
        .iter()
        .map(|(id, _, _)| *id)
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged commits lost: {lost:?}",
        lost.len()
    );
    let types = p.types(d["db_id"].as_str().unwrap());
    for t in ["db.failover_started", "db.promoted"] {
        assert!(types.iter().any(|x| x == t), "{t}: {types:?}");
    }
    // A new standby on the third worker, protected again.
    let third = ["w1", "w2", "w3"]
        .into_iter()
        .find(|w| *w != writer && *w != standby)
        .unwrap();
    let d = p.until("app", 180, |d| {
        protected(d) && d["standby_worker_id"] == third
    });
    assert_eq!(d["worker_id"], standby.as_str(), "{d}");
}

/// The three workers of a platform.
fn workers(p: &Platform, dir: &std::path::Path) -> Vec<Worker> {
    ["w1", "w2", "w3"]
        .iter()
        .map(|id| Worker::postgres(&p.fx.server, id, &dir.join(id)))
        .collect()
}

/// The acknowledged ids table `t` of `db` does not hold.
fn lost(p: &Platform, db: &str, acked: &[(i64, Instant, Instant)]) -> Vec<i64> {
    let present: std::collections::BTreeSet<i64> = p
        .sql(db, "SELECT coalesce(string_agg(id::text, ','), '') FROM t")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    acked
        .iter()
        .map(|(id, _, _)| *id)
        .filter(|id| !present.contains(id))
        .collect()
}

fn set_ha(p: &Platform, db: &str, enabled: bool) -> Value {
    let r = p.fx.server.post(
        &format!("/v2/tenants/shop/dbs/{db}/ha"),
        &p.fx.account_key,
        json!({ "enabled": enabled }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

#[test]
fn a_lost_standby_holds_commits_up_for_seconds_only_and_is_built_again_and_ha_turns_off_and_on() {
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[("SPG99_IDLE_TIMEOUT", "600".into())]);
    let mut workers = workers(&p, tmp.path());
    // Created without HA, turned on while it runs.
    p.create_db("app");
    let mut session = p.session("app");
    session
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .unwrap();
    let d = p.describe("app");
    assert_eq!(
        (d["ha"].clone(), d["standby_state"].clone()),
        (json!(false), json!("none"))
    );
    assert_eq!(set_ha(&p, "app", true)["ha"], true);
    assert_eq!(
        set_ha(&p, "app", true)["ha"],
        true,
        "the same setting again"
    );
    let d = p.until("app", 180, protected);
    let (writer, standby) = (
        d["worker_id"].as_str().unwrap().to_owned(),
        d["standby_worker_id"].as_str().unwrap().to_owned(),
    );

    // The standby's worker and disk lost under writers: commits stop waiting for it.
    let writers = Writers::start(&p, "app", 4);
    writers.more(200);
    let index = workers.iter().position(|w| w.id == standby).unwrap();
    let killed = Instant::now();
    destroy(&mut workers[index]);
    writers.more(200);
    let acked = writers.finish();
    // The longest a commit waited around the loss (printed, not asserted: a benchmark's job).
    let mut times: Vec<Instant> = acked.iter().map(|(_, at, _)| *at).collect();
    times.sort();
    let stall = times
        .windows(2)
        .filter(|w| w[1] > killed)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap();
    println!(
        "the standby lost: commits held up {:.2} s at most",
        stall.as_secs_f64()
    );
    assert_eq!(lost(&p, "app", &acked), Vec::<i64>::new());
    let db_id = d["db_id"].as_str().unwrap().to_owned();
    let log = p.fx.server.get(
        &format!("/v2/admin/log?db={db_id}&limit=10000"),
        crate::helpers::ROOT_TOKEN,
    );
    let items = log.body["items"].as_array().unwrap().clone();
    let lost_at = items
        .iter()
        .position(|e| e["type"] == "db.standby_lost")
        .expect("db.standby_lost");
    assert!(
        items[lost_at]["data"]["ha_unprotected_reason"]
            .as_str()
            .unwrap()
            .contains(standby.as_str()),
        "{}",
        items[lost_at]
    );
    // The writer confirmed that it waits for no standby, after the loss.
    assert!(
        items[lost_at..]
            .iter()
            .any(|e| e["type"] == "db.replication_set"
                && e["data"]["sync_standby_writer_term"].is_null()),
        "{items:?}"
    );
    // A new standby on the third worker.
    let third = ["w1", "w2", "w3"]
        .into_iter()
        .find(|w| *w != writer && *w != standby)
        .unwrap();
    let d = p.until("app", 180, |d| {
        protected(d) && d["standby_worker_id"] == third
    });
    assert!(d["replication_lag_bytes"].is_u64(), "{d}");

    // HA off: the writer waits for no standby, then the standby goes; on again: a new one.
    let run = tmp.path().join(third).join("run");
    let pgpass = || {
        std::fs::read_dir(&run)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".pgpass"))
    };
    assert!(
        pgpass(),
        "the standby's password file is in {}",
        run.display()
    );
    let off = set_ha(&p, "app", false);
    assert_eq!(off["ha"], false);
    let d = p.until("app", 60, |d| d["standby_state"] == "none");
    assert_eq!(d["ha_protected"], false);
    // Its copy goes, and with it the password it streamed with.
    assert!(
        until_opt(60, || (!pgpass()).then_some(())).is_some(),
        "the standby's password file is left in {}",
        run.display()
    );
    let mut session = p.session("app");
    let names: String = session
        .query_one("SHOW synchronous_standby_names", &[])
        .unwrap()
        .get(0);
    assert_eq!(names, "");
    session.batch_execute("INSERT INTO t VALUES (-1)").unwrap();
    set_ha(&p, "app", true);
    p.until("app", 180, protected);
    session.batch_execute("INSERT INTO t VALUES (-2)").unwrap();
}

#[test]
fn a_partitioned_old_writer_accepts_no_commit_once_its_standby_was_promoted() {
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[("SPG99_IDLE_TIMEOUT", "600".into())]);
    let workers = workers(&p, tmp.path());
    create_ha(&p, "app");
    p.session("app")
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .unwrap();
    let d = p.until("app", 180, protected);
    let (writer, standby) = (
        d["worker_id"].as_str().unwrap().to_owned(),
        d["standby_worker_id"].as_str().unwrap().to_owned(),
    );
    // A client connected to the writer directly (not through the Gateway, which would close
    // its connection at the failover).
    let addr = d["backend_addr"].as_str().unwrap().to_owned();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut direct = postgres::Config::new()
        .host(host)
        .port(port.parse().unwrap())
        .user(&p.user)
        .password(&p.password)
        .dbname("app")
        .connect(postgres::NoTls)
        .unwrap();
    direct.batch_execute("INSERT INTO t VALUES (1)").unwrap();

    // The writer's worker and its servers stopped past the worker timeout.
    let old = workers.iter().find(|w| w.id == writer).unwrap();
    let paused = process_tree(old.pid().unwrap());
    assert!(paused.len() > 2, "the worker and its servers: {paused:?}");
    signal(&paused, "-STOP");
    let d = p.until("app", 60, |d| {
        d["state"] == "running" && d["worker_id"] == standby.as_str()
    });
    p.sql("app", "INSERT INTO t VALUES (2)");
    // Back: a commit on the old writer is never acknowledged (it waits for a standby that no
    // longer follows it, until the worker, told to register again, stops it).
    signal(&paused, "-CONT");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(
            direct
                .batch_execute("INSERT INTO t VALUES (3)")
                .map_err(|e| e.to_string()),
        );
    });
    let answer = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the old writer answers the commit (with an error) once it is stopped");
    assert!(
        answer.is_err(),
        "the old writer acknowledged a commit: {answer:?}"
    );
    assert_eq!(
        p.sql("app", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2"
    );
    // Its copy is stale, never served: removed when the worker is back, or made again from
    // the repository as the new writer's standby (where the returning worker is given it).
    let db_id = d["db_id"].as_str().unwrap().to_owned();
    let destroyed = || {
        let log = p.fx.server.get(
            &format!("/v2/admin/log?db={db_id}&types=db.data_destroyed&limit=100"),
            crate::helpers::ROOT_TOKEN,
        );
        log.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["data"]["worker_id"] == writer.as_str())
    };
    let settled = until_opt(120, || {
        let d = p.describe("app");
        let rebuilt = d["standby_worker_id"] == writer.as_str() && protected(&d);
        (destroyed() || rebuilt).then_some(d)
    });
    assert!(
        settled.is_some(),
        "the old copy is neither removed nor a standby again"
    );
    assert_eq!(
        p.sql("app", "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "1,2"
    );
    assert_eq!(p.describe("app")["worker_id"], standby.as_str());
}

#[test]
fn a_handoff_of_an_ha_database_to_another_profile_keeps_its_standby_and_loses_nothing() {
    let tmp = tempdir();
    let hour = "3600000".to_owned();
    let p = Platform::start(
        tmp.path(),
        None,
        &[
            ("SPG99_CLOCK", "manual".into()),
            ("SPG99_IDLE_TIMEOUT", "100000".into()),
            // Longer than the clock's jump below: nothing but the handoff is due then.
            ("SPG99_WORKER_TIMEOUT_MS", hour.clone()),
            ("SPG99_HA_WORKER_TIMEOUT_MS", hour.clone()),
            ("SPG99_STANDBY_TIMEOUT_MS", hour.clone()),
            ("SPG99_LEASE_TTL_MS", hour),
        ],
    );
    let _workers = workers(&p, tmp.path());
    create_ha(&p, "app");
    p.session("app")
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .unwrap();
    let d = p.until("app", 180, protected);
    let (standby, term) = (d["standby_worker_id"].clone(), d["writer_term"].clone());
    let writers = Writers::start(&p, "app", 8);
    let stop = Arc::new(AtomicBool::new(false));
    let burner = crate::gateway::burner(&stop, &config(&p.gw, &p.user, &p.password, "app"));
    let db_id = d["db_id"].as_str().unwrap().to_owned();
    let band = || {
        let log = p.fx.server.get(
            &format!("/v2/admin/log?db={db_id}&types=db.load_changed&limit=10000"),
            crate::helpers::ROOT_TOKEN,
        );
        log.body["items"]
            .as_array()
            .unwrap()
            .last()
            .map(|e| e["data"]["band"].clone())
    };
    // The load high, then the autoscaler's window passed on the clock: a handoff starts (on
    // a busy machine the load may dip out of its band before the jump: then again).
    let began = Instant::now();
    loop {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "no handoff: {:?}",
            band()
        );
        if band() != Some(json!("high")) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let r = p.fx.server.post(
            "/internal/v1/clock/advance",
            crate::lab::SERVICE_TOKEN,
            json!({"seconds": 61}),
        );
        assert_eq!(r.status, 200, "{r:?}");
        let moved = until_opt(10, || {
            let d = p.describe("app");
            (d["scale_state"] != "STABLE" || d["current_profile"] == "c0.5").then_some(())
        });
        if moved.is_some() {
            break;
        }
    }
    let d = p.until("app", 90, |d| {
        d["scale_state"] == "STABLE" && d["current_profile"] == "c0.5"
    });
    assert_ne!(d["writer_term"], term, "{d}");
    writers.more(200);
    stop.store(true, Ordering::Relaxed);
    burner.join().unwrap();
    // The standby followed the writer through its restart, and protects it again.
    let d = p.until("app", 60, protected);
    assert_eq!(d["standby_worker_id"], standby, "{d}");
    writers.more(100);
    let acked = writers.finish();
    assert_eq!(lost(&p, "app", &acked), Vec::<i64>::new());
}

/// Polls `f` until it gives something, for at most `secs`.
fn until_opt<T>(secs: u64, f: impl Fn() -> Option<T>) -> Option<T> {
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(secs) {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
