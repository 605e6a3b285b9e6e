//! Branches, through the real binaries: a control plane with a storage repository, workers
//! running real PostgreSQL (one on an XFS filesystem with reflinks, loop-mounted by the test
//! when it runs as root), clients through the Gateway.
//!
//! - A branch of a running database under writes has every row acknowledged before the
//!   request, answers within seconds, is a copy that shares the parent's blocks, and neither
//!   side sees the other's writes; `pg_amcheck` finds it clean.
//! - A branch at a past time has exactly what was committed before it; a branch of a branch;
//!   the parent deleted, its branches keep working.
//! - A branch of a stopped database whose worker is gone is made on another worker, from
//!   the repository.
//! - Bad input: an unknown parent, a parent of another tenant, a point outside the history,
//!   a point without a parent.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{tempdir, Reply};
use crate::lab::Worker;
use crate::reflinks::Reflinks;
use crate::storage::{backed_up, destroy, point_after, Platform};

fn branch(p: &Platform, name: &str, body: Value) -> Reply {
    let mut body = body;
    body["name"] = json!(name);
    body["size"] = json!("L1");
    p.fx.server
        .post("/v2/tenants/shop/dbs", &p.fx.account_key, body)
}

fn count(p: &Platform, db: &str, sql: &str) -> i64 {
    p.sql(db, sql).parse().unwrap()
}

