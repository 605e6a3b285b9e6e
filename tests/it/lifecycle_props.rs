//! A property test of the lifecycle: random interleavings of checkouts, renewals (some with a
//! stale epoch), releases, heartbeats with random load, workers obeying or failing their
//! instructions, workers going silent and coming back, deletions and clock steps, against the
//! real server. After every step:
//!
//! - at most one writer per database: any worker still running a writer of a database that is
//!   not its current writer (same worker, same term) is being told to stop or abort it;
//! - `freeze_new_checkouts` only during a cutover, and a handoff only on a running database;
//!
//! and over the whole log at the end: no idle stop while a lease was live; the state replayed
//! from the log equals the live state.
//!
//! Cases: `PROPTEST_CASES` (default 24), each a fresh server.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::helpers::{tempdir, ROOT_TOKEN};
use crate::lab::Lab;

const WORKERS: [&str; 3] = ["w1", "w2", "w3"];
const DBS: [&str; 3] = ["d0", "d1", "d2"];
const PROFILES: [&str; 3] = ["c0.25", "c0.5", "c1"];

#[derive(Debug, Clone)]
enum Op {
    Checkout(usize),
    Renew { lease: usize, stale: bool },
    Release(usize),
    Load { worker: usize, cpu: f64 },
    Obey { worker: usize, fail: bool },
    Silence(usize),
    Revive(usize),
    Delete(usize),
    Create(usize),
    Advance(f64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..DBS.len()).prop_map(Op::Checkout),
        3 => (0..4usize, prop::bool::weighted(0.2)).prop_map(|(lease, stale)| Op::Renew { lease, stale }),
        2 => (0..4usize).prop_map(Op::Release),
        4 => (0..WORKERS.len(), prop::sample::select(vec![0.05, 0.5, 0.95, 0.95])).prop_map(|(worker, cpu)| Op::Load { worker, cpu }),
        6 => (0..WORKERS.len(), prop::bool::weighted(0.15)).prop_map(|(worker, fail)| Op::Obey { worker, fail }),
        1 => (0..WORKERS.len()).prop_map(Op::Silence),
        1 => (0..WORKERS.len()).prop_map(Op::Revive),
        1 => (0..DBS.len()).prop_map(Op::Delete),
        1 => (0..DBS.len()).prop_map(Op::Create),
        4 => prop::sample::select(vec![1.0, 10.0, 31.0, 70.0]).prop_map(Op::Advance),
    ]
}

/// What the test's Gateway and workers believe.
#[derive(Default)]
struct World {
    leases: Vec<(String, u64)>,
    silent: BTreeSet<usize>,
    /// Per worker: database id → the term of the writer it runs (serving or candidate).
    runs: BTreeMap<usize, BTreeMap<String, u64>>,
    cpu: BTreeMap<usize, f64>,
}

