//! Several replicas on one PostgreSQL log: one leads, the others follow, pass writes on and
//! serve reads and the event stream; the leader killed, paused or stopped, another takes over
//! with nothing acknowledged lost and nothing done twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spg99::log::{Location, Log};
use spg99_events::Event;

use crate::helpers::{Events, Reply, Server, Start, ROOT_TOKEN};
use crate::lab::SERVICE_TOKEN;
use crate::log_stores::LogDb;

const KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// The leader's lease in these tests.
const TTL_MS: u64 = 1000;

/// Replicas of one platform, each with a data directory of its own, on one PostgreSQL.
struct Cluster {
    db: LogDb,
    dir: tempfile::TempDir,
    started: usize,
    env: Vec<(&'static str, String)>,
    replicas: Vec<Option<Server>>,
    _pg: tempfile::TempDir,
}

impl Cluster {
    fn new(n: usize, env: &[(&'static str, &str)]) -> Cluster {
        let pg = tempfile::tempdir().unwrap();
        let mut c = Cluster {
            db: LogDb::start(pg.path()),
            _pg: pg,
            dir: crate::helpers::tempdir(),
            started: 0,
            env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            replicas: Vec::new(),
        };
        for _ in 0..n {
            let s = c.start();
            c.replicas.push(Some(s));
        }
        c
    }

    fn start(&mut self) -> Server {
        self.started += 1;
        let dir: PathBuf = self.dir.path().join(format!("r{}", self.started));
        let mut start = Start::new(&dir)
            .env("SPG99_LOG", self.db.url.clone())
            .env("SPG99_SECRET_KEY", KEY)
            .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
            .env("SPG99_LEADER_TTL_MS", TTL_MS.to_string());
        for (k, v) in &self.env {
            start = start.env(k, v.clone());
        }
        start.spawn()
    }

    fn at(&self, i: usize) -> &Server {
        self.replicas[i].as_ref().expect("a running replica")
    }

    fn bases(&self) -> Vec<String> {
        self.replicas
            .iter()
            .flatten()
            .map(|s| s.base.clone())
            .collect()
    }

    /// The index of the one replica that says it leads, waiting up to `secs` for one.
    fn leader(&self, secs: u64) -> usize {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let leaders: Vec<usize> = (0..self.replicas.len())
                .filter(|&i| {
                    self.replicas[i]
                        .as_ref()
                        .is_some_and(|s| role(s) == "leader")
                })
                .collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(
                Instant::now() < deadline,
                "no single leader after {secs} s: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> Log {
        Log::at(&Location::postgres(&self.db.url).unwrap(), false).unwrap()
    }
}

fn role(s: &Server) -> String {
    match s.try_call("GET", "/readyz", None, None) {
        Ok(r) => r.body["role"].as_str().unwrap_or("").to_owned(),
        Err(_) => String::new(),
    }
}

/// Waits (up to 20 s) until one of `replicas` says it leads.
fn until_one_leads(replicas: &[&Server]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replicas.iter().any(|s| role(s) == "leader") {
        assert!(Instant::now() < deadline, "no new leader");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn version(r: &Reply) -> u64 {
    r.header("x-resource-version")
        .expect("a write answers with its seq")
        .parse()
        .unwrap()
}

/// A GET that must reflect at least `seq`.
fn get_at(s: &Server, path: &str, seq: u64) -> Reply {
    s.try_call_with(
        "GET",
        path,
        Some(ROOT_TOKEN),
        None,
        &[("X-Min-Resource-Version", &seq.to_string())],
    )
    .unwrap()
}

#[test]
fn three_replicas_take_writes_anywhere_and_serve_reads_and_the_stream_from_any() {
    let c = Cluster::new(3, &[]);
    // The first to start leads; the others know where it is.
    assert_eq!(c.leader(10), 0);
    for i in [1, 2] {
        let r = c.at(i).get("/readyz", "-");
        assert_eq!(r.body["role"], "follower", "{r:?}");
        assert_eq!(r.body["leader"], c.at(0).base.as_str(), "{r:?}");
    }

    // An event stream on a follower, from the start.
    let mut stream = Events::open(c.at(2), "/v2/events?since=0", Some(ROOT_TOKEN), None)
        .unwrap_or_else(|r| panic!("{r:?}"));

    // A write through a follower: passed to the leader, and read back at once on that
    // follower (read-your-writes), and on another with the seq it answered.
    let r = c
        .at(1)
        .post("/v2/accounts", ROOT_TOKEN, json!({"name": "via-follower"}));
    assert_eq!(r.status, 201, "{r:?}");
    let (id, seq) = (
        r.body["account_id"].as_str().unwrap().to_owned(),
        version(&r),
    );
    assert_eq!(
        c.at(1)
            .get(&format!("/v2/accounts/{id}"), ROOT_TOKEN)
            .status,
        200
    );
    let r = get_at(c.at(2), &format!("/v2/accounts/{id}"), seq);
    assert_eq!(r.status, 200, "{r:?}");
    // The same through the leader, read on both followers.
    let r = c
        .at(0)
        .post("/v2/accounts", ROOT_TOKEN, json!({"name": "via-leader"}));
    assert_eq!(r.status, 201, "{r:?}");
    let seq = version(&r);
    for i in [1, 2] {
        let r = get_at(c.at(i), "/v2/accounts?limit=100", seq);
        let names: Vec<&str> = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["name"].as_str())
            .collect();
        assert!(
            names.contains(&"via-leader") && names.contains(&"via-follower"),
            "{r:?}"
        );
    }
    // Refusals are the leader's, passed back as they are.
    let r = c
        .at(2)
        .post("/v2/accounts", ROOT_TOKEN, json!({"name": ""}));
    assert_eq!(r.status, 422, "{r:?}");
    let r = c
        .at(2)
        .post("/v2/accounts", "spg99_nope", json!({"name": "x"}));
    assert_eq!(r.status, 401, "{r:?}");
    // A seq the log has not reached, or one that is not a seq.
    let r = get_at(c.at(1), "/v2/accounts", seq + 1_000_000);
    assert_eq!(
        (r.status, r.code()),
        (422, "resource_version_ahead"),
        "{r:?}"
    );
    let r = c
        .at(1)
        .try_call_with(
            "GET",
            "/v2/accounts",
            Some(ROOT_TOKEN),
            None,
            &[("X-Min-Resource-Version", "soon")],
        )
        .unwrap();
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_min_resource_version"),
        "{r:?}"
    );

    // More writes through every replica; the follower's stream has every event in order.
    let mut last = seq;
    for i in 0..30 {
        let r = c
            .at(i % 3)
            .post("/v2/accounts", ROOT_TOKEN, json!({"name": format!("n{i}")}));
        assert_eq!(r.status, 201, "{r:?}");
        last = version(&r);
    }
    let frames = stream.until_seq(last);
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq()).collect();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "every event, in order"
    );

    // Resumed on another replica from a point in the middle: the rest, none twice.
    let middle = last / 2;
    let mut resumed = Events::open(c.at(0), "/v2/events", Some(ROOT_TOKEN), Some(middle))
        .unwrap_or_else(|r| panic!("{r:?}"));
    let rest: Vec<u64> = resumed.until_seq(last).iter().map(|f| f.seq()).collect();
    assert_eq!(rest, (middle + 1..=last).collect::<Vec<_>>());
    // Every replica holds the same state.
    let fingerprints: Vec<(String, u64)> = (0..3)
        .map(|i| {
            let r = get_at(c.at(i), "/v2/admin/state", last);
            (
                r.body["fingerprint"].as_str().unwrap().to_owned(),
                r.body["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        fingerprints.windows(2).all(|w| w[0] == w[1]),
        "{fingerprints:?}"
    );
}

/// Creates accounts through the replicas at `bases` from `clients` threads until `stop`, each
/// retried with its Idempotency-Key (on any replica) until it is answered; the names and
/// account ids acknowledged.
fn write_through_failovers(
    bases: &Mutex<Vec<String>>,
    clients: usize,
    stop: &AtomicBool,
) -> Vec<(String, String)> {
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(10))
                        .build();
                    let mut acked = Vec::new();
                    let mut turn = c;
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let name = format!("c{c}-{i}");
                        let key = uuid::Uuid::new_v4().to_string();
                        let deadline = Instant::now() + Duration::from_secs(60);
                        loop {
                            turn += 1;
                            let base = {
                                let b = bases.lock().unwrap();
                                b[turn % b.len()].clone()
                            };
                            let res = agent
                                .post(&format!("{base}/v2/accounts"))
                                .set("Authorization", &format!("Bearer {ROOT_TOKEN}"))
                                .set("Idempotency-Key", &key)
                                .send_json(json!({ "name": name }));
                            match res {
                                Ok(resp) => {
                                    assert_eq!(resp.status(), 201);
                                    let v: Value = resp.into_json().unwrap();
                                    let id = v["account_id"].as_str().unwrap().to_owned();
                                    acked.push((name, id));
                                    break;
                                }
                                // The leader is changing: try again, on another replica.
                                Err(ureq::Error::Status(503, _))
                                | Err(ureq::Error::Transport(_)) => {
                                    assert!(Instant::now() < deadline, "{name} never answered");
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                                Err(ureq::Error::Status(code, r)) => {
                                    panic!("unexpected {code}: {:?}", r.into_string())
                                }
                            }
                        }
                    }
                    acked
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    })
}

/// How many times each account name was created, as the log says; the log is gapless.
fn created_names(log: &Log) -> HashMap<String, usize> {
    let mut names = HashMap::new();
    for (i, env) in log.read_from(1).enumerate() {
        let env = env.unwrap();
        assert_eq!(env.seq, i as u64 + 1, "gapless");
        if let Event::AccountCreated { name, .. } = env.event {
            *names.entry(name).or_insert(0) += 1;
        }
    }
    names
}

#[test]
fn the_leader_killed_under_16_writers_three_times_loses_and_repeats_nothing() {
    let mut c = Cluster::new(3, &[]);
    let bases = Mutex::new(c.bases());
    let stop = AtomicBool::new(false);
    let mut takeovers = Vec::new();
    let acked = std::thread::scope(|s| {
        let writers = s.spawn(|| write_through_failovers(&bases, 16, &stop));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(800));
            let old = c.leader(30);
            let killed = Instant::now();
            c.replicas[old].as_mut().unwrap().kill9();
            c.replicas[old] = None;
            *bases.lock().unwrap() = c.bases();
            let new = c.leader(30);
            takeovers.push(killed.elapsed());
            assert_ne!(new, old);
            // Back to three replicas: a new process, with a data directory of its own.
            let fresh = c.start();
            c.replicas[old] = Some(fresh);
            *bases.lock().unwrap() = c.bases();
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        writers.join().unwrap()
    });
    eprintln!("acknowledged {}, takeovers {takeovers:?}", acked.len());
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    // A new leader each time within the lease plus the followers' attempts, with room for
    // a loaded machine (benches/failover.sh measures it).
    for t in &takeovers {
        assert!(
            *t < Duration::from_millis(TTL_MS * 3 + 5000),
            "{takeovers:?}"
        );
    }
    // Every acknowledged write is in the log once (a retry on another replica included),
    // the log is gapless, and every replica serves them.
    let log = c.log();
    let names = created_names(&log);
    for (name, _) in &acked {
        assert_eq!(names.get(name), Some(&1), "{name}");
    }
    assert!(names.values().all(|&n| n == 1), "a write was done twice");
    let head = log.head().unwrap();
    for i in 0..3 {
        for (_, id) in acked.iter().step_by(97) {
            let r = get_at(c.at(i), &format!("/v2/accounts/{id}"), head);
            assert_eq!(r.status, 200, "replica {i}, account {id}: {r:?}");
        }
    }
}

#[test]
fn a_leader_paused_past_its_lease_is_fenced_on_resuming_and_steps_down() {
    let c = Cluster::new(2, &[]);
    assert_eq!(c.leader(10), 0);
    let old = c.at(0);
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &old.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    signal("-STOP");
    // The other replica takes over once the paused one's lease lapses, and takes writes.
    until_one_leads(&[c.at(1)]);
    let r = c
        .at(1)
        .post("/v2/accounts", ROOT_TOKEN, json!({"name": "new-leader"}));
    assert_eq!(r.status, 201, "{r:?}");
    // Writes sent to the paused one wait in its sockets, and are served when it resumes.
    let sent: Vec<_> = std::thread::scope(|s| {
        let pending: Vec<_> = (0..8)
            .map(|i| {
                s.spawn(move || {
                    let name = format!("paused-{i}");
                    let r = old.post("/v2/accounts", ROOT_TOKEN, json!({ "name": name }));
                    (name, r)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        signal("-CONT");
        pending.into_iter().map(|t| t.join().unwrap()).collect()
    });
    // The old leader steps down and follows the new one.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = old.get("/readyz", "-");
        if r.body["role"] == "follower" && r.body["leader"] == c.at(1).base.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(old.stderr().contains("stepping down"), "{}", old.stderr());
    // What it answered holds: a write it refused is not in the log; one it acknowledged
    // (passed to the new leader once it stepped down) is there once. Nothing it decided with
    // its old term landed.
    let names = created_names(&c.log());
    eprintln!(
        "answers of the paused leader: {:?}",
        sent.iter()
            .map(|(n, r)| (n, r.status, r.code().to_owned()))
            .collect::<Vec<_>>()
    );
    for (name, r) in &sent {
        match r.status {
            201 => assert_eq!(names.get(name), Some(&1), "{name}: {r:?}"),
            503 => assert_eq!(names.get(name), None, "{name}: {r:?}"),
            _ => panic!("{name}: {r:?}"),
        }
    }
    assert_eq!(names.get("new-leader"), Some(&1));
    // And writes through it go on, to the new leader.
    let r = old.post("/v2/accounts", ROOT_TOKEN, json!({"name": "after"}));
    assert_eq!(r.status, 201, "{r:?}");
}

#[test]
fn a_leader_stopped_cleanly_hands_over_at_once() {
    let mut c = Cluster::new(2, &[]);
    assert_eq!(c.leader(10), 0);
    c.replicas[0].as_mut().unwrap().terminate();
    // It gave its lease up on the way out: the other leads and takes writes.
    until_one_leads(&[c.at(1)]);
    let r = c
        .at(1)
        .post("/v2/accounts", ROOT_TOKEN, json!({"name": "next"}));
    assert_eq!(r.status, 201, "{r:?}");
    assert!(c.at(1).stderr().contains("leading the log"));
}

#[test]
fn the_lifecycle_goes_on_across_a_failover() {
    use crate::lab::Lab;
    use crate::lifecycle::{op, ops, sustain};
    let mut c = Cluster::new(
        3,
        &[
            ("SPG99_CLOCK", "manual"),
            // Passes only when the test moves the clock: a background pass that straddles a
            // move would decide its steps at two different times.
            ("SPG99_RECONCILE_INTERVAL_MS", "3600000"),
            ("SPG99_IDLE_TIMEOUT", "300"),
            ("SPG99_LEASE_TTL_MS", "3600000"),
            ("SPG99_WORKER_TIMEOUT_MS", "3600000"),
        ],
    );
    assert_eq!(c.leader(10), 0);
    // The Gateway's and the workers' calls go to a follower, which passes them on.
    let fx = crate::helpers::Fixture::with_server(c.replicas[1].take().unwrap());
    let t = fx.server.create_tenant(&fx.account_key, "shop");
    let lab = Lab {
        pg_user: t.body["pg_user"].as_str().unwrap().to_owned(),
        fx,
    };
    lab.register("w1", &["c0.25", "c0.5", "c1"]);
    lab.register("w2", &["c0.25", "c0.5", "c1"]);
    let db_id = lab.create_db("app");
    assert_eq!(lab.start_db("app", "w1"), 1);
    let (lease, _) = lab.lease("app");
    // A sustained load: the autoscaler begins a handoff to a bigger profile on w2.
    sustain(&lab, "w1", &db_id, 0.95, 30.0);
    sustain(&lab, "w1", &db_id, 0.95, 31.0);
    let d = lab.describe("app");
    assert_eq!(d["scale_state"], "PREPARING_CANDIDATE", "{d}");
    assert_eq!(d["candidate_worker_id"], "w2");

    // The leader dies in the middle of it; another replica takes over.
    c.replicas[0].as_mut().unwrap().kill9();
    c.replicas[0] = None;
    until_one_leads(&[lab.s(), c.at(2)]);

    // The new leader carries the handoff through: prepared, cutover, promoted.
    assert!(lab.report("w2", &db_id, 2, "prepared"));
    let d = lab.describe("app");
    assert_eq!(
        (
            d["scale_state"].as_str(),
            d["freeze_new_checkouts"].as_bool()
        ),
        (Some("CUTOVER"), Some(true)),
        "{d}"
    );
    assert_eq!(lab.checkout("app").code(), "checkouts_frozen");
    assert!(lab.report("w2", &db_id, 2, "promoted"));
    let d = lab.describe("app");
    assert_eq!(
        (
            d["scale_state"].as_str(),
            d["worker_id"].as_str(),
            d["current_profile"].as_str()
        ),
        (Some("STABLE"), Some("w2"), Some("c0.5")),
        "{d}"
    );
    assert_eq!(ops(&lab.instructions("w1")), vec![op("stop", 1)]);
    assert!(lab.report("w1", &db_id, 1, "stopped"));
    // Checkouts go to the new writer; idle, the database stops; the next checkout starts it.
    let r = lab.checkout("app");
    assert_eq!(
        (r.status, r.body["worker_id"].as_str()),
        (200, Some("w2")),
        "{r:?}"
    );
    assert_eq!(lab.release(&lease).status, 200);
    assert_eq!(
        lab.release(r.body["lease_id"].as_str().unwrap()).status,
        200
    );
    lab.advance(301.0);
    let d = lab.describe("app");
    assert_eq!(d["state"], "stopping", "{d}");
    assert_eq!(ops(&lab.instructions("w2")), vec![op("stop", 2)]);
    assert!(lab.report("w2", &db_id, 2, "stopped"));
    assert_eq!(lab.describe("app")["state"], "stopped");
    assert_eq!(lab.checkout("app").status, 202);
    let mut starts = ops(&lab.instructions("w1"));
    starts.extend(ops(&lab.instructions("w2")));
    assert_eq!(starts, vec![op("start", 3)]);
}