/// `pg_amcheck` of every table and index of the database `db`, on its server (reached over
/// the worker's socket as `postgres`).
fn amcheck(worker_storage: &Path, d: &Value) {
    let port = d["backend_addr"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let bin = spg99_worker::postgres::find_bin(None).unwrap();
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_amcheck"))
        .arg("-h")
        .arg(worker_storage.join("run"))
        .args([
            "-p",
            &port,
            "-U",
            "postgres",
            "--install-missing",
            "--heapallindexed",
        ])
        .arg(d["name"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_amcheck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_branch_of_a_running_database_under_writes_has_every_acknowledged_row_and_its_own_future() {
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[("SPG99_IDLE_TIMEOUT", "600".into())]);
    let disk = Reflinks::at(&tmp.path().join("w1"), "3G");
    let _w1 = Worker::postgres(&p.fx.server, "w1", &disk.dir);
    p.create_db("app");
    // About 100 MiB of rows, so that a copy that does not share blocks shows.
    p.sql(
        "app",
        "CREATE TABLE t (i bigint PRIMARY KEY, pad text); \
         INSERT INTO t SELECT -i, repeat('x', 200) FROM generate_series(1, 400000) i",
    );
    let app = p.until("app", 60, backed_up);

    // A writer: one row per transaction, each acknowledged one counted.
    let acked = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let mut session = p.session("app");
        std::thread::spawn(move || {
            let mut i = 0i64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                session
                    .execute("INSERT INTO t VALUES ($1, 'w')", &[&i])
                    .unwrap();
                acked.store(i, Ordering::SeqCst);
            }
        })
    };
    while acked.load(Ordering::SeqCst) < 200 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = acked.load(Ordering::SeqCst);
    let asked = Instant::now();
    let r = branch(&p, "dev", json!({"parent": "app"}));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["state"], "starting", "{r:?}");
    assert_eq!(r.body["parent"], "app");
    assert_eq!(r.body["parent_db_id"], app["db_id"]);
    assert_eq!(r.body["branch_made"], false);
    let dev = p.until("dev", 60, |d| d["state"] == "running");
    let took = asked.elapsed();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(took < Duration::from_secs(30), "made in {took:?}");
    assert_eq!(dev["branch_made"], true, "{dev}");
    assert_eq!(dev["worker_id"], "w1", "made where the parent runs");
    assert!(dev["parent_at"].is_string(), "{dev}");

    // Every row acknowledged before the request; what came after, maybe.
    assert_eq!(
        count(
            &p,
            "dev",
            &format!("SELECT count(*) FROM t WHERE i BETWEEN 1 AND {before}")
        ),
        before
    );
    assert_eq!(
        count(&p, "dev", "SELECT count(*) FROM t WHERE i < 0"),
        400_000
    );
    if disk.mounted {
        // The table's blocks are shared with the parent's, but for the pages written since.
        let file: String = p
            .session("dev")
            .query_one("SELECT pg_relation_filepath('t')", &[])
            .unwrap()
            .get(0);
        let path = disk.dir.join(dev["timeline"].as_str().unwrap()).join(file);
        let (shared, size) = Reflinks::shared(&path);
        assert!(size > 80 << 20, "{size}");
        assert!(
            shared * 10 >= size * 9,
            "a reflink copy shares the parent's ~100 MiB table: {shared} of {size} bytes shared"
        );
    }

    // Two databases from here on.
    p.sql("dev", "INSERT INTO t VALUES (0, 'dev only')");
    p.sql("app", "INSERT INTO t VALUES (1000000000, 'app only')");
    assert_eq!(count(&p, "app", "SELECT count(*) FROM t WHERE i = 0"), 0);
    assert_eq!(
        count(&p, "dev", "SELECT count(*) FROM t WHERE i = 1000000000"),
        0
    );

    // A migration on the branch, reviewed against its parent.
    let diff = |db: &str, against: &str| {
        p.fx.server.get(
            &format!("/v2/tenants/shop/dbs/{db}/schema-diff?against={against}"),
            &p.fx.account_key,
        )
    };
    let same = diff("dev", "app");
    assert_eq!(same.status, 200, "{same:?}");
    assert_eq!(same.body["identical"], true, "{same:?}");
    p.sql(
        "dev",
        "ALTER TABLE t ADD COLUMN note text; CREATE INDEX t_note ON t (note)",
    );
    let changed = diff("dev", "app");
    assert_eq!(changed.body["identical"], false, "{changed:?}");
    let text = changed.body["diff"].as_str().unwrap();
    assert!(text.starts_with("--- app\n+++ dev\n"), "{text}");
    assert!(text.contains("\n+    note text"), "{text}");
    assert!(
        text.contains("\n+CREATE INDEX t_note ON public.t USING btree (note);"),
        "{text}"
    );
    assert_eq!(diff("dev", "nope").status, 404);
    assert_eq!(diff("dev", "Bad!").status, 422);
    amcheck(&disk.dir, &p.describe("dev"));
    let dev_id = dev["db_id"].as_str().unwrap();
    assert!(p.types(dev_id).iter().any(|t| t == "db.branched"));
    let metrics =
        p.fx.server
            .get("/metrics", crate::lab::SERVICE_TOKEN)
            .body
            .as_str()
            .unwrap()
            .to_owned();
    assert!(
        metrics.lines().any(|l| l == "spg99_branches 1"),
        "{metrics}"
    );
    // Its own stanza in the repository, never its parent's.
    p.until("dev", 60, backed_up);
    assert!(p
        .repo
        .join("backup")
        .join(dev["timeline"].as_str().unwrap())
        .is_dir());

    // The parent's own history holds the parent's writes only: restored to now, it has
    // its row and not the branch's.
    let now = p.sql(
        "app",
        "SELECT to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    let r = p.restore("app", json!({ "at": now }));
    assert_eq!(r.status, 202, "{r:?}");
    p.until("app", 120, |d| d["state"] == "running");
    assert_eq!(
        count(&p, "app", "SELECT count(*) FROM t WHERE i = 1000000000"),
        1
    );
    assert_eq!(count(&p, "app", "SELECT count(*) FROM t WHERE i = 0"), 0);
}

#[test]
fn a_branch_at_a_past_time_has_exactly_what_was_committed_before_it_and_outlives_its_parent() {
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[]);
    let _w1 = Worker::postgres(&p.fx.server, "w1", &tmp.path().join("w1"));
    p.create_db("app");
    let mut session = p.session("app");
    session
        .batch_execute("CREATE TABLE t AS SELECT i FROM generate_series(1, 100) i")
        .unwrap();
    let start = p.until("app", 60, backed_up)["history_start_at"]
        .as_str()
        .unwrap()
        .to_owned();
    // A point of the history: after its start (the second after the first backup ended).
    let point = point_after(&mut session, &start);
    session
        .batch_execute("INSERT INTO t SELECT i FROM generate_series(101, 200) i")
        .unwrap();

    // Bad input first: nothing is made.
    let unknown = branch(&p, "x", json!({"parent": "nope"}));
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let early = branch(
        &p,
        "x",
        json!({"parent": "app", "at": "2020-01-01T00:00:00Z"}),
    );
    assert_eq!(early.status, 422, "{early:?}");
    assert_eq!(early.body["error"]["code"], "outside_history", "{early:?}");
    let alone = branch(&p, "x", json!({"at": point}));
    assert_eq!(alone.status, 422, "{alone:?}");
    assert_eq!(
        alone.body["error"]["code"], "at_without_parent",
        "{alone:?}"
    );
    let garbled = branch(&p, "x", json!({"parent": "app", "at": "yesterday"}));
    assert_eq!(garbled.status, 422, "{garbled:?}");
    let other = p.fx.server.create_tenant(&p.fx.account_key, "other");
    assert_eq!(other.status, 201);
    let foreign = p.fx.server.post(
        "/v2/tenants/other/dbs",
        &p.fx.account_key,
        json!({"name": "x", "size": "L1", "parent": "app"}),
    );
    assert_eq!(foreign.status, 404, "{foreign:?}");
    assert_eq!(
        p.fx.server
            .get("/v2/tenants/shop/dbs/x", &p.fx.account_key)
            .status,
        404
    );

    // The parent serves on with its writes; the branch has the state of the point.
    let r = branch(&p, "past", json!({"parent": "app", "at": point}));
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.body["parent_at"]
        .as_str()
        .unwrap()
        .starts_with(&point[..19]));
    p.until("past", 120, |d| d["state"] == "running");
    // Held open from here on: `past` keeps running (branched and reset from while it serves).
    let mut past = p.session("past");
    assert_eq!(count(&p, "past", "SELECT count(*) FROM t"), 100);
    session.batch_execute("INSERT INTO t VALUES (201)").unwrap();
    assert_eq!(count(&p, "past", "SELECT count(*) FROM t"), 100);

    // A branch of the branch, now.
    past.batch_execute("INSERT INTO t VALUES (-1)").unwrap();
    assert_eq!(branch(&p, "past2", json!({"parent": "past"})).status, 201);
    p.until("past2", 120, |d| d["state"] == "running");
    let mut past2 = p.session("past2");
    assert_eq!(count(&p, "past2", "SELECT count(*) FROM t"), 101);

    // A reset: the branch takes its parent's data as it is now; what it had is kept aside.
    let not_a_branch = p.fx.server.post(
        "/v2/tenants/shop/dbs/app/reset",
        &p.fx.account_key,
        json!({}),
    );
    assert_eq!(not_a_branch.status, 409, "{not_a_branch:?}");
    assert_eq!(not_a_branch.body["error"]["code"], "not_a_branch");
    past2.batch_execute("INSERT INTO t VALUES (-2)").unwrap();
    past.batch_execute("INSERT INTO t VALUES (-3)").unwrap();
    let reset = p.fx.server.post(
        "/v2/tenants/shop/dbs/past2/reset",
        &p.fx.account_key,
        json!({}),
    );
    assert_eq!(reset.status, 202, "{reset:?}");
    let kept = reset.body["restore"]["kept_db"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(kept, "past2_before_reset_1");
    let reset_id = reset.body["db_id"].as_str().unwrap();
    assert!(p.types(reset_id).iter().any(|t| t == "db.reset"));
    p.until("past2", 120, |d| d["state"] == "running");
    assert_eq!(
        count(&p, "past2", "SELECT count(*) FROM t WHERE i < 0"),
        2,
        "-1 and -3"
    );
    assert_eq!(count(&p, "past2", "SELECT count(*) FROM t WHERE i = -3"), 1);
    assert_eq!(
        count(&p, &kept, "SELECT count(*) FROM t WHERE i < 0"),
        2,
        "-1 and -2"
    );
    assert_eq!(count(&p, &kept, "SELECT count(*) FROM t WHERE i = -2"), 1);

    // The parent deleted: its branches keep their data, and their describe its id.
    assert!(
        past2.batch_execute("SELECT 1").is_err(),
        "the reset ended the branch's sessions"
    );
    drop((session, past, past2));
    let gone =
        p.fx.server
            .delete("/v2/tenants/shop/dbs/app", &p.fx.account_key);
    assert_eq!(gone.status, 202, "{gone:?}");
    p.until("past", 60, |d| {
        d["parent"].is_null() && d["state"] == "stopped"
    });
    assert_eq!(count(&p, "past", "SELECT count(*) FROM t"), 102);
    let past = p.describe("past");
    assert!(past["parent_db_id"].is_string(), "{past}");
}