fn step(lab: &Lab, w: &mut World, op: &Op) {
    match op {
        Op::Checkout(i) => {
            let r = lab.checkout(DBS[*i]);
            if r.status == 200 {
                w.leases.push((
                    r.body["lease_id"].as_str().unwrap().to_owned(),
                    r.body["lease_control_epoch"].as_u64().unwrap(),
                ));
            }
            assert!([200, 202, 404, 409, 503].contains(&r.status), "{r:?}");
        }
        Op::Renew { lease, stale } => {
            if let Some((id, epoch)) = w.leases.get(*lease).cloned() {
                let epoch = if *stale {
                    epoch.saturating_sub(1)
                } else {
                    epoch
                };
                let r = lab.renew(&id, epoch, 1);
                assert!([200, 404, 409].contains(&r.status), "{r:?}");
                if r.status == 409 {
                    assert_eq!(r.code(), "stale_epoch");
                }
            }
        }
        Op::Release(lease) => {
            if *lease < w.leases.len() {
                let (id, _) = w.leases.remove(*lease);
                let r = lab.release(&id);
                assert!([200, 404].contains(&r.status), "{r:?}");
            }
        }
        Op::Load { worker, cpu } => {
            w.cpu.insert(*worker, *cpu);
            heartbeat(lab, w, *worker);
        }
        Op::Obey { worker, fail } => {
            if w.silent.contains(worker) {
                return;
            }
            let id = WORKERS[*worker];
            let r = lab.s().get(
                &format!("/internal/v1/workers/{id}/instructions"),
                crate::lab::SERVICE_TOKEN,
            );
            if r.status == 404 {
                return;
            }
            for i in r.body["instructions"].as_array().unwrap() {
                let db = i["db_id"].as_str().unwrap().to_owned();
                let term = i["writer_term"].as_u64().unwrap();
                let runs = w.runs.entry(*worker).or_default();
                let (outcome, runs_after) = match (i["op"].as_str().unwrap(), fail) {
                    ("start", false) => ("started", true),
                    ("prepare", false) => ("prepared", true),
                    ("promote", false) => ("promoted", true),
                    ("start" | "prepare" | "promote", true) => ("failed", false),
                    ("stop", _) => ("stopped", false),
                    ("abort", _) => ("aborted", false),
                    (other, _) => panic!("unknown instruction {other}"),
                };
                if runs_after {
                    runs.insert(db.clone(), term);
                } else if runs.get(&db) == Some(&term) {
                    runs.remove(&db);
                }
                lab.report(id, &db, term, outcome);
            }
        }
        Op::Silence(worker) => {
            // The host dies: whatever it ran is gone with it.
            w.silent.insert(*worker);
            w.runs.remove(worker);
        }
        Op::Revive(worker) => {
            if w.silent.remove(worker) {
                lab.register(WORKERS[*worker], &PROFILES);
            }
        }
        Op::Delete(i) => {
            let r = lab.s().delete(
                &format!("/v2/tenants/shop/dbs/{}", DBS[*i]),
                &lab.fx.account_key,
            );
            assert!([202, 404].contains(&r.status), "{r:?}");
        }
        Op::Create(i) => {
            let r = lab.s().post(
                "/v2/tenants/shop/dbs",
                &lab.fx.account_key,
                json!({"name": DBS[*i], "size": "L1"}),
            );
            assert!([201, 409].contains(&r.status), "{r:?}");
        }
        Op::Advance(secs) => {
            // In steps shorter than the worker timeout and the lease TTL, with the live hosts
            // heartbeating and the Gateway renewing what it holds in between, as real ones do
            // (a lease refused is forgotten).
            let mut left = *secs;
            while left > 0.0 {
                for worker in 0..WORKERS.len() {
                    heartbeat(lab, w, worker);
                }
                w.leases
                    .retain(|(id, epoch)| lab.renew(id, *epoch, 1).status == 200);
                let now = left.min(10.0);
                lab.advance(now);
                left -= now;
            }
        }
    }
}

fn heartbeat(lab: &Lab, w: &World, worker: usize) {
    if w.silent.contains(&worker) {
        return;
    }
    let cpu = w.cpu.get(&worker).copied().unwrap_or(0.5);
    let loads: Vec<Value> = w
        .runs
        .get(&worker)
        .into_iter()
        .flatten()
        .map(|(db, _)| json!({"db_id": db, "cpu": cpu, "active_connections": 1}))
        .collect();
    let id = WORKERS[worker];
    let r = lab.internal(
        &format!("/workers/{id}/heartbeat"),
        json!({ "loads": loads }),
    );
    assert!([200, 404].contains(&r.status), "{r:?}");
}

