//! Chaos: for a bounded time, the control plane, the worker and the Gateway are SIGKILLed at
//! random (one at a time, each started again a moment later) under a mixed load — API writes,
//! SQL sessions through the Gateway, event-stream subscribers — and then every invariant is
//! checked:
//!
//! - no acknowledged API write and no committed row is lost;
//! - the log is gapless and the live state is exactly what replaying it gives (every database
//!   in a state its events explain);
//! - at most one writer per database at any time: never two PostgreSQL servers on one data
//!   directory, and a database's writer term never goes back;
//! - every subscriber's stream is gapless, across its reconnections;
//! - no lease outlives its TTL once its Gateway is gone, and no PostgreSQL server outlives
//!   its worker's stop.
//!
//! A second run does the same to a database with high availability on three workers: its
//! writer's worker, its standby's worker and the control plane killed at random under SQL
//! writers; no acknowledged commit lost, never two writers, terms never back, no orphan.
//!
//! `SPG99_CHAOS_SECS` sets the time under fire (default 40 s); the seed is printed, and
//! `SPG99_CHAOS_SEED` replays a run's choices.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{tempdir, Fixture, Server, Start, ROOT_TOKEN};
use crate::lab::{Gateway, Worker, SERVICE_TOKEN};
use crate::pgtls::Tls;

const LEASE_TTL_MS: u64 = 3_000;

/// A small deterministic generator (xorshift), so that a run can be replayed from its seed.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `SPG99_CHAOS_SECS` (default 40) and `SPG99_CHAOS_SEED` (default: from the clock).
fn time_and_seed() -> (u64, u64) {
    let secs: u64 = std::env::var("SPG99_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("SPG99_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    (secs, seed)
}

fn control_plane(data: &Path, listen: &str) -> Server {
    Start::new(data)
        .listen(listen)
        .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
        .env("SPG99_LEASE_TTL_MS", LEASE_TTL_MS.to_string())
        .env("SPG99_IDLE_TIMEOUT", "100000")
        .env("SPG99_WORKER_TIMEOUT_MS", "4000")
        .spawn()
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build()
}

/// PostgreSQL servers running now under `storage`, by data directory. A process a server has
/// just forked carries the server's command line until it renames itself: one whose parent is
/// a server of the same directory is that server's child, not a second server.
fn postmasters(storage: &Path) -> BTreeMap<String, usize> {
    let found = crate::lab::postgres_servers(storage);
    let mut by_dir = BTreeMap::new();
    for (dir, pid) in &found {
        let child = crate::lab::parent(*pid)
            .is_some_and(|p| found.iter().any(|(d, q)| *q == p && d == dir));
        if !child {
            *by_dir.entry(dir.clone()).or_insert(0) += 1;
        }
    }
    by_dir
}

/// Follows `/v2/events` from `since`, reconnecting from the last id after every drop, until
/// `done` and the head `until` is reached; the gaps it saw (`(expected, got)`).
fn subscriber(base: &str, stop: &AtomicBool, until: &AtomicU64) -> Vec<(u64, u64)> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout_read(Duration::from_secs(20))
        .build();
    let mut last = 0u64;
    let mut gaps = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) && last >= until.load(Ordering::Relaxed) {
            return gaps;
        }
        let resp = agent
            .get(&format!("{base}/v2/events?since={last}"))
            .set("Authorization", &format!("Bearer {ROOT_TOKEN}"))
            .call();
        let Ok(resp) = resp else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        // One frame's fields, judged at the blank line that ends it.
        let (mut kind, mut id) = (String::new(), None::<u64>);
        for line in BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { break };
            if let Some(k) = line.strip_prefix("event: ") {
                kind = k.to_owned();
            } else if let Some(n) = line.strip_prefix("id: ") {
                id = n.trim().parse().ok();
            } else if line.is_empty() {
                if let Some(id) = id.take() {
                    // Unfiltered, a global key sees every event: each id is the next one,
                    // and a bookmark names the last one seen.
                    let expected = if kind == "bookmark" { last } else { last + 1 };
                    if id != expected {
                        gaps.push((expected, id));
                    }
                    last = last.max(id);
                }
                kind.clear();
            }
            if stop.load(Ordering::Relaxed) && last >= until.load(Ordering::Relaxed) {
                return gaps;
            }
        }
    }
}

