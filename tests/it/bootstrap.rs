//! Given an empty data directory, the first start creates exactly one global key (the
//! operator's token when given, else one printed once); later starts create none.

use serde_json::json;

use crate::helpers::{assert_no_plaintext, tempdir, Start, ROOT_TOKEN};

fn printed_token(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("bootstrap global API key (shown once, store it now): "))
        .map(str::to_owned)
}

#[test]
fn the_operators_token_becomes_the_only_global_key() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut server = Start::new(&dir).spawn();
    assert_eq!(
        printed_token(&server.stdout),
        None,
        "a given token is not echoed"
    );
    let state = server.get("/v2/admin/state", ROOT_TOKEN);
    assert_eq!(state.status, 200);
    assert_eq!(state.body["counts"]["api_keys"], 1);
    server.terminate();

    // Second start, even with another bootstrap token: nothing new, the old token still works.
    let other = "spg99_00000000000000cc_dddddddddddddddddddddddddddddddddddddddddddddddd";
    let server = Start::new(&dir).env("SPG99_BOOTSTRAP_TOKEN", other).spawn();
    assert_eq!(
        server.get("/v2/admin/state", ROOT_TOKEN).body["counts"]["api_keys"],
        1
    );
    assert_eq!(server.get("/v2/admin/state", other).status, 401);
}

#[test]
fn without_a_token_one_is_generated_and_printed_once() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut server = Start::new(&dir)
        .without_env("SPG99_BOOTSTRAP_TOKEN")
        .spawn();
    let token = printed_token(&server.stdout).expect("the generated token is printed");
    assert!(token.starts_with("spg99_"));
    let r = server.post("/v2/accounts", &token, json!({"name": "first"}));
    assert_eq!(r.status, 201, "{r:?}");
    assert!(
        !server.stderr().contains(&token),
        "the token never reaches the log output"
    );
    server.terminate();

    let server = Start::new(&dir)
        .without_env("SPG99_BOOTSTRAP_TOKEN")
        .spawn();
    assert_eq!(
        printed_token(&server.stdout),
        None,
        "printed on the first start only"
    );
    let state = server.get("/v2/admin/state", &token);
    assert_eq!(state.body["counts"]["api_keys"], 1);
    let secret = token.rsplit('_').next().unwrap();
    assert_no_plaintext(&dir, &[secret]);
}

#[test]
fn the_service_token_is_generated_once_or_taken_from_the_environment() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let mut server = Start::new(&dir).spawn();
    let printed = server
        .stdout
        .iter()
        .filter(|l| l.starts_with("service token for the Gateway and workers"))
        .count();
    assert_eq!(printed, 1);
    server.terminate();
    let server = Start::new(&dir).spawn();
    assert!(server
        .stdout
        .iter()
        .all(|l| !l.starts_with("service token")));
    drop(server);

    let bad = Start::new(&tmp.path().join("other"))
        .env("SPG99_SERVICE_TOKEN", "not-a-token")
        .run_to_failure();
    assert_eq!(bad.0.code(), Some(1));
    assert!(
        bad.1.contains("SPG99_SERVICE_TOKEN must look like"),
        "{}",
        bad.1
    );
}

#[test]
fn a_malformed_bootstrap_token_is_refused_before_anything_is_written() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let (status, stderr) = Start::new(&dir)
        .env("SPG99_BOOTSTRAP_TOKEN", "hunter2")
        .run_to_failure();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("SPG99_BOOTSTRAP_TOKEN must look like"),
        "{stderr}"
    );
    let log = spg99::log::Log::open(&dir).unwrap();
    assert_eq!(log.head().unwrap(), 0, "nothing was written");
}
