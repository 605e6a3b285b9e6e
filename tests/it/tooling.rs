//! The log tools through the real binary: rebuild and verify, time travel, snapshots, dumps.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{all_permissions, bin, tamper, tempdir, Server, Start, ROOT_TOKEN};

fn spg99(args: &[&str], url_token: bool) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("SPG99_URL")
        .env_remove("SPG99_DATA_DIR");
    if url_token {
        cmd.env("SPG99_TOKEN", ROOT_TOKEN);
    }
    cmd.output().unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A scenario with accounts, keys, tenants, databases, deletions; returns what the API showed
/// at a point in the middle: (seq, tenants, dbs of "shop").
fn scenario(s: &Server) -> (u64, Value, Value, String) {
    let account = s.create_account("acme");
    let key = s.issue_key(
        ROOT_TOKEN,
        &account,
        json!({"scope": "account", "permissions": all_permissions()}),
    );
    s.create_tenant(&key, "shop");
    s.create_tenant(&key, "blog");
    for d in ["app", "jobs", "cache"] {
        s.create_db(&key, "shop", d);
    }
    let tenants = s.get("/v2/tenants", &key);
    let dbs = s.get("/v2/tenants/shop/dbs", &key);
    let seq: u64 = dbs.header("x-resource-version").unwrap().parse().unwrap();
    let middle = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    std::thread::sleep(Duration::from_millis(20));
    for i in 0..30 {
        s.create_db(&key, "blog", &format!("d{i}"));
    }
    assert_eq!(s.delete("/v2/tenants/shop/dbs/jobs", &key).status, 202);
    assert_eq!(s.delete("/v2/tenants/blog?cascade=true", &key).status, 202);
    s.wait_for_status("/v2/tenants/blog", &key, 404);
    s.post("/v2/api-keys/rotate", &key, json!({}));
    (
        seq,
        tenants.body["items"].clone(),
        dbs.body["items"].clone(),
        middle,
    )
}

#[test]
fn rebuild_verifies_and_a_corrupted_copy_is_named_and_refused() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut s = Start::new(&dir)
        .env("SPG99_SNAPSHOT_EVERY_EVENTS", "7")
        .spawn();
    scenario(&s);
    let (live_fp, head) = s.fingerprint();
    // Online: the server replays its own log.
    let url = s.base.clone();
    let v = spg99(&["verify", "--url", &url], true);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert_eq!(json_lines(&v)[0]["equal"], true);

    // A copy of the data directory, rebuilt offline, against the snapshot and the live server.
    let copy = tmp.path().join("copy");
    std::thread::sleep(Duration::from_millis(300));
    s.terminate();
    copy_dir(&dir, &copy);
    let mut s = Start::new(&dir).spawn();
    let url = s.base.clone();
    let r = spg99(
        &[
            "rebuild",
            "--verify",
            "--data-dir",
            copy.to_str().unwrap(),
            "--url",
            &url,
        ],
        true,
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let lines = json_lines(&r);
    assert_eq!(lines[0]["fingerprint"], live_fp.as_str());
    assert_eq!(lines[0]["events"], head);
    assert_eq!(lines[1]["snapshot"]["equal"], true, "{lines:?}");
    assert_eq!(lines[2]["live"]["equal"], true, "{lines:?}");
    s.kill9();

    // One corrupted byte in one record of the copy.
    tamper(&copy, 9, |b| b[6] ^= 0x20);
    let v = spg99(&["verify", "--data-dir", copy.to_str().unwrap()], false);
    assert_eq!(v.status.code(), Some(1));
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(
        err.contains("seq 9") && err.contains("checksum mismatch"),
        "{err}"
    );
    let r = spg99(&["rebuild", "--data-dir", copy.to_str().unwrap()], false);
    assert_eq!(r.status.code(), Some(1));
    // The snapshot covers seq 9, but a damaged record is still refused at start: the start
    // reads the tail, `verify` finds the rest; a damaged tail is refused outright.
    tamper(&copy, head, |b| b[6] ^= 0x20);
    let (status, stderr) = Start::new(&copy).run_to_failure();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains(&format!("seq {head}")), "{stderr}");
}

