//! Storage outside the worker, through the real binaries: a control plane with a storage
//! repository (a directory here; an object store in `storage_s3.rs`), workers running real
//! PostgreSQL and pgBackRest, clients through the Gateway with psql and a driver.
//!
//! - A database outlives its worker's disk: stopped, with every row; running, with every row
//!   older than the archive timeout; stopped by its worker's clean shutdown, with every row.
//! - A restore to a point in time brings a dropped table back, keeps the state from before
//!   as a database of its own, ends the old writer's sessions, and refuses a point outside
//!   the history.
//! - Archiving that fails is said (an event, `storage_warning`) while writes go on, and
//!   catches up with no gap once the repository is back.
//! - A worker that comes back with a stale copy never serves it.
//! - Deleting a database removes it from the repository.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway::{config, psql};
use crate::helpers::{tempdir, until_value, Fixture, Reply, Start, ROOT_TOKEN};
use crate::lab::{postgres_servers, Worker, SERVICE_TOKEN};
use crate::pgtls::Tls;

/// A platform whose databases are kept in a repository in `dir` (reachable by the postgres
/// user): the control plane with its Gateway, the system's clock, archiving at least every
/// second, workers lost after 1.5 s of silence, databases stopped after `idle` s alone.
pub(crate) struct Platform {
    pub fx: Fixture,
    pub repo: PathBuf,
    pub gw: String,
    pub user: String,
    pub password: String,
    dsn_template: String,
}

