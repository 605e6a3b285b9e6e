//! The command log's two stores, sled and PostgreSQL, pass the same suite: gapless batches
//! read back from any seq, large batches cut into frames, a reopened log keeps what was
//! synced and loses nothing, and (on PostgreSQL) a second writer fences the first.

use std::path::Path;

use spg99::log::{Location, Log, LogError};

use crate::helpers::{Start, ROOT_TOKEN};
use spg99_events::{Actor, Envelope, Event, Timestamp};
use spg99_worker::postgres::process::{self, Server};

fn env(seq: u64, name_len: usize) -> Envelope {
    Envelope {
        seq,
        at: Timestamp(seq as i64),
        actor: Actor::System,
        request_id: format!("r{seq}"),
        account: None,
        tenant: None,
        tenant_id: None,
        db_id: None,
        event: Event::AccountCreated {
            account_id: uuid::Uuid::from_u128(seq as u128),
            name: "n".repeat(name_len),
            email: None,
        },
    }
}

fn seqs(log: &Log, from: u64) -> Vec<u64> {
    log.read_from(from).map(|e| e.unwrap().seq).collect()
}

/// A PostgreSQL server of its own on a free loopback port, trusting local connections.
pub struct LogDb {
    server: Option<Server>,
    pub url: String,
}

impl LogDb {
    pub fn start(dir: &Path) -> LogDb {
        let server = process::scratch(dir).expect("the log's PostgreSQL starts");
        LogDb {
            url: format!("postgres://postgres@127.0.0.1:{}/postgres", server.port),
            server: Some(server),
        }
    }
}

impl Drop for LogDb {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop();
        }
    }
}

/// The suite, on the store that `open` opens afresh each time it is called (as its writer).
fn suite(open: &dyn Fn() -> Log) {
    let log = open();
    assert_eq!(log.head().unwrap(), 0);
    assert_eq!(seqs(&log, 1), Vec::<u64>::new());
    log.write(&(1..=3).map(|s| env(s, 10)).collect::<Vec<_>>())
        .unwrap();
    log.write(&[env(4, 10)]).unwrap();
    log.sync().unwrap();
    // A large batch is cut into several frames, all written atomically.
    let big: Vec<Envelope> = (5..=400).map(|s| env(s, 1000)).collect();
    log.write(&big).unwrap();
    log.sync().unwrap();
    assert_eq!(log.head().unwrap(), 400);
    for from in [0, 1, 2, 4, 5, 6, 77, 200, 399, 400] {
        assert_eq!(
            seqs(&log, from),
            (from.max(1)..=400).collect::<Vec<_>>(),
            "from {from}"
        );
    }
    assert_eq!(seqs(&log, 401), Vec::<u64>::new());
    assert_eq!(log.get(77).unwrap().unwrap(), env(77, 1000));
    assert_eq!(log.get(401).unwrap(), None);
    let raw: Vec<usize> = log.raw_records().map(|r| r.unwrap().len()).collect();
    assert_eq!(raw.len(), 400);
    assert!(raw.iter().all(|&len| len > 0));
    log.checkpoint().unwrap();
    drop(log);

    // Reopened: what was synced is there, the next batch follows on.
    let log = open();
    assert_eq!(log.head().unwrap(), 400);
    log.write(&[env(401, 5)]).unwrap();
    log.sync().unwrap();
    assert_eq!(seqs(&log, 399), vec![399, 400, 401]);
    assert_eq!(log.read_from(1).count(), 401);
}