#[test]
fn state_at_a_point_equals_what_the_api_showed_then() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut s = Start::new(&dir)
        .env("SPG99_SNAPSHOT_EVERY_EVENTS", "5")
        .spawn();
    let (seq, tenants, dbs, middle) = scenario(&s);
    let url = s.base.clone();
    let check = |v: &Value, what: &str| {
        assert_eq!(v["seq"], seq, "{what}");
        assert_eq!(v["tenants"], tenants, "{what}");
        let shop: Vec<&Value> = v["dbs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["tenant"] == "shop")
            .collect();
        assert_eq!(json!(shop), dbs, "{what}");
    };
    let online = spg99(
        &[
            "state",
            "--at",
            &seq.to_string(),
            "--url",
            &url,
            "--format",
            "jsonl",
        ],
        true,
    );
    assert!(
        online.status.success(),
        "{}",
        String::from_utf8_lossy(&online.stderr)
    );
    check(&json_lines(&online)[0], "online, by seq");
    let by_time = spg99(
        &["state", "--at", &middle, "--url", &url, "--format", "jsonl"],
        true,
    );
    check(&json_lines(&by_time)[0], "online, by time");
    s.terminate();
    let offline = spg99(
        &[
            "state",
            "--at",
            &seq.to_string(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--format",
            "jsonl",
        ],
        false,
    );
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    check(&json_lines(&offline)[0], "offline");
    let one = spg99(
        &[
            "state",
            "--at",
            &seq.to_string(),
            "--tenant",
            "shop",
            "--data-dir",
            dir.to_str().unwrap(),
            "--format",
            "jsonl",
        ],
        false,
    );
    let one = &json_lines(&one)[0];
    assert_eq!(one["tenants"].as_array().unwrap().len(), 1);
    assert!(one.get("api_keys").is_none());
}

fn replayed(stderr: &str) -> (Option<u64>, u64) {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("state rebuilt from the log"))
        .expect("start-up reports its replay");
    let field = |name: &str| -> Option<String> {
        let rest = line.split(&format!("{name}=")).nth(1)?;
        Some(rest.split_whitespace().next()?.to_owned())
    };
    // An absent snapshot leaves the field out.
    let snapshot = field("snapshot").map(|v| v.parse().unwrap());
    (snapshot, field("replayed").unwrap().parse().unwrap())
}

#[test]
fn a_start_with_a_snapshot_replays_only_the_tail_and_a_bad_snapshot_is_skipped() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut s = Start::new(&dir)
        .env("SPG99_SNAPSHOT_EVERY_EVENTS", "10")
        .spawn();
    for i in 0..25 {
        s.post("/v2/accounts", ROOT_TOKEN, json!({"name": format!("a{i}")}));
    }
    let before = s.fingerprint();
    std::thread::sleep(Duration::from_millis(500));
    s.kill9();
    let head = before.1;
    let snaps: Vec<u64> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".snap")?
                .parse()
                .ok()
        })
        .collect();
    let newest = *snaps.iter().max().expect("snapshots were written");
    assert!(newest >= 10 && newest <= head, "{snaps:?}");

    let mut s = Start::new(&dir).spawn();
    assert_eq!(s.fingerprint(), before);
    assert_eq!(replayed(&s.stderr()), (Some(newest), head - newest));
    s.terminate();

    // A damaged newest snapshot is skipped with a warning; the older one (or the log) serves.
    let path = dir.join("snapshots").join(format!("{newest:020}.snap"));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let s = Start::new(&dir).spawn();
    assert_eq!(s.fingerprint(), before);
    let stderr = s.stderr();
    assert!(stderr.contains("snapshot cannot be trusted"), "{stderr}");
    let (snapshot, count) = replayed(&stderr);
    assert!(snapshot.is_none_or(|snap| snap < newest));
    assert_eq!(count, head - snapshot.unwrap_or(0));
}

#[test]
fn dumps_hold_no_secret_and_filter_as_asked() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut s = Start::new(&dir).spawn();
    let account = s.create_account("acme");
    let key = s.issue_key(
        ROOT_TOKEN,
        &account,
        json!({"scope": "account", "permissions": all_permissions()}),
    );
    let password = s.create_tenant(&key, "shop").body["pg_password"]
        .as_str()
        .unwrap()
        .to_owned();
    s.create_db(&key, "shop", "app");
    let url = s.base.clone();
    let online = spg99(&["log", "dump", "--url", &url], true);
    assert!(online.status.success());
    let filtered = spg99(
        &[
            "log",
            "dump",
            "--url",
            &url,
            "--tenant",
            "shop",
            "--types",
            "db.created",
        ],
        true,
    );
    let f = json_lines(&filtered);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["type"], "db.created");
    s.terminate();
    let offline = spg99(&["log", "dump", "--data-dir", dir.to_str().unwrap()], false);
    assert!(offline.status.success());
    assert_eq!(
        offline.stdout, online.stdout,
        "offline and online dumps agree"
    );
    let text = String::from_utf8_lossy(&offline.stdout);
    for secret in [
        password.as_str(),
        key.rsplit('_').next().unwrap(),
        ROOT_TOKEN.rsplit('_').next().unwrap(),
    ] {
        assert!(!text.contains(secret), "a dump holds a secret");
    }
    assert!(!text.contains("secret_hash") && !text.contains("pg_password"));
    let bad = spg99(
        &[
            "log",
            "dump",
            "--data-dir",
            dir.to_str().unwrap(),
            "--types",
            "nope",
        ],
        false,
    );
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn log_tail_follows_the_live_log_from_now_on() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data")).spawn();
    s.create_account("before");
    let mut tail = Command::new(bin())
        .args([
            "log",
            "tail",
            "--url",
            &s.base,
            "--types",
            "account.created",
        ])
        .env("SPG99_TOKEN", ROOT_TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Write until the tail, once connected, shows something.
    let mut line = None;
    for i in 0..50 {
        s.create_account(&format!("after{i}"));
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            line = Some(l);
            break;
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    let v: Value = serde_json::from_str(&line.expect("the tail showed an event")).unwrap();
    assert_eq!(v["type"], "account.created");
    let name = v["data"]["name"].as_str().unwrap();
    assert!(
        name.starts_with("after"),
        "events from before the tail started are not shown: {name}"
    );
}
