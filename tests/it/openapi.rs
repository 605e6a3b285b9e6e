//! The API document as a client generator and a fuzzer use it: valid OpenAPI 3.1, one
//! operationId per operation, and every status the server answers documented — checked by
//! provoking each shared failure on every operation the document lists, then by schemathesis
//! with every check, with a global and with an account key.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{all_permissions, tempdir, Fixture, Server, Start, ROOT_TOKEN};

const SERVICE_TOKEN: &str = "spg99_svc_cccccccccccccccccccccccccccccccccccccccccccccccc";

/// Runs python3 in `dir` (schemathesis keeps a cache where it runs).
fn python(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("python3 runs (scripts/test.sh installs what the tests need)")
}

fn document(s: &Server) -> Value {
    let doc = s.call("GET", "/v2/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    doc.body
}

/// (method, path template, operation) of every documented operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    out
}

#[test]
fn the_document_is_valid_openapi_with_unique_operation_ids() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data")).spawn();
    let doc = document(&s);
    assert_eq!(doc["openapi"], "3.1.0");
    let file = tmp.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = python(
        tmp.path(),
        &["-m", "openapi_spec_validator", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "openapi-spec-validator:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ops = operations(&doc);
    let ids: Vec<&str> = ops
        .iter()
        .map(|(m, p, op)| {
            op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{m} {p} has no operationId"))
        })
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "operationIds repeat: {ids:?}");
    // Optional bodies are documented as such.
    for id in [
        "createStreamTicket",
        "rotateCallingApiKey",
        "deleteAccount",
        "revokeApiKey",
    ] {
        let (_, _, op) = ops
            .iter()
            .find(|(_, _, op)| op["operationId"] == id)
            .unwrap();
        assert_eq!(op["requestBody"]["required"], false, "{id}");
    }
    let (_, _, billing) = ops
        .iter()
        .find(|(_, p, _)| p == "/v2/billing/summary")
        .unwrap();
    for p in billing["parameters"].as_array().unwrap() {
        if p.get("$ref").is_none() {
            assert_eq!(p["in"], "query", "{p}");
        }
    }
    let (_, _, stream) = ops.iter().find(|(_, p, _)| p == "/v2/events").unwrap();
    assert!(stream["responses"]["200"]["content"]["text/event-stream"].is_object());
}

/// A raw request; the answer's status, headers and body.
fn send(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String, String) {
    let addr = s.base.trim_start_matches("http://");
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), rest.to_owned())
}

#[test]
fn every_shared_failure_of_every_operation_answers_a_documented_status() {
    let tmp = tempdir();
    let f = Fixture::with_server(
        Start::new(&tmp.path().join("data"))
            .env("SPG99_SERVICE_TOKEN", SERVICE_TOKEN)
            .spawn(),
    );
    let s = &f.server;
    s.create_tenant(&f.account_key, "shop");
    let db = s.create_db(&f.account_key, "shop", "main");
    let db_id = db.body["db_id"].as_str().unwrap().to_owned();
    let doc = document(s);
    let ops = operations(&doc);
    let mut checked = 0;
    for (method, template, op) in &ops {
        let path = template
            .replace("{tenant}", "shop")
            .replace("{db}", "main")
            .replace("{account}", &f.account)
            .replace("{id}", &db_id)
            .replace("{action}", "start");
        let responses = op["responses"].as_object().unwrap();
        let documented = |status: u16| responses.contains_key(&status.to_string());
        let root = ("Authorization", format!("Bearer {ROOT_TOKEN}"));
        let mut expect = |what: &str, (status, head, _): (u16, String, String), wanted: u16| {
            assert_eq!(status, wanted, "{method} {template} {what}");
            assert!(
                documented(status),
                "{method} {template} {what}: {status} is not documented"
            );
            assert!(
                head.contains("x-request-id: "),
                "{method} {template} {what}: no X-Request-Id"
            );
            checked += 1;
        };
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        if secured {
            expect("without a token", send(s, method, &path, &[], b""), 401);
            let service = ("Authorization", format!("Bearer {SERVICE_TOKEN}"));
            expect(
                "with the service token",
                send(s, method, &path, &[service], b""),
                403,
            );
        }
        let has_query = op["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
        if has_query {
            let bogus = format!("{path}?no_such_parameter=1");
            expect(
                "with an unknown query parameter",
                send(s, method, &bogus, std::slice::from_ref(&root), b""),
                400,
            );
        }
        if op.get("requestBody").is_some() {
            let json = ("Content-Type", "application/json".to_owned());
            let text = ("Content-Type", "text/plain".to_owned());
            expect(
                "with a text body",
                send(s, method, &path, &[root.clone(), text], b"{}"),
                415,
            );
            expect(
                "with broken JSON",
                send(s, method, &path, &[root.clone(), json.clone()], b"{\"a\":"),
                400,
            );
            expect(
                "with an unknown field",
                send(
                    s,
                    method,
                    &path,
                    &[root.clone(), json.clone()],
                    b"{\"no_such_field\":1}",
                ),
                400,
            );
            expect(
                "with a body too large",
                send(s, method, &path, &[root.clone(), json], &vec![b' '; 70_000]),
                413,
            );
        }
        if op["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"))
        {
            let bad_key = ("Idempotency-Key", "a b".to_owned());
            let json = ("Content-Type", "application/json".to_owned());
            let answer = send(s, method, &path, &[root.clone(), json, bad_key], b"{}");
            assert!(
                documented(answer.0),
                "{method} {template} with a bad Idempotency-Key: {answer:?}"
            );
        }
        // A method the path does not take: 405, with the documented methods in `Allow`.
        let taken: BTreeSet<String> = ops
            .iter()
            .filter(|(_, p, _)| p == template)
            .map(|(m, _, _)| m.clone())
            .collect();
        let (status, head, _) = send(s, "PUT", &path, std::slice::from_ref(&root), b"");
        assert_eq!(status, 405, "PUT {template}");
        let allow = head
            .lines()
            .find_map(|l| l.strip_prefix("allow: "))
            .unwrap_or_else(|| panic!("PUT {template}: no Allow"));
        let mut allowed: BTreeSet<String> = allow.split(", ").map(str::to_uppercase).collect();
        allowed.remove("HEAD");
        assert_eq!(allowed, taken, "{template}: Allow {allow}");
        assert!(
            documented(405),
            "{method} {template}: 405 is not documented"
        );
    }
    assert!(checked > 90, "only {checked} answers checked");
}