#[test]
fn random_kills_under_load_break_no_invariant() {
    let (secs, seed) = time_and_seed();
    eprintln!("chaos: {secs} s, SPG99_CHAOS_SEED={seed}");
    let mut dice = Dice(seed);

    let tmp = tempdir();
    let data = tmp.path().join("data");
    let storage = tmp.path().join("compute");
    let first = control_plane(&data, "127.0.0.1:0");
    let listen = first.base.trim_start_matches("http://").to_owned();
    let mut fx = Fixture::with_server(first);
    let base = fx.server.base.clone();
    let mut worker = Worker::postgres(&fx.server, "w1", &storage);
    let t = fx.server.create_tenant(&fx.account_key, "shop");
    let (user, password) = (
        t.body["pg_user"].as_str().unwrap().to_owned(),
        t.body["pg_password"].as_str().unwrap().to_owned(),
    );
    let dbs = ["d1", "d2"];
    for db in dbs {
        fx.server.create_db(&fx.account_key, "shop", db);
    }
    let gw_dir = tmp.path().join("gateway");
    let mut gateway = Gateway::start(&fx.server, &gw_dir, &[]);
    let gateway_addr = RwLock::new(gateway.addr.clone());
    for db in dbs {
        let mut c = crate::gateway::config(&gateway.addr, &user, &password, db)
            .connect(Tls::new())
            .unwrap();
        c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
            .unwrap();
    }

    let stop = AtomicBool::new(false);
    let head = AtomicU64::new(u64::MAX);
    let next_row = AtomicU64::new(1);
    let acked_accounts = Mutex::new(Vec::<String>::new());
    let acked_rows = Mutex::new(Vec::<(String, i64)>::new());
    let doubled = Mutex::new(Vec::<String>::new());
    let terms_back = Mutex::new(Vec::<String>::new());
    let kills = Mutex::new(Vec::<String>::new());

    let gaps = std::thread::scope(|scope| {
        // API writers.
        for w in 0..2 {
            let (stop, acked, base) = (&stop, &acked_accounts, &base);
            scope.spawn(move || {
                let agent = agent();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("chaos-{w}-{i}");
                    let r = agent
                        .post(&format!("{base}/v2/accounts"))
                        .set("Authorization", &format!("Bearer {ROOT_TOKEN}"))
                        .send_json(json!({ "name": name }));
                    match r {
                        Ok(resp) if resp.status() == 201 => acked.lock().unwrap().push(name),
                        _ => std::thread::sleep(Duration::from_millis(100)),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        // SQL sessions through the Gateway, one per database.
        for db in dbs {
            let (stop, acked, next, gw) = (&stop, &acked_rows, &next_row, &gateway_addr);
            let (user, password) = (user.clone(), password.clone());
            scope.spawn(move || {
                let mut client: Option<postgres::Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    if client.is_none() {
                        let addr = gw.read().unwrap().clone();
                        client = crate::gateway::config(&addr, &user, &password, db)
                            .connect(Tls::new())
                            .ok();
                        if client.is_none() {
                            std::thread::sleep(Duration::from_millis(200));
                            continue;
                        }
                    }
                    let id = next.fetch_add(1, Ordering::Relaxed) as i64;
                    let c = client.as_mut().unwrap();
                    match c.execute("INSERT INTO t VALUES ($1)", &[&id]) {
                        Ok(_) => acked.lock().unwrap().push((db.to_owned(), id)),
                        Err(_) => client = None,
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        // Samplers: PostgreSQL servers per data directory, writer terms per database.
        {
            let (stop, doubled, terms_back, base) = (&stop, &doubled, &terms_back, &base);
            let storage = &storage;
            scope.spawn(move || {
                let agent = agent();
                let mut terms: BTreeMap<&str, u64> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    for (dir, n) in postmasters(storage) {
                        if n > 1 {
                            doubled
                                .lock()
                                .unwrap()
                                .push(format!("{n} servers on {dir}"));
                        }
                    }
                    for db in dbs {
                        let Ok(r) = agent
                            .get(&format!("{base}/v2/tenants/shop/dbs/{db}"))
                            .set("Authorization", &format!("Bearer {ROOT_TOKEN}"))
                            .call()
                        else {
                            continue;
                        };
                        let d: Value = r.into_json().unwrap();
                        if let Some(term) = d["writer_term"].as_u64() {
                            let seen = terms.entry(db).or_insert(0);
                            if term < *seen {
                                terms_back
                                    .lock()
                                    .unwrap()
                                    .push(format!("{db}: {seen} -> {term}"));
                            }
                            *seen = term.max(*seen);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
            });
        }
        // Subscribers.
        let subs: Vec<_> = (0..2)
            .map(|_| {
                let (stop, head, base) = (&stop, &head, &base);
                scope.spawn(move || subscriber(base, stop, head))
            })
            .collect();

        // Fire: one component at a time, killed, then started again.
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(1500 + dice.below(2500)));
            let down = Duration::from_millis(200 + dice.below(1000));
            match dice.below(3) {
                0 => {
                    fx.server.kill9();
                    std::thread::sleep(down);
                    fx.server = control_plane(&data, &listen);
                    kills.lock().unwrap().push("control plane".into());
                }
                1 => {
                    worker.kill9();
                    std::thread::sleep(down);
                    worker.start(&fx.server);
                    kills.lock().unwrap().push("worker".into());
                }
                _ => {
                    gateway.kill9();
                    std::thread::sleep(down);
                    gateway = Gateway::start(&fx.server, &gw_dir, &[]);
                    *gateway_addr.write().unwrap() = gateway.addr.clone();
                    kills.lock().unwrap().push("gateway".into());
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        head.store(fx.server.fingerprint().1, Ordering::Relaxed);
        subs.into_iter()
            .map(|s| s.join().unwrap())
            .collect::<Vec<_>>()
    });
    let kills = kills.into_inner().unwrap();
    eprintln!("chaos: kills {kills:?}");
    assert!(
        kills.len() >= 3,
        "too few kills to mean anything: {kills:?}"
    );

    // Every stream gapless; never two writers; terms never back.
    assert!(gaps.iter().all(Vec::is_empty), "gaps in streams: {gaps:?}");
    let doubled = doubled.into_inner().unwrap();
    assert!(doubled.is_empty(), "{doubled:?}");
    let terms_back = terms_back.into_inner().unwrap();
    assert!(terms_back.is_empty(), "{terms_back:?}");

    // Nothing acknowledged is lost.
    let acked = acked_accounts.into_inner().unwrap();
    let listed: BTreeSet<String> = fx
        .server
        .accounts(1000)
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = acked.iter().filter(|n| !listed.contains(*n)).collect();
    assert!(lost.is_empty(), "acknowledged accounts lost: {lost:?}");
    let rows = acked_rows.into_inner().unwrap();
    eprintln!(
        "chaos: {} accounts and {} rows acknowledged",
        acked.len(),
        rows.len()
    );
    assert!(
        !acked.is_empty() && !rows.is_empty(),
        "the load never got through"
    );
    for db in dbs {
        let mut c = None;
        for _ in 0..100 {
            c = crate::gateway::config(&gateway.addr, &user, &password, db)
                .connect(Tls::new())
                .ok();
            if c.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let mut c = c.expect("the database comes back after the chaos");
        let committed: Vec<i64> = rows.iter().filter(|(d, _)| d == db).map(|r| r.1).collect();
        let lost = crate::lab::lost_rows(&mut c, &committed);
        assert!(lost.is_empty(), "committed rows lost in {db}: {lost:?}");
    }

    // The live state is what the log explains.
    let v = fx.server.get("/v2/admin/verify", ROOT_TOKEN);
    assert_eq!(v.body["equal"], true, "{v:?}");

    // With the Gateway gone, no lease outlives its TTL.
    gateway.terminate();
    let began = Instant::now();
    loop {
        let r = fx.server.get("/v2/admin/state", ROOT_TOKEN);
        if r.body["counts"]["leases"] == 0 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_millis(LEASE_TTL_MS + 10_000),
            "leases alive past their TTL: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // With the worker stopped, no PostgreSQL server of its is left.
    drop(worker);
    until_no_postmasters(&storage);
}

/// Waits (30 s at most) until no PostgreSQL server runs under `dir`.
fn until_no_postmasters(dir: &Path) {
    let began = Instant::now();
    loop {
        let left: Vec<_> = postmasters(dir).into_keys().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "orphans: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Writers (servers not in recovery) per timeline among the PostgreSQL servers under `root`.
fn writers_by_timeline(root: &Path) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for (dir, n) in postmasters(root) {
        let dir = Path::new(&dir);
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if name != "template" && !dir.join("standby.signal").exists() {
            *by.entry(name).or_insert(0) += n;
        }
    }
    by
}

/// High availability under fire: the writer's worker (when the database is protected), the
/// standby's worker (with their PostgreSQL, their disks deleted, a new worker in their place)
/// and the control plane SIGKILLed at random under SQL writers through the Gateway; then:
/// no acknowledged commit lost, never two writers of the database at once, terms never back,
/// the state what the log explains, and no PostgreSQL server left once the workers stop.
#[test]
fn random_kills_of_an_ha_databases_workers_and_the_control_plane_lose_no_acknowledged_commit() {
    let (secs, seed) = time_and_seed();
    eprintln!("ha chaos: {secs} s, SPG99_CHAOS_SEED={seed}");
    let mut dice = Dice(seed);

    let tmp = tempdir();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let data = tmp.path().join("data");
    let repo = tmp.path().join("repo").display().to_string();
    let spawn = |listen: &str| {
        Start::new(&data)
            .listen(listen)
            .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
            .env("SPG99_STORAGE", repo.clone())
            .env("SPG99_ARCHIVE_TIMEOUT", "1")
            .env("SPG99_IDLE_TIMEOUT", "100000")
            .spawn()
    };
    let first = spawn("127.0.0.1:0");
    let listen = first.base.trim_start_matches("http://").to_owned();
    let mut fx = Fixture::with_server(first);
    let base = fx.server.base.clone();
    let workers_dir = tmp.path().join("workers");
    std::fs::create_dir_all(&workers_dir).unwrap();
    let mut made = 0;
    let mut new_worker = |server: &Server| {
        made += 1;
        let id = format!("w{made}");
        Worker::postgres(server, &id, &workers_dir.join(&id))
    };
    let mut workers: Vec<Worker> = (0..3).map(|_| new_worker(&fx.server)).collect();
    let t = fx.server.create_tenant(&fx.account_key, "shop");
    let (user, password) = (
        t.body["pg_user"].as_str().unwrap().to_owned(),
        t.body["pg_password"].as_str().unwrap().to_owned(),
    );
    let r = fx.server.post(
        "/v2/tenants/shop/dbs",
        &fx.account_key,
        json!({"name": "app", "size": "L1", "ha": true}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let gateway = Gateway::start(&fx.server, &tmp.path().join("gateway"), &[]);
    crate::gateway::config(&gateway.addr, &user, &password, "app")
        .connect(Tls::new())
        .unwrap()
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .unwrap();
    let describe = |base: &str| -> Option<Value> {
        agent()
            .get(&format!("{base}/v2/tenants/shop/dbs/app"))
            .set("Authorization", &format!("Bearer {ROOT_TOKEN}"))
            .call()
            .ok()?
            .into_json()
            .ok()
    };
    let protected = |d: &Value| d["ha_protected"] == true;
    crate::helpers::until_value(180, || describe(&base).unwrap_or_default(), protected);

    let stop = AtomicBool::new(false);
    let next_row = AtomicU64::new(1);
    let acked_rows = Mutex::new(Vec::<i64>::new());
    let doubled = Mutex::new(Vec::<String>::new());
    let terms_back = Mutex::new(Vec::<String>::new());
    let mut kills = Vec::<String>::new();
    std::thread::scope(|scope| {
        // The load stops however the fire ends (a failed step must fail the test, not leave
        // the writers running and the scope waiting for them).
        let _stop = StopOnDrop(&stop);
        for _ in 0..4 {
            let (stop, acked, next, gw) = (&stop, &acked_rows, &next_row, &gateway.addr);
            let (user, password) = (user.clone(), password.clone());
            scope.spawn(move || {
                let mut client: Option<postgres::Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client = crate::gateway::config(gw, &user, &password, "app")
                            .connect(Tls::new())
                            .ok();
                        if client.is_none() {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                    let id = next.fetch_add(1, Ordering::Relaxed) as i64;
                    match client
                        .as_mut()
                        .unwrap()
                        .execute("INSERT INTO t VALUES ($1)", &[&id])
                    {
                        Ok(_) => acked.lock().unwrap().push(id),
                        Err(_) => client = None,
                    }
                }
            });
        }
        {
            let (stop, doubled, terms_back, base) = (&stop, &doubled, &terms_back, &base);
            let root = &workers_dir;
            scope.spawn(move || {
                let mut seen = 0;
                while !stop.load(Ordering::Relaxed) {
                    for (timeline, n) in writers_by_timeline(root) {
                        if n > 1 {
                            doubled
                                .lock()
                                .unwrap()
                                .push(format!("{n} writers of {timeline}"));
                        }
                    }
                    if let Some(term) = describe(base).and_then(|d| d["writer_term"].as_u64()) {
                        if term < seen {
                            terms_back.lock().unwrap().push(format!("{seen} -> {term}"));
                        }
                        seen = seen.max(term);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(1500 + dice.below(2500)));
            match dice.below(3) {
                0 => {
                    // Only a protected database loses nothing with its writer's worker.
                    let Some(d) = (0..300).find_map(|_| {
                        let d = describe(&base).filter(|d| protected(d));
                        if d.is_none() {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        d
                    }) else {
                        kills.push("writer (not protected in 30 s: skipped)".into());
                        continue;
                    };
                    // (Just after a kill, the control plane may not have declared its worker
                    // lost yet: then nothing to kill.)
                    let id = d["worker_id"].as_str().unwrap_or_default().to_owned();
                    let Some(i) = workers.iter().position(|w| w.id == id) else {
                        continue;
                    };
                    crate::storage::destroy(&mut workers[i]);
                    workers.remove(i);
                    workers.push(new_worker(&fx.server));
                    kills.push(format!("writer's worker {id}"));
                }
                1 => {
                    let d = describe(&base).unwrap_or_default();
                    let Some(id) = d["standby_worker_id"].as_str().map(str::to_owned) else {
                        continue;
                    };
                    let Some(i) = workers.iter().position(|w| w.id == id) else {
                        continue;
                    };
                    crate::storage::destroy(&mut workers[i]);
                    workers.remove(i);
                    workers.push(new_worker(&fx.server));
                    kills.push(format!("standby's worker {id}"));
                }
                _ => {
                    fx.server.kill9();
                    std::thread::sleep(Duration::from_millis(200 + dice.below(800)));
                    fx.server = spawn(&listen);
                    kills.push("control plane".into());
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!("ha chaos: kills {kills:?}");
    assert!(
        kills.iter().filter(|k| !k.contains("skipped")).count() >= 3,
        "too few kills to mean anything: {kills:?}"
    );
    let doubled = doubled.into_inner().unwrap();
    assert!(doubled.is_empty(), "{doubled:?}");
    let terms_back = terms_back.into_inner().unwrap();
    assert!(terms_back.is_empty(), "{terms_back:?}");

    let rows = acked_rows.into_inner().unwrap();
    eprintln!("ha chaos: {} rows acknowledged", rows.len());
    assert!(!rows.is_empty(), "the load never got through");
    let mut c = None;
    for _ in 0..200 {
        c = crate::gateway::config(&gateway.addr, &user, &password, "app")
            .connect(Tls::new())
            .ok();
        if c.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut c = c.expect("the database serves after the chaos");
    let lost = crate::lab::lost_rows(&mut c, &rows);
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");

    let v = fx.server.get("/v2/admin/verify", ROOT_TOKEN);
    assert_eq!(v.body["equal"], true, "{v:?}");
    // With the workers stopped, no PostgreSQL server of theirs is left.
    drop(workers);
    until_no_postmasters(&workers_dir);
}