fn check_invariants(lab: &Lab, w: &World) {
    let mut describes: BTreeMap<String, Value> = BTreeMap::new();
    let list = lab.s().get("/v2/tenants/shop/dbs", &lab.fx.account_key);
    for d in list.body["items"].as_array().unwrap() {
        let frozen = d["freeze_new_checkouts"].as_bool().unwrap();
        let stage = d["scale_state"].as_str().unwrap();
        assert!(
            !frozen || stage == "CUTOVER",
            "frozen outside a cutover: {d}"
        );
        if stage == "PREPARING_CANDIDATE" || stage == "CUTOVER" {
            assert_eq!(
                d["state"], "running",
                "a handoff on a database not running: {d}"
            );
        }
        describes.insert(d["db_id"].as_str().unwrap().to_owned(), d.clone());
    }
    for (worker, runs) in &w.runs {
        if w.silent.contains(worker) || runs.is_empty() {
            continue;
        }
        let id = WORKERS[*worker];
        let r = lab.s().get(
            &format!("/internal/v1/workers/{id}/instructions"),
            crate::lab::SERVICE_TOKEN,
        );
        let told: BTreeSet<(String, u64)> = match r.status {
            404 => continue, // declared lost: it must register again, holding nothing
            _ => r.body["instructions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["op"] == "stop" || i["op"] == "abort")
                .map(|i| {
                    (
                        i["db_id"].as_str().unwrap().to_owned(),
                        i["writer_term"].as_u64().unwrap(),
                    )
                })
                .collect(),
        };
        for (db, term) in runs {
            let current = describes.get(db).is_some_and(|d| {
                (d["worker_id"] == id && d["writer_term"].as_u64() == Some(*term))
                    || (d["candidate_worker_id"] == id
                        && d["candidate_writer_term"].as_u64() == Some(*term))
            });
            assert!(
                current || told.contains(&(db.clone(), *term)),
                "{id} still runs {db} at term {term}, which is neither current nor told to stop: {:?}",
                describes.get(db)
            );
        }
    }
}

/// Walks the whole log: an idle stop is never decided while a lease of the database is live.
fn check_log(lab: &Lab) {
    let mut live: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut from = 1;
    loop {
        let page = lab.s().get(
            &format!("/v2/admin/log?from={from}&limit=10000"),
            ROOT_TOKEN,
        );
        let items = page.body["items"].as_array().unwrap().clone();
        for e in &items {
            let data = &e["data"];
            let db = e["db_id"].as_str().unwrap_or("").to_owned();
            match e["type"].as_str().unwrap() {
                "lease.granted" => {
                    live.entry(db)
                        .or_default()
                        .insert(data["lease_id"].as_str().unwrap().to_owned());
                }
                "lease.released" | "lease.expired" => {
                    for leases in live.values_mut() {
                        leases.remove(data["lease_id"].as_str().unwrap());
                    }
                }
                "db.stopped" | "db.start_failed" | "db.delete_requested" | "db.deleted" => {
                    live.remove(&db);
                }
                "tenant.delete_requested" => live.clear(),
                "db.stop_requested" => {
                    assert!(
                        live.get(&db).is_none_or(|l| l.is_empty()),
                        "idle stop while leased: {e}"
                    );
                }
                _ => {}
            }
        }
        match page.body["next_from"].as_u64() {
            Some(next) if !items.is_empty() => from = next,
            _ => break,
        }
    }
}

fn run_case(ops: &[Op]) {
    let tmp = tempdir();
    let lab = Lab::new(
        &tmp.path().join("data"),
        &[
            ("SPG99_WORKER_TIMEOUT_MS", "15000"),
            ("SPG99_IDLE_TIMEOUT", "150"),
        ],
    );
    for id in WORKERS {
        lab.register(id, &PROFILES);
    }
    for db in DBS {
        lab.create_db(db);
    }
    let mut world = World::default();
    for op in ops {
        step(&lab, &mut world, op);
        check_invariants(&lab, &world);
    }
    check_log(&lab);
    let verify = lab.s().get("/v2/admin/verify", ROOT_TOKEN);
    assert_eq!(
        verify.body["equal"], true,
        "replay differs from the live state: {verify:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_keep_the_lifecycle_invariants(ops in prop::collection::vec(op(), 30..80)) {
        run_case(&ops);
    }
}
