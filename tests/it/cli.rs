//! `spg99` as a client, driven as a person or a script would: login, the seeds' whole path
//! (tenant, credentials, database, psql through the Gateway, describe), `--output json`,
//! exit codes, `--wait`, and `events --follow` across a restart of the server.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{bin, Start, ROOT_TOKEN};

/// The client with its config in `dir` and nothing from this process's environment.
fn spg99(dir: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env("SPG99_CONFIG", dir.join("config.json"))
        .env_remove("SPG99_URL")
        .env_remove("SPG99_TOKEN")
        .env_remove("SPG99_PROFILE")
        .stdin(Stdio::null());
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    spg99(dir).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command that must succeed; its stdout as JSON.
fn json(dir: &Path, args: &[&str]) -> Value {
    let o = run(dir, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(text(&o).trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&o)))
}

/// `spg99 login` with the token on stdin.
fn login(dir: &Path, url: &str, token: &str, profile: &str) -> Output {
    let mut child = spg99(dir)
        .args(["login", "--url", url, "--profile", profile])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_seeds_path_through_the_cli_from_login_to_psql() {
    let tmp = crate::helpers::tempdir();
    let server = Start::new(&tmp.path().join("data"))
        .gateway()
        .compute("postgres")
        .spawn();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = home.as_path();

    // The operator logs in with the bootstrap key and makes an account and its key.
    let o = login(h, &server.base, ROOT_TOKEN, "root");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text(&o).contains("global scope"), "{}", text(&o));
    let config = h.join("config.json");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config holds tokens");
    // The directory it was put in is left as it was.
    let dir_mode = std::fs::metadata(h).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o755);
    // Without SPG99_CONFIG: under XDG_CONFIG_HOME, in a directory of its own, 0700.
    let mut xdg = Command::new(bin());
    xdg.args(["login", "--url", &server.base])
        .env_remove("SPG99_CONFIG")
        .env("XDG_CONFIG_HOME", h.join("xdg"))
        .env("SPG99_TOKEN", ROOT_TOKEN);
    assert!(xdg.output().unwrap().status.success());
    let own = h.join("xdg/spg99");
    assert_eq!(
        std::fs::metadata(&own).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let saved = std::fs::metadata(own.join("config.json")).unwrap();
    assert_eq!(saved.permissions().mode() & 0o777, 0o600);
    let account = json(h, &["accounts", "create", "acme", "-o", "json"]);
    let account = account["account_id"].as_str().unwrap().to_owned();
    let key = json(
        h,
        &[
            "keys",
            "issue",
            "--account",
            &account,
            "--permissions",
            "can_create_tenant,can_create_db,can_delete",
            "-o",
            "json",
        ],
    );
    let token = key["token"].as_str().unwrap().to_owned();
    // The user logs in with it, as the default profile from then on.
    let o = login(h, &server.base, &token, "acme");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        json(h, &["keys", "me", "-o", "json"])["key_id"],
        key["key_id"]
    );

    // Tenant, credentials, database.
    let t = json(h, &["tenants", "create", "shop", "-o", "json"]);
    let password = t["pg_password"].as_str().unwrap().to_owned();
    let creds = json(h, &["tenants", "credentials", "shop", "-o", "json"]);
    assert_eq!(creds["pg_password"], password.as_str());
    let o = run(h, &["tenants", "credentials", "shop"]);
    assert!(
        text(&o)
            .lines()
            .any(|l| l.starts_with("pg_password:") && l.ends_with(&format!(" {password}"))),
        "{}",
        text(&o)
    );
    // Where the serverless driver goes: SQL over HTTP and WebSockets.
    for field in ["http_sql_url", "websocket_url"] {
        assert!(
            text(&o)
                .lines()
                .any(|l| l.starts_with(&format!("{field}:"))),
            "{}",
            text(&o)
        );
    }
    assert!(creds["http_sql_url"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    assert!(creds["websocket_url"]
        .as_str()
        .unwrap()
        .starts_with("wss://"));
    let d = json(
        h,
        &["dbs", "create", "shop", "main", "--wait", "-o", "json"],
    );
    assert_eq!(
        (d["state"].as_str(), d["size"].as_str()),
        (Some("stopped"), Some("L1"))
    );
    let o = run(h, &["dbs", "list", "shop"]);
    let table = text(&o);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("main ") && l.contains("stopped")),
        "{table}"
    );

    // psql through the Gateway, with the DSN the CLI builds.
    let o = run(
        h,
        &["connect", "shop", "main", "--", "-XAtc", "select 40 + 2"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text(&o).trim(), "42");
    // And through the pooler.
    let o = run(
        h,
        &[
            "connect",
            "--pooled",
            "shop",
            "main",
            "--",
            "-XAtc",
            "select 6 * 7",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text(&o).trim(), "42");
    // The describe says it runs now.
    let d = json(h, &["dbs", "get", "shop", "main", "-o", "json"]);
    assert_eq!(d["state"], "running", "{d}");
    assert_eq!(d["scale_state"], "STABLE");
    let o = run(h, &["dbs", "get", "shop", "main"]);
    assert!(
        text(&o)
            .lines()
            .any(|l| l.starts_with("state:") && l.ends_with("running")),
        "{}",
        text(&o)
    );

    // High availability on and off (a standby needs another worker: none here).
    let on = json(h, &["dbs", "ha", "shop", "main", "on", "-o", "json"]);
    assert_eq!(
        (on["ha"].clone(), on["ha_protected"].clone()),
        (json!(true), json!(false))
    );
    let off = json(h, &["dbs", "ha", "shop", "main", "off", "-o", "json"]);
    assert_eq!(off["ha"], false, "{off}");

    // Deleted, waiting until it is gone.
    let gone = json(
        h,
        &["dbs", "delete", "shop", "main", "--wait", "-o", "json"],
    );
    assert_eq!(gone["deleted"], true, "{gone}");
    assert_eq!(
        run(h, &["dbs", "get", "shop", "main"]).status.code(),
        Some(5)
    );

    // A rotated key carries on in its profile.
    let rotated = json(h, &["keys", "rotate", "-o", "json"]);
    assert_ne!(rotated["token"].as_str(), Some(token.as_str()));
    assert_eq!(
        json(h, &["keys", "me", "-o", "json"])["key_id"],
        key["key_id"]
    );
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains(rotated["token"].as_str().unwrap()));
    assert!(!saved.contains(&token));
    let o = run(h, &["billing", "-o", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn exit_codes_say_what_went_wrong_with_the_api_s_message_and_request_id() {
    let tmp = crate::helpers::tempdir();
    let server = Start::new(&tmp.path().join("data")).spawn();
    let h = tmp.path();
    // Nothing to talk to: a usage error.
    let o = run(h, &["tenants", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("spg99 login --url"));
    let with = |token: &str, args: &[&str]| {
        spg99(h)
            .env("SPG99_URL", &server.base)
            .env("SPG99_TOKEN", token)
            .args(args)
            .output()
            .unwrap()
    };
    let o = with("spg99_nope", &["tenants", "list"]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("401 invalid_token") && err.contains("request "),
        "{err}"
    );
    assert_eq!(
        with(ROOT_TOKEN, &["tenants", "get", "nope"]).status.code(),
        Some(5)
    );
    assert!(with(ROOT_TOKEN, &["accounts", "create", "acme"])
        .status
        .success());
    let account = json_of(&with(ROOT_TOKEN, &["accounts", "list", "-o", "json"]))["items"][0]
        ["account_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = json_of(&with(
        ROOT_TOKEN,
        &["keys", "issue", "--account", &account, "-o", "json"],
    ));
    let weak = key["token"].as_str().unwrap();
    // An account key without can_create_tenant.
    assert_eq!(
        with(weak, &["tenants", "create", "shop"]).status.code(),
        Some(4)
    );
    assert_eq!(with(weak, &["accounts", "list"]).status.code(), Some(4));
    assert!(with(
        ROOT_TOKEN,
        &["tenants", "create", "shop", "--account", &account]
    )
    .status
    .success());
    assert_eq!(
        with(
            ROOT_TOKEN,
            &["tenants", "create", "shop", "--account", &account]
        )
        .status
        .code(),
        Some(6)
    );
    let bad = with(ROOT_TOKEN, &["dbs", "create", "shop", "BAD NAME"]);
    assert_eq!(bad.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("422 invalid_value"));
    // A server that is not there.
    let o = spg99(h)
        .env("SPG99_URL", "http://127.0.0.1:9")
        .env("SPG99_TOKEN", ROOT_TOKEN)
        .args(["tenants", "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(8));
    // A profile token is never sent to another URL than its own.
    assert!(login(h, &server.base, ROOT_TOKEN, "root").status.success());
    let o = spg99(h)
        .args(["tenants", "list", "--url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("no token for http://127.0.0.1:9"));
    // Completions for the shells.
    let o = run(h, &["completions", "bash"]);
    assert!(o.status.success() && text(&o).contains("spg99"));
}

fn json_of(o: &Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(text(o).trim()).unwrap()
}

#[test]
fn events_follow_gets_each_change_and_resumes_by_itself_after_the_server_restarts() {
    let tmp = crate::helpers::tempdir();
    let data = tmp.path().join("data");
    let mut server = Start::new(&data).spawn();
    let h = tmp.path();
    assert!(login(h, &server.base, ROOT_TOKEN, "root").status.success());
    let mut follow = spg99(h)
        .args([
            "events",
            "--follow",
            "-o",
            "json",
            "--types",
            "account.created",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("an event within 30 s")
            .unwrap();
        serde_json::from_str(&line).unwrap()
    };
    // Only changes from now on, as they happen: once the server counts the stream.
    let subscribed = |s: &crate::helpers::Server| {
        let text = s.get("/metrics", ROOT_TOKEN).body;
        text.as_str()
            .unwrap_or("")
            .lines()
            .any(|l| l == "spg99_event_stream_subscribers 1")
    };
    let began = Instant::now();
    while !subscribed(&server) {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "never subscribed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(run(h, &["accounts", "create", "first"]).status.success());
    let e = next();
    assert_eq!(
        (e["type"].as_str(), e["data"]["name"].as_str()),
        (Some("account.created"), Some("first"))
    );

    // The server restarts on the same address; the stream comes back by itself, from where it
    // was, without a repeat.
    let addr = server.base.trim_start_matches("http://").to_owned();
    server.terminate();
    let server = Start::new(&data).listen(&addr).spawn();
    let started = Instant::now();
    let mut created = false;
    while !created {
        created = run(h, &["accounts", "create", "second"]).status.success();
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    let e = next();
    assert_eq!(e["data"]["name"], "second", "{e}");
    drop(server);
    let _ = follow.kill();
    let _ = follow.wait();
}
