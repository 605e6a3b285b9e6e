//! Storage in an S3-compatible object store (SeaweedFS, started by the test, over HTTPS with
//! an authority the test makes): a database backed up there moves to another worker when its
//! first worker and disk are gone, restores to a point in time there (`spg99 dbs restore
//! --wait`), and leaves nothing behind once deleted.

use serde_json::Value;

use crate::helpers::{bin, tempdir};
use crate::lab::Worker;
use crate::object_store::{ObjectStore, ACCESS_KEY, SECRET_KEY};
use crate::storage::{backed_up, destroy, Platform};

#[test]
fn an_object_store_keeps_a_database_across_workers_and_restores_it_to_a_point_in_time() {
    let tmp = tempdir();
    let store = ObjectStore::start(&tmp.path().join("s3"));
    let keys = [
        ("SPG99_STORAGE_ACCESS_KEY", ACCESS_KEY.to_owned()),
        ("SPG99_STORAGE_SECRET_KEY", SECRET_KEY.to_owned()),
    ];
    let p = Platform::start(tmp.path(), Some(&store.repository("platform")), &keys);
    let mut workers = [
        Worker::postgres_with(&p.fx.server, "w1", &tmp.path().join("w1"), &keys),
        Worker::postgres_with(&p.fx.server, "w2", &tmp.path().join("w2"), &keys),
    ];
    p.create_db("app");
    p.sql(
        "app",
        "CREATE TABLE orders AS SELECT i FROM generate_series(1, 1000) i",
    );
    let holder = p.describe("app")["worker_id"].as_str().unwrap().to_owned();

    // Backed up and stopped: the backup and the WAL are objects in the bucket.
    let d = p.until("app", 90, |d| backed_up(d) && d["state"] == "stopped");
    assert!(d["storage_bytes"].as_u64().unwrap() > 0, "{d}");
    let timeline = d["timeline"].as_str().unwrap().to_owned();
    let under = |kind: &str, timeline: &str| store.keys(&format!("platform/{kind}/{timeline}/"));
    assert!(!under("backup", &timeline).is_empty());
    assert!(!under("archive", &timeline).is_empty());
    assert!(
        !tmp.path().join("repo").exists(),
        "nothing kept outside the object store"
    );

    // Its worker and disk gone, the next connection starts it on the other worker.
    let (gone, other) = if holder == "w1" { (0, "w2") } else { (1, "w1") };
    destroy(&mut workers[gone]);
    p.until_lost(&holder);
    assert_eq!(p.sql("app", "SELECT count(*) FROM orders"), "1000");
    assert_eq!(p.describe("app")["worker_id"], other);

    // A restore to a point in time, from the object store.
    let mut session = p.session("app");
    session
        .batch_execute("INSERT INTO orders SELECT i FROM generate_series(1001, 1500) i")
        .unwrap();
    let at = crate::storage::server_now(&mut session);
    session.batch_execute("DROP TABLE orders").unwrap();
    // Through the client, waiting until the restored database serves.
    let out = std::process::Command::new(bin())
        .args([
            "dbs", "restore", "shop", "app", "--at", &at, "--wait", "-o", "json",
        ])
        .env("SPG99_CONFIG", tmp.path().join("client.json"))
        .env("SPG99_URL", &p.fx.server.base)
        .env("SPG99_TOKEN", &p.fx.account_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restored["state"], "running", "{restored}");
    assert_ne!(restored["timeline"], timeline.as_str(), "a new timeline");
    assert_eq!(p.sql("app", "SELECT count(*) FROM orders"), "1500");
    let kept = restored["last_restore"]["kept_db"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(p.describe(&kept)["timeline"], timeline.as_str());

    // Deleting the kept copy removes its timeline from the bucket.
    p.fx.server
        .delete(&format!("/v2/tenants/shop/dbs/{kept}"), &p.fx.account_key);
    p.fx.server.wait_for_status(
        &format!("/v2/tenants/shop/dbs/{kept}"),
        &p.fx.account_key,
        404,
    );
    assert!(under("backup", &timeline).is_empty());
    assert!(under("archive", &timeline).is_empty());
}