#[test]
fn the_sled_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    // sled's flusher thread lets go of the dropped store's file lock a moment after the drop:
    // the reopen waits for it.
    let open = || {
        let began = std::time::Instant::now();
        loop {
            match Log::open(dir.path()) {
                Ok(log) => return log,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && began.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    suite(&open);
}

#[test]
fn the_postgres_store_passes_the_suite_and_fences_an_older_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = LogDb::start(dir.path());
    let at = Location::postgres(&db.url).unwrap();
    suite(&|| Log::at(&at, true).unwrap());

    // A reader sees what is durable, not what a writer has only written.
    let writer = Log::at(&at, true).unwrap();
    let reader = Log::at(&at, false).unwrap();
    writer.write(&[env(402, 5)]).unwrap();
    assert_eq!(reader.head().unwrap(), 401);
    assert_eq!(reader.read_from(400).count(), 2);
    writer.sync().unwrap();
    assert_eq!(reader.head().unwrap(), 402);
    assert!(matches!(
        reader.write(&[env(403, 5)]),
        Err(LogError::ReadOnly)
    ));

    // A second writer takes the log over: the first one's appends are refused, and nothing
    // it sent lands.
    let second = Log::at(&at, true).unwrap();
    writer.write(&[env(403, 5)]).unwrap();
    let err = writer.sync().unwrap_err();
    assert!(matches!(err, LogError::Fenced { .. }), "{err}");
    assert_eq!(second.head().unwrap(), 402);
    second.write(&[env(403, 7)]).unwrap();
    second.sync().unwrap();
    assert_eq!(reader.get(403).unwrap().unwrap(), env(403, 7));
    assert_eq!(reader.read_from(1).count(), 403);
}

/// Creates accounts from `clients` threads until the server stops answering or `stop` is
/// set; the ids acknowledged.
fn hammer(base: &str, clients: usize, stop: &std::sync::atomic::AtomicBool) -> Vec<String> {
    use std::sync::atomic::Ordering;
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(std::time::Duration::from_secs(10))
                        .build();
                    let mut acked = Vec::new();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let res = agent
                            .post(&format!("{base}/v2/accounts"))
                            .set("Authorization", &format!("Bearer {ROOT_TOKEN}"))
                            .send_json(serde_json::json!({"name": format!("c{c}-{i}-{}", uuid::Uuid::new_v4())}));
                        match res {
                            Ok(resp) => {
                                assert_eq!(resp.status(), 201);
                                let v: serde_json::Value = resp.into_json().unwrap();
                                acked.push(v["account_id"].as_str().unwrap().to_owned());
                            }
                            Err(ureq::Error::Status(code, r)) => {
                                panic!("unexpected {code}: {:?}", r.into_string())
                            }
                            // The server is gone: what was not acknowledged may be lost.
                            Err(_) => break,
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

#[test]
fn a_server_on_a_postgres_log_loses_nothing_acknowledged_to_sigkill() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = crate::helpers::tempdir();
    let pg = tempfile::tempdir().unwrap();
    let db = LogDb::start(pg.path());
    let key = "ab".repeat(32);
    let start = |dir: &Path| {
        Start::new(dir)
            .env("SPG99_LOG", db.url.clone())
            .env("SPG99_SECRET_KEY", key.clone())
            .spawn()
    };

    // 16 writers, then SIGKILL while they write.
    let mut a = start(&tmp.path().join("a"));
    let stop = AtomicBool::new(false);
    let base = a.base.clone();
    let acked = std::thread::scope(|s| {
        let writers = s.spawn(|| hammer(&base, 16, &stop));
        std::thread::sleep(std::time::Duration::from_millis(700));
        a.kill9();
        stop.store(true, Ordering::Relaxed);
        writers.join().unwrap()
    });
    assert!(!acked.is_empty(), "nothing was acknowledged");

    // Another process, with a data directory of its own, serves everything acknowledged
    // (as a follower until the killed one's lease lapses, then as the leader); the log is
    // gapless and equals what it serves. (tests/it/replicas.rs: several at once.)
    let b = start(&tmp.path().join("b"));
    for id in &acked {
        let r = b.get(&format!("/v2/accounts/{id}"), ROOT_TOKEN);
        assert_eq!(r.status, 200, "acknowledged account {id} lost: {r:?}");
    }
    let reader = Log::at(&Location::postgres(&db.url).unwrap(), false).unwrap();
    let head = reader.head().unwrap();
    assert_eq!(
        reader
            .read_from(1)
            .map(|e| e.unwrap().seq)
            .collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    assert_eq!(b.fingerprint().1, head);
}

fn spg99(args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::helpers::bin())
        .args(args)
        .env_remove("SPG99_URL")
        .env_remove("SPG99_DATA_DIR")
        .env_remove("SPG99_LOG")
        .output()
        .unwrap()
}

fn last_json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap()
}

#[test]
fn a_sled_log_migrates_to_postgres_and_every_tool_reads_it_there() {
    let tmp = crate::helpers::tempdir();
    let pg = tempfile::tempdir().unwrap();
    let db = LogDb::start(pg.path());
    let dir = tmp.path().join("data");
    let key = "cd".repeat(32);
    let mut server = Start::new(&dir)
        .env("SPG99_SECRET_KEY", key.clone())
        .spawn();
    let fx = crate::helpers::Fixture::with_server(server);
    let t = fx.server.create_tenant(&fx.account_key, "shop");
    assert_eq!(t.status, 201, "{t:?}");
    for name in ["main", "audit"] {
        assert_eq!(
            fx.server.create_db(&fx.account_key, "shop", name).status,
            201
        );
    }
    let (fingerprint, seq) = fx.server.fingerprint();
    server = fx.server;
    server.terminate();
    let d = dir.to_str().unwrap();

    let out = spg99(&["log", "migrate", "--data-dir", d, "--to", &db.url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = last_json(&out);
    assert_eq!(report["equal"], true, "{report}");
    assert_eq!(report["copied"], seq);
    assert_eq!(report["fingerprint"], fingerprint.as_str());

    // The tools read the copy as they read the original.
    let out = spg99(&["verify", "--log", &db.url, "--data-dir", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = spg99(&["rebuild", "--log", &db.url, "--data-dir", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last_json(&out)["fingerprint"], fingerprint.as_str());
    let at = seq.to_string();
    let state = |extra: &[&str]| {
        let mut args = vec!["state", "--at", &at, "--format", "jsonl", "--data-dir", d];
        args.extend_from_slice(extra);
        let out = spg99(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        last_json(&out)
    };
    assert_eq!(state(&["--log", &db.url]), state(&[]));
    let dumped = spg99(&["log", "dump", "--log", &db.url, "--data-dir", d]);
    let original = spg99(&["log", "dump", "--data-dir", d]);
    assert_eq!(dumped.stdout, original.stdout);

    // Into a log that is not empty, nothing is copied.
    let again = spg99(&["log", "migrate", "--data-dir", d, "--to", &db.url]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"));

    // A server on the copy serves what the original did.
    let other = tmp.path().join("other");
    let server = Start::new(&other)
        .env("SPG99_LOG", db.url.clone())
        .env("SPG99_SECRET_KEY", key)
        .spawn();
    assert_eq!(server.fingerprint(), (fingerprint, seq));
    let r = server.get("/v2/tenants/shop/dbs", ROOT_TOKEN);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body["items"].as_array().map(|a| a.len()),
        Some(2),
        "{r:?}"
    );
}

#[test]
fn a_log_that_is_not_a_postgres_url_is_refused_with_a_clear_error() {
    let tmp = crate::helpers::tempdir();
    let (status, stderr) = Start::new(&tmp.path().join("data"))
        .env("SPG99_LOG", "/var/lib/elsewhere")
        .run_to_failure();
    assert!(!status.success());
    assert!(
        stderr.contains("--log \"/var/lib/elsewhere\": expected a postgres:// URL"),
        "{stderr}"
    );
    // Replicas must share one sealing key: a log on PostgreSQL without it is refused.
    let (status, stderr) = Start::new(&tmp.path().join("data"))
        .env("SPG99_LOG", "postgres://127.0.0.1:1/x")
        .without_env("SPG99_SECRET_KEY")
        .run_to_failure();
    assert!(!status.success());
    assert!(stderr.contains("set SPG99_SECRET_KEY"), "{stderr}");
    let out = spg99(&["verify", "--log", "mysql://x", "--data-dir", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected a postgres:// URL"));
}

#[test]
fn the_log_s_connection_killed_under_writes_loses_and_repeats_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = crate::helpers::tempdir();
    let pg = tempfile::tempdir().unwrap();
    let db = LogDb::start(pg.path());
    let server = Start::new(&tmp.path().join("data"))
        .env("SPG99_LOG", db.url.clone())
        .env("SPG99_SECRET_KEY", "ef".repeat(32))
        .spawn();
    let mut admin = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let stop = AtomicBool::new(false);
    let (acked, killed) = std::thread::scope(|s| {
        let writers = s.spawn(|| hammer(&server.base, 8, &stop));
        // The writer's connection is terminated five times while appends run: each time the
        // append in flight is resolved by reading back its batch, and the next ones go on.
        let mut killed = 0;
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(300));
            killed += admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'spg99-log' AND pid <> pg_backend_pid()",
                    &[],
                )
                .unwrap()
                .len();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (writers.join().unwrap(), killed)
    });
    assert!(
        killed >= 5,
        "the writer's connection was terminated {killed} times"
    );
    assert!(!acked.is_empty());
    // Every acknowledged account is there once; the log is gapless; writes still go on.
    let reader = Log::at(&Location::postgres(&db.url).unwrap(), false).unwrap();
    let mut seen = std::collections::HashMap::new();
    for (i, env) in reader.read_from(1).enumerate() {
        let env = env.unwrap();
        assert_eq!(env.seq, i as u64 + 1, "gapless");
        if let Event::AccountCreated { account_id, .. } = env.event {
            *seen.entry(account_id.to_string()).or_insert(0) += 1;
        }
    }
    for id in &acked {
        assert_eq!(seen.get(id), Some(&1), "account {id}");
    }
    assert!(seen.values().all(|&n| n == 1), "an account created twice");
    let r = server.post(
        "/v2/accounts",
        ROOT_TOKEN,
        serde_json::json!({"name": "after"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert!(
        server.stderr().contains("reconnecting"),
        "{}",
        server.stderr()
    );
}

#[test]
fn a_log_of_the_first_schema_is_upgraded_in_place_and_its_lease_is_held_by_one() {
    use spg99::log::{Bid, Lead};
    let dir = tempfile::tempdir().unwrap();
    let db = LogDb::start(dir.path());
    // The first schema, as a build before leases made it, with one batch in it.
    let writer = Log::at(&Location::postgres(&db.url).unwrap(), true).unwrap();
    writer.write(&[env(1, 5)]).unwrap();
    writer.sync().unwrap();
    drop(writer);
    let mut admin = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    admin
        .batch_execute("DROP TABLE spg99_log_lease; UPDATE spg99_log_schema SET version = 1")
        .unwrap();

    let at = Location::postgres(&db.url).unwrap();
    let first = Log::at(&at, false).unwrap();
    let version: i32 = admin
        .query_one("SELECT version FROM spg99_log_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
    let bid = |name: &str| Bid {
        holder: name.to_owned(),
        address: format!("http://{name}"),
        ttl: std::time::Duration::from_secs(60),
    };
    let (a, b) = (bid("a"), bid("b"));
    assert_eq!(first.lead(&a).unwrap(), Lead::Ours);
    let second = Log::at(&at, false).unwrap();
    // Held: the other is told where the leader is, and cannot append.
    assert_eq!(
        second.lead(&b).unwrap(),
        Lead::Theirs {
            address: Some("http://a".into())
        }
    );
    assert!(matches!(
        second.write(&[env(2, 5)]),
        Err(LogError::ReadOnly)
    ));
    assert!(first.renew(&a).unwrap());
    first.write(&[env(2, 5)]).unwrap();
    first.sync().unwrap();
    // Given up: the other leads at once, and the first may no longer append.
    first.resign(&a);
    assert_eq!(second.lead(&b).unwrap(), Lead::Ours);
    assert!(!first.renew(&a).unwrap());
    assert!(matches!(first.write(&[env(3, 5)]), Err(LogError::ReadOnly)));
    second.write(&[env(3, 7)]).unwrap();
    second.sync().unwrap();
    assert_eq!(seqs(&second, 1), vec![1, 2, 3]);
}