impl Platform {
    pub fn start(dir: &Path, storage: Option<&str>, extra: &[(&'static str, String)]) -> Platform {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let repo = dir.join("repo");
        let data = dir.join("data");
        let mut start = Start::new(&data)
            .gateway()
            .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
            .env(
                "SPG99_STORAGE",
                storage.map_or_else(|| repo.display().to_string(), str::to_owned),
            )
            .env("SPG99_ARCHIVE_TIMEOUT", "1")
            .env("SPG99_WORKER_TIMEOUT_MS", "1500")
            .env("SPG99_IDLE_TIMEOUT", "2");
        for (k, v) in extra {
            start = start.env(k, v.clone());
        }
        let fx = Fixture::with_server(start.spawn());
        let t = fx.server.create_tenant(&fx.account_key, "shop");
        let field = |k: &str| t.body[k].as_str().unwrap().to_owned();
        Platform {
            gw: fx.server.gateway.clone().unwrap(),
            user: field("pg_user"),
            password: field("pg_password"),
            dsn_template: field("dsn_template"),
            repo,
            fx,
        }
    }

    pub fn dsn(&self, db: &str) -> String {
        self.dsn_template.replace("<db-name>", db)
    }

    pub fn create_db(&self, name: &str) {
        let r = self.fx.server.create_db(&self.fx.account_key, "shop", name);
        assert_eq!(r.status, 201, "{r:?}");
    }

    pub fn describe(&self, db: &str) -> Value {
        let r = self
            .fx
            .server
            .get(&format!("/v2/tenants/shop/dbs/{db}"), &self.fx.account_key);
        assert_eq!(r.status, 200, "{r:?}");
        r.body
    }

    /// Polls the describe of `db` until `done` holds (at most `secs`).
    pub fn until(&self, db: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        until_value(secs, || self.describe(db), done)
    }

    /// A session through the Gateway, held open (it keeps the database running).
    pub fn session(&self, db: &str) -> postgres::Client {
        config(&self.gw, &self.user, &self.password, db)
            .connect(Tls::new())
            .expect("a session through the Gateway")
    }

    pub fn sql(&self, db: &str, sql: &str) -> String {
        psql(&self.dsn(db), &[sql]).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub fn restore(&self, db: &str, body: Value) -> Reply {
        self.fx.server.post(
            &format!("/v2/tenants/shop/dbs/{db}/restore"),
            &self.fx.account_key,
            body,
        )
    }

    /// The event types of the log, for one database.
    pub fn types(&self, db_id: &str) -> Vec<String> {
        let r = self
            .fx
            .server
            .get(&format!("/v2/admin/log?db={db_id}&limit=10000"), ROOT_TOKEN);
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until the control plane declared `worker` lost.
    pub fn until_lost(&self, worker: &str) {
        until_value(
            30,
            || {
                self.fx
                    .server
                    .get("/v2/admin/log?types=worker.lost&limit=10000", ROOT_TOKEN)
                    .body
            },
            |log| {
                log["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["data"]["worker_id"] == worker)
            },
        );
    }
}

/// A worker and its disk are gone: the process and its servers SIGKILLed, its storage
/// directory deleted.
pub(crate) fn destroy(worker: &mut Worker) {
    worker.kill9();
    let storage = worker.storage.clone().unwrap();
    for (_, pid) in postgres_servers(&storage) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    // What else ran under it (a pgBackRest backup or archive-push, a server's children) goes
    // too; a process killed a moment ago may still be writing there while it exits, so the
    // removal is tried until nothing writes any more.
    let began = std::time::Instant::now();
    loop {
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-f", &format!("{}/", storage.display())])
            .status();
        match std::fs::remove_dir_all(&storage) {
            Ok(()) => break,
            Err(_) if !storage.exists() => break,
            Err(e) => {
                assert!(
                    began.elapsed() < std::time::Duration::from_secs(10),
                    "{} cannot be removed: {e}",
                    storage.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// The server's clock now, RFC 3339 in UTC to the microsecond, as restores and branches take
/// a point.
pub(crate) fn server_now(s: &mut postgres::Client) -> String {
    s.query_one(
        "SELECT to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        &[],
    )
    .unwrap()
    .get(0)
}

/// The server's clock once it is past `start` (RFC 3339, UTC).
pub(crate) fn point_after(s: &mut postgres::Client, start: &str) -> String {
    loop {
        let now = server_now(s);
        if now.as_str() > start {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn backed_up(d: &Value) -> bool {
    d["last_backup_at"].is_string()
}

#[test]
fn a_database_outlives_its_workers_disk_stopped_with_every_row_and_running_with_all_but_its_last_second(
) {
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[]);
    let mut workers = [
        Worker::postgres(&p.fx.server, "w1", &tmp.path().join("w1")),
        Worker::postgres(&p.fx.server, "w2", &tmp.path().join("w2")),
    ];
    p.create_db("app");
    p.sql(
        "app",
        "CREATE TABLE t AS SELECT i FROM generate_series(1, 1000) i",
    );
    let holder = p.describe("app")["worker_id"].as_str().unwrap().to_owned();
    // Backed up, then stopped after being idle: what it wrote is in the repository.
    let d = p.until("app", 60, |d| backed_up(d) && d["state"] == "stopped");
    assert!(d["storage_bytes"].as_u64().unwrap() > 0, "{d}");
    assert!(
        d["recoverable_until"].is_string() && d["storage_warning"].is_null(),
        "{d}"
    );
    assert!(p
        .repo
        .join("archive")
        .join(d["timeline"].as_str().unwrap())
        .is_dir());

    // A second database, running with a session open when its worker goes.
    p.create_db("live");
    let mut session = p.session("live");
    session
        .batch_execute("CREATE TABLE t AS SELECT i FROM generate_series(1, 500) i")
        .unwrap();
    let written = server_now(&mut session);
    let live_holder = p.describe("live")["worker_id"].as_str().unwrap().to_owned();
    assert_eq!(
        live_holder, holder,
        "the worker with the most room, the first by id"
    );
    // Once its first backup is done and its WAL archived past the write (within the
    // archive timeout), only later writes can be lost.
    p.until("live", 60, |d| {
        backed_up(d)
            && d["recoverable_until"]
                .as_str()
                .is_some_and(|r| r > written.as_str())
    });
    session.batch_execute("INSERT INTO t VALUES (501)").unwrap();

    let (gone, other) = if holder == "w1" { (0, "w2") } else { (1, "w1") };
    destroy(&mut workers[gone]);
    p.until_lost(&holder);

    // The next connections start both databases on the other worker, from the repository.
    assert_eq!(p.sql("app", "SELECT count(*) FROM t"), "1000");
    assert_eq!(p.describe("app")["worker_id"], other);
    let n: i64 = p
        .sql("live", "SELECT count(*) FROM t WHERE i <= 500")
        .parse()
        .unwrap();
    assert_eq!(n, 500, "every row older than the archive timeout");
    assert_eq!(p.describe("live")["worker_id"], other);
}

#[test]
fn a_workers_clean_shutdown_archives_the_last_wal_of_every_database_it_stops() {
    let tmp = tempdir();
    // Archived at least every minute: only the shutdown can have archived the last row.
    let p = Platform::start(
        tmp.path(),
        None,
        &[("SPG99_ARCHIVE_TIMEOUT", "60".to_owned())],
    );
    let mut w1 = Worker::postgres(&p.fx.server, "w1", &tmp.path().join("w1"));
    p.create_db("app");
    let mut session = p.session("app");
    session
        .batch_execute("CREATE TABLE t AS SELECT i FROM generate_series(1, 100) i")
        .unwrap();
    p.until("app", 60, backed_up);
    session.batch_execute("INSERT INTO t VALUES (101)").unwrap();
    drop(session);
    w1.terminate();
    std::fs::remove_dir_all(w1.storage.clone().unwrap()).unwrap();
    let _w2 = Worker::postgres(&p.fx.server, "w2", &tmp.path().join("w2"));
    p.until_lost("w1");
    assert_eq!(p.sql("app", "SELECT count(*) FROM t"), "101");
    assert_eq!(p.describe("app")["worker_id"], "w2");
}

#[test]
fn a_restore_brings_back_a_dropped_table_and_keeps_the_state_before_it() {
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[]);
    let _w1 = Worker::postgres(&p.fx.server, "w1", &tmp.path().join("w1"));
    p.create_db("app");
    let mut session = p.session("app");
    session
        .batch_execute("CREATE TABLE orders AS SELECT i FROM generate_series(1, 1000) i")
        .unwrap();
    let history_start = p.until("app", 60, backed_up)["history_start_at"]
        .as_str()
        .unwrap()
        .to_owned();
    // The point to go back to: after the rows were committed and the history began (the
    // first backup serves points from the second after it), before the mistake.
    let at = point_after(&mut session, &history_start);
    session.batch_execute("DROP TABLE orders").unwrap();
    let before = p.describe("app");

    let r = p.restore("app", json!({ "at": at }));
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["state"], "restoring");
    assert_eq!(r.body["restore"]["kept_db"], "app_before_restore_1");
    // The old writer's sessions end.
    let began = Instant::now();
    while session.batch_execute("SELECT 1").is_ok() {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the old session goes on"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The next connection waits for the restore and finds the table.
    assert_eq!(p.sql("app", "SELECT count(*) FROM orders"), "1000");
    let after = p.describe("app");
    assert_eq!(after["state"], "running");
    assert_eq!(after["db_id"], before["db_id"], "the same database");
    assert_ne!(after["timeline"], before["timeline"], "on a new timeline");
    assert!(after["restore"].is_null(), "{after}");
    assert_eq!(after["last_restore"]["at"], at.as_str());
    assert_eq!(after["last_restore"]["kept_db"], "app_before_restore_1");
    assert!(after["last_restore"]["restored_at"].is_string(), "{after}");
    // The state from before is kept, with the table dropped.
    assert_eq!(
        p.sql(
            "app_before_restore_1",
            "SELECT to_regclass('orders') IS NULL"
        ),
        "t"
    );
    let kept = p.describe("app_before_restore_1");
    assert_eq!(kept["timeline"], before["timeline"]);
    let types = p.types(before["db_id"].as_str().unwrap());
    for t in ["db.restore_requested", "db.restore_started", "db.restored"] {
        assert!(types.iter().any(|x| x == t), "{t} missing: {types:?}");
    }

    // Outside the history: before the first backup of the timeline, or in the future.
    let restored_start = p.until("app", 60, backed_up)["history_start_at"]
        .as_str()
        .unwrap()
        .to_owned();
    for bad in ["2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z"] {
        let r = p.restore("app", json!({ "at": bad }));
        assert_eq!((r.status, r.code()), (422, "outside_history"), "{r:?}");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&restored_start[..19]) && message.contains("7 days"),
            "{message}"
        );
    }

    // A point with no commit after it in the WAL (nothing written since): the restore
    // stops at the commit its old writer's stop makes, with everything up to the point.
    let mut session = p.session("app");
    let quiet = point_after(&mut session, &restored_start);
    drop(session);
    let r = p.restore("app", json!({ "at": quiet }));
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["restore"]["kept_db"], "app_before_restore_2");
    assert_eq!(p.sql("app", "SELECT count(*) FROM orders"), "1000");
    assert_eq!(p.describe("app")["last_restore"]["at"], quiet.as_str());

    // Deleting the kept copy removes its timeline from the repository.
    let timeline = kept["timeline"].as_str().unwrap();
    assert!(p.repo.join("backup").join(timeline).is_dir());
    p.fx.server.delete(
        "/v2/tenants/shop/dbs/app_before_restore_1",
        &p.fx.account_key,
    );
    p.fx.server.wait_for_status(
        "/v2/tenants/shop/dbs/app_before_restore_1",
        &p.fx.account_key,
        404,
    );
    assert!(!p.repo.join("backup").join(timeline).exists());
    assert!(!p.repo.join("archive").join(timeline).exists());
}

#[test]
fn archiving_that_fails_is_said_and_catches_up_with_no_gap() {
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[]);
    let _w1 = Worker::postgres(&p.fx.server, "w1", &tmp.path().join("w1"));
    p.create_db("app");
    let mut session = p.session("app");
    session
        .batch_execute("CREATE TABLE t (i int, at timestamptz DEFAULT clock_timestamp())")
        .unwrap();
    let d = p.until("app", 60, backed_up);
    let archive = p.repo.join("archive").join(d["timeline"].as_str().unwrap());

    // The repository refuses writes; the database goes on taking them.
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o000)).unwrap();
    let began = Instant::now();
    let mut i = 0;
    let d = loop {
        i += 1;
        session
            .execute("INSERT INTO t (i) VALUES ($1)", &[&i])
            .unwrap();
        let d = p.describe("app");
        if d["storage_warning"]
            .as_str()
            .is_some_and(|w| w.contains("archiving"))
        {
            break d;
        }
        assert!(began.elapsed() < Duration::from_secs(60), "no warning: {d}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(d["state"], "running");
    // A point inside the outage, after every row so far was committed (and inside the
    // history, which starts the second after the backup: the outage may be said sooner).
    let rows_during: i64 = session
        .query_one("SELECT count(*) FROM t", &[])
        .unwrap()
        .get(0);
    let during = point_after(&mut session, d["history_start_at"].as_str().unwrap());
    session
        .execute("INSERT INTO t (i) VALUES (0)", &[])
        .unwrap();
    let db_id = d["db_id"].as_str().unwrap().to_owned();
    assert!(p.types(&db_id).iter().any(|t| t == "db.archive_failed"));

    // Back: archiving catches up, the warning goes.
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o750)).unwrap();
    p.until("app", 60, |d| d["storage_warning"].is_null());
    assert!(p.types(&db_id).iter().any(|t| t == "db.archive_recovered"));
    session
        .execute("INSERT INTO t (i) VALUES (-1)", &[])
        .unwrap();

    // A point inside the outage can be restored: no WAL is missing.
    drop(session);
    let r = p.restore("app", json!({ "at": during }));
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(
        p.sql("app", "SELECT count(*) FROM t")
            .parse::<i64>()
            .unwrap(),
        rows_during
    );
}

#[test]
fn a_worker_that_comes_back_with_a_stale_copy_never_serves_it() {
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[]);
    let mut w1 = Worker::postgres(&p.fx.server, "w1", &tmp.path().join("w1"));
    let mut w2 = Worker::postgres(&p.fx.server, "w2", &tmp.path().join("w2"));
    p.create_db("app");
    p.sql("app", "CREATE TABLE t AS SELECT 'on w1' AS written");
    assert_eq!(p.describe("app")["worker_id"], "w1");
    p.until("app", 60, |d| backed_up(d) && d["state"] == "stopped");

    // w1 goes (its copy stays on its disk); the database moves to w2 and is written there.
    w1.kill9();
    p.until_lost("w1");
    p.sql("app", "INSERT INTO t VALUES ('on w2')");
    assert_eq!(p.describe("app")["worker_id"], "w2");
    p.until("app", 60, |d| d["state"] == "stopped");

    // w1 comes back with its old copy; then w2 goes.
    w1.start(&p.fx.server);
    w2.kill9();
    p.until_lost("w2");
    assert_eq!(
        p.sql(
            "app",
            "SELECT string_agg(written, ',' ORDER BY written) FROM t"
        ),
        "on w1,on w2",
        "the newest data, not w1's stale copy"
    );
    assert_eq!(p.describe("app")["worker_id"], "w1");
}
