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

/// Writers through the Gateway, each on its connection (a new one when it breaks): the ids
/// acknowledged, when each was, and when its connection was made.
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
                let cfg = config(&p.gw, &p.user, &p.password, db);
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
    let index = workers.iter().position(|w| w.id == writer).unwrap();
    let killed = Instant::now();
    destroy(&mut workers[index]);
    let d = p.until("app", 60, |d| {
        d["state"] == "running" && d["worker_id"] == standby.as_str()
    });
    assert_eq!(d["failovers"], 1, "{d}");
    writers.more(300);
    let acked = writers.finish();
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