/// Runs schemathesis against the server with every check; the failures it prints.
fn fuzz(
    s: &Server,
    token: &str,
    config: &std::path::Path,
    select: &[&str],
    examples: u32,
) -> Option<String> {
    let url = s.url("/v2/openapi.json");
    let auth = format!("Authorization: Bearer {token}");
    let examples = examples.to_string();
    let mut args = vec![
        "-m",
        "schemathesis.cli",
        "--config-file",
        config.to_str().unwrap(),
        "--no-color",
        "run",
        &url,
        "--checks",
        "all",
        "-H",
        &auth,
        "--max-examples",
        &examples,
        "--request-timeout",
        "10",
        "--workers",
        "1",
        "--seed",
        "1",
        // The stream never ends by itself: tests/it/events.rs and conformance.rs test it.
        "--exclude-path",
        "/v2/events",
    ];
    args.extend_from_slice(select);
    let out = python(config.parent().unwrap(), &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (!out.status.success()).then_some(text)
}

#[test]
fn a_property_based_fuzzer_finds_no_answer_outside_the_document() {
    let tmp = tempdir();
    let f = Fixture::new(&tmp.path().join("data"));
    let s = &f.server;
    s.create_tenant(&f.account_key, "shop");
    let db = s.create_db(&f.account_key, "shop", "main");
    let db_id = db.body["db_id"].as_str().unwrap().to_owned();
    // Rules no schema can state: an expiry in the future; a global key names the account
    // (of a tenant, or of a billing summary) and an account key names none but its own.
    let semantic = r#"checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]"#;
    let mut config = String::new();
    for id in ["issueApiKey", "createTenant", "getBillingSummary"] {
        config.push_str(&format!(
            "[[operations]]\ninclude-operation-id = \"{id}\"\n{semantic}\n\n"
        ));
    }
    let free = tmp.path().join("free.toml");
    std::fs::write(&free, &config).unwrap();
    // A second run on the account's own resources, so that their routes are reached.
    config.push_str(&format!(
        "[parameters]\n\"path.tenant\" = \"shop\"\n\"path.db\" = \"main\"\n\"path.account\" = \"{}\"\n\"path.id\" = \"{db_id}\"\n",
        f.account
    ));
    let owned = tmp.path().join("owned.toml");
    std::fs::write(&owned, &config).unwrap();

    // Rotating, revoking and deleting end the key the run uses: each gets its own key, last.
    let ending = ["rotateCallingApiKey", "revokeApiKey", "deleteAccount"];
    let mut keep: Vec<&str> = Vec::new();
    for id in ending {
        keep.extend(["--exclude-operation-id", id]);
    }
    let mut failures = Vec::new();
    for (token, config) in [
        (ROOT_TOKEN, &free),
        (f.account_key.as_str(), &owned),
        (ROOT_TOKEN, &owned),
    ] {
        if let Some(out) = fuzz(s, token, config, &keep, 40) {
            failures.push(out);
        }
    }
    for id in ending {
        let key = s.issue_key(
            ROOT_TOKEN,
            &f.account,
            serde_json::json!({"scope": "account", "permissions": all_permissions()}),
        );
        if let Some(out) = fuzz(s, &key, &owned, &["--include-operation-id", id], 20) {
            failures.push(out);
        }
    }
    assert!(
        failures.is_empty(),
        "schemathesis found failures:\n{}",
        failures.join("\n")
    );
    assert_eq!(s.call("GET", "/healthz", None, None).status, 200);
}
