//! Defects injected into the real binary (built with `--features failpoints`, as
//! `scripts/test.sh` builds it; `FAILPOINTS` says where): a panic is contained where it
//! happens and says so, never a silent dead component.
//!
//! - A command that panics while it is decided is answered 500 `internal_error` and writes
//!   nothing; the committer restarts from the durable state and every other write goes on.
//! - A panic while the log is synced fails the committer like a failed write: `/readyz` and
//!   every write say `committer_failed`, reads go on, the stop is prompt, and a restart
//!   recovers.
//! - A connection that panics inside the Gateway, holding a lock every connection takes, ends
//!   alone: the other connections, open and new, keep working.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::gateway::{config, psql};
use crate::helpers::{pg_ports, tempdir, Fixture, Server, Start, ROOT_TOKEN};

fn create_account(s: &Server, name: &str, request_id: &str) -> (u16, String) {
    let r = s
        .try_call_with(
            "POST",
            "/v2/accounts",
            Some(ROOT_TOKEN),
            Some(&json!({ "name": name })),
            &[("X-Request-Id", request_id)],
        )
        .expect("an answer");
    (r.status, r.code().to_owned())
}

fn account_names(s: &Server) -> BTreeSet<String> {
    s.accounts(500)
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_command_that_panics_writes_nothing_and_the_committer_goes_on() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let mut s = Start::new(&data)
        .env("FAILPOINTS", "committer-decide=panic")
        .spawn();
    assert_eq!(create_account(&s, "before", "ok-0"), (201, "".into()));
    assert_eq!(
        create_account(&s, "doomed", "panic-1"),
        (500, "internal_error".into())
    );
    assert!(
        s.stderr().contains("panic-1") && s.stderr().contains("panicked"),
        "the panic is logged with the request's id:\n{}",
        s.stderr()
    );

    // Writers side by side with panicking commands: whatever shares a batch with a panic is
    // answered `committer_restarting` (and not written), everything else goes through.
    let answers: Vec<(String, u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|w| {
                let s = &s;
                scope.spawn(move || {
                    (0..25)
                        .map(|i| {
                            let name = format!("w{w}-{i}");
                            let id = if i % 10 == 3 {
                                format!("panic-{w}-{i}")
                            } else {
                                format!("ok-{w}-{i}")
                            };
                            let (status, code) = create_account(s, &name, &id);
                            (name, status, code)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut written = BTreeSet::from(["before".to_owned()]);
    for (name, status, code) in &answers {
        let panics = name.ends_with("-3") || name.ends_with("-13") || name.ends_with("-23");
        match (panics, *status, code.as_str()) {
            (true, 500, "internal_error") => {}
            (false, 201, _) => {
                written.insert(name.clone());
            }
            (false, 503, "committer_restarting") => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    // Once the defects stop, every write goes through.
    for i in 0..20 {
        let name = format!("after-{i}");
        assert_eq!(create_account(&s, &name, &format!("ok-after-{i}")).0, 201);
        written.insert(name);
    }
    assert_eq!(
        account_names(&s),
        written,
        "exactly the acknowledged writes"
    );
    assert_eq!(s.call("GET", "/readyz", None, None).status, 200);

    // The live state is the log's: a restart (a replay) gives the same fingerprint.
    let live = s.fingerprint();
    let (status, _) = s.terminate();
    assert!(status.success(), "{status}");
    let s = Start::new(&data).spawn();
    assert_eq!(s.fingerprint(), live);
}

#[test]
fn a_panic_while_the_log_is_synced_fails_the_committer_visibly_until_a_restart() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let mut s = Start::new(&data)
        .env("FAILPOINTS", "committer-sync=panic")
        .spawn();
    assert_eq!(create_account(&s, "kept", "ok-1").0, 201);
    let (status, _) = create_account(&s, "unknown", "panic-sync-1");
    assert_eq!(status, 503, "its answer went with the panic");
    let ready = s.call("GET", "/readyz", None, None);
    assert_eq!((ready.status, ready.code()), (503, "committer_failed"));
    assert_eq!(
        create_account(&s, "refused", "ok-2"),
        (503, "committer_failed".into())
    );
    // Reads go on from what was durable.
    assert!(account_names(&s).contains("kept"));
    let (status, took) = s.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10), "the stop took {took:?}");

    // A restart recovers from the log, and takes writes again.
    let s = Start::new(&data).spawn();
    assert_eq!(s.call("GET", "/readyz", None, None).status, 200);
    assert_eq!(create_account(&s, "after", "ok-3").0, 201);
    let names = account_names(&s);
    assert!(names.contains("kept") && names.contains("after") && !names.contains("refused"));
}

#[test]
fn a_connection_that_panics_in_the_gateway_ends_alone() {
    let tmp = tempdir();
    let server = Start::new(&tmp.path().join("data"))
        .gateway()
        .compute("postgres")
        .env("SPG99_PORT_RANGE", pg_ports())
        .env("FAILPOINTS", "gateway-slot=panic")
        .spawn();
    let gw = server.gateway.clone().unwrap();
    let fx = Fixture::with_server(server);
    let t = fx.server.create_tenant(&fx.account_key, "shop");
    let user = t.body["pg_user"].as_str().unwrap().to_owned();
    let password = t.body["pg_password"].as_str().unwrap().to_owned();
    let dsn: Value = t.body["dsn_template"].clone();
    let dsn = |db: &str| dsn.as_str().unwrap().replace("<db-name>", db);
    fx.server.create_db(&fx.account_key, "shop", "app");
    let mut open = config(&gw, &user, &password, "app")
        .connect(crate::pgtls::Tls::new())
        .expect("a session before the defect");

    // The defect: this connection's task panics while it holds the Gateway's lease table.
    let broken = psql(&dsn("panic"), &["SELECT 1"]);
    assert!(broken.is_err(), "{broken:?}");

    // The open session and new ones are served as before.
    let one: i32 = open.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    for _ in 0..3 {
        assert_eq!(psql(&dsn("app"), &["SELECT 40 + 2"]), Ok("42".to_owned()));
    }
    let unknown = psql(&dsn("nope"), &["SELECT 1"]).unwrap_err();
    assert!(unknown.contains("does not exist"), "{unknown}");
}
