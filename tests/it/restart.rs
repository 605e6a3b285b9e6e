//! Given a server with state, when it restarts (cleanly or after SIGKILL), then the rebuilt
//! state is exactly the state it had: same fingerprint, same head seq.

use serde_json::json;

use crate::helpers::{tempdir, Start, ROOT_TOKEN};

#[test]
fn state_after_restart_equals_state_before() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut server = Start::new(&dir).spawn();
    for i in 0..50 {
        let email = (i % 2 == 0).then(|| format!("team{i}@example.com"));
        let r = server.post(
            "/v2/accounts",
            ROOT_TOKEN,
            json!({"name": format!("team {i}"), "email": email}),
        );
        assert_eq!(r.status, 201, "{r:?}");
    }
    let before = server.fingerprint();
    let (status, _) = server.terminate();
    assert!(status.success(), "clean shutdown exits 0, got {status}");

    let mut server = Start::new(&dir).spawn();
    assert_eq!(server.fingerprint(), before, "clean restart");
    let r = server.post("/v2/accounts", ROOT_TOKEN, json!({"name": "one more"}));
    assert_eq!(r.status, 201);
    let before = server.fingerprint();
    server.kill9();

    let server = Start::new(&dir).spawn();
    assert_eq!(server.fingerprint(), before, "restart after SIGKILL");
    assert!(
        server.stderr().contains("replayed=53"),
        "the start-up reports how many events it replayed:\n{}",
        server.stderr()
    );
}

#[test]
fn a_read_after_a_write_sees_the_write() {
    let tmp = tempdir();
    let server = Start::new(&tmp.path().join("data")).spawn();
    for i in 0..20 {
        let r = server.post("/v2/accounts", ROOT_TOKEN, json!({"name": format!("a{i}")}));
        assert_eq!(r.status, 201);
        let version: u64 = r.header("x-resource-version").unwrap().parse().unwrap();
        let id = r.body["account_id"].as_str().unwrap();
        let read = server.get(&format!("/v2/accounts/{id}"), ROOT_TOKEN);
        assert_eq!(read.status, 200);
        assert_eq!(read.body["name"], format!("a{i}"));
        let seen: u64 = read.header("x-resource-version").unwrap().parse().unwrap();
        assert!(
            seen >= version,
            "read at {seen} reflects write at {version}"
        );
    }
}