#[test]
fn a_branch_of_a_stopped_database_whose_worker_is_gone_is_made_from_the_repository() {
    let tmp = tempdir();
    let p = Platform::start(tmp.path(), None, &[]);
    let mut w1 = Worker::postgres(&p.fx.server, "w1", &tmp.path().join("w1"));
    p.create_db("app");
    p.sql(
        "app",
        "CREATE TABLE t AS SELECT i FROM generate_series(1, 300) i",
    );
    p.until("app", 60, |d| backed_up(d) && d["state"] == "stopped");
    // A stopped parent whose data is on a live worker: copied there, the parent not started.
    assert_eq!(branch(&p, "copy", json!({"parent": "app"})).status, 201);
    let copy = p.until("copy", 60, |d| d["state"] == "running");
    assert_eq!(copy["worker_id"], "w1");
    assert_eq!(p.describe("app")["state"], "stopped");
    assert_eq!(count(&p, "copy", "SELECT count(*) FROM t"), 300);

    let _w2 = Worker::postgres(&p.fx.server, "w2", &tmp.path().join("w2"));
    destroy(&mut w1);
    p.until_lost("w1");
    // Through the client, waiting until the branch serves; then its schema against its parent.
    let client = |args: &[&str]| {
        let out = Command::new(crate::helpers::bin())
            .args(args)
            .env("SPG99_CONFIG", tmp.path().join("client.json"))
            .env("SPG99_URL", &p.fx.server.base)
            .env("SPG99_TOKEN", &p.fx.account_key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = client(&[
        "dbs", "create", "shop", "moved", "--parent", "app", "--wait", "-o", "json",
    ]);
    let moved: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(moved["state"], "running", "{moved}");
    assert_eq!(moved["parent"], "app", "{moved}");
    assert_eq!(
        p.describe("app")["state"],
        "stopped",
        "made without starting its parent"
    );
    p.sql("moved", "CREATE TABLE extra (x int)");
    let diff = client(&["dbs", "diff", "shop", "moved"]);
    assert!(diff.contains("+CREATE TABLE public.extra ("), "{diff}");
    assert_eq!(moved["worker_id"], "w2");
    assert_eq!(count(&p, "moved", "SELECT count(*) FROM t"), 300);
}
